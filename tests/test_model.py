"""Every block: the parallel (training) path and the step (generation) path compute one function."""
import pytest
import torch
import torch.nn.functional as F

from minrnn import cpu_kernels
from minrnn.blocks import BLOCKS
from model import (MIXERS, CausalDepthwiseConv, SiLUGate, Softplus, CharLM, Mamba, MinGRU, MinGRUCoefficients, MinLSTM,
                   MinLSTMCoefficients, ModelConfig, ShiftedSum, g, log_g)

VARIANTS = [('transformer', {}), ('mingru', {}), ('mingru', {'conv_kernel': 4}), ('minlstm', {}),
            ('minlstm', {'conv_kernel': 3, 'norm': 'rmsnorm'}), ('mamba', {'ff_mult': 0}), ('gru', {}),
            ('lstm', {'conv_kernel': 3})]
IDS = [f'{b}-{"-".join(f"{k}{v}" for k, v in kw.items())}' for b, kw in VARIANTS]
COMPILED = pytest.param('compiled', marks=pytest.mark.skipif(not cpu_kernels.available(),
                                                             reason='cpu_kernels.cpp does not build here'))


def tiny_model(block, seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(block=block, vocab_size=11, block_size=24, n_layer=2, n_embd=16, n_head=2, **overrides)
    return CharLM(config).double().eval()


def test_the_loss_keeps_a_float64_models_precision():
    """Cross-entropy in the logits' dtype (float32 only for half precision): a float64 model's loss is
    float64, which the step-for-step comparison with nanoGPT in float64 needs."""
    model = tiny_model('transformer')
    idx = torch.randint(0, 11, (2, 24), generator=torch.Generator().manual_seed(1))
    logits, loss, _ = model(idx, idx)
    assert loss.dtype == torch.float64
    assert loss.item() == F.cross_entropy(logits.flatten(0, 1), idx.flatten()).item()


def step_logits(model, idx):
    states, out = [None] * len(model.blocks), []
    for pos in range(idx.shape[1]):
        logits, states = model.step(idx[:, pos], states, pos)
        out.append(logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_generation_logits_equal_a_full_forward_of_the_prefix(block, overrides):
    """generate() reads the prompt in parallel, then steps a state (or KV cache); a fresh forward of the
    whole prefix must agree with every prediction it made."""
    model = tiny_model(block, **overrides)
    prompt = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    seen = []
    original_prefill, original_step = model.prefill, model.step

    def recording(method):
        def call(*args):
            logits, states = method(*args)
            seen.append(logits)
            return logits, states
        return call

    model.prefill, model.step = recording(original_prefill), recording(original_step)
    tokens = list(model.generate(prompt, 12, generator=torch.Generator().manual_seed(3)))
    sequence = torch.cat([prompt, torch.stack(tokens, dim=1)], dim=1)
    with torch.no_grad():
        full = model(sequence)[0]
    # seen[i] is the prediction after sequence[:, :5+i]: the prompt's, then each new token's
    assert len(seen) == 13
    torch.testing.assert_close(torch.stack(seen, dim=1), full[:, 4:4 + len(seen)], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_training_step_under_bfloat16_autocast(block, overrides):
    """train.py's dtype=bfloat16: half-precision activations meet the float32 hand-written backwards."""
    model = tiny_model(block, **overrides).float().train()
    assert_bfloat16_training_step(model, torch.randint(0, 11, (2, 24), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize('block', ['gru', 'lstm'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_a_library_rnn_without_half_precision_on_this_cpu_trains_in_float32(block, dtype, monkeypatch, capsys):
    """On a CPU whose oneDNN has no bf16 / fp16 LSTM (no AVX-512) the layer runs in float32 under autocast:
    the path forced here, on any CPU. Its output equals the float32 layer's."""
    from model import LibraryRNN
    monkeypatch.setattr(LibraryRNN, 'half_fails_on_cpu', True)
    model = tiny_model(block, conv_kernel=3).float().train()
    layer, x = model.blocks[0].mixer, torch.randn(2, 9, 16)
    with torch.autocast('cpu', dtype=dtype):
        y, _ = layer.recurrence(x, None)
        loss = model(torch.randint(0, 11, (2, 24)), torch.randint(0, 11, (2, 24)))[1]
    loss.backward()
    assert y.dtype == torch.float32 and torch.equal(y, layer.rnn(x)[0])
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def assert_bfloat16_training_step(model, idx):
    """A forward under bfloat16 autocast on idx's device and a backward: finite loss, float32 gradients."""
    with torch.autocast(idx.device.type, dtype=torch.bfloat16):
        loss = model(idx, idx)[1]
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def test_transformer_generation_past_block_size_slides_the_window():
    """Past its position table (block_size 24), each token is read from the last 24 before it, as
    nanoGPT crops: greedy generation equals the argmax of a forward over that window, token by token."""
    model = tiny_model('transformer')
    prompt = torch.randint(0, 11, (1, 20), generator=torch.Generator().manual_seed(4))
    tokens = torch.stack(list(model.generate(prompt, 30, top_k=1)), dim=1)
    sequence = torch.cat([prompt, tokens], dim=1)
    with torch.no_grad():
        for i in range(20, 50):
            window = sequence[:, max(0, i - 24):i]
            assert torch.equal(model(window)[0][:, -1].argmax(-1), sequence[:, i]), i


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_causality(block, overrides):
    """Changing token t changes no output before t."""
    model = tiny_model(block, **overrides)
    idx = torch.randint(0, 11, (1, 24), generator=torch.Generator().manual_seed(6))
    changed = idx.clone()
    changed[0, 15] = (idx[0, 15] + 1) % 11
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15], b[:, 15])


@pytest.mark.parametrize('cls', [MinGRU, MinLSTM])
def test_plain_and_log_space_coefficients_agree(cls):
    """The paper's equations (sequential scan, step path) and their log form (log scan) are one function."""
    layer = cls(ModelConfig(n_embd=4, expansion=1.0)).double()
    pre = torch.cat([torch.linspace(-30, 30, 241, dtype=torch.float64),
                     torch.randn(239, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 3])
    gates = pre[torch.randperm(480, generator=torch.Generator().manual_seed(10))].view(1, -1, 1)
    gates = gates.expand(1, 480, 4 * cls.n_projections).contiguous()
    for plain, log in zip(layer.coefficients(gates), layer.log_coefficients(gates)):
        # 1e-8: F.softplus is linear above 20, dropping a log(1 + e^-20) = 2e-9 term.
        torch.testing.assert_close(log.exp(), plain, rtol=1e-8, atol=0)


@pytest.mark.parametrize('function, n_projections', [(MinGRUCoefficients, 2), (MinLSTMCoefficients, 3)])
def test_hand_written_coefficient_derivatives_pass_gradcheck(function, n_projections):
    """Against finite differences, across the gates' range (|k| up to 8, where g switches branch at 0)."""
    gates = torch.randn(2, 5, 3 * n_projections, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) * 4
    assert torch.autograd.gradcheck(function.apply, (gates.requires_grad_(),))


@pytest.mark.parametrize('T', [1, 2, 3, 9])
@pytest.mark.parametrize('silu', [False, True])
def test_hand_written_conv_derivative_passes_gradcheck(T, silu):
    """Including sequences shorter than the kernel (4), where some shifts fall off the start; with
    the SiLU that Mamba applies after it (recomputed in backward)."""
    conv = CausalDepthwiseConv(3, 4).double()
    x = torch.randn(2, T, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ShiftedSum.apply(*a, silu), (x, conv.weight, conv.bias))


def test_mamba_gate_and_softplus_derivatives_pass_gradcheck():
    """SiLUGate and Softplus, which save less than autograd would; softplus across its range."""
    g = torch.Generator().manual_seed(12)
    y, z = (torch.randn(2, 5, 3, dtype=torch.float64, generator=g).mul(4).requires_grad_() for _ in range(2))
    assert torch.autograd.gradcheck(SiLUGate.apply, (y, z))
    x = (torch.linspace(-30, 30, 61, dtype=torch.float64) + 0.5).requires_grad_()  # 20: F.softplus jumps by 2e-9
    assert torch.autograd.gradcheck(Softplus.apply, (x,))


@pytest.mark.parametrize('cls', [MinGRU, MinLSTM])
@pytest.mark.parametrize('backend', ['sequential', COMPILED])
def test_plain_and_log_backends_give_one_gradient(cls, backend):
    """The hand-written derivatives (sequential, compiled) against autograd through the log form (log)."""
    def gradients(backend):
        torch.manual_seed(12)
        layer = cls(ModelConfig(n_embd=8, expansion=1.5, conv_kernel=3, scan_backend=backend)).double()
        x = torch.randn(2, 33, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(13)) * 3
        x.requires_grad_()
        (layer(x)[0] * torch.linspace(-1, 1, 8, dtype=torch.float64)).sum().backward()
        return [x.grad] + [p.grad for p in layer.parameters()]
    for plain, log in zip(gradients(backend), gradients('log')):
        torch.testing.assert_close(plain, log, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
@pytest.mark.parametrize('function, kind, n_projections', [(MinGRUCoefficients, 'mingru', 2),
                                                           (MinLSTMCoefficients, 'minlstm', 3)])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_compiled_coefficients_equal_the_plain_ones(function, kind, n_projections, dtype):
    """Values and gradients, pre-activations up to +-100 (beyond where exp overflows a float, |k| > 88)."""
    g = torch.Generator().manual_seed(14)
    gates = torch.randn(3, 37, 21 * n_projections, dtype=torch.float64, generator=g) * 8
    gates[0, 0] = torch.linspace(-100, 100, 21 * n_projections, dtype=torch.float64)
    grads = [torch.randn(3, 37, 21, dtype=torch.float64, generator=g) for _ in range(2)]

    def run(fn):
        x = gates.to(dtype).requires_grad_()
        outputs = fn(x)
        return [*outputs, torch.autograd.grad(outputs, x, [r.to(dtype) for r in grads])[0]]
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    for compiled, plain in zip(run(lambda x: cpu_kernels.coefficients(kind, x)), run(function.apply)):
        assert torch.isfinite(compiled).all()
        torch.testing.assert_close(compiled, plain, rtol=tolerance, atol=tolerance)


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
@pytest.mark.parametrize('kind, n_projections', [('mingru', 2), ('minlstm', 3)])
def test_compiled_coefficient_derivatives_pass_gradcheck(kind, n_projections):
    gates = torch.randn(2, 5, 3 * n_projections, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) * 4
    assert torch.autograd.gradcheck(lambda x: cpu_kernels.coefficients(kind, x), (gates.requires_grad_(),))


def test_g_is_the_papers_piecewise_function():
    x = torch.linspace(-20, 20, 401, dtype=torch.float64)
    expected = torch.where(x >= 0, x + 0.5, torch.sigmoid(x))
    torch.testing.assert_close(g(x), expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(log_g(x), expected.log(), rtol=1e-12, atol=0)


def test_every_declared_block_has_a_mixer():
    assert list(MIXERS) == list(BLOCKS)


def test_weight_tying_and_parameter_count():
    """Counted by hand for 2 minGRU layers of width 16 (inner 24, feed-forward 64, no biases), vocabulary 11:
    a layer is norm 16 + gates 16 x 48 + out 24 x 16 + norm 16 + up 16 x 64 + down 64 x 16 = 3,232; with
    the final norm and the 11 x 16 embedding, which the head shares (not counted twice), 6,656."""
    model = tiny_model('mingru')
    assert model.head.weight is model.tok_emb.weight
    assert model.num_params() == 6656 and model.num_params(non_embedding=True) == 6656 - 11 * 16


# ----------------------------------------------------------------------------- Mamba's selective scan

def selective_scan_reference(x, delta, A, B, C, D):
    """Mamba's recurrence one step at a time in float64: h_t = exp(delta A) h + delta B x, y = C.h + D x."""
    batch, T, E = x.shape
    h = torch.zeros(batch, E, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(T):
        dA = torch.exp(delta[:, t, :, None] * A)
        h = dA * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def mamba_inputs(T, seed=0, E=6, N=4, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, E, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(torch.randn(batch, T, E, generator=g, dtype=torch.float64))
    B, C = (torch.randn(batch, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    return x, delta, B, C


def mamba_layer(backend, chunk_elems=1 << 26, E=6, N=4):
    config = ModelConfig(block='mamba', n_embd=E // 2, d_state=N, scan_backend=backend, scan_chunk_elems=chunk_elems)
    layer = Mamba(config).double()
    with torch.no_grad():
        layer.A_log.add_(torch.randn_like(layer.A_log) * 0.3)
        layer.D.add_(torch.randn_like(layer.D))
    return layer


@pytest.mark.parametrize('backend', ['log', 'sequential', COMPILED])
@pytest.mark.parametrize('chunk_elems', [1 << 26, 2 * 64 * 4], ids=['whole', 'chunked'])
def test_selective_scan_matches_the_per_step_reference(backend, chunk_elems):
    layer = mamba_layer(backend, chunk_elems)
    inputs = [t.requires_grad_() for t in mamba_inputs(64)]
    y, _ = layer.selective_scan(*inputs)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [*inputs, layer.A_log, layer.D])

    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    A_log, D = layer.A_log.detach().clone().requires_grad_(), layer.D.detach().clone().requires_grad_()
    y_ref = selective_scan_reference(*ref_inputs[:2], -A_log.exp(), *ref_inputs[2:], D)
    ref_grads = torch.autograd.grad((y_ref * weights).sum(), [*ref_inputs, A_log, D])

    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('backend', ['log', 'sequential', COMPILED])
@pytest.mark.parametrize('T', [1024, pytest.param(4096, marks=pytest.mark.slow)])
def test_selective_scan_finite_with_delta_at_its_extremes(backend, T):
    layer = mamba_layer(backend).float()
    x, delta, B, C = (t.float() for t in mamba_inputs(T, seed=7))
    extremes = torch.tensor([1e-6, 1e3])[torch.randint(0, 2, delta.shape, generator=torch.Generator().manual_seed(8))]
    inputs = [t.requires_grad_() for t in (x * 30, extremes, B * 30, C)]
    y, _ = layer.selective_scan(*inputs)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_fused_softplus_at_extreme_pre_activations(dtype):
    """delta's pre-activation far past softplus's threshold (20) either way: the C++ kernel's delta and
    its derivative are F.softplus's (the input itself and 1 above the threshold), finite everywhere."""
    g = torch.Generator().manual_seed(3)
    x, B, C, z = (torch.randn(2, 9, width, generator=g, dtype=dtype) for width in (5, 3, 3, 5))
    pre = torch.tensor([-1000., -30., 0., 30., 1000.], dtype=dtype)[torch.randint(0, 5, (2, 9, 5), generator=g)]
    A, D = -torch.rand(5, 3, generator=g, dtype=dtype) - 0.5, torch.randn(5, generator=g, dtype=dtype)

    def run(fused):
        leaves = [t.clone().requires_grad_() for t in (x, pre, B, C, z)]
        x_, pre_, B_, C_, z_ = leaves
        if fused:
            y, last = cpu_kernels.selective_scan(x_, pre_, A, B_, C_, D, delta_bias=torch.zeros(5, dtype=dtype), z=z_)
        else:
            y, last = cpu_kernels.selective_scan(x_, F.softplus(pre_), A, B_, C_, D)
            y = y * F.silu(z_)
        (y.sum() + last.sum()).backward()
        return [y, last] + [t.grad for t in leaves]
    for fused, plain in zip(run(True), run(False)):
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused, plain, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)


# ----------------------------------------------------------------------------- carried state

@pytest.mark.parametrize('backend', ['log', COMPILED])
def test_the_gradient_through_mambas_last_state_is_the_same_on_every_path(backend):
    """A later chunk's loss reaches back through the carried state: dL/d(last state) flows into every
    input, on the fused C++ path as on the plain one (float64, relative to the largest gradient)."""
    def gradients(backend):
        torch.manual_seed(0)
        layer = mamba_layer(backend)
        inputs = [t.requires_grad_() for t in mamba_inputs(70, seed=5)]
        h0 = torch.randn(2, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).requires_grad_()
        y, last = layer.selective_scan(*inputs, h0)
        g = torch.Generator().manual_seed(7)
        loss = (y * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum() + \
            (last * torch.randn(last.shape, generator=g, dtype=torch.float64)).sum()
        return torch.autograd.grad(loss, [*inputs, h0, layer.A_log, layer.D])
    for got, expected in zip(gradients(backend), gradients('sequential')):
        assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()


def chunked_logits(model, idx, lengths):
    """The parallel path over idx cut into chunks of the given lengths, the state carried across."""
    out, states, start = [], None, 0
    for n in lengths:
        logits, _, states = model(idx[:, start:start + n], states=states)
        out.append(logits)
        start += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
@pytest.mark.parametrize('backend', ['log', 'sequential', COMPILED])
def test_parallel_step_and_chunked_paths_agree(block, overrides, backend):
    """One parallel pass, the step path, and parallel chunks with the state carried (chunks that do
    not divide the sequence, one of them shorter than the conv window) compute one function."""
    model = tiny_model(block, scan_backend=backend, **overrides)
    idx = torch.randint(0, 11, (3, 24), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        whole = model(idx)[0]
        stepped = step_logits(model, idx)
        chunked = chunked_logits(model, idx, [5, 2, 1, 9, 7])
    torch.testing.assert_close(stepped, whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_the_parallel_state_is_the_step_state(block, overrides):
    """What forward returns after a prefix is what the step path holds after it, conv window included."""
    model = tiny_model(block, **overrides)
    idx = torch.randint(0, 11, (2, 10), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _, _, parallel = model(idx)
        stepped = [None] * len(model.blocks)
        for pos in range(idx.shape[1]):
            _, stepped = model.step(idx[:, pos], stepped, pos)
    for a, b in zip(parallel, stepped):
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_prefill_then_steps_samples_what_steps_alone_sample(block, overrides):
    model = tiny_model(block, **overrides)
    prompt = torch.randint(0, 11, (2, 17), generator=torch.Generator().manual_seed(9))

    def stepping_only_prefill(idx, chunk=None):  # the step path over the prompt, as generation once did
        states = [None] * len(model.blocks)
        for pos in range(idx.shape[1]):
            logits, states = model.step(idx[:, pos], states, pos)
        return logits, states
    sample = lambda: [t.tolist() for t in model.generate(prompt, 30, generator=torch.Generator().manual_seed(10))]
    prefilled = sample()
    model.prefill = stepping_only_prefill
    assert sample() == prefilled


# ----------------------------------------------------------------------------- the fused selective scan

@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize('T', [1, 7, 64, 300])
def test_fused_selective_scan_equals_the_plain_one(dtype, tolerance, T):
    """cpu_kernels.selective_scan against Mamba.scan_channels on the sequential scan: outputs, last
    state and every gradient, from a given h0, relative to each tensor's largest value."""
    def run(backend):
        torch.manual_seed(0)  # mamba_layer perturbs A_log and D at random: the same for both
        layer = mamba_layer(backend, E=8, N=5).to(dtype)
        inputs = [t.to(dtype).requires_grad_() for t in mamba_inputs(T, seed=T, E=8, N=5)]
        h0 = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(3), dtype=dtype, requires_grad=True)
        y, last = layer.selective_scan(*inputs, h0)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
        grads = torch.autograd.grad((y * weights).sum(), [*inputs, h0, layer.A_log, layer.D])
        return [y, last, *grads]
    for fused, plain in zip(run('compiled'), run('sequential')):
        scale = plain.abs().max().item()
        torch.testing.assert_close(fused, plain, rtol=0, atol=tolerance * max(scale, 1e-30))


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
def test_fused_selective_scan_gradcheck():
    g = torch.Generator().manual_seed(5)
    x, delta, B, C = (t.requires_grad_() for t in mamba_inputs(19, seed=5, E=3, N=4))
    A = (-torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.1).requires_grad_()
    D = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: cpu_kernels.selective_scan(*a)[0], (x, delta, A, B, C, D, h0))


# ----------------------------------------------------------------------------- the registry's configs

@pytest.mark.parametrize('scale', ['cpu', 'paper'])
def test_every_block_has_the_transformers_parameter_budget_at_each_scale(scale):
    """The comparison is at one parameter count: every block's config file within 3% of the Transformer's."""
    from minrnn.settings import configure
    counts = {}
    for block, spec in BLOCKS.items():
        config = configure([spec.configs[scale]])
        counts[block] = CharLM(ModelConfig.from_dict({**config, 'vocab_size': 65})).num_params()
    for block, count in counts.items():
        assert abs(count / counts['transformer'] - 1) < 0.03, (block, count, counts['transformer'])


# ----------------------------------------------------------------------------- torch.compile through the kernels

@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
def test_the_compiled_kernels_are_custom_operators_that_pass_opcheck():
    """Fake (shape-only) implementations, registered derivatives and schemas, checked by torch.library."""
    g = torch.Generator().manual_seed(20)
    a, b, h0 = torch.rand(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g), torch.randn(2, 5, generator=g)
    gates = torch.randn(2, 7, 10, generator=g)
    x, delta = torch.randn(2, 40, 5, generator=g), torch.rand(2, 40, 5, generator=g)
    A, B, C, D = -torch.rand(5, 3, generator=g), torch.randn(2, 40, 3, generator=g), torch.randn(2, 40, 3, generator=g), torch.randn(5, generator=g)
    cases = [(cpu_kernels.scan, (a, b, h0)), (cpu_kernels.scan, (a, b, None)),
             (cpu_kernels.gate_coefficients, ('mingru', gates)),
             (cpu_kernels.gate_coefficients, ('minlstm', torch.randn(2, 7, 15, generator=g))),
             (cpu_kernels.selective_scan_op, (x, delta, A, B, C, D, torch.randn(2, 5, 3, generator=g), None, None)),
             (cpu_kernels.selective_scan_op, (x, delta, A, B, C, D, None, torch.randn(5, generator=g),
                                              torch.randn(2, 40, 5, generator=g))),
             (cpu_kernels.causal_conv, (x, torch.randn(4, 5, generator=g), torch.randn(5, generator=g), True))]
    for op, args in cases:
        args = tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in args)
        torch.library.opcheck(op, args, test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
@pytest.mark.parametrize('block, overrides', [('mingru', {'conv_kernel': 4}), ('minlstm', {}), ('mamba', {'ff_mult': 0})])
def test_torch_compile_traces_a_whole_model_through_the_kernels(block, overrides):
    """fullgraph=True: no graph break anywhere, the C++ kernels included; the same loss and gradients."""
    model = tiny_model(block, scan_backend='compiled', **overrides).float().train()
    assert_compiled_equals_eager(model, torch.randint(0, 11, (2, 24), generator=torch.Generator().manual_seed(21)))


def assert_compiled_equals_eager(model, idx):
    """torch.compile(fullgraph=True: no graph break anywhere) gives the eager loss and gradients."""
    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn(idx, idx)[1]
        loss.backward()
        return [loss] + [p.grad.clone() for p in model.parameters()]
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    for got, expected in zip(loss_and_grads(compiled), loss_and_grads(model)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


class TanhCandidateMinGRU(MinGRU):
    """minGRU with h~ = tanh(k_h): other math under minGRU's name, as a user extending the family writes it."""

    def coefficients(self, gates):
        k_z, k_h = gates.chunk(2, dim=-1)
        z = torch.sigmoid(k_z)
        return 1 - z, z * torch.tanh(k_h)


@pytest.mark.parametrize('backend', ['auto', 'log', 'sequential', COMPILED])
def test_a_subclass_that_changes_the_math_runs_its_own_math(backend):
    """On every backend its parallel path equals its own step path: no fused minGRU kernel (which
    computes g, not tanh) and no inherited log-space coefficients."""
    torch.manual_seed(0)
    layer = TanhCandidateMinGRU(ModelConfig(block='mingru', n_embd=8, expansion=1.0, scan_backend=backend)).double()
    assert layer.kernels.fused is None and not layer.has_own_log_space
    assert_parallel_path_equals_step_path(layer, torch.randn(2, 9, 8, dtype=torch.float64))


def assert_parallel_path_equals_step_path(layer, x):
    """A mixer's forward over x (batch, T, width) equals its step() taken T times."""
    parallel, _ = layer(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(parallel, torch.stack(steps, dim=1), rtol=1e-9, atol=1e-12)


def test_the_paper_blocks_use_their_fused_kernels():
    for cls, kernel in ((MinGRU, 'mingru'), (MinLSTM, 'minlstm'), (Mamba, 'selective')):
        assert cls(ModelConfig(block='mamba', n_embd=8, d_state=2)).kernels.fused == kernel


def test_a_subclass_naming_a_kernel_that_does_not_exist_is_refused_when_built():
    class MyGRU(MinGRU):
        fused_kernel = 'mygru'
    with pytest.raises(ValueError, match="no fused kernel 'mygru'"):
        MyGRU(ModelConfig(n_embd=8))


COMPILE_FIRST = """
import sys, torch
sys.path.insert(0, '.')
from minrnn.blocks import BLOCKS
from model import MIXERS, CharLM, LibraryRNN, ModelConfig
for block in BLOCKS:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(block=block, vocab_size=11, block_size=16, n_layer=1, n_embd=16, n_head=2,
                               **({'conv_kernel': 3} if block in ('mingru', 'minlstm') else {})))
    idx = torch.randint(0, 11, (2, 16))
    # torch.nn.GRU / LSTM are a graph break in torch itself (dynamo: 'Attempted to wrap RNN, GRU, or LSTM')
    whole = not issubclass(MIXERS[block], LibraryRNN)
    loss = torch.compile(model, fullgraph=whole, backend='aot_eager')(idx, idx)[1]
    loss.backward()
    print(block, 'compiled', flush=True)
"""


def test_torch_compile_works_as_the_first_call_in_a_fresh_process():
    """No kernel is chosen, loaded or built inside forward, so fullgraph=True traces every block on
    'auto' before anything ran it eagerly (it once met the C++ build's get_cpu_capability()); the full
    GRU and LSTM compile around torch's RNN layers, which dynamo does not trace."""
    from conftest import run_script
    result = run_script('-c', COMPILE_FIRST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(BLOCKS)
