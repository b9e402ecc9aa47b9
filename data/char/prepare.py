"""
Turn any text file into a character-level dataset that train.py can read:

    python data/char/prepare.py --input my.txt --name mytext      # -> data/mytext/
    python data/char/prepare.py --input my.txt --out_dir /elsewhere/mytext

writes train.bin and val.bin (uint16 token ids: the first 90% and last 10% of the text, as
nanoGPT splits it) and meta.json (the characters, in token-id order, and the source's sha256). Running it
again on the same text rewrites the same bytes.
"""
import hashlib
import json
import os
import re
import sys

import numpy as np

DATA_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(DATA_ROOT))  # the repository, for configurator
from configurator import ArgumentParser, UsageError, run_cli  # noqa: E402


def _write_atomic(path, data: bytes):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def write_char_dataset(text, out_dir, val_fraction=0.1):
    """Build the vocabulary and the train/val split of text into out_dir; return meta."""
    if len(text) < 2:
        raise ValueError('the text has fewer than 2 characters: nothing to train on')
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise ValueError(f'{len(chars)} distinct characters do not fit uint16 token ids')
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    os.makedirs(out_dir, exist_ok=True)
    _write_atomic(os.path.join(out_dir, 'train.bin'), ids[:n_train].tobytes())
    _write_atomic(os.path.join(out_dir, 'val.bin'), ids[n_train:].tobytes())
    meta = {'chars': chars, 'vocab_size': len(chars), 'sha256': hashlib.sha256(text.encode('utf-8')).hexdigest(),
            'n_train': n_train, 'n_val': len(ids) - n_train}
    _write_atomic(os.path.join(out_dir, 'meta.json'), json.dumps(meta, ensure_ascii=False).encode('utf-8'))
    return meta


def read_text(path):
    if not os.path.isfile(path):
        raise UsageError(f'input file {path!r} does not exist' if not os.path.exists(path) else
                         f'{path!r} is not a file; give a UTF-8 text file with --input')
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UsageError(f'{path!r} is not UTF-8 text ({e.reason} at byte {e.start})') from None


def report(meta, out_dir):
    print(f"vocab size {meta['vocab_size']}: train {meta['n_train']:,} tokens, val {meta['n_val']:,} "
          f"tokens -> {out_dir}")


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--input', required=True, help='a UTF-8 text file')
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('--name', help='dataset name: writes data/<name>/, train with --dataset=<name>')
    where.add_argument('--out_dir', help='or any folder: writes there, train with --dataset=<that path>')
    args = parser.parse_args()
    if args.name is not None and not re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.-]*', args.name):
        parser.error(f'--name {args.name!r} must be a plain folder name (letters, digits, _ . -): it becomes '
                     f'data/<name>/; to write elsewhere, give --out_dir')
    out_dir = args.out_dir or os.path.join(DATA_ROOT, args.name)
    report(prepare(read_text(args.input), out_dir), out_dir)


def prepare(text, out_dir):
    """write_char_dataset, with its refusal (too little text) as a one-line error."""
    try:
        return write_char_dataset(text, out_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None


if __name__ == '__main__':
    run_cli(main)
