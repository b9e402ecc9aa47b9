"""
The 'triton' scan backend: the two recurrences of the project as Triton kernels for a CUDA GPU, in
float32, beside the plain-PyTorch paths that the tests hold them equal to (tests/test_triton.py):

    TritonScan            = scan.SequentialScan             h_t = a_t h_{t-1} + b_t
    selective_scan(...)   = model.Mamba.scan_channels       Mamba's selective scan, fused

Both split time into tiles of BLOCK_T steps. Inside a tile, an associative scan (tl.associative_scan)
combines the pairs (a_t, b_t) in parallel; between tiles, each program carries the state in registers
from the tile before. A program owns one batch element and a block of channels, so the grid is
batch x channel blocks and no tensor ever holds more than (batch, time, channels) in memory.

The backward passes never scan backwards: they load each tile in reversed time order, so the reverse
recurrence of the gradient (g_t = dL/dh_t + a_{t+1} g_{t+1}) is a forward scan too.

Triton is not needed on a CPU. Where it is installed, TRITON_INTERPRET=1 (set before this module is
imported) runs the same kernels on CPU tensors through Triton's interpreter: that is how the tests
check them without a GPU.
"""
import os

import torch

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
    for t in tensors:
        if t is not None and t.device.type != 'cuda' and not INTERPRETED:
            raise ValueError(f"scan_backend='triton' runs on CUDA tensors, got them on {t.device}; "
                             "use scan_backend='auto' on other devices")
        if t is not None and t.numel() == 0:
            raise ValueError(f'the Triton kernels need a batch, a time and a width of at least 1, got a tensor '
                             f'of shape {tuple(t.shape)}')


def _float32(*tensors):
    return [None if t is None else t.float().contiguous() for t in tensors]


if triton is not None:
    # Tiles hold time on their last axis: that is the axis tl.flip can reverse in every triton >= 3.0.

    @triton.jit
    def _combine(a_left, b_left, a_right, b_right):
        """Two steps of h -> a h + b, the left one first: h -> a_r (a_l h + b_l) + b_r."""
        return a_left * a_right, a_right * b_left + b_right

    @triton.jit
    def _at_step(tile, steps, step):
        """The tile at one step of time (its last axis), picked by a masked sum: Triton has no indexing
        of registers."""
        return tl.sum(tl.where(steps == step, tile, 0.0), axis=len(tile.shape) - 1)

    # ------------------------------------------------------------------- h_t = a_t h_{t-1} + b_t

    @triton.jit
    def _program_channels(h0_ptr, D, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's batch element, its block of channels and their h0 (zero without one)."""
        batch = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_H0:
            h0 = tl.load(h0_ptr + batch * D + d, mask=d < D, other=0.0)
        return batch, d, h0

    @triton.jit
    def _scan_forward(a_ptr, b_ptr, h0_ptr, h_ptr, T, D, HAS_H0: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """h (batch, T, D) from a, b (batch, T, D) and h0 (batch, D): h_t = a_t h_{t-1} + b_t.
        Steps past T are padded with a = 1, b = 0, which leave the state as it is."""
        batch, d, h = _program_channels(h0_ptr, D, HAS_H0, BLOCK_D)
        steps = tl.arange(0, BLOCK_T)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + steps[None, :]
            offset = batch * T * D + t * D + d[:, None]
            inside = (t < T) & (d[:, None] < D)
            a = tl.load(a_ptr + offset, mask=inside, other=1.0)
            b = tl.load(b_ptr + offset, mask=inside, other=0.0)
            a_prod, b_sum = tl.associative_scan((a, b), 1, _combine)
            tile = a_prod * h[:, None] + b_sum  # the tile's steps, each from the carried state
            tl.store(h_ptr + offset, tile, mask=inside)
            h = _at_step(tile, steps[None, :], BLOCK_T - 1)

    @triton.jit
    def _scan_backward(a_ptr, h_ptr, h0_ptr, grad_h_ptr, grad_a_ptr, grad_b_ptr, T, D,
                       HAS_H0: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """With g_t = dL/dh_t + a_{t+1} g_{t+1} (g past T is 0): dL/db_t = g_t, dL/da_t = g_t h_{t-1}.
        Tiles run from the end, each loaded in reversed time order (column i holds step t1 - i)."""
        batch, d, h0 = _program_channels(h0_ptr, D, HAS_H0, BLOCK_D)
        steps = tl.arange(0, BLOCK_T)
        g = tl.zeros([BLOCK_D], dtype=tl.float32)  # g of the step after the tile
        n_tiles = tl.cdiv(T, BLOCK_T)
        for k in range(n_tiles):
            t = (n_tiles - k) * BLOCK_T - 1 - steps[None, :]  # reversed time
            base = batch * T * D + d[:, None]
            inside = (t < T) & (d[:, None] < D)
            grad_h = tl.load(grad_h_ptr + base + t * D, mask=inside, other=0.0)
            a_next = tl.load(a_ptr + base + (t + 1) * D, mask=inside & (t + 1 < T), other=0.0)
            a_next_prod, g_sum = tl.associative_scan((a_next, grad_h), 1, _combine)
            g_tile = a_next_prod * g[:, None] + g_sum
            h_prev = tl.load(h_ptr + base + (t - 1) * D, mask=inside & (t > 0), other=0.0)
            h_prev = tl.where(t == 0, h0[:, None], h_prev)
            tl.store(grad_b_ptr + base + t * D, g_tile, mask=inside)
            tl.store(grad_a_ptr + base + t * D, g_tile * h_prev, mask=inside)
            g = _at_step(g_tile, steps[None, :], BLOCK_T - 1)

    # ------------------------------------------------------------------- Mamba's selective scan

    @triton.jit
    def _selective_tile(x_ptr, delta_ptr, B_ptr, batch, t, e, n, A, T, E, N):
        """The tile's x, delta (channels, time), B (states, time) and the scan's coefficients
        a = exp(delta A), b = delta B x (channels, states, time); zero-padded past T, E and N."""
        et = batch * T * E + t * E + e[:, None]
        inside = (t < T) & (e[:, None] < E)
        x = tl.load(x_ptr + et, mask=inside, other=0.0)
        delta = tl.load(delta_ptr + et, mask=inside, other=0.0)
        B = tl.load(B_ptr + batch * T * N + t * N + n[:, None], mask=(t < T) & (n[:, None] < N), other=0.0)
        a = tl.exp(delta[:, None, :] * A[:, :, None])
        b = (delta * x)[:, None, :] * B[None, :, :]
        return x, delta, B, a, b

    @triton.jit
    def _selective_forward(x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, last_ptr, saved_ptr,
                           T, E, N, HAS_H0: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t and y_t = C_t . h_t + D x_t for one batch
        element and BLOCK_E channels, the (BLOCK_E, N) state in registers. Writes y (batch, T, E), the
        last state (batch, E, N) and the state before each tile (batch, tiles, E, N) for the backward."""
        batch, block = tl.program_id(0), tl.program_id(1)
        e = block * BLOCK_E + tl.arange(0, BLOCK_E)
        n = tl.arange(0, BLOCK_N)
        steps = tl.arange(0, BLOCK_T)
        en = e[:, None] * N + n[None, :]
        en_inside = (e[:, None] < E) & (n[None, :] < N)
        A = tl.load(A_ptr + en, mask=en_inside, other=0.0)  # padded channels and states: a = 1, b = 0
        D = tl.load(D_ptr + e, mask=e < E, other=0.0)
        h = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + batch * E * N + en, mask=en_inside, other=0.0)
        n_tiles = tl.cdiv(T, BLOCK_T)
        for k in range(n_tiles):
            tl.store(saved_ptr + (batch * n_tiles + k) * E * N + en, h, mask=en_inside)
            t = k * BLOCK_T + steps[None, :]
            x, delta, B, a, b = _selective_tile(x_ptr, delta_ptr, B_ptr, batch, t, e, n, A, T, E, N)
            C = tl.load(C_ptr + batch * T * N + t * N + n[:, None], mask=(t < T) & (n[:, None] < N), other=0.0)
            a_prod, b_sum = tl.associative_scan((a, b), 2, _combine)
            states = a_prod * h[:, :, None] + b_sum
            y = tl.sum(states * C[None, :, :], axis=1) + D[:, None] * x
            tl.store(y_ptr + batch * T * E + t * E + e[:, None], y, mask=(t < T) & (e[:, None] < E))
            h = _at_step(states, steps[None, None, :], BLOCK_T - 1)
        tl.store(last_ptr + batch * E * N + en, h, mask=en_inside)

    @triton.jit
    def _selective_backward(x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, saved_ptr, grad_y_ptr, grad_last_ptr,
                            grad_x_ptr, grad_delta_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_h0_ptr,
                            T, E, N, HAS_GRAD_LAST: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                            BLOCK_N: tl.constexpr):
        """Gradients of the selective scan, tiles from the end. Each tile's states are recomputed from
        the state saved before it, then reversed in time (tl.flip) to meet the gradient, which runs in
        reversed order: g_t = grad_y_t C_t + a_{t+1} g_{t+1} (per channel and state). Then
          dL/dlog a_t = g_t a_t h_{t-1}   (h_{t-1} from a second scan over the steps shifted by one: the
                                           equal g_t (h_t - b_t) cancels where a_t -> 0, at large delta)
          dx = sum_n g delta B + grad_y D,   ddelta = sum_n (g x B + dlog_a A),   dA = sum_t dlog_a delta,
          dB = sum_e g delta x,   dC = sum_e grad_y h,   dD = sum_t grad_y x,   dh0 = a_1 g_1.
        g starts from dL/d(last state) where a later chunk read it (HAS_GRAD_LAST), else from zero.
        dB and dC are per channel block and dA, dD per batch element: the caller sums them."""
        batch, block = tl.program_id(0), tl.program_id(1)
        n_blocks = tl.num_programs(1)
        e = block * BLOCK_E + tl.arange(0, BLOCK_E)
        n = tl.arange(0, BLOCK_N)
        steps = tl.arange(0, BLOCK_T)
        en = e[:, None] * N + n[None, :]
        en_inside = (e[:, None] < E) & (n[None, :] < N)
        A = tl.load(A_ptr + en, mask=en_inside, other=0.0)
        D = tl.load(D_ptr + e, mask=e < E, other=0.0)
        g = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)  # g of the step after the tile
        if HAS_GRAD_LAST:
            g = tl.load(grad_last_ptr + batch * E * N + en, mask=en_inside, other=0.0)
        grad_A = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
        grad_D = tl.zeros([BLOCK_E], dtype=tl.float32)
        a_first = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
        n_tiles = tl.cdiv(T, BLOCK_T)
        for j in range(n_tiles):
            k = n_tiles - 1 - j
            # The tile's states, in time order, then reversed.
            h = tl.load(saved_ptr + (batch * n_tiles + k) * E * N + en, mask=en_inside, other=0.0)
            t = k * BLOCK_T + steps[None, :]
            _, _, _, a, b = _selective_tile(x_ptr, delta_ptr, B_ptr, batch, t, e, n, A, T, E, N)
            a_prod, b_sum = tl.associative_scan((a, b), 2, _combine)
            states = tl.flip(a_prod * h[:, :, None] + b_sum, 2)
            # h_{t-1}: the same scan over the steps shifted by one, the tile's first step the identity.
            _, _, _, a_prev, b_prev = _selective_tile(x_ptr, delta_ptr, B_ptr, batch, tl.maximum(t - 1, 0), e, n,
                                                      A, T, E, N)
            first = steps[None, None, :] == 0
            a_prev, b_prev = tl.where(first, 1.0, a_prev), tl.where(first, 0.0, b_prev)
            a_prev_prod, b_prev_sum = tl.associative_scan((a_prev, b_prev), 2, _combine)
            previous = tl.flip(a_prev_prod * h[:, :, None] + b_prev_sum, 2)
            # Everything else in reversed time order: column i is step r = (k + 1) * BLOCK_T - 1 - i.
            r = (k + 1) * BLOCK_T - 1 - steps[None, :]
            x, delta, B, a, b = _selective_tile(x_ptr, delta_ptr, B_ptr, batch, r, e, n, A, T, E, N)
            delta_next = tl.load(delta_ptr + batch * T * E + (r + 1) * E + e[:, None],
                                 mask=(r + 1 < T) & (e[:, None] < E), other=0.0)
            C = tl.load(C_ptr + batch * T * N + r * N + n[:, None], mask=(r < T) & (n[:, None] < N), other=0.0)
            er = batch * T * E + r * E + e[:, None]
            er_inside = (r < T) & (e[:, None] < E)
            grad_y = tl.load(grad_y_ptr + er, mask=er_inside, other=0.0)
            a_next = tl.exp(delta_next[:, None, :] * A[:, :, None])
            a_next_prod, g_sum = tl.associative_scan((a_next, grad_y[:, None, :] * C[None, :, :]), 2, _combine)
            g_tile = a_next_prod * g[:, :, None] + g_sum
            grad_log_a = g_tile * a * previous  # not g (h_t - b_t), which cancels where a_t -> 0
            g_B = tl.sum(g_tile * B[None, :, :], axis=1)
            tl.store(grad_x_ptr + er, g_B * delta + grad_y * D[:, None], mask=er_inside)
            tl.store(grad_delta_ptr + er, g_B * x + tl.sum(grad_log_a * A[:, :, None], axis=1), mask=er_inside)
            nr = ((batch * n_blocks + block) * T + r) * N + n[:, None]
            nr_inside = (r < T) & (n[:, None] < N)
            tl.store(grad_B_ptr + nr, tl.sum(g_tile * (delta * x)[:, None, :], axis=0), mask=nr_inside)
            tl.store(grad_C_ptr + nr, tl.sum(states * grad_y[:, None, :], axis=0), mask=nr_inside)
            grad_A += tl.sum(grad_log_a * delta[:, None, :], axis=2)
            grad_D += tl.sum(grad_y * x, axis=1)
            g = _at_step(g_tile, steps[None, None, :], BLOCK_T - 1)  # step k * BLOCK_T
            a_first = _at_step(a, steps[None, None, :], BLOCK_T - 1)
        tl.store(grad_A_ptr + batch * E * N + en, grad_A, mask=en_inside)
        tl.store(grad_D_ptr + batch * E + e, grad_D, mask=e < E)
        tl.store(grad_h0_ptr + batch * E * N + en, a_first * g, mask=en_inside)


SCAN_BLOCK_T, SCAN_BLOCK_D = 32, 32
SELECTIVE_BLOCK_T, SELECTIVE_BLOCK_E = 16, 8
SELECTIVE_BACKWARD_WARPS = 8  # with Triton's default 4, ptxas spills registers on sm_90 (tests/test_triton.py)


class TritonScan(torch.autograd.Function):
    """h_t = a_t h_{t-1} + b_t in Triton kernels, in float32; the same function and derivative as
    scan.SequentialScan. Saves a and h, as that does."""

    @staticmethod
    def forward(ctx, a, b, h0):
        check(a, b, h0)
        dtype = a.dtype
        a, b, h0 = _float32(a, b, h0)
        batch, T, D = a.shape
        h = torch.empty_like(a)
        grid = (batch, triton.cdiv(D, SCAN_BLOCK_D))
        _scan_forward[grid](a, b, h0, h, T, D, HAS_H0=h0 is not None, BLOCK_T=SCAN_BLOCK_T, BLOCK_D=SCAN_BLOCK_D)
        ctx.save_for_backward(a, h, h0)
        ctx.dtype = dtype
        return h.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        grad_h, = _float32(grad_h)
        batch, T, D = a.shape
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(a)
        grid = (batch, triton.cdiv(D, SCAN_BLOCK_D))
        _scan_backward[grid](a, h, h0, grad_h, grad_a, grad_b, T, D, HAS_H0=h0 is not None,
                             BLOCK_T=SCAN_BLOCK_T, BLOCK_D=SCAN_BLOCK_D)
        grad_h0 = None if h0 is None else (a[:, 0] * grad_b[:, 0]).to(ctx.dtype)
        return grad_a.to(ctx.dtype), grad_b.to(ctx.dtype), grad_h0


class TritonSelectiveScan(torch.autograd.Function):
    """Mamba's selective scan fused in Triton kernels, in float32: the same function and derivative as
    model.Mamba.scan_channels, h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = C_t . h_t + D x_t,
    with no (batch, time, channels, d_state) tensor in memory. Returns y and the last state, both
    differentiable, as in cpu_kernels.selective_scan."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, h0):
        check(x, delta, A, B, C, D, h0)
        dtype = x.dtype
        x, delta, A, B, C, D, h0 = _float32(x, delta, A, B, C, D, h0)
        batch, T, E = x.shape
        N = A.shape[1]
        n_tiles = triton.cdiv(T, SELECTIVE_BLOCK_T)
        y = torch.empty_like(x)
        last = x.new_empty(batch, E, N)
        saved = x.new_empty(batch, n_tiles, E, N)
        grid = (batch, triton.cdiv(E, SELECTIVE_BLOCK_E))
        _selective_forward[grid](x, delta, A, B, C, D, h0, y, last, saved, T, E, N, HAS_H0=h0 is not None,
                                 BLOCK_T=SELECTIVE_BLOCK_T, BLOCK_E=SELECTIVE_BLOCK_E,
                                 BLOCK_N=triton.next_power_of_2(N))
        ctx.save_for_backward(x, delta, A, B, C, D, saved)
        ctx.has_h0, ctx.dtype = h0 is not None, dtype
        return y.to(dtype), last.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_last):
        x, delta, A, B, C, D, saved = ctx.saved_tensors
        grad_y, grad_last = _float32(grad_y, grad_last)
        batch, T, E = x.shape
        N = A.shape[1]
        n_blocks = triton.cdiv(E, SELECTIVE_BLOCK_E)
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(x)
        grad_B_parts, grad_C_parts = x.new_empty(batch, n_blocks, T, N), x.new_empty(batch, n_blocks, T, N)
        grad_A_parts, grad_D_parts, grad_h0 = x.new_empty(batch, E, N), x.new_empty(batch, E), x.new_empty(batch, E, N)
        _selective_backward[(batch, n_blocks)](
            x, delta, A, B, C, D, saved, grad_y, grad_last, grad_x, grad_delta, grad_A_parts, grad_B_parts,
            grad_C_parts, grad_D_parts, grad_h0, T, E, N, HAS_GRAD_LAST=grad_last is not None,
            BLOCK_T=SELECTIVE_BLOCK_T, BLOCK_E=SELECTIVE_BLOCK_E, BLOCK_N=triton.next_power_of_2(N),
            num_warps=SELECTIVE_BACKWARD_WARPS)
        grads = (grad_x, grad_delta, grad_A_parts.sum(0), grad_B_parts.sum(1), grad_C_parts.sum(1),
                 grad_D_parts.sum(0), grad_h0 if ctx.has_h0 else None)
        return tuple(None if g is None else g.to(ctx.dtype) for g in grads)


@torch.compiler.disable  # torch.compile runs the kernels as they are, between two graphs
def linear_scan(a, b, h0=None):
    """h (batch, time, channels) with h_t = a_t h_{t-1} + b_t, in Triton."""
    return TritonScan.apply(a, b, h0)


@torch.compiler.disable
def selective_scan(x, delta, A, B, C, D, h0=None):
    """y (batch, time, channels) and the last state (batch, channels, d_state) of Mamba's selective
    scan in Triton; x, delta (batch, time, channels), A (channels, d_state), B, C (batch, time, d_state)."""
    return TritonSelectiveScan.apply(x, delta, A, B, C, D, h0)
