"""
The paper's figure at the paper's scale on one GPU, in one command within a time budget:

    python reproduce_gpu.py                                        # -> out/gpu/<gpu-name>/, about 8 minutes
    python reproduce_gpu.py --results results/gpu/<gpu-name>       # to commit what it writes
    python reproduce_gpu.py --rehearse                             # the same parts on a CPU, at tiny sizes

Its parts, in order, each writing its files as it goes (a kill at any moment keeps everything done
before it) and each reported in parts.md as done, failed, timed out or skipped:
  1. preflight, seconds: the GPU, torch and triton (and whether this triton is one the kernels are
     tested with), the prepared data (if not: the command that prepares it), free memory and disk.
  2. kernels: each recurrent block's layer at its paper-scale shapes on the Triton kernels against
     the plain PyTorch path, forward and backward, float32 and bfloat16 (kernels.csv).
  3. train: the paper's four blocks, their paper configs (5,000 steps), one after another, each
     given a share of the budget (--max_seconds: a run that reaches it stops as at max_iters, with a
     final evaluation on the whole val split); logs and checkpoints streamed to runs/.
  4. table and figure: results.md, results.csv, curves_step.png, with the paper's numbers beside.
  5. speed, with the time left: every block's paper-scale ms per iteration alone (speed/recipe.csv),
     then minGRU / minLSTM against the GRU / LSTM loops and cuDNN at T = 512 and 4096 (speed/train.csv).

The budget is --budget seconds (default 480). That the defaults fit 8 minutes on an H100 is an
estimate (docs/gpu.md says how it was made) until a GPU has run it. No network, no installs, no
torch.compile (a cold compile costs more than it saves on runs this short).
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import torch

from minrnn import devices, kernel_check, report, runs, settings
from minrnn.blocks import BLOCKS
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.dataset import DatasetError, load_dataset

ROOT = os.path.dirname(os.path.abspath(__file__))
# The triton releases the kernels are tested with (CI: the oldest and the newest, .ci/run); a CUDA
# build of torch brings its own (torch 2.11: 3.6.0).
TRITON_TESTED = ('3.6', '3.9')
# Each run's share of the training budget, by its expected cost per iteration on a GPU (the static
# roofline, results/speed/static/report.md: Mamba about 2.1x the Transformer, minGRU / minLSTM 1.1x).
COST = {'transformer': 1.0, 'mingru': 1.1, 'minlstm': 1.1, 'mamba': 2.1}
STARTUP = 25  # seconds a train.py process spends before its loop (imports, CUDA, kernels from triton's cache)
RESERVE = 20  # seconds kept for the table and figure
# The rehearsal's sizes: every part, in seconds on a CPU.
TINY = ['--n_layer=1', '--n_embd=32', '--n_head=2', '--batch_size=4', '--block_size=32', '--max_iters=20',
        '--eval_interval=10']


class Budget:
    """The command's deadline, and each part's status written to parts.md as the part ends."""

    def __init__(self, seconds, results):
        self.end = time.monotonic() + seconds
        self.path = os.path.join(results, 'parts.md')
        with open(self.path, 'w') as f:
            f.write('| part | status | seconds |\n|---|---|---|\n')

    def left(self):
        return self.end - time.monotonic()

    def record(self, part, status, seconds):
        with open(self.path, 'a') as f:
            f.write(f'| {part} | {status} | {seconds:.0f} |\n')
        print(f'  {part}: {status} ({seconds:.0f} s)', flush=True)


def preflight(args, device, results):
    """Part 1: what this machine is and has, in env.json; an error line where the run cannot start."""
    env = {'device': str(device), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'gpu': torch.cuda.get_device_name(device) if device.startswith('cuda') else 'none (a rehearsal on a CPU)',
           'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'budget_seconds': args.budget}
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = None
    config = settings.configure([BLOCKS['mingru'].configs['paper'], *args.train_args])
    try:
        load_dataset(config['dataset'], config['block_size'])
    except DatasetError as e:
        raise UsageError(f'{e} (it downloads the text: it needs the network, or give a local copy with --input '
                         f'PATH/input.txt)') from None
    env['free_memory_gib'] = round((devices.free_memory(device) or 0) / 2 ** 30, 1)
    env['free_disk_gib'] = round(shutil.disk_usage(results).free / 2 ** 30, 1)
    with open(os.path.join(results, 'env.json'), 'w') as f:
        json.dump(env, f, indent=1)
    tested = env['triton'] is not None and TRITON_TESTED[0] <= '.'.join(env['triton'].split('.')[:2]) <= TRITON_TESTED[1]
    print(f"  {env['gpu']}: torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}"
          f"{'' if tested or args.rehearse else f' (the kernels are tested with {TRITON_TESTED[0]} to {TRITON_TESTED[1]})'}"
          f"; {env['free_memory_gib']} GiB free on the device, {env['free_disk_gib']} GiB on disk; data prepared",
          flush=True)
    if env['free_disk_gib'] < 1:
        raise UsageError(f'{results} has {env["free_disk_gib"]} GiB free; the checkpoints need about 1 GiB')
    return 'done'


def check_kernels(args, device, results, budget):
    """Part 2: kernels.csv, a row a check as it ends; failed where a kernel is off its plain path."""
    rows, overrides = [], TINY[:5] if args.rehearse else []
    for block in kernel_check.recurrent_paper_blocks():
        for dtype in ('float32', 'bfloat16'):
            if budget.left() < RESERVE + len(COST) * STARTUP:
                return 'timed out'
            rows.append(kernel_check.check(block, dtype, device, overrides, batch=4 if args.rehearse else None))
            report.write_csv(os.path.join(results, 'kernels.csv'), rows)
            r = rows[-1]
            print(f"  {block} {dtype} on {r['backend']}: output {r['output_error']:.1e}, gradients "
                  f"{r['gradient_error']:.1e} ({r['seconds']} s){'' if r['ok'] else '  <- beyond tolerance'}", flush=True)
    return 'done' if all(r['ok'] for r in rows) else 'failed: a kernel is off its plain path (kernels.csv)'


def train_all(args, device, results, out_root, budget):
    """Part 3: the paper's four blocks one after another, each with its share of the time left."""
    blocks = [block for block, spec in BLOCKS.items() if spec.paper]
    statuses = []
    for i, block in enumerate(blocks):
        share = (budget.left() - RESERVE) * COST.get(block, 1) / sum(COST.get(b, 1) for b in blocks[i:])
        if share < 2 * STARTUP:
            statuses.append(f'{block} skipped')
            continue
        out_dir = os.path.join(out_root, block)
        command = [sys.executable, 'train.py', BLOCKS[block].configs['paper'], f'--out_dir={out_dir}',
                   '--overwrite=True', '--progress=False', f'--eval_iters={args.eval_iters}',
                   f'--max_seconds={share - STARTUP:.0f}', f'--device={device}', *args.train_args]
        status = timed(command, os.path.join(results, f'train_{block}.log'), share)
        runs.copy_runs({block: out_dir}, os.path.join(results, 'runs'))
        statuses.append(f'{block} {status}')
    return '; '.join(statuses)


def timed(command, log_path, limit):
    """Run command, its output streamed to the console and to log_path; killed at limit seconds.
    'done', 'timed out' or 'failed (exit N)'."""
    killed = []
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(max(1, limit), lambda: (killed.append(True), process.kill()))
        timer.start()
        try:
            for line in process.stdout:
                sys.stdout.write('    ' + line)
                log.write(line)
                log.flush()
            process.wait()
        finally:
            timer.cancel()
    if process.returncode == 0:
        return 'done'
    return 'timed out' if killed else f'failed (exit {process.returncode})'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--budget', type=float, default=480, help='seconds for the whole command')
    parser.add_argument('--results', help='where its files go (default out/gpu/<gpu-name>)')
    parser.add_argument('--out_root', help='where the runs\' checkpoints go (default <results>/checkpoints)')
    parser.add_argument('--eval_iters', type=int, default=20,
                        help='batches of the train-loss estimate at each evaluation (the val loss is the whole split)')
    parser.add_argument('--rehearse', action='store_true', help='every part on this CPU at tiny sizes')
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith('--') or a[2:].partition('=')[0] not in settings.defaults()]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (train.py's --key=value pass through)")
    args.train_args = [*(TINY if args.rehearse else []), *extra]
    if args.budget <= 0 or args.eval_iters < 1:
        parser.error('--budget must be > 0 and --eval_iters >= 1')
    if not args.rehearse and not torch.cuda.is_available():
        raise UsageError(f'no CUDA GPU for torch {torch.__version__} here; --rehearse runs every part on this CPU '
                         f'at tiny sizes')
    device = 'cpu' if args.rehearse else 'cuda:0'
    name = 'rehearsal' if args.rehearse else devices.folder_name(device)
    results = args.results or os.path.join('out', 'gpu', name)
    out_root = args.out_root or os.path.join(results, 'checkpoints')
    os.makedirs(results, exist_ok=True)
    budget = Budget(args.budget, results)
    parts = [('1. preflight', lambda: preflight(args, device, results)),
             ('2. kernels', lambda: check_kernels(args, device, results, budget)),
             ('3. train', lambda: train_all(args, device, results, out_root, budget)),
             ('4. table and figure', lambda: table_and_figure(results)),
             ('5. speed', lambda: speed(args, device, results, budget))]
    for part, run in parts:
        print(f'[{part}] {max(0, budget.left()):.0f} s of the budget left', flush=True)
        start = time.monotonic()
        budget.record(part, run(), time.monotonic() - start)
    print(f'wrote {results}/ (parts.md says how each part ended)')
    return results


def table_and_figure(results):
    """Part 4: plot_curves.py on the runs' logs."""
    copies = [os.path.join(results, 'runs', b) for b in BLOCKS if os.path.isdir(os.path.join(results, 'runs', b))]
    if not copies:
        return 'skipped: no run has a log'
    return timed([sys.executable, 'plot_curves.py', *copies, '--out', results], os.path.join(results, 'plot.log'),
                 RESERVE * 3)


def speed(args, device, results, budget):
    """Part 5, in the time left: the paper-scale iteration of every block, then the layers at 512 and 4096."""
    out = os.path.join(results, 'speed')
    scale = ['--recipe_scale', 'cpu' if args.rehearse else 'paper', '--recipe_rounds', '3']
    lengths = ['--lengths', '64', '128'] if args.rehearse else ['--lengths', '512', '4096']
    statuses = []
    for part, options in (('recipe', scale), ('train', [*lengths, '--repeats', '3', '--seconds_per_point', '4'])):
        if budget.left() < 15:
            statuses.append(f'{part} skipped')
            continue
        command = [sys.executable, 'bench.py', '--parts', part, '--device', device, '--out', out, *options,
                   *(['--quick'] if args.rehearse else [])]
        statuses.append(f'{part} {timed(command, os.path.join(results, f"speed_{part}.log"), budget.left())}')
    return '; '.join(statuses)


if __name__ == '__main__':
    run_cli(main, interrupted='interrupted: what each part had written is kept (parts.md lists the parts that ended)')
