"""Interruptions, numerical faults, bad input, determinism, distributed failure and a soak."""
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from minrnn import cpu_kernels
import model
import sample
import train
from minrnn import checkpoints
from conftest import ROOT, TINY, finish, interruptible, read_log, wait_for

SLOW_TINY = [a for a in TINY if not a.startswith('--batch_size')] + ['--batch_size=16']


def train_command(dataset, out_dir, *extra):
    return [sys.executable, 'train.py', f'--dataset={dataset}', f'--out_dir={out_dir}', *SLOW_TINY, *extra]


def wait_for_step(out_dir, step, process):
    def reached():
        try:
            return any(r['step'] >= step for r in read_log(out_dir, 'train'))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
    wait_for(reached, f'training to reach step {step}', process)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_exits_128_plus_its_number_and_resume_matches_the_uninterrupted_run(tmp_path, tiny_dataset, sig):
    run = ['--max_iters=600', '--lr_decay_iters=600', '--eval_interval=100', '--log_interval=1']
    full = tmp_path / 'full'
    subprocess.run(train_command(tiny_dataset, full, *run), cwd=ROOT, check=True, capture_output=True)

    part = tmp_path / 'part'
    process = subprocess.Popen(train_command(tiny_dataset, part, *run), cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(str(part), 30, process)
    process.send_signal(sig)
    stdout, stderr = finish(process)
    assert process.returncode == 128 + sig, stderr  # 130 / 143: a shell's `&&` stops there
    message = stdout.strip().splitlines()[-1]
    assert message.startswith(f'{sig.name}: saved') and message.endswith('--init_from=resume'), message
    stopped_at = checkpoints.load_checkpoint(str(part / 'ckpt.pt'))['step']
    assert f'at step {stopped_at}.' in message and stopped_at < 600

    subprocess.run(train_command(tiny_dataset, part, *run, '--init_from=resume'), cwd=ROOT, check=True,
                   capture_output=True)
    evals = lambda d: [(r['step'], r['train_loss'], r['val_loss']) for r in read_log(str(d), 'eval')]
    assert evals(part) == evals(full)
    losses = lambda d: [(r['step'], r['loss']) for r in read_log(str(d), 'train')]
    assert losses(part) == losses(full)  # every step's loss, bit for bit, and none logged twice


def test_interrupting_reproduce_lets_the_run_save_and_stops_in_one_line(tmp_path, tiny_dataset):
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [sys.executable, 'reproduce.py', '--seeds', '1', '--blocks', 'mingru', '--out_root', str(out),
         '--results', str(tmp_path / 'results'), '--', f'--dataset={tiny_dataset}', *TINY, '--max_iters=100000',
         '--lr_decay_iters=100000', '--eval_interval=100000', '--log_interval=1'],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **interruptible())
    try:
        wait_for_step(str(out / 'mingru_seed0'), 20, process)
        process.send_signal(signal.SIGINT)  # to reproduce.py alone, as `kill -INT` would: it must pass it on
        stdout, stderr = finish(process)
    finally:  # a failed test leaves no 100000-step run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and 'Traceback' not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith('interrupted: rerun the same command'), stderr
    assert 'SIGINT: saved' in stdout  # train.py stopped at a step boundary and saved, it was not killed
    assert checkpoints.load_checkpoint(str(out / 'mingru_seed0' / 'ckpt.pt'))['step'] >= 20


def poison_training_losses(monkeypatch, bad_calls):
    """Make the training forward pass return a NaN loss on the given calls (1-based)."""
    original, calls = model.CharLM.forward, [0]

    def forward(self, idx, targets=None, states=None):
        logits, loss, states = original(self, idx, targets, states)
        if self.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                loss = loss * float('nan')
        return logits, loss, states

    monkeypatch.setattr(model.CharLM, 'forward', forward)


def test_a_non_finite_step_is_skipped_with_a_warning(tmp_path, tiny_dataset, monkeypatch, capsys):
    poison_training_losses(monkeypatch, {5})
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--max_iters=10', '--eval_interval=5'])
    assert 'warning: step 4: non-finite loss or gradient' in capsys.readouterr().out
    ckpt = checkpoints.load_checkpoint(str(tmp_path / 'ckpt.pt'))
    assert ckpt['step'] == 10 and all(torch.isfinite(p).all() for p in ckpt['model'].values())


def test_consecutive_non_finite_steps_stop_the_run_and_keep_the_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    poison_training_losses(monkeypatch, set(range(8, 100)))
    with pytest.raises(SystemExit) as stop:
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--max_iters=50',
                    '--eval_interval=5', '--max_bad_steps=3'])
    message = str(stop.value)
    assert message.startswith('error: 3 consecutive non-finite steps, the first at step 7')
    assert '--learning_rate' in message and '--dtype' in message and '--scan_backend' in message
    ckpt = checkpoints.load_checkpoint(str(tmp_path / 'ckpt.pt'))
    assert ckpt['step'] == 5 and all(torch.isfinite(p).all() for p in ckpt['model'].values())


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_dataset, monkeypatch):
    real_save, saves = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] > 2:  # step 0 wrote best.pt and ckpt.pt; the next write fails half-way
            f.write(b'partial bytes')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(SystemExit, match=r'could not write checkpoint .*best.pt \(No space left on device\); '
                                         r'the previous best.pt is intact'):
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--max_iters=20', '--eval_interval=5'])
    monkeypatch.undo()
    for name in ('best.pt', 'ckpt.pt'):
        assert checkpoints.load_checkpoint(str(tmp_path / name))['step'] == 0
    assert not any(name.endswith('.tmp') for name in os.listdir(tmp_path))


def test_dataset_shorter_than_the_context(tmp_path):
    from minrnn.dataset import write_char_dataset
    write_char_dataset('abcdefghij' * 3, str(tmp_path / 'short'))
    with pytest.raises(SystemExit, match=r'train split .* has 27 tokens, fewer than block_size \+ 1 = 33'):
        train.main([f'--dataset={tmp_path / "short"}', f'--out_dir={tmp_path / "out"}', *TINY])


def test_a_compiled_backend_that_cannot_build_is_a_one_line_error(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setattr(cpu_kernels, '_build', {'error': 'RuntimeError: Ninja is required to load C++ extensions'})
    with pytest.raises(SystemExit, match=r"^error: .*Ninja is required.*pip install ninja.*scan_backend='sequential'"):
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--block=mingru',
                    '--scan_backend=compiled'])


def test_the_compiled_backend_trains_with_device_auto_on_a_cpu(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    if not cpu_kernels.available():
        pytest.skip('no C++ compiler here: the compiled backend cannot build')
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--block=mingru', '--device=auto',
                '--max_iters=2', '--eval_interval=2'])
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['device_resolved'] == 'cpu' and config['backend_resolved'] == 'compiled'
    assert (tmp_path / 'ckpt.pt').exists()


def test_missing_meta_names_the_prepare_command(tmp_path, tiny_dataset):
    import shutil
    copy = tmp_path / 'data'
    shutil.copytree(tiny_dataset, copy)
    os.remove(copy / 'meta.json')
    with pytest.raises(SystemExit, match=r'\(meta.json missing in .*\); run: python data/char/prepare.py'):
        train.main([f'--dataset={copy}', f'--out_dir={tmp_path / "out"}', *TINY])


@pytest.mark.parametrize('block', ['transformer', 'mamba'])
def test_same_seed_same_losses_bit_for_bit(tmp_path, tiny_dataset, block):
    args = [f'--dataset={tiny_dataset}', *TINY, f'--block={block}', '--max_iters=12', '--eval_interval=4',
            '--log_interval=1', '--dropout=0.1']
    runs = []
    for name in ('a', 'b'):
        train.main([*args, f'--out_dir={tmp_path / name}'])
        runs.append([(r['step'], r['val_loss']) for r in read_log(str(tmp_path / name), 'eval')] +
                    [(r['step'], r['loss']) for r in read_log(str(tmp_path / name), 'train')])
    assert runs[0] == runs[1]


def rank_pid(rank, marker):
    """The pid of the torchrun worker with this RANK whose command line contains marker (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if marker.encode() not in f.read():
                    continue
            with open(f'/proc/{pid}/environ', 'rb') as f:
                if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                    return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker through /proc')
def test_a_killed_rank_makes_rank_zero_fail_clearly_without_hanging(tmp_path, tiny_dataset):
    out_dir = tmp_path / 'ddp'
    process = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
         f'--dataset={tiny_dataset}', f'--out_dir={out_dir}', *TINY, '--max_iters=100000', '--eval_interval=20',
         '--log_interval=1', '--ddp_timeout=60'],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        wait_for_step(str(out_dir), 25, process)
        os.kill(rank_pid(1, str(out_dir)), signal.SIGKILL)
        started = time.time()
        _, stderr = finish(process)
    finally:
        process.kill()
    assert process.returncode != 0 and time.time() - started < 90
    assert 'error: a process of this distributed run failed or stopped answering' in stderr
    assert checkpoints.load_checkpoint(str(out_dir / 'ckpt.pt'))['step'] >= 20


def resident_mb():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads VmRSS from /proc')
def test_soak_three_runs_with_sampling_do_not_grow_memory(tmp_path, tiny_dataset):
    """Bound: resident memory after the third train+sample cycle within 40 MB of the first's."""
    after = []
    for cycle, block in enumerate(['mingru', 'mamba', 'transformer']):
        out_dir = str(tmp_path / f'run{cycle}')
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={out_dir}', *TINY, f'--block={block}',
                    '--max_iters=30', '--eval_interval=10'])
        for other in range(cycle + 1):
            sample.sample(sample.parse_args([f'--out_dir={tmp_path / f"run{other}"}', '--max_new_tokens=300',
                                             '--num_samples=2']), write=lambda s: None)
        after.append(resident_mb())
    assert after[2] - after[0] < 40, f'resident memory after each cycle (MB): {after}'
