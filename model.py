"""
A character-level language model whose sequence-mixing block is a config value: the model, and
nothing else. A block's math is its mixer here (MIXERS, at the end); what the scripts know of it
besides, its keys, names, colour and the paper's numbers, is minrnn/blocks.py (docs/code.md,
"Adding a block").

    'transformer'  causal self-attention (nanoGPT's GPT)
    'mingru'       minGRU   (Feng et al. 2024, "Were RNNs All We Needed?", section 3.1)
    'minlstm'      minLSTM  (same paper, section 3.2)
    'mamba'        a plain-PyTorch selective SSM (Gu and Dao 2023, "Mamba", Algorithm 2)
    'gru', 'lstm'  the full GRU and LSTM that minGRU and minLSTM simplify (torch.nn.GRU / nn.LSTM)

Every model is: token embedding -> n_layer residual pre-norm blocks -> final norm -> output head
tied to the embedding. A block is  x + mixer(norm(x))  then, when ff_mult > 0,  x + ff(norm(x)).

Every mixer has two paths that compute the same function (the tests hold them equal):
    forward(x, state)     all time steps at once (x: batch, time, n_embd), for training, prompts
                          and evaluation; returns the output and the state after the last step
    step(x_t, state)      one time step, for generation
state=None starts a sequence, and both paths take and return the same state, so a sequence can be
run in chunks, or a prompt read in parallel and then continued step by step. For the recurrent
mixers the state has a fixed size, so the n-th generated token costs the same as the first; for
the Transformer it is a key/value cache that grows with the sequence. A mixer ends in a Linear
named `out`, the residual projection that the model initialises scaled by depth.
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from minrnn import scan, settings
from minrnn.scan import widen


# ----------------------------------------------------------------------------- configuration

class ModelConfig:
    """The model's keys (minrnn/settings.py declares them, minrnn/blocks.py each block's own), each at
    its default unless given: config.n_embd, config.expansion, ... as the mixers read them. Not a
    dataclass: a block registered at run time brings keys of its own. settings.check_model() checks
    the values, once, before a model is built."""

    def __init__(self, **values):
        keys = settings.model_keys()
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise TypeError(f"unknown model key(s): {', '.join(unknown)}")
        for name, key in keys.items():
            setattr(self, name, values.get(name, key.default))

    @classmethod
    def from_dict(cls, d):
        """Take the model's keys out of a larger dict (a run's whole config)."""
        return cls(**{name: d[name] for name in settings.model_keys() if name in d})

    def asdict(self):
        return dict(vars(self))

    def __eq__(self, other):
        return isinstance(other, ModelConfig) and vars(self) == vars(other)

    def __repr__(self):
        return 'ModelConfig(' + ', '.join(f'{k}={v!r}' for k, v in vars(self).items()) + ')'


# ----------------------------------------------------------------------------- shared parts

NORMS = {'layernorm': lambda c: nn.LayerNorm(c.n_embd, bias=c.bias),
         'rmsnorm': lambda c: nn.RMSNorm(c.n_embd)}


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = round(config.ff_mult * config.n_embd)
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class CausalDepthwiseConv(nn.Module):
    """Per-channel convolution over the last `kernel` time steps (no look-ahead):
        y_t = bias + sum_s weight_{kernel-1-s} * x_{t-s},  s = 0..kernel-1   (x before t = 1 is zero)
    then SiLU(y_t) if silu (Mamba), computed by ShiftedSum (or the fused kernel scan.py picks for the
    scan backend); the step path applies the same sum to a window of the last inputs."""
    fused_kernel = 'conv'

    def __init__(self, channels, kernel, silu=False, backend='auto'):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(kernel, channels).uniform_(-kernel ** -0.5, kernel ** -0.5))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.silu = silu
        self.kernels = scan.Kernels.of(self, backend)

    def convolve(self, x):
        return scan.causal_conv(self.kernels, x, self.weight, self.bias, self.silu, plain=ShiftedSum.apply)

    def forward(self, x, window=None):
        """x: (B, T, C); window: the kernel-1 inputs before x, as step() keeps them (None: zeros).
        Returns y and the window after x."""
        n = self.weight.shape[0] - 1
        if window is None:
            return self.convolve(x), last_steps(x, n)
        x = torch.cat([window.to(x.dtype), x], dim=1)
        return self.convolve(x)[:, n:], x[:, x.shape[1] - n:]

    def step(self, x, window):
        """x: (B, C); window: the previous kernel-1 inputs, oldest first, (B, kernel-1, C) or None."""
        if window is None:
            window = x.new_zeros(x.shape[0], self.weight.shape[0] - 1, x.shape[1])
        window = torch.cat([window, x.unsqueeze(1)], dim=1)
        y = self.bias + (window * self.weight).sum(dim=1)
        return (F.silu(y) if self.silu else y), window[:, 1:]


def last_steps(x, n):
    """The last n time steps of x (B, T, C), zeros before the start where T < n: a conv's window."""
    if x.shape[1] < n:
        x = F.pad(x, (0, 0, n - x.shape[1], 0))
    return x[:, x.shape[1] - n:]


class ShiftedSum(torch.autograd.Function):
    """The causal depthwise conv as a sum of time-shifted copies of x, with its derivative written out:
        dL/dx_t = sum_s w_{k-1-s} dL/dy_{t+s},   dL/dw_{k-1-s} = sum_{b,t} dL/dy_t x_{t-s},   dL/dbias = sum dL/dy.
    Each shift is one multiply-add into a slice, forward and backward: on a CPU this beats a depthwise
    nn.Conv1d (no transposes) and autograd through padded slices (no padded copy, no zero-filled
    gradient per slice). With silu, it returns SiLU(y) and recomputes y in backward: only x is saved,
    not y as a separate SiLU would."""

    @staticmethod
    def shifted_sum(x, weight, bias):
        kernel, T = weight.shape[0], x.shape[1]
        y = torch.addcmul(bias, x, weight[kernel - 1])
        for s in range(1, min(kernel, T)):
            y[:, s:].addcmul_(x[:, :-s], weight[kernel - 1 - s])
        return y

    @staticmethod
    def forward(ctx, x, weight, bias, silu=False):
        y = ShiftedSum.shifted_sum(x, weight, bias)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return F.silu(y) if silu else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight, bias = ctx.saved_tensors
        x = x.to(grad_y.dtype)  # under autocast x may be half precision, y (and its gradient) float32
        if ctx.silu:  # SiLU's own backward kernel: d SiLU(y) / dy = s (1 + y (1 - s)),  s = sigmoid(y)
            grad_y = torch.ops.aten.silu_backward(grad_y, ShiftedSum.shifted_sum(x, weight, bias))
        kernel, T = weight.shape[0], x.shape[1]
        grad_x = grad_y * weight[kernel - 1]
        grad_weight = torch.zeros_like(weight)
        grad_weight[kernel - 1] = torch.linalg.vecdot(grad_y, x, dim=1).sum(0)
        for s in range(1, min(kernel, T)):
            grad_x[:, :-s].addcmul_(grad_y[:, s:], weight[kernel - 1 - s])
            grad_weight[kernel - 1 - s] = torch.linalg.vecdot(grad_y[:, s:], x[:, :-s], dim=1).sum(0)
        return grad_x, grad_weight, grad_y.sum((0, 1)), None


class SiLUGate(torch.autograd.Function):
    """y * SiLU(z), Mamba's output gate, saving y and z only (z is part of the in-projection's output,
    saved anyway); autograd would also keep SiLU(z). d/dy = SiLU(z), d/dz = y SiLU'(z)."""

    @staticmethod
    def forward(ctx, y, z):
        ctx.save_for_backward(y, z)
        return y * F.silu(z)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, z = ctx.saved_tensors
        return grad * F.silu(z), torch.ops.aten.silu_backward(grad * y, z)


class Softplus(torch.autograd.Function):
    """softplus(x) = log(1 + e^x), saving its output instead of its input: Mamba's scan keeps delta =
    softplus(x) anyway. Its derivative from the output: sigmoid(x) = 1 - e^-softplus(x)."""

    @staticmethod
    def forward(ctx, x):
        out = F.softplus(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        return grad * torch.expm1(-out).neg_()


# ----------------------------------------------------------------------------- Transformer

class CausalSelfAttention(nn.Module):
    needs_positions = True  # attention is blind to order: the model adds a learned position table

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, x):
        """(B, T, 3C) -> three (B, n_head, T, C / n_head) tensors."""
        B, T, _ = x.shape
        return [t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1)]

    def merge(self, y):
        B, _, T, _ = y.shape
        return self.resid_dropout(self.out(y.transpose(1, 2).reshape(B, T, -1)))

    def forward(self, x, cache=None):
        """Causal attention over x and the cached keys and values of the steps before it."""
        q, k, v = self.heads(x)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # new step i, after `past` cached ones, sees keys 0 .. past + i
            past, T = cache[0].shape[2], x.shape[1]
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.merge(y), (k, v)

    def step(self, x, cache):
        """The new token attends to every cached key: cost grows with the sequence."""
        q, k, v = self.heads(x.unsqueeze(1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.merge(y).squeeze(1), (k, v)


# ----------------------------------------------------------------------------- minGRU / minLSTM

def g(x, sigmoid_x=None):
    """g(x) = x + 0.5 for x >= 0, sigmoid(x) otherwise: the paper's positive, continuous candidate
    state (appendix), so that log h~ exists. Computed as max(x + 0.5, sigmoid(x)), the same function:
    the two branches meet at x = 0, where sigmoid's slope (at most 1/4) is below the line's (1).
    A caller that already has sigmoid(x) passes it."""
    line = x + 0.5
    return torch.maximum(line, torch.sigmoid(x) if sigmoid_x is None else sigmoid_x, out=line)


def g_derivative(x, sigmoid_x):
    """g'(x): 1 for x > 0, sigmoid'(x) = sigmoid(x) (1 - sigmoid(x)) <= 1/4 otherwise; computed as
    max(sign(x), sigmoid'(x)), because ops on a boolean mask (where, masked_fill) are slow on a CPU."""
    slope = torch.addcmul(sigmoid_x, sigmoid_x, sigmoid_x, value=-1)
    return torch.maximum(slope, torch.sign(x), out=slope)


def log_g(x):
    """log g(x), computed without leaving log space: log(x + 0.5) or -softplus(-x)."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def _defined_by(cls, name):
    """The class in cls's method resolution order whose own body defines name."""
    return next(k for k in cls.__mro__ if name in k.__dict__)


class MinRNN(nn.Module):
    """A recurrent layer h_t = a_t * h_{t-1} + b_t whose a_t, b_t come from x_t alone.

    Projects n_embd -> inner width, runs the recurrence on the shared scan, projects back.
    Subclasses say how many projections of x_t they need and turn them into (a_t, b_t) twice: as
    the paper's plain equations (coefficients: the sequential scan and the step path) and in log
    space (log_coefficients: the log scan, the paper's appendix). The tests hold the two equal.
    A subclass that overrides coefficients alone runs them on every backend: the log scan then
    takes its values, not a parent's log-space math, and no fused kernel (which computes its
    class's own coefficients) is used unless its own class names one (fused_kernel).
    """
    n_projections = None

    def __init__(self, config):
        super().__init__()
        d, inner = config.n_embd, round(config.expansion * config.n_embd)
        self.conv = (CausalDepthwiseConv(d, config.conv_kernel, backend=config.scan_backend)
                     if config.conv_kernel else None)
        self.to_gates = nn.Linear(d, self.n_projections * inner, bias=config.bias)
        self.out = nn.Linear(inner, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.kernels = scan.Kernels.of(self, config.scan_backend)
        self.has_own_log_space = issubclass(_defined_by(type(self), 'log_coefficients'),
                                            _defined_by(type(self), 'coefficients'))

    def coefficients(self, gates):
        """(a_t, b_t) from the projections of x_t."""
        raise NotImplementedError

    def log_coefficients(self, gates):
        """(log a_t, log b_t) from the same projections, never leaving log space."""
        raise NotImplementedError

    def forward(self, x, state=None):
        h0, window = state if state is not None else (None, None)
        if self.conv is not None:
            x, window = self.conv(x, window)
        gates = self.to_gates(x)  # widened for the scans that need it
        h = scan.gated_scan(self.kernels, gates, self.coefficients,
                            self.log_coefficients if self.has_own_log_space else None, h0)
        return self.dropout(self.out(h.to(x.dtype))), (h[:, -1], window)

    def step(self, x, state):
        h, window = state if state is not None else (None, None)
        if self.conv is not None:
            x, window = self.conv.step(x, window)
        a, b = self.coefficients(widen(self.to_gates(x)))
        h = b if h is None else a * h + b  # h_0 = 0
        return self.dropout(self.out(h.to(x.dtype))), (h, window)


class MinGRU(MinRNN):
    """minGRU (paper eq. in section 3.1.2):
        z_t = sigmoid(Linear(x_t)),  h~_t = g(Linear(x_t)),  h_t = (1 - z_t) h_{t-1} + z_t h~_t
    so a_t = 1 - z_t and b_t = z_t h~_t; in log space, as the appendix does:
        log z = -softplus(-k),  log(1 - z) = -softplus(k)."""
    n_projections, fused_kernel = 2, 'mingru'

    def coefficients(self, gates):
        return MinGRUCoefficients.apply(gates)

    def log_coefficients(self, gates):
        k_z, k_h = gates.chunk(2, dim=-1)
        return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h)


class MinGRUCoefficients(torch.autograd.Function):
    """minGRU's a = 1 - z and b = z h~ from the projections (k_z, k_h), with the derivative written out
    (autograd would record a dozen elementwise passes over memory and replay each one backwards,
    which on a CPU costs more than the scan). With dz/dk_z = z (1 - z) = z a:
        dL/dk_z = (dL/db h~ - dL/da) z a,      dL/dk_h = dL/db z g'(k_h).
    """

    @staticmethod
    def forward(ctx, gates):
        k_z, k_h = gates.chunk(2, dim=-1)
        z, sigmoid_h = torch.sigmoid(gates).chunk(2, dim=-1)  # one call for both projections
        a = torch.sigmoid(-k_z)  # 1 - z without cancellation near z = 1
        candidate = g(k_h, sigmoid_h)
        ctx.save_for_backward(z, a, candidate, g_derivative(k_h, sigmoid_h))  # not the gates: less memory
        return a, z * candidate

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_b):
        z, a, candidate, slope = ctx.saved_tensors
        grad_kz = torch.mul(grad_b, candidate).sub_(grad_a).mul_(z).mul_(a)
        grad_kh = torch.mul(grad_b, z).mul_(slope)
        return torch.cat([grad_kz, grad_kh], dim=-1)  # not out= into its halves, which torch.compile refuses


class MinLSTM(MinRNN):
    """minLSTM (paper eq. in section 3.2.2):
        f_t, i_t = sigmoid(Linear(x_t)),  h~_t = g(Linear(x_t)),
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),  h_t = f'_t h_{t-1} + i'_t h~_t.
    In log space (appendix): with d = log i - log f = softplus(-k_f) - softplus(-k_i),
        log f' = -softplus(d),  log i' = -softplus(-d)."""
    n_projections, fused_kernel = 3, 'minlstm'

    def coefficients(self, gates):
        return MinLSTMCoefficients.apply(gates)

    def log_coefficients(self, gates):
        k_f, k_i, k_h = gates.chunk(3, dim=-1)
        diff = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(diff), -F.softplus(-diff) + log_g(k_h)


class MinLSTMCoefficients(torch.autograd.Function):
    """minLSTM's a = f' and b = i' h~ from the projections (k_f, k_i, k_h), with the derivative written
    out (see MinGRUCoefficients for why). f' = f / (f + i) and i' = 1 - f', so with
    q = (dL/da - dL/db h~) f' i':
        dL/dk_f = q (1 - f),   dL/dk_i = -q (1 - i),   dL/dk_h = dL/db i' g'(k_h).
    """

    @staticmethod
    def forward(ctx, gates):
        k_h = gates.chunk(3, dim=-1)[2]
        f, i, sigmoid_h = torch.sigmoid(gates).chunk(3, dim=-1)  # one call for all three projections
        total = f + i
        f_norm = f / total
        i_norm = torch.div(i, total, out=total)  # in place: at long T each fresh buffer costs page faults
        candidate = g(k_h, sigmoid_h)
        ctx.save_for_backward(f, i, f_norm, i_norm, candidate, g_derivative(k_h, sigmoid_h))
        return f_norm, i_norm * candidate

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_b):
        f, i, f_norm, i_norm, candidate, slope = ctx.saved_tensors
        q = torch.addcmul(grad_a, grad_b, candidate, value=-1).mul_(f_norm).mul_(i_norm)
        grad_ki = torch.mul(q, i).sub_(q)
        grad_kf = q.addcmul_(q, f, value=-1)
        grad_kh = torch.mul(grad_b, i_norm).mul_(slope)
        return torch.cat([grad_kf, grad_ki, grad_kh], dim=-1)  # not out= into its thirds (see MinGRUCoefficients)


# ----------------------------------------------------------------------------- Mamba

class Mamba(nn.Module):
    """A selective state-space mixer after Mamba (Gu and Dao 2023), its Algorithm 2 (S6):

        x, z  = in_proj(u)                         (inner width E = mamba_expand * n_embd each)
        x     = SiLU(causal depthwise conv(x))
        delta = softplus(dt_proj(dt)),  (dt, B, C) = x_proj(x)         input-dependent (selective)
        h_t   = exp(delta_t A) h_{t-1} + delta_t B_t x_t               per channel, N states each
        y_t   = C_t . h_t + D x_t,   output = out(y * SiLU(z))

    A = -exp(A_log) is diagonal (S4D-real init A_n = -(n+1)); A is discretised by zero-order hold and
    B by Euler's rule, as the reference implementation does. The recurrence is the shared scan
    over (batch, time, E * N) with log a = delta * A; b can be negative, so no backend may assume
    b > 0 (scan.py splits signs for the log backends).
    """
    fused_kernel = 'selective'

    def __init__(self, config):
        super().__init__()
        d, inner, n = config.n_embd, config.mamba_expand * config.n_embd, config.d_state
        self.dt_rank = config.dt_rank or math.ceil(d / 16)
        self.d_state = n
        self.in_proj = nn.Linear(d, 2 * inner, bias=config.bias)
        self.conv = CausalDepthwiseConv(inner, config.d_conv, silu=True, backend=config.scan_backend)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out = nn.Linear(inner, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.kernels = scan.Kernels.of(self, config.scan_backend)
        self.chunk_elems = config.scan_chunk_elems

    @torch.no_grad()
    def reset_special_parameters(self, dt_min=1e-3, dt_max=1e-1):
        """Mamba's initialisation, applied after the model-wide one: dt_proj's bias is the inverse
        softplus of a delta drawn log-uniformly in [dt_min, dt_max]."""
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        n = self.d_state
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(self.D.numel(), 1))
        self.D.fill_(1.0)

    def selective_inputs(self, x, fused_softplus=False):
        """delta (.., E), B (.., N), C (.., N) from the conv output x: the 'selection'. fused_softplus:
        delta's pre-activation dt_proj(dt) without its bias, for a kernel that adds it and applies the
        softplus itself."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if fused_softplus:
            return F.linear(dt, self.dt_proj.weight), B, C
        return Softplus.apply(self.dt_proj(dt)), B, C

    def scan_channels(self, x, delta, B, C, A_log, D, h0):
        """y and the last state for a slice of channels: builds (batch, T, channels, N) coefficients
        and scans them from h0 (batch, channels, N) or zero."""
        batch, T, E = x.shape
        log_a = delta.unsqueeze(-1) * -A_log.exp()             # log exp(delta A)
        b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)                   # delta B x
        h = scan.linear_scan(log_a=log_a.reshape(batch, T, -1), b=b.reshape(batch, T, -1),
                             h0=None if h0 is None else h0.reshape(batch, -1), backend=self.kernels.backend(x.device))
        h = h.view(batch, T, E, -1)
        return (h * C.unsqueeze(2)).sum(-1) + D * x, h[:, -1]

    def selective_scan(self, x, delta, B, C, h0=None, z=None, fused_softplus=False):
        """y, or y * SiLU(z) given z, and the last state; scan.py chooses the kernel (fused in C++ or
        Triton, or plain_selective_scan) and widens half-precision inputs for those that need it.
        fused_softplus: delta is selective_inputs' pre-activation, finished by the kernel."""
        return scan.selective_scan(self.kernels, x, delta, -self.A_log.exp(), B, C, self.D, h0,
                                   plain=self.plain_selective_scan, z=z, gate=SiLUGate.apply,
                                   delta_bias=self.dt_proj.bias if fused_softplus else None)

    def plain_selective_scan(self, x, delta, B, C, h0=None):
        """The selective scan on linear_scan, in channel chunks with recomputation where the
        (batch, T, E, N) coefficients would exceed scan_chunk_elems."""
        batch, T, E = x.shape
        per_channel = batch * T * self.d_state
        chunk = max(1, self.chunk_elems // per_channel)
        if chunk >= E:
            return self.scan_channels(x, delta, B, C, self.A_log, self.D, h0)
        parts = [checkpoint(self.scan_channels, x[..., s:s + chunk], delta[..., s:s + chunk], B, C,
                            self.A_log[s:s + chunk], self.D[s:s + chunk], None if h0 is None else h0[:, s:s + chunk],
                            use_reentrant=False)
                 for s in range(0, E, chunk)]
        return torch.cat([y for y, _ in parts], dim=-1), torch.cat([h for _, h in parts], dim=1)

    def forward(self, u, state=None):
        h0, window = state if state is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv(x, window)  # and SiLU
        fused = scan.fuses_softplus(self.kernels, x.device)
        y, h = self.selective_scan(x, *self.selective_inputs(x, fused), h0, z=z, fused_softplus=fused)  # y * SiLU(z)
        # y narrowed to the weight's dtype where that is narrower (a half-precision model, no autocast);
        # else as it is: autocast casts for out() itself, and the Triton kernels' bfloat16 y stays so
        if y.element_size() > self.out.weight.element_size():
            y = y.to(self.out.weight.dtype)
        return self.dropout(self.out(y)), (h, window)

    def step(self, u, state):
        h, window = state if state is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, window = self.conv.step(x, window)  # and SiLU
        x = widen(x)
        delta, B, C = (widen(t) for t in self.selective_inputs(x))
        b = (delta * x).unsqueeze(-1) * B.unsqueeze(1)                   # (batch, E, N)
        a = torch.exp(delta.unsqueeze(-1) * -self.A_log.exp())
        h = b if h is None else a * h + b
        y = (h * C.unsqueeze(1)).sum(-1) + self.D * x
        return self.dropout(self.out((y * F.silu(widen(z))).to(u.dtype))), (h, window)


# ----------------------------------------------------------------------------- GRU / LSTM

class LibraryRNN(nn.Module):
    """A full gated RNN (torch.nn.GRU or nn.LSTM: cuDNN on a GPU, oneDNN on a CPU) as a mixer, in the
    same layer as minGRU / minLSTM: optional causal conv, the recurrence at width expansion * n_embd,
    and the projection `out` back to n_embd. Its gates read h_{t-1}, which is what the paper removes:
    no scan applies, so training runs the T steps one after another inside the library. The state is
    the library's (h, or (h, c) for the LSTM), so a sequence can be continued in chunks; step() is
    forward on one time step, O(1) in the sequence's length."""
    rnn_class = None
    # oneDNN has no half-precision LSTM on CPUs without AVX-512 ('could not create a primitive descriptor');
    # there, under autocast, the layer runs in float32 (as precise as autocast promises, or more), said
    # once. Set to True to take that path anywhere (the tests do).
    half_fails_on_cpu = False

    def __init__(self, config):
        super().__init__()
        d, hidden = config.n_embd, round(config.expansion * config.n_embd)
        self.conv = (CausalDepthwiseConv(d, config.conv_kernel, backend=config.scan_backend)
                     if config.conv_kernel else None)
        self.rnn = self.rnn_class(d, hidden, batch_first=True)  # the library's own initialisation, kept
        self.out = nn.Linear(hidden, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, state=None):
        h0, window = state if state is not None else (None, None)
        if self.conv is not None:
            x, window = self.conv(x, window)
        y, h = self.recurrence(x, h0)
        return self.dropout(self.out(y)), (h, window)

    def recurrence(self, x, h0):
        """The library's layer over the sequence; in float32 where a CPU's library cannot run it in
        the half precision autocast asks for."""
        half_on_cpu = x.device.type == 'cpu' and torch.is_autocast_enabled('cpu')
        if half_on_cpu and not LibraryRNN.half_fails_on_cpu:
            try:
                return self.rnn(x, h0)
            except RuntimeError as error:
                if 'primitive descriptor' not in str(error):
                    raise
                LibraryRNN.half_fails_on_cpu = True
                print(f'warning: this CPU has no half-precision {self.rnn_class.__name__} (oneDNN); it runs in float32',
                      file=sys.stderr)
        if half_on_cpu:
            with torch.autocast('cpu', enabled=False):
                as_float = lambda t: t.float() if torch.is_tensor(t) else tuple(v.float() for v in t)
                return self.rnn(x.float(), None if h0 is None else as_float(h0))
        return self.rnn(x, h0)

    def step(self, x, state):
        y, state = self(x.unsqueeze(1), state)
        return y.squeeze(1), state


class GRU(LibraryRNN):
    """The GRU that minGRU simplifies (Cho et al. 2014; torch.nn.GRU's equations):
        r_t = sigmoid(W_ir x_t + W_hr h_{t-1}),   z_t = sigmoid(W_iz x_t + W_hz h_{t-1}),
        n_t = tanh(W_in x_t + r_t * (W_hn h_{t-1})),   h_t = (1 - z_t) n_t + z_t h_{t-1}."""
    rnn_class = nn.GRU


class LSTM(LibraryRNN):
    """The LSTM that minLSTM simplifies (Hochreiter and Schmidhuber 1997; torch.nn.LSTM's equations):
        i, f, o = sigmoid(W x_t + U h_{t-1}),   c~_t = tanh(W_c x_t + U_c h_{t-1}),
        c_t = f c_{t-1} + i c~_t,   h_t = o tanh(c_t)."""
    rnn_class = nn.LSTM


# ----------------------------------------------------------------------------- the mixers

# A block's math, by its name in configs; what the scripts know of it besides is minrnn/blocks.py.
MIXERS = {'transformer': CausalSelfAttention, 'mingru': MinGRU, 'minlstm': MinLSTM, 'mamba': Mamba, 'gru': GRU,
          'lstm': LSTM}



# ----------------------------------------------------------------------------- the model

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm_mix = NORMS[config.norm](config)
        self.mixer = MIXERS[config.block](config)
        self.ff = None
        if config.ff_mult > 0:
            self.norm_ff, self.ff = NORMS[config.norm](config), FeedForward(config)

    def forward(self, x, state=None):
        y, state = self.mixer(self.norm_mix(x), state)
        x = x + y
        return (x if self.ff is None else x + self.ff(self.norm_ff(x))), state

    def step(self, x, state):
        y, state = self.mixer.step(self.norm_mix(x), state)
        x = x + y
        return (x if self.ff is None else x + self.ff(self.norm_ff(x))), state


class CharLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        # Only attention needs positions; the recurrent blocks know order from the recurrence.
        self.pos_emb = (nn.Embedding(config.block_size, config.n_embd)
                        if getattr(MIXERS[config.block], 'needs_positions', False) else None)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = NORMS[config.norm](config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale the residual projections by depth
            if not isinstance(getattr(block.mixer, 'out', None), nn.Linear):
                raise TypeError(f'{type(block.mixer).__name__} must end in an nn.Linear named `out` (its residual projection)')
            for projection in (block.mixer.out, block.ff and block.ff.down):
                if projection is not None:
                    nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for module in self.modules():
            if hasattr(module, 'reset_special_parameters'):
                module.reset_special_parameters()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=False):
        """Parameters; non_embedding leaves out the token and position tables (the head is tied)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def forward(self, idx, targets=None, states=None):
        """Parallel path. idx: (batch, time) token ids, continuing the sequence whose per-layer states
        are given (None: a new sequence). Returns logits, the mean loss (or None) and the states
        after the last token."""
        T = idx.shape[1]
        if idx.numel() == 0:
            raise ValueError(f'a batch needs at least one sequence of at least one token, got shape {tuple(idx.shape)}')
        states = states or [None] * len(self.blocks)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            past = 0 if states[0] is None else states[0][0].shape[2]  # tokens in the key/value cache
            if past + T > self.config.block_size:
                raise ValueError(f'sequence of {past + T} tokens exceeds the Transformer block_size '
                                 f'{self.config.block_size}')
            x = x + self.pos_emb(torch.arange(past, past + T, device=idx.device))
        x = self.drop(x)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new_states.append(state)
        logits = self.head(self.norm(x))
        loss = None if targets is None else F.cross_entropy(widen(logits.flatten(0, 1)), targets.flatten())
        return logits, loss, new_states

    def prefill(self, idx, chunk=1024):
        """Read a prompt (batch, time) with the parallel path, chunk tokens at a time (which bounds
        memory), carrying the state: the logits after its last token and the states to step on."""
        states = None
        for start in range(0, idx.shape[1], chunk):
            logits, _, states = self(idx[:, start:start + chunk], states=states)
        return logits[:, -1], states

    def step(self, token, states, pos):
        """Step path. token: (batch,) ids at position pos; states: one entry per layer (None at start)."""
        x = self.tok_emb(token)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[pos]
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new_states.append(state)
        return self.head(self.norm(x)), new_states

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Yield max_new_tokens tokens (each (batch,)) continuing idx (batch, time >= 1): the prompt
        is read by the parallel path (prefill), then each token is one step of the state. The
        Transformer's window is block_size: past it, like nanoGPT, each token re-reads the last
        block_size tokens with a full forward."""
        window = self.config.block_size if self.pos_emb is not None else None
        context = idx[:, -window:] if window else idx
        logits, states = self.prefill(context)  # the prompt in parallel, then one step per token
        for _ in range(max_new_tokens):
            logits = logits.float()
            logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # <= 0: no overflow at tiny T
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float('-inf'))
            token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
            yield token
            if window is None:
                logits, states = self.step(token, states, None)
                continue
            context = torch.cat([context, token.unsqueeze(1)], dim=1)
            if context.shape[1] <= window:
                logits, states = self.step(token, states, context.shape[1] - 1)
            else:
                context = context[:, -window:]
                logits = self(context)[0][:, -1]

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; matrices and embeddings decay, biases, norms and Mamba's A_log and D do not."""
        decay, no_decay = [], []
        for p in self.parameters():
            (no_decay if p.dim() < 2 or getattr(p, '_no_weight_decay', False) else decay).append(p)
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        fused = device_type == 'cuda'
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
