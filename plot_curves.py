"""
The paper's figure and table from any set of runs: validation loss against step, one colour per
block, the mean over seeds as a line and the spread as a band.

    python plot_curves.py out/cpu/*            # run folders (or their log.jsonl files)
    python plot_curves.py out/cpu/* --x time --train --band std --out results/cpu

Runs are grouped by their out_dir with any _seed<N> suffix removed (one group = one config, several
seeds). Writes curves_<x>.png / .svg, results.md and results.csv into --out. A run whose log is
missing, empty, half-written or from an older format is skipped with a warning naming it.
"""
import argparse
import csv
import json
import os
import re
import statistics
import sys
import warnings

LOG_FORMAT = 1
# The paper's Shakespeare results (Feng et al. 2024): test loss, and the step near which each is best.
PAPER = {'transformer': (1.547, 2000), 'mingru': (1.548, 575), 'minlstm': (1.555, 625), 'mamba': (1.575, 400)}
COLOURS = {'transformer': 'tab:blue', 'mingru': 'tab:orange', 'minlstm': 'tab:green', 'mamba': 'tab:red'}
X_AXES = {'step': ('step', 'training step'), 'time': ('time', 'wall-clock seconds'), 'tokens': ('tokens', 'tokens seen')}


def read_run(path):
    """A run's meta, eval rows, train rows and full-split result; None (with a warning) if unusable."""
    log_path = path if path.endswith('.jsonl') else os.path.join(path, 'log.jsonl')
    run_dir = os.path.dirname(log_path)
    if not os.path.exists(log_path):
        warnings.warn(f'skipping {log_path}: no such file')
        return None
    meta, evals, trains = None, [], []
    with open(log_path) as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f'{log_path}:{number}: unreadable line skipped (a write cut short?)')
                continue
            kind = row.get('kind') if isinstance(row, dict) else None
            if kind == 'meta':
                meta = row
            elif kind == 'eval' and {'step', 'val_loss'} <= row.keys():
                evals.append(row)
            elif kind == 'train' and {'step', 'ms_per_iter'} <= row.keys():
                trains.append(row)
    if meta is None or meta.get('format') != LOG_FORMAT:
        warnings.warn(f'skipping {log_path}: no log header of format {LOG_FORMAT} (an older or foreign log)')
        return None
    if not evals:
        warnings.warn(f'skipping {log_path}: no evaluation rows yet')
        return None
    full = None
    full_path = os.path.join(run_dir, 'full_val.json')
    if os.path.exists(full_path):
        try:
            with open(full_path) as f:
                full = json.load(f)['val_loss_full']
        except (json.JSONDecodeError, KeyError, OSError):
            warnings.warn(f'{full_path} unreadable; its val (full) is left out')
    config = meta.get('config', {})
    group = re.sub(r'_seed\d+$', '', os.path.basename(os.path.normpath(config.get('out_dir', run_dir))))
    return {'path': log_path, 'group': group, 'block': meta.get('block', '?'), 'params': meta.get('params'),
            'config': config, 'evals': sorted(evals, key=lambda r: r['step']), 'trains': trains, 'full': full}


def group_runs(runs):
    """group -> its runs (the seeds of one config), in the order first seen."""
    groups = {}
    for run in runs:
        groups.setdefault(run['group'], []).append(run)
    return groups


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


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
        full_mean, full_std = mean_std([m['full'] for m in members])
        ms = [statistics.fmean(t['ms_per_iter'] for t in m['trains']) for m in members if m['trains']]
        row = {'group': group, 'block': block, 'seeds': len(members), 'params': members[0]['params'],
               'best_val_mean': best_mean, 'best_val_std': best_std,
               'step_near_best': statistics.fmean(step_near_best(m['evals']) for m in members),
               'val_full_mean': full_mean, 'val_full_std': full_std,
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
        ys = [r[y_key] for r in rows if r.get(y_key) is not None]
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
    for i, (group, members) in enumerate(groups.items()):
        block = members[0]['block']
        colour = COLOURS.get(block, f'C{i + 4}')
        shared = sum(g[0]['block'] == block for g in groups.values()) > 1  # e.g. cpu and paper scale
        label = f'{group if shared else block} ({len(members)} seed{"s" if len(members) > 1 else ""})'
        xs, mean, low, high = curve_bands(members, x_key, 'val_loss', band)
        ax.plot(xs, mean, color=colour, label=label)
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


def write_table(rows, out, at_steps):
    with open(os.path.join(out, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = (['block', 'seeds', 'params', 'best val (mean ± std)', 'step within 0.01 of best', 'val (full)',
               'ms / iter'] + [f'val @{s}' for s in at_steps] + ['paper test loss', 'paper best step'])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in rows:
        cells = [r['group'] if r['group'] != r['block'] else r['block'], str(r['seeds']),
                 f"{r['params']:,}" if r['params'] else '-', fmt(r['best_val_mean'], std=r['best_val_std']),
                 f"{r['step_near_best']:.0f}", fmt(r['val_full_mean'], std=r['val_full_std']),
                 fmt(r['ms_per_iter'], 1)] + [fmt(r[f'val@{s}']) for s in at_steps] + \
                [fmt(r['paper_test_loss']), str(r['paper_best_step'] or '-')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run folders (out/...) or their log.jsonl files')
    parser.add_argument('--out', default='out/plots', help='folder for the figure and the table')
    parser.add_argument('--x', default='step', choices=list(X_AXES), help='x axis of the figure')
    parser.add_argument('--band', default='minmax', choices=['minmax', 'std'], help='spread over seeds')
    parser.add_argument('--train', action='store_true', help='also draw the train loss (dotted)')
    parser.add_argument('--at', nargs='*', type=int, default=[250, 500, 1000, 2000],
                        help='steps whose val loss the table lists')
    args = parser.parse_args(argv)
    runs = [run for run in map(read_run, args.runs) if run is not None]
    if not runs:
        sys.exit('error: none of the given runs has a usable log.jsonl; train one first (python train.py CONFIG)')
    os.makedirs(args.out, exist_ok=True)
    paths = plot(runs, args.out, args.x, args.band, args.train)
    rows = summarise(runs, args.at)
    print(write_table(rows, args.out, args.at))
    print('wrote ' + ', '.join(paths) + f', {args.out}/results.md, {args.out}/results.csv')
    return rows


if __name__ == '__main__':
    main()
