"""Shared fixtures: the repository on sys.path, a small character dataset, tiny model configs."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Without a GPU, Triton's kernels (gpu_kernels.py) run on CPU tensors in its interpreter; the variable
# must be set before they are defined, that is before gpu_kernels is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
SHAKESPEARE = os.environ.get('TINY_SHAKESPEARE',
                             os.path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt'))

# A model small enough for a CPU test to train in seconds.
TINY = ['--n_layer=2', '--n_embd=32', '--n_head=2', '--block_size=32', '--batch_size=8', '--eval_iters=4',
        '--device=cpu', '--progress=False', '--warmup_iters=5', '--dropout=0.0']


def small_text():
    """The first 60k characters of Tiny Shakespeare where a copy lies beside the checkout (CI), else a
    synthetic play of about the same size: the tests pass on either, so they read prompts from it."""
    if os.path.exists(SHAKESPEARE):
        with open(SHAKESPEARE, encoding='utf-8') as f:
            return f.read(60_000)
    import random
    rng = random.Random(0)
    speakers = ['First Citizen', 'MENENIUS', 'ROMEO', 'JULIET', 'KING RICHARD II']
    words = ['thou', 'art', 'the', 'king', 'of', 'rome', 'and', 'love', 'my', 'lord', 'sweet', 'night', 'O']
    speeches = (f"{rng.choice(speakers)}:\n{' '.join(rng.choice(words) for _ in range(12)).capitalize()}"
                f"{rng.choice('.,;!?')}\n" for _ in range(700))
    return '\n'.join(speeches)


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
    from minrnn.dataset import write_char_dataset
    folder = str(tmp_path_factory.mktemp('tiny_dataset'))
    write_char_dataset(small_text(), folder)
    return folder


def read_log(out_dir, kind=None):
    """The rows of a run's log.jsonl, or only those of one kind ('meta', 'eval', 'train')."""
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return rows if kind is None else [row for row in rows if row['kind'] == kind]


# How long a test waits for a subprocess to do what it waits for: generous, for a loaded 2-core machine
# (a test waits for a condition, never a fixed time; this deadline only turns a hang into a failure).
DEADLINE = float(os.environ.get('MINRNN_TEST_DEADLINE', 900))


def run_script(*args, timeout=DEADLINE, **kwargs):
    """Run a repository script in a fresh interpreter; returns the CompletedProcess. Past timeout the
    test fails saying it timed out (not that the script misbehaved)."""
    try:
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f'timed out after {timeout:.0f} s waiting for {" ".join(map(str, args))[:200]}')


def wait_for(condition, what, process=None, deadline=DEADLINE):
    """Poll condition() until it holds; fail, saying it timed out, after deadline seconds, or at once
    where process has ended without it holding."""
    import time
    end = time.monotonic() + deadline
    while not condition():
        if process is not None and process.poll() is not None:
            if condition():
                return
            pytest.fail(f'the process ended (status {process.returncode}) before {what}')
        if time.monotonic() > end:
            pytest.fail(f'timed out after {deadline:.0f} s waiting for {what}')
        time.sleep(0.05)


def finish(process, what='the process to end', deadline=DEADLINE):
    """communicate() with a deadline that fails the test, saying it timed out: (stdout, stderr). Where
    Lines readers already hold the streams, it only waits, and returns what they read."""
    try:
        if isinstance(getattr(process, 'readers', None), tuple):
            process.wait(timeout=deadline)
            return tuple(reader.text() for reader in process.readers)
        return process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f'timed out after {deadline:.0f} s waiting for {what}')


def watch(process):
    """Lines readers of the process's stdout and stderr, which finish() then waits beside."""
    process.readers = (Lines(process.stdout), Lines(process.stderr))
    return process.readers


class Lines:
    """Reads a text stream of a process on a thread: has(text) tells whether a line holding text has
    come yet; text() all that came."""

    def __init__(self, stream):
        import threading
        self.lines = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, '')), daemon=True)
        self.thread.start()

    def has(self, text):
        return any(text in line for line in list(self.lines))

    def text(self):
        self.thread.join(timeout=60)
        return ''.join(self.lines)


def interruptible():
    """Popen keywords for a child that a test will send SIGINT: a shell that started this run in
    the background may have left SIGINT ignored, and a child would inherit that."""
    import signal
    return {'preexec_fn': lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


def assert_one_error_line(result, *fragments):
    """A finished subprocess that failed with exactly one `error:` line on stderr."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout[-2000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
