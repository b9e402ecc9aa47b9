"""
The 'compiled' scan backend: cpu_kernels.cpp, built on first use by torch.utils.cpp_extension (a C++
compiler with OpenMP and the `ninja` package; about 30 s, once per machine and source version,
cached in ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR). It is an optional faster path on a
CPU beside the plain-PyTorch one ('sequential'), which it equals (tests/test_scan.py,
tests/test_model.py):

    CompiledScan          = scan.SequentialScan             h_t = a_t h_{t-1} + b_t
    coefficients(kind, .) = model.MinGRUCoefficients, model.MinLSTMCoefficients
    selective_scan(...)   = model.Mamba.scan_channels       Mamba's selective scan, fused

Where it cannot be built, scan_backend='auto' falls back to 'sequential' with one warning, and
scan_backend='compiled' raises an error that names the fix.
"""
import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings

import torch

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_kernels.cpp')
_build = {}  # 'module' or 'error', once per process


# Vector instructions for the channel loops: the widest this CPU has, as PyTorch detects them, for the
# compiler and for ATen's at::vec::Vectorized (CPU_CAPABILITY picks its implementation; its exp calls
# the Sleef functions inside libtorch_cpu). Elsewhere Vectorized is its portable loop. The capability
# is in the build's name, so machines that share a home folder do not share a build.
_VECTOR_FLAGS = {'AVX2': ['-mavx2', '-mfma', '-DCPU_CAPABILITY=AVX2', '-DCPU_CAPABILITY_AVX2'],
                 'AVX512': ['-mavx512f', '-mavx512vl', '-mavx512dq', '-mavx512bw', '-mavx2', '-mfma',
                            '-mprefer-vector-width=512', '-DCPU_CAPABILITY=AVX512', '-DCPU_CAPABILITY_AVX512']}


def load():
    """The compiled module; builds it the first time. Raises RuntimeError if it cannot be built."""
    if not _build:
        try:
            _build['module'] = _load_or_build()
        except Exception as error:  # no compiler, no ninja, no OpenMP: every cause means 'not here'
            _build['error'] = ' '.join(f'{type(error).__name__}: {error}'.split())  # one line
    if 'error' in _build:
        raise RuntimeError(
            "scan_backend='compiled' needs cpu_kernels.cpp built, which failed: "
            f"{_build['error'][:500]}; install a C++ compiler with OpenMP (g++) and `pip install ninja`, "
            "or set scan_backend='sequential' (the same function in plain PyTorch).")
    return _build['module']


def _load_or_build():
    """Import the build of this source version, or build it first. A build is named by a hash of
    what goes into it (source, flags, torch, python), not by the checkout's path, so every checkout
    of the same code shares it. It is made in a private folder, renamed into place when complete:
    a build killed half-way leaves only its own folder (and lock file) behind, which no later run
    waits on, and readers never see half a build."""
    from torch.utils.cpp_extension import load as load_extension
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ['-O3', '-fopenmp', '-fno-math-errno', '-fno-trapping-math', *_VECTOR_FLAGS.get(capability, [])]
    with open(_SOURCE, 'rb') as f:
        source = f.read()
    key = hashlib.sha256(b'\0'.join([source, ' '.join(flags).encode(), torch.__version__.encode(),
                                     sys.version.encode()])).hexdigest()[:16]
    name = f'minrnn_cpu_kernels_{capability.lower()}_{key}'
    root = os.environ.get('TORCH_EXTENSIONS_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'torch_extensions')
    final = os.path.join(root, name)
    library = os.path.join(final, f'{name}.so')
    if os.path.exists(library):
        return _import_library(name, library)
    os.makedirs(root, exist_ok=True)
    _remove_abandoned_builds(root)
    _put_ninja_on_path()
    private = tempfile.mkdtemp(prefix=f'{name}.building-', dir=root)
    print('building the C++ CPU kernels (cpu_kernels.cpp): once for this source and torch, about a minute ...',
          file=sys.stderr, flush=True)
    with _interrupt_recorded() as interrupted:
        try:
            module = load_extension(name, [_SOURCE], build_directory=private, extra_ldflags=['-fopenmp'],
                                    extra_cflags=flags)
        except Exception:
            shutil.rmtree(private, ignore_errors=True)
            if interrupted:  # Ctrl-C reached the compiler too: an interruption, not a missing compiler
                raise KeyboardInterrupt from None
            raise
    try:
        os.rename(private, final)
    except OSError:  # another process finished the same build first: keep its copy
        shutil.rmtree(private, ignore_errors=True)
    if interrupted:
        raise KeyboardInterrupt  # the build finished and is kept; the run stops as asked
    return module


@contextlib.contextmanager
def _interrupt_recorded():
    """SIGINT during a build is recorded (the list becomes non-empty) rather than raised mid-way."""
    interrupted = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _import_library(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _remove_abandoned_builds(root, age_seconds=3600):
    """Private build folders over an hour old: left by a build that was killed."""
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if '.building-' in entry and time.time() - os.path.getmtime(path) > age_seconds:
            shutil.rmtree(path, ignore_errors=True)


def _put_ninja_on_path():
    """torch runs `ninja` from PATH; the pip package's copy lies beside python, which a virtual
    environment used without activating it leaves off PATH."""
    if shutil.which('ninja') is None:
        try:
            import ninja
            os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')
        except ImportError:
            pass  # the build then fails with torch's own 'Ninja is required' message


def available():
    """Whether the compiled kernels can be used here; warns once when they cannot."""
    try:
        load()
        return True
    except RuntimeError as error:
        if not _build.get('warned'):
            _build['warned'] = True
            warnings.warn(f"{error} scan_backend='auto' uses 'sequential' instead.", stacklevel=3)
        return False


def _check(*tensors):
    """A clear error, not a signal from the C++ loops, for tensors they cannot take."""
    for t in tensors:
        if t is not None and (t.device.type != 'cpu' or t.dtype not in (torch.float32, torch.float64)):
            raise ValueError(f"scan_backend='compiled' runs on CPU float32 / float64 tensors, got {t.dtype} "
                             f"on {t.device}; use scan_backend='auto' on other devices")
        if t is not None and t.numel() == 0:
            raise ValueError(f'the compiled kernels need a batch, a time and a width of at least 1, got a tensor '
                             f'of shape {tuple(t.shape)}')


class CompiledScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + b_t in compiled loops; the same function and derivative as scan.SequentialScan."""

    @staticmethod
    def forward(ctx, a, b, h0):
        _check(a, b, h0)
        a, b = a.contiguous(), b.contiguous()
        h0 = None if h0 is None else h0.contiguous()
        h = load().scan_forward(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        grad_a, grad_b, grad_h0 = load().scan_backward(a, h, h0, grad_h.contiguous())
        return grad_a, grad_b, (grad_h0 if h0 is not None else None)


class CompiledCoefficients(torch.autograd.Function):
    """(a_t, b_t) of minGRU or minLSTM (kind) from the gate pre-activations, in compiled loops. Only
    the pre-activations are saved; the backward recomputes the gates from them."""

    @staticmethod
    def forward(ctx, kind, gates):
        _check(gates)
        gates = gates.contiguous()
        ctx.kind = kind
        ctx.save_for_backward(gates)
        return tuple(getattr(load(), f'{kind}_forward')(gates))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a, grad_b):
        gates, = ctx.saved_tensors
        grad = getattr(load(), f'{ctx.kind}_backward')(gates, grad_a.contiguous(), grad_b.contiguous())
        return None, grad


def coefficients(kind, gates):
    """(a_t, b_t) of kind 'mingru' or 'minlstm' from its gate pre-activations (batch, time, k * width)."""
    return CompiledCoefficients.apply(kind, gates)


class CompiledSelectiveScan(torch.autograd.Function):
    """Mamba's selective scan fused (cpu_kernels.cpp): the same function and derivative as
    model.Mamba.scan_channels over all channels, h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t and
    y_t = C_t . h_t + D x_t, with no (batch, time, channels, d_state) tensor in memory. Returns y and
    the last state; the last state carries no gradient (chunked training through it is not supported)."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, h0):
        _check(x, delta, A, B, C, D, h0)
        inputs = [t.contiguous() for t in (x, delta, A, B, C, D)]
        y, last, saved = load().selective_scan_forward(*inputs, None if h0 is None else h0.contiguous())
        ctx.save_for_backward(*inputs, saved)
        ctx.has_h0 = h0 is not None
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_last):
        *inputs, saved = ctx.saved_tensors
        *grads, grad_h0 = load().selective_scan_backward(*inputs, saved, grad_y.contiguous())
        return (*grads, grad_h0 if ctx.has_h0 else None)


def selective_scan(x, delta, A, B, C, D, h0=None):
    """y (batch, time, channels) and the last state (batch, channels, d_state) of Mamba's selective
    scan, fused; x, delta (batch, time, channels), A (channels, d_state), B, C (batch, time, d_state)."""
    return CompiledSelectiveScan.apply(x, delta, A, B, C, D, h0)
