"""
The paper's comparison in one command: every block's config for N seeds, one run after another,
then the figure and the table.

    python reproduce.py --scale cpu --seeds 3                 # -> out/cpu/<block>_seed<k>, out/cpu/results/
    python reproduce.py --scale cpu --seeds 3 --results results/cpu    # remakes the committed results
    python reproduce.py --scale paper --seeds 3 -- --device=cuda

Runs already complete are skipped, interrupted ones resumed (so rerunning after a crash or Ctrl-C
continues where it stopped); a run folder holding another configuration is refused in one line.
Every logged val loss is already on the whole val split (train.py), so the best one is the score of
best.pt. Logs and configs are copied to <results>/runs/ (checkpoints stay in out/), then
plot_curves.py draws the figure and table.

Arguments after -- go to every train.py call. The figure and table go to out/<scale>/results unless
--results names a folder: no command writes into the committed results/ unless asked to.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import os
import signal
import subprocess
import sys
import time

import torch

from minrnn import devices
from minrnn import checkpoints, runs
from minrnn import settings
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.dataset import load_dataset
from minrnn.blocks import BLOCKS
from model import CharLM, ModelConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
MAX_SEEDS = 100  # a plan of more runs than this is a typo, not a study


def run_state(out_dir, config):
    """'done', 'partial' (a checkpoint of this configuration short of max_iters) or 'new'; a run of
    another configuration there (its checkpoint, or without one its log) is a UsageError naming the
    difference: it is never trained over."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        log = os.path.join(out_dir, 'log.jsonl')
        meta = next((r for r in runs.read_rows(log) if r.get('kind') == 'meta'), None) if os.path.isfile(log) else None
        if meta is None and runs.finished_files(out_dir):
            raise UsageError(f"{out_dir} holds {', '.join(runs.finished_files(out_dir))} of a run this plan cannot "
                             f'read; move it away, or give --out_root for this plan')
        if meta is not None:
            differ_from(out_dir, config, meta.get('config') or {})
        return 'new'  # nothing, or this plan's run killed before its first checkpoint
    ckpt = checkpoints.load_checkpoint(path)
    differ_from(out_dir, config, ckpt['config'])
    return 'partial' if ckpt['step'] < config['max_iters'] else 'done'


def differ_from(out_dir, config, found):
    """A UsageError where the run found in out_dir is of another configuration than the plan's."""
    planned, found = runs.identity(config), runs.identity(found)
    differ = [f'{k}: {found.get(k)!r} there, {planned.get(k)!r} planned' for k in sorted(set(planned) | set(found))
              if planned.get(k) != found.get(k)]
    if differ:
        raise UsageError(f"{out_dir} holds a run of another configuration ({'; '.join(differ[:3])}); move it away, "
                         f'or give --out_root for this plan')


def results_folder(args):
    """Where the figure and table go: --results, else out/<scale>/results (the committed results/ only
    when asked for by name)."""
    return args.results or os.path.join('out', args.scale, 'results')


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
    if not 1 <= args.seeds <= MAX_SEEDS:
        parser.error(f'--seeds must be in 1..{MAX_SEEDS} (each seed is a run of every block), got {args.seeds}')
    out_root = args.out_root or os.path.join('out', args.scale)
    results = results_folder(args)
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
    warn_if_long(plan[0][2], args.scale)
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
        runs.copy_runs({name: out_dir}, os.path.join(results, 'runs'))

    print(f'all {len(plan)} runs complete ({(time.time() - started) / 60:.1f} min this session)')
    copies = [os.path.join(results, 'runs', name) for name, _, _ in plan]
    for x in ('step', 'time'):
        plot(copies, results, '--x', x)


def warn_if_long(config, scale):
    """Before a plan starts: where one of its runs would take hours on this device (the paper's scale
    on a CPU), say so with the projection and the CPU recipe to use instead."""
    with torch.device('meta'):
        params = CharLM(ModelConfig.from_dict({**config, 'vocab_size': 65})).num_params()
    val_tokens = len(load_dataset(config['dataset'], config['block_size'])[1])
    instead = '--scale cpu' if scale != 'cpu' else None
    warning = devices.long_run_warning(config, params, val_tokens, devices.resolve(config['device']), instead)
    if warning:
        print(f'warning: {warning}', flush=True)


def plot(run_dirs, out, *options):
    """plot_curves.py on the runs' copies: the table and the figure."""
    command = [sys.executable, 'plot_curves.py', *run_dirs, '--out', out, *options]
    if subprocess.run(command, cwd=ROOT).returncode:
        raise UsageError(f'plot_curves.py failed on {out} (see above); the runs are complete, rerun it by hand')


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
