"""
Scoring a model on a split: the numbers in every log, table and figure.

    full_split_loss      every prediction of a split exactly once, in windows of the training
                         context: the val loss that training logs (deterministic)
    estimate_loss        eval_iters random batches: the train loss that training logs (an estimate)
    carried_state_loss   the whole split read as one sequence, the state carried (recurrent blocks)
    sliding_window_loss  every token from the `length` tokens before it (the Transformer's counterpart)
    position_losses      the mean loss at each position of a window
"""
import contextlib

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from minrnn.dataset import get_batch, split_windows
from minrnn.scan import widen


def _nothing():
    pass


@torch.no_grad()
def estimate_loss(model, data, iters, batch_size, block_size, seed, device, autocast, rank, world, on_batch=_nothing):
    """Mean loss over eval_iters random batches (the same ones at every evaluation: a generator
    seeded afresh), shared among the processes. Used for the train split, a quick estimate.
    on_batch() is called after each batch this process scores (a progress bar)."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for k in range(iters):
        x, y = get_batch(data, batch_size, block_size, generator, device)
        if k % world == rank:
            with autocast:
                total += model(x, y)[1].double()
            on_batch()
    if world > 1:
        dist.all_reduce(total)
    return total.item() / iters


# Tokens in one batch of a whole-split score, whatever the training batch: a 20-step run at batch 2
# would otherwise spend its time in thousands of tiny forward passes. 16,384 is the paper recipe's
# training batch (64 x 256), which fits wherever that trains (scoring keeps no activations).
EVAL_BATCH_TOKENS = 16_384


def split_batches(n_tokens, block_size, batch_tokens=EVAL_BATCH_TOKENS):
    """The batches full_split_loss scores a split of n_tokens in: (window starts, their length)."""
    return split_windows(n_tokens, block_size, max(1, batch_tokens // block_size))


@torch.no_grad()
def full_split_loss(model, data, block_size, device, autocast=contextlib.nullcontext(), rank=0, world=1,
                    batch_tokens=EVAL_BATCH_TOKENS, on_batch=_nothing):
    """Mean loss over every prediction of a split exactly once (split_windows), each token predicted
    from the context inside its window, as in training: the deterministic number for curves and
    tables, where an estimate from a few random batches carries sampling noise. Windows go in
    batches of about batch_tokens, shared among the processes; the batching does not change the
    number (beyond float rounding)."""
    tokens = torch.from_numpy(np.asarray(data, dtype=np.int64))
    total = torch.zeros(2, device=device, dtype=torch.float64)  # summed loss, predictions
    for k, (starts, length) in enumerate(split_batches(len(tokens), block_size, batch_tokens)):
        if k % world != rank:
            continue
        x = torch.stack([tokens[s:s + length] for s in starts]).to(device)
        y = torch.stack([tokens[s + 1:s + 1 + length] for s in starts]).to(device)
        with autocast:
            logits = model(x)[0]
        total[0] += F.cross_entropy(widen(logits.flatten(0, 1)), y.flatten(), reduction='sum').double()
        total[1] += y.numel()
        on_batch()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


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
