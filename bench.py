"""
Speed and memory of every block, measured side by side in one run (never as timed tests):

    python bench.py                                   # everything -> results/speed/<device>/
    python bench.py --quick                           # a smoke run (-> out/bench-quick/), well under a minute
    python bench.py --parts train --lengths 64 256 512 1024 2048    # the layer comparison only
    python bench.py --parts recipe                                     # ms per training iteration
    python bench.py --static                          # the Triton kernels' cost on GPUs, without one

1. train: one layer's training step (forward + backward, batch 64, width 128) against sequence
   length T, for every block of minrnn/blocks.py (its mixer at recurrent width 128; minGRU, minLSTM
   and Mamba with each scan backend; the full GRU / LSTM as the library runs them, cuDNN on a GPU,
   oneDNN on a CPU: the strongest sequential baseline a user has), and GRU / LSTM cells stepped in a
   Python loop with backpropagation through time (the paper's sequential baselines). Median of
   repeats after a warm-up, the variants timed in interleaved rounds at each T. Memory of the same
   step: on CUDA the peak allocated; on a CPU the bytes of the tensors autograd saves for backward
   (activations and the weights they need, each storage counted once), which is what grows with T.
2. recipe: one whole training iteration (forward, backward, clipping, AdamW) of each block's CPU
   recipe model (its config file for the 'cpu' scale in minrnn/blocks.py: batch 12, context 64;
   --recipe_scale paper: the paper-scale ones, batch 64, context 256), in interleaved rounds so that
   every block sees the same machine; the median, and the ratio to the first block (the Transformer).
3. generate: time per token of each block of the CPU recipe (its 'cpu' config, untrained weights:
   speed does not depend on them) at positions 10, 100, 1000, 10000, batch 1, stepping its state:
   the recurrent blocks carry a fixed-size state, the Transformer a key/value cache that grows.

Writes train.csv, recipe.csv, generate.csv, ratios.csv, env.json and log-log plots (train.png,
memory.png, generate.png) into the output folder, and prints the ratios the paper quotes.

--static measures nothing: it compiles every Triton kernel (gpu_kernels.launches) for an H100 (sm_90)
and an A100 (sm_80) with the assembler triton bundles, as a paper-scale launch specialises it, and
writes per kernel and GPU the registers, spilled bytes, shared memory and CTAs per SM that ptxas
reports, and, from the machine code (SASS) of the kernel's main loop, instructions, warp shuffles,
barriers, exps and special-function operations per state element and step (kernels.csv and the SASS
it read); and, from the tensor shapes alone, the bytes, FLOPs and H100 roofline time of one training
iteration of each of the paper's blocks at the paper's scale (roofline.csv); both summed up in
report.md, in results/speed/static/ by default.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import contextlib
import functools
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from tqdm import tqdm

from minrnn import devices
from minrnn import report
from minrnn import settings
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.settings import resolve
from minrnn.blocks import BLOCKS
from model import MIXERS, CharLM, ModelConfig
from minrnn.scan import BACKENDS, load_gpu_kernels, resolve_backend

ROOT = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- baselines

class GRULoop(nn.Module):
    """A GRU as the paper's baseline runs it: GRUCell after GRUCell, backpropagation through time."""

    def __init__(self, width):
        super().__init__()
        self.cell = nn.GRUCell(width, width)

    def forward(self, x):
        h, out = x.new_zeros(x.shape[0], self.cell.hidden_size), []
        for x_t in x.unbind(1):  # one backward for all slices (x[:, t] would allocate x's size per step)
            h = self.cell(x_t, h)
            out.append(h)
        return torch.stack(out, dim=1)


class LSTMLoop(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.cell = nn.LSTMCell(width, width)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.cell.hidden_size)
        out = []
        for x_t in x.unbind(1):
            h, c = self.cell(x_t, (h, c))
            out.append(h)
        return torch.stack(out, dim=1)


def scan_backends(device):
    """The scan backends that run on this device: 'compiled' only on a CPU where it builds, 'triton' only
    on CUDA where triton imports ('auto' picks each of them there)."""
    auto = resolve_backend('auto', device)
    return [b for b in BACKENDS if b != 'auto' and (b not in ('compiled', 'triton') or b == auto)]


def layer_variants(width, device):
    """name -> a function making one layer of that kind at this width: every registered block's
    mixer (at its recurrent width = n_embd where it has one), once per scan backend where it reads
    scan_backend; and the paper's baselines, GRU and LSTM cells stepped in a Python loop."""
    def mixer(block, **keys):
        config = ModelConfig(block=block, n_embd=width, n_head=4, expansion=1.0, **keys)
        return lambda: MIXERS[block](config)
    variants = {}
    for block, spec in BLOCKS.items():
        if 'scan_backend' in spec.keys:
            variants.update({f'{spec.display} ({b})': mixer(block, scan_backend=b) for b in scan_backends(device)})
        else:
            variants[spec.display] = mixer(block)
    return {**variants, 'GRU (loop)': lambda: GRULoop(width), 'LSTM (loop)': lambda: LSTMLoop(width)}


# ----------------------------------------------------------------------------- measuring

def synchronize(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def output(layer, x):
    """A layer's output: the mixers of model.py also return their final state, which is not timed."""
    y = layer(x)
    return y[0] if isinstance(y, tuple) else y


def training_step(layer, x):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    output(layer, x).square().mean().backward()


def seconds(fn, device):
    """Wall time of one call of fn, the device synchronised."""
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn, repeats, device):
    """Median time of fn over repeats, after a warm-up call (allocator, kernels, oneDNN primitives)."""
    seconds(fn, device)
    return statistics.median(seconds(fn, device) for _ in range(repeats))


def step_memory_bytes(layer, x, device):
    """CUDA: peak allocated during the step, above what was allocated before it.
    CPU: bytes of the distinct storages autograd saves for backward."""
    if device.startswith('cuda'):
        training_step(layer, x)  # gradients exist afterwards in both runs
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        training_step(layer, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = output(layer, x).square().mean()
    loss.backward()
    return sum(storages.values())


def bench_training(args, device, bar):
    """At each T, every variant's training step is timed in interleaved rounds, so that drift in the
    machine's speed reaches all variants alike; a variant whose step is slow stops earlier
    (2 repeats at least, then only while it stays within seconds_per_point)."""
    rows = []
    variants = layer_variants(args.width, device)
    for T in args.lengths:
        x = torch.randn(args.batch, T, args.width, device=device, requires_grad=True)
        steps, budget, times = {}, {}, {}
        for name, make in variants.items():
            torch.manual_seed(0)
            steps[name] = functools.partial(training_step, make().to(device), x)
            warm_up = seconds(steps[name], device)
            budget[name] = max(2, min(args.repeats, int(args.seconds_per_point / warm_up)))
            times[name] = []
        for round_ in range(args.repeats):
            for name, step in steps.items():
                if round_ < budget[name]:
                    times[name].append(seconds(step, device))
        for name, step in steps.items():
            ms = 1000 * statistics.median(times[name])
            memory = step_memory_bytes(step.args[0], x, device)
            rows.append({'variant': name, 'T': T, 'batch': args.batch, 'width': args.width,
                         'ms': round(ms, 3), 'memory_mb': round(memory / 2 ** 20, 3),
                         'memory_kind': 'cuda_peak' if device.startswith('cuda') else 'saved_for_backward',
                         'repeats': len(times[name])})
            bar.set_postfix_str(f'{name} T={T}: {ms:.1f} ms')
            bar.update(1)
        del steps, x
    return rows


def recipe_model_config(block, max_position, scale='cpu'):
    """The model of the block's config file at this scale and its batch size; a position table (the
    Transformer's) covers max_position."""
    path = os.path.join(ROOT, BLOCKS[block].configs[scale])
    values = resolve(settings.defaults(), [path])  # train.py's defaults, as the config files expect
    config = ModelConfig.from_dict(values)
    config.vocab_size = 65
    if getattr(MIXERS[block], 'needs_positions', False):
        config.block_size = max(config.block_size, max_position + 1)
    return config, values['batch_size']


def bench_recipe(args, device, bar):
    """ms per training iteration of each recipe model (--recipe_scale), measured round-robin, in the
    dtype train.py's dtype='auto' trains in on this device (bfloat16 autocast on a capable GPU)."""
    steps = {}
    dtype = devices.resolve_dtype('auto', device)
    autocast = functools.partial(torch.autocast, devices.kind(device), dtype=getattr(torch, dtype),
                                 enabled=dtype != 'float32')
    for block in BLOCKS:
        torch.manual_seed(0)
        config, batch = recipe_model_config(block, 0, args.recipe_scale)
        model = CharLM(config).to(device)
        optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), devices.kind(device))
        x = torch.randint(0, 65, (batch, config.block_size), device=device)
        forward = torch.compile(model) if args.compile else model

        def step(model=model, forward=forward, optimizer=optimizer, x=x):
            with autocast():
                loss = forward(x, x)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step()
        steps[block] = (step, model.num_params())
    times = {block: [] for block in steps}
    for _ in range(args.recipe_rounds):
        for block, (step, _) in steps.items():
            times[block].append(median_seconds(step, args.recipe_steps, device))
        bar.update(1)
    base = statistics.median(times[next(iter(times))])
    return [{'block': block, 'ms_per_iter': round(1000 * statistics.median(t), 3),
             'vs_transformer': round(statistics.median(t) / base, 3), 'params': steps[block][1],
             'scale': args.recipe_scale, 'dtype': dtype, 'compile': args.compile, 'rounds': args.recipe_rounds,
             'steps_per_round': args.recipe_steps}
            for block, t in times.items()]


@torch.no_grad()
def bench_generation(args, device, bar):
    rows = []
    window = args.window
    for block in BLOCKS:
        torch.manual_seed(0)
        model = CharLM(recipe_model_config(block, max(args.positions) + window)[0]).to(device).eval()
        token = torch.zeros(1, dtype=torch.long, device=device)
        states, times = [None] * len(model.blocks), []
        for pos in range(max(args.positions) + window):
            start = time.perf_counter()
            logits, states = model.step(token, states, pos)
            synchronize(device)
            times.append(time.perf_counter() - start)
            token = logits.argmax(-1)
        for p in args.positions:
            ms = 1000 * statistics.median(times[p:p + window])
            rows.append({'block': block, 'position': p, 'ms_per_token': round(ms, 4),
                         'tokens_per_s': round(1000 / ms, 1), 'params': model.num_params()})
        bar.set_postfix_str(f'{block}: {rows[-1]["ms_per_token"]:.2f} ms/token at {max(args.positions)}')
        bar.update(1)
    return rows


# ----------------------------------------------------------------------------- reporting

# The paper's speed claim: a min RNN's training step against the RNN it simplifies, stepped in a
# loop (its baseline) and as the library runs it (cuDNN / oneDNN). (label, slower, faster, what)
PAPER_RATIOS = [
    ('GRU loop / minGRU', 'GRU (loop)', 'minGRU ({auto})', 'ms'),
    ('LSTM loop / minLSTM', 'LSTM (loop)', 'minLSTM ({auto})', 'ms'),
    ('GRU / minGRU', 'GRU', 'minGRU ({auto})', 'ms'),
    ('LSTM / minLSTM', 'LSTM', 'minLSTM ({auto})', 'ms'),
    ('memory: minGRU / GRU loop', 'minGRU ({auto})', 'GRU (loop)', 'memory_mb'),
    ('memory: minLSTM / LSTM loop', 'minLSTM ({auto})', 'LSTM (loop)', 'memory_mb'),
]


def ratios():
    """The paper's ratios, then for every block from the registry: each other scan backend against
    'auto' (where it reads scan_backend), and its step and memory against the Transformer's."""
    listed = list(PAPER_RATIOS)
    reference = BLOCKS['transformer'].display
    for block, spec in BLOCKS.items():
        name = f'{spec.display} ({{auto}})' if 'scan_backend' in spec.keys else spec.display
        if 'scan_backend' in spec.keys:
            listed += [(f'{spec.display} {b} / auto', f'{spec.display} ({b})', name, 'ms') for b in BACKENDS[1:]]
        if block != 'transformer':
            listed += [(f'{spec.display} / {reference}', name, reference, 'ms'),
                       (f'memory: {spec.display} / {reference}', name, reference, 'memory_mb')]
    return listed


def ratio_rows(train_rows, auto_backend):
    by_key = {(r['variant'], r['T']): r for r in train_rows}
    rows = []
    for T in sorted({r['T'] for r in train_rows}):
        for label, top, bottom, what in ratios():
            top, bottom = top.format(auto=auto_backend), bottom.format(auto=auto_backend)
            if top != bottom and (top, T) in by_key and (bottom, T) in by_key and by_key[(bottom, T)][what] > 0:
                rows.append({'T': T, 'ratio': label, 'numerator': top, 'denominator': bottom,
                             'value': round(by_key[(top, T)][what] / by_key[(bottom, T)][what], 3)})
    return rows


# Colour by block, line style and marker by how it runs: every series of train.png tells apart.
BLOCK_COLOURS = {spec.display: spec.colour for spec in BLOCKS.values()}
BACKEND_STYLES = {'log': ('-', 'o'), 'sequential': ('--', 's'), 'compiled': ('-.', 'D'), 'triton': ('-', '^'),
                  'loop': (':', 'v'), '': ('-', 'o')}


def variant_style(variant):
    """matplotlib keywords for a variant named 'Block (backend)' or 'Block'."""
    block, _, backend = variant.partition(' (')
    linestyle, marker = BACKEND_STYLES.get(backend.rstrip(')'), ('-', 'o'))
    return {'color': BLOCK_COLOURS.get(block, 'tab:gray'), 'linestyle': linestyle, 'marker': marker}


def plot(train_rows, generate_rows, out, device_name):
    plt = report.pyplot()
    for what, ylabel, name in (('ms', 'training step (ms)', 'train'), ('memory_mb', 'memory (MiB)', 'memory')):
        if not train_rows:
            break
        fig, ax = plt.subplots(figsize=(7, 5))
        for variant in dict.fromkeys(r['variant'] for r in train_rows):
            pts = [(r['T'], r[what]) for r in train_rows if r['variant'] == variant]
            ax.plot(*zip(*pts), **variant_style(variant), label=variant)
        ax.set(xscale='log', yscale='log', xlabel='sequence length T', ylabel=ylabel,
               title=f'one layer, fwd+bwd, {device_name}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f'{name}.png'), dpi=120)
        plt.close(fig)
    if generate_rows:
        fig, ax = plt.subplots(figsize=(7, 5))
        for block in dict.fromkeys(r['block'] for r in generate_rows):
            pts = [(r['position'], r['ms_per_token']) for r in generate_rows if r['block'] == block]
            ax.plot(*zip(*pts), marker='o', label=report.display(block), color=report.colour(block))
        ax.set(xscale='log', yscale='log', xlabel='position of the generated token', ylabel='ms per token',
               title=f'generation, batch 1, CPU-recipe models, {device_name}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, 'generate.png'), dpi=120)
        plt.close(fig)


# ----------------------------------------------------------------------------- static cost

GPUS = {90: dict(name='H100 (sm_90)', warps=64, ctas=32, registers=65536, shared=228 * 1024),
        80: dict(name='A100 (sm_80)', warps=64, ctas=32, registers=65536, shared=164 * 1024)}
SASS_LINE = re.compile(r'/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);')


def loop_opcodes(sass, inner_trips=1):
    """The opcodes a kernel issues per pass of its main loop: the longest loop that holds no other
    loop (the body it repeats per tile or step), repeated inner_trips times, and where inner_trips >
    1 the rest of the loop around it once (per-tile work outside a loop over states); the whole
    kernel where it has no loop. A loop is a branch back to an earlier address (not the branch to
    itself that ends every kernel)."""
    code = [(int(address, 16), opcode, operands) for address, opcode, operands in SASS_LINE.findall(sass)]
    loops = []
    for address, opcode, operands in code:
        target = re.search(r'0x([0-9a-f]+)', operands)
        if opcode.startswith('BRA') and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    inside = lambda inner, outer: outer[0] <= inner[0] and inner[1] <= outer[1] and inner != outer
    innermost = [loop for loop in loops if not any(inside(other, loop) for other in loops)]
    if not innermost:
        return [opcode for _, opcode, _ in code]
    start, end = max(innermost, key=lambda loop: loop[1] - loop[0])
    body = [opcode for address, opcode, _ in code if start <= address <= end]
    if inner_trips == 1:
        return body
    outer_start, outer_end = min((loop for loop in loops if inside((start, end), loop)),
                                 key=lambda loop: loop[1] - loop[0])
    around = [opcode for address, opcode, _ in code
              if outer_start <= address <= outer_end and not start <= address <= end]
    return body * inner_trips + around


def occupancy(registers, warps, shared, gpu):
    """CTAs per SM and the share of the SM's warps they keep busy; registers go to warps in units of 256."""
    per_warp = -(-registers * 32 // 256) * 256
    ctas = min(gpu['ctas'], gpu['warps'] // warps, gpu['registers'] // (per_warp * warps),
               gpu['shared'] // shared if shared else gpu['ctas'])
    return ctas, ctas * warps / gpu['warps']


def static_rows(out):
    """One row per kernel and GPU; the SASS goes to out/sass/."""
    kernels = load_gpu_kernels()
    if not kernels.available():
        raise UsageError('--static needs the triton package (pip install triton): it compiles the kernels')
    if kernels.INTERPRETED:
        raise UsageError('--static compiles the kernels, which TRITON_INTERPRET=1 replaces by its interpreter: '
                         'run it without TRITON_INTERPRET')
    os.makedirs(os.path.join(out, 'sass'), exist_ok=True)
    rows = []
    for capability, gpu in GPUS.items():
        for name, launch in kernels.launches().items():
            kernel, options, elements = launch.kernel, launch.options, launch.elements
            with tempfile.TemporaryDirectory() as folder:
                resources, sass, shared = kernels.compile_ahead_of_time(kernel, launch.constants, options, capability,
                                                                        folder, launch.half)
            with open(os.path.join(out, 'sass', f'{name}.sm_{capability}.sass'), 'w') as f:
                f.write(sass)
            registers = int(re.search(r'Used (\d+) registers', resources).group(1))
            ctas, share = occupancy(registers, options['num_warps'], shared, gpu)
            loop = loop_opcodes(sass, launch.inner_trips)
            per_element = lambda prefix: round(sum(op.startswith(prefix) for op in loop) / elements, 2)
            rows.append({'kernel': name, 'gpu': gpu['name'], 'registers': registers,
                         'spilled_bytes': int(re.search(r'(\d+) bytes spill stores', resources).group(1)),
                         'shared_bytes': shared, 'warps': options['num_warps'], 'ctas_per_sm': ctas,
                         'occupancy': round(share, 3), 'loop_instructions': len(loop),
                         'elements_per_loop': elements, 'instructions_per_element': round(len(loop) / elements, 2),
                         'shuffles_per_element': per_element('SHFL'), 'barriers_per_element': per_element('BAR'),
                         'exps_per_element': per_element('MUFU.EX2'), 'mufu_per_element': per_element('MUFU')})
    return rows


# the CPU's fused attention counts as the GPU's; its FLOPs by the same formulas
FLOP_FORMULAS = {**flop_registry,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                     flop_registry[torch.ops.aten._scaled_dot_product_flash_attention],
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
                     flop_registry[torch.ops.aten._scaled_dot_product_flash_attention_backward]}
# NVIDIA's datasheet: HBM3 bytes/s, dense bf16 FLOP/s, SMs, boost clock; each SM issues 4 warp
# instructions a clock (one per scheduler), and its special-function units (MUFU: exp2, rcp, ...) take
# 16 threads' operations a clock (CUDA C++ Programming Guide, throughput for compute capability 9.0)
H100 = dict(name='H100 SXM', bandwidth=3.35e12, bf16=989e12, sms=132, clock=1.98e9, issue=4, sfu=16)
FREE = {'empty', 'empty_like', 'new_empty', 'empty_strided', 'detach', 'lift_fresh', '_unsafe_view'}  # allocate or relabel


def kernel_elements(func, args, out):
    """The Triton kernel an operator of gpu_kernels launches (its name in launches()) and the state
    elements x steps it computes; None for other operators."""
    name = func.overloadpacket.__name__
    if name.startswith('triton_scan'):
        kind, direction = args[0], 'backward' if name.endswith('backward') else 'forward'
        elements = (args[2] if direction == 'backward' else out).numel()  # h
        return f"{'' if kind == 'plain' else kind + '_'}scan_{direction}", elements
    if name.startswith('triton_causal_conv'):
        prefix = 'silu_conv' if args[3] else 'conv'
        return f"{prefix}_{'backward' if name.endswith('backward') else 'forward'}", args[0].numel()
    if name.startswith('triton_selective_scan'):
        return (f"selective_{'backward' if name.endswith('backward') else 'forward'}",
                args[0].numel() * args[2].shape[1])  # x x d_state
    return None


class Traffic(TorchDispatchMode):
    """Per op, the bytes of its tensor arguments and results (each read or written once; views move
    nothing) and its FLOPs (torch.utils.flop_counter's formulas: matmuls and attention), summed with
    the roofline time each implies on a GPU: max(bytes / bandwidth, FLOPs / peak), and for a Triton
    kernel also its instructions at the GPU's issue rate and its MUFU operations at its special-function
    units' rate (`kernels`: name -> static_rows' row, per element, from the kernel's SASS)."""

    def __init__(self, gpu, kernels=None):
        super().__init__()
        self.gpu, self.kernels = gpu, kernels or {}
        self.bytes, self.flops, self.seconds, self.issue_seconds = 0, 0, 0.0, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func.namespace == 'prim' or func.overloadpacket.__name__ in FREE:
            return out
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        moved = sum(t.numel() * t.element_size() for t in tensors)
        formula = FLOP_FORMULAS.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula else 0
        kernel = kernel_elements(func, args, out) if func.namespace == 'minrnn' else None
        issue = 0.0
        if kernel and kernel[0] in self.kernels:
            row, elements = self.kernels[kernel[0]], kernel[1]
            issue = elements * max(row['instructions_per_element'] / (32 * self.gpu['issue']),
                                   row['mufu_per_element'] / self.gpu['sfu']) / (self.gpu['sms'] * self.gpu['clock'])
        self.bytes, self.flops, self.issue_seconds = self.bytes + moved, self.flops + flops, self.issue_seconds + issue
        self.seconds += max(moved / self.gpu['bandwidth'], flops / self.gpu['bf16'], issue)
        return out


@contextlib.contextmanager
def quiet(logger):
    """The logger's warnings hidden: without a GPU, torch warns that it cannot read which tensors a Triton
    kernel writes (it assumes all), which changes no shape and no count."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def roofline_rows(gpu=H100, kernels=None):
    """One training iteration's forward and backward of each of the paper's blocks at its paper-scale
    config, as a GPU runs it: bfloat16 autocast, the recurrent blocks' scans on the 'triton' kernels,
    attention as one fused op. Counted on fake tensors (shapes only), with dropout 0 (a CPU splits it
    into ops that a GPU fuses) and without the optimizer's step. kernels: kernel name -> its static_rows
    row, whose instructions and MUFU operations per element bound the kernels' time too."""
    rows = []
    for block, spec in BLOCKS.items():
        if spec.paper is None:
            continue
        config, batch = recipe_model_config(block, 0, 'paper')
        config.dropout, config.scan_backend = 0.0, 'triton' if spec.recurrent else config.scan_backend
        with FakeTensorMode(), quiet('torch._higher_order_ops.triton_kernel_wrap'):  # see below
            model = CharLM(config)
            idx = torch.zeros(batch, config.block_size, dtype=torch.long)
            traffic = Traffic(gpu, kernels)
            with traffic, torch.autocast('cpu', dtype=torch.bfloat16):
                model(idx, idx)[1].backward()
        rows.append({'block': block, 'gpu': gpu['name'], 'batch': batch, 'T': config.block_size,
                     'gbytes': round(traffic.bytes / 1e9, 2), 'tflops': round(traffic.flops / 1e12, 3),
                     'kernel_issue_ms': round(1000 * traffic.issue_seconds, 2),
                     'roofline_ms': round(1000 * traffic.seconds, 2)})
    base = rows[0]['roofline_ms']  # the registry lists the Transformer first
    for row in rows:
        row['vs_transformer'] = round(row['roofline_ms'] / base, 2)
    return rows


def static_report(args):
    out = args.out or os.path.join('results', 'speed', 'static')
    kernels = static_rows(out)
    roofline = roofline_rows(H100, {r['kernel']: r for r in kernels if r['gpu'].startswith('H100')})
    report.write_csv(os.path.join(out, 'kernels.csv'), kernels)
    report.write_csv(os.path.join(out, 'roofline.csv'), roofline)
    kernel_columns = ['kernel', 'gpu', 'registers', 'spilled_bytes', 'occupancy', 'instructions_per_element',
                      'shuffles_per_element', 'barriers_per_element', 'exps_per_element', 'mufu_per_element']
    roofline_columns = ['block', 'gpu', 'batch', 'T', 'gbytes', 'tflops', 'kernel_issue_ms', 'roofline_ms',
                        'vs_transformer']
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(f'# What the GPU path costs, counted without a GPU (`python bench.py --static`)\n\n'
                f'Counts from compiled code and from tensor shapes, not measurements on a GPU; triton '
                f'{triton_version()}, torch {torch.__version__.split("+")[0]}.\n\n'
                '## The Triton kernels\n\nEach compiled for the GPU named as a paper-scale launch specialises '
                'it (bfloat16 activations, float32 states, pointers and sizes multiples of 16); registers, '
                'spills and occupancy from ptxas; the rest from the SASS (in sass/) of the kernel\'s main loop '
                '(the selective kernels\' loops over states, two states a pass, counted 8 times with the work around '
                'them), per state element (channel x state) and time step. MUFU: the special-function unit\'s '
                'operations (exp2, reciprocal, ...).\n\n')
        f.write(report.markdown_table(kernel_columns, [[str(r[c]) for c in kernel_columns] for r in kernels]))
        f.write('\n## One training iteration at the paper\'s scale\n\nForward and backward of each paper-scale '
                'model (batch 64, T 256) as eager PyTorch runs it on a GPU, op by op: bfloat16 autocast, the '
                'recurrent blocks on the \'triton\' kernels, attention one fused op; dropout 0 and no '
                'optimizer step. Bytes: every op\'s tensor arguments read and results written once (views '
                'free; the operators\' own small tensors, under 1 MB a layer, not counted); FLOPs: matmuls and '
                'attention (torch.utils.flop_counter); a Triton kernel\'s issue time: its state elements x '
                'steps times its instructions per element above at 4 warp instructions per clock per SM, or '
                'times its MUFU operations at 16 a clock per SM where that is longer (132 SMs, 1.98 GHz), a '
                'lower bound on its time; roofline time: the sum over ops of the largest of bytes / 3.35 TB/s, '
                'FLOPs / 989 TFLOP/s and the issue time, from an H100 SXM\'s datasheet figures.\n\n')
        f.write(report.markdown_table(roofline_columns, [[str(r[c]) for c in roofline_columns] for r in roofline]))
    for r in kernels:
        print(f"  {r['kernel']:20s} {r['gpu']:14s} {r['registers']:4d} registers, {r['spilled_bytes']} bytes spilled, "
              f"occupancy {r['occupancy']:.0%}, per element: {r['instructions_per_element']} instructions, "
              f"{r['shuffles_per_element']} shuffles, {r['exps_per_element']} exps")
    for r in roofline:
        print(f"  {report.display(r['block']):12s} {r['gbytes']:7.2f} GB {r['tflops']:6.3f} TFLOP "
              f"{r['kernel_issue_ms']:6.2f} ms of kernel issue, roofline "
              f"{r['roofline_ms']:6.2f} ms on an {r['gpu']}, {r['vs_transformer']:.2f}x the Transformer's")
    print(f'wrote {out}/')
    return out


def triton_version():
    import triton
    return triton.__version__


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--parts', nargs='+', default=['train', 'recipe', 'generate'],
                        choices=['train', 'recipe', 'generate'])
    parser.add_argument('--lengths', nargs='+', type=int, default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument('--positions', nargs='+', type=int, default=[10, 100, 1000, 10000])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5, help='timed repeats per point (after a warm-up)')
    parser.add_argument('--seconds_per_point', type=float, default=10.0,
                        help='fewer repeats (2 at least) where one step is slow')
    parser.add_argument('--window', type=int, default=20, help='generated tokens timed at each position')
    parser.add_argument('--recipe_rounds', type=int, default=7, help='round-robin rounds of the recipe part')
    parser.add_argument('--recipe_steps', type=int, default=10, help='timed iterations per block and round')
    parser.add_argument('--recipe_scale', choices=['cpu', 'paper'], default='cpu',
                        help="the recipe part's models: each block's 'cpu' config (config/*_cpu.py) or its paper-scale one")
    parser.add_argument('--compile', action='store_true', help='recipe part: torch.compile each model (as --compile=True)')
    parser.add_argument('--device', default='auto', help=devices.CHOICES)
    parser.add_argument('--out', help='output folder (default results/speed/<device>; with --quick out/bench-quick)')
    parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the script, measures nothing useful')
    parser.add_argument('--replot', metavar='FOLDER', help='measure nothing: redraw the figures of FOLDER from its CSVs')
    parser.add_argument('--static', action='store_true',
                        help='measure nothing: compile the Triton kernels for GPUs and count their cost (needs triton, no GPU)')
    args = parser.parse_args(argv)
    for name in ('lengths', 'positions', 'batch', 'width', 'repeats', 'window', 'recipe_rounds', 'recipe_steps'):
        values = getattr(args, name) if isinstance(getattr(args, name), list) else [getattr(args, name)]
        if min(values) < 1:
            parser.error(f'--{name} must be >= 1, got {min(values)}')
    if not 0 < args.seconds_per_point < float('inf'):
        parser.error(f'--seconds_per_point must be a finite number > 0, got {args.seconds_per_point}')
    if args.quick:
        args.lengths, args.positions, args.batch, args.width = [16, 32], [10, 100], 4, 32
        args.repeats, args.window, args.recipe_rounds, args.recipe_steps = 1, 3, 1, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.static:
        return static_report(args)
    if args.replot:
        try:
            with open(os.path.join(args.replot, 'env.json')) as f:
                name = json.load(f)['device']
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f'{args.replot}/env.json is missing or damaged ({type(e).__name__}); give a folder '
                             f'that bench.py wrote') from None
        plot(report.read_csv(os.path.join(args.replot, 'train.csv')),
             report.read_csv(os.path.join(args.replot, 'generate.csv')), args.replot, name)
        print(f'redrew the figures of {args.replot}/')
        return args.replot
    device = devices.resolve(args.device)
    name = devices.folder_name(device)
    out = args.out or (os.path.join('out', 'bench-quick') if args.quick else os.path.join('results', 'speed', name))
    os.makedirs(out, exist_ok=True)
    auto_backend = resolve_backend('auto', device)
    total = (len(args.lengths) * len(layer_variants(args.width, device)) * ('train' in args.parts)
             + args.recipe_rounds * ('recipe' in args.parts) + len(BLOCKS) * ('generate' in args.parts))
    with tqdm(total=total, desc='bench', dynamic_ncols=True) as bar:
        train_rows = bench_training(args, device, bar) if 'train' in args.parts else []
        recipe_rows = bench_recipe(args, device, bar) if 'recipe' in args.parts else []
        generate_rows = bench_generation(args, device, bar) if 'generate' in args.parts else []
    env = {'command': 'python bench.py ' + ' '.join(sys.argv[1:] if argv is None else argv), **devices.environment(device),
           'device': name, 'auto_backend': auto_backend,
           'date': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    with open(os.path.join(out, 'env.json'), 'w') as f:
        json.dump(env, f, indent=1)
    if train_rows:
        report.write_csv(os.path.join(out, 'train.csv'), train_rows)
        ratios = ratio_rows(train_rows, auto_backend)
        report.write_csv(os.path.join(out, 'ratios.csv'), ratios)
        print(f"\nratios on {name} (batch {args.batch}, width {args.width}; 'auto' = {auto_backend}):")
        for label in dict.fromkeys(r['ratio'] for r in ratios):
            print(f'  {label:30s}' + '  '.join(f"T={r['T']}: {r['value']:.2f}x" for r in ratios if r['ratio'] == label))
    if recipe_rows:
        report.write_csv(os.path.join(out, 'recipe.csv'), recipe_rows)
        print(f'\nms per training iteration of the {args.recipe_scale}-scale models:')
        for r in recipe_rows:
            print(f"  {report.display(r['block']):12s} {r['ms_per_iter']:8.2f} ms   {r['vs_transformer']:.2f}x the Transformer's")
    if generate_rows:
        report.write_csv(os.path.join(out, 'generate.csv'), generate_rows)
        print('\nms per generated token by position:')
        for block in dict.fromkeys(r['block'] for r in generate_rows):
            cells = [r for r in generate_rows if r['block'] == block]
            growth = cells[-1]['ms_per_token'] / cells[0]['ms_per_token']
            print(f'  {block:12s}' + '  '.join(f"{r['position']}: {r['ms_per_token']:.3f}" for r in cells)
                  + f'   (last / first: {growth:.2f}x)')
    plot(train_rows, generate_rows, out, name)
    print(f'\nwrote {out}/' + (' (a smoke run of --quick sizes: its figures check the script and measure nothing)'
                               if args.quick else ''))
    return out


if __name__ == '__main__':
    run_cli(main)
