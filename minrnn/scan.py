"""
One primitive for every recurrent block of the project: the first-order linear recurrence

    h_t = a_t * h_{t-1} + b_t          (t = 1..T, h_0 given or zero)

over tensors of shape (batch, time, channels). minGRU, minLSTM (Feng et al. 2024, eqs. for
h_t in sections 3.1.2 and 3.2.2) and the Mamba-like selective SSM all reduce to it, because their
gates read only x_t, never h_{t-1}.

a_t is given as values (a=) or as logs (log_a=; a gate in (0, 1), or exp(delta * A) in Mamba), b_t as
values of any sign (b=; Mamba's delta * B * x) or as logs of positive values (log_b=). Each backend
takes whichever form it needs, so a block can hand the log backend logs that never left log space
(the paper's appendix) and the sequential backend plain values (no exp/log round trip).

Backends, chosen by name:
  'log'        the paper's parallel scan in log space (Heinsen 2023; the paper's appendix):
               log h_t = a*_t + logcumsumexp_k<=t(log b_k - a*_k), a*_t = cumsum(log a)_t.
               O(log T) depth on a GPU. Negative b is split into positive and negative parts.
               It runs in pieces of LOG_CHUNK steps, each from the state the last one ended in:
               over a whole sequence the cumsum of log a grows to hundreds and, in float32, loses
               digits. It computes in float32 on a GPU and in float64 on a CPU, and returns the
               input dtype.
  'sequential' a loop over time in a custom autograd Function: no per-step autograd graph, the
               backward pass runs the reverse recurrence. Exact for any sign; fastest on a CPU,
               which has no parallelism over time to win.
  'compiled'   the same loop as 'sequential', and its backward, compiled from C++ (cpu_kernels.cpp;
               CPU only, built on first use): one pass over memory instead of two PyTorch calls
               per time step. For Mamba, 'compiled' means its whole selective scan fused
               (cpu_kernels.selective_scan), which never builds this scan's (B, T, E * N) inputs.
  'triton'     the loop's parallel form in Triton kernels for a CUDA GPU, computing in float32
               (gpu_kernels.py): an associative scan inside tiles of time, the state carried between
               them; minGRU's / minLSTM's gates computed inside it. For Mamba, its whole selective
               scan fused (gpu_kernels.selective_scan), as 'compiled' on a CPU.
  'auto'       'triton' on CUDA where triton imports (it ships with PyTorch's CUDA builds), else 'log';
               'compiled' on a CPU where it builds, else 'sequential' (also on MPS, which has no
               float64).

This module is the one place that decides which kernel runs. A layer asks once, when it is built
(Kernels): per device type, the backend 'auto' stands for there, and which fused kernel its exact
class may use. Its forward then calls gated_scan() (minGRU / minLSTM), selective_scan() (Mamba) or
causal_conv() (the convolution before them) with that choice, and never loads anything itself.
"""
import torch

from minrnn import cpu_kernels

from minrnn.settings import BACKENDS  # the names a config may give


def widen(x):
    """Half-precision activations (autocast) become float32 before a scan: its coefficients are logs
    and products of many factors. float32 and float64 pass unchanged. (The Triton kernels read half
    precision themselves and compute in float32.)"""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def load_gpu_kernels():
    """gpu_kernels, imported on first use: a CPU run never pays for importing triton."""
    from minrnn import gpu_kernels
    return gpu_kernels


def resolve_backend(backend, device):
    """The backend 'auto' stands for on this device; other names are checked and returned."""
    if backend == 'auto':
        device = torch.device(device).type
        if device == 'cuda':
            return 'triton' if load_gpu_kernels().available() else 'log'
        return 'compiled' if device == 'cpu' and cpu_kernels.available() else 'sequential'
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


# The fused kernels, each the math of one class of model.py: a layer uses one only if its own class
# names it (Kernels), so a subclass that changes the math runs its own code on the plain kernels.
FUSED = ('mingru', 'minlstm', 'selective', 'conv')


class Kernels:
    """The kernels one layer runs, chosen when it is built, so that forward does no loading and
    torch.compile traces nothing but tensor code: for the device type the layer will run on (CUDA
    where it is available, else the CPU), the backend `backend` stands for, the triton import or the
    C++ build done now. (A machine with a GPU does not build the C++ kernels for a model it will move
    there; a CPU forward on it resolves, and builds, on its first call.) fused: the fused kernel the
    layer's class implements (one of FUSED), or None for the plain path of its own math on the
    generic scan."""

    def __init__(self, backend, fused=None):
        if fused is not None and fused not in FUSED:
            raise ValueError(f'no fused kernel {fused!r}: there are {", ".join(FUSED)}; a layer that computes '
                             'other math leaves fused_kernel unset and runs its own code on the plain scan')
        self.requested, self.fused = backend, fused
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.backends = {device: resolve_backend(backend, device)}

    @classmethod
    def of(cls, layer, backend):
        """The kernels of layer: the fused one only where its exact class declares fused_kernel (a
        subclass inherits the attribute, not the right to the kernel)."""
        return cls(backend, type(layer).__dict__.get('fused_kernel'))

    def backend(self, device):
        """The backend for tensors on device (other device types resolve without loading anything)."""
        return self.backends.get(device.type) or resolve_backend(self.requested, device)

    def fused_on(self, device):
        """The fused kernel's backend on device ('compiled' or 'triton'), or None where it runs plainly."""
        backend = self.backend(device)
        return backend if self.fused is not None and backend in ('compiled', 'triton') else None


def check_backend(backend, device):
    """A ValueError in words where this backend cannot run on this device (before training, not at the
    first forward); builds the C++ kernels where they are asked for, or where 'auto' stands for them
    (a CPU run on a machine with a GPU, whose layers resolve only CUDA when built)."""
    device = torch.device(device).type
    if backend == 'auto':
        resolve_backend(backend, device)
    if backend == 'compiled':
        if device != 'cpu':
            raise ValueError("scan_backend='compiled' runs on a CPU; on a GPU use 'auto' (Triton kernels)")
        cpu_kernels.load()
    if backend == 'triton':
        if device != 'cuda':
            raise ValueError("scan_backend='triton' runs on a CUDA GPU; on a CPU use 'auto' (the compiled loops)")
        load_gpu_kernels().check()


def gated_scan(kernels, gates, coefficients, log_coefficients, h0=None):
    """h of a minGRU / minLSTM layer from its gate pre-activations (any float dtype): its fused kernel
    computes the coefficients inside the scan (Triton) or in C++; otherwise the 'log' backend scans
    log_coefficients (logs that never left log space) and the others the plain coefficients.
    coefficients / log_coefficients: gates -> (a, b) / (log a, log b); log_coefficients None: the
    layer has no log form of its own, and the log backend scans the plain values."""
    backend, fused = kernels.backend(gates.device), kernels.fused_on(gates.device)
    if fused == 'triton':
        return load_gpu_kernels().gated_scan(kernels.fused, gates, h0)
    gates = widen(gates)
    if backend == 'log' and log_coefficients is not None:  # h0 > 0 always: b = z h~ > 0, i' h~ > 0
        log_a, log_b = log_coefficients(gates)
        return linear_scan(log_a=log_a, log_b=log_b, h0=h0, backend='log')
    if fused == 'compiled':
        return linear_scan(*cpu_kernels.coefficients(kernels.fused, gates), h0=h0, backend='compiled')
    return linear_scan(*coefficients(gates), h0=h0, backend=backend)


def selective_scan(kernels, x, delta, A, B, C, D, h0, plain, z=None, gate=None, delta_bias=None):
    """Mamba's selective scan, y and the last state: fused in C++ or Triton, which never build the
    (batch, T, E, N) coefficients; otherwise plain(x, delta, B, C, h0), the block's own scan on
    linear_scan. Given z, y is gated: y * SiLU(z), fused into the kernels, gate(y, z) after the plain
    path. delta_bias: where fuses_softplus(), delta is its pre-activation and delta = softplus(delta +
    delta_bias). Triton reads half-precision x, delta, B, C, z as they are (y in x's dtype); the others
    get them widened."""
    fused = kernels.fused_on(x.device)
    if fused == 'triton':
        return load_gpu_kernels().selective_scan(x, delta, A, B, C, D, h0, delta_bias=delta_bias, z=z)
    x, delta, B, C = (widen(t) for t in (x, delta, B, C))
    z = None if z is None else widen(z)
    if fused == 'compiled':
        return cpu_kernels.selective_scan(x, delta, A, B, C, D, h0, delta_bias=delta_bias, z=z)
    if delta_bias is not None:
        raise ValueError("only the fused kernels take delta's pre-activation and bias; pass delta itself")
    y, last = plain(x, delta, B, C, h0)
    return (y, last) if z is None else (gate(y, z), last)


def fuses_softplus(kernels, device):
    """Whether selective_scan's kernel on device takes delta's pre-activation and bias and applies the
    softplus itself (the fused ones): then the block hands it those (delta_bias=) instead of delta."""
    return kernels.fused_on(device) in ('triton', 'compiled')


def causal_conv(kernels, x, weight, bias, silu, plain):
    """The recurrent blocks' causal depthwise conv (model.CausalDepthwiseConv): for kernels of up to 4
    steps (Mamba's d_conv, the configs' conv_kernel) one Triton kernel, or the C++ one on a CPU (x
    widened to float32 under autocast; a half-precision model runs plainly); plain(x, weight, bias,
    silu) (shifted multiply-adds) otherwise."""
    fused = kernels.fused_on(x.device)
    if fused == 'triton' and weight.shape[0] <= load_gpu_kernels().CONV_MAX_KERNEL:
        return load_gpu_kernels().causal_conv(x, weight, bias, silu)
    if (fused == 'compiled' and weight.shape[0] <= cpu_kernels.CONV_MAX_KERNEL
            and widen(x).dtype == weight.dtype == bias.dtype):
        return cpu_kernels.causal_conv(widen(x), weight, bias, silu)
    return plain(x, weight, bias, silu)


def linear_scan(a=None, b=None, *, log_a=None, log_b=None, h0=None, backend='auto'):
    """Return h (batch, time, channels) with h_t = a_t * h_{t-1} + b_t.

    Give a (positive values) or log_a, and b (values of any sign) or log_b (logs of positive
    values), each (batch, time, channels). h0: (batch, channels) or None for zero; positive when
    log_b is given to the log backend.
    """
    if (a is None) == (log_a is None) or (b is None) == (log_b is None):
        raise ValueError('linear_scan: give exactly one of a= or log_a=, and one of b= or log_b=')
    reference = a if a is not None else log_a
    backend = resolve_backend(backend, reference.device)
    if backend in ('sequential', 'compiled', 'triton'):
        a = a if a is not None else log_a.exp()
        b = b if b is not None else log_b.exp()
        if backend == 'triton':
            return load_gpu_kernels().linear_scan(a, b, h0)
        if backend == 'compiled':
            return cpu_kernels.scan(a, b, h0)
        return SequentialScan.apply(a, b, h0)
    # backend == 'log': float64 on a CPU (a reference there); float32 on a GPU, where float64 runs at
    # 1/2 (H100) to 1/64 (T4, consumer cards) of the float32 rate, made accurate by chunks (log_scan).
    compute = torch.float64 if reference.device.type == 'cpu' else torch.float32
    if a is not None and b is not None:
        return LogScanOfValues.apply(a, b, h0, compute)
    log_a = log_a if log_a is not None else a.log()
    return log_scan(log_a, log_b=log_b, b=b, h0=h0, dtype=compute).to(reference.dtype)


LOG_CHUNK = 128  # steps a piece of the log scan covers: its error grows with the cumsum's length


def log_scan(log_a, log_b=None, b=None, h0=None, dtype=torch.float64, chunk=LOG_CHUNK):
    """The log backend: Heinsen's scan in pieces of `chunk` steps, each starting from the state the
    last one ended in (log h for positive b, h for signed b), computed in dtype. In float32 the
    cumsum of log a over thousands of steps grows to hundreds and loses digits; over 128 steps it
    does not (tests/test_scan.py states the error at T = 4096)."""
    log_a = log_a.to(dtype)
    carried = None if h0 is None else (h0.to(dtype).log() if log_b is not None else h0.to(dtype))
    pieces = []
    for start in range(0, log_a.shape[1], chunk):
        part = slice(start, start + chunk)
        if log_b is not None:  # carry log h: h itself can underflow in float32
            log_h = heinsen_log_scan(log_a[:, part], log_b[:, part].to(dtype), carried)
            pieces.append(log_h.exp())
            carried = log_h[:, -1]
        else:
            pieces.append(_signed_heinsen_scan(log_a[:, part], b[:, part].to(dtype), carried))
            carried = pieces[-1][:, -1]
    return torch.cat(pieces, dim=1)


class LogScanOfValues(torch.autograd.Function):
    """The log backend's scan of a and b given as values, with SequentialScan's derivative,
    dL/da_t = g_t h_{t-1}, instead of autograd's through log a: that one is dL/dlog a_t / a_t, whose
    rounding error grows as 1/a_t for tiny a_t. g_t = dL/dh_t + a_{t+1} g_{t+1} is itself a log
    scan, over reversed time."""

    @staticmethod
    def forward(ctx, a, b, h0, dtype):
        h = log_scan(a.log(), b=b, h0=h0, dtype=dtype).to(a.dtype)
        ctx.save_for_backward(a, h, h0)
        ctx.dtype = dtype
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], dim=1)  # after the last step g is 0 anyway
        g = log_scan(a_next.flip(1).log(), b=grad_h.flip(1), dtype=ctx.dtype).flip(1).to(a.dtype)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1), h[:, :-1]], dim=1)
        return g * h_prev, g, None if h0 is None else a[:, 0] * g[:, 0], None


def heinsen_log_scan(log_a, log_b, log_h0=None):
    """log h of the paper's log-space parallel scan (its appendix, after Heinsen 2023), for positive b
    and h0:  log h_t = a*_t + log(h_0 + sum_{k<=t} exp(log b_k - a*_k)),  a*_t = sum_{k<=t} log a_k.
    h_0 enters as an extra first element of the sequence whose own log a is 0.
    """
    if log_h0 is not None:
        log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a], dim=1)
        log_b = torch.cat([log_h0.unsqueeze(1), log_b], dim=1)
    a_star = torch.cumsum(log_a, dim=1)
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)
    return log_h[:, 1:] if log_h0 is not None else log_h


def heinsen_scan(log_a, log_b, log_h0=None):
    """h of heinsen_log_scan."""
    return heinsen_log_scan(log_a, log_b, log_h0).exp()


def _signed_heinsen_scan(log_a, b, h0=None):
    """Heinsen's scan for b (and h0) of any sign: the recurrence is linear in (h0, b), so
    h = scan(b+) - scan(b-) with b+ = max(b, 0) and b- = max(-b, 0), each positive."""
    def log_part(x):
        # log of the positive part; a very negative finite stand-in for log 0 keeps gradients finite.
        floor = torch.finfo(x.dtype).min / 4
        return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), torch.full_like(x, floor))
    h_pos = heinsen_scan(log_a, log_part(b), None if h0 is None else log_part(h0))
    h_neg = heinsen_scan(log_a, log_part(-b), None if h0 is None else log_part(-h0))
    return h_pos - h_neg


class SequentialScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + b_t by a loop over time, with a hand-written backward:

    with g_t = dL/dh_t (total, through later steps too):  g_t = dL/dh_t|direct + a_{t+1} g_{t+1},
    dL/db_t = g_t,  dL/da_t = g_t h_{t-1},  dL/dh_0 = a_1 g_1.
    Only a and h are saved; no graph is built per step. h0=None means zero and skips its terms.
    """

    @staticmethod
    def forward(ctx, a, b, h0):
        h = b.clone(memory_format=torch.contiguous_format)  # becomes h_t in place, from the start
        a_steps, h_steps = a.unbind(1), h.unbind(1)  # views, one step of time each
        if h0 is not None:
            h_steps[0].addcmul_(a_steps[0], h0)
        for a_t, h_prev, h_t in zip(a_steps[1:], h_steps, h_steps[1:]):
            h_t.addcmul_(a_t, h_prev)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        grad = grad_h.clone(memory_format=torch.contiguous_format)  # becomes g_t in place, from the end
        g_steps, a_steps = grad.unbind(1), a.unbind(1)
        for g_t, a_next, g_next in zip(g_steps[-2::-1], a_steps[:0:-1], g_steps[:0:-1]):
            g_t.addcmul_(a_next, g_next)
        grad_a = torch.empty_like(a)
        torch.mul(grad[:, 1:], h[:, :-1], out=grad_a[:, 1:])  # g_t * h_{t-1}
        if h0 is None:
            grad_a[:, 0] = 0
            return grad_a, grad, None
        torch.mul(grad[:, 0], h0, out=grad_a[:, 0])
        return grad_a, grad, a[:, 0] * grad[:, 0]
