"""
Character-level datasets: writing them (data/*/prepare.py), reading and checking them (every
script that trains or scores), and cutting them into batches.

A dataset folder holds train.bin and val.bin (uint16 token ids: the first 90% and last 10% of the
text, as nanoGPT splits it) and meta.json (the characters in token-id order, and the text's sha256).
Nothing in it can run code: the vocabulary is JSON, the splits raw integers.
"""
import contextlib
import hashlib
import json
import os

import numpy as np
import torch

from minrnn.cli import UsageError

DATA_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


class DatasetError(UsageError):
    """A dataset that is missing or damaged: one line, with the command that prepares it."""


# ----------------------------------------------------------------------------- writing

def write_atomic(path, data: bytes):
    """Written whole or not at all: a full disk leaves the old file, and no .tmp beside it."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_char_dataset(text, out_dir, val_fraction=0.1):
    """Build the vocabulary and the train/val split of text into out_dir; return meta. Running it again
    on the same text rewrites the same bytes."""
    if len(text) < 2:
        raise UsageError('the text has fewer than 2 characters: nothing to train on')
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise UsageError(f'{len(chars)} distinct characters do not fit uint16 token ids')
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, 'train.bin'), ids[:n_train].tobytes())
    write_atomic(os.path.join(out_dir, 'val.bin'), ids[n_train:].tobytes())
    meta = {'chars': chars, 'vocab_size': len(chars), 'sha256': hashlib.sha256(text.encode('utf-8')).hexdigest(),
            'n_train': n_train, 'n_val': len(ids) - n_train}
    write_atomic(os.path.join(out_dir, 'meta.json'), json.dumps(meta, ensure_ascii=False).encode('utf-8'))
    return meta


def describe(meta, out_dir):
    return (f"vocab size {meta['vocab_size']}: train {meta['n_train']:,} tokens, val {meta['n_val']:,} "
            f"tokens -> {out_dir}")


def read_text(path):
    """A UTF-8 text file's contents, or a one-line error."""
    if not os.path.isfile(path):
        raise UsageError(f'input file {path!r} does not exist' if not os.path.exists(path) else
                         f'{path!r} is not a file; give a UTF-8 text file with --input')
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UsageError(f'{path!r} is not UTF-8 text ({e.reason} at byte {e.start})') from None


# ----------------------------------------------------------------------------- reading

def folder_of(name):
    """data/<name>, or name itself where it is a path."""
    return name if os.sep in name else os.path.join(DATA_ROOT, name)


def prepare_command(name):
    if name == 'shakespeare_char':
        return 'python data/shakespeare_char/prepare.py'
    return f"python data/char/prepare.py --input YOUR.txt {'--out_dir' if os.sep in name else '--name'} {name}"


def load_dataset(name, block_size):
    """(train, val) token arrays (memory-mapped) and the vocabulary of a dataset; every file is checked
    before use."""
    folder, prepare = folder_of(name), prepare_command(name)
    paths = {file: os.path.join(folder, file) for file in ('train.bin', 'val.bin', 'meta.json')}
    missing = [file for file, path in paths.items() if not os.path.isfile(path)]
    if missing:
        older = ' (meta.pkl is from an older version and no longer read: unpickling can run code)' \
            if os.path.exists(os.path.join(folder, 'meta.pkl')) else ''
        raise DatasetError(f"dataset {name!r} is not prepared ({', '.join(missing)} missing in {folder}{older}); "
                           f'run: {prepare}')
    meta = read_meta(paths['meta.json'], f'prepare it again: {prepare}')
    splits = [read_split(paths[f'{split}.bin'], split, name, block_size, meta, prepare) for split in ('train', 'val')]
    return splits[0], splits[1], meta


def read_split(path, split, name, block_size, meta, prepare):
    size = os.path.getsize(path)
    if size % 2:
        raise DatasetError(f'{path} has {size} bytes, not a whole number of uint16 tokens; prepare it again: {prepare}')
    data = np.memmap(path, dtype=np.uint16, mode='r') if size else np.zeros(0, np.uint16)
    if len(data) < block_size + 1:
        raise DatasetError(f"the {split} split of {name!r} has {len(data)} tokens, fewer than "
                           f"block_size + 1 = {block_size + 1}; lower --block_size or prepare a longer text")
    if data.max() >= meta['vocab_size']:
        raise DatasetError(f"{path} holds token ids up to {data.max()}, beyond the vocabulary of "
                           f"{meta['vocab_size']} in meta.json; prepare it again: {prepare}")
    return data


def read_meta(path, fix):
    """vocab_size, stoi and itos from a dataset's meta.json."""
    try:
        with open(path, encoding='utf-8') as f:
            chars = json.load(f)['chars']
        ok = isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars) \
            and len(set(chars)) == len(chars)
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # not JSON, not UTF-8, no 'chars', nested too deep
        raise DatasetError(f'{path} is not a readable vocabulary ({type(e).__name__}); {fix}') from None
    if not ok:
        raise DatasetError(f"{path}: 'chars' is not a list of distinct characters; {fix}")
    return {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}


# ----------------------------------------------------------------------------- batches

def get_batch(data, batch_size, block_size, generator, device):
    """batch_size random windows of block_size tokens and their next-token targets."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([data[i:i + block_size] for i in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64))
    if device.startswith('cuda'):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def split_windows(n_tokens, block_size, batch_size):
    """Batches of window starts and their common length that cover every prediction of a split of
    n_tokens once: consecutive windows of block_size (the last one shorter, in a batch of its own)."""
    n_predictions = n_tokens - 1
    full_starts = list(range(0, n_predictions - block_size + 1, block_size))
    batches = [(full_starts[i:i + batch_size], block_size) for i in range(0, len(full_starts), batch_size)]
    rest = n_predictions - len(full_starts) * block_size
    if rest:
        batches.append(([len(full_starts) * block_size], rest))
    return batches
