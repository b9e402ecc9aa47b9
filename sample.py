"""
Generate text from a trained run, streaming it as it comes:

    python sample.py --out_dir=out/shakespeare_char_mingru_cpu --start="ROMEO:" --max_new_tokens=300
    python sample.py out/shakespeare_char_mingru_cpu              # the run folder alone does too
    python sample.py --out_dir=out/... --start=FILE:prompt.txt --num_samples=3 --temperature=0.8

It says on stderr which checkpoint it read (its step and val loss), so the text on stdout is only
the samples.

Every block generates with its step path: the recurrent blocks carry a fixed-size state, so each
new character costs the same; the Transformer carries a key/value cache.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import math
import os
import sys

import torch

from minrnn import devices
from minrnn.cli import ArgumentParser, UsageError, run_cli
from minrnn.checkpoints import load_checkpoint, model_from_checkpoint

MAX_PROMPT_BYTES = 16 << 20  # a prompt file larger than this is refused: it would take minutes to read


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument('run', nargs='?', help='the run folder (the same as --out_dir)')
    parser.add_argument('--out_dir', default='out/shakespeare_char_transformer_cpu', help='the run to sample from')
    parser.add_argument('--checkpoint', default='best', choices=['best', 'latest'],
                        help='best.pt (lowest val loss) or ckpt.pt (latest)')
    parser.add_argument('--start', default='\n', help='prompt text, or FILE:path to read it from a file')
    parser.add_argument('--num_samples', type=int, default=1, help='texts to generate, one after another')
    parser.add_argument('--max_new_tokens', type=int, default=500, help='characters each text adds to the prompt')
    parser.add_argument('--temperature', type=float, default=0.8,
                        help='finite and > 0; lower is more conservative (--top_k=1 for greedy decoding)')
    parser.add_argument('--top_k', type=int, default=200, help='keep the k likeliest characters (>= 1)')
    parser.add_argument('--seed', type=int, default=1337, help='the same seed gives the same text')
    parser.add_argument('--device', default='auto', help=devices.CHOICES)
    args = parser.parse_args(argv)
    if args.run is not None:
        args.out_dir = args.run
    for name, ok, rule in [('num_samples', args.num_samples >= 1, '>= 1'),
                           ('max_new_tokens', args.max_new_tokens >= 1, '>= 1'),
                           ('temperature', 0 < args.temperature < math.inf,
                            'a finite number > 0 (for greedy decoding use --top_k=1)'),
                           ('top_k', args.top_k >= 1, '>= 1'),
                           ('seed', 0 <= args.seed < 2 ** 63, 'in [0, 2^63)')]:
        if not ok:
            parser.error(f'--{name} must be {rule}, got {getattr(args, name)}')
    return args


def encode_prompt(start, stoi):
    if start.startswith('FILE:'):
        path = start[len('FILE:'):]
        try:
            with open(path, encoding='utf-8') as f:
                start = f.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise UsageError(f'cannot read the prompt file {path!r} ({e.strerror})') from e
        except UnicodeDecodeError:
            raise UsageError(f'the prompt file {path!r} is not UTF-8 text') from None
        if len(start) > MAX_PROMPT_BYTES:
            raise UsageError(f'the prompt file {path!r} is longer than {MAX_PROMPT_BYTES:,} characters; give a shorter prompt')
    if not start:
        raise UsageError('the prompt is empty; give at least one character with --start')
    unknown = sorted(set(ch for ch in start if ch not in stoi))
    if unknown:
        raise UsageError(f'the prompt has characters the model never saw: {unknown!r}; '
                            f'use only these: {"".join(sorted(stoi))!r}')
    return [stoi[ch] for ch in start]


def sample(args, write=sys.stdout.write):
    """Generate args.num_samples texts; write() receives each piece as it is produced. Returns them."""
    device = devices.resolve(args.device)  # before the checkpoint: a bad --device is the first thing to hear
    name = 'best.pt' if args.checkpoint == 'best' else 'ckpt.pt'
    other = os.path.join(args.out_dir, 'ckpt.pt' if name == 'best.pt' else 'best.pt')
    hint = (f"use it with --checkpoint={'latest' if name == 'best.pt' else 'best'}" if os.path.exists(other) else
            f'train a model into {args.out_dir} first (python train.py CONFIG --out_dir={args.out_dir})')
    ckpt = load_checkpoint(os.path.join(args.out_dir, name), hint=hint)
    stoi, itos = ckpt['vocab']['stoi'], ckpt['vocab']['itos']
    ids = encode_prompt(args.start, stoi)
    prompt, prompt_text = torch.tensor([ids], device=device), ''.join(itos[i] for i in ids)
    model = model_from_checkpoint(ckpt).to(device).eval()
    print(f"sampling {os.path.join(args.out_dir, name)}: step {ckpt['step']}; the run's best val loss by then "
          f"{ckpt['best_val_loss']:.4f}, at step {ckpt.get('best_val_step')}", file=sys.stderr, flush=True)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    texts = []
    for k in range(args.num_samples):
        pieces = []
        write(prompt_text)
        for token in model.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, generator):
            pieces.append(itos[token.item()])
            write(pieces[-1])
        write('\n' + '-' * 40 + '\n' if k < args.num_samples - 1 else '\n')
        texts.append(''.join(pieces))
    return texts


def main(argv=None):
    args = parse_args(argv)
    with torch.no_grad():
        sample(args, write=lambda s: print(s, end='', flush=True))


if __name__ == '__main__':
    run_cli(main, interrupted='\ninterrupted')
