"""
How far past its training context each block reads: every run's best checkpoint scored on the
whole val split at several evaluation contexts, with its state carried through the split, and by
position inside a window.

    python evaluate.py out/cpu/*                                  # -> out/context/
    python evaluate.py results/... --out results/cpu/context      # (runs with their best.pt)

For each run folder (best.pt and config.json), with L the run's block_size (its training context):
- windowed: the val split cut into consecutive windows of n tokens, each read from its own start
  (scoring.full_split_loss, the number training logs at n = L), for n = L/4, L/2, L, 2L, 4L, 8L, 16L;
  the Transformer up to L, the length of its position table;
- carried: the recurrent blocks read the whole split as one sequence, in chunks, the state carried
  from each chunk to the next (no window at all). The Transformer's strongest fair counterpart is a
  sliding window: every token predicted from the L tokens before it;
- by position: the mean loss at each position of consecutive windows of 4L (the Transformer: L),
  which shows how much each further token of context is worth, and where it stops helping.
Writes context.csv and position.csv first, then context.md, context.png and position.png.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import os
import statistics

from tqdm import tqdm

from minrnn import devices
from minrnn import report
from minrnn import checkpoints, runs
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.dataset import load_dataset
from minrnn.blocks import BLOCKS
from minrnn.scoring import carried_state_loss, full_split_loss, position_losses, sliding_window_loss

CONTEXTS = (0.25, 0.5, 1, 2, 4, 8, 16)  # evaluation contexts, in multiples of the training context


def evaluate_run(run_dir, series, ckpt, model, device, bar):
    """The rows of context.csv and position.csv for one run."""
    model = model.to(device).eval()
    config = {**ckpt['config'], **model.config.asdict()}
    _, val, _ = load_dataset(config['dataset'], config['block_size'])
    block, L, batch = config['block'], config['block_size'], config['batch_size']
    recurrent = BLOCKS[block].recurrent
    who = {'run': os.path.basename(os.path.normpath(run_dir)), 'series': series, 'block': block, 'seed': config['seed'],
           'block_size': L, 'checkpoint_step': ckpt['step']}
    rows = []
    for multiple in CONTEXTS:
        n = max(1, round(multiple * L))
        if n <= L or recurrent:
            rows.append({**who, 'context': n, 'how': 'windowed',
                         'val_loss': full_split_loss(model, val, n, device)})
        bar.update(1)
    if recurrent:
        rows.append({**who, 'context': 'all', 'how': 'carried', 'val_loss': carried_state_loss(model, val, 16 * L, device)})
    else:
        rows.append({**who, 'context': L, 'how': 'sliding', 'val_loss': sliding_window_loss(model, val, L, 4 * batch, device)})
    bar.update(1)
    length = 4 * L if recurrent else L
    positions = [{**who, 'position': p, 'val_loss': loss}
                 for p, loss in enumerate(position_losses(model, val, length, max(1, batch // 4), device), 1)]
    bar.update(1)
    return rows, positions


def mean_std_text(values):
    mean, std = report.mean_std(values)
    return report.fmt(mean, std=std)


def series_names(rows):
    """The series of the rows, in the registry's order of their blocks."""
    names = dict.fromkeys(r['series'] for r in rows)
    block_of = {r['series']: r['block'] for r in rows}
    return sorted(names, key=lambda s: report.block_order(block_of[s]))


def table(rows):
    """Markdown: one row per series, one column per evaluation context (mean ± std over seeds)."""
    columns = sorted({r['context'] for r in rows if r['how'] == 'windowed'})
    header = ['series', 'seeds'] + [f'{c} tokens' for c in columns] + ['carried state / sliding window']
    lines = []
    for series in series_names(rows):
        mine = [r for r in rows if r['series'] == series]
        cells = [series, str(len({r['seed'] for r in mine}))]
        for c in columns:
            values = [r['val_loss'] for r in mine if r['how'] == 'windowed' and r['context'] == c]
            cells.append(mean_std_text(values) if values else '-')
        rest = [r['val_loss'] for r in mine if r['how'] != 'windowed']
        kind = 'carried' if any(r['how'] == 'carried' for r in mine) else 'sliding'
        cells.append(f'{mean_std_text(rest)} ({kind})')
        lines.append(cells)
    return report.markdown_table(header, lines)


def plot(rows, positions, out):
    plt = report.pyplot()
    colours = {r['series']: report.colour(r['block']) for r in rows}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for block in series_names(rows):
        mine = [r for r in rows if r['series'] == block and r['how'] == 'windowed']
        contexts = sorted({r['context'] for r in mine})
        means = [statistics.fmean(r['val_loss'] for r in mine if r['context'] == c) for c in contexts]
        ax.plot(contexts, means, marker='o', color=colours[block], label=f'{block}: windows of n tokens')
        rest = [r for r in rows if r['series'] == block and r['how'] != 'windowed']
        how = 'carried state, whole split' if rest[0]['how'] == 'carried' else 'sliding window of its context'
        ax.axhline(statistics.fmean(r['val_loss'] for r in rest), color=colours[block], linestyle='--', linewidth=1,
                   label=f'{block}: {how}')
    train_context = rows[0]['block_size']
    ax.axvline(train_context, color='grey', linestyle=':', linewidth=1, label=f'training context ({train_context})')
    ax.set(xscale='log', xlabel='evaluation context n (tokens)', ylabel='val loss (whole split, nats)',
           title='loss against evaluation context (mean over seeds)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = report.save(fig, os.path.join(out, 'context'))

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for block in series_names(rows):  # positions in octaves (1, 2, 3-4, 5-8, ...): a single position is noisy
        mine = [r for r in positions if r['series'] == block]
        octave = lambda p: (p - 1).bit_length()
        octaves = sorted({octave(r['position']) for r in mine})
        xs = [statistics.fmean({r['position'] for r in mine if octave(r['position']) == k}) for k in octaves]
        means = [statistics.fmean(r['val_loss'] for r in mine if octave(r['position']) == k) for k in octaves]
        ax.plot(xs, means, marker='o', color=colours[block], label=block)
    ax.axvline(train_context, color='grey', linestyle=':', linewidth=1, label=f'training context ({train_context})')
    ax.set(xscale='log', xlabel='position in the window (tokens of context + 1), in octaves',
           ylabel='mean val loss (nats)', title='loss by position inside a window (mean over windows and seeds)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return paths + report.save(fig, os.path.join(out, 'position'))


def read_runs(paths):
    """[(run folder, its series label, best.pt)], series as plot_curves.py forms them."""
    found = []
    for path in paths:
        ckpt = checkpoints.load_checkpoint(os.path.join(path, 'best.pt'), hint=f'{path} has no best.pt: give run folders '
                                                                        f'that finished training')
        model = checkpoints.model_from_checkpoint(ckpt)  # its model_config checked, before any work
        if not isinstance(ckpt['config'], dict) or not {'dataset', 'batch_size', 'seed'} <= ckpt['config'].keys():
            raise UsageError(f'{path}: the checkpoint holds no training configuration to evaluate it by; use a '
                             f'checkpoint this project wrote')
        found.append({'path': path, 'real_path': os.path.realpath(path), 'block': model.config.block,
                      'config': ckpt['config'], 'ckpt': ckpt, 'model': model})
    return [(run['path'], label, run['ckpt'], run['model']) for label, members in runs.group_series(found)
            for run in members]


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('runs', nargs='+', help='run folders, each with best.pt')
    parser.add_argument('--out', default='out/context', help='folder for the CSVs, table and figures')
    parser.add_argument('--device', default='auto', help=devices.CHOICES)
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out!r} is a file; give a folder')
    device = devices.resolve(args.device)
    found = read_runs(report.other_than(args.runs, args.out))
    if not found:
        raise UsageError('no run to evaluate: give run folders with best.pt')
    rows, positions = [], []
    with tqdm(total=len(found) * (len(CONTEXTS) + 2), desc='evaluate', dynamic_ncols=True) as bar:
        for path, series, ckpt, model in found:
            bar.set_postfix_str(os.path.basename(os.path.normpath(path)))
            run_rows, run_positions = evaluate_run(path, series, ckpt, model, device, bar)
            rows += run_rows
            positions += run_positions
    os.makedirs(args.out, exist_ok=True)
    report.write_csv(os.path.join(args.out, 'context.csv'), rows)
    report.write_csv(os.path.join(args.out, 'position.csv'), positions)
    text = table(rows)
    with open(os.path.join(args.out, 'context.md'), 'w') as f:
        f.write(text)
    print(text)
    try:
        plot(rows, positions, args.out)
    except ImportError:
        runs.warn('matplotlib is not installed: no figures (pip install matplotlib)')
    print(f'wrote {args.out}/: context.csv, position.csv, context.md, context.png / .svg, position.png / .svg')
    return rows, positions


if __name__ == '__main__':
    run_cli(main)
