"""Every block on a CUDA GPU: forward and backward in float32 and under bfloat16 autocast, the parallel
path equal to the step path, every CUDA scan backend equal to a float64 loop, torch.compile equal to
eager. Skipped where CUDA is absent; a GPU user checks an install with
    python -m pytest tests/test_cuda.py
"""
import pytest
import torch

from model import CharLM, ModelConfig
from minrnn.scan import linear_scan, resolve_backend
from test_model import IDS, VARIANTS, assert_bfloat16_training_step, step_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU here')
CUDA_BACKENDS = ['log', 'sequential'] + (['triton'] if resolve_backend('auto', 'cuda') == 'triton' else [])


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
    """TF32 would round matrix products to 10 bits: the comparisons below are of float32 arithmetic."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def cuda_model(block, backend='auto', dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    config = ModelConfig(block=block, vocab_size=11, block_size=32, n_layer=2, n_embd=32, n_head=2,
                         scan_backend=backend, **overrides)
    return CharLM(config).to('cuda', dtype)


def tokens(batch=3, T=32, seed=1):
    return torch.randint(0, 11, (batch, T), generator=torch.Generator().manual_seed(seed)).cuda()


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
@pytest.mark.parametrize('backend', CUDA_BACKENDS)
def test_forward_backward_float32_and_parallel_equals_step(block, overrides, backend):
    model = cuda_model(block, backend, **overrides)
    idx = tokens()
    logits, loss, _ = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(step_logits(model.eval(), idx), model(idx)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_training_step_under_bfloat16_autocast(block, overrides):
    assert_bfloat16_training_step(cuda_model(block, **overrides), tokens())


@pytest.mark.parametrize('backend', CUDA_BACKENDS)
@pytest.mark.parametrize('T', [1, 7, 64, 300, 4096])
def test_every_cuda_scan_backend_equals_a_float64_loop(backend, T):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(2, T, 5, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b = torch.randn(2, T, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    expected, h = [], h0
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    expected = torch.stack(expected, dim=1)
    args = [t.float().cuda().requires_grad_() for t in (a, b, h0)]
    got = linear_scan(args[0], args[1], h0=args[2], backend=backend)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double().cpu(), expected, rtol=0, atol=1e-5 * scale)
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args)


@pytest.mark.parametrize('block, overrides', VARIANTS, ids=IDS)
def test_torch_compile_equals_eager(block, overrides):
    model = cuda_model(block, **overrides)
    idx = tokens()
    eager_loss = model(idx, idx)[1]
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled_loss = torch.compile(model)(idx, idx)[1]
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-4)
    for compiled, eager in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
