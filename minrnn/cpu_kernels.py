"""
The 'compiled' scan backend: cpu_kernels.cpp, built on first use by torch.utils.cpp_extension (a C++
compiler with OpenMP and the `ninja` package; about 30 s, once per machine and source version,
cached in ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR). It is an optional faster path on a
CPU beside the plain-PyTorch one ('sequential'), which it equals (tests/test_scan.py,
tests/test_model.py):

    scan(a, b, h0)        = scan.SequentialScan             h_t = a_t h_{t-1} + b_t
    coefficients(kind, .) = model.MinGRUCoefficients, model.MinLSTMCoefficients
    selective_scan(...)   = model.Mamba.scan_channels       Mamba's selective scan, fused with delta's
                                                            softplus and the output gate
    causal_conv(...)      = model.ShiftedSum                the causal depthwise conv (and its SiLU)

Each is a torch.library custom operator (minrnn::...) with its derivative registered, so
torch.compile traces through it.

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
from typing import Optional, Tuple

import torch
from torch import Tensor

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


def _contiguous(t):
    """The C++ loops index their tensors as dense rows: every input goes through here, _rows or
    .contiguous() (a carried state is a strided view, h[:, -1], and an optional one may be None)."""
    return None if t is None else t.contiguous()


def _rows(t):
    """A (batch, time, width) input as the selective scan and the conv read it (Rows in the C++): as it
    is where each row is contiguous and the rows evenly spaced (a contiguous tensor, or a slice of the
    last dimension such as chunk's and split's views), else a contiguous copy."""
    if t is None or (t.stride(-1) == 1 and t.stride(0) == t.shape[1] * t.stride(1)):
        return t
    return t.contiguous()


# ----------------------------------------------------------------------------- the operators
# Each kernel is a torch.library custom operator with a fake (shape-only) implementation and a
# registered derivative, so torch.compile traces a whole block through it (no graph break) and
# autograd differentiates it; each backward is itself an operator.

@torch.library.custom_op('minrnn::scan', mutates_args=())
def scan(a: Tensor, b: Tensor, h0: Optional[Tensor]) -> Tensor:
    """h_t = a_t h_{t-1} + b_t in compiled loops: scan.SequentialScan's function and derivative."""
    _check(a, b, h0)
    return load().scan_forward(a.contiguous(), b.contiguous(), _contiguous(h0))


@scan.register_fake
def _(a, b, h0):
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@torch.library.custom_op('minrnn::scan_backward', mutates_args=())
def scan_backward(a: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(dL/da, dL/db, dL/dh0; an empty tensor where h0 is None) by the reverse recurrence."""
    grad_a, grad_b, grad_h0 = load().scan_backward(a.contiguous(), h.contiguous(), _contiguous(h0), grad_h.contiguous())
    return grad_a, grad_b, grad_h0 if h0 is not None else a.new_empty(0)


@scan_backward.register_fake
def _(a, h, h0, grad_h):
    return torch.empty_like(a), torch.empty_like(grad_h), torch.empty_like(h0) if h0 is not None else a.new_empty(0)


def _scan_setup(ctx, inputs, output):
    a, _, h0 = inputs
    ctx.save_for_backward(a, output, h0)


def _scan_derivative(ctx, grad_h):
    a, h, h0 = ctx.saved_tensors
    grad_a, grad_b, grad_h0 = scan_backward(a, h, h0, grad_h)
    return grad_a, grad_b, grad_h0 if h0 is not None else None


scan.register_autograd(_scan_derivative, setup_context=_scan_setup)


@torch.library.custom_op('minrnn::gate_coefficients', mutates_args=())
def gate_coefficients(kind: str, gates: Tensor) -> Tuple[Tensor, Tensor]:
    """(a_t, b_t) of minGRU or minLSTM (kind) from the gate pre-activations (batch, time, k * width):
    model.MinGRUCoefficients / model.MinLSTMCoefficients. Only the pre-activations are saved; the
    backward recomputes the gates from them."""
    _check(gates)
    a, b = getattr(load(), f'{kind}_forward')(gates.contiguous())
    return a, b


@gate_coefficients.register_fake
def _(kind, gates):
    width = gates.shape[-1] // (2 if kind == 'mingru' else 3)
    a = gates.new_empty(*gates.shape[:-1], width)
    return a, torch.empty_like(a)


@torch.library.custom_op('minrnn::gate_coefficients_backward', mutates_args=())
def gate_coefficients_backward(kind: str, gates: Tensor, grad_a: Tensor, grad_b: Tensor) -> Tensor:
    return getattr(load(), f'{kind}_backward')(gates.contiguous(), grad_a.contiguous(), grad_b.contiguous())


@gate_coefficients_backward.register_fake
def _(kind, gates, grad_a, grad_b):
    return torch.empty_like(gates, memory_format=torch.contiguous_format)


def _gates_setup(ctx, inputs, output):
    ctx.kind = inputs[0]
    ctx.save_for_backward(inputs[1])


def _gates_derivative(ctx, grad_a, grad_b):
    gates, = ctx.saved_tensors
    return None, gate_coefficients_backward(ctx.kind, gates, grad_a, grad_b)


gate_coefficients.register_autograd(_gates_derivative, setup_context=_gates_setup)


def coefficients(kind, gates):
    """(a_t, b_t) of kind 'mingru' or 'minlstm' from its gate pre-activations (batch, time, k * width)."""
    return gate_coefficients(kind, gates)


CHUNK = 16  # the fused selective scan keeps the state of every CHUNK-th step (kChunk in cpu_kernels.cpp)


def _lanes(dtype):
    """Values in one of the build's vector registers (Vectorized<T>::size()): 64 bytes with AVX-512, else 32."""
    width = 64 if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 32
    return width // torch.empty(0, dtype=dtype).element_size()


@torch.library.custom_op('minrnn::selective_scan', mutates_args=())
def selective_scan_op(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Optional[Tensor],
                      delta_bias: Optional[Tensor], z: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mamba's selective scan fused: h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t and y_t = C_t . h_t
    + D x_t (model.Mamba.scan_channels over all channels), with no (batch, time, channels, d_state)
    tensor in memory; given delta_bias, delta = softplus(delta + delta_bias); given z, y SiLU(z).
    Returns y, the last state, and for the backward the state of every CHUNK-th step (it recomputes the
    rest from them) and delta after the softplus (empty without delta_bias)."""
    _check(x, delta, A, B, C, D, h0, delta_bias, z)
    x, delta, B, C, z = (_rows(t) for t in (x, delta, B, C, z))
    A, D, h0, delta_bias = (_contiguous(t) for t in (A, D, h0, delta_bias))
    y, last, saved, softplus = load().selective_scan_forward(x, delta, A, B, C, D, h0, delta_bias, z)
    return y, last, saved, softplus


@selective_scan_op.register_fake
def _(x, delta, A, B, C, D, h0, delta_bias, z):
    batch, T, E = x.shape
    lanes = _lanes(x.dtype)
    saved = x.new_empty(batch, -(-T // CHUNK), A.shape[1], (-(-E // lanes) + 1) * lanes)  # padded() in the C++
    softplus = x.new_empty(x.shape if delta_bias is not None else 0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(batch, E, A.shape[1]), saved, softplus


@torch.library.custom_op('minrnn::selective_scan_backward', mutates_args=())
def selective_scan_backward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                            delta_bias: Optional[Tensor], z: Optional[Tensor], saved: Tensor, softplus: Tensor,
                            grad_y: Tensor, grad_last: Optional[Tensor]
                            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """dL/d of x, delta, A, B, C, D, h0, delta_bias (zero without one) and z (empty without one), each
    chunk recomputed from its saved state (and the forward's softplus of delta); grad_last is dL/d(last
    state) where a later chunk read it (None: zero)."""
    x, delta, B, C, z = (_rows(t) for t in (x, delta, B, C, z))
    A, D, delta_bias, grad_y, grad_last = (_contiguous(t) for t in (A, D, delta_bias, grad_y, grad_last))
    return tuple(load().selective_scan_backward(x, delta, A, B, C, D, delta_bias, z, saved, softplus, grad_y,
                                                grad_last))


@selective_scan_backward.register_fake
def _(x, delta, A, B, C, D, delta_bias, z, saved, softplus, grad_y, grad_last):
    batch, _, E = x.shape
    return (*(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, delta, A, B, C, D)),
            x.new_empty(batch, E, A.shape[1]), D.new_empty(E), x.new_empty(x.shape if z is not None else 0))


def _selective_setup(ctx, inputs, output):
    x, delta, A, B, C, D, h0, delta_bias, z = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, z, *output[2:])
    ctx.has = [t is not None for t in (h0, delta_bias, z)]
    ctx.mark_non_differentiable(*output[2:])


def _selective_derivative(ctx, grad_y, grad_last, grad_saved, grad_softplus):
    *grads, grad_h0, grad_bias, grad_z = selective_scan_backward(*ctx.saved_tensors, grad_y, grad_last)
    return (*grads, *(grad if given else None for grad, given in zip((grad_h0, grad_bias, grad_z), ctx.has)))


selective_scan_op.register_autograd(_selective_derivative, setup_context=_selective_setup)


def selective_scan(x, delta, A, B, C, D, h0=None, delta_bias=None, z=None):
    """y (batch, time, channels) and the last state (batch, channels, d_state) of Mamba's selective
    scan, fused; x, delta, z (batch, time, channels), A (channels, d_state), B, C (batch, time, d_state),
    D, delta_bias (channels). With delta_bias, delta is its pre-activation: softplus(delta + delta_bias)
    is fused in; with z, Mamba's output gate: y SiLU(z) is returned (as gpu_kernels.selective_scan).
    Both outputs are differentiable: a later chunk that reads the last state passes its gradient back."""
    y, last, _, _ = selective_scan_op(x, delta, A, B, C, D, h0, delta_bias, z)
    return y, last


CONV_MAX_KERNEL = 4  # the C++ conv's window of inputs (kConvTaps); scan.causal_conv runs longer kernels plainly


@torch.library.custom_op('minrnn::causal_conv', mutates_args=())
def causal_conv(x: Tensor, weight: Tensor, bias: Tensor, silu: bool) -> Tensor:
    """model.ShiftedSum's causal depthwise conv, y_t = bias + sum_s weight[K-1-s] x_{t-s}, then SiLU(y)
    where silu; x (batch, time, channels), weight (K <= CONV_MAX_KERNEL, channels), bias (channels). Only
    x is saved: the backward recomputes y for SiLU's derivative."""
    _check(x, weight, bias)
    return load().causal_conv_forward(_rows(x), weight.contiguous(), bias.contiguous(), silu)


@causal_conv.register_fake
def _(x, weight, bias, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op('minrnn::causal_conv_backward', mutates_args=())
def causal_conv_backward(x: Tensor, weight: Tensor, bias: Tensor, silu: bool, grad_y: Tensor
                         ) -> Tuple[Tensor, Tensor, Tensor]:
    return tuple(load().causal_conv_backward(_rows(x), weight.contiguous(), bias.contiguous(), silu,
                                             grad_y.contiguous()))


@causal_conv_backward.register_fake
def _(x, weight, bias, silu, grad_y):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight), torch.empty_like(bias)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, ctx.silu = inputs
    ctx.save_for_backward(x, weight, bias)


def _conv_derivative(ctx, grad_y):
    return (*causal_conv_backward(*ctx.saved_tensors, ctx.silu, grad_y), None)


causal_conv.register_autograd(_conv_derivative, setup_context=_conv_setup)
