"""
How far past its training context each block reads: every run's best checkpoint scored on the
whole val split at several evaluation contexts, with its state carried through the split, and by
position inside a window.

    python evaluate.py out/cpu/*                                  # -> out/context/
    python evaluate.py results/... --out results/cpu/context      # (runs with their best.pt)

For each run folder (best.pt and config.json), with L the run's block_size (its training context):
- windowed: the val split cut into consecutive windows of n tokens, each read from its own start
  (train.full_split_loss, the number training logs at n = L), for n = L/4, L/2, L, 2L, 4L, 8L, 16L;
  the Transformer up to L, the length of its position table;
- carried: the recurrent blocks read the whole split as one sequence, in chunks, the state carried
  from each chunk to the next (no window at all). The Transformer's strongest fair counterpart is a
  sliding window: every token predicted from the L tokens before it;
- by position: the mean loss at each position of consecutive windows of 4L (the Transformer: L),
  which shows how much each further token of context is worth, and where it stops helping.
Writes context.csv and position.csv first, then context.md, context.png and position.png.
"""
import os
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import train
from configurator import ArgumentParser, UsageError, run_cli
from model import widen
from plot_curves import COLOURS, PAPER, fmt, mean_std, other_than, write_csv

CONTEXTS = (0.25, 0.5, 1, 2, 4, 8, 16)  # evaluation contexts, in multiples of the training context


@torch.no_grad()
def carried_state_loss(model, data, chunk, device):
    """Mean loss over every prediction of data read as one sequence, chunk tokens at a time, the state
    carried from chunk to chunk: each token is predicted from everything before it."""
    tokens = torch.from_numpy(np.asarray(data, dtype=np.int64)).to(device)
    total, states = 0.0, None
    for start in range(0, len(tokens) - 1, chunk):
        x = tokens[start:start + chunk][None]
        y = tokens[start + 1:start + 1 + chunk][None]
        logits, _, states = model(x[:, :y.shape[1]], states=states)
        total += F.cross_entropy(widen(logits[0]), y[0], reduction='sum').item()
    return total / (len(tokens) - 1)


@torch.no_grad()
def sliding_window_loss(model, data, length, batch_size, device):
    """Mean loss over every prediction of data, each from the `length` tokens before it (fewer only at
    the start): one window per prediction, its last position scored; the first window scores all."""
    tokens = torch.from_numpy(np.asarray(data, dtype=np.int64))
    n = len(tokens) - 1
    first = min(length, n)
    x, y = tokens[:first][None], tokens[1:first + 1][None]
    total = F.cross_entropy(widen(model(x.to(device))[0][0]), y[0].to(device), reduction='sum').item()
    ends = list(range(first + 1, n + 1))  # window [end - length, end) predicts token `end`
    for i in range(0, len(ends), batch_size):
        group = ends[i:i + batch_size]
        x = torch.stack([tokens[end - length:end] for end in group]).to(device)
        logits = widen(model(x)[0][:, -1])
        total += F.cross_entropy(logits, tokens[group].to(device), reduction='sum').item()
    return total / n


@torch.no_grad()
def position_losses(model, data, length, batch_size, device):
    """The mean loss at each position 1..length of consecutive full windows of `length` tokens."""
    tokens = torch.from_numpy(np.asarray(data, dtype=np.int64))
    starts = list(range(0, len(tokens) - 1 - length + 1, length))
    total = torch.zeros(length, dtype=torch.float64)
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        x = torch.stack([tokens[s:s + length] for s in group]).to(device)
        y = torch.stack([tokens[s + 1:s + 1 + length] for s in group]).to(device)
        logits = widen(model(x)[0])
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction='none')  # (batch, length)
        total += losses.sum(0).double().cpu()
    return (total / len(starts)).tolist()


def evaluate_run(run_dir, device, bar):
    """The rows of context.csv and position.csv for one run."""
    ckpt = train.load_checkpoint(os.path.join(run_dir, 'best.pt'), hint=f'{run_dir} has no best.pt to evaluate')
    config = ckpt['config']
    _, val, _ = train.load_dataset(config)
    model = train.model_from_checkpoint(ckpt).to(device).eval()
    block, L, batch = config['block'], config['block_size'], config['batch_size']
    recurrent = block != 'transformer'
    who = {'run': os.path.basename(os.path.normpath(run_dir)), 'block': block, 'seed': config['seed'],
           'block_size': L, 'checkpoint_step': ckpt['step']}
    rows = []
    for multiple in CONTEXTS:
        n = max(1, round(multiple * L))
        if n <= L or recurrent:
            rows.append({**who, 'context': n, 'how': 'windowed',
                         'val_loss': train.full_split_loss(model, val, n, max(1, batch * L // n), device)})
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
    mean, std = mean_std(values)
    return fmt(mean, std=std)


def table(rows):
    """Markdown: one row per block, one column per evaluation context (mean ± std over seeds)."""
    blocks = [b for b in PAPER if any(r['block'] == b for r in rows)]
    columns = sorted({r['context'] for r in rows if r['how'] == 'windowed'})
    header = ['block', 'seeds'] + [f'{c} tokens' for c in columns] + ['carried state / sliding window']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for block in blocks:
        mine = [r for r in rows if r['block'] == block]
        cells = [block, str(len({r['seed'] for r in mine}))]
        for c in columns:
            values = [r['val_loss'] for r in mine if r['how'] == 'windowed' and r['context'] == c]
            cells.append(mean_std_text(values) if values else '-')
        rest = [r['val_loss'] for r in mine if r['how'] != 'windowed']
        kind = 'carried' if any(r['how'] == 'carried' for r in mine) else 'sliding'
        cells.append(f'{mean_std_text(rest)} ({kind})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows, positions, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    blocks = [b for b in PAPER if any(r['block'] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for block in blocks:
        mine = [r for r in rows if r['block'] == block and r['how'] == 'windowed']
        contexts = sorted({r['context'] for r in mine})
        means = [statistics.fmean(r['val_loss'] for r in mine if r['context'] == c) for c in contexts]
        ax.plot(contexts, means, marker='o', color=COLOURS[block], label=f'{block}: windows of n tokens')
        rest = [r['val_loss'] for r in rows if r['block'] == block and r['how'] != 'windowed']
        how = 'carried state, whole split' if block != 'transformer' else 'sliding window of its context'
        ax.axhline(statistics.fmean(rest), color=COLOURS[block], linestyle='--', linewidth=1, label=f'{block}: {how}')
    train_context = rows[0]['block_size']
    ax.axvline(train_context, color='grey', linestyle=':', linewidth=1, label=f'training context ({train_context})')
    ax.set(xscale='log', xlabel='evaluation context n (tokens)', ylabel='val loss (whole split, nats)',
           title='loss against evaluation context (mean over seeds)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'context.png'), dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for block in blocks:  # positions in octaves (1, 2, 3-4, 5-8, ...): a single position is noisy
        mine = [r for r in positions if r['block'] == block]
        octave = lambda p: (p - 1).bit_length()
        octaves = sorted({octave(r['position']) for r in mine})
        xs = [statistics.fmean({r['position'] for r in mine if octave(r['position']) == k}) for k in octaves]
        means = [statistics.fmean(r['val_loss'] for r in mine if octave(r['position']) == k) for k in octaves]
        ax.plot(xs, means, marker='o', color=COLOURS[block], label=block)
    ax.axvline(train_context, color='grey', linestyle=':', linewidth=1, label=f'training context ({train_context})')
    ax.set(xscale='log', xlabel='position in the window (tokens of context + 1), in octaves',
           ylabel='mean val loss (nats)', title='loss by position inside a window (mean over windows and seeds)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'position.png'), dpi=130)
    plt.close(fig)


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('runs', nargs='+', help='run folders, each with best.pt')
    parser.add_argument('--out', default='out/context', help='folder for the CSVs, table and figures')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out!r} is a file; give a folder')
    train.check_device(args.device)
    runs = other_than(args.runs, args.out)
    missing = [r for r in runs if not os.path.isfile(os.path.join(r, 'best.pt'))]
    if missing:
        raise UsageError(f"no best.pt in {', '.join(missing)}; give run folders that finished training")
    rows, positions = [], []
    with tqdm(total=len(runs) * (len(CONTEXTS) + 2), desc='evaluate', dynamic_ncols=True) as bar:
        for run in runs:
            bar.set_postfix_str(os.path.basename(os.path.normpath(run)))
            run_rows, run_positions = evaluate_run(run, args.device, bar)
            rows += run_rows
            positions += run_positions
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, 'context.csv'), rows)
    write_csv(os.path.join(args.out, 'position.csv'), positions)
    text = table(rows)
    with open(os.path.join(args.out, 'context.md'), 'w') as f:
        f.write(text)
    print(text)
    plot(rows, positions, args.out)
    print(f'wrote {args.out}/: context.csv, position.csv, context.md, context.png, position.png')
    return rows, positions


if __name__ == '__main__':
    run_cli(main)
