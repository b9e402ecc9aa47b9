"""
A run's configuration, in one place: every key with its default, its help text and its allowed
values (the blocks' own keys are declared with them, in blocks.py); how a command line of config
files and --key=value items resolves to a configuration; check(), every check, run once before any
work; the learning-rate schedule; and which keys cannot change a run's curve or may change on a
resume. No torch here, and nothing happens on import.

A config file is Python whose top-level assignments override the defaults, as in nanoGPT. It runs as
code, so only trusted files belong there. Unlike nanoGPT's exec-into-globals, every name is checked:
unknown keys or values of the wrong type are a ConfigError that lists them all with the valid
choices. A file may start from another, `base = 'recipe.py'` (a path beside it): the base's values
first, then the file's own, so a recipe is written once and a block's file holds only its own keys.
"""
import ast
import difflib
import math
import os
import types
from dataclasses import dataclass

from minrnn.cli import UsageError


class ConfigError(UsageError, ValueError):
    pass


@dataclass(frozen=True)
class Key:
    """One configuration key: its default, what it does (train.py --help prints it), the values it
    allows (ok, described by rule; None: any value of the default's type), and check: a rule across
    keys, config -> what is wrong in words, or None."""
    default: object
    help: str
    ok: object = None
    rule: str = ''
    check: object = None


def at_least(n):
    return {'ok': lambda v: v >= n, 'rule': f'>= {n}'}


def finite_at_least(n):
    return {'ok': lambda v: n <= v < math.inf, 'rule': f'a finite number >= {n}'}


def one_of(*values):
    return {'ok': lambda v: v in values, 'rule': ' or '.join(map(repr, values))}


BACKENDS = ('auto', 'log', 'sequential', 'compiled', 'triton')  # the scan's kernels (minrnn/scan.py)
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"

# ----------------------------------------------------------------------------- the keys

MODEL_KEYS = {  # every block reads these; a block's own keys are declared with it (blocks.py)
    'block': Key('transformer', 'the mixer: a block of minrnn/blocks.py (its math: model.MIXERS)'),
    'vocab_size': Key(65, 'set from the dataset', **at_least(1)),
    'block_size': Key(256, "training context (the Transformer's positional table)", **at_least(1)),
    'n_layer': Key(6, 'residual blocks', **at_least(1)),
    'n_embd': Key(384, 'width of the residual stream', **at_least(1)),
    'dropout': Key(0.0, 'in [0, 1): after embeddings, mixers and feed-forwards', ok=lambda v: 0 <= v < 1,
                   rule='in [0, 1)'),
    'bias': Key(False, 'biases in Linear layers and LayerNorm'),
    'norm': Key('layernorm', "'layernorm' or 'rmsnorm'", **one_of('layernorm', 'rmsnorm')),
    'ff_mult': Key(4.0, 'feed-forward width = ff_mult * n_embd; 0 leaves it out', **finite_at_least(0)),
}
IO_KEYS = {
    'out_dir': Key('out/run', 'where config.json, log.jsonl, ckpt.pt and best.pt go'),
    'overwrite': Key(False, 'start from scratch even where out_dir holds an earlier run (its files are replaced)'),
    'eval_interval': Key(250, 'evaluate, log and checkpoint every this many steps', **at_least(1)),
    'log_interval': Key(10, 'log the training loss every this many steps (a line when progress=False)', **at_least(1)),
    'eval_iters': Key(200, 'random batches for the train-loss estimate (val: the whole split)', **at_least(1)),
    'eval_only': Key(False, 'with init_from=resume: evaluate the checkpoint once and stop; writes no checkpoint'),
    'always_save_checkpoint': Key(True, 'write ckpt.pt at every evaluation (best.pt only on improvement)'),
    'init_from': Key('scratch', "'scratch' or 'resume' (from out_dir/ckpt.pt)", **one_of('scratch', 'resume')),
    'progress': Key(True, 'tqdm bar'),
    'wandb_log': Key(False, 'also log to Weights & Biases, where the wandb package is installed (not a dependency)'),
    'wandb_project': Key('minrnn', 'the Weights & Biases project'),
    'wandb_run_name': Key('run', 'the Weights & Biases run name'),
}
DATA_KEYS = {
    'dataset': Key('shakespeare_char', 'data/<dataset>/{train,val}.bin and meta.json, or a path to such a folder'),
    'batch_size': Key(64, 'sequences per process and micro-step', **at_least(1)),
    'gradient_accumulation_steps': Key(1, 'micro-steps per optimizer step', **at_least(1)),
}
OPTIMIZER_KEYS = {
    'learning_rate': Key(1e-3, 'peak learning rate, reached after warmup_iters', ok=lambda v: 0 < v < math.inf,
                         rule='a finite number > 0'),
    'max_iters': Key(5000, 'optimizer steps in all', **at_least(0)),
    'weight_decay': Key(0.1, 'AdamW decay of matrices and embeddings (not biases, norms, A_log, D)', **finite_at_least(0)),
    'beta1': Key(0.9, "AdamW's first-moment decay, in [0, 1)", ok=lambda v: 0 <= v < 1, rule='in [0, 1)'),
    'beta2': Key(0.99, "AdamW's second-moment decay, in [0, 1)", ok=lambda v: 0 <= v < 1, rule='in [0, 1)'),
    'grad_clip': Key(1.0, 'clip the gradient norm to this; 0: no clipping', ok=lambda v: 0 <= v < math.inf,
                     rule='a finite number >= 0 (0: no clipping)'),
    'decay_lr': Key(True, 'False: learning_rate throughout'),
    'warmup_iters': Key(100, 'steps of linear warm-up', **at_least(0)),
    'lr_decay_iters': Key(None, 'step where the cosine reaches min_lr; None: max_iters',
                          ok=lambda v: v is None or (isinstance(v, int) and v >= 1), rule='an int >= 1, or None (max_iters)'),
    'min_lr': Key(1e-4, 'learning rate at and after lr_decay_iters (<= learning_rate)', **finite_at_least(0)),
    'max_bad_steps': Key(5, 'stop after this many consecutive non-finite steps', **at_least(1)),
    'max_seconds': Key(0.0, 'wall-clock limit of the training loop: then evaluate, save, stop; 0: none',
                       ok=lambda v: 0 <= v < math.inf, rule='a finite number of seconds >= 0 (0: no limit)'),
}
SYSTEM_KEYS = {
    'device': Key('auto', f'{DEVICES} (auto: cuda, mps, cpu, the first available)'),
    'dtype': Key('auto', "'auto' (bfloat16 on capable CUDA, else float32), 'float32', 'bfloat16', 'float16'",
                 **one_of('auto', 'float32', 'bfloat16', 'float16')),
    'compile': Key(False, 'torch.compile the model'),
    'seed': Key(1337, 'seeds the initialisation and the batches (process k: seed + k)',
                ok=lambda v: 0 <= v < 2 ** 63, rule='in [0, 2^63)'),
    'ddp_timeout': Key(300, 'seconds a process waits for its peers before failing', ok=lambda v: v >= 1, rule='>= 1 (seconds)'),
}

# Keys that cannot change a run's curve: where it is written, how it is watched, how it is resumed,
# which kernel computes the same function, and facts recorded beside the configuration. Runs that
# differ only in them are seeds of one series (runs.identity).
NEUTRAL_KEYS = frozenset({
    'out_dir', 'overwrite', 'seed', 'progress', 'log_interval', 'eval_interval', 'eval_iters', 'eval_only',
    'always_save_checkpoint', 'init_from', 'device', 'compile', 'ddp_timeout', 'max_bad_steps', 'max_seconds',
    'scan_backend', 'scan_chunk_elems', 'wandb_log', 'wandb_project', 'wandb_run_name',
    'device_resolved', 'torch_version', 'params', 'params_non_embedding', 'environment', 'backend_resolved',
})
# What a resume may change (docs/usage.md, "Resume"): how long it runs and how it is watched, where it
# runs and where its folder now is, and which kernel computes the same function. Anything else is the
# run's own (its model, data, batch, optimizer, seed) and is refused.
RESUMABLE_KEYS = frozenset({
    'out_dir', 'max_iters', 'lr_decay_iters', 'max_seconds', 'eval_interval', 'log_interval', 'eval_iters', 'eval_only',
    'always_save_checkpoint', 'init_from', 'overwrite', 'progress', 'device', 'dtype', 'compile', 'ddp_timeout',
    'max_bad_steps', 'scan_backend', 'scan_chunk_elems', 'wandb_log', 'wandb_project', 'wandb_run_name',
})
# Keys of the learning-rate curve: a resume that changes max_iters (and so lr_decay_iters) is told so.
SCHEDULE_KEYS = ('learning_rate', 'min_lr', 'warmup_iters', 'lr_decay_iters', 'max_iters', 'decay_lr')


def model_keys():
    """The model's keys: the shared ones, then every block's own."""
    from minrnn.blocks import block_keys  # blocks.py declares its keys with this module's Key
    return {**MODEL_KEYS, **block_keys()}


def groups():
    """[(group name, {key: Key})], as --help lists them."""
    model = {k: v for k, v in model_keys().items() if k != 'vocab_size'}
    return [('I/O', IO_KEYS), ('data', DATA_KEYS), ('model (model.py)', model),
            ('AdamW, linear warm-up then cosine decay to min_lr at lr_decay_iters', OPTIMIZER_KEYS),
            ('system', SYSTEM_KEYS)]


def all_keys():
    return {name: key for _, keys in groups() for name, key in keys.items()}


def defaults():
    return {name: key.default for name, key in all_keys().items()}


def unused_flags(argv, block):
    """The keys given as --key=value that this block does not read (the Transformer's --n_head on a
    GRU): ignored, which its user should hear."""
    given = [arg[2:].partition('=')[0] for arg in argv if arg.startswith('--')]
    return [key for key in dict.fromkeys(given) if key in unused_by(block)]


def unused_by(block):
    """The block-specific keys that this block does not read."""
    from minrnn.blocks import BLOCKS
    spec = BLOCKS.get(block)
    return set(model_keys()) - set(MODEL_KEYS) - set(spec.keys if spec else ())


# ----------------------------------------------------------------------------- a command line

USAGE = """usage: python train.py [CONFIG_FILE ...] [--key=value ...]

Defaults (below), then each config file (Python assignments, e.g. config/shakespeare_char_mingru_cpu.py),
then each --key=value, in order. A config file runs as code: use trusted ones. Example:
  python train.py config/shakespeare_char_mingru_cpu.py --max_iters=300 --device=cpu"""

def usage():
    """The --help text: USAGE, then every key with its default and help, in groups."""
    from minrnn.blocks import readers
    lines = [USAGE, '']
    for group, keys in groups():
        lines.append(f'{group}:')
        for name, key in keys.items():
            read_by = readers(name)
            lines.append(f'  --{name}={key.default!r}'.ljust(40) + f' {key.help}'
                         + (f" ({', '.join(read_by)})" if read_by else ''))
    return '\n'.join(lines)


def configure(argv):
    """The run's configuration from a command line (see USAGE), its derived defaults filled in."""
    config = resolve(defaults(), argv)
    if config['lr_decay_iters'] is None:
        config['lr_decay_iters'] = max(1, config['max_iters'])
    return config


def configure_resume(argv, saved):
    """A resume's configuration: the run's own (saved, its checkpoint's), then the command's config
    files and flags, which may change RESUMABLE_KEYS only; a ConfigError names every other key they
    would change, with both values. Keys the run's block does not read are not compared."""
    config = resolve({**defaults(), **{k: v for k, v in saved.items() if k in all_keys()}, 'lr_decay_iters': None}, argv)
    if config['lr_decay_iters'] is None:  # not given now: the run's own, which followed max_iters if it equalled it
        following = saved.get('lr_decay_iters') == max(1, saved.get('max_iters', 0))
        config['lr_decay_iters'] = max(1, config['max_iters']) if following else saved.get('lr_decay_iters')
    ignored = RESUMABLE_KEYS | unused_by(saved.get('block'))
    changed = [f'{key} (the run has {saved[key]!r}, this command {config[key]!r})' for key in saved
               if key in config and key not in ignored and config[key] != saved[key]]
    if changed:
        raise ConfigError(f"a resume continues the run that was started, and this command changes {'; '.join(changed)}. "
                          f'Resume without changing them (the run keeps its own configuration: --out_dir and '
                          f'--init_from=resume are enough), or train into a new --out_dir')
    return config


def resolve(defaults, args):
    """A new dict: defaults updated by the config files and --key=value items of args, in order.
    Every unknown key of them is reported at once."""
    config, unknown = dict(defaults), []
    for i, arg in enumerate(args):
        if arg.startswith('--'):
            updates = {arg[2:].partition('=')[0]: _value_of_flag(arg, args[i + 1] if i + 1 < len(args) else None,
                                                                 defaults)}
        else:
            updates = read_config_file(arg)
        for key, value in updates.items():
            if key not in defaults:
                unknown.append(key)
            else:
                config[key] = _check_type(key, value, defaults[key])
    if unknown:
        raise ConfigError(_unknown_keys(unknown, defaults))
    return config


def _value_of_flag(arg, following, defaults):
    key, sep, text = arg[2:].partition('=')
    if not sep:
        hint = f'; write --{key}={following}' if following and key in defaults else ''
        if isinstance(defaults.get(key), bool) and not (following and not following.startswith('--')):
            hint = f'; write --{key}=True'
        raise ConfigError(f'expected --key=value, got {arg!r}{hint} (python train.py --help lists the keys)')
    try:  # a Python literal (3, 1e-3, True, 'x'), else the bare text as a string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _unknown_keys(keys, valid):
    parts = []
    for key in dict.fromkeys(keys):
        close = difflib.get_close_matches(key, valid, n=3)
        parts.append(repr(key) + (f" (did you mean {', '.join(close)}?)" if close else ''))
    return f"unknown config key{'s' if len(parts) > 1 else ''} {', '.join(parts)}; valid keys: {', '.join(sorted(valid))}"


def _check_type(key, value, default):
    """Values must have their default's type; an int is accepted where a float is expected."""
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f'config key {key!r} expects {expected.__name__} (default {default!r}), '
                          f'got {type(value).__name__} {value!r}')
    return value


def read_config_file(path, including=()):
    """The values a config file sets, its base's first (base = 'file.py', resolved beside it)."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or '.'
        choices = sorted(f for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(folder) else []
        listing = f"; files in {folder}/: {', '.join(choices)}" if choices else ''
        raise ConfigError(f'config file {path!r} does not exist{listing}')
    namespace = {}
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except UnicodeDecodeError:
        raise ConfigError(f'config file {path!r} is not UTF-8 text: a config file is Python assignments') from None
    try:
        exec(compile(source, path, 'exec'), namespace)
    except (Exception, SystemExit) as e:  # a config file is user code (sys.exit too): name it in the message
        raise ConfigError(f'config file {path!r} failed: {type(e).__name__}: {e}') from e
    values = {k: v for k, v in namespace.items()
              if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))}
    base = values.pop('base', None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f'config file {path!r}: base must be a file name, got {base!r}')
    base_path = os.path.join(os.path.dirname(path), base)
    if os.path.abspath(base_path) in including:
        raise ConfigError(f'config file {path!r}: base {base!r} includes itself')
    return {**read_config_file(base_path, (*including, os.path.abspath(path))), **values}


# ----------------------------------------------------------------------------- the checks

def check(config):
    """Every check, once before any work: each key's value in range, the model's keys against each
    other and the schedule's, the out_dir; then the device and the kernels it runs. A ConfigError
    naming the first problem."""
    check_model(config)
    for name, key in all_keys().items():
        if key.ok is not None and name in config and not key.ok(config[name]):
            raise ConfigError(f'{name} must be {key.rule}, got {config[name]!r}')
    if config['min_lr'] > config['learning_rate']:
        raise ConfigError(f"min_lr ({config['min_lr']:g}) must be <= learning_rate ({config['learning_rate']:g}): "
                          f'the decay would raise the rate')
    if config['decay_lr'] and config['lr_decay_iters'] < min(config['warmup_iters'], config['max_iters']):
        raise ConfigError(f"lr_decay_iters ({config['lr_decay_iters']}) must be >= warmup_iters "
                          f"({config['warmup_iters']}): the decay would end before the warm-up does")
    if os.path.exists(config['out_dir']) and not os.path.isdir(config['out_dir']):
        raise ConfigError(f"out_dir {config['out_dir']!r} is a file, not a folder; choose another --out_dir")
    from minrnn import devices, scan  # torch: only once the words are right
    device = devices.resolve(config['device'])
    try:
        scan.check_backend(config['scan_backend'], device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def check_model(config):
    """The model's keys (a dict or a ModelConfig's asdict()): a known block, every key it reads in
    range, their rules across keys. Also what a checkpoint's model_config must pass."""
    from minrnn.blocks import BLOCKS
    block = config.get('block')
    if block not in BLOCKS:
        close = difflib.get_close_matches(str(block).lower(), BLOCKS, n=1) if isinstance(block, str) else []
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ConfigError(f"unknown block {block!r}{hint}; choose one of {', '.join(BLOCKS)}")
    keys = {**MODEL_KEYS, **BLOCKS[block].keys}
    for name, key in keys.items():
        if name not in config:
            continue
        if key.ok is not None and not key.ok(config[name]):
            raise ConfigError(f'{name} must be {key.rule}, got {config[name]!r}')
    for name, key in keys.items():
        problem = key.check(config) if key.check else None
        if problem:
            raise ConfigError(problem)


# ----------------------------------------------------------------------------- the schedule

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


def schedule_warnings(config):
    """Schedules a user may mean, but should hear about."""
    warnings = []
    if not config['decay_lr'] or not config['max_iters']:
        return warnings
    if config['warmup_iters'] >= config['max_iters']:
        warnings.append(f"warmup_iters ({config['warmup_iters']}) >= max_iters ({config['max_iters']}): the whole run "
                        f"warms up and never reaches learning_rate; lower --warmup_iters")
    elif config['lr_decay_iters'] > config['max_iters']:
        warnings.append(f"lr_decay_iters ({config['lr_decay_iters']}) > max_iters ({config['max_iters']}): the "
                        f"learning rate ends at {learning_rate_at(config['max_iters'], config):.2e}, above min_lr; "
                        f"leave lr_decay_iters out (it then follows max_iters) or set it <= max_iters")
    return warnings


def schedule_changes(saved, config, step):
    """What a resume changes in the learning-rate schedule, in words; '' where nothing."""
    changed = [f'{key} {saved.get(key)!r} -> {config[key]!r}' for key in SCHEDULE_KEYS if saved.get(key) != config[key]]
    if not changed:
        return ''
    before = learning_rate_at(step, {**config, **{k: saved[k] for k in SCHEDULE_KEYS if k in saved}})
    return (f"resuming with another schedule ({'; '.join(changed)}): the learning rate at step {step} is "
            f'{learning_rate_at(step, config):.2e} (the run had {before:.2e})')
