"""
Checkpoints (ckpt.pt, best.pt): written to a temporary file and renamed, so a kill at any moment
leaves the previous one whole; read with weights_only=True, so loading one runs no code; checked
before use, so a damaged or foreign file is one line, not a traceback deep in torch.
"""
import contextlib
import os

import torch

from minrnn import settings
from minrnn.runs import RunError
from model import CharLM, ModelConfig

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = {'model', 'optimizer', 'scaler', 'model_config', 'config', 'step', 'best_val_loss',
                   'elapsed', 'tokens', 'rng', 'vocab'}


def save_checkpoint(payload, path):
    """Write to path.tmp, fsync, rename: a reader sees the old file or the new one, never half."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its writer
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = f'the previous {os.path.basename(path)} is intact' if os.path.exists(path) else 'no earlier checkpoint exists'
        reason = e.strerror if isinstance(e, OSError) and e.strerror else ' '.join(str(e).split())[:120]
        raise RunError(f'could not write checkpoint {path} ({reason}); {kept}. '
                       f'Free disk space or choose another --out_dir, then resume') from e


def load_checkpoint(path, hint='train first with: python train.py CONFIG'):
    """The checkpoint dict at path, or a RunError that says what is wrong with it."""
    if not os.path.exists(path):
        raise RunError(f'no checkpoint at {path}; {hint}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)  # tensors and plain data only: runs no code
    except Exception as e:
        if 'unsupported global' in str(e).lower():  # the file names a Python callable for the unpickler to run
            raise RunError(f'{path} is unsafe: it holds Python objects beyond tensors and plain data, which '
                           f'loading would run as code; it was not loaded. Use a checkpoint this project '
                           f'wrote') from None
        raise RunError(f'{path} is not a readable checkpoint (truncated or corrupt? {type(e).__name__}); '
                       f'use the other checkpoint of the run (ckpt.pt / best.pt) or train again') from e
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT or not CHECKPOINT_KEYS <= ckpt.keys():
        raise RunError(f'{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})')
    return ckpt


def model_from_checkpoint(ckpt):
    """The model a checkpoint holds, checked: its weights fit its config, are finite, and its
    vocabulary covers every output."""
    config = ckpt['model_config']
    try:
        settings.check_model(config if isinstance(config, dict) else {})
    except settings.ConfigError as e:
        raise RunError(f"the checkpoint's model_config cannot be built ({e}); use a checkpoint this project "
                       f'wrote') from None
    try:
        model = CharLM(ModelConfig(**config))
        model.load_state_dict(ckpt['model'])
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"the checkpoint's weights do not fit its model_config ({type(e).__name__}); "
                       f'use the other checkpoint of the run or train again') from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RunError("the checkpoint's weights are not all finite (a diverged run?); use the other checkpoint "
                       'of the run, or train again with a lower --learning_rate')
    itos = ckpt['vocab'].get('itos') if isinstance(ckpt.get('vocab'), dict) else None
    if not isinstance(itos, dict) or set(itos) != set(range(model.config.vocab_size)):
        raise RunError(f"the checkpoint's vocabulary does not cover the model's {model.config.vocab_size} tokens; "
                       f'use a checkpoint this project wrote')
    return model


def check_resumable(ckpt, model_config, meta, dataset):
    """What the checkpoint holds must fit the model and data it resumes into; where it does not (a run
    folder or dataset changed by hand), one line, not a failure deep inside load_state_dict."""
    saved = ckpt['model_config']
    ignored = settings.unused_by(saved.get('block')) | settings.RESUMABLE_KEYS
    differ = [f'{k}: checkpoint {saved[k]!r}, now {v!r}' for k, v in model_config.asdict().items()
              if k in saved and saved[k] != v and k not in ignored]
    if differ:
        raise RunError('the checkpoint holds another model (' + '; '.join(differ) + '); resume the run as it was '
                       'started, or train into a new --out_dir')
    if ckpt['vocab']['itos'] != meta['itos']:
        raise RunError(f'the dataset {dataset!r} has another vocabulary than the one this run was trained on (was '
                       f'it prepared again from another text?); prepare the run\'s text again, or train a new run')
