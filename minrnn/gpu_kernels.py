"""
The 'triton' scan backend: the project's recurrences, and the conv before them, as Triton kernels
for a CUDA GPU, beside the plain-PyTorch paths that the tests hold them equal to (tests/test_triton.py):

    linear_scan(...)      = scan.SequentialScan             h_t = a_t h_{t-1} + b_t
    gated_scan(...)       = model.MinGRUCoefficients etc.   minGRU's / minLSTM's gates and scan
    causal_conv(...)      = model.ShiftedSum                the causal depthwise conv
    selective_scan(...)   = model.Mamba.scan_channels       Mamba's selective scan, fused

A thread owns a channel. The scan takes time 4 steps at a time, in (channels, 4) tiles that keep a
channel's steps in its thread: the recurrence runs along them in registers (tl.associative_scan
with the carried state folded in, 4 FMAs), and the state is carried from one 4 steps to the next.
Its backward walks from the end and runs each 4 steps in reversed time, so the reverse recurrence of
the gradient (g_t = dL/dh_t + a_{t+1} g_{t+1}) is the same recurrence. For minGRU / minLSTM the same
kernels read the gate pre-activations and compute a_t, b_t (and, backward, the gates' gradient) in
registers. On a small grid a long sequence is also split into segments of time, a program each,
joined through each segment's map of its starting state (scan_segments). The blocks' causal
depthwise conv is a kernel of its own, the last 4 inputs in registers.

In the selective scan a thread owns a channel and walks its N states in turn, so the sum over states
(y = C . h) stays in its registers, with no (batch, time, channels, N) tensor anywhere (mamba_ssm's
CUDA kernel instead gives a (batch, channel) pair a block whose threads split time, scans each state
across them and sums dB and dC with atomics; here time is in 4-step tiles inside a thread). Each
4-step chunk runs the states unrolled and stores only after loading every state's operands (a load
cannot pass an earlier store), so that its loads wait once; the forward keeps the states before every
SELECTIVE_CHUNK (4) steps, and the backward recomputes the states from those and keeps every state's
gradient (g) and dA in registers from chunk to chunk. It reads inputs in any float dtype (bfloat16 under autocast) and computes in float32; it fuses delta's
softplus and bias and Mamba's output gate y * SiLU(z). Each kernel is a torch.library operator with a
registered derivative. `python bench.py --static` counts what they cost on an H100 (results/speed/static/).

Triton is not needed on a CPU. Where it is installed, TRITON_INTERPRET=1 (set before this module is
imported) runs the same kernels on CPU tensors through Triton's interpreter: that is how the tests
check them without a GPU.
"""
import contextlib
import os
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU build of torch: the other backends serve
    triton = None

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


def available():
    """Whether the Triton kernels can run here: triton imports."""
    return triton is not None


def check(*tensors):
    """Raises an error that names the fix where the Triton kernels cannot run on these tensors."""
    if triton is None:
        raise RuntimeError("scan_backend='triton' needs the triton package, which ships with PyTorch's CUDA "
                           "builds; install one, or set scan_backend='log' (plain PyTorch)")
    for t in filter(lambda t: t is not None, tensors):
        shapes_only = isinstance(t, torch._subclasses.FakeTensor) or t.device.type == 'meta'
        if t.device.type != 'cuda' and not (shapes_only or INTERPRETED):
            raise ValueError(f"scan_backend='triton' runs on CUDA tensors, got them on {t.device}; "
                             "use scan_backend='auto' on other devices")
        if t.device != tensors[0].device:
            raise ValueError(f'the Triton kernels need their tensors on one device, got {tensors[0].device} and {t.device}')
        if t.numel() == 0:
            raise ValueError(f'the Triton kernels need a batch, a time and a width of at least 1, got a tensor '
                             f'of shape {tuple(t.shape)}')


def _on_device_of(tensor):
    """Makes the tensor's GPU the current one while a kernel launches: Triton launches on the current
    device, which is cuda:0 in a process that runs on cuda:1 without setting it."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _float32(t):
    return None if t is None else t.float().contiguous()


if triton is not None:
    # Tiles hold time on their last axis.

    @triton.jit
    def _combine(a_left, b_left, a_right, b_right):
        """Two steps of h -> a h + b, the left one first: h -> a_r (a_l h + b_l) + b_r."""
        return a_left * a_right, a_right * b_left + b_right

    @triton.jit
    def _exp(v):
        """e^v as 2^(v log2(e)): exp2 is one MUFU instruction, where tl.exp adds a multiply and a fix-up
        for denormal results (which exp2 flushes to zero)."""
        return tl.exp2(v * 1.4426950408889634)

    @triton.jit
    def _sigmoid(v):
        return 1.0 / (1.0 + _exp(-v))

    @triton.jit
    def _inside(t, e, T, E):
        """Whether step t (a scalar) at channels e lies inside a (T, E) tensor, a boolean tensor of e's
        shape. (A scalar t compared on its own gives a Python bool under the interpreter, and triton
        3.9's interpreter turns bool & tensor into an int32 mask that it refuses.)"""
        t = t + tl.zeros(e.shape, dtype=tl.int32)
        return (t >= 0) & (t < T) & (e < E)

    @triton.jit
    def _load_tile(ptr, t, e, T, E, row):
        """The tile of a batch element's (T, E) tensor at steps t and channels e, in float32; 0 outside.
        row: the tensor's stride from one step to the next (E where contiguous; a view's may be longer)."""
        return tl.load(ptr + t * row + e, mask=_inside(t, e, T, E), other=0.0).to(tl.float32)

    # The scans' tiles are (channels, 4 steps), a thread holding its channel's 4 steps: built from one
    # (channels,) row per step, so that Triton cannot spread time over lanes to vectorise a load along
    # channels. Rearranging a thread's own steps (a shift by one, time reversed) moves registers, and
    # a scan along them needs no other thread.

    @triton.jit
    def _steps(s0, s1, s2, s3):
        """Four (channels,) rows as the columns of a (channels, 4) tile."""
        return tl.reshape(tl.join(tl.join(s0, s2), tl.join(s1, s3)), [s0.shape[0], 4])

    @triton.jit
    def _rows(tile):
        """A (channels, 4) tile's four columns, _steps undone."""
        even, odd = tl.split(tl.reshape(tile, [tile.shape[0], 2, 2]))
        s0, s2 = tl.split(even)
        s1, s3 = tl.split(odd)
        return s0, s1, s2, s3

    @triton.jit
    def _later(tile, first):
        """tile one step later: step s holds tile's step s - 1, step 0 holds first."""
        s0, s1, s2, _ = _rows(tile)
        return _steps(first, s0, s1, s2)

    @triton.jit
    def _earlier(tile, last):
        """tile one step earlier: step s holds tile's step s + 1, step 3 holds last."""
        _, s1, s2, s3 = _rows(tile)
        return _steps(s1, s2, s3, last)

    @triton.jit
    def _reversed(tile):
        s0, s1, s2, s3 = _rows(tile)
        return _steps(s3, s2, s1, s0)

    @triton.jit
    def _recurrence(a, b, h):
        """h_t = a_t h_{t-1} + b_t along (channels, 4) tiles' steps, from h (channels,) before the first:
        a scan (tl.associative_scan) with h folded into the first b. A scan from an unknown state would
        also take the products of a; these go unused, and the compiler drops them: 4 FMAs a channel."""
        b0, b1, b2, b3 = _rows(b)
        return tl.associative_scan((a, _steps(_rows(a)[0] * h + b0, b1, b2, b3)), 1, _combine)[1]

    @triton.jit
    def _load_steps(ptr, t0, e, T, E, row):
        """Steps t0 .. t0 + 3 of a batch element's (T, E) tensor at channels e, (channels, 4), float32, 0 outside."""
        return _steps(_load_tile(ptr, t0, e, T, E, row), _load_tile(ptr, t0 + 1, e, T, E, row),
                      _load_tile(ptr, t0 + 2, e, T, E, row), _load_tile(ptr, t0 + 3, e, T, E, row))

    @triton.jit
    def _store_steps(ptr, tile, t0, e, T, E):
        s0, s1, s2, s3 = _rows(tile)
        tl.store(ptr + t0 * E + e, s0, mask=_inside(t0, e, T, E))
        tl.store(ptr + (t0 + 1) * E + e, s1, mask=_inside(t0 + 1, e, T, E))
        tl.store(ptr + (t0 + 2) * E + e, s2, mask=_inside(t0 + 2, e, T, E))
        tl.store(ptr + (t0 + 3) * E + e, s3, mask=_inside(t0 + 3, e, T, E))

    # ------------------------------------------------------------------- h_t = a_t h_{t-1} + b_t

    @triton.jit
    def _program_channels(h0_ptr, D, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's batch element (int64: its base offset, batch x time x width, passes 2^31 at
        scale; offsets inside one element stay int32), its block of channels and their h0 (zero
        without one)."""
        batch = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_H0:
            h0 = tl.load(h0_ptr + batch * D + d, mask=d < D, other=0.0)
        return batch, d, h0

    # Where KIND is MINGRU or MINLSTM, the kernels read the block's gate pre-activations (batch, T,
    # k * D) instead of a and b, and compute the coefficients in registers (model.MinGRUCoefficients,
    # model.MinLSTMCoefficients): no a, b or gate tensor of their own in memory, forward or backward.
    PLAIN, MINGRU, MINLSTM = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
    KINDS = {'plain': 0, 'mingru': 1, 'minlstm': 2}

    @triton.jit
    def _row_width(D, KIND: tl.constexpr):
        """The width of a step's row of a_ptr's tensor: a's D, or the 2 or 3 projections of the gates."""
        return D if KIND == PLAIN else (2 if KIND == MINGRU else 3) * D

    @triton.jit
    def _candidate(k):
        """g(k) = max(k + 0.5, sigmoid(k)), the paper's positive candidate state, and its slope g'(k) =
        max(sign(k), sigmoid'(k)) (model.g, model.g_derivative)."""
        s = _sigmoid(k)
        sign = tl.where(k > 0, 1.0, tl.where(k < 0, -1.0, 0.0))
        return tl.maximum(k + 0.5, s), tl.maximum(sign, s - s * s)

    @triton.jit
    def _gate_loads(gates_ptr, offset, D, inside, KIND: tl.constexpr):
        """The step's pre-activations: minGRU's (k_z, k_h) or minLSTM's (k_f, k_i, k_h), float32."""
        first = tl.load(gates_ptr + offset, mask=inside, other=0.0).to(tl.float32)
        second = tl.load(gates_ptr + offset + D, mask=inside, other=0.0).to(tl.float32)
        third = second
        if KIND == MINLSTM:
            third = tl.load(gates_ptr + offset + 2 * D, mask=inside, other=0.0).to(tl.float32)
        return first, second, third

    @triton.jit
    def _coefficients(a_ptr, b_ptr, offset, D, inside, KIND: tl.constexpr):
        """(a, b) at the offsets, (1, 0) outside: given, or minGRU's (1 - z, z h~) = (sigmoid(-k_z),
        sigmoid(k_z) g(k_h)), or minLSTM's (f / (f + i), i / (f + i) g(k_h)). With gates, a_ptr
        points to them and offset is the step's k * D-wide row plus the channel."""
        if KIND == PLAIN:
            a = tl.load(a_ptr + offset, mask=inside, other=1.0).to(tl.float32)
            b = tl.load(b_ptr + offset, mask=inside, other=0.0).to(tl.float32)
        else:
            first, second, third = _gate_loads(a_ptr, offset, D, inside, KIND)
            if KIND == MINGRU:
                a, b = _sigmoid(-first), _sigmoid(first) * _candidate(second)[0]
            else:
                f, i = _sigmoid(first), _sigmoid(second)
                a, b = f / (f + i), i / (f + i) * _candidate(third)[0]
            a, b = tl.where(inside, a, 1.0), tl.where(inside, b, 0.0)
        return a, b

    @triton.jit
    def _store_gate_gradients(grad_ptr, gates_ptr, offset, D, inside, grad_a, grad_b, KIND: tl.constexpr):
        """dL/d(pre-activations) from dL/da and dL/db, the gates recomputed (the model's formulas):
        minGRU  dL/dk_z = (dL/db h~ - dL/da) z a,   dL/dk_h = dL/db z g'(k_h);
        minLSTM q = (dL/da - dL/db h~) f' i',  dL/dk_f = q (1 - f),  dL/dk_i = -q (1 - i),
                dL/dk_h = dL/db i' g'(k_h)."""
        first, second, third = _gate_loads(gates_ptr, offset, D, inside, KIND)
        if KIND == MINGRU:
            z, a = _sigmoid(first), _sigmoid(-first)
            candidate, slope = _candidate(second)
            tl.store(grad_ptr + offset, (grad_b * candidate - grad_a) * z * a, mask=inside)
            tl.store(grad_ptr + offset + D, grad_b * z * slope, mask=inside)
        else:
            f, i = _sigmoid(first), _sigmoid(second)
            f_norm, i_norm = f / (f + i), i / (f + i)
            candidate, slope = _candidate(third)
            q = (grad_a - grad_b * candidate) * f_norm * i_norm
            tl.store(grad_ptr + offset, q - q * f, mask=inside)
            tl.store(grad_ptr + offset + D, q * i - q, mask=inside)
            tl.store(grad_ptr + offset + 2 * D, grad_b * i_norm * slope, mask=inside)

    @triton.jit
    def _coefficient_row(a_ptr, b_ptr, t, d, T, D, KIND: tl.constexpr):
        """(a, b) of step t at channels d, (1, 0) outside the sequence."""
        return _coefficients(a_ptr, b_ptr, t * _row_width(D, KIND) + d, D, _inside(t, d, T, D), KIND)

    @triton.jit
    def _coefficient_steps(a_ptr, b_ptr, t0, d, T, D, KIND: tl.constexpr):
        """(a, b) of steps t0 .. t0 + 3 as (channels, 4) tiles."""
        a0, b0 = _coefficient_row(a_ptr, b_ptr, t0, d, T, D, KIND)
        a1, b1 = _coefficient_row(a_ptr, b_ptr, t0 + 1, d, T, D, KIND)
        a2, b2 = _coefficient_row(a_ptr, b_ptr, t0 + 2, d, T, D, KIND)
        a3, b3 = _coefficient_row(a_ptr, b_ptr, t0 + 3, d, T, D, KIND)
        return _steps(a0, a1, a2, a3), _steps(b0, b1, b2, b3)

    @triton.jit
    def _store_gate_gradient_steps(grad_ptr, gates_ptr, t0, d, T, D, grad_a, grad_b, KIND: tl.constexpr):
        """_store_gate_gradients for steps t0 .. t0 + 3, row by row."""
        width = _row_width(D, KIND)
        a0, a1, a2, a3 = _rows(grad_a)
        b0, b1, b2, b3 = _rows(grad_b)
        _store_gate_gradients(grad_ptr, gates_ptr, t0 * width + d, D, _inside(t0, d, T, D), a0, b0, KIND)
        _store_gate_gradients(grad_ptr, gates_ptr, (t0 + 1) * width + d, D, _inside(t0 + 1, d, T, D), a1, b1, KIND)
        _store_gate_gradients(grad_ptr, gates_ptr, (t0 + 2) * width + d, D, _inside(t0 + 2, d, T, D), a2, b2, KIND)
        _store_gate_gradients(grad_ptr, gates_ptr, (t0 + 3) * width + d, D, _inside(t0 + 3, d, T, D), a3, b3, KIND)

    # A long sequence on a small grid (batch x channel blocks well under the GPU's SMs) also splits
    # time: segments of L steps, a program each (grid axis 2). A first kernel runs every segment but
    # the last from a zero state and writes what it does to any state, h -> P h + H (P the product of
    # its a, H its end state from zero); each program of the scan then folds the segments before its
    # own into its starting state (S - 1 FMAs at most) and runs its segment. The backward does the same
    # from the end: a segment maps the g after it to g at its first step, g -> P g + G.

    @triton.jit
    def _segment_of(T, L, FIRST: tl.constexpr = 0):
        """This program's segment (grid axis 2, counted from FIRST) and its steps [start, end)."""
        segment = tl.program_id(2) + FIRST
        return segment, segment * L, tl.minimum(T, segment * L + L)

    @triton.jit
    def _scan_segment_maps(a_ptr, b_ptr, grad_h_ptr, maps_ptr, T, D, L, S, BACKWARD: tl.constexpr,
                           KIND: tl.constexpr, BLOCK_D: tl.constexpr):
        """Each segment's map (P, H) into maps (batch, S, 2, D) float32, a segment a program: forward, of
        every segment but the last (the grid's S - 1), h -> P h + H over its steps; BACKWARD, of every
        segment but the first, g -> P g + G from the g after it to g at its first step (g_t = dL/dh_t +
        a_{t+1} g_{t+1}). Nothing reads the others."""
        batch = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        segment, start, end = _segment_of(T, L, 1 if BACKWARD else 0)
        width = _row_width(D, KIND)
        a_ptr, b_ptr, grad_h_ptr = a_ptr + batch * T * width, b_ptr + batch * T * width, grad_h_ptr + batch * T * D
        product, state = tl.full([BLOCK_D], 1.0, tl.float32), tl.zeros([BLOCK_D], dtype=tl.float32)
        if BACKWARD:
            for k in range(tl.cdiv(end - start, 4)):
                t0 = end - 4 - 4 * k  # from the end, 4 steps at a time (ones before start are zero below)
                a, _ = _coefficient_steps(a_ptr, a_ptr, t0, d, T, D, KIND)
                a_after, _ = _coefficient_row(a_ptr, a_ptr, t0 + 4, d, T, D, KIND)
                a_next = tl.where(_steps_from(t0, start, d), _earlier(a, a_after), 1.0)
                grad_h = tl.where(_steps_from(t0, start, d), _load_steps(grad_h_ptr, t0, d, T, D, D), 0.0)
                state = _rows(_reversed(_recurrence(_reversed(a_next), _reversed(grad_h), state)))[0]
                product = product * _product(a_next)
        else:
            for t0 in range(start, end, 4):
                a, b = _coefficient_steps(a_ptr, b_ptr, t0, d, T, D, KIND)
                state = _rows(_recurrence(a, b, state))[3]
                product = product * _product(a)
        maps_ptr += (batch * S + segment) * 2 * D + d
        tl.store(maps_ptr, product, mask=d < D)
        tl.store(maps_ptr + D, state, mask=d < D)

    @triton.jit
    def _steps_from(t0, start, d):
        """(channels, 4): whether steps t0 .. t0 + 3 are at or after start."""
        return _steps(_inside(t0 - start, d, 1 << 30, 1 << 30), _inside(t0 + 1 - start, d, 1 << 30, 1 << 30),
                      _inside(t0 + 2 - start, d, 1 << 30, 1 << 30), _inside(t0 + 3 - start, d, 1 << 30, 1 << 30))

    @triton.jit
    def _product(tile):
        s0, s1, s2, s3 = _rows(tile)
        return s0 * s1 * (s2 * s3)

    @triton.jit
    def _fold_segments(maps_ptr, batch, d, D, S, segment, state, BACKWARD: tl.constexpr):
        """state carried through the maps of the segments before this one, first to last (forward), or
        of those after it, last to first (BACKWARD)."""
        for k in range(S - 1 - segment if BACKWARD else segment):
            offset = (batch * S + (S - 1 - k if BACKWARD else k)) * 2 * D + d
            state = (tl.load(maps_ptr + offset, mask=d < D, other=1.0) * state
                     + tl.load(maps_ptr + offset + D, mask=d < D, other=0.0))
        return state

    @triton.jit
    def _scan_forward(a_ptr, b_ptr, h0_ptr, h_ptr, maps_ptr, T, D, L, S, HAS_H0: tl.constexpr,
                      KIND: tl.constexpr, BLOCK_D: tl.constexpr):
        """h (batch, T, D) from a, b (batch, T, D), or from the gates (a_ptr; KIND), and h0 (batch,
        D): h_t = a_t h_{t-1} + b_t, 4 steps at a time, a thread a channel, a program a segment of L
        steps (S of them; one: the whole sequence) that starts from h0 carried through the maps of
        the segments before it. Steps past T are padded with a = 1, b = 0, which leave the state as
        it is."""
        batch, d, h = _program_channels(h0_ptr, D, HAS_H0, BLOCK_D)
        segment, start, end = _segment_of(T, L)
        h = _fold_segments(maps_ptr, batch, d, D, S, segment, h, False)
        width = _row_width(D, KIND)
        a_ptr, b_ptr, h_ptr = a_ptr + batch * T * width, b_ptr + batch * T * width, h_ptr + batch * T * D
        for t0 in range(start, end, 4):
            a, b = _coefficient_steps(a_ptr, b_ptr, t0, d, T, D, KIND)
            tile = _recurrence(a, b, h)
            _store_steps(h_ptr, tile, t0, d, T, D)
            h = _rows(tile)[3]

    @triton.jit
    def _scan_backward(a_ptr, h_ptr, h0_ptr, grad_h_ptr, grad_a_ptr, grad_b_ptr, grad_h0_ptr, maps_ptr, T, D, L, S,
                       HAS_H0: tl.constexpr, KIND: tl.constexpr, BLOCK_D: tl.constexpr):
        """With g_t = dL/dh_t + a_{t+1} g_{t+1} (g past T is 0): dL/db_t = g_t, dL/da_t = g_t h_{t-1},
        and dL/dh0 = a_1 g_1. With gates (KIND), a_ptr points to them and grad_a_ptr receives their
        gradient. A program a segment (as forward), from the g after it (the maps of the segments
        after it folded from zero), 4 steps at a time from its end, their g by a scan in reversed time."""
        batch, d, h0 = _program_channels(h0_ptr, D, HAS_H0, BLOCK_D)
        segment, start, end = _segment_of(T, L)
        width = _row_width(D, KIND)
        a_ptr, h_ptr, grad_h_ptr = a_ptr + batch * T * width, h_ptr + batch * T * D, grad_h_ptr + batch * T * D
        grad_a_ptr, grad_b_ptr = grad_a_ptr + batch * T * width, grad_b_ptr + batch * T * D
        g = _fold_segments(maps_ptr, batch, d, D, S, segment, tl.zeros([BLOCK_D], dtype=tl.float32), True)
        n_tiles = tl.cdiv(end - start, 4)
        for k in range(n_tiles):
            t0 = start + (n_tiles - 1 - k) * 4
            a, _ = _coefficient_steps(a_ptr, a_ptr, t0, d, T, D, KIND)
            a_after, _ = _coefficient_row(a_ptr, a_ptr, t0 + 4, d, T, D, KIND)
            grad_h = _load_steps(grad_h_ptr, t0, d, T, D, D)  # 0 past T, where g is 0 too
            a_next = _earlier(a, a_after)
            g_tile = _reversed(_recurrence(_reversed(a_next), _reversed(grad_h), g))
            h_before = tl.where(t0 == 0, h0, _load_tile(h_ptr, t0 - 1, d, T, D, D))
            h_prev = _later(_load_steps(h_ptr, t0, d, T, D, D), h_before)
            if KIND == PLAIN:
                _store_steps(grad_b_ptr, g_tile, t0, d, T, D)
                _store_steps(grad_a_ptr, g_tile * h_prev, t0, d, T, D)
            else:
                _store_gate_gradient_steps(grad_a_ptr, a_ptr, t0, d, T, D, g_tile * h_prev, g_tile, KIND)
            g = _rows(g_tile)[0]
        if HAS_H0:  # in the first segment, g is now g_1, the gradient at the first step
            if segment == 0:
                a_first, _ = _coefficient_row(a_ptr, a_ptr, 0, d, T, D, KIND)
                tl.store(grad_h0_ptr + batch * D + d, a_first * g, mask=d < D)

    # ------------------------------------------------------------------- Mamba's selective scan
    # A thread owns a channel's states, so the sum over states (y = C . h) stays in registers, and
    # each state walks its steps in registers: (channels, 4 steps) tiles, channels on the lanes, the
    # states unrolled one after another. A chunk's loads all come before its stores (a load cannot
    # pass an earlier store: program order, and pointers that could alias), so that they issue together
    # and wait once. A batch element's base offset is int64 (batch x time x width passes 2^31 at
    # scale); offsets inside one element stay int32.

    @triton.jit
    def _softplus(v):
        """log(1 + e^v) without overflow, with log1p's accuracy where e^v is small (Goldberg's trick)."""
        z = _exp(-tl.abs(v))
        u = 1.0 + z
        return tl.maximum(v, 0.0) + tl.where(u == 1.0, z, tl.log(u) * (z / tl.where(u == 1.0, 1.0, u - 1.0)))

    @triton.jit
    def _load_delta(delta_ptr, bias, offset, inside, SOFTPLUS: tl.constexpr):
        """delta, or softplus(its pre-activation + bias) where SOFTPLUS, in float32; 0 outside, where
        exp(delta A) = 1 and delta B x = 0 leave the state as it is."""
        delta = tl.load(delta_ptr + offset, mask=inside, other=0.0).to(tl.float32)
        if SOFTPLUS:
            delta = tl.where(inside, _softplus(delta + bias), 0.0)
        return delta

    @triton.jit
    def _load_delta_steps(delta_ptr, bias, t0, e, T, E, SOFTPLUS: tl.constexpr):
        """_load_delta for steps t0 .. t0 + 3 of a batch element's (T, E) delta, (channels, 4)."""
        delta = _load_steps(delta_ptr, t0, e, T, E, E)
        if SOFTPLUS:
            t = t0 + tl.arange(0, 4)[None, :]
            delta = tl.where((t < T) & (e[:, None] < E), _softplus(delta + bias[:, None]), 0.0)
        return delta

    @triton.jit
    def _selective_operands_at(state, k, local, step, chunk_states, N: tl.constexpr, A_ptr, B_ptr, C_ptr, saved_ptr):
        """A state's A (channels,), B and C (1, 4) in chunk k, and its value before the chunk (channels,),
        from the program's blocks (_blocked, _chunked; chunk_states: the elements of one chunk's saved)."""
        return (tl.load(A_ptr + state * local.shape[0] + local), tl.load(B_ptr + (k * N + state) * 4 + step),
                tl.load(C_ptr + (k * N + state) * 4 + step),
                tl.load(saved_ptr + k * chunk_states + state * local.shape[0] + local))

    @triton.jit
    def _selective_forward(x_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr, saved_ptr, T, E,
                           z_batch, z_row, N: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                           CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
        """h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t . h_t + D x_t  (the selective SSM
        after zero-order hold) for one batch element and BLOCK_E channels, in chunks of CHUNK (4) steps:
        a state's (channels, 4) tile comes from the recurrence in registers and the state before the
        chunk, and y sums the states' C h as they pass. SOFTPLUS: delta = softplus(delta + bias); HAS_Z:
        Mamba's output gate, y_t SiLU(z_t) is written. The states before
        each chunk, and after the last, are saved (batch, chunks + 1, E / BLOCK_E, N, BLOCK_E), the first
        given: the next chunk reads them (each thread its own channel's) and the backward recomputes from
        them. A is log2(e) A (for exp2: one instruction). saved, A (E / BLOCK_E, N, BLOCK_E) and B, C
        (batch, chunks, N, 4) are the operators' own tensors, laid out for a program's loop over states
        (_blocked, _chunked: a state's row BLOCK_E elements after the previous one's) and zero-padded:
        read unmasked."""
        tl.static_assert(CHUNK == 4)
        batch = tl.program_id(0).to(tl.int64)
        local = tl.arange(0, BLOCK_E)
        e = tl.program_id(1) * BLOCK_E + local
        x_ptr, delta_ptr, y_ptr = x_ptr + batch * T * E, delta_ptr + batch * T * E, y_ptr + batch * T * E
        z_ptr += batch * z_batch  # z may be a view (in_proj's second half); x's, unread, without a gate
        n_chunks = tl.cdiv(T, CHUNK)
        chunk_states = tl.num_programs(1) * N * BLOCK_E  # one chunk's saved states
        A_ptr += tl.program_id(1) * N * BLOCK_E
        B_ptr, C_ptr = B_ptr + batch * n_chunks * N * CHUNK, C_ptr + batch * n_chunks * N * CHUNK
        saved_ptr += batch * (n_chunks + 1) * chunk_states + tl.program_id(1) * N * BLOCK_E
        D = tl.load(D_ptr + e, mask=e < E, other=0.0)[:, None]
        bias = tl.load(bias_ptr + e, mask=e < E, other=0.0) if SOFTPLUS else 0.0
        step = tl.arange(0, CHUNK)[None, :]
        for k in range(n_chunks):
            t0 = k * CHUNK
            x = _load_steps(x_ptr, t0, e, T, E, E)
            delta = _load_delta_steps(delta_ptr, bias, t0, e, T, E, SOFTPLUS)  # 0 outside: the state stays
            if HAS_Z:
                z = _load_steps(z_ptr, t0, e, T, E, z_row)
            delta_x = delta * x
            y = x * D
            after = ()  # the states after the chunk, stored once every state's operands are loaded
            for n in tl.static_range(N):
                A, B, C, h_before = _selective_operands_at(n, k, local, step, chunk_states, N, A_ptr, B_ptr, C_ptr,
                                                           saved_ptr)
                h = _recurrence(tl.exp2(delta * A[:, None]), delta_x * B, h_before)
                y += C * h
                after += (_rows(h)[3],)
            for n in tl.static_range(N):
                tl.store(saved_ptr + (k + 1) * chunk_states + n * BLOCK_E + local, after[n])
            if HAS_Z:
                y = y * z * _sigmoid(z)
            _store_steps(y_ptr, y, t0, e, T, E)

    # dB and dC are sums over channels, which lie on the lanes. A reduce-scatter sums a warp's 32
    # channels of the 16 values a lane holds (dB and dC of two states at 4 steps) in 5 rounds that
    # halve them, 8 + 4 + 2 + 1 + 1 shuffles in all: 2 per state element and step, where summing each
    # value whole (tl.sum) takes 5 shuffles a value, 10 per element and step.

    @triton.jit
    def _partner(row, distance: tl.constexpr):
        """row at channels c XOR distance (a power of 2 below 32): a flip across that lane bit, one
        shuffle per value."""
        pairs = tl.reshape(row, [row.shape[0] // (2 * distance), 2, distance])
        return tl.reshape(tl.flip(pairs, 1), row.shape)

    @triton.jit
    def _halve(low, high, distance: tl.constexpr):
        """A round of the reduce-scatter: channels whose bit `distance` is set keep `high`, the others
        `low`, and each adds its partner's copy of the one it keeps (sending the other)."""
        keeps_high = (tl.arange(0, low.shape[0]) & distance) != 0
        keep, send = tl.where(keeps_high, high, low), tl.where(keeps_high, low, high)
        return keep + _partner(send, distance)

    @triton.jit
    def _warp_sums(grad_B, grad_C, grad_B_next, grad_C_next):
        """(channels, 4) tiles of dB and dC of two states summed over each warp's 32 channels. Channel c
        (within its warp) ends with the sum for the second state if c & 16, of dC if c & 8, at step
        (c // 2) % 4, like its neighbour c ^ 1."""
        b0, b1, b2, b3 = _rows(grad_B)
        c0, c1, c2, c3 = _rows(grad_C)
        d0, d1, d2, d3 = _rows(grad_B_next)
        f0, f1, f2, f3 = _rows(grad_C_next)
        q0 = _halve(_halve(b0, d0, 16), _halve(c0, f0, 16), 8)
        q1 = _halve(_halve(b1, d1, 16), _halve(c1, f1, 16), 8)
        q2 = _halve(_halve(b2, d2, 16), _halve(c2, f2, 16), 8)
        q3 = _halve(_halve(b3, d3, 16), _halve(c3, f3, 16), 8)
        sums = _halve(_halve(q0, q2, 4), _halve(q1, q3, 4), 2)
        return sums + _partner(sums, 1)

    @triton.jit
    def _state_backward(A, B, C, h_before, g_after, delta, delta_after, delta_x, grad_y):
        """A state's chunk of _selective_backward from its operands: A (channels,), B and C (1, 4), its
        value before the chunk and g after it (channels,). Returns (channels, 4) tiles of h, g and
        dL/dlog a = g u, u_t = a_t h_{t-1} (not g (h_t - b_t), which cancels where a -> 0)."""
        a = tl.exp2(delta * A[:, None])
        h = _recurrence(a, delta_x * B, h_before)
        # g in reversed time; a_{t+1} past the last step is that of the next chunk's first (1 past T)
        a_next = _earlier(a, tl.exp2(delta_after * A))
        g = _reversed(_recurrence(_reversed(a_next), _reversed(grad_y * C), g_after))
        return h, g, g * a * _later(h, h_before)

    @triton.jit
    def _selective_backward(x_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, saved_ptr, grad_y_ptr,
                            grad_x_ptr, grad_delta_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_z_ptr, g_ptr,
                            T, E, z_batch, z_row, N: tl.constexpr,
                            SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
        """Gradients of _selective_forward, in chunks of CHUNK (4) steps from the end; A is log2(e) A. The
        operators' own tensors are laid out and zero-padded like the forward's: A (E / BLOCK_E, N,
        BLOCK_E), g then dA (batch, 2, E / BLOCK_E, N, BLOCK_E), B and C (batch, chunks, N, 4), N even.
        A chunk is a (channels, 4) tile whose steps lie in one thread. From the state saved before the
        chunk, the recurrence in registers gives h_t, and u_t = a_t h_{t-1} is h shifted by a step times
        a; the recurrence in reversed time gives g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, g after the
        sequence being dL/d(last state), which g_ptr holds on entry.
        Per channel, state and step (_state_backward):
          dx = sum_n g delta B + dy D,   ddelta = sum_n (g x B + dlog_a A),   dA = sum_t dlog_a delta,
          dB = sum_e g delta x,   dC = sum_e dy h,   dD = sum_t dy x,   g_1 (left in g_ptr; dh0 = a_1 g_1),
        and through the softplus d(pre-activation) = ddelta sigmoid = ddelta (1 - e^-delta). With the
        gate (HAS_Z), dy = d(out) SiLU(z) and dz = d(out) y SiLU'(z), y summed over the states as they
        are recomputed. dB and dC are partial sums per warp (_warp_sums), (batch, E / 32, chunks, N, 4),
        dA, dD and dbias (batch, 2, E) per batch element: the caller sums them.
        Every state's g and dA stay in registers from chunk to chunk (tuples of N (channels,) rows), and
        a chunk stores only after its last state, so its loads (each state's A, B, C and saved value)
        issue together. What a chunk can recompute it does (tl.range's disable_licm: loop-invariant
        addresses are not hoisted out of the loop) so that few registers stay held between chunks."""
        tl.static_assert((CHUNK == 4) & (BLOCK_E % 32 == 0) & (N % 2 == 0))
        batch = tl.program_id(0).to(tl.int64)
        local = tl.arange(0, BLOCK_E)
        e = tl.program_id(1) * BLOCK_E + local
        x_ptr, delta_ptr, grad_y_ptr = x_ptr + batch * T * E, delta_ptr + batch * T * E, grad_y_ptr + batch * T * E
        grad_x_ptr, grad_delta_ptr = grad_x_ptr + batch * T * E, grad_delta_ptr + batch * T * E
        z_ptr, grad_z_ptr = z_ptr + batch * z_batch, grad_z_ptr + batch * T * E  # x's, unread, without a gate
        n_chunks = tl.cdiv(T, CHUNK)
        chunk_states = tl.num_programs(1) * N * BLOCK_E  # one chunk's saved states
        lane_states = tl.program_id(1) * N * BLOCK_E + local  # a thread's first state in saved and g (_blocked)
        A_ptr += tl.program_id(1) * N * BLOCK_E  # (the thread's channel added where read, as for saved and g)
        B_ptr, C_ptr = B_ptr + batch * n_chunks * N * CHUNK, C_ptr + batch * n_chunks * N * CHUNK
        g_ptr += 2 * batch * chunk_states  # g, then dA
        saved_ptr += batch * (n_chunks + 1) * chunk_states
        step = tl.arange(0, CHUNK)[None, :]
        gs, grads_A = (), ()
        for n in tl.static_range(N):
            gs += (tl.load(g_ptr + lane_states + n * BLOCK_E),)
            grads_A += (tl.zeros([BLOCK_E], dtype=tl.float32),)
        grad_D = tl.zeros([BLOCK_E], dtype=tl.float32)
        grad_bias = tl.zeros([BLOCK_E], dtype=tl.float32)
        for j in tl.range(n_chunks, disable_licm=True):
            k = n_chunks - 1 - j
            t0 = k * CHUNK
            t = t0 + step
            D = tl.load(D_ptr + e, mask=e < E, other=0.0)[:, None]  # read each chunk (from L1), not held
            bias = tl.load(bias_ptr + e, mask=e < E, other=0.0) if SOFTPLUS else 0.0
            x, grad_y = _load_steps(x_ptr, t0, e, T, E, E), _load_steps(grad_y_ptr, t0, e, T, E, E)
            if HAS_Z:  # grad_y becomes dL/dy (y = C . h + D x before the gate): d(out) SiLU(z); and
                # dL/dz = d(out) y SiLU'(z), SiLU'(z) = s (1 + z (1 - s)), s = sigmoid(z), once y is summed
                z = _load_steps(z_ptr, t0, e, T, E, z_row)
                s = _sigmoid(z)
                grad_z_per_y = grad_y * s * (1.0 + z * (1.0 - s))
                grad_y = grad_y * z * s
            delta = _load_delta_steps(delta_ptr, bias, t0, e, T, E, SOFTPLUS)
            # 0 past T, where a = 1 carries g_ptr's gradient into the last step
            delta_after = _load_delta(delta_ptr, bias, (t0 + CHUNK) * E + e, _inside(t0 + CHUNK, e, T, E), SOFTPLUS)
            delta_x = delta * x
            grad_gB = tl.zeros([BLOCK_E, CHUNK], dtype=tl.float32)  # sum_n g B
            grad_gA = tl.zeros([BLOCK_E, CHUNK], dtype=tl.float32)  # sum_n dlog_a log2(e) A
            y = x * D
            next_gs, next_grads_A, sums = (), (), ()
            for n in tl.static_range(N):
                A = tl.load(A_ptr + local + n * BLOCK_E)
                B = tl.load(B_ptr + (k * N + n) * CHUNK + step)
                C = tl.load(C_ptr + (k * N + n) * CHUNK + step)
                h_before = tl.load(saved_ptr + k * chunk_states + lane_states + n * BLOCK_E)
                h, g, grad_log_a = _state_backward(A, B, C, h_before, gs[n], delta, delta_after, delta_x, grad_y)
                next_gs += (_rows(g)[0],)
                next_grads_A += (grads_A[n] + tl.sum(grad_log_a * delta, axis=1),)
                grad_gB += g * B
                grad_gA += grad_log_a * A[:, None]
                y += C * h
                if n % 2 == 0:  # dB and dC are summed over channels two states at a time
                    grad_B, grad_C = g * delta_x, grad_y * h
                else:
                    sums += (_warp_sums(grad_B, grad_C, g * delta_x, grad_y * h),)
            gs, grads_A = next_gs, next_grads_A
            grad_delta = grad_gB * x + grad_gA * 0.6931471805599453  # log(2): A here is log2(e) A
            if SOFTPLUS:
                grad_delta *= 1.0 - _exp(-delta)
            _store_steps(grad_x_ptr, grad_gB * delta + grad_y * D, t0, e, T, E)
            _store_steps(grad_delta_ptr, grad_delta, t0, e, T, E)
            if HAS_Z:
                _store_steps(grad_z_ptr, grad_z_per_y * y, t0, e, T, E)
            # the partial sums of dB and dC a lane holds (_warp_sums): its warp's, of a pair's first or second
            # state, of dB or dC, at one step (neighbouring lanes hold the same)
            part = (batch * tl.num_programs(1) + tl.program_id(1)) * (BLOCK_E // 32) + local // 32
            sums_ptr = (tl.where((local & 8) != 0, grad_C_ptr, grad_B_ptr)
                        + ((part * n_chunks + k) * N + (local // 16) % 2) * CHUNK + (local // 2) % 4)
            for pair in tl.static_range(N // 2):
                tl.store(sums_ptr + 2 * pair * CHUNK, sums[pair])
            grad_D += tl.sum(grad_y * x, axis=1)
            grad_bias += tl.sum(tl.where((t < T) & (e[:, None] < E), grad_delta, 0.0), axis=1)
        for n in tl.static_range(N):
            tl.store(g_ptr + lane_states + n * BLOCK_E, gs[n])
            tl.store(g_ptr + chunk_states + lane_states + n * BLOCK_E, grads_A[n])
        tl.store(grad_D_ptr + 2 * batch * E + e, grad_D, mask=e < E)  # dD, then dbias
        tl.store(grad_D_ptr + (2 * batch + 1) * E + e, grad_bias, mask=e < E)


    # ------------------------------------------------------------------- causal depthwise conv
    # A thread owns a channel and walks a block of BLOCK_T steps (the forward unrolled, the backward a
    # loop), the last 4 inputs in a (channels, 4) window of registers (the shifts of _earlier): each
    # input is read once, each output written once.
    # Kernels of K < 4 steps are padded at the front with zero weights (the weight tile's rows before
    # row 0, which _load_steps reads as 0 and _store_steps leaves out).

    @triton.jit
    def _conv_forward(x_ptr, w_ptr, bias_ptr, y_ptr, T, C, x_batch, x_row, K: tl.constexpr, SILU: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """y_t = bias + sum_j w_j x_{t-K+1+j} (batch, T, C), model.ShiftedSum's causal depthwise conv,
        and SiLU(y) where SILU."""
        tl.static_assert(K <= 4)
        batch = tl.program_id(0).to(tl.int64)
        t0 = tl.program_id(1) * BLOCK_T
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        x_ptr, y_ptr = x_ptr + batch * x_batch, y_ptr + batch * T * C  # x may be a view (in_proj's first half)
        w = _load_steps(w_ptr, -(4 - K), c, K, C, C)  # the weights each input of the window meets
        bias = tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        window = _load_steps(x_ptr, t0 - 4, c, T, C, x_row)  # its oldest step goes with the first shift
        for i in tl.static_range(BLOCK_T):
            window = _earlier(window, _load_tile(x_ptr, t0 + i, c, T, C, x_row))  # inputs t - 3 .. t
            y = bias + tl.sum(window * w, axis=1)
            if SILU:
                y = y * _sigmoid(y)
            tl.store(y_ptr + (t0 + i) * C + c, y, mask=_inside(t0 + i, c, T, C))

    @triton.jit
    def _conv_backward(x_ptr, w_ptr, bias_ptr, grad_y_ptr, grad_x_ptr, grad_w_ptr, grad_bias_ptr, T, C, x_batch,
                       x_row, K: tl.constexpr, SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """With g = dL/d(conv output) (through SiLU' = s (1 + y (1 - s)) at the recomputed y where
        SILU): dL/dx_t = sum_j w_j g_{t+K-1-j},  dL/dw_j = sum_{b,t} g_t x_{t-K+1+j},  dL/dbias = sum g.
        The walk runs 3 steps past its block for the g those need, a loop (not unrolled: few registers,
        so that many warps share an SM and hide each other's loads) that loads the next step's x and g
        before it stores this one's dL/dx; dL/dw and dL/dbias per program (batch, time block): the
        caller sums them."""
        tl.static_assert(K <= 4)
        batch = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1)
        t0 = block * BLOCK_T
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        x_ptr, grad_y_ptr, grad_x_ptr = x_ptr + batch * x_batch, grad_y_ptr + batch * T * C, grad_x_ptr + batch * T * C
        part = batch * tl.num_programs(1) + block
        w = _load_steps(w_ptr, -(4 - K), c, K, C, C)
        w_reversed = _reversed(w)
        bias = tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        window = _load_steps(x_ptr, t0 - 4, c, T, C, x_row)
        grads = tl.zeros(w.shape, dtype=tl.float32)  # g at the last 4 steps, oldest first
        grad_w = tl.zeros(w.shape, dtype=tl.float32)
        grad_bias = tl.zeros(c.shape, dtype=tl.float32)
        x_next, grad_next = _load_tile(x_ptr, t0, c, T, C, x_row), _load_tile(grad_y_ptr, t0, c, T, C, C)  # 0 past T
        for i0 in range(0, BLOCK_T + 4, 4):  # 4 steps an iteration, unrolled: the windows' shifts move no register
            for j in tl.static_range(4):
                i = i0 + j
                window = _earlier(window, x_next)
                grad = grad_next
                x_next = _load_tile(x_ptr, t0 + i + 1, c, T, C, x_row)
                grad_next = _load_tile(grad_y_ptr, t0 + i + 1, c, T, C, C)
                if SILU:
                    y = bias + tl.sum(window * w, axis=1)
                    s = _sigmoid(y)
                    grad = grad * s * (1.0 + y * (1.0 - s))
                grads = _earlier(grads, grad)
                if i < BLOCK_T:  # the block's own steps
                    grad_w += grad[:, None] * window
                    grad_bias += grad
                if (i >= 3) & (i < BLOCK_T + 3):  # step t0 + i - 3, this block's, has the g of its 4 outputs
                    tl.store(grad_x_ptr + (t0 + i - 3) * C + c, tl.sum(grads * w_reversed, axis=1),
                             mask=_inside(t0 + i - 3, c, T, C))
        _store_steps(grad_w_ptr + part * K * C, grad_w, -(4 - K), c, K, C)  # the padding's rows: no weight
        tl.store(grad_bias_ptr + part * C + c, grad_bias, mask=c < C)


SCAN_BLOCK_D = 128  # channels a program owns, one a thread
# Time split into segments where batch x channel blocks leave the GPU short of SCAN_PROGRAMS_PER_SM
# programs an SM (a program's steps are a chain of dependent loads and FMAs: latency, hidden only by
# other programs), segments of at least SCAN_MIN_SEGMENT steps (each program folds the maps of the
# segments before it), and only into 4 or more: a split scan walks each step twice (the maps, then
# the scan), so fewer segments cannot gain.
SCAN_PROGRAMS_PER_SM = 8
SCAN_MIN_SEGMENT = 64
SCAN_MIN_SEGMENTS = 4
CONV_BLOCK_T, CONV_BLOCK_C = 32, 128  # a program's steps and channels (one a thread)
CONV_MAX_KERNEL = 4  # the conv kernels' window of inputs; scan.causal_conv runs longer kernels plainly
# Mamba's selective scan: one channel per thread (a program's 4 warps own 128 channels), tiles of 4
# steps, registers capped at 168 so that 3 programs share an SM (18.75% occupancy): no kernel spills
# under triton 3.6 to 3.9 for sm_75, sm_80 or sm_90 (at 128 some do), a chunk's loads wait once, and
# the paper-scale grid (64 x 6 programs on 132 SMs) puts at most 3 programs on an SM anyway
# (python bench.py --static counts registers, spills and stalls).
SELECTIVE_CHUNK = 4       # steps a tile holds per thread, and between two saved states
SELECTIVE_BLOCK_E = 128   # channels a program owns
SELECTIVE_WARPS = 4
SELECTIVE_REGISTERS = 168


# ----------------------------------------------------------------------------- the operators
# Each kernel launch is a torch.library triton_op with a registered derivative: autograd
# differentiates it, and torch.compile sees through it (no graph break), fusing what surrounds it.
# Each backward is itself an operator.

LOG2_E = 1.4426950408889634


def _selective_operands(x, delta, A, B, C, D, delta_bias):
    """The selective scan kernels' operands: x and delta contiguous in their dtypes; log2(e) A (the
    kernels take exp2) _blocked, B and C _chunked; D and the delta bias in float32 (without a bias, D
    stands for its pointer, never read)."""
    x, delta = x.contiguous(), delta.contiguous()
    D = D.float().contiguous()
    bias = D if delta_bias is None else delta_bias.float().contiguous()
    return x, delta, _blocked(A * LOG2_E), _chunked(B), _chunked(C), D, bias


# The selective kernels' own tensors are float32 copies laid out for a program's loop over states: a
# state's values lie a constant distance from the previous state's (an offset in the instruction, no
# register per state), zero-padded to whole blocks and to an even number of states (the backward sums
# dB and dC two states at a time), which the kernels read without masks. The padding computes
# nothing: a state with A = 0 and B = C = 0 stays 0 and adds 0 to y, a channel or step without input
# keeps its state.

def _blocked(t):
    """t (..., E, N), channels by states, as (..., E / SELECTIVE_BLOCK_E, N, SELECTIVE_BLOCK_E): a
    program's channels, one state's row of them after another's."""
    *lead, E, N = t.shape
    padded = t.new_zeros(*lead, -(-E // SELECTIVE_BLOCK_E) * SELECTIVE_BLOCK_E, -(-N // 2) * 2, dtype=torch.float32)
    padded[..., :E, :N] = t
    return padded.unflatten(-2, (-1, SELECTIVE_BLOCK_E)).transpose(-1, -2).contiguous()


def _unblocked(t, E, N):
    """_blocked undone: (..., E, N)."""
    return t.transpose(-1, -2).flatten(-3, -2)[..., :E, :N]


def _chunked(t):
    """B or C (batch, T, N) as (batch, T / SELECTIVE_CHUNK, N, SELECTIVE_CHUNK): a chunk's steps of one
    state side by side, one state's after another's."""
    batch, T, N = t.shape
    padded = t.new_zeros(batch, -(-T // SELECTIVE_CHUNK) * SELECTIVE_CHUNK, -(-N // 2) * 2, dtype=torch.float32)
    padded[:, :T, :N] = t
    return padded.unflatten(1, (-1, SELECTIVE_CHUNK)).transpose(2, 3).contiguous()


def _unchunked(t, T, N):
    """_chunked undone: (batch, T, N)."""
    return t.transpose(-1, -2).flatten(1, 2)[:, :T, :N]


def _strided(t):
    """A (batch, T, C) tensor as the kernels read it, with its batch and step strides: channels side by
    side, any step stride, so that a view such as one half of in_proj's output is read in place."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t, t.stride(0), t.stride(1)


def scan_segments(batch, D, T, multiprocessors):
    """(S, L): the scans' segments of time, S of L steps (L a multiple of 4; S = 1: time unsplit), for a
    (batch, T, D) scan on a GPU of that many SMs."""
    programs = batch * -(-D // SCAN_BLOCK_D)
    S = min(-(-SCAN_PROGRAMS_PER_SM * multiprocessors // programs), T // SCAN_MIN_SEGMENT)
    S = S if S >= SCAN_MIN_SEGMENTS else 1
    steps = -(-T // S)
    L = -(-steps // 4) * 4
    return -(-T // L), L


def _multiprocessors(device):
    """The SMs of the GPU the tensors are on; an H100's 132 where there is none (the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 132


# torch.compile traces into a triton_op (torch >= 2.6), but not into the interpreter's kernels, which
# are plain Python functions of real tensors: there the kernels become opaque custom operators.
TRACEABLE = not INTERPRETED and hasattr(torch.library, 'triton_op')


def _launch(kernel, grid, *args, **options):
    """Runs kernel on grid. Where torch cannot trace it, fake arguments (shapes only: torch.compile's
    tracing, opcheck) run nothing."""
    if TRACEABLE:
        torch.library.wrap_triton(kernel)[grid](*args, **options)
    elif not any(isinstance(t, torch._subclasses.FakeTensor) for t in args):
        kernel[grid](*args, **options)


def _operator(name):
    """torch.library.triton_op, which torch.compile traces into (kernels included) and fuses around;
    where it cannot, an opaque custom operator whose fake implementation is the same function with no
    kernel run."""
    if TRACEABLE:
        return torch.library.triton_op(name, mutates_args=())

    def operator(fn):
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op
    return operator


if triton is not None:
    @_operator('minrnn::triton_scan')
    def _scan(kind: str, a: Tensor, b: Optional[Tensor], h0: Optional[Tensor]) -> Tensor:
        """h_t = a_t h_{t-1} + b_t in float32: scan.SequentialScan's function, h in a's dtype; or, for
        kind 'mingru' / 'minlstm', a is the block's gate pre-activations (b None), whose coefficients
        the kernel computes, and h is float32."""
        check(a, b, h0)
        batch, T, width = a.shape
        D = width // {'plain': 1, 'mingru': 2, 'minlstm': 3}[kind]
        h = a.new_empty(batch, T, D, dtype=torch.float32)
        S, L = scan_segments(batch, D, T, _multiprocessors(a.device))
        maps = a.new_empty(batch, S, 2, D, dtype=torch.float32) if S > 1 else h  # (unread where S = 1)
        a, b = a.contiguous(), a if b is None else b.contiguous()
        grid = (batch, triton.cdiv(D, SCAN_BLOCK_D))
        with _on_device_of(a):
            if S > 1:
                _launch(_scan_segment_maps, (*grid, S - 1), a, b, a, maps, T, D, L, S, BACKWARD=False,
                        KIND=KINDS[kind], BLOCK_D=SCAN_BLOCK_D)
            _launch(_scan_forward, (*grid, S), a, b, _float32(h0), h, maps, T, D, L, S, HAS_H0=h0 is not None,
                    KIND=KINDS[kind], BLOCK_D=SCAN_BLOCK_D)
        return h.to(a.dtype) if kind == 'plain' else h

    @_operator('minrnn::triton_scan_backward')
    def _scan_backward_op(kind: str, a: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor
                          ) -> Tuple[Tensor, Tensor, Tensor]:
        """(dL/da, dL/db, dL/dh0) by the reverse recurrence, in the dtypes of a, a and h0; for gates,
        (dL/dgates, an empty tensor, dL/dh0). Empty tensors stand for None."""
        batch, T, width = a.shape
        D = h.shape[-1]
        grad_a = torch.empty_like(a, memory_format=torch.contiguous_format)
        grad_b = torch.empty_like(a, memory_format=torch.contiguous_format) if kind == 'plain' else a.new_empty(0)
        grad_h0 = h.new_empty(batch, D, dtype=torch.float32) if h0 is not None else a.new_empty(0)
        S, L = scan_segments(batch, D, T, _multiprocessors(a.device))
        maps = a.new_empty(batch, S, 2, D, dtype=torch.float32) if S > 1 else grad_a  # (unread where S = 1)
        a, grad_h = a.contiguous(), grad_h.contiguous()
        grid = (batch, triton.cdiv(D, SCAN_BLOCK_D))
        with _on_device_of(a):
            if S > 1:
                _launch(_scan_segment_maps, (*grid, S - 1), a, a, grad_h, maps, T, D, L, S, BACKWARD=True,
                        KIND=KINDS[kind], BLOCK_D=SCAN_BLOCK_D)
            _launch(_scan_backward, (*grid, S), a, h.contiguous(), _float32(h0), grad_h, grad_a, grad_b, grad_h0,
                    maps, T, D, L, S, HAS_H0=h0 is not None, KIND=KINDS[kind], BLOCK_D=SCAN_BLOCK_D)
        return grad_a, grad_b, grad_h0 if h0 is None else grad_h0.to(h0.dtype)

    def _scan_setup(ctx, inputs, output):
        kind, a, b, h0 = inputs
        ctx.kind, ctx.has_b = kind, b is not None
        ctx.save_for_backward(a, output, h0)

    def _scan_derivative(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        grad_a, grad_b, grad_h0 = _scan_backward_op(ctx.kind, a, h, h0, grad_h)
        return None, grad_a, grad_b if ctx.has_b else None, grad_h0 if h0 is not None else None

    _scan.register_autograd(_scan_derivative, setup_context=_scan_setup)

    @_operator('minrnn::triton_causal_conv')
    def _causal_conv(x: Tensor, weight: Tensor, bias: Tensor, silu: bool) -> Tensor:
        """model.ShiftedSum's causal depthwise conv (weight (K, C), x (batch, T, C)), SiLU'd where silu;
        y in x's dtype, float32 inside."""
        check(x, weight, bias)
        if weight.shape[0] > CONV_MAX_KERNEL:
            raise ValueError(f'the Triton conv takes kernels of up to {CONV_MAX_KERNEL} steps, got {weight.shape[0]}')
        batch, T, C = x.shape
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        x, x_batch, x_row = _strided(x)
        with _on_device_of(x):
            _launch(_conv_forward, (batch, triton.cdiv(T, CONV_BLOCK_T), triton.cdiv(C, CONV_BLOCK_C)),
                    x, weight.contiguous(), bias.contiguous(), y, T, C, x_batch, x_row, K=weight.shape[0], SILU=silu,
                    BLOCK_T=CONV_BLOCK_T, BLOCK_C=CONV_BLOCK_C)
        return y

    @_operator('minrnn::triton_causal_conv_backward')
    def _causal_conv_backward(x: Tensor, weight: Tensor, bias: Tensor, silu: bool, grad_y: Tensor
                              ) -> Tuple[Tensor, Tensor, Tensor]:
        """dL/dx in x's dtype, and dL/dweight and dL/dbias as float32 partial sums per (batch element, time
        block), (parts, K, C) and (parts, C), for the caller to sum."""
        batch, T, C = x.shape
        blocks = triton.cdiv(T, CONV_BLOCK_T)
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        grad_w_parts = x.new_empty(batch * blocks, weight.shape[0], C, dtype=torch.float32)
        grad_bias_parts = x.new_empty(batch * blocks, C, dtype=torch.float32)
        x, x_batch, x_row = _strided(x)
        with _on_device_of(x):
            _launch(_conv_backward, (batch, blocks, triton.cdiv(C, CONV_BLOCK_C)), x, weight.contiguous(),
                    bias.contiguous(), grad_y.contiguous(), grad_x, grad_w_parts, grad_bias_parts, T, C, x_batch,
                    x_row, K=weight.shape[0], SILU=silu, BLOCK_T=CONV_BLOCK_T, BLOCK_C=CONV_BLOCK_C)
        return grad_x, grad_w_parts, grad_bias_parts

    def _conv_setup(ctx, inputs, output):
        x, weight, bias, silu = inputs
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias)

    def _conv_derivative(ctx, grad_y):
        x, weight, bias = ctx.saved_tensors
        grad_x, grad_w_parts, grad_bias_parts = _causal_conv_backward(x, weight, bias, ctx.silu, grad_y)
        return grad_x, grad_w_parts.sum(0).to(weight.dtype), grad_bias_parts.sum(0).to(bias.dtype), None

    _causal_conv.register_autograd(_conv_derivative, setup_context=_conv_setup)

    @_operator('minrnn::triton_selective_scan')
    def _selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Optional[Tensor],
                        delta_bias: Optional[Tensor], z: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """y (x's dtype; y SiLU(z) given z), the last state (batch, E, N) and the states before every
        SELECTIVE_CHUNK steps and after the last (float32, _blocked)."""
        check(x, delta, A, B, C, D, h0, delta_bias, z)
        x, delta, A2, B, C, D, bias = _selective_operands(x, delta, A, B, C, D, delta_bias)
        (batch, T, E), N = x.shape, A.shape[1]
        y = torch.empty_like(x)
        saved = x.new_empty(batch, triton.cdiv(T, SELECTIVE_CHUNK) + 1, *A2.shape, dtype=torch.float32)
        saved[:, 0] = 0.0 if h0 is None else _blocked(h0)
        gate, z_batch, z_row = _strided(x if z is None else z)  # x stands for a missing z (never read)
        with _on_device_of(x):
            _launch(_selective_forward, (batch, triton.cdiv(E, SELECTIVE_BLOCK_E)),
                    x, delta, bias, A2, B, C, D, gate, y, saved, T, E, z_batch, z_row, A2.shape[1],
                    SOFTPLUS=delta_bias is not None, HAS_Z=z is not None, CHUNK=SELECTIVE_CHUNK,
                    BLOCK_E=SELECTIVE_BLOCK_E, num_warps=SELECTIVE_WARPS, maxnreg=SELECTIVE_REGISTERS)
        return y, _unblocked(saved[:, -1], E, N).contiguous(), saved

    @_operator('minrnn::triton_selective_scan_backward')
    def _selective_scan_backward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                                 delta_bias: Optional[Tensor], z: Optional[Tensor], saved: Tensor, grad_y: Tensor,
                                 grad_last: Optional[Tensor]
                                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """dL/dx, dL/ddelta, float32 partial sums of dL/dA (batch, _blocked), dL/dB and dL/dC (batch,
        parts, _chunked) and of dL/dD and dL/ddelta_bias (batch, 2, E), dL/dh0 (batch, E, N) and dL/dz
        (empty without z), the states recomputed from the saved ones. grad_last: dL/d(last state), None
        for zero. The caller takes the unpadded parts and sums them."""
        x, delta, A2, B, C, D32, bias = _selective_operands(x, delta, A, B, C, D, delta_bias)
        grad_y = grad_y.contiguous()
        (batch, T, E), N = x.shape, A.shape[1]
        blocks = triton.cdiv(E, SELECTIVE_BLOCK_E)
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)  # the kernel rounds once, into their dtype
        grad_z = x.new_empty(0) if z is None else torch.empty_like(z, memory_format=torch.contiguous_format)
        grad_B_parts, grad_C_parts = (x.new_empty(batch, blocks * SELECTIVE_BLOCK_E // 32, *B.shape[1:],
                                                  dtype=torch.float32) for _ in range(2))
        grad_D_and_bias = x.new_empty(batch, 2, E, dtype=torch.float32)  # (one pointer: a register fewer)
        # g after the sequence, dL/d(last state), and dA, in a tensor of their own: the kernel leaves g_1
        # and dA in it
        g_and_grad_A = x.new_zeros(batch, 2, *A2.shape, dtype=torch.float32)
        if grad_last is not None:
            g_and_grad_A[:, 0] = _blocked(grad_last)
        gate, z_batch, z_row = _strided(x if z is None else z)  # x stands for a missing z (never read)
        with _on_device_of(x):
            _launch(_selective_backward, (batch, blocks),
                    x, delta, bias, A2, B, C, D32, gate, saved, grad_y, grad_x, grad_delta,
                    grad_B_parts, grad_C_parts, grad_D_and_bias,
                    x if z is None else grad_z, g_and_grad_A, T, E, z_batch, z_row, A2.shape[1],
                    SOFTPLUS=delta_bias is not None, HAS_Z=z is not None,
                    CHUNK=SELECTIVE_CHUNK, BLOCK_E=SELECTIVE_BLOCK_E,
                    num_warps=SELECTIVE_WARPS, maxnreg=SELECTIVE_REGISTERS)
        # dL/dh0 = a_1 g_1, a small (batch, E, N) product after the kernel, whose registers it would take
        delta_first = delta[:, 0].float() if delta_bias is None else F.softplus(delta[:, 0].float() + bias)
        grad_h0 = torch.exp2(delta_first[:, :, None] * _unblocked(A2, E, N)) * _unblocked(g_and_grad_A[:, 0], E, N)
        return grad_x, grad_delta, g_and_grad_A[:, 1], grad_B_parts, grad_C_parts, grad_D_and_bias, grad_h0, grad_z

    def _selective_setup(ctx, inputs, output):
        x, delta, A, B, C, D, h0, delta_bias, z = inputs
        ctx.set_materialize_grads(False)  # no zeros of the saved states' size for their gradient, never used
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, z, output[2])
        ctx.h0_dtype = None if h0 is None else h0.dtype
        ctx.mark_non_differentiable(output[2])

    def _selective_derivative(ctx, grad_y, grad_last, grad_saved):
        x, delta, A, B, C, D, delta_bias, z, saved = ctx.saved_tensors
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y
        grad_x, grad_delta, grad_A, grad_B, grad_C, grad_D_and_bias, grad_h0, grad_z = _selective_scan_backward(
            x, delta, A, B, C, D, delta_bias, z, saved, grad_y, grad_last)
        (E, N), T = A.shape, B.shape[1]  # without the padding
        grad_D, grad_bias = grad_D_and_bias.sum(0)
        return (grad_x, grad_delta, _unblocked(grad_A.sum(0), E, N).to(A.dtype),
                _unchunked(grad_B.sum(1), T, N).to(B.dtype), _unchunked(grad_C.sum(1), T, N).to(C.dtype),
                grad_D.to(D.dtype), None if ctx.h0_dtype is None else grad_h0.to(ctx.h0_dtype),
                None if delta_bias is None else grad_bias.to(delta_bias.dtype), None if z is None else grad_z)

    _selective_scan.register_autograd(_selective_derivative, setup_context=_selective_setup)


def linear_scan(a, b, h0=None):
    """h (batch, time, channels) with h_t = a_t h_{t-1} + b_t, in Triton."""
    return _scan('plain', a, b, h0)


def gated_scan(kind, gates, h0=None):
    """h (batch, time, width), float32, of a minGRU / minLSTM layer (kind) from its gate
    pre-activations (batch, time, 2 or 3 x width, any float dtype): the coefficients computed inside
    the scan's kernels, forward and backward."""
    return _scan(kind, gates, None, h0)


def causal_conv(x, weight, bias, silu=False):
    """model.ShiftedSum's causal depthwise conv of x (batch, time, channels) with weight (kernel,
    channels) and bias, SiLU'd where silu, in Triton: each output a multiply-add of kernel inputs."""
    return _causal_conv(x, weight, bias, silu)


def selective_scan(x, delta, A, B, C, D, h0=None, delta_bias=None, z=None):
    """y (batch, time, channels) and the last state (batch, channels, d_state) of Mamba's selective
    scan in Triton; x, delta (batch, time, channels), A (channels, d_state), B, C (batch, time, d_state).
    With delta_bias (channels,), delta is its pre-activation: softplus(delta + delta_bias) is fused in;
    with z (batch, time, channels), Mamba's output gate: y SiLU(z) is returned. Inputs in any float
    dtype; y in x's, the last state in float32. Both are differentiable: a later chunk that reads the
    last state passes its gradient back."""
    y, last, _ = _selective_scan(x, delta, A, B, C, D, h0, delta_bias, z)
    return y, last


# ----------------------------------------------------------------------------- ahead of time
# What the kernels cost on a GPU that need not be here (bench.py --static, tests/test_triton.py):
# Triton compiles them to PTX for a compute capability, the ptxas that triton bundles assembles the
# PTX, and the cuobjdump beside it prints the machine code (SASS).

class Launch(NamedTuple):
    """A kernel as a paper-scale training step launches it under bfloat16 autocast."""
    kernel: object
    constants: dict     # its constexprs
    options: dict       # warps, register cap
    elements: int       # state elements x steps one thread computes per pass of the kernel's main loop
    half: tuple = ()    # its pointer arguments that hold bfloat16


def launches(d_state=16):
    """Every kernel, Mamba's at d_state: name -> Launch."""
    selective = dict(N=d_state, SOFTPLUS=True, CHUNK=SELECTIVE_CHUNK, BLOCK_E=SELECTIVE_BLOCK_E, HAS_Z=True)
    options = dict(num_warps=SELECTIVE_WARPS, maxnreg=SELECTIVE_REGISTERS)
    channels = SELECTIVE_BLOCK_E // (32 * SELECTIVE_WARPS)
    kernels = {}
    for kind, value in KINDS.items():
        prefix = 'scan' if kind == 'plain' else f'{kind}_scan'
        constants = dict(BLOCK_D=SCAN_BLOCK_D, HAS_H0=True, KIND=value)
        gates = kind != 'plain'  # from a Linear, in bfloat16
        for name, kernel, half in (('forward', _scan_forward, ('a_ptr',) * gates),
                                   ('backward', _scan_backward, ('a_ptr', 'grad_a_ptr') * gates)):
            kernels[f'{prefix}_{name}'] = Launch(kernel, constants, dict(num_warps=4),
                                                 4, half)  # a thread's channel, 4 steps a pass
        for name, backward in (('segments_forward', False), ('segments_backward', True)):
            kernels[f'{prefix}_{name}'] = Launch(_scan_segment_maps, dict(BACKWARD=backward, KIND=value,
                                                                          BLOCK_D=SCAN_BLOCK_D),
                                                 dict(num_warps=4), 4, ('a_ptr',) * gates)
    for prefix, silu in (('conv', False), ('silu_conv', True)):  # minGRU's / minLSTM's, Mamba's
        constants = dict(K=4, SILU=silu, BLOCK_T=CONV_BLOCK_T, BLOCK_C=CONV_BLOCK_C)
        # the forward has no loop (a thread's channel over all of its steps), the backward 4 steps a pass
        for name, kernel, half, per_thread in (('forward', _conv_forward, ('x_ptr', 'y_ptr'), CONV_BLOCK_T),
                                               ('backward', _conv_backward, ('x_ptr', 'grad_y_ptr', 'grad_x_ptr'), 4)):
            kernels[f'{prefix}_{name}'] = Launch(kernel, constants, dict(num_warps=4), per_thread, half)
    kernels['selective_forward'] = Launch(
        _selective_forward, dict(selective), options, SELECTIVE_CHUNK * channels * d_state,
        ('x_ptr', 'delta_ptr', 'z_ptr', 'y_ptr'))  # B, C float32
    kernels['selective_backward'] = Launch(
        _selective_backward, dict(selective), options, SELECTIVE_CHUNK * channels * d_state,
        ('x_ptr', 'delta_ptr', 'z_ptr', 'grad_y_ptr', 'grad_x_ptr', 'grad_delta_ptr', 'grad_z_ptr'))  # B, C float32
    return kernels


def compile_ahead_of_time(kernel, constants, options, capability, folder, half=()):
    """Compiles kernel for an NVIDIA GPU of compute capability `capability` (90: H100) into folder and
    returns (ptxas's resource report, the SASS, bytes of shared memory). Specialised as a launch at the
    paper's shapes is: pointers bfloat16 where named in `half`, float32 otherwise, and every pointer
    and size a multiple of 16 (torch aligns its allocations; T 256, channels 576 or 768). Needs no GPU,
    and no TRITON_INTERPRET (the interpreter replaces the compiler)."""
    import subprocess
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
    if set(half) - set(kernel.arg_names):
        raise ValueError(f'{kernel.__name__} has no arguments {set(half) - set(kernel.arg_names)}')
    sizes = ('T', 'C', 'D', 'E', 'N', 'L', 'S', 'x_batch', 'x_row', 'z_batch', 'z_row')
    signature = {name: 'constexpr' if name in constants else 'i32' if name in sizes
                 else '*bf16' if name in half else '*fp32' for name in kernel.arg_names}
    aligned = {(i,): [['tt.divisibility', 16]] for i, name in enumerate(kernel.arg_names) if name not in constants}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned),
                              target=GPUTarget('cuda', capability, 32), options=options)
    ptx, cubin = os.path.join(folder, 'kernel.ptx'), os.path.join(folder, 'kernel.cubin')
    with open(ptx, 'w') as f:
        f.write(compiled.asm['ptx'])
    ptxas = get_ptxas(capability).path  # the assembler triton runs itself for this architecture
    arch = f'sm_{capability}a' if capability >= 90 else f'sm_{capability}'
    assembled = subprocess.run([ptxas, '-v', f'--gpu-name={arch}', ptx, '-o', cubin], capture_output=True, text=True)
    if assembled.returncode:
        raise RuntimeError(f'ptxas failed for {kernel.__name__} on {arch}: {assembled.stderr[-2000:]}')
    sass = subprocess.run([os.path.join(os.path.dirname(ptxas), 'cuobjdump'), '-sass', cubin],
                          capture_output=True, text=True, check=True).stdout
    return ' '.join(assembled.stderr.split()), sass, compiled.metadata.shared
