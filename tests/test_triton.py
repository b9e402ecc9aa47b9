"""The Triton kernels (gpu_kernels.py) against the plain paths: the scan against a float64 loop, the
fused selective scan against Mamba's plain one in float64, each block on the 'triton' backend against
'sequential', values and gradients, in float32 to 1e-5 of the largest value. Where no GPU is, they run
on CPU tensors through Triton's interpreter (conftest.py sets TRITON_INTERPRET=1; slow, so the shapes
are small), and the kernels are compiled for two GPU architectures to check that they build there.
Skipped where triton is not installed (`pip install triton`; .ci/run installs it)."""
import os

import pytest
import torch

from model import CharLM, ModelConfig
from test_model import assert_compiled_equals_eager, mamba_inputs, mamba_layer
from test_scan import reference

triton = pytest.importorskip('triton')
from minrnn import gpu_kernels  # noqa: E402  (after the skip: it needs triton to define its kernels)
from minrnn import static_cost  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
T_VALUES = [1, 7, 64, 300]


def relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def float32_leaves(*tensors):
    return [None if t is None else t.detach().float().to(DEVICE).requires_grad_() for t in tensors]


def float64_leaves(*tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


def half_of_a_wider_tensor(t):
    """t as a view with a longer step stride, as Mamba's x and z are (the halves of in_proj's output):
    the kernels read it in place."""
    view = torch.cat([t, torch.zeros_like(t)], dim=-1)[..., :t.shape[-1]]
    assert not view.is_contiguous()
    return view


@pytest.mark.parametrize('T', T_VALUES)
@pytest.mark.parametrize('with_h0', [False, True])
def test_triton_scan_equals_the_float64_loop(T, with_h0):
    """Signed b and h0, T not a multiple of the tile; gradients of a, b and h0."""
    g = torch.Generator().manual_seed(T)
    a = torch.rand(2, T, 5, generator=g, dtype=torch.float64) * 0.6 + 0.4
    b = torch.randn(2, T, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 5, generator=g, dtype=torch.float64) if with_h0 else None
    grad_h = torch.randn(2, T, 5, generator=g, dtype=torch.float64)

    a64, b64, h064 = float64_leaves(a, b, h0)
    expected = reference(a64.log(), b64, h064)
    expected_grads = torch.autograd.grad(expected, [t for t in (a64, b64, h064) if t is not None], grad_h)

    a32, b32, h032 = float32_leaves(a, b, h0)
    got = gpu_kernels.linear_scan(a32, b32, h032)
    assert got.dtype == torch.float32
    got_grads = torch.autograd.grad(got, [t for t in (a32, b32, h032) if t is not None], grad_h.float().to(DEVICE))
    assert relative_error(got.cpu(), expected) < 1e-5
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert relative_error(got_grad.cpu(), expected_grad) < 1e-5


@pytest.mark.parametrize('T', [1, 3, 70])
@pytest.mark.parametrize('silu', [False, True])
@pytest.mark.parametrize('kernel', [2, 4])
def test_triton_causal_conv_equals_the_shifted_sum(T, silu, kernel):
    """The conv kernel against model.ShiftedSum in float64: y and the gradients of x, weight and bias,
    T shorter than the kernel and across time blocks, 70 channels (not a multiple of the kernel's
    block), a kernel shorter than the window of 4 (zero weights in front), x a view where silu (as
    Mamba's is)."""
    from model import ShiftedSum
    g = torch.Generator().manual_seed(T)
    x, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64)
                       for shape in ((2, T, 70), (kernel, 70), (70,)))
    grad_y = torch.randn(2, T, 70, generator=g, dtype=torch.float64)
    leaves64 = float64_leaves(x, weight, bias)
    expected = ShiftedSum.apply(*leaves64, silu)
    expected_grads = torch.autograd.grad(expected, leaves64, grad_y)
    leaves32 = float32_leaves(x, weight, bias)
    got = gpu_kernels.causal_conv(half_of_a_wider_tensor(leaves32[0]) if silu else leaves32[0], *leaves32[1:], silu)
    got_grads = torch.autograd.grad(got, leaves32, grad_y.float().to(DEVICE))
    assert relative_error(got.cpu(), expected) < 1e-5
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert relative_error(got_grad.cpu(), expected_grad) < 1e-5


def test_kernels_longer_than_the_triton_convs_window_run_the_plain_conv():
    from minrnn import scan
    x, weight, bias = torch.randn(1, 3, 8).to(DEVICE), torch.randn(5, 8).to(DEVICE), torch.zeros(8).to(DEVICE)
    assert scan.causal_conv(scan.Kernels('triton', 'conv'), x, weight, bias, False, plain=lambda *args: 'plain') == 'plain'
    with pytest.raises(ValueError, match='up to 4 steps'):
        gpu_kernels.causal_conv(x, weight, bias)


@pytest.mark.parametrize('kind', ['mingru', 'minlstm'])
@pytest.mark.parametrize('T', [1, 45])
@pytest.mark.parametrize('with_h0', [False, True])
def test_triton_gated_scan_equals_the_coefficients_and_the_sequential_scan(kind, T, with_h0):
    """The kernels that compute minGRU's / minLSTM's coefficients from the gate pre-activations against
    model.MinGRUCoefficients / MinLSTMCoefficients on the sequential scan in float64: h and the
    gradients of the gates and h0. Pre-activations of both signs and large magnitude (g's two branches,
    saturated gates)."""
    from model import MinGRUCoefficients, MinLSTMCoefficients
    from minrnn.scan import linear_scan
    g = torch.Generator().manual_seed(T)
    width = 5
    gates = torch.randn(2, T, (2 if kind == 'mingru' else 3) * width, generator=g, dtype=torch.float64) * 4
    h0 = torch.randn(2, width, generator=g, dtype=torch.float64) if with_h0 else None
    grad_h = torch.randn(2, T, width, generator=g, dtype=torch.float64)
    coefficients = MinGRUCoefficients if kind == 'mingru' else MinLSTMCoefficients

    gates64, h064 = float64_leaves(gates, h0)
    expected = linear_scan(*coefficients.apply(gates64), h0=h064, backend='sequential')
    leaves64 = [t for t in (gates64, h064) if t is not None]
    expected_grads = torch.autograd.grad(expected, leaves64, grad_h)
    gates32, h032 = float32_leaves(gates, h0)
    got = gpu_kernels.gated_scan(kind, gates32, h032)
    assert got.dtype == torch.float32
    got_grads = torch.autograd.grad(got, [t for t in (gates32, h032) if t is not None], grad_h.float().to(DEVICE))
    assert relative_error(got.cpu(), expected) < 1e-5
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert relative_error(got_grad.cpu(), expected_grad) < 1e-5


def test_triton_gated_scan_reads_bfloat16_gates():
    """Gates in bfloat16 (autocast's linear layers): h in float32 from their exact values, the gates'
    gradient in bfloat16."""
    gates = torch.randn(2, 9, 10, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    low = gates.to(DEVICE).requires_grad_()
    high = gates.float().to(DEVICE).requires_grad_()
    h_low, h_high = gpu_kernels.gated_scan('mingru', low, None), gpu_kernels.gated_scan('mingru', high, None)
    assert h_low.dtype == torch.float32 and torch.equal(h_low, h_high)
    grad_low, = torch.autograd.grad(h_low.sum(), low)
    grad_high, = torch.autograd.grad(h_high.sum(), high)
    assert grad_low.dtype == torch.bfloat16 and relative_error(grad_low.float().cpu(), grad_high.double().cpu()) < 2 ** -8


# the interpreter is slow: short sequences
@pytest.mark.parametrize('T, E', [(1, 6), (7, 6), (37, 6), (9, 150)])
@pytest.mark.parametrize('with_h0', [False, True])
def test_triton_selective_scan_equals_the_plain_one(T, E, with_h0):
    """Mamba.selective_scan on 'triton' in float32 against the plain path ('sequential', which builds the
    (batch, T, E, N) coefficients) in float64: y, the last state and the gradients of x, delta, B, C,
    h0, A_log and D, through y and through the last state. N = 5, E = 6 and T are not multiples of the
    kernels' blocks; E = 150 spans 5 warps in 2 programs, whose partial sums of dB and dC add up."""
    def run(backend, dtype, device):
        torch.manual_seed(0)  # mamba_layer perturbs A_log and D at random: the same for both
        layer = mamba_layer(backend, E=E, N=5).to(device, dtype)
        inputs = [t.to(device, dtype).requires_grad_() for t in mamba_inputs(T, seed=T, E=E, N=5)]
        h0 = torch.randn(2, E, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        h0 = h0.to(device, dtype).requires_grad_() if with_h0 else None
        y, last = layer.selective_scan(*inputs, h0)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        last_weights = torch.randn(last.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        leaves = [*inputs, *([h0] if with_h0 else []), layer.A_log, layer.D]
        loss = (y * weights.to(device, dtype)).sum() + (last * last_weights.to(device, dtype)).sum()  # a later chunk's use
        grads = torch.autograd.grad(loss, leaves)
        return [t.cpu() for t in (y, last, *grads)]
    names = ['y', 'last', 'x', 'delta', 'B', 'C'] + (['h0'] if with_h0 else []) + ['A_log', 'D']
    for name, got, expected in zip(names, run('triton', torch.float32, DEVICE), run('sequential', torch.float64, 'cpu')):
        assert relative_error(got, expected) < 1e-5, name


def test_triton_selective_scan_fuses_the_softplus_of_delta_and_its_bias():
    """Given delta_bias, the kernels take delta's pre-activation: the same y, last state and gradients
    (the bias's included) as softplus(pre-activation + bias) fed to the plain path in float64. The
    pre-activations span the softplus's range, from e^-30 to linear."""
    layer = mamba_layer('sequential', E=6, N=5)
    x, _, B, C = mamba_inputs(37, seed=2, E=6, N=5)
    pre = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 12
    bias = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    A, D = -layer.A_log.detach().exp(), layer.D.detach()

    def run(fused, dtype, device):
        leaves = [t.detach().to(device, dtype).requires_grad_() for t in (x, pre, B, C, bias)]
        x_, pre_, B_, C_, bias_ = leaves
        if fused:
            y, last = gpu_kernels.selective_scan(x_, pre_, A.to(device, dtype), B_, C_, D.to(device, dtype),
                                                 delta_bias=bias_)
        else:
            y, last = layer.plain_selective_scan(x_, torch.nn.functional.softplus(pre_ + bias_), B_, C_)
        loss = (y * weights.to(device, dtype)).sum() + last.sum()
        return [t.detach().cpu() for t in (y, last, *torch.autograd.grad(loss, leaves))]
    for name, got, expected in zip(['y', 'last', 'x', 'pre', 'B', 'C', 'bias'], run(True, torch.float32, DEVICE),
                                   run(False, torch.float64, 'cpu')):
        assert relative_error(got, expected) < 1e-5, name


@pytest.mark.parametrize('T', [1, 23])
@pytest.mark.parametrize('z_view', [False, True])
def test_triton_selective_scan_fuses_mambas_output_gate(T, z_view):
    """Given z, the kernels return y * SiLU(z): the same values and gradients (z's included) as the
    plain path followed by model.SiLUGate, in float64; z contiguous or a view."""
    from model import SiLUGate
    layer = mamba_layer('sequential', E=6, N=5)
    x, delta, B, C = mamba_inputs(T, seed=7, E=6, N=5)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 3
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    A, D = -layer.A_log.detach().exp(), layer.D.detach()

    def run(fused, dtype, device):
        leaves = [t.detach().to(device, dtype).requires_grad_() for t in (x, delta, B, C, z)]
        if fused:
            y, _ = gpu_kernels.selective_scan(*leaves[:2], A.to(device, dtype), *leaves[2:4], D.to(device, dtype),
                                              z=half_of_a_wider_tensor(leaves[4]) if z_view else leaves[4])
        else:
            y = SiLUGate.apply(layer.plain_selective_scan(*leaves[:4])[0], leaves[4])
        return [t.detach().cpu() for t in (y, *torch.autograd.grad((y * weights.to(device, dtype)).sum(), leaves))]
    for name, got, expected in zip(['y', 'x', 'delta', 'B', 'C', 'z'], run(True, torch.float32, DEVICE),
                                   run(False, torch.float64, 'cpu')):
        assert relative_error(got, expected) < 1e-5, name


def test_triton_selective_scan_keeps_bfloat16_in_and_out():
    """Inputs in bfloat16 (training's autocast) give y and gradients in bfloat16, computed in float32:
    equal to the float32 kernels' result rounded once (bfloat16 holds 8 bits: 2^-8 relative). The
    last state, which a later chunk starts from, stays float32."""
    layer = mamba_layer('sequential', E=6, N=5)
    inputs = [t.float().to(torch.bfloat16) for t in mamba_inputs(19, seed=6, E=6, N=5)]
    A, D = (-layer.A_log.detach().exp()).float().to(DEVICE), layer.D.detach().float().to(DEVICE)

    def run(dtype):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in inputs]
        y, last = gpu_kernels.selective_scan(*leaves[:2], A, *leaves[2:], D)
        return [y, last, *torch.autograd.grad(y.float().sum() + last.float().sum(), leaves)]
    low, high = run(torch.bfloat16), run(torch.float32)
    for name, got, expected in zip(['y', 'last', 'x', 'delta', 'B', 'C'], low, high):
        assert got.dtype == (torch.float32 if name == 'last' else torch.bfloat16), name
        assert relative_error(got.float().cpu(), expected.detach().double().cpu()) < 2 ** -7, name


@pytest.mark.parametrize('low, high', [(10, 30), (30, 100)])
def test_triton_selective_scan_gradients_hold_where_exp_delta_a_vanishes(low, high):
    """At large delta, a_t = exp(delta A) -> 0 and h_t -> b_t: dL/dA must not come from h_t - b_t
    (which cancels; it was 1.0 off at delta 30-100), but from a_t h_{t-1}."""
    def run(backend, dtype):
        torch.manual_seed(0)
        layer = mamba_layer(backend, E=6, N=5).to(DEVICE if backend == 'triton' else 'cpu', dtype)
        x, delta, B, C = mamba_inputs(40, seed=1, E=6, N=5)
        delta = low + (high - low) * torch.rand(delta.shape, generator=torch.Generator().manual_seed(2),
                                                 dtype=torch.float64)
        inputs = [t.to(layer.D.device, dtype).requires_grad_() for t in (x, delta, B, C)]
        y, _ = layer.selective_scan(*inputs)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        grads = torch.autograd.grad((y * weights.to(y.device, dtype)).sum(), [*inputs, layer.A_log, layer.D])
        return [g.cpu() for g in grads]
    for name, got, expected in zip(['x', 'delta', 'B', 'C', 'A_log', 'D'], run('triton', torch.float32),
                                   run('sequential', torch.float64)):
        assert relative_error(got, expected) < 1e-5, name


@pytest.mark.parametrize('block', ['mingru', 'minlstm', 'mamba'])
def test_every_recurrent_block_on_triton_equals_sequential(block):
    """The whole model, forward and backward, and the state it hands on: the second chunk's loss
    reaches the first chunk's parameters through the carried state, on both paths alike."""
    idx = torch.randint(0, 11, (2, 19), generator=torch.Generator().manual_seed(0))
    results = {}
    for backend in ('sequential', 'triton'):
        torch.manual_seed(0)
        config = ModelConfig(block=block, vocab_size=11, block_size=32, n_layer=1, n_embd=8, d_state=4,
                             scan_backend=backend)
        model = CharLM(config).to(DEVICE)
        first, _, states = model(idx[:, :11].to(DEVICE))
        logits, loss, _ = model(idx[:, 11:].to(DEVICE), idx[:, 11:].to(DEVICE), states)
        loss.backward()
        results[backend] = [first, logits] + [p.grad for p in model.parameters()]
    for got, expected in zip(results['triton'], results['sequential']):
        assert relative_error(got.detach().cpu(), expected.detach().cpu()) < 1e-5


def test_the_triton_kernels_are_operators_that_pass_opcheck():
    """Schemas, fake (shape-only) implementations and registered derivatives, checked by torch.library."""
    g = torch.Generator().manual_seed(20)
    a, b, h0 = torch.rand(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g), torch.randn(2, 5, generator=g)
    x, delta = torch.randn(2, 9, 5, generator=g), torch.rand(2, 9, 5, generator=g)
    A, B, C, D = -torch.rand(5, 3, generator=g), torch.randn(2, 9, 3, generator=g), torch.randn(2, 9, 3, generator=g), torch.randn(5, generator=g)
    cases = [(gpu_kernels._scan, ('plain', a, b, h0)), (gpu_kernels._scan, ('plain', a, b, None)),
             (gpu_kernels._scan, ('mingru', torch.randn(2, 7, 10, generator=g), None, h0)),
             (gpu_kernels._scan, ('minlstm', torch.randn(2, 7, 15, generator=g), None, None)),
             (gpu_kernels._causal_conv, (torch.randn(2, 7, 5, generator=g), torch.randn(4, 5, generator=g),
                                         torch.randn(5, generator=g), True)),
             (gpu_kernels._selective_scan, (x, delta, A, B, C, D, torch.randn(2, 5, 3, generator=g),
                                            torch.randn(5, generator=g), torch.randn(2, 9, 5, generator=g))),
             (gpu_kernels._selective_scan, (x, delta, A, B, C, D, None, None, None))]
    for op, args in cases:
        args = tuple(t.to(DEVICE).requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
        torch.library.opcheck(op, args, test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


@pytest.mark.parametrize('block', ['mingru', 'minlstm', 'mamba'])
def test_torch_compile_runs_a_whole_model_through_the_triton_kernels(block):
    """fullgraph=True: no graph break anywhere, the kernels included; the same loss and gradients."""
    torch.manual_seed(0)
    config = ModelConfig(block=block, vocab_size=11, block_size=32, n_layer=1, n_embd=8, d_state=4,
                         scan_backend='triton', ff_mult=0 if block == 'mamba' else 4)
    idx = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    assert_compiled_equals_eager(CharLM(config).to(DEVICE), idx)


TRACE_INTO_THE_KERNELS = """
import torch, triton
from torch._functorch.aot_autograd import aot_module_simplified
from triton.backends.compiler import GPUTarget
from model import CharLM, ModelConfig

class H100:  # all torch asks of a driver when it reads which tensors a kernel writes: the target
    def get_current_target(self):
        return GPUTarget('cuda', 90, 32)
triton.runtime.driver.set_active(H100())
for block in ['mingru', 'minlstm', 'mamba']:
    graphs = []
    def keep(graph, inputs):
        graphs.append(graph.code)
        return graph
    capture = lambda module, inputs: aot_module_simplified(module, inputs, fw_compiler=keep, bw_compiler=keep)
    with torch.device('meta'):
        model = CharLM(ModelConfig(block=block, vocab_size=11, block_size=32, n_layer=2, n_embd=32, d_state=4,
                                   scan_backend='triton', ff_mult=0 if block == 'mamba' else 4))
        idx = torch.zeros(2, 13, dtype=torch.long)
    torch.compile(model, backend=capture, fullgraph=True)(idx, idx)[1].backward()
    print(block, *[code.count('triton_kernel_wrapper_functional(') for code in graphs])
"""


def test_torch_compile_traces_into_the_triton_kernels():
    """What a GPU's torch.compile does, traced here on meta tensors without the interpreter: the whole
    model in one graph (fullgraph=True) forward and backward, each layer's kernel a node of it that
    Inductor compiles with the rest, not an opaque call."""
    pytest.importorskip('triton.backends.compiler')
    from conftest import ROOT, run_script
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    result = run_script('-c', TRACE_INTO_THE_KERNELS, env={**env, 'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    # two layers: each minGRU / minLSTM layer one scan kernel, each Mamba layer its conv and its scan
    assert result.stdout.split() == ['mingru', '2', '2', 'minlstm', '2', '2', 'mamba', '4', '4'], result.stdout


def test_the_triton_backend_says_where_it_runs():
    if gpu_kernels.INTERPRETED:
        pytest.skip('the interpreter runs the kernels on CPU tensors')
    with pytest.raises(ValueError, match="scan_backend='triton'"):
        gpu_kernels.linear_scan(torch.ones(1, 2, 3), torch.ones(1, 2, 3))


@pytest.mark.parametrize('capability', [75])  # a T4, the paper's GPU (sm_90 and sm_80: the bench --static test)
def test_the_kernels_compile_for_gpus_without_spilling_registers(capability):
    """Triton's compiler and the ptxas it bundles, run ahead of time for a GPU that need not be here:
    every construct of the kernels lowers to PTX and assembles, and every kernel fits in registers.
    An H100's and an A100's compile is test_bench_static_...'s, which holds them to no spills too."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except (ImportError, AttributeError) as e:
        pytest.skip(f'triton {triton.__version__} does not say which ptxas it uses ({type(e).__name__})')
    from conftest import ROOT, run_script
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    code = ('import sys, tempfile; from minrnn import gpu_kernels as k\n'
            'for name, launch in k.launches().items():\n'
            '    with tempfile.TemporaryDirectory() as folder:\n'
            '        print(name, k.compile_ahead_of_time(launch.kernel, launch.constants, launch.options,\n'
            '                                            int(sys.argv[1]), folder, launch.half)[0])')
    result = run_script('-c', code, str(capability), env={**env, 'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(gpu_kernels.launches()), result.stdout
    for line in lines:
        assert '0 bytes spill stores' in line, line


def test_bench_static_counts_the_kernels_and_the_paper_scale_iterations(tmp_path):
    """bench.py --static: both selective kernels keep at least 3 CTAs of 4 warps per SM (18.75% occupancy,
    as many as a paper-scale grid puts there), without spills, on sm_90 and sm_80, and their loads wait
    once a 4-step chunk (every state's loaded before the chunk's first store), so that those warps
    leave them issue-bound. The forward takes one exp per state element and step (and a
    channel's softplus and gate, shared by its 16 states), the backward 1.25 (a_t, and a_{t+1} once per
    state and 4-step chunk) and the same shared ones. The backward sums dB and dC over channels with 2
    shuffles per element and step (a reduce-scatter); no other kernel needs a shuffle, and none a
    barrier. The roofline of one paper-scale iteration of each of the paper's blocks, and the scans'
    split in time at the paper's speed setting."""
    pytest.importorskip('triton.backends.nvidia.compiler')
    from conftest import ROOT, run_script
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    result = run_script(os.path.join(ROOT, 'bench.py'), '--static', '--out', str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    from minrnn import report
    rows = report.read_csv(str(tmp_path / 'kernels.csv'))
    assert len(rows) == 2 * len(gpu_kernels.launches()) and all(r['spilled_bytes'] == 0 for r in rows)
    selective = [r for r in rows if r['kernel'].startswith('selective')]
    assert all(r['ctas_per_sm'] >= 3 for r in selective), selective
    assert all(r['stall_cycles_per_loop'] <= static_cost.LOAD_LATENCY and r['bound'] == 'issue'
               for r in selective), selective
    assert all(r['shuffles_per_element'] <= 2 for r in selective)
    assert all(r['exps_per_element'] <= 1.25 for r in selective if r['kernel'] == 'selective_forward')
    assert all(r['exps_per_element'] <= 1.5 for r in selective if r['kernel'] == 'selective_backward')
    # a channel's steps and states stay in one thread: no lane takes part but in the sums over channels
    assert all(r['shuffles_per_element'] == 0 for r in rows if r['kernel'] != 'selective_backward'), rows
    assert all(r['barriers_per_element'] == 0 for r in rows), rows
    assert (tmp_path / 'sass' / 'selective_backward.sm_90.sass').stat().st_size > 0
    roofline = report.read_csv(str(tmp_path / 'roofline.csv'))  # the paper's four blocks, the Transformer first
    assert [r['block'] for r in roofline] == ['transformer', 'mingru', 'minlstm', 'mamba']
    assert roofline[0]['vs_transformer'] == 1 and all(r['gbytes'] > 0 and r['tflops'] > 0.5 for r in roofline)
    # the Triton kernels' instruction issue counts in the recurrent blocks' time, and only there
    assert roofline[0]['kernel_ms'] == 0 and all(r['kernel_ms'] > 0 for r in roofline[1:])
    # every kernel's time per element is at least its instructions', and says what binds it
    assert all(r['cycles_per_element'] >= r['instructions_per_element'] and r['bound'] in ('issue', 'latency')
               for r in rows)
    # the paper's speed setting (64 programs on an H100's 132 SMs) splits time; the gain is T / steps walked
    segments = report.read_csv(str(tmp_path / 'segments.csv'))
    speed = [r for r in segments if r['setting'] == 'speed']
    assert [r['T'] for r in speed] == [512, 4096] and all(r['segments'] >= 4 for r in speed)
    assert all(r['expected_gain'] == round(r['T'] / r['steps_walked'], 1) > 1 for r in speed)
    assert '## Long sequences' in (tmp_path / 'report.md').read_text()
