"""
The paper's figure and table from any set of runs: validation loss against step, one colour per
block, the mean over seeds as a line and the spread as a band.

    python plot_curves.py out/cpu/*                               # -> out/plots/
    python plot_curves.py results/cpu/runs/* --out results/cpu    # redraws the committed figure
    python plot_curves.py out/cpu/* --x time --train --band std --out somewhere

Runs form one series only when their configurations are equal apart from the keys that cannot
change a curve (settings.NEUTRAL_KEYS: seed, out_dir, logging, device, ...); runs that differ in
anything else are separate series, labelled by what differs, with a warning. Writes curves_<x>.png /
.svg, results.md and results.csv into --out, which is never read as a run. A run whose log is
missing, empty, half-written or foreign is skipped, and so is any row without a whole step and a
finite loss; each skip is named in a `warning:` line.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while matplotlib imports ends in one line, exit 130

import os
import statistics
import sys

from minrnn import report, runs
from minrnn.blocks import BLOCKS
from minrnn.cli import ArgumentParser, run_cli

X_AXES = {'step': ('step', 'training step'), 'time': ('time', 'wall-clock seconds of training'),
          'tokens': ('tokens', 'tokens seen')}
SERIES_STYLES = ['-', (0, (6, 2)), '-.', (0, (2, 1, 1, 1))]  # the train curve is dotted
PAPER_DATASET = 'shakespeare_char'  # the paper's numbers are shown beside runs on this dataset only


def size_label(config):
    """Layers x width, context, batch: the scale of a series."""
    return (f"{config.get('n_layer', '?')} x {config.get('n_embd', '?')}, context {config.get('block_size', '?')}, "
            f"batch {config.get('batch_size', '?')}")


def paper_result(members):
    """The paper's (test loss, best step) for a series on its dataset, else (None, None)."""
    block, dataset = members[0]['block'], members[0]['config'].get('dataset')
    if block in BLOCKS and BLOCKS[block].paper and dataset == PAPER_DATASET:
        return BLOCKS[block].paper
    return None, None


def step_near_best(evals, within=0.01):
    """The first evaluated step whose val loss is within `within` of the run's best."""
    best = min(r['val_loss'] for r in evals)
    return next(r['step'] for r in evals if r['val_loss'] <= best + within)


def threads_of(run):
    environment = run['config'].get('environment')
    return environment.get('threads') if isinstance(environment, dict) else None


def summarise(series, at_steps):
    """One row per series: what the table shows."""
    rows = []
    for label, members in series:
        best_mean, best_std = report.mean_std([min(r['val_loss'] for r in m['evals']) for m in members])
        ms = [statistics.fmean(t['ms_per_iter'] for t in m['trains']) for m in members if m['trains']]
        threads = sorted({str(threads_of(m)) for m in members if threads_of(m) is not None})
        paper_loss, paper_step = paper_result(members)
        row = {'series': label, 'block': members[0]['block'], 'seeds': len(members), 'params': members[0]['params'],
               'size': size_label(members[0]['config']), 'dataset': members[0]['config'].get('dataset'),
               'best_val_mean': best_mean, 'best_val_std': best_std,
               'step_near_best': statistics.fmean(step_near_best(m['evals']) for m in members),
               'last_step': max(m['evals'][-1]['step'] for m in members),
               'max_iters': members[0]['config'].get('max_iters'),
               'ms_per_iter': statistics.fmean(ms) if ms else None, 'threads': '/'.join(threads) or None,
               'paper_test_loss': paper_loss, 'paper_best_step': paper_step}
        for step in at_steps:
            row[f'val@{step}'] = report.mean_std([next((r['val_loss'] for r in m['evals'] if r['step'] == step), None)
                                                  for m in members])[0]
        rows.append(row)
    return rows


def write_table(rows, out, at_steps):
    report.write_csv(os.path.join(out, 'results.csv'), rows)
    header = (['series', 'seeds', 'params', 'size', 'last step (max_iters)', 'best val (mean ± std)',
               'step within 0.01 of best', 'ms / iter (threads)'] + [f'val @{s}' for s in at_steps]
              + ['paper test loss', 'paper best step'])
    cells = [[r['series'], str(r['seeds']), f"{r['params']:,}" if r['params'] else '-', r['size'],
              f"{r['last_step']} ({r['max_iters']})", report.fmt(r['best_val_mean'], std=r['best_val_std']),
              f"{r['step_near_best']:.0f}",
              report.fmt(r['ms_per_iter'], 1) + (f" ({r['threads']})" if r['threads'] else '')]
             + [report.fmt(r[f'val@{s}']) for s in at_steps]
             + [report.fmt(r['paper_test_loss']), str(r['paper_best_step'] or '-')] for r in rows]
    text = report.markdown_table(header, cells)
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(text)
    return text


def curve_bands(members, x_key, y_key, band):
    """x, mean, low, high over the eval steps every member has."""
    common = set.intersection(*({r['step'] for r in m['evals']} for m in members))
    xs, mean, low, high = [], [], [], []
    for step in sorted(common):
        rows = [next(r for r in m['evals'] if r['step'] == step) for m in members]
        if not all(runs.is_number(r.get(x_key)) for r in rows):  # a row without this x (an older log, a bad value)
            continue
        ys = [r[y_key] for r in rows if runs.is_number(r.get(y_key))]
        if not ys:
            continue
        mu = statistics.fmean(ys)
        sd = statistics.stdev(ys) if len(ys) > 1 else 0.0
        xs.append(statistics.fmean(r[x_key] for r in rows))
        mean.append(mu)
        low.append(mu - sd if band == 'std' else min(ys))
        high.append(mu + sd if band == 'std' else max(ys))
    return xs, mean, low, high


def title(series):
    """The dataset and the recipe of the series (context, batch, parameters): what a reader needs."""
    configs = [m[0]['config'] for _, m in series]
    datasets = sorted({str(c.get('dataset')) for c in configs})
    name = 'Tiny Shakespeare (characters)' if datasets == [PAPER_DATASET] else ', '.join(datasets)
    common = [f'{key} {values.pop()}' for key, values in
              (('context', {c.get('block_size') for c in configs}), ('batch', {c.get('batch_size') for c in configs}))
              if len(values) == 1]
    params = [m[0]['params'] for _, m in series if m[0]['params']]
    if params:
        low, high = min(params) / 1e6, max(params) / 1e6
        common.append(f'{low:.2f}M parameters' if round(low, 2) == round(high, 2) else f'{low:.2f}-{high:.2f}M parameters')
    return f"{name}: {', '.join(common)}"


def is_paper_scale(config):
    return config.get('block_size') == 256 and config.get('n_embd') == 384


def plot(series, out, x='step', band='minmax', show_train=False):
    plt = report.pyplot()
    x_key, x_label = X_AXES[x]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    spread = 'min-max' if band == 'minmax' else '± 1 std'
    styles = {}  # series of one block: one colour, a line style each
    for i, (label, members) in enumerate(series):
        same_block = styles.setdefault(members[0]['block'], [])
        same_block.append(label)
        colour = report.colour(members[0]['block'], fallback=f'C{i}')
        xs, mean, low, high = curve_bands(members, x_key, 'val_loss', band)
        if x != 'step':  # a log axis has no 0: the step-0 evaluation has no time or tokens yet
            keep = [k for k, v in enumerate(xs) if v > 0]
            xs, mean, low, high = ([seq[k] for k in keep] for seq in (xs, mean, low, high))
        seeds = f"{len(members)} seeds, {spread}" if len(members) > 1 else '1 seed'
        ax.plot(xs, mean, color=colour, label=f'{label} ({seeds})', linestyle=SERIES_STYLES[(len(same_block) - 1) % 4],
                marker='o' if len(xs) == 1 else None)  # one evaluation: a point, which a line would not show
        if len(members) > 1:
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
        if show_train:
            txs, tmean, _, _ = curve_bands(members, x_key, 'train_loss', band)
            ax.plot(txs, tmean, color=colour, linestyle=':', alpha=0.8)
        paper_loss, _ = paper_result(members)
        if paper_loss is not None and is_paper_scale(members[0]['config']):  # a line only beside its own scale
            ax.axhline(paper_loss, color=colour, linestyle='--', linewidth=0.8, alpha=0.7)
    ax.set(xlabel=x_label, ylabel='validation loss (nats per character)',
           title=title(series) + (' (dotted: train)' if show_train else ''))
    if x != 'step':
        ax.set_xscale('log')
    ax.set_ylim(*loss_range(series))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return report.save(fig, os.path.join(out, f'curves_{x}'))


def loss_range(series):
    """The y range: every loss, except that step 0's (ln vocab_size, far above the rest) is left out
    where each run has at least three later evaluations to show."""
    runs_ = [run for _, members in series for run in members]
    long_enough = all(sum(r['step'] > 0 for r in run['evals']) >= 3 for run in runs_)
    losses = [r['val_loss'] for run in runs_ for r in run['evals'] if r['step'] > 0 or not long_enough]
    return min(losses) - 0.05, max(losses) + 0.05


SCHEDULE = ('max_iters', 'lr_decay_iters', 'warmup_iters', 'learning_rate', 'min_lr', 'decay_lr')


def unlike_runs(series):
    """A warning, in words, where series ran to different steps or on different schedules: their best
    losses and curves then compare unlike things. None where they are alike."""
    def how(members):
        config = members[0]['config']
        return (max(m['evals'][-1]['step'] for m in members), tuple(config.get(k) for k in SCHEDULE))
    shapes = {label: how(members) for label, members in series}
    if len(set(shapes.values())) <= 1:
        return None
    listed = '; '.join(f"{label} to step {last} (max_iters {schedule[0]}, lr {schedule[3]:g})"
                       if isinstance(schedule[3], (int, float)) else f'{label} to step {last}'
                       for label, (last, schedule) in shapes.items())
    return (f'the series ran to different steps or on different schedules ({listed}): their best val losses '
            f'and curves compare unlike runs; compare them at steps all reached (--at)')


def evaluated_steps(series):
    """The steps every run evaluated (the table's default columns), at most eight of them spread out."""
    steps = sorted(set.intersection(*({r['step'] for r in run['evals']} for _, m in series for run in m)) - {0})
    if len(steps) > 8:
        steps = [steps[round(k * (len(steps) - 1) / 7)] for k in range(8)]
    return steps


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('runs', nargs='+', help='run folders (out/...) or their log.jsonl files')
    parser.add_argument('--out', default='out/plots', help='folder for the figure and the table')
    parser.add_argument('--x', default='step', choices=list(X_AXES), help='x axis of the figure')
    parser.add_argument('--band', default='minmax', choices=['minmax', 'std'], help='spread over seeds')
    parser.add_argument('--train', action='store_true', help='also draw the train loss (dotted)')
    parser.add_argument('--at', nargs='*', type=int, help='steps whose val loss the table lists '
                                                          '(default: the steps every run evaluated)')
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out!r} is a file; give a folder for the figure and the table')
    if args.at and min(args.at) < 0:
        parser.error(f'--at takes steps >= 0, got {min(args.at)}')
    found = [run for run in map(runs.read_run, report.other_than(args.runs, args.out)) if run is not None]
    if not found:
        sys.exit('error: none of the given runs has a usable log.jsonl; train one first (python train.py CONFIG)')
    for run in found:
        if len(run['evals']) < 3:
            runs.warn(f"{run['path']} has {len(run['evals'])} evaluation(s): its curve is a line through fewer than 3 points")
    series = sorted(runs.group_series(found), key=lambda s: report.block_order(s[1][0]['block']))
    warning = unlike_runs(series)
    if warning:
        runs.warn(warning)
    at = args.at if args.at is not None else evaluated_steps(series)
    os.makedirs(args.out, exist_ok=True)
    rows = summarise(series, at)
    print(write_table(rows, args.out, at))  # the numbers first: a failed plot loses none of them
    try:
        paths = plot(series, args.out, args.x, args.band, args.train)
    except ImportError:
        runs.warn('matplotlib is not installed: no figure (pip install matplotlib)')
        paths = []
    print('wrote ' + ', '.join(paths + [f'{args.out}/results.md', f'{args.out}/results.csv']))
    return rows


if __name__ == '__main__':
    run_cli(main)
