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
import json
import os
import shutil
import signal
import subprocess
import sys
import time

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
    args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
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
