"""Every kernel (C++ and Triton) against its plain-PyTorch path over generated cases: lengths at and
around the kernels' tile edges, every input in every memory layout a caller can hand it (transposed,
strided, expanded, a carried state's view), each dtype the kernel takes, h0 or none, and the gradient
of every input. The plain path runs in float64 on float64 copies of the same leaves; errors are
relative to the largest reference value. A seeded generator of our own picks the cases, so a run is
repeatable and bounded in time; a failure names its case."""
import random

import pytest
import torch
import torch.nn.functional as F

from minrnn import cpu_kernels
from minrnn import scan
from model import CausalDepthwiseConv, Mamba, MinGRUCoefficients, MinLSTMCoefficients, ModelConfig, ShiftedSum

# Lengths: one step, odd ones, and both sides of the Triton kernels' 4-step tiles and the C++ selective
# scan's 16-step chunks.
LENGTHS = (1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33)
# How a (batch, T, C) input may lie in memory; leaf shape -> the view a kernel is given.
LAYOUTS = {
    'contiguous': (lambda s: s, lambda t: t),
    'time-major': (lambda s: (s[1], s[0], *s[2:]), lambda t: t.transpose(0, 1)),
    'channel-major': (lambda s: (*s[:-2], s[-1], s[-2]), lambda t: t.transpose(-1, -2)),
    'strided': (lambda s: (*s[:-1], 2 * s[-1]), lambda t: t[..., ::2]),
    'expanded': (lambda s: (1, *s[1:]), None),  # the view expands the batch: set per shape below
}
# How a state (batch, C) may lie: a carried one is the last step of the previous chunk's h.
STATE_LAYOUTS = {
    'contiguous': (lambda s: s, lambda t: t),
    'carried': (lambda s: (s[0], 3, s[1]), lambda t: t[:, -1]),
    'transposed': (lambda s: (s[1], s[0]), lambda t: t.t()),
    'expanded': (lambda s: (1, s[1]), None),
}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


class Input:
    """One input of a case: a float64 leaf (values drawn by `draw`) and how it lies in memory."""

    def __init__(self, shape, layouts, layout, rng, draw):
        leaf_shape, view = layouts[layout]
        self.view = view or (lambda t: t.expand(shape))
        self.layout = layout
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        self.values = draw(torch.randn(leaf_shape(shape), generator=g, dtype=torch.float64))

    def leaf(self, dtype, device='cpu', rounded_to=None):
        """The values in dtype on device as a leaf; rounded_to first, so that a float64 reference reads the
        values a half-precision kernel reads."""
        return self.values.to(rounded_to or dtype).to(device, dtype).requires_grad_()


def generate(rng, shapes, dtypes, optional=()):
    """One case: an Input per name in shapes (name -> (shape, draw)); names in optional are None half
    the time. Layouts are drawn independently, so a case mixes them."""
    inputs = {}
    for name, (shape, draw) in shapes.items():
        if name in optional and rng.random() < 0.5:
            inputs[name] = None
            continue
        layouts = STATE_LAYOUTS if len(shape) == 2 else LAYOUTS
        inputs[name] = Input(shape, layouts, rng.choice(sorted(layouts)), rng, draw)
    return inputs, rng.choice(dtypes)


def describe(inputs, dtype, T):
    return f"T={T} {dtype} " + ' '.join(f'{k}:{v.layout if v else None}' for k, v in inputs.items())


def outputs_and_grads(fn, inputs, dtype, device='cpu', rounded_to=None):
    """fn's outputs (a tuple) and the gradient of every leaf for a fixed random weighting of them."""
    leaves = {k: None if v is None else v.leaf(dtype, device, rounded_to) for k, v in inputs.items()}
    views = {k: None if v is None else inputs[k].view(v) for k, v in leaves.items()}
    outputs = fn(**views)
    g = torch.Generator().manual_seed(7)
    loss = sum((out.double().cpu() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
               for out in outputs)
    present = [leaf for leaf in leaves.values() if leaf is not None]
    return outputs, dict(zip([k for k, v in leaves.items() if v is not None],
                             torch.autograd.grad(loss, present)))


def assert_kernel_equals_plain(kernel, plain, inputs, dtype, label, device='cpu'):
    got, got_grads = outputs_and_grads(kernel, inputs, dtype, device)
    expected, expected_grads = outputs_and_grads(plain, inputs, torch.float64, rounded_to=dtype)
    tolerance = TOLERANCE[dtype]
    pairs = [(f'output {i}', g, e) for i, (g, e) in enumerate(zip(got, expected))]
    pairs += [(f'dL/d{name}', got_grads[name], expected_grads[name]) for name in expected_grads]
    for what, g, e in pairs:
        assert g.shape == e.shape, f'{label}: {what} has shape {tuple(g.shape)}, expected {tuple(e.shape)}'
        error = ((g.cpu().double() - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        assert error < tolerance, f'{label}: {what} off by {error:.1e} (relative; tolerance {tolerance:.0e})'


def cases(kernel_name, count):
    """count seeded generators, one per case, named for pytest."""
    return [pytest.param(random.Random(f'{kernel_name}-{i}'), id=f'{kernel_name}-{i}') for i in range(count)]


def gate_draw(t):
    return t * 3


def decay_draw(t):
    return torch.sigmoid(t) * 0.6 + 0.4  # a in (0.4, 1): a gate that keeps a long memory


def positive_draw(t):
    return F.softplus(t) * 0.5 + 0.05  # Mamba's delta


def identity(t):
    return t


def scan_shapes(rng, B=2, channels=(1, 5, 9), lengths=LENGTHS):
    T, C = rng.choice(lengths), rng.choice(channels)
    return T, {'a': ((B, T, C), decay_draw), 'b': ((B, T, C), identity), 'h0': ((B, C), identity)}


def gated_shapes(rng, kind, B=2, lengths=LENGTHS):
    T, C = rng.choice(lengths), rng.choice((1, 5, 9))
    k = 2 if kind == 'mingru' else 3
    return T, {'gates': ((B, T, k * C), gate_draw), 'h0': ((B, C), identity)}


def plain_gated(kind):
    coefficients = MinGRUCoefficients if kind == 'mingru' else MinLSTMCoefficients
    return lambda gates, h0: (scan.SequentialScan.apply(*coefficients.apply(gates), h0),)


def selective_shapes(rng, B=2):
    T, E, N = rng.choice(LENGTHS), rng.choice((3, 6, 33)), rng.choice((1, 4, 9, 16))
    return T, E, N, {'x': ((B, T, E), identity), 'delta': ((B, T, E), positive_draw),
                     'A_log': ((E, N), lambda t: t * 0.3 + 0.5), 'B': ((B, T, N), identity),
                     'C': ((B, T, N), identity), 'D': ((1, E), identity), 'h0': ((B, E), identity)}


def plain_selective(E, N):
    """Mamba.scan_channels on the plain sequential scan; h0 (batch, E) is spread over the N states."""
    layer = Mamba(ModelConfig(block='mamba', n_embd=1, mamba_expand=E, d_state=N, scan_backend='sequential'))

    def run(x, delta, A_log, B, C, D, h0, **gate):
        y, last = layer.scan_channels(x, delta, B, C, A_log, D[0], states(h0, N))
        if gate:
            y = y * F.silu(gate['z'])
        return y, last
    return run


def states(h0, N):
    """A (batch, E, N) state from a (batch, E) input, so that every layout of STATE_LAYOUTS applies."""
    return None if h0 is None else h0.unsqueeze(-1) * torch.linspace(1, 0.5, N, dtype=h0.dtype, device=h0.device)


# ----------------------------------------------------------------------------- C++

needs_compiled = pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')


@needs_compiled
@pytest.mark.parametrize('rng', cases('cpu-scan', 12))
def test_compiled_scan(rng):
    T, shapes = scan_shapes(rng)
    inputs, dtype = generate(rng, shapes, (torch.float32, torch.float64), optional=('h0',))
    assert_kernel_equals_plain(lambda a, b, h0: (cpu_kernels.scan(a, b, h0),),
                               lambda a, b, h0: (scan.SequentialScan.apply(a, b, h0),),
                               inputs, dtype, describe(inputs, dtype, T))


@needs_compiled
@pytest.mark.parametrize('rng', cases('cpu-gates', 12))
def test_compiled_gated_scan(rng):
    kind = rng.choice(('mingru', 'minlstm'))
    T, shapes = gated_shapes(rng, kind)
    inputs, dtype = generate(rng, shapes, (torch.float32, torch.float64), optional=('h0',))
    assert_kernel_equals_plain(lambda gates, h0: (scan.linear_scan(*cpu_kernels.coefficients(kind, gates), h0=h0,
                                                                   backend='compiled'),),
                               plain_gated(kind), inputs, dtype, f'{kind} ' + describe(inputs, dtype, T))


@needs_compiled
@pytest.mark.parametrize('rng', cases('cpu-selective', 60))
def test_compiled_selective_scan(rng):
    """With and without the fused softplus of delta's pre-activation and bias and the gate SiLU(z)."""
    T, E, N, shapes = selective_shapes(rng)
    fused = rng.random() < 0.7
    if fused:
        shapes.update(z=((2, T, E), identity), bias=((1, E), identity))
    inputs, dtype = generate(rng, shapes, (torch.float32, torch.float64), optional=('h0',))
    plain = plain_selective(E, N)

    def kernel(x, delta, A_log, B, C, D, h0, z=None, bias=None):
        return cpu_kernels.selective_scan(x, delta, -A_log.exp(), B, C, D[0], states(h0, N),
                                          delta_bias=None if bias is None else bias[0], z=z)

    def reference(x, delta, A_log, B, C, D, h0, z=None, bias=None):
        if not fused:
            return plain(x, delta, A_log, B, C, D, h0)
        return plain(x, F.softplus(delta + bias[0]), A_log, B, C, D, h0, z=z)
    assert_kernel_equals_plain(kernel, reference, inputs, dtype, f'fused={fused} ' + describe(inputs, dtype, T))


@needs_compiled
@pytest.mark.parametrize('rng', cases('cpu-conv', 16))
def test_compiled_causal_conv(rng):
    T, C, K = rng.choice(LENGTHS), rng.choice((1, 5, 70)), rng.choice((1, 2, 3, 4))
    silu = rng.random() < 0.5
    inputs, dtype = generate(rng, {'x': ((2, T, C), identity), 'weight': ((1, K, C), identity),
                                   'bias': ((1, 1, C), identity)}, (torch.float32, torch.float64))
    assert_kernel_equals_plain(lambda x, weight, bias: (cpu_kernels.causal_conv(x, weight[0], bias[0, 0], silu),),
                               lambda x, weight, bias: (ShiftedSum.apply(x, weight[0], bias[0, 0], silu),),
                               inputs, dtype, f'silu={silu} K={K} ' + describe(inputs, dtype, T))


@needs_compiled
def test_a_conv_longer_than_the_cpu_kernels_window_runs_plainly():
    x, weight, bias = torch.randn(2, 9, 5), torch.randn(6, 5), torch.randn(5)
    with pytest.raises(RuntimeError, match='up to 4 steps, got 6'):
        cpu_kernels.causal_conv(x, weight, bias, True)
    conv = CausalDepthwiseConv(5, 6, silu=True, backend='compiled')
    assert torch.allclose(conv(x)[0], ShiftedSum.apply(x, conv.weight, conv.bias, True))


# ----------------------------------------------------------------------------- Triton

def triton_kernels():
    """gpu_kernels where triton imports (the interpreter runs them on a CPU: conftest.py), else skip."""
    pytest.importorskip('triton')
    from minrnn import gpu_kernels
    return gpu_kernels, 'cuda' if torch.cuda.is_available() else 'cpu'


TRITON_DTYPES = (torch.float32, torch.bfloat16)


@pytest.mark.parametrize('rng', cases('triton-scan', 6))
def test_triton_scan(rng):
    gpu_kernels, device = triton_kernels()
    T, shapes = scan_shapes(rng)
    inputs, dtype = generate(rng, shapes, TRITON_DTYPES, optional=('h0',))
    assert_kernel_equals_plain(lambda a, b, h0: (gpu_kernels.linear_scan(a, b, h0),),
                               lambda a, b, h0: (scan.SequentialScan.apply(a, b, h0),),
                               inputs, dtype, describe(inputs, dtype, T), device)


@pytest.mark.parametrize('rng', cases('triton-gates', 6))
def test_triton_gated_scan(rng):
    gpu_kernels, device = triton_kernels()
    kind = rng.choice(('mingru', 'minlstm'))
    T, shapes = gated_shapes(rng, kind)
    inputs, dtype = generate(rng, shapes, TRITON_DTYPES, optional=('h0',))
    assert_kernel_equals_plain(lambda gates, h0: (gpu_kernels.gated_scan(kind, gates, h0),), plain_gated(kind),
                               inputs, dtype, f'{kind} ' + describe(inputs, dtype, T), device)


@pytest.mark.parametrize('rng', cases('triton-split-scan', 6))
def test_triton_scan_split_in_time(rng, monkeypatch):
    """The scans with time split into segments (forced at these lengths: segments of 4 steps and up),
    the last one short, each program starting from the maps of the segments before (or after) it."""
    gpu_kernels, device = triton_kernels()
    monkeypatch.setattr(gpu_kernels, 'SCAN_MIN_SEGMENT', 4)
    monkeypatch.setattr(gpu_kernels, 'SCAN_MIN_SEGMENTS', 2)
    kind, lengths = rng.choice(('plain', 'mingru', 'minlstm')), (8, 9, 13, 31, 33)
    if kind == 'plain':
        T, shapes = scan_shapes(rng, lengths=lengths)
        kernel, plain = (lambda a, b, h0: (gpu_kernels.linear_scan(a, b, h0),),
                         lambda a, b, h0: (scan.SequentialScan.apply(a, b, h0),))
    else:
        T, shapes = gated_shapes(rng, kind, lengths=lengths)
        kernel, plain = lambda gates, h0: (gpu_kernels.gated_scan(kind, gates, h0),), plain_gated(kind)
    assert gpu_kernels.scan_segments(2, 9, T, 132)[0] > 1
    inputs, dtype = generate(rng, shapes, TRITON_DTYPES, optional=('h0',))
    assert_kernel_equals_plain(kernel, plain, inputs, dtype, f'{kind} split ' + describe(inputs, dtype, T), device)


@pytest.mark.parametrize('rng', cases('triton-conv', 5))
def test_triton_causal_conv(rng):
    gpu_kernels, device = triton_kernels()
    T, C, K = rng.choice(LENGTHS), rng.choice((1, 5, 70)), rng.choice((1, 2, 4))
    silu = rng.random() < 0.5
    inputs, dtype = generate(rng, {'x': ((2, T, C), identity), 'weight': ((1, K, C), identity),
                                   'bias': ((1, 1, C), identity)}, TRITON_DTYPES)
    assert_kernel_equals_plain(lambda x, weight, bias: (gpu_kernels.causal_conv(x, weight[0], bias[0, 0], silu),),
                               lambda x, weight, bias: (ShiftedSum.apply(x, weight[0], bias[0, 0], silu),),
                               inputs, dtype, f'silu={silu} K={K} ' + describe(inputs, dtype, T), device)


@pytest.mark.parametrize('rng', cases('triton-selective', 5))
def test_triton_selective_scan(rng):
    """With the fused softplus of delta's pre-activation and bias, and Mamba's output gate SiLU(z)."""
    gpu_kernels, device = triton_kernels()
    T, E, N, shapes = selective_shapes(rng)
    shapes.update(z=((2, T, E), identity), bias=((1, E), identity))
    inputs, dtype = generate(rng, shapes, TRITON_DTYPES, optional=('h0',))
    plain = plain_selective(E, N)

    def kernel(x, delta, A_log, B, C, D, h0, z, bias):
        return gpu_kernels.selective_scan(x, delta, -A_log.exp(), B, C, D[0], states(h0, N), delta_bias=bias[0], z=z)

    def reference(x, delta, A_log, B, C, D, h0, z, bias):
        return plain(x, F.softplus(delta + bias[0]), A_log, B, C, D, h0, z=z)
    assert_kernel_equals_plain(kernel, reference, inputs, dtype, describe(inputs, dtype, T), device)
