"""
train.py's configuration: every key with its default, its help text and its allowed values, in
groups (the model's keys come from model.py's registry); how a command line resolves to a
configuration; the checks a configuration passes before any work; and which keys cannot change a
run's curve (NEUTRAL_KEYS: runs that differ only in them are seeds of one series).
"""
import math
import os

import devices
import scan
from configurator import ConfigError, help_text, resolve
from model import Key, ModelConfig, at_least, blocks_reading, finite_at_least, model_keys

USAGE = """usage: python train.py [CONFIG_FILE ...] [--key=value ...]

Defaults (below), then each config file (Python assignments, e.g. config/shakespeare_char_mingru_cpu.py),
then each --key=value, in order. Example:
  python train.py config/shakespeare_char_mingru_cpu.py --max_iters=300 --device=cpu"""


def one_of(*values):
    return {'ok': lambda v: v in values, 'rule': ' or '.join(map(repr, values))}


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
    'device': Key('auto', f'{devices.CHOICES} (auto: cuda, mps, cpu, the first available)'),
    'dtype': Key('auto', "'auto' (bfloat16 on capable CUDA, else float32), 'float32', 'bfloat16', 'float16'",
                 **one_of('auto', 'float32', 'bfloat16', 'float16')),
    'compile': Key(False, 'torch.compile the model'),
    'seed': Key(1337, 'seeds the initialisation and the batches (process k: seed + k)',
                ok=lambda v: 0 <= v < 2 ** 63, rule='in [0, 2^63)'),
    'ddp_timeout': Key(300, 'seconds a process waits for its peers before failing', ok=lambda v: v >= 1, rule='>= 1 (seconds)'),
}

# Keys that cannot change a run's curve: where it is written, how it is watched, how it is resumed,
# which kernel computes the same function, and facts recorded beside the configuration.
NEUTRAL_KEYS = frozenset({
    'out_dir', 'overwrite', 'seed', 'progress', 'log_interval', 'eval_interval', 'eval_iters', 'eval_only',
    'always_save_checkpoint', 'init_from', 'device', 'compile', 'ddp_timeout', 'max_bad_steps', 'max_seconds',
    'scan_backend', 'scan_chunk_elems',
    'device_resolved', 'torch_version', 'params', 'params_non_embedding', 'environment', 'backend_resolved',
})
# Keys a resume may not change without the user hearing of it: they shape the learning-rate curve.
SCHEDULE_KEYS = ('learning_rate', 'min_lr', 'warmup_iters', 'lr_decay_iters', 'max_iters', 'decay_lr')


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


def usage():
    """The --help text: USAGE, then every key with its default and help, in groups."""
    def described(name, key):
        readers = blocks_reading(name)
        return key.help + (f" ({', '.join(readers)})" if readers else '')
    return help_text(USAGE, defaults(), [(group, [(name, described(name, key)) for name, key in keys.items()])
                                         for group, keys in groups()])


def configure(argv):
    """The run's configuration from the command line (see USAGE), its derived defaults filled in."""
    config = resolve(defaults(), argv)
    if config['lr_decay_iters'] is None:
        config['lr_decay_iters'] = max(1, config['max_iters'])
    return config


def check(config):
    """Every key's value in range, then the keys against each other, then the device and the kernels
    it runs: a ConfigError naming the first problem, before any work."""
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
    device = devices.resolve(config['device'])
    try:
        ModelConfig.from_dict(config).validate()
        scan.check_backend(config['scan_backend'], device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None


def schedule_warnings(config, learning_rate_at):
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
