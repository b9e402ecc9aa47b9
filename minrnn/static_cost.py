"""
What the GPU path costs, counted without a GPU (bench.py --static): every Triton kernel of
gpu_kernels.launches() compiled ahead of time for an H100 (sm_90) and an A100 (sm_80) with the
assembler triton bundles, as a paper-scale launch specialises it, and read: registers, spills,
occupancy from ptxas; instructions, shuffles, barriers and special-function operations per state
element and step from the machine code (SASS) of its main loop, and the cycles its loads would stall
a warp (load_stalls: a latency model), which say whether its warps are bound by issuing instructions
or by waiting on memory. Then, from tensor shapes alone on fake tensors, the bytes, FLOPs and an
H100 roofline time of one training iteration of each of the paper's blocks at its scale. Counts and
estimates, never measurements.
"""
import contextlib
import logging
import os
import re
import tempfile

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from minrnn import report as tables
from minrnn import settings
from minrnn.blocks import BLOCKS
from minrnn.cli import UsageError
from minrnn.scan import load_gpu_kernels
from model import CharLM, ModelConfig


def paper_model_config(block):
    """The model of the block's paper-scale config file, and its batch size."""
    values = settings.configure([BLOCKS[block].configs['paper']])
    config = ModelConfig.from_dict({**values, 'vocab_size': 65})
    return config, values['batch_size']


GPUS = {90: dict(name='H100 (sm_90)', warps=64, ctas=32, registers=65536, shared=228 * 1024),
        80: dict(name='A100 (sm_80)', warps=64, ctas=32, registers=65536, shared=164 * 1024)}
SASS_LINE = re.compile(r'/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);')


def loop_code(sass):
    """(opcode, operands) of what a kernel issues per pass of its main loop: the longest loop that holds
    no other loop (the body it repeats per tile or step); the whole kernel where it has no loop. A loop
    is a branch back to an earlier address (not the branch to itself that ends every kernel)."""
    code = [(int(address, 16), opcode, operands) for address, opcode, operands in SASS_LINE.findall(sass)]
    loops = []
    for address, opcode, operands in code:
        target = re.search(r'0x([0-9a-f]+)', operands)
        if opcode.startswith('BRA') and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    inside = lambda inner, outer: outer[0] <= inner[0] and inner[1] <= outer[1] and inner != outer
    innermost = [loop for loop in loops if not any(inside(other, loop) for other in loops)]
    if not innermost:
        return [(opcode, operands) for _, opcode, operands in code]
    start, end = max(innermost, key=lambda loop: loop[1] - loop[0])
    return [(opcode, operands) for address, opcode, operands in code if start <= address <= end]


# The latency of a global load that misses L1, in cycles: an assumption (an L2 hit takes a few hundred
# cycles on an H100, an HBM access more), not a measurement.
LOAD_LATENCY = 500
REGISTER = re.compile(r'\bR(\d+)\b')
LOAD_WIDTH = {'64': 2, '128': 4}  # registers an LDG.E.64 / .128 writes


def load_stalls(code, latency=LOAD_LATENCY):
    """Cycles a warp alone waits per pass of the loop (loop_code, read as repeating): global loads
    issue together until a store (a load cannot pass an earlier one: program order, and pointers that
    could alias), and such a group stalls for latency less the instructions the warp issues (one a
    cycle) before the first one that reads what the group loaded. A load issued a pass ahead of its
    use (the next states' operands before this one's work) is covered by that pass."""
    n = len(code)

    def sources(operands):  # registers an instruction reads: all but a leading destination register
        registers = [int(r) for r in REGISTER.findall(operands)]
        return set(registers[1:] if re.match(r'\s*R\d', operands) else registers)

    def cover(k, loaded):  # instructions from load k to the first that reads what it loaded
        return next((j for j in range(1, n + 1) if sources(code[(k + j) % n][1]) & loaded), n)

    stalls, group = 0, []
    for i, (opcode, operands) in enumerate(code):
        if opcode.startswith('LDG'):
            width = next((LOAD_WIDTH[w] for w in LOAD_WIDTH if f'.{w}' in opcode), 1)
            first = int(REGISTER.search(operands).group(1))
            group.append(cover(i, set(range(first, first + width))))
        elif group and (opcode.startswith(('STG', 'RED', 'ATOM')) or i == n - 1):
            stalls += max(0, latency - min(group))
            group = []
    return stalls + (max(0, latency - min(group)) if group else 0)


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
            code = loop_code(sass)
            loop = [opcode for opcode, _ in code]
            per_element = lambda prefix: round(sum(op.startswith(prefix) for op in loop) / elements, 2)
            stalls = load_stalls(code)
            # a scheduler (4 an SM) interleaves its warps: alone, a warp's pass takes its instructions and
            # its stalls; together its warps take at least their instructions one after another
            warps = ctas * options['num_warps'] / 4
            cycles = max(len(loop) + stalls, warps * len(loop))  # a scheduler's, for a pass of each of its warps
            rows.append({'kernel': name, 'gpu': gpu['name'], 'registers': registers,
                         'spilled_bytes': int(re.search(r'(\d+) bytes spill stores', resources).group(1)),
                         'shared_bytes': shared, 'warps': options['num_warps'], 'ctas_per_sm': ctas,
                         'occupancy': round(share, 3), 'loop_instructions': len(loop),
                         'elements_per_loop': elements, 'instructions_per_element': round(len(loop) / elements, 2),
                         'shuffles_per_element': per_element('SHFL'), 'barriers_per_element': per_element('BAR'),
                         'exps_per_element': per_element('MUFU.EX2'), 'mufu_per_element': per_element('MUFU'),
                         'stall_cycles_per_loop': stalls, 'warps_per_scheduler': warps,
                         'cycles_per_element': round(cycles / (warps * elements), 2),  # a scheduler's, for a warp's
                         'bound': 'latency' if len(loop) + stalls > warps * len(loop) else 'issue'})
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
    kernel also its instructions at the GPU's issue rate, or its loads' stalls where its warps cannot
    hide them (static_rows' cycles_per_element), and its MUFU operations at its special-function units'
    rate (`kernels`: name -> static_rows' row, per element, from the kernel's SASS)."""

    def __init__(self, gpu, kernels=None):
        super().__init__()
        self.gpu, self.kernels = gpu, kernels or {}
        self.bytes, self.flops, self.seconds, self.kernel_seconds = 0, 0, 0.0, 0.0

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
        kernel_time = 0.0
        if kernel and kernel[0] in self.kernels:
            row, elements = self.kernels[kernel[0]], kernel[1]
            kernel_time = elements * max(row['cycles_per_element'] / (32 * self.gpu['issue']),
                                         row['mufu_per_element'] / self.gpu['sfu']) / (self.gpu['sms'] * self.gpu['clock'])
        self.bytes, self.flops = self.bytes + moved, self.flops + flops
        self.kernel_seconds += kernel_time
        self.seconds += max(moved / self.gpu['bandwidth'], flops / self.gpu['bf16'], kernel_time)
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
    row, whose cycles and MUFU operations per element bound the kernels' time too."""
    rows = []
    for block, spec in BLOCKS.items():
        if spec.paper is None:
            continue
        config, batch = paper_model_config(block)
        config.dropout, config.scan_backend = 0.0, 'triton' if spec.recurrent else config.scan_backend
        with FakeTensorMode(), quiet('torch._higher_order_ops.triton_kernel_wrap'):  # see below
            model = CharLM(config)
            idx = torch.zeros(batch, config.block_size, dtype=torch.long)
            traffic = Traffic(gpu, kernels)
            with traffic, torch.autocast('cpu', dtype=torch.bfloat16):
                model(idx, idx)[1].backward()
        rows.append({'block': block, 'gpu': gpu['name'], 'batch': batch, 'T': config.block_size,
                     'gbytes': round(traffic.bytes / 1e9, 2), 'tflops': round(traffic.flops / 1e12, 3),
                     'kernel_ms': round(1000 * traffic.kernel_seconds, 2),
                     'roofline_ms': round(1000 * traffic.seconds, 2)})
    base = rows[0]['roofline_ms']  # the registry lists the Transformer first
    for row in rows:
        row['vs_transformer'] = round(row['roofline_ms'] / base, 2)
    return rows


def segment_rows(multiprocessors=132):
    """The scans split in time (gpu_kernels.scan_segments) at the paper's speed setting (batch 64, width
    128) and in the paper-scale minGRU (its config file's batch, context and width), on an H100's SMs: segments,
    steps a program walks, and the gain a latency-bound model expects. In that model a program's time
    is the steps it walks one after another (a split scan's: its segment's map, the maps it folds, its
    segment) and programs run side by side while the GPU holds them."""
    kernels = load_gpu_kernels()
    config, batch = paper_model_config('mingru')
    rows = []
    for setting, batch, width, T in (('speed', 64, 128, 512), ('speed', 64, 128, 4096),
                                     ('minGRU, paper scale', batch, round(config.expansion * config.n_embd),
                                      config.block_size)):
        S, L = kernels.scan_segments(batch, width, T, multiprocessors)
        programs = batch * -(-width // kernels.SCAN_BLOCK_D)
        walked = T if S == 1 else 2 * L + S - 1
        rows.append({'setting': setting, 'batch': batch, 'width': width, 'T': T, 'programs': programs,
                     'segments': S, 'segment_steps': L, 'programs_split': programs * S, 'steps_walked': walked,
                     'expected_gain': round(T / walked, 1)})
    return rows


def report(out):
    """kernels.csv, roofline.csv, segments.csv, report.md and the SASS into out; printed in short too."""
    kernels = static_rows(out)
    segments = segment_rows()
    tables.write_csv(os.path.join(out, 'segments.csv'), segments)
    roofline = roofline_rows(H100, {r['kernel']: r for r in kernels if r['gpu'].startswith('H100')})
    tables.write_csv(os.path.join(out, 'kernels.csv'), kernels)
    tables.write_csv(os.path.join(out, 'roofline.csv'), roofline)
    kernel_columns = ['kernel', 'gpu', 'registers', 'spilled_bytes', 'occupancy', 'instructions_per_element',
                      'shuffles_per_element', 'barriers_per_element', 'exps_per_element', 'mufu_per_element',
                      'stall_cycles_per_loop', 'cycles_per_element', 'bound']
    roofline_columns = ['block', 'gpu', 'batch', 'T', 'gbytes', 'tflops', 'kernel_ms', 'roofline_ms',
                        'vs_transformer']
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(f'# What the GPU path costs, counted without a GPU (`python bench.py --static`)\n\n'
                f'Counts from compiled code and from tensor shapes, not measurements on a GPU; triton '
                f'{triton_version()}, torch {torch.__version__.split("+")[0]}.\n\n'
                '## The Triton kernels\n\nEach compiled for the GPU named as a paper-scale launch specialises '
                'it (bfloat16 activations, float32 states, pointers and sizes multiples of 16); registers, '
                'spills and occupancy from ptxas; the rest from the SASS (in sass/) of the kernel\'s main loop '
                '(the selective kernels\': a 4-step chunk of every state, the states unrolled; the conv '
                'backward\'s: 4 steps a pass), per state element (channel x state) and time step. MUFU: the special-function unit\'s '
                'operations (exp2, reciprocal, ...). Stalls: the cycles a warp alone would wait per pass of that '
                f'loop, each group of global loads (loads issued together until a store, which no later load '
                f'can pass) waiting {LOAD_LATENCY} cycles (an assumed latency beyond L1) less the instructions the '
                'warp issues before it reads what they loaded. A scheduler (4 an SM) interleaves its warps at '
                'the occupancy above: a pass of each takes the larger of their instructions one after another '
                '(bound: issue) and one warp\'s instructions and stalls (bound: latency); cycles per element is '
                'that, per warp. A model\'s estimate from the machine code, not a measurement.\n\n')
        f.write(tables.markdown_table(kernel_columns, [[str(r[c]) for c in kernel_columns] for r in kernels]))
        f.write('\n## One training iteration at the paper\'s scale\n\nForward and backward of each paper-scale '
                'model (batch 64, T 256) as eager PyTorch runs it on a GPU, op by op: bfloat16 autocast, the '
                'recurrent blocks on the \'triton\' kernels, attention one fused op; dropout 0 and no '
                'optimizer step. Bytes: every op\'s tensor arguments read and results written once (views '
                'free; the operators\' own small tensors, under 1 MB a layer, not counted); FLOPs: matmuls and '
                'attention (torch.utils.flop_counter); a Triton kernel\'s time: its state elements x steps '
                'times its cycles per element above on each of 4 schedulers per SM, or times its MUFU '
                'operations at 16 a clock per SM where that is longer (132 SMs, 1.98 GHz); roofline time: the '
                'sum over ops of the largest of bytes / 3.35 TB/s, FLOPs / 989 TFLOP/s and the kernel time, '
                'from an H100 SXM\'s datasheet figures and the latency assumed above: an estimate.\n\n')
        f.write(tables.markdown_table(roofline_columns, [[str(r[c]) for c in roofline_columns] for r in roofline]))
        f.write('\n## Long sequences: the scans split in time\n\nWhere batch x channel blocks give an H100 '
                'fewer than 8 programs an SM, the minGRU / minLSTM scans (and the plain one) also split time '
                'into segments (gpu_kernels.scan_segments): each program walks its segment\'s map, folds the '
                'maps before it and walks its segment again. Expected gain from a latency-bound model (a '
                'program\'s time is the steps it walks; programs run side by side while the GPU holds them): '
                'an estimate, not a measurement.\n\n')
        f.write(tables.markdown_table(list(segments[0]), [[str(v) for v in r.values()] for r in segments]))
    for r in kernels:
        print(f"  {r['kernel']:20s} {r['gpu']:14s} {r['registers']:4d} registers, {r['spilled_bytes']} bytes spilled, "
              f"occupancy {r['occupancy']:.0%}, per element: {r['instructions_per_element']} instructions, "
              f"{r['shuffles_per_element']} shuffles, {r['exps_per_element']} exps; {r['bound']}-bound")
    for r in segments:
        print(f"  scan at batch {r['batch']}, width {r['width']}, T {r['T']}: {r['segments']} segment(s) of "
              f"{r['segment_steps']} steps, expected gain {r['expected_gain']}x (latency-bound model)")
    for r in roofline:
        print(f"  {tables.display(r['block']):12s} {r['gbytes']:7.2f} GB {r['tflops']:6.3f} TFLOP "
              f"{r['kernel_ms']:6.2f} ms in the Triton kernels, roofline "
              f"{r['roofline_ms']:6.2f} ms on an {r['gpu']}, {r['vs_transformer']:.2f}x the Transformer's")
    print(f'wrote {out}/')
    return out


def triton_version():
    import triton
    return triton.__version__
