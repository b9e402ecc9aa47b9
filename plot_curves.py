"""
The paper's figure and table from any set of runs: validation loss against step, one colour per
block, the mean over seeds as a line and the spread as a band.

    python plot_curves.py out/cpu/*                               # -> out/plots/
    python plot_curves.py results/cpu/runs/* --out results/cpu    # redraws the committed figure
    python plot_curves.py out/cpu/* --x time --train --band std --out somewhere

Runs are grouped by block and model size, read from each run's log (one group = the seeds of one
block at one size). Writes curves_<x>.png / .svg, results.md and results.csv into --out, which is
never read as a run. A run whose log is missing, empty, half-written, from an older format or not
a log at all is skipped, and so is any row with a loss that is not a finite number; each skip is
named in a `warning:` line.
"""
import csv
import json
import math
import os
import statistics
import sys

from configurator import ArgumentParser, run_cli

LOG_FORMAT = 1
# The paper's Shakespeare results (Feng et al. 2024): test loss, and the step near which each is best.
PAPER = {'transformer': (1.547, 2000), 'mingru': (1.548, 575), 'minlstm': (1.555, 625), 'mamba': (1.575, 400)}
COLOURS = {'transformer': 'tab:blue', 'mingru': 'tab:orange', 'minlstm': 'tab:green', 'mamba': 'tab:red'}
SIZE_STYLES = ['-', '-.', (0, (6, 2)), (0, (2, 1, 1, 1))]  # the train curve is dotted
X_AXES = {'step': ('step', 'training step'), 'time': ('time', 'wall-clock seconds'), 'tokens': ('tokens', 'tokens seen')}


def warn(message):
    print(f'warning: {message}', file=sys.stderr)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_rows(log_path):
    """The log's rows that are JSON objects; a line that is not (cut short by a kill) is named and skipped."""
    rows = []
    with open(log_path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warn(f'{log_path}:{number}: unreadable line skipped (a write cut short?)')
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read_run(path):
    """A run's meta, eval rows and train rows; None (with a warning) if unusable."""
    log_path = path if path.endswith('.jsonl') else os.path.join(path, 'log.jsonl')
    if not os.path.isfile(log_path):
        warn(f'skipping {path}: no log.jsonl there')
        return None
    rows = read_rows(log_path)
    meta = next((r for r in rows if r.get('kind') == 'meta'), None)
    if meta is None or meta.get('format') != LOG_FORMAT or not isinstance(meta.get('config'), dict):
        warn(f'skipping {log_path}: no log header of format {LOG_FORMAT} (an older or foreign log)')
        return None
    evals = [r for r in rows if r.get('kind') == 'eval' and isinstance(r.get('step'), int) and is_number(r.get('val_loss'))]
    trains = [r for r in rows if r.get('kind') == 'train' and isinstance(r.get('step'), int) and is_number(r.get('ms_per_iter'))]
    dropped = sum(r.get('kind') == 'eval' for r in rows) - len(evals)
    if dropped:
        warn(f'{log_path}: {dropped} eval row(s) without a finite val loss skipped')
    if not evals:
        warn(f'skipping {log_path}: no evaluation rows with a finite val loss')
        return None
    config = meta['config']
    block = meta.get('block', '?')
    return {'path': log_path, 'block': block, 'size': size_label(config), 'params': meta.get('params'),
            'config': config, 'evals': sorted(evals, key=lambda r: r['step']), 'trains': trains}


def size_label(config):
    """'paper scale' or layers x width, context: what tells one experiment of a block from another."""
    if is_paper_scale(config):
        return 'paper scale'
    return f"{config.get('n_layer', '?')} x {config.get('n_embd', '?')}, context {config.get('block_size', '?')}"


def group_runs(runs):
    """(block, size) -> its runs (the seeds of one experiment), in the order first seen; each group's
    label is its block, with the size where a block comes in several sizes."""
    groups = {}
    for run in runs:
        groups.setdefault((run['block'], run['size']), []).append(run)
    sizes = {}
    for block, size in groups:
        sizes.setdefault(block, set()).add(size)
    return {(block if len(sizes[block]) == 1 else f'{block} ({size})'): members
            for (block, size), members in groups.items()}


def mean_std(values):
    """Mean and standard deviation; the deviation is None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def step_near_best(evals, within=0.01):
    """The first evaluated step whose val loss is within `within` of the run's best."""
    best = min(r['val_loss'] for r in evals)
    return next(r['step'] for r in evals if r['val_loss'] <= best + within)


def is_paper_scale(config):
    return config.get('block_size') == 256 and config.get('n_embd') == 384


def summarise(runs, at_steps):
    """One row per group: what the table shows."""
    rows = []
    for group, members in group_runs(runs).items():
        block = members[0]['block']
        best_mean, best_std = mean_std([min(r['val_loss'] for r in m['evals']) for m in members])
        ms = [statistics.fmean(t['ms_per_iter'] for t in m['trains']) for m in members if m['trains']]
        row = {'group': group, 'block': block, 'seeds': len(members), 'params': members[0]['params'],
               'best_val_mean': best_mean, 'best_val_std': best_std,
               'step_near_best': statistics.fmean(step_near_best(m['evals']) for m in members),
               'ms_per_iter': statistics.fmean(ms) if ms else None,
               'paper_test_loss': PAPER.get(block, (None, None))[0], 'paper_best_step': PAPER.get(block, (None, None))[1]}
        for step in at_steps:
            row[f'val@{step}'] = mean_std([next((r['val_loss'] for r in m['evals'] if r['step'] == step), None)
                                           for m in members])[0]
        rows.append(row)
    order = list(PAPER)
    return sorted(rows, key=lambda r: (order.index(r['block']) if r['block'] in order else 99, r['group']))


def curve_bands(members, x_key, y_key, band):
    """x, mean, low, high over the eval steps every member has."""
    common = set.intersection(*({r['step'] for r in m['evals']} for m in members))
    xs, mean, low, high = [], [], [], []
    for step in sorted(common):
        rows = [next(r for r in m['evals'] if r['step'] == step) for m in members]
        if not all(is_number(r.get(x_key)) for r in rows):  # a row without this x (an older log, a bad value)
            continue
        ys = [r[y_key] for r in rows if is_number(r.get(y_key))]
        if not ys:
            continue
        mu = statistics.fmean(ys)
        sd = statistics.stdev(ys) if len(ys) > 1 else 0.0
        xs.append(statistics.fmean(r[x_key] for r in rows))
        mean.append(mu)
        low.append(mu - sd if band == 'std' else min(ys))
        high.append(mu + sd if band == 'std' else max(ys))
    return xs, mean, low, high


def plot(runs, out, x='step', band='minmax', show_train=False):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    x_key, x_label = X_AXES[x]
    groups = group_runs(runs)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sizes_seen = {}
    for i, (group, members) in enumerate(groups.items()):
        block = members[0]['block']
        colour = COLOURS.get(block, f'C{i + 4}')
        same_block = sizes_seen.setdefault(block, [])
        same_block.append(group)
        linestyle = SIZE_STYLES[(len(same_block) - 1) % len(SIZE_STYLES)]  # the same block at other sizes
        label = f'{group} ({len(members)} seed{"s" if len(members) > 1 else ""})'
        xs, mean, low, high = curve_bands(members, x_key, 'val_loss', band)
        ax.plot(xs, mean, color=colour, linestyle=linestyle, label=label)
        ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
        if show_train:
            xs, mean, _, _ = curve_bands(members, x_key, 'train_loss', band)
            ax.plot(xs, mean, color=colour, linestyle=':', alpha=0.8)
        if is_paper_scale(members[0]['config']) and block in PAPER:
            ax.axhline(PAPER[block][0], color=colour, linestyle='--', linewidth=0.8, alpha=0.7)
    ax.set(xlabel=x_label, ylabel='validation loss (cross-entropy, nats)',
           title='character-level Shakespeare' + (' (dotted: train)' if show_train else ''))
    if x != 'step':
        ax.set_xscale('log')
    all_best = min(min(r['val_loss'] for r in run['evals']) for run in runs)
    ax.set_ylim(all_best - 0.1, min(all_best + 1.2, max(r['val_loss'] for run in runs for r in run['evals'])))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [os.path.join(out, f'curves_{x}.{ext}') for ext in ('png', 'svg')]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


def fmt(value, digits=3, std=None):
    if value is None:
        return '-'
    text = f'{value:.{digits}f}'
    return text + (f' ± {std:.{digits}f}' if std is not None else '')


def write_csv(path, rows):
    """rows (dicts with the same keys) as a CSV file with a header."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_table(rows, out, at_steps):
    write_csv(os.path.join(out, 'results.csv'), rows)
    header = (['block', 'seeds', 'params', 'best val (mean ± std)', 'step within 0.01 of best', 'ms / iter']
              + [f'val @{s}' for s in at_steps] + ['paper test loss', 'paper best step'])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in rows:
        cells = [r['group'], str(r['seeds']),
                 f"{r['params']:,}" if r['params'] else '-', fmt(r['best_val_mean'], std=r['best_val_std']),
                 f"{r['step_near_best']:.0f}", fmt(r['ms_per_iter'], 1)] + [fmt(r[f'val@{s}']) for s in at_steps] + \
                [fmt(r['paper_test_loss']), str(r['paper_best_step'] or '-')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(text)
    return text


def other_than(paths, out):
    """The paths except the output folder itself (out/* names the default out/plots too)."""
    return [p for p in paths if os.path.realpath(p) != os.path.realpath(out)]


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('runs', nargs='+', help='run folders (out/...) or their log.jsonl files')
    parser.add_argument('--out', default='out/plots', help='folder for the figure and the table')
    parser.add_argument('--x', default='step', choices=list(X_AXES), help='x axis of the figure')
    parser.add_argument('--band', default='minmax', choices=['minmax', 'std'], help='spread over seeds')
    parser.add_argument('--train', action='store_true', help='also draw the train loss (dotted)')
    parser.add_argument('--at', nargs='*', type=int, default=[250, 500, 1000, 2000],
                        help='steps whose val loss the table lists')
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sys.exit(f'error: --out {args.out!r} is a file; give a folder for the figure and the table')
    runs = [run for run in map(read_run, other_than(args.runs, args.out)) if run is not None]
    if not runs:
        sys.exit('error: none of the given runs has a usable log.jsonl; train one first (python train.py CONFIG)')
    os.makedirs(args.out, exist_ok=True)
    rows = summarise(runs, args.at)
    print(write_table(rows, args.out, args.at))  # the numbers first: a failed plot loses none of them
    try:
        paths = plot(runs, args.out, args.x, args.band, args.train)
    except ImportError:
        warn('matplotlib is not installed: no figure (pip install matplotlib)')
        paths = []
    print('wrote ' + ', '.join(paths + [f'{args.out}/results.md', f'{args.out}/results.csv']))
    return rows


if __name__ == '__main__':
    run_cli(main)
