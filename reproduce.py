"""
The paper's comparison in one command: every block's config for N seeds, one run after another,
then the figure and the table.

    python reproduce.py --scale cpu --seeds 3                 # -> out/cpu/<block>_seed<k>, results/cpu/
    python reproduce.py --scale paper --seeds 3 --results results/gpu -- --device=cuda

Runs already complete are skipped, interrupted ones resumed (so rerunning after a crash or Ctrl-C
continues where it stopped); a run folder holding another configuration is refused in one line.
Every logged val loss is already on the whole val split (train.py), so the best one is the score of
best.pt. Logs and configs are copied to <results>/runs/ (checkpoints stay in out/), then
plot_curves.py draws the figure and table.

Arguments after -- go to every train.py call. results/<scale> is written only by the plan it
describes (every block, COMMITTED_SEEDS seeds, no overrides); any other plan writes to
out/<scale>/results unless --results names a folder.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import torch

from minrnn import devices
from minrnn import report
from minrnn import checkpoints, runs
from minrnn import settings
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.dataset import load_dataset
from minrnn.blocks import BLOCKS

ROOT = os.path.dirname(os.path.abspath(__file__))
COMMITTED_SEEDS = 3  # results/<scale> holds every block at this many seeds


def run_state(out_dir, config):
    """'done', 'partial' (a checkpoint of this configuration short of max_iters) or 'new'; a checkpoint
    of another configuration is a UsageError naming the difference."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        return 'new'
    ckpt = checkpoints.load_checkpoint(path)
    planned, found = (runs.identity(c) for c in (config, ckpt['config']))
    differ = [f'{k}: {found.get(k)!r} there, {planned.get(k)!r} planned' for k in sorted(set(planned) | set(found))
              if planned.get(k) != found.get(k)]
    if differ:
        raise UsageError(f"{out_dir} holds a run of another configuration ({'; '.join(differ[:3])}); move it away, "
                         f'or give --out_root for this plan')
    return 'partial' if ckpt['step'] < config['max_iters'] else 'done'


def results_folder(args, extra):
    """results/<scale> for the plan those results describe; out/<scale>/results for any other."""
    if args.results:
        return args.results
    full_plan = not extra and args.seeds == COMMITTED_SEEDS and list(args.blocks) == list(BLOCKS)
    if full_plan:
        return os.path.join('results', args.scale)
    folder = os.path.join('out', args.scale, 'results')
    print(f'note: a plan other than the committed one (every block, {COMMITTED_SEEDS} seeds, no overrides) writes '
          f'its figure and table to {folder}/; --results names another folder', flush=True)
    return folder


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--scale', choices=['cpu', 'paper'], default='cpu', help='the _cpu configs or the paper-scale ones')
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--blocks', nargs='+', choices=BLOCKS, default=list(BLOCKS))
    parser.add_argument('--out_root', help='where runs go (default out/<scale>)')
    parser.add_argument('--results', help='where logs, figure and table go (default results/<scale>)')
    parser.add_argument('--gpu_check', action='store_true',
                        help='the one command for a lent GPU (about 8 minutes): see gpu_check()')
    parser.add_argument('--dry_run', action='store_true', help='with --gpu_check: tiny sizes on a CPU')
    args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    if args.dry_run and not args.gpu_check:
        parser.error('--dry_run goes with --gpu_check (a rehearsal of the GPU command on a CPU)')
    if args.gpu_check:
        return gpu_check(args.dry_run, extra, args.results, args.out_root)
    if args.seeds < 1:
        parser.error(f'--seeds must be >= 1, got {args.seeds}')
    out_root = args.out_root or os.path.join('out', args.scale)
    results = results_folder(args, extra)
    if os.path.exists(results) and not os.path.isdir(results):
        parser.error(f'--results {results!r} is a file; give a folder')

    plan = []
    for seed in range(args.seeds):
        for block in args.blocks:
            name = f'{block}_seed{seed}'
            overrides = [f'--out_dir={os.path.join(out_root, name)}', f'--seed={1337 + seed}', *extra]
            train_args = [BLOCKS[block].configs[args.scale], *overrides]
            config = settings.configure(train_args)
            settings.check(config)  # every run's arguments, before the first one trains
            plan.append((name, train_args, config))

    states = [run_state(config['out_dir'], config) for _, _, config in plan]
    durations, started = [], time.time()
    for i, ((name, train_args, config), state) in enumerate(zip(plan, states), 1):
        out_dir = config['out_dir']
        remaining = sum(s in ('new', 'partial') for s in states[i - 1:])
        eta = f', ETA {eta_text(durations, remaining)}' if durations else ''
        print(f'[{i}/{len(plan)}] {name}: {state}{eta}', flush=True)
        if state in ('new', 'partial'):
            t0 = time.time()
            # 'new': no checkpoint, so at most the log of a run killed before its first one, replaced
            command = [sys.executable, 'train.py', *train_args, '--init_from=resume' if state == 'partial' else '--overwrite=True']
            print('  ' + ' '.join(command[1:]), flush=True)
            if run_training(command) != 0:
                sys.exit(f'error: {name} failed (see above); rerun this command to resume it')
            durations.append(time.time() - t0)
        copy_runs({name: out_dir}, os.path.join(results, 'runs'))

    print(f'all {len(plan)} runs complete ({(time.time() - started) / 60:.1f} min this session)')
    copies = [os.path.join(results, 'runs', name) for name, _, _ in plan]
    for x in ('step', 'time'):
        plot(copies, results, '--x', x)


def plot(run_dirs, out, *options):
    """plot_curves.py on the runs' copies: the table and the figure."""
    command = [sys.executable, 'plot_curves.py', *run_dirs, '--out', out, *options]
    if subprocess.run(command, cwd=ROOT).returncode:
        raise UsageError(f'plot_curves.py failed on {out} (see above); the runs are complete, rerun it by hand')


# ----------------------------------------------------------------------------- one command for a lent GPU

# Wall-clock limits of its parts, in seconds: under 9 minutes in all on one H100 / H200-class GPU.
GPU_LIMITS = {'tests': 90, 'bench': 90, 'alone': 15, 'train': 170, 'margin': 25}


def gpu_check(dry_run=False, extra=(), results=None, out_root=None):
    """Everything the README needs from a GPU, in one go and in bounded time, into
    results/gpu/<gpu-name>/: env.json, tests/test_cuda.py's log, bench.py's speed tables, each of the
    paper's blocks at its scale timed alone, then trained side by side (each stopped by max_seconds),
    their logs, table, figure and timing.md. Each part has a time limit and streams its output; logs
    and CSVs are written before any plot. dry_run: the same steps on a CPU at tiny sizes (a test
    runs it), under a minute."""
    if not dry_run and not torch.cuda.is_available():
        raise UsageError(f'--gpu_check needs a CUDA GPU, and torch {torch.__version__} sees none here; '
                         f'--gpu_check --dry_run rehearses it on a CPU at tiny sizes')
    device = 'cpu' if dry_run else 'cuda'
    name = 'dry-run' if dry_run else devices.folder_name(device)
    results = results or os.path.join('out' if dry_run else 'results', 'gpu', name)
    out_root = out_root or os.path.join('out', 'gpu', name)
    paper_blocks = [block for block, spec in BLOCKS.items() if spec.paper]
    check = settings.configure([BLOCKS[paper_blocks[0]].configs['paper'], *extra])
    load_dataset(check['dataset'], check['block_size'])  # prepared? else one error line
    os.makedirs(results, exist_ok=True)
    started = time.time()
    limits = {k: max(20, v // 6) if dry_run else v for k, v in GPU_LIMITS.items()}

    env = gpu_environment(device)
    with open(os.path.join(results, 'env.json'), 'w') as f:
        json.dump(env, f, indent=1)
    print(f"[1/5] env.json: {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}; "
          f"missing: {', '.join(env['missing']) or 'nothing'}", flush=True)

    tests = ['tests/test_cuda.py'] + ([] if dry_run else ['tests/test_triton.py'])  # on a CPU: the slow interpreter
    print(f"[2/5] {' '.join(tests)} (limit {limits['tests']} s)", flush=True)
    # less the checks that need no GPU and that every CPU run makes: compiling ahead of time, tracing
    without_gpu = 'not compile_for_gpus and not bench_static and not traces_into'
    timed_part([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', without_gpu, *tests],
               os.path.join(results, 'test_cuda.log'), limits['tests'])

    print(f"[3/5] bench.py (limit {limits['bench']} s)", flush=True)
    sizes = ['--quick'] if dry_run else ['--lengths', '64', '128', '256', '512', '1024', '2048', '4096',
                                         '--seconds_per_point', '4', '--repeats', '3']
    timed_part([sys.executable, 'bench.py', '--parts', 'train', 'recipe', '--device', device,
                '--recipe_scale', 'cpu' if dry_run else 'paper', '--recipe_rounds', '3',
                '--out', os.path.join(results, 'speed'), *sizes], os.path.join(results, 'bench.log'), limits['bench'])

    tiny = ['--n_layer=1', '--n_embd=32', '--n_head=2', '--batch_size=4', '--block_size=32', '--max_iters=4',
            '--eval_interval=2', '--eval_iters=2', '--compile=False'] if dry_run else []
    common = [f'--device={device}', '--progress=False', *tiny, *extra]
    print(f"[4/5] each of the paper's blocks alone, {limits['alone']} s each (uncontended ms / iter)", flush=True)
    alone = {block: os.path.join(out_root, 'alone', block) for block in paper_blocks}
    for block in paper_blocks:
        train_together({block: alone[block]}, [*common, f"--max_seconds={limits['alone']}", '--eval_interval=1000000'],
                       results, limits['alone'] + limits['margin'], 'alone')

    print(f"[5/5] the paper's blocks at its scale, side by side, {limits['train']} s each", flush=True)
    together = {block: os.path.join(out_root, block) for block in paper_blocks}
    train_together(together, [*common, f"--max_seconds={limits['train']}"], results,
                   limits['train'] + limits['margin'], 'train')
    copies = copy_runs(together, os.path.join(results, 'runs'))
    write_timing(alone, together, os.path.join(results, 'timing.md'))
    plot(copies, results)
    print(f'done in {(time.time() - started) / 60:.1f} min: {results}/', flush=True)
    return results


def train_together(out_dirs, options, results, limit, log_prefix):
    """One train.py process per block (its paper-scale config, a fresh out_dir), all at once, each
    killed at the limit (its last checkpoint and log rows stay)."""
    logs, processes = {}, {}
    for block, out_dir in out_dirs.items():
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: the time limit makes each one a sample
        logs[block] = open(os.path.join(results, f'{log_prefix}_{block}.log'), 'w')
        command = [sys.executable, 'train.py', BLOCKS[block].configs['paper'], f'--out_dir={out_dir}', *options]
        processes[block] = subprocess.Popen(command, cwd=ROOT, stdout=logs[block], stderr=subprocess.STDOUT)
    deadline = time.time() + limit
    for block, process in processes.items():
        try:
            process.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logs[block].close()
        print(f'  {block}: exit {process.returncode}; {logs[block].name}', flush=True)


def copy_runs(out_dirs, folder):
    """Each run's log and config into folder/<name>/ (checkpoints stay in out/); the copies' paths."""
    copies = []
    for name, out_dir in out_dirs.items():
        copy = os.path.join(folder, name)
        os.makedirs(copy, exist_ok=True)
        for file in ('log.jsonl', 'config.json'):
            if os.path.exists(os.path.join(out_dir, file)):
                shutil.copy2(os.path.join(out_dir, file), os.path.join(copy, file))
        copies.append(copy)
    return copies


def write_timing(alone, together, path):
    """ms per training iteration of each block run alone, and side by side with the others (contended:
    the processes share one GPU, so those figures are not the block's speed)."""
    def ms(out_dir):
        log = os.path.join(out_dir, 'log.jsonl')
        rows = [r for r in runs.read_rows(log) if r.get('kind') == 'train'] if os.path.exists(log) else []
        times = [r['ms_per_iter'] for r in rows[1:] if runs.is_number(r.get('ms_per_iter'))]  # the first holds the warm-up
        return f'{sum(times) / len(times):.1f}' if times else '-'
    table = report.markdown_table(['block', 'ms / iter alone', 'ms / iter side by side (contended)'],
                                  [[BLOCKS[b].display, ms(alone[b]), ms(together[b])] for b in alone])
    with open(path, 'w') as f:
        f.write(table)
    print(table, flush=True)


def gpu_environment(device):
    """Versions, the GPU's name and the optional packages missing here."""
    missing = [package for package in ('triton', 'matplotlib', 'tqdm', 'ninja', 'pytest')
               if importlib.util.find_spec(package) is None]
    triton = None
    if 'triton' not in missing:
        import triton
        triton = triton.__version__
    return {'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': triton,
            'gpu': torch.cuda.get_device_name(device) if device == 'cuda' else 'none (dry run on a CPU)',
            'python': sys.version.split()[0], 'missing': missing, 'date': time.strftime('%Y-%m-%d %H:%M:%S %Z')}


def timed_part(command, log_path, limit):
    """Run command, its output streamed to the console and to log_path, killed after limit seconds."""
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(limit, process.kill)
        timer.start()
        try:
            for line in process.stdout:
                sys.stdout.write('  ' + line)
                log.write(line)
            process.wait()
        finally:
            timer.cancel()
    if process.returncode:
        print(f'  exit {process.returncode}' + (' (time limit)' if process.returncode == -9 else '') +
              f'; see {log_path}', flush=True)
    return process.returncode


def run_training(command):
    """One train.py run. A Ctrl-C makes it save a checkpoint and stop (train.StopRequest): wait for that
    rather than kill it after 0.25 s as subprocess.run does, so an interrupted run loses no steps."""
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reached it already; `kill -INT` on us did not
        process.wait()
        raise


def eta_text(durations, remaining):
    seconds = sum(durations) / len(durations) * remaining
    return f'{seconds / 60:.0f} min' if seconds >= 60 else f'{seconds:.0f} s'


if __name__ == '__main__':
    run_cli(main, interrupted='interrupted: rerun the same command to go on (complete runs are skipped, the '
                              'interrupted one resumes from its checkpoint)')
