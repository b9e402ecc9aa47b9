"""
Train a character-level language model (any block of model.py) from a config file.

    python train.py config/shakespeare_char_transformer_cpu.py             # one process
    python train.py config/shakespeare_char_mingru_cpu.py --init_from=resume
    torchrun --standalone --nproc_per_node=4 train.py config/shakespeare_char_mingru.py   # DDP

Writes to out_dir: config.json (the resolved configuration), log.jsonl (one JSON object a line:
'eval' rows every eval_interval, 'train' rows every log_interval), ckpt.pt (latest) and best.pt
(lowest val loss). Checkpoints are written to a temporary file and renamed, so a kill at any
moment leaves the previous one whole; resume continues bit-exactly on CPU in float32.
SIGINT / SIGTERM save a checkpoint at the current step and exit 0.
"""
import contextlib
import dataclasses
import fcntl
import gc
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import cpu_kernels
from configurator import ConfigError, UsageError, documented_keys, help_text, resolve, run_cli
from model import CharLM, ModelConfig, keys_unused_by, widen
from scan import load_gpu_kernels

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = {'model', 'optimizer', 'scaler', 'model_config', 'config', 'step', 'best_val_loss',
                   'elapsed', 'tokens', 'rng', 'vocab'}
_MODEL_DEFAULTS = {k: v for k, v in dataclasses.asdict(ModelConfig()).items() if k != 'vocab_size'}

DEFAULTS = dict(
    # I/O
    out_dir='out/run',            # where config.json, log.jsonl, ckpt.pt and best.pt go
    eval_interval=250,            # evaluate, log and checkpoint every this many steps
    log_interval=10,              # log the training loss every this many steps
    eval_iters=200,               # random batches for the train-loss estimate (val: the whole split)
    eval_only=False,              # evaluate once (with init_from='resume': the checkpoint) and stop
    always_save_checkpoint=True,  # write ckpt.pt at every evaluation (best.pt only on improvement)
    init_from='scratch',          # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    progress=True,                # tqdm bar
    # data
    dataset='shakespeare_char',   # data/<dataset>/{train,val}.bin and meta.json, or a path to such a folder
    batch_size=64,                # sequences per process and micro-step
    gradient_accumulation_steps=1,  # micro-steps per optimizer step
    # model (see model.ModelConfig)
    **_MODEL_DEFAULTS,
    # AdamW, linear warm-up then cosine decay to min_lr at lr_decay_iters
    learning_rate=1e-3,           # peak learning rate, reached after warmup_iters
    max_iters=5000,               # optimizer steps in all
    weight_decay=0.1,             # AdamW decay of matrices and embeddings (not biases, norms, A_log, D)
    beta1=0.9,                    # AdamW's first-moment decay, in [0, 1)
    beta2=0.99,                   # AdamW's second-moment decay, in [0, 1)
    grad_clip=1.0,                # clip the gradient norm to this; 0: no clipping
    decay_lr=True,                # False: learning_rate throughout
    warmup_iters=100,             # steps of linear warm-up
    lr_decay_iters=None,          # step where the cosine reaches min_lr; None: max_iters
    min_lr=1e-4,                  # learning rate at and after lr_decay_iters
    max_bad_steps=5,              # stop after this many consecutive non-finite steps
    max_seconds=0.0,              # wall-clock limit of the training loop: then evaluate, save, stop; 0: none
    # system
    device='auto',                # 'auto' (cuda, mps, cpu), or a torch device string
    dtype='auto',                 # 'auto' (bfloat16 on capable CUDA, else float32), 'float32', 'bfloat16', 'float16'
    compile=False,                # torch.compile the model
    seed=1337,                    # seeds the initialisation and the batches (process k: seed + k)
    ddp_timeout=300,              # seconds a process waits for its peers before failing
)

USAGE = """usage: python train.py [CONFIG_FILE ...] [--key=value ...]

Defaults (below), then each config file (Python assignments, e.g. config/shakespeare_char_mingru_cpu.py),
then each --key=value, in order. Example:
  python train.py config/shakespeare_char_mingru_cpu.py --max_iters=300 --device=cpu"""


def usage():
    """The --help text: USAGE, then every key with its default and comment, grouped as in DEFAULTS."""
    groups = documented_keys(__file__, 'DEFAULTS = dict(', ')')
    model_keys = [key for _, keys in documented_keys(inspect.getsourcefile(ModelConfig), 'class ModelConfig', '    def validate')
                  for key in keys]
    return help_text(USAGE, DEFAULTS, [(name, keys or model_keys) for name, keys in groups])


class TrainingError(UsageError):
    """A failure to report in one line, with what to do about it."""


# ----------------------------------------------------------------------------- set-up

def resolve_device(device):
    """'auto' becomes cuda, mps or cpu, the first available; other names pass unchanged."""
    if device != 'auto':
        return device
    return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'


def setup_distributed(config):
    """(rank, world_size, device); under torchrun also initialises the process group."""
    device = resolve_device(config['device'])
    if 'RANK' not in os.environ:
        return 0, 1, device
    rank, local_rank, world = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    backend = 'nccl' if device.startswith('cuda') else 'gloo'
    dist.init_process_group(backend, timeout=timedelta(seconds=config['ddp_timeout']))
    return rank, world, device


def resolve_dtype(config, device):
    if config['dtype'] != 'auto':
        return config['dtype']
    return 'bfloat16' if device.startswith('cuda') and torch.cuda.is_bf16_supported() else 'float32'


# Every training key's allowed values: (test, the rule in words). The model's keys are checked by
# ModelConfig.validate; the device, dtype and out_dir below.
RULES = {
    'max_iters': (lambda v: v >= 0, '>= 0'),
    'eval_interval': (lambda v: v >= 1, '>= 1'),
    'log_interval': (lambda v: v >= 1, '>= 1'),
    'eval_iters': (lambda v: v >= 1, '>= 1'),
    'batch_size': (lambda v: v >= 1, '>= 1'),
    'gradient_accumulation_steps': (lambda v: v >= 1, '>= 1'),
    'max_bad_steps': (lambda v: v >= 1, '>= 1'),
    'init_from': (lambda v: v in ('scratch', 'resume'), "'scratch' or 'resume'"),
    'learning_rate': (lambda v: 0 < v < math.inf, 'a finite number > 0'),
    'min_lr': (lambda v: 0 <= v < math.inf, 'a finite number >= 0'),
    'weight_decay': (lambda v: 0 <= v < math.inf, 'a finite number >= 0'),
    'beta1': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'beta2': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'grad_clip': (lambda v: 0 <= v < math.inf, 'a finite number >= 0 (0: no clipping)'),
    'warmup_iters': (lambda v: v >= 0, '>= 0'),
    'lr_decay_iters': (lambda v: v is None or (isinstance(v, int) and v >= 1), 'an int >= 1, or None (max_iters)'),
    'seed': (lambda v: 0 <= v < 2 ** 63, 'in [0, 2^63)'),
    'dtype': (lambda v: v in ('auto', 'float32', 'bfloat16', 'float16'), "'auto', 'float32', 'bfloat16' or 'float16'"),
    'ddp_timeout': (lambda v: v >= 1, '>= 1 (seconds)'),
    'max_seconds': (lambda v: 0 <= v < math.inf, 'a finite number of seconds >= 0 (0: no limit)'),
}


def check_config(config):
    """Every key's value in range, in one place: a ConfigError naming the first that is not."""
    for key, (ok, rule) in RULES.items():
        if not ok(config[key]):
            raise ConfigError(f'{key} must be {rule}, got {config[key]!r}')
    if os.path.exists(config['out_dir']) and not os.path.isdir(config['out_dir']):
        raise ConfigError(f"out_dir {config['out_dir']!r} is a file, not a folder; choose another --out_dir")
    check_device(config['device'])
    try:
        ModelConfig.from_dict(config).validate()
        if config['scan_backend'] == 'compiled':  # fail now, in one line, not at the first forward
            if not resolve_device(config['device']).startswith('cpu'):
                raise ValueError("scan_backend='compiled' runs on a CPU; on a GPU use 'auto' (Triton kernels)")
            cpu_kernels.load()
        if config['scan_backend'] == 'triton':
            if not resolve_device(config['device']).startswith('cuda'):
                raise ValueError("scan_backend='triton' runs on a CUDA GPU; on a CPU use 'auto' (the compiled loops)")
            load_gpu_kernels().check()
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def check_device(name):
    """A device this machine has: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    if name == 'auto':
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"--device={name}, but torch sees no CUDA GPU here (torch {torch.__version__}); "
                          "use --device=auto or --device=cpu")
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f'--device={name}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError(f'--device={name}, but MPS is not available here; use --device=auto or --device=cpu')


def load_dataset(config):
    """(train, val) token arrays (memory-mapped) and the vocabulary of data/<dataset>. Every file is
    checked before use, and none can run code: the vocabulary is JSON, the splits raw uint16."""
    name = config['dataset']
    folder = name if os.sep in name else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', name)
    prepare = ('python data/shakespeare_char/prepare.py' if name == 'shakespeare_char' else
               f"python data/char/prepare.py --input YOUR.txt {'--out_dir' if os.sep in name else '--name'} {name}")
    paths = {file: os.path.join(folder, file) for file in ('train.bin', 'val.bin', 'meta.json')}
    missing = [file for file, path in paths.items() if not os.path.isfile(path)]
    if missing:
        older = ' (meta.pkl is from an older version and no longer read: unpickling can run code)' \
            if os.path.exists(os.path.join(folder, 'meta.pkl')) else ''
        raise TrainingError(f"dataset {name!r} is not prepared ({', '.join(missing)} missing in {folder}{older}); "
                            f'run: {prepare}')
    meta = read_meta(paths['meta.json'], f'prepare it again: {prepare}')
    splits = []
    for split in ('train', 'val'):
        path = paths[f'{split}.bin']
        size = os.path.getsize(path)
        if size % 2:
            raise TrainingError(f'{path} has {size} bytes, not a whole number of uint16 tokens; prepare it again: {prepare}')
        data = np.memmap(path, dtype=np.uint16, mode='r') if size else np.zeros(0, np.uint16)
        if len(data) < config['block_size'] + 1:
            raise TrainingError(f"the {split} split of {name!r} has {len(data)} tokens, fewer than "
                                f"block_size + 1 = {config['block_size'] + 1}; lower --block_size or prepare a longer text")
        if data.max() >= meta['vocab_size']:
            raise TrainingError(f"{path} holds token ids up to {data.max()}, beyond the vocabulary of "
                                f"{meta['vocab_size']} in meta.json; prepare it again: {prepare}")
        splits.append(data)
    return splits[0], splits[1], meta


def read_meta(path, fix):
    """vocab_size, stoi and itos from a dataset's meta.json (written by data/char/prepare.py)."""
    try:
        with open(path, encoding='utf-8') as f:
            chars = json.load(f)['chars']
        ok = isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars) \
            and len(set(chars)) == len(chars)
    except (ValueError, KeyError, TypeError) as e:  # not JSON, not UTF-8, not an object with 'chars'
        raise TrainingError(f'{path} is not a readable vocabulary ({type(e).__name__}); {fix}') from None
    if not ok:
        raise TrainingError(f"{path}: 'chars' is not a list of distinct characters; {fix}")
    return {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}


def get_batch(data, batch_size, block_size, generator, device):
    """batch_size random windows of block_size tokens and their next-token targets."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([data[i:i + block_size] for i in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64))
    if device.startswith('cuda'):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def learning_rate_at(step, config):
    """Linear warm-up for warmup_iters, cosine decay to min_lr at lr_decay_iters, then flat."""
    if not config['decay_lr']:
        return config['learning_rate']
    if step < config['warmup_iters']:
        return config['learning_rate'] * (step + 1) / (config['warmup_iters'] + 1)
    if step > config['lr_decay_iters']:
        return config['min_lr']
    progress = (step - config['warmup_iters']) / max(1, config['lr_decay_iters'] - config['warmup_iters'])
    return config['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config['learning_rate'] - config['min_lr'])


# ----------------------------------------------------------------------------- checkpoints

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
        raise TrainingError(f'could not write checkpoint {path} ({reason}); {kept}. '
                            f'Free disk space or choose another --out_dir, then resume') from e


def load_checkpoint(path, hint='train first with: python train.py CONFIG'):
    """The checkpoint dict at path, or a TrainingError that says what is wrong with it."""
    if not os.path.exists(path):
        raise TrainingError(f'no checkpoint at {path}; {hint}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)  # tensors and plain data only: runs no code
    except Exception as e:
        if 'Unsupported global' in str(e):  # the file names a Python callable for the unpickler to run
            raise TrainingError(f'{path} is unsafe: it holds Python objects beyond tensors and plain data, which '
                                f'loading would run as code; it was not loaded. Use a checkpoint this project '
                                f'wrote') from None
        raise TrainingError(f'{path} is not a readable checkpoint (truncated or corrupt? {type(e).__name__}); '
                            f'use the other checkpoint of the run (ckpt.pt / best.pt) or train again') from e
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT or not CHECKPOINT_KEYS <= ckpt.keys():
        raise TrainingError(f'{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})')
    return ckpt


def model_from_checkpoint(ckpt):
    try:
        model = CharLM(ModelConfig(**ckpt['model_config']))
        model.load_state_dict(ckpt['model'])
    except (TypeError, ValueError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's weights do not fit its model_config ({type(e).__name__}); "
                            f'use the other checkpoint of the run or train again') from None
    return model


def check_resumable(ckpt, model_config, meta):
    """Resuming with another block, width or vocabulary would fail deep inside load_state_dict."""
    saved = ckpt['model_config']
    differ = [f'{k}: checkpoint {saved[k]!r}, now {v!r}' for k, v in dataclasses.asdict(model_config).items()
              if k in saved and saved[k] != v and k not in ('dropout', 'scan_backend', 'scan_chunk_elems')]
    if differ:
        raise TrainingError('the checkpoint was trained with another model configuration (' + '; '.join(differ) +
                            '); resume with the config the run started with, or train into a new --out_dir')
    if ckpt['vocab']['itos'] != meta['itos']:
        raise TrainingError('the checkpoint was trained on another vocabulary; resume with its --dataset')


# ----------------------------------------------------------------------------- logging

class RunLog:
    """out_dir/log.jsonl, the record plot_curves.py reads; one JSON object a line."""

    def __init__(self, path, resume_step=None):
        """A fresh log, or with resume_step, the old one cut back to what that checkpoint had seen."""
        self.path = path
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        self.file = open(path, 'a' if resume_step is not None else 'w')

    def _truncate_after(self, step):
        """Drop what the interrupted run logged past its checkpoint: the resumed run logs it again."""
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the kill
                if row.get('kind') == 'meta' or row.get('step', 0) < step or (row.get('kind') == 'train' and row['step'] == step):
                    kept.append(line if line.endswith('\n') else line + '\n')
        with open(self.path + '.tmp', 'w') as f:
            f.writelines(kept)
        os.replace(self.path + '.tmp', self.path)

    def write(self, **row):
        self.file.write(json.dumps(row) + '\n')
        self.file.flush()

    def close(self):
        self.file.close()


@torch.no_grad()
def estimate_loss(model, data, config, device, autocast, rank, world):
    """Mean loss over eval_iters random batches (the same ones at every evaluation: a generator
    seeded afresh), shared among the processes. Used for the train split, a quick estimate."""
    generator = torch.Generator().manual_seed(config['seed'])
    total = torch.zeros((), device=device, dtype=torch.float64)
    for k in range(config['eval_iters']):
        x, y = get_batch(data, config['batch_size'], config['block_size'], generator, device)
        if k % world == rank:
            with autocast:
                total += model(x, y)[1].double()
    if world > 1:
        dist.all_reduce(total)
    return total.item() / config['eval_iters']


def split_windows(n_tokens, block_size, batch_size):
    """Batches of window starts and their common length that cover every prediction of a split of
    n_tokens once: consecutive windows of block_size (the last one shorter, in a batch of its own)."""
    n_predictions = n_tokens - 1
    full_starts = list(range(0, n_predictions - block_size + 1, block_size))
    batches = [(full_starts[i:i + batch_size], block_size) for i in range(0, len(full_starts), batch_size)]
    rest = n_predictions - len(full_starts) * block_size
    if rest:
        batches.append(([len(full_starts) * block_size], rest))
    return batches


@torch.no_grad()
def full_split_loss(model, data, block_size, batch_size, device, autocast=contextlib.nullcontext(),
                    rank=0, world=1):
    """Mean loss over every prediction of a split exactly once (split_windows), each token predicted
    from the context inside its window, as in training: the deterministic number for curves and
    tables, where an estimate from a few random batches carries sampling noise. Batches are shared
    among the processes."""
    tokens = torch.from_numpy(np.asarray(data, dtype=np.int64))
    total = torch.zeros(2, device=device, dtype=torch.float64)  # summed loss, predictions
    for k, (starts, length) in enumerate(split_windows(len(tokens), block_size, batch_size)):
        if k % world != rank:
            continue
        x = torch.stack([tokens[s:s + length] for s in starts]).to(device)
        y = torch.stack([tokens[s + 1:s + 1 + length] for s in starts]).to(device)
        with autocast:
            logits = model(x)[0]
        total[0] += F.cross_entropy(widen(logits.flatten(0, 1)), y.flatten(), reduction='sum').double()
        total[1] += y.numel()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def eval_losses(model, splits, config, device, autocast, rank, world):
    """{'train': random-batch estimate, 'val': the whole val split}, in eval mode."""
    model.eval()
    losses = {'train': estimate_loss(model, splits['train'], config, device, autocast, rank, world),
              'val': full_split_loss(model, splits['val'], config['block_size'], config['batch_size'],
                                     device, autocast, rank, world)}
    model.train()
    return losses


# ----------------------------------------------------------------------------- training

class StopRequest:
    """Why the loop should stop after the current step: SIGINT / SIGTERM (save a checkpoint and exit),
    or max_seconds of wall time spent (evaluate, save and exit, as at max_iters)."""

    def __init__(self, max_seconds=0):
        self.signal = None
        self.previous = {}
        self.deadline = time.monotonic() + max_seconds if max_seconds else None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def requested(self, world, device):
        """The signal's name, 'max_seconds' or None, the same in every process: all stop after the
        same step, or one would wait forever."""
        out_of_time = self.deadline is not None and time.monotonic() > self.deadline
        flag = 2 if self.signal is not None else 1 if out_of_time else 0
        if world > 1:
            flag = torch.tensor(float(flag), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            flag = int(flag.item())
        if flag == 2:
            self.signal = self.signal or 'SIGTERM'
            return self.signal
        return 'max_seconds' if flag == 1 else None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def out_dir_lock(out_dir):
    """Held while a training runs: a second one in the same out_dir would overwrite its log and
    checkpoints. The lock is the kernel's (flock), so a killed run never leaves it behind."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, '.lock'), 'a+')
    except OSError as e:
        raise TrainingError(f'cannot write to out_dir {out_dir} ({e.strerror}); choose another --out_dir') from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise TrainingError(f'out_dir {out_dir} is in use by another training (process {lock.read().strip()}); '
                                f'wait for it to end, or choose another --out_dir') from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def train(config, command='python train.py ...'):
    check_config(config)
    rank, world, device = setup_distributed(config)
    with out_dir_lock(config['out_dir']) if rank == 0 else contextlib.nullcontext():
        return run(config, command, rank, world, device)


def run(config, command, rank, world, device):
    """The training loop of one process (rank of world) on device."""
    master = rank == 0
    dtype = resolve_dtype(config, device)
    device_type = 'cuda' if device.startswith('cuda') else device.split(':')[0]
    torch.manual_seed(config['seed'] + rank)
    data_generator = torch.Generator().manual_seed(config['seed'] + rank)

    train_data, val_data, meta = load_dataset(config)
    model_config = ModelConfig.from_dict({**config, 'vocab_size': meta['vocab_size']})
    model = CharLM(model_config).to(device)
    optimizer = model.configure_optimizer(config['weight_decay'], config['learning_rate'],
                                          (config['beta1'], config['beta2']), device_type)
    scaler = torch.amp.GradScaler(device_type if device_type == 'cuda' else 'cpu', enabled=(dtype == 'float16'))

    out_dir, ckpt_path = config['out_dir'], os.path.join(config['out_dir'], 'ckpt.pt')
    step, best_val, best_step, elapsed, tokens_seen = 0, float('inf'), None, 0.0, 0
    if config['init_from'] == 'resume':
        ckpt = load_checkpoint(ckpt_path, hint=f"nothing to resume in {out_dir}; start with --init_from=scratch")
        check_resumable(ckpt, model_config, meta)
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scaler.load_state_dict(ckpt['scaler'])
        step, best_val, elapsed, tokens_seen = ckpt['step'], ckpt['best_val_loss'], ckpt['elapsed'], ckpt['tokens']
        best_step = ckpt.get('best_val_step')
        if master:
            print(f'resuming from step {step} of {ckpt_path} (best val loss so far {best_val:.4f})')
        if len(ckpt['rng']) == world:  # exact: every process continues its own random streams
            rng = ckpt['rng'][rank]
            torch.set_rng_state(rng['torch'])
            data_generator.set_state(rng['data'])
            if device_type == 'cuda' and rng.get('cuda') is not None:
                torch.cuda.set_rng_state(rng['cuda'])
        else:
            torch.manual_seed(config['seed'] + rank + 1000 * step)
            data_generator.manual_seed(config['seed'] + rank + 1000 * step)
            if master:
                print(f"warning: the checkpoint was written by {len(ckpt['rng'])} process(es), this run has {world}: "
                      f'training continues with fresh random streams (not bit-exact)')
        del ckpt

    raw_model = model
    if config['compile']:
        model = torch.compile(model)
    eval_model = model  # compiled too, but outside DDP: evaluation needs no gradient sync
    if world > 1:
        model = DDP(model, device_ids=[torch.device(device).index] if device_type == 'cuda' else None)
    autocast = (torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
                if dtype != 'float32' else contextlib.nullcontext())

    n_params, n_non_emb = raw_model.num_params(), raw_model.num_params(non_embedding=True)
    tokens_per_step = config['batch_size'] * config['block_size'] * config['gradient_accumulation_steps'] * world
    log = None
    if master:
        resolved = {**config, 'vocab_size': meta['vocab_size'], 'world_size': world, 'device_resolved': device,
                    'dtype_resolved': dtype, 'torch_version': torch.__version__, 'params': n_params,
                    'params_non_embedding': n_non_emb}
        unused = keys_unused_by(config['block'])
        print('configuration:\n' + '\n'.join(f'  {k} = {v!r}' for k, v in resolved.items() if k not in unused))
        if config['decay_lr'] and config['lr_decay_iters'] > config['max_iters']:
            print(f"warning: lr_decay_iters ({config['lr_decay_iters']}) > max_iters ({config['max_iters']}): the "
                  f"learning rate ends at {learning_rate_at(config['max_iters'], config):.2e}, above min_lr; "
                  f"leave lr_decay_iters out (it then follows max_iters) or set it <= max_iters")
        print(f'parameters: {n_params:,} total, {n_non_emb:,} non-embedding; {tokens_per_step:,} tokens per step')
        with open(os.path.join(out_dir, 'config.json'), 'w') as f:
            json.dump(resolved, f, indent=1)
        log = RunLog(os.path.join(out_dir, 'log.jsonl'), resume_step=step if config['init_from'] == 'resume' else None)
        if config['init_from'] == 'scratch':
            log.write(kind='meta', format=1, block=config['block'], val_loss='whole split', params=n_params,
                      params_non_embedding=n_non_emb, tokens_per_step=tokens_per_step, config=resolved)

    def rng_state():
        return {'torch': torch.get_rng_state(), 'data': data_generator.get_state(),
                'cuda': torch.cuda.get_rng_state() if device_type == 'cuda' else None}

    def checkpoint(path):
        """Called by every process at the same points: each one's RNG states go into the file."""
        rng_states = [rng_state()]
        if world > 1:
            rng_states = [None] * world
            dist.all_gather_object(rng_states, rng_state())
        if not master:
            return
        save_checkpoint({'format': CHECKPOINT_FORMAT, 'model': raw_model.state_dict(),
                         'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                         'model_config': dataclasses.asdict(model_config), 'config': config,
                         'step': step, 'best_val_loss': best_val, 'best_val_step': best_step, 'elapsed': elapsed,
                         'tokens': tokens_seen, 'rng': rng_states, 'vocab': {'stoi': meta['stoi'], 'itos': meta['itos']}},
                        path)

    splits = {'train': train_data, 'val': val_data}
    bar = tqdm(total=config['max_iters'], initial=step, disable=not (master and config['progress']),
               dynamic_ncols=True, desc=config['block'])
    bad_steps, window_seconds, window_steps = 0, 0.0, 0
    accumulate = config['gradient_accumulation_steps']
    stopping = None  # why the run ends at this step: 'max_iters', 'eval_only' or 'max_seconds'
    with StopRequest(config['max_seconds']) as stop:
        while True:
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group['lr'] = lr
            if step >= config['max_iters'] or config['eval_only']:
                stopping = 'eval_only' if config['eval_only'] else 'max_iters'

            if step % config['eval_interval'] == 0 or stopping:
                t0 = time.perf_counter()
                losses = eval_losses(eval_model, splits, config, device, autocast, rank, world)
                if master:
                    log.write(kind='eval', step=step, tokens=tokens_seen, time=round(elapsed, 3), lr=lr,
                              train_loss=losses['train'], val_loss=losses['val'])
                    bar.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if losses['val'] < best_val:
                    best_val, best_step = losses['val'], step
                    checkpoint(os.path.join(out_dir, 'best.pt'))
                if config['always_save_checkpoint'] or stopping:
                    checkpoint(ckpt_path)
                elapsed += time.perf_counter() - t0
            if stopping:
                if master:
                    log.write(kind='stop', step=step, reason=stopping)
                break

            t0 = time.perf_counter()
            for micro in range(accumulate):
                x, y = get_batch(train_data, config['batch_size'], config['block_size'], data_generator, device)
                sync = world == 1 or micro == accumulate - 1
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                    loss = model(x, y)[1] / accumulate
                scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config['grad_clip'] or float('inf'))
            loss_value = loss.item() * accumulate
            finite = math.isfinite(loss_value) and (scaler.is_enabled() or math.isfinite(grad_norm.item()))
            if finite:
                scaler.step(optimizer)
                bad_steps = 0
            else:
                bad_steps += 1
                if master:
                    bar.write(f'warning: step {step}: non-finite loss or gradient (loss {loss_value}, grad norm '
                              f'{grad_norm.item()}); step skipped ({bad_steps}/{config["max_bad_steps"]})')
                if bad_steps >= config['max_bad_steps']:
                    raise TrainingError(
                        f'{bad_steps} consecutive non-finite steps, the first at step {step - bad_steps + 1}; the last '
                        f'good checkpoint {ckpt_path} is kept. Lower --learning_rate, use --dtype=float32 (or '
                        f'bfloat16 instead of float16), or try --scan_backend=sequential')
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            seconds = time.perf_counter() - t0
            elapsed += seconds
            window_seconds, window_steps = window_seconds + seconds, window_steps + 1
            if master and step % config['log_interval'] == 0:
                log.write(kind='train', step=step, loss=loss_value, lr=lr,
                          ms_per_iter=round(1000 * window_seconds / window_steps, 2))
                window_seconds, window_steps = 0.0, 0
            bar.update(1)
            bar.set_postfix(loss=f'{loss_value:.4f}', tok_s=f'{tokens_per_step / seconds:,.0f}', refresh=False)

            request = stop.requested(world, device)
            if request == 'max_seconds':
                stopping = request  # evaluate and save at the top of the loop, then stop
            elif request:
                checkpoint(ckpt_path)
                if master:
                    bar.close()
                    print(f'{stop.signal}: saved {ckpt_path} at step {step}. Resume with: {command} --init_from=resume')
                break
    bar.close()
    if log is not None:
        log.close()
    if master and stopping:
        print(summary(out_dir, step, elapsed, best_val, best_step, stopping))
    if world > 1:
        dist.barrier()  # rank 0 may still be writing the checkpoint: tear gloo/nccl down together
    return {'step': step, 'best_val_loss': best_val, 'best_val_step': best_step}


def summary(out_dir, step, elapsed, best_val, best_step, reason):
    """What a finished run prints: its best result, where its files are, what to do next."""
    path = lambda name: os.path.join(out_dir, name)
    at = f' at step {best_step}' if best_step is not None else ''
    why = ' (max_seconds reached)' if reason == 'max_seconds' else ''
    return (f'done: step {step}{why}, {elapsed:.0f} s of training and evaluation; best val loss {best_val:.4f} '
            f'(whole val split){at}\n'
            f"  checkpoints: {path('best.pt')} (best), {path('ckpt.pt')} (latest); log: {path('log.jsonl')}\n"
            f'  sample: python sample.py --out_dir={out_dir}\n'
            f'  plot:   python plot_curves.py {out_dir}')


def configure(argv):
    """The run's configuration from the command line (see USAGE), its derived defaults filled in."""
    config = resolve(DEFAULTS, argv)
    if config['lr_decay_iters'] is None:
        config['lr_decay_iters'] = config['max_iters']
    return config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if {'-h', '--help'} & set(argv):
        print(usage())
        return None
    try:
        return train(configure(argv), command=' '.join(['python train.py', *argv]))
    except UsageError as e:
        sys.exit(f'error: {e}')
    except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors
        if dist.is_available() and dist.is_initialized():
            detail = (str(e).splitlines() or [''])[0][:160]
            # Printed now: torchrun may SIGTERM this process while it tears down, before exit could print.
            print(f'error: a process of this distributed run failed or stopped answering ({type(e).__name__}: '
                  f'{detail}); the last checkpoint in the out_dir is intact: resume with --init_from=resume',
                  file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            # Free the DDP reducer (in reference cycles) and its gloo work while the interpreter is
            # alive: freed at shutdown instead, gloo threads can abort the process (SIGABRT).
            gc.collect()
            dist.destroy_process_group()


if __name__ == '__main__':
    run_cli(main, interrupted='interrupted before training began: nothing was saved')
