"""
Speed and memory of every block, measured side by side in one run (never as timed tests):

    python bench.py                                   # everything -> out/bench/<device>/
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
memory.png, generate.png) into the output folder, and prints the ratios the paper quotes. A run of
some parts into a folder replaces those parts' files only; env.json's 'parts' names the command and
date of each part's CSV.

--static measures nothing: it compiles every Triton kernel (gpu_kernels.launches) for an H100 (sm_90)
and an A100 (sm_80) with the assembler triton bundles, as a paper-scale launch specialises it, and
writes per kernel and GPU the registers, spilled bytes, shared memory and CTAs per SM that ptxas
reports, and, from the machine code (SASS) of the kernel's main loop, instructions, warp shuffles,
barriers, exps and special-function operations per state element and step (kernels.csv and the SASS
it read); and, from the tensor shapes alone, the bytes, FLOPs and H100 roofline time of one training
iteration of each of the paper's blocks at the paper's scale (roofline.csv); both summed up in
report.md, in out/bench/static/ by default.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import functools
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from minrnn import devices, report, settings, static_cost
from minrnn.blocks import BLOCKS
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.scan import BACKENDS, resolve_backend
from minrnn.settings import resolve
from model import MIXERS, CharLM, ModelConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
PARTS = ('train', 'recipe', 'generate')  # bench.py's measurements, each written to <part>.csv


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


def bench_training(args, device, bar, path):
    """At each T, every variant's training step is timed in interleaved rounds, so that drift in the
    machine's speed reaches all variants alike; a variant whose step is slow stops earlier
    (2 repeats at least, then only while it stays within seconds_per_point), and one whose step took
    over max_step_seconds is not timed at longer T (its step only grows with T). The rows so far are
    written to path after each T: a run stopped at its limit keeps every length it measured."""
    rows = []
    variants = layer_variants(args.width, device)
    for T in sorted(args.lengths):
        x = torch.randn(args.batch, T, args.width, device=device, requires_grad=True)
        steps, budget, times = {}, {}, {}
        for name, make in list(variants.items()):
            torch.manual_seed(0)
            steps[name] = functools.partial(training_step, make().to(device), x)
            warm_up = seconds(steps[name], device)
            budget[name] = max(2, min(args.repeats, int(args.seconds_per_point / warm_up)))
            times[name] = []
            if warm_up > args.max_step_seconds:
                del variants[name]
                bar.total -= sum(length > T for length in args.lengths)
                tqdm.write(f'{name}: {warm_up:.0f} s a step at T={T}, over --max_step_seconds '
                           f'{args.max_step_seconds:g}: not timed at longer T')
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
        report.write_csv(path, rows)
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


def bench_recipe(args, device, bar, path):
    """ms per training iteration of each recipe model (--recipe_scale), measured round-robin, in the
    dtype train.py's dtype='auto' trains in on this device (bfloat16 autocast on a capable GPU). The
    medians so far are written to path after each round, with the CPU's vector capability (the C++
    kernels and oneDNN are built for it)."""
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
    capability = torch.backends.cpu.get_cpu_capability()
    for round_ in range(1, args.recipe_rounds + 1):
        for block, (step, _) in steps.items():
            times[block].append(median_seconds(step, args.recipe_steps, device))
        bar.update(1)
        base = statistics.median(times[next(iter(times))])
        rows = [{'block': block, 'ms_per_iter': round(1000 * statistics.median(t), 3),
                 'vs_transformer': round(statistics.median(t) / base, 3), 'params': steps[block][1],
                 'scale': args.recipe_scale, 'dtype': dtype, 'compile': args.compile, 'rounds': round_,
                 'steps_per_round': args.recipe_steps, 'cpu_capability': capability}
                for block, t in times.items()]
        report.write_csv(path, rows)
    return rows


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
        fig, ax = plt.subplots(figsize=(8.5, 5))
        for variant in dict.fromkeys(r['variant'] for r in train_rows):
            pts = [(r['T'], r[what]) for r in train_rows if r['variant'] == variant]
            ax.plot(*zip(*pts), **variant_style(variant), label=variant)
        ax.set(xscale='log', yscale='log', xlabel='sequence length T', ylabel=ylabel,
               title=f'one layer, fwd+bwd, {device_name}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the axes: no line hidden
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


def output_folder(args, device_name):
    """--out, else a folder under out/: no default writes into the committed results/."""
    return args.out or os.path.join('out', 'bench-quick' if args.quick else os.path.join('bench', device_name))


def check_memory(args, device):
    """One line, before any allocation, where the layer comparison's largest input cannot fit: about 30
    floats of activations and their gradients per element of a (batch, T, width) input (the plain
    paths chunk what would be more)."""
    if 'train' not in args.parts:
        return
    need = 4 * 30 * args.batch * max(args.lengths) * args.width
    free = devices.free_memory(device)
    if free is not None and need > free:
        raise UsageError(f'the layer comparison at batch {args.batch}, T {max(args.lengths)}, width {args.width} needs '
                         f'about {need / 2 ** 30:,.0f} GiB, more than the {free / 2 ** 30:,.1f} GiB free on {device}; '
                         f'lower --batch, --lengths or --width')


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--parts', nargs='+', default=list(PARTS), choices=PARTS)
    parser.add_argument('--lengths', nargs='+', type=int, default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument('--positions', nargs='+', type=int, default=[10, 100, 1000, 10000])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=5, help='timed repeats per point (after a warm-up)')
    parser.add_argument('--seconds_per_point', type=float, default=10.0,
                        help='fewer repeats (2 at least) where one step is slow')
    parser.add_argument('--max_step_seconds', type=float, default=20.0,
                        help='a layer variant whose step takes longer is not timed at longer T (on a CPU: the log backends)')
    parser.add_argument('--window', type=int, default=20, help='generated tokens timed at each position')
    parser.add_argument('--recipe_rounds', type=int, default=7, help='round-robin rounds of the recipe part')
    parser.add_argument('--recipe_steps', type=int, default=10, help='timed iterations per block and round')
    parser.add_argument('--recipe_scale', choices=['cpu', 'paper'], default='cpu',
                        help="the recipe part's models: each block's 'cpu' config (config/*_cpu.py) or its paper-scale one")
    parser.add_argument('--compile', action='store_true', help='recipe part: torch.compile each model (as --compile=True)')
    parser.add_argument('--device', default='auto', help=devices.CHOICES)
    parser.add_argument('--out', help='output folder (default out/bench/<device>, out/bench/static, with --quick out/bench-quick); '
                        'give results/speed/<device> to replace a committed result')
    parser.add_argument('--quick', action='store_true', help='tiny sizes: checks the script, measures nothing useful')
    parser.add_argument('--replot', metavar='FOLDER', help='measure nothing: redraw the figures of FOLDER from its CSVs')
    parser.add_argument('--static', action='store_true',
                        help='measure nothing: compile the Triton kernels for GPUs and count their cost (needs triton, no GPU)')
    args = parser.parse_args(argv)
    for name in ('lengths', 'positions', 'batch', 'width', 'repeats', 'window', 'recipe_rounds', 'recipe_steps'):
        values = getattr(args, name) if isinstance(getattr(args, name), list) else [getattr(args, name)]
        if min(values) < 1:
            parser.error(f'--{name} must be >= 1, got {min(values)}')
    for name in ('seconds_per_point', 'max_step_seconds'):
        if not 0 < getattr(args, name) < float('inf'):
            parser.error(f'--{name} must be a finite number > 0, got {getattr(args, name)}')
    if args.quick:
        args.lengths, args.positions, args.batch, args.width = [16, 32], [10, 100], 4, 32
        args.repeats, args.window, args.recipe_rounds, args.recipe_steps = 1, 3, 1, 1
    return args


def parts_written_before(out):
    """Which command wrote each part's CSV already in out (env.json's 'parts'; an env.json from before
    it had them names one command for every CSV there), so that a run of some parts into a folder keeps
    the provenance of the others."""
    try:
        with open(os.path.join(out, 'env.json')) as f:
            before = json.load(f)
        return before.get('parts') or {part: {'command': before['command'], 'date': before['date']}
                                       for part in PARTS if os.path.exists(os.path.join(out, f'{part}.csv'))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def main(argv=None):
    args = parse_args(argv)
    if args.static:
        return static_cost.report(args.out or os.path.join('out', 'bench', 'static'))
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
    check_memory(args, device)
    name = devices.folder_name(device)
    out = output_folder(args, name)
    os.makedirs(out, exist_ok=True)
    auto_backend = resolve_backend('auto', device)
    env = {'command': 'python bench.py ' + ' '.join(sys.argv[1:] if argv is None else argv), **devices.environment(device),
           'device': name, 'auto_backend': auto_backend,
           'date': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    env['parts'] = {**parts_written_before(out), **{part: {'command': env['command'], 'date': env['date']}
                                                    for part in args.parts}}
    with open(os.path.join(out, 'env.json'), 'w') as f:
        json.dump(env, f, indent=1)
    print(f"measuring {', '.join(args.parts)} on {name}; each part's CSV is written to {out}/ as it ends", flush=True)
    total = (len(args.lengths) * len(layer_variants(args.width, device)) * ('train' in args.parts)
             + args.recipe_rounds * ('recipe' in args.parts) + len(BLOCKS) * ('generate' in args.parts))
    train_rows, recipe_rows, generate_rows = [], [], []
    with tqdm(total=total, desc='bench', dynamic_ncols=True) as bar:
        if 'train' in args.parts:
            train_rows = bench_training(args, device, bar, os.path.join(out, 'train.csv'))
            report.write_csv(os.path.join(out, 'ratios.csv'), ratio_rows(train_rows, auto_backend))
        if 'recipe' in args.parts:
            recipe_rows = bench_recipe(args, device, bar, os.path.join(out, 'recipe.csv'))
        if 'generate' in args.parts:
            generate_rows = bench_generation(args, device, bar)
            report.write_csv(os.path.join(out, 'generate.csv'), generate_rows)
    if train_rows:
        ratios = ratio_rows(train_rows, auto_backend)
        print(f"\nratios on {name} (batch {args.batch}, width {args.width}; 'auto' = {auto_backend}):")
        for label in dict.fromkeys(r['ratio'] for r in ratios):
            print(f'  {label:30s}' + '  '.join(f"T={r['T']}: {r['value']:.2f}x" for r in ratios if r['ratio'] == label))
    if recipe_rows:
        print(f'\nms per training iteration of the {args.recipe_scale}-scale models:')
        for r in recipe_rows:
            print(f"  {report.display(r['block']):12s} {r['ms_per_iter']:8.2f} ms   {r['vs_transformer']:.2f}x the Transformer's")
    if generate_rows:
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
