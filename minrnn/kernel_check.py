"""
The fast kernels checked where they run, at the shapes they run at: each recurrent block of the
paper, its layer on 'auto' (Triton on a GPU, C++ on a CPU) against the same layer on the plain path
('sequential', PyTorch ops only), forward and backward, in float32 and under bfloat16 autocast.
reproduce_gpu.py runs it before it trains on a GPU; the tests hold the kernels to the plain paths
over many more shapes (tests/test_kernel_cases.py).
"""
import time

import torch

from minrnn import settings
from minrnn.blocks import BLOCKS
from model import MIXERS, ModelConfig

# Relative to the largest reference value. bfloat16 activations carry 8 bits: where the kernels read
# them and the plain path widens them, the two round differently.
TOLERANCE = {'float32': 1e-4, 'bfloat16': 5e-2}


def layer_pair(block, overrides):
    """The block's paper-scale layer on 'auto' and on 'sequential', with the same weights."""
    values = settings.configure([BLOCKS[block].configs['paper'], *overrides])
    torch.manual_seed(0)
    fast = MIXERS[block](ModelConfig.from_dict({**values, 'scan_backend': 'auto'}))
    plain = MIXERS[block](ModelConfig.from_dict({**values, 'scan_backend': 'sequential'}))
    plain.load_state_dict(fast.state_dict())
    return fast, plain, values


def relative_error(got, expected):
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()


def check(block, dtype, device, overrides=(), batch=None):
    """One row: the largest relative error of the output and of any parameter's or the input's
    gradient, 'auto' against 'sequential', and the seconds it took (the first call compiles)."""
    start = time.perf_counter()
    fast, plain, values = layer_pair(block, overrides)
    fast, plain = fast.to(device).eval(), plain.to(device).eval()  # no dropout: the two must see the same input
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch or values['batch_size'], values['block_size'], values['n_embd'], generator=generator)
    weights = torch.randn(x.shape, generator=generator).to(device)
    results = []
    for layer in (fast, plain):
        inputs = x.to(device).requires_grad_()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
            y, _ = layer(inputs)
        (y.float() * weights).sum().backward()
        results.append((y.detach(), [inputs.grad] + [p.grad for p in layer.parameters()]))
    (y_fast, grads_fast), (y_plain, grads_plain) = results
    row = {'block': block, 'dtype': dtype, 'device': str(device), 'backend': fast.kernels.backend(x.to(device).device),
           'batch': x.shape[0], 'T': x.shape[1], 'width': x.shape[2],
           'output_error': relative_error(y_fast, y_plain),
           'gradient_error': max(relative_error(g, e) for g, e in zip(grads_fast, grads_plain) if e is not None),
           'seconds': round(time.perf_counter() - start, 1)}
    row['ok'] = max(row['output_error'], row['gradient_error']) < TOLERANCE[dtype]
    return row


def recurrent_paper_blocks():
    return [block for block, spec in BLOCKS.items() if spec.paper and spec.recurrent]
