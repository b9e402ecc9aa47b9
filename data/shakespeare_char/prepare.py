"""
Tiny Shakespeare (1,115,394 characters, 65 distinct) as a character-level dataset:

    python data/shakespeare_char/prepare.py                      # downloads it
    python data/shakespeare_char/prepare.py --input PATH         # or reads a local copy

The text is Andrej Karpathy's char-rnn copy of Tiny Shakespeare (URL below). Offline, download
that file on any machine and give its path to --input: it is checked, then read from where it lies.

Checks the text's sha256 so every user trains on the same bytes as the paper and nanoGPT
(--any-text accepts another file on purpose), then writes train.bin, val.bin and meta.json
here (see minrnn/dataset.py). Idempotent: a second run finds the same text and rewrites
the same files.
"""
import argparse
import contextlib
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from minrnn import cli  # noqa: E402
cli.exit_on_interrupt()
from minrnn.cli import ArgumentParser, UsageError, run_cli  # noqa: E402
from minrnn.dataset import describe, read_text, write_char_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
HERE = os.path.dirname(os.path.abspath(__file__))


def download(path):
    import requests
    try:
        response = requests.get(URL, timeout=30)
        response.raise_for_status()
    except requests.RequestException as e:
        sys.exit(f'error: could not download Tiny Shakespeare ({type(e).__name__}); '
                 f'offline? pass a local copy with --input PATH')
    try:
        with open(path + '.tmp', 'wb') as f:
            f.write(response.content)
        os.replace(path + '.tmp', path)
    except OSError:  # a full disk: no half-written file left behind
        with contextlib.suppress(OSError):
            os.remove(path + '.tmp')
        raise


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('--input', help='a local copy of input.txt (default: download it)')
    parser.add_argument('--any-text', action='store_true', help='accept a text whose sha256 differs')
    parser.add_argument('--out_dir', default=HERE, help=argparse.SUPPRESS)  # tests write elsewhere
    args = parser.parse_args()

    path = args.input
    if path is None:
        path = os.path.join(args.out_dir, 'input.txt')
        if not os.path.exists(path):
            download(path)
    text = read_text(path)
    digest = hashlib.sha256(text.encode('utf-8')).hexdigest()
    if digest != SHA256 and not args.any_text:
        raise UsageError(f'{path} has sha256 {digest}, not Tiny Shakespeare\'s {SHA256}; '
                         f'pass --any-text to use it anyway, or data/char/prepare.py for your own text')
    print(f'{path}: sha256 matches Tiny Shakespeare\'s' if digest == SHA256 else
          f'{path}: sha256 {digest} is not Tiny Shakespeare\'s; used as asked (--any-text)')
    print(describe(write_char_dataset(text, args.out_dir), args.out_dir))


if __name__ == '__main__':
    run_cli(main)
