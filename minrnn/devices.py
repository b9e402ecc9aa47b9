"""
Devices, in one place for every script: the names a user may give (auto, cpu, cuda, cuda:N, mps),
checked in one line before any work; the dtype 'auto' stands for; a folder-safe name for results;
and the facts of the machine that a speed figure depends on (threads, vector width, GPU, versions).
"""
import os
import platform
import re
import time

import torch

from minrnn.cli import UsageError

from minrnn.settings import DEVICES as CHOICES


def resolve(name):
    """The device to run on: 'auto' is cuda, mps or cpu, the first available; 'cuda' is cuda:0.
    Raises UsageError, in one line, for a name this machine cannot run."""
    check(name)
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    return 'cuda:0' if name == 'cuda' else name


def check(name):
    """A device this machine has: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    if name == 'auto':
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ('cpu', 'cuda', 'mps') or (device.type == 'cpu' and device.index):
        raise UsageError(f'unknown device {name!r}; use {CHOICES}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device={name}, but torch sees no CUDA GPU here (torch {torch.__version__}); '
                         'use --device=auto or --device=cpu')
    if device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f'--device={name}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise UsageError(f'--device={name}, but MPS is not available here; use --device=auto or --device=cpu')


def kind(device):
    """'cuda', 'mps' or 'cpu': what torch.autocast and the optimizers take."""
    return torch.device(device).type


def resolve_dtype(dtype, device):
    """'auto' is bfloat16 on a CUDA GPU that has it, else float32."""
    if dtype != 'auto':
        return dtype
    return 'bfloat16' if kind(device) == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'


def free_memory(device):
    """Bytes this device can still allocate (a CPU: the system's available memory); None if unknown."""
    if kind(device) == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):  # not on every system (macOS, Windows)
        return None


def folder_name(device):
    """A name for results/<...>/: the GPU's model on CUDA, 'cpu' otherwise."""
    if kind(device) == 'cuda':
        return re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(device).lower()).strip('-')
    return kind(device)


def cpu_model():
    """The CPU's marketing name where Linux gives it (platform.processor() is empty there)."""
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    except OSError:
        names = []
    return f'{names[0]} ({platform.machine()})' if names else platform.processor() or platform.machine()


def environment(device):
    """What a time or a loss measured on this device depends on beyond the code: recorded with every
    run (config.json, the log's first row) and every bench."""
    on_cuda = kind(device) == 'cuda'
    return {'device': device, 'device_detail': torch.cuda.get_device_name(device) if on_cuda else cpu_model(),
            'threads': torch.get_num_threads(), 'cpu_capability': torch.backends.cpu.get_cpu_capability(),
            'torch': torch.__version__, 'cuda': torch.version.cuda if on_cuda else None,
            'python': platform.python_version(), 'os': platform.system(), 'cpus': os.cpu_count()}


def matmul_flops_per_second(device, size=512, repeats=8):
    """What this device gives a float32 matrix product now, in FLOP/s (a few hundredths of a second
    on a CPU): the rate that a projection of a run's time starts from."""
    a = torch.full((size, size), 0.5, device=device)  # not random: a run's random streams stay untouched
    a @ a  # warm-up: the library's first call sets itself up
    if kind(device) == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    if kind(device) == 'cuda':
        torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / max(time.perf_counter() - start, 1e-9)


def projected_seconds(config, params, val_tokens, device):
    """An estimate, from the model's size alone, of (one training step, one evaluation) in seconds:
    6 FLOPs a parameter and token for a step, 2 for scoring, at the rate this device gives a matrix
    product (what a run adds on top, attention, the scan, memory traffic, makes it a lower bound)."""
    rate = matmul_flops_per_second(device)
    step_tokens = config['batch_size'] * config['block_size'] * config['gradient_accumulation_steps']
    eval_tokens = config['eval_iters'] * config['batch_size'] * config['block_size'] + val_tokens
    return 6 * params * step_tokens / rate, 2 * params * eval_tokens / rate


def long_run_warning(config, params, val_tokens, device, cpu_config=None):
    """A warning, in words, where a run on a CPU would leave its user watching a still bar: a first
    evaluation over a minute or a whole run over two hours, by projected_seconds(); None otherwise
    (and on a GPU, whose rate a short product does not show)."""
    if kind(device) != 'cpu':
        return None
    step, evaluation = projected_seconds(config, params, val_tokens, device)
    evaluations = config['max_iters'] // config['eval_interval'] + 1
    run = step * config['max_iters'] + evaluation * evaluations
    if config['max_seconds']:
        run = min(run, config['max_seconds'] + evaluation)
    if evaluation < 60 and run < 2 * 3600:
        return None
    instead = f'; the CPU recipe is {cpu_config}' if cpu_config else ''
    return (f'on this CPU a step of this configuration takes at least {step:.1f} s and an evaluation '
            f'{evaluation / 60:.1f} min, the whole run at least {run / 3600:.1f} hours (projected from its '
            f'{params / 1e6:.1f}M parameters at the rate this CPU gives a matrix product){instead}')
