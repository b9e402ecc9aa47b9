"""The shared scan against a float64 loop that states the recurrence h_t = a_t h_{t-1} + b_t plainly."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from minrnn import cpu_kernels
from minrnn.scan import LOG_CHUNK, Kernels, linear_scan, log_scan, resolve_backend

# 'compiled' is tested wherever it builds; test_compiled_kernels_build_where_there_is_a_compiler makes a
# failed build visible where it should have worked.
COMPILED = pytest.param('compiled', marks=pytest.mark.skipif(not cpu_kernels.available(),
                                                             reason='cpu_kernels.cpp does not build here'))
BACKENDS = ['log', 'sequential', COMPILED]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def reference(log_a, b, h0=None):
    a, b = log_a.double().exp(), b.double()
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.double()
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def coefficients(T, dtype, signed, seed=0, batch=3, channels=5):
    """Gate-like log a (as minGRU makes it) and b either positive (given as log b) or of any sign."""
    g = torch.Generator().manual_seed(seed)
    log_a = -F.softplus(torch.randn(batch, T, channels, generator=g, dtype=torch.float64))
    b = torch.randn(batch, T, channels, generator=g, dtype=torch.float64)
    h0 = torch.rand(batch, channels, generator=g, dtype=torch.float64) + 0.1
    if not signed:
        b = b.exp()
    else:
        h0 = h0 - 0.6  # either sign
    return log_a.to(dtype), b.to(dtype), h0.to(dtype)


def scan(backend, log_a, b, h0, signed):
    if signed:
        return linear_scan(log_a=log_a, b=b, h0=h0, backend=backend)
    return linear_scan(log_a=log_a, log_b=b.log(), h0=h0, backend=backend)


def assert_close(actual, expected, tol):
    """Relative error against max(|expected|, 1): relative for large values, absolute for those that
    pass near zero (a signed h crossing zero keeps the rounding of its O(1) terms)."""
    rel = ((actual.double() - expected).abs() / expected.abs().clamp_min(1.0)).max().item()
    assert rel < tol, f'relative error {rel:.2e} >= {tol:.0e}'


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('T', [1, 2, 7, 64, 1024, pytest.param(4096, marks=pytest.mark.slow)])
@pytest.mark.parametrize('with_h0', [False, True])
@pytest.mark.parametrize('signed', [False, True])
def test_values_match_the_loop(backend, dtype, T, with_h0, signed):
    log_a, b, h0 = coefficients(T, dtype, signed)
    h0 = h0 if with_h0 else None
    assert_close(scan(backend, log_a, b, h0, signed), reference(log_a, b, h0), TOLERANCE[dtype])


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('T', [1, 7, 64, 1024])
@pytest.mark.parametrize('signed', [False, True])
def test_gradients_match_the_loop(backend, dtype, T, signed):
    """Gradients with respect to log a, b and h0 of a random projection of h."""
    log_a, b, h0 = coefficients(T, dtype, signed, seed=1)
    weights = torch.randn(b.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def grads(fn, *inputs):
        inputs = [x.detach().clone().requires_grad_() for x in inputs]
        (fn(*inputs).double() * weights).sum().backward()
        return [x.grad for x in inputs]

    ours = grads(lambda la, bb, hh: scan(backend, la, bb, hh, signed), log_a, b, h0)
    ref = grads(reference, log_a.double(), b.double(), h0.double())
    for g, r in zip(ours, ref):
        assert_close(g, r, TOLERANCE[dtype] * 10)  # a sum over T terms: allow one more digit


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('signed', [False, True])
def test_gradcheck(backend, signed):
    log_a, b, h0 = coefficients(6, torch.float64, signed, batch=2, channels=3)
    inputs = [x.clone().requires_grad_() for x in (log_a, b, h0)]
    assert torch.autograd.gradcheck(lambda la, bb, hh: scan(backend, la, bb, hh, signed), inputs)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('T', [1024, pytest.param(4096, marks=pytest.mark.slow)])
def test_extreme_gates_stay_finite(backend, T):
    """Pre-activations of +-30 (gates saturated to 1e-13 or 1 - 1e-13) in a minGRU's log form."""
    g = torch.Generator().manual_seed(3)
    k_z = (torch.randint(0, 2, (2, T, 8), generator=g) * 60 - 30).float().requires_grad_()
    k_h = (torch.randint(0, 2, (2, T, 8), generator=g) * 60 - 30).float().requires_grad_()
    log_h_tilde = torch.where(k_h >= 0, (F.relu(k_h) + 0.5).log(), -F.softplus(-k_h))
    h = linear_scan(log_a=-F.softplus(k_z), log_b=-F.softplus(-k_z) + log_h_tilde, backend=backend)
    h.sum().backward()
    assert torch.isfinite(h).all() and torch.isfinite(k_z.grad).all() and torch.isfinite(k_h.grad).all()


@pytest.mark.parametrize('backend', BACKENDS)
def test_gradients_of_tiny_a_given_as_values(backend):
    """a down to 1e-30 given as values: dL/da = g_t h_{t-1} is of order one, and every backend gives it
    to float64's precision (through log a, the log scan's error grew as 1e-16 / a)."""
    g = torch.Generator().manual_seed(4)
    a = 10 ** -(torch.rand(2, 40, 3, generator=g, dtype=torch.float64) * 30)
    b, h0, weights = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((2, 40, 3), (2, 3), (2, 40, 3)))

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (a, b, h0)]
        return torch.autograd.grad((fn(*leaves) * weights).sum(), leaves)
    ours = grads(lambda a_, b_, h0_: linear_scan(a_, b_, h0=h0_, backend=backend))
    expected = grads(loop)
    for got, want in zip(ours, expected):
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-12


def loop(a, b, h0):
    """h_t = a_t h_{t-1} + b_t step by step, differentiable by autograd (no log anywhere)."""
    h, out = h0, []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="'fast'"):
        linear_scan(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), backend='fast')


@pytest.mark.parametrize('backend', BACKENDS)
def test_values_and_logs_are_interchangeable(backend):
    log_a, b, h0 = coefficients(50, torch.float64, signed=False)
    expected = reference(log_a, b, h0)
    for kwargs in ({'a': log_a.exp(), 'b': b}, {'log_a': log_a, 'log_b': b.log()}, {'a': log_a.exp(), 'log_b': b.log()}):
        assert_close(linear_scan(**kwargs, h0=h0, backend=backend), expected, 1e-10)


def test_compiled_kernels_build_where_there_is_a_compiler():
    """requirements.txt installs ninja; with a C++ compiler on the PATH the build must succeed."""
    if shutil.which('c++') is None and shutil.which('g++') is None:
        pytest.skip('no C++ compiler here')
    cpu_kernels.load()  # raises with the compiler's message if the build fails


def test_auto_falls_back_to_sequential_when_the_build_fails(monkeypatch):
    monkeypatch.setattr(cpu_kernels, '_build', {'error': 'RuntimeError: Ninja is required'})
    with pytest.warns(UserWarning, match="pip install ninja.*'auto' uses 'sequential'"):
        assert resolve_backend('auto', 'cpu') == 'sequential'
    with pytest.raises(RuntimeError, match="Ninja is required.*or set scan_backend='sequential'"):
        linear_scan(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), backend='compiled')


@pytest.mark.skipif(not cpu_kernels.available(), reason='cpu_kernels.cpp does not build here')
def test_compiled_backend_names_what_it_takes():
    with pytest.raises(ValueError, match="torch.float16"):
        linear_scan(torch.ones(1, 2, 3, dtype=torch.float16), torch.zeros(1, 2, 3, dtype=torch.float16),
                    backend='compiled')


@pytest.mark.parametrize('form', ['log_b', 'signed b'])
def test_float32_log_scan_error_at_4096_steps(form):
    """The log backend as it runs on a GPU (float32, in pieces of LOG_CHUNK steps) against a float64
    loop, from h0: within 1e-5 of the largest |h| (measured: about 6e-6 and 7e-6). One piece over the
    whole sequence is 30x worse (about 2e-4): the cumsum of log a loses digits."""
    g = torch.Generator().manual_seed(0)
    T = 4096
    log_a = -torch.nn.functional.softplus(torch.randn(2, T, 64, generator=g, dtype=torch.float64))
    b = torch.randn(2, T, 64, generator=g, dtype=torch.float64)
    b = b.abs() * 0.5 if form == 'log_b' else b
    h = torch.rand(2, 64, generator=g, dtype=torch.float64) + 0.1
    h0, expected = h, []
    for t in range(T):
        h = log_a[:, t].exp() * h + b[:, t]
        expected.append(h)
    expected = torch.stack(expected, dim=1)
    given = {'log_b': b.float().log()} if form == 'log_b' else {'b': b.float()}
    errors = {chunk: ((log_scan(log_a.float(), h0=h0.float(), dtype=torch.float32, chunk=chunk, **given).double()
                       - expected).abs().max() / expected.abs().max()).item() for chunk in (LOG_CHUNK, T)}
    assert errors[LOG_CHUNK] < 1e-5 and errors[T] > 1e-4, errors


def test_a_machine_with_a_gpu_builds_no_cpu_kernels_for_its_layers(monkeypatch):
    """A layer resolves the backend of the device it will run on: with CUDA there, the C++ build (about
    a minute on a fresh machine) waits until a CPU run asks for it."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(cpu_kernels, 'available', lambda: pytest.fail('the C++ kernels were built'))
    kernels = Kernels('auto', 'mingru')
    assert set(kernels.backends) == {'cuda'}
    monkeypatch.setattr(cpu_kernels, 'available', lambda: True)
    assert kernels.backend(torch.device('cpu')) == 'compiled'  # resolved when a CPU tensor comes
