"""
Turn any text file into a character-level dataset that train.py can read:

    python data/char/prepare.py --input my.txt --name mytext      # -> data/mytext/

writes train.bin and val.bin (uint16 token ids: the first 90% and last 10% of the text, as
nanoGPT splits it) and meta.pkl (vocab_size, stoi, itos, and the source's sha256). Running it
again on the same text rewrites the same bytes.
"""
import hashlib
import os
import pickle
import sys

import numpy as np

DATA_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(DATA_ROOT))  # the repository, for configurator
from configurator import ArgumentParser  # noqa: E402


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
    meta = {'vocab_size': len(chars), 'stoi': stoi, 'itos': dict(enumerate(chars)),
            'sha256': hashlib.sha256(text.encode('utf-8')).hexdigest(),
            'n_train': n_train, 'n_val': len(ids) - n_train}
    _write_atomic(os.path.join(out_dir, 'meta.pkl'), pickle.dumps(meta))
    return meta


def read_text(path):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        sys.exit(f'error: input file {path!r} does not exist')
    except UnicodeDecodeError as e:
        sys.exit(f'error: {path!r} is not UTF-8 text ({e})')


def report(meta, out_dir):
    print(f"vocab size {meta['vocab_size']}: train {meta['n_train']:,} tokens, val {meta['n_val']:,} "
          f"tokens -> {out_dir}")


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--input', required=True, help='a UTF-8 text file')
    parser.add_argument('--name', required=True, help='dataset name: writes data/<name>/, train with --dataset=<name>')
    args = parser.parse_args()
    out_dir = os.path.join(DATA_ROOT, args.name)
    report(write_char_dataset(read_text(args.input), out_dir), out_dir)


if __name__ == '__main__':
    main()
