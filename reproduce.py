"""
The paper's comparison in one command: every block's config for N seeds, one run after another,
then the figure and the table.

    python reproduce.py --scale cpu --seeds 3                 # -> out/cpu/<block>_seed<k>, results/cpu/
    python reproduce.py --scale paper --seeds 3 --results results/gpu -- --device=cuda

Runs already complete are skipped, interrupted ones resumed (so rerunning after a crash or Ctrl-C
continues where it stopped). Every logged val loss is already on the whole val split (train.py), so
the best one is the score of best.pt. Logs and configs are copied to <results>/runs/ (checkpoints
stay in out/), then plot_curves.py draws the figure and table.
Arguments after -- go to every train.py call.
"""
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

import plot_curves
import train
from configurator import ArgumentParser, run_cli
from model import BLOCKS

ROOT = os.path.dirname(os.path.abspath(__file__))


def config_file(block, scale):
    return os.path.join('config', f'shakespeare_char_{block}{"_cpu" if scale == "cpu" else ""}.py')


def run_state(out_dir, max_iters):
    """'done', 'partial' (a checkpoint short of max_iters) or 'new'."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        return 'new'
    try:
        step = train.load_checkpoint(path)['step']
    except train.TrainingError:
        return 'new'  # unreadable: start again rather than fail the whole reproduction
    return 'partial' if step < max_iters else 'done'


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
    if args.gpu_check:
        return gpu_check(args.dry_run, extra, args.results, args.out_root)
    if args.seeds < 1:
        parser.error(f'--seeds must be >= 1, got {args.seeds}')
    out_root = args.out_root or os.path.join('out', args.scale)
    results = args.results or os.path.join('results', args.scale)
    if os.path.exists(results) and not os.path.isdir(results):
        parser.error(f'--results {results!r} is a file; give a folder')

    plan = []
    for seed in range(args.seeds):
        for block in args.blocks:
            name = f'{block}_seed{seed}'
            overrides = [f'--out_dir={os.path.join(out_root, name)}', f'--seed={1337 + seed}', *extra]
            train_args = [config_file(block, args.scale), *overrides]
            config = train.configure(train_args)
            train.check_config(config)  # every run's arguments, before the first one trains
            plan.append((name, train_args, config))

    states = [run_state(config['out_dir'], config['max_iters']) for _, _, config in plan]
    durations, started = [], time.time()
    for i, ((name, train_args, config), state) in enumerate(zip(plan, states), 1):
        out_dir = config['out_dir']
        remaining = sum(s in ('new', 'partial') for s in states[i - 1:])
        eta = f', ETA {eta_text(durations, remaining)}' if durations else ''
        print(f'[{i}/{len(plan)}] {name}: {state}{eta}', flush=True)
        if state in ('new', 'partial'):
            t0 = time.time()
            command = [sys.executable, 'train.py', *train_args] + (['--init_from=resume'] if state == 'partial' else [])
            print('  ' + ' '.join(command[1:]), flush=True)
            if run_training(command) != 0:
                sys.exit(f'error: {name} failed (see above); rerun this command to resume it')
            durations.append(time.time() - t0)
        copy = os.path.join(results, 'runs', name)
        os.makedirs(copy, exist_ok=True)
        for file in ('log.jsonl', 'config.json'):
            shutil.copy2(os.path.join(out_dir, file), os.path.join(copy, file))

    print(f'all {len(plan)} runs complete ({(time.time() - started) / 60:.1f} min this session)')
    runs = [os.path.join(results, 'runs', name) for name, _, _ in plan]
    for x in ('step', 'time'):
        plot_curves.main([*runs, '--out', results, '--x', x])


# ----------------------------------------------------------------------------- one command for a lent GPU

# Wall-clock limits of its parts, in seconds: about 8 minutes in all on one H100 / H200-class GPU.
GPU_LIMITS = {'tests': 120, 'bench': 120, 'train': 270, 'train_margin': 30}


def gpu_check(dry_run=False, extra=(), results=None, out_root=None):
    """Everything the README needs from a GPU, in one go and in bounded time, into
    results/gpu/<gpu-name>/: env.json, tests/test_cuda.py's log, bench.py's speed tables, and the four
    paper-scale blocks trained side by side (each stopped by max_seconds), their logs, table and
    figure. Each part has a time limit and streams its output; logs and CSVs are written before any
    plot. dry_run: the same steps on a CPU at tiny sizes (a test runs it), under a minute."""
    from bench import device_name  # here: bench imports this module
    device = 'cpu' if dry_run else 'cuda'
    name = 'dry-run' if dry_run else device_name(device)
    results = results or os.path.join('out' if dry_run else 'results', 'gpu', name)
    out_root = out_root or os.path.join('out', 'gpu', name)
    train.load_dataset(train.configure([config_file('mingru', 'paper'), *extra]))  # prepared? else one error line
    os.makedirs(results, exist_ok=True)
    started = time.time()
    limits = {k: max(20, v // 6) if dry_run else v for k, v in GPU_LIMITS.items()}

    env = gpu_environment(device)
    with open(os.path.join(results, 'env.json'), 'w') as f:
        json.dump(env, f, indent=1)
    print(f"[1/4] env.json: {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}; "
          f"missing: {', '.join(env['missing']) or 'nothing'}", flush=True)

    tests = ['tests/test_cuda.py'] + ([] if dry_run else ['tests/test_triton.py'])  # on a CPU: the slow interpreter
    print(f"[2/4] {' '.join(tests)} (limit {limits['tests']} s)", flush=True)
    timed_part([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *tests],
               os.path.join(results, 'test_cuda.log'), limits['tests'])

    print(f"[3/4] bench.py (limit {limits['bench']} s)", flush=True)
    sizes = ['--quick'] if dry_run else ['--lengths', '64', '128', '256', '512', '1024', '2048', '4096',
                                         '--seconds_per_point', '4', '--repeats', '3']
    timed_part([sys.executable, 'bench.py', '--parts', 'train', 'recipe', '--device', device,
                '--recipe_scale', 'cpu' if dry_run else 'paper', '--recipe_rounds', '3',
                '--out', os.path.join(results, 'speed'), *sizes], os.path.join(results, 'bench.log'), limits['bench'])

    print(f"[4/4] the four paper-scale blocks side by side, {limits['train']} s each", flush=True)
    tiny = ['--n_layer=1', '--n_embd=32', '--n_head=2', '--batch_size=4', '--block_size=32', '--max_iters=4',
            '--eval_interval=2', '--eval_iters=2', '--compile=False'] if dry_run else []
    runs = {}
    for block in BLOCKS:
        out_dir = os.path.join(out_root, block)
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: the time limit makes each one a sample
        runs[block] = [sys.executable, 'train.py', config_file(block, 'paper'), f'--out_dir={out_dir}',
                       f'--device={device}', f"--max_seconds={limits['train']}", '--progress=False', *tiny, *extra]
    logs = {block: open(os.path.join(results, f'train_{block}.log'), 'w') for block in runs}
    processes = {block: subprocess.Popen(command, cwd=ROOT, stdout=logs[block], stderr=subprocess.STDOUT)
                 for block, command in runs.items()}
    deadline = time.time() + limits['train'] + limits['train_margin']
    for block, process in processes.items():
        try:
            process.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()  # its last checkpoint and log rows stay
            process.wait()
        logs[block].close()
        print(f'  {block}: exit {process.returncode}; {logs[block].name}', flush=True)
    copies = []
    for block in BLOCKS:
        out_dir = os.path.join(out_root, block)
        copy = os.path.join(results, 'runs', block)
        os.makedirs(copy, exist_ok=True)
        for file in ('log.jsonl', 'config.json'):
            if os.path.exists(os.path.join(out_dir, file)):
                shutil.copy2(os.path.join(out_dir, file), os.path.join(copy, file))
        copies.append(copy)
    plot_curves.main([*copies, '--out', results, '--at', '500', '1000', '2000', '5000'])
    print(f'done in {(time.time() - started) / 60:.1f} min: {results}/', flush=True)
    return results


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
