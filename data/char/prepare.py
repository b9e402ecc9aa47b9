"""
Turn any text file into a character-level dataset that train.py can read:

    python data/char/prepare.py --input my.txt --name mytext      # -> data/mytext/
    python data/char/prepare.py --input my.txt --out_dir /elsewhere/mytext
    python train.py config/shakespeare_char_mingru_cpu.py --dataset=mytext --out_dir=out/mytext

writes train.bin and val.bin (uint16 token ids: the first 90% and last 10% of the text, as
nanoGPT splits it) and meta.json (the characters, in token-id order, and the source's sha256).
Running it again on the same text rewrites the same bytes.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
from minrnn.cli import ArgumentParser, run_cli  # noqa: E402
from minrnn.dataset import DATA_ROOT, describe, read_text, write_char_dataset  # noqa: E402


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
    print(describe(write_char_dataset(read_text(args.input), out_dir), out_dir))


if __name__ == '__main__':
    run_cli(main)
