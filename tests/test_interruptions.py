"""Work interrupted loses nothing it saved: signals and Ctrl-C at any moment (imports included), a
killed run or build, a full disk, a second run in the same folder, a dead distributed peer, steps
that go non-finite; and what must not change between runs (same seed, same losses; memory in a soak).
Bad input and damaged files are tests/test_errors.py's."""
import contextlib
import json
import os
import re
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
from conftest import (DEADLINE, ROOT, TINY, assert_one_error_line, finish, interruptible, read_log, run_script,
                      wait_for, watch)

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


# SIGTERM's run is in the slow set (19 s): its save and 143 are also what the busy-out_dir test checks
@pytest.mark.parametrize('sig', [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGINT])
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
    assert re.search(r'warning: step 4: .*non-finite', capsys.readouterr().out)
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
    assert 'error: ' in stderr and 'distributed run' in stderr
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


def test_disk_full_during_a_save_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path, tiny_dataset):
    out = tmp_path / 'run'
    common = [f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--eval_interval=2']
    assert run_script('train.py', *common, '--max_iters=2').returncode == 0
    before = (out / 'ckpt.pt').read_bytes()
    os.symlink('/dev/full', out / 'ckpt.pt.tmp')  # the next write of ckpt.pt lands on a full device
    result = run_script('train.py', *common, '--max_iters=4', '--init_from=resume')
    assert_one_error_line(result, 'could not write checkpoint', 'is intact', 'then resume')
    assert (out / 'ckpt.pt').read_bytes() == before
    assert checkpoints.load_checkpoint(str(out / 'ckpt.pt'))['step'] == 2
    assert not [name for name in os.listdir(out) if name.endswith('.tmp')]


def test_a_second_training_in_a_busy_out_dir_is_refused_and_the_first_loses_nothing(tmp_path, tiny_dataset):
    out = tmp_path / 'run'
    command = [sys.executable, 'train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY,
               '--max_iters=100000', '--eval_interval=100000', '--log_interval=1']
    first = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (out / 'log.jsonl').exists() and read_log(str(out), 'train'), 'the first training to step',
                 first)
        second = run_script('train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=3')
        assert_one_error_line(second, f'out_dir {out}', f'process {first.pid}')
        first.send_signal(signal.SIGTERM)
        stdout, stderr = finish(first)
    finally:
        first.kill()
    assert first.returncode == 143, stderr  # SIGTERM: saved, then 128 + 15
    saved = checkpoints.load_checkpoint(str(out / 'ckpt.pt'))
    assert saved['config']['max_iters'] == 100000 and f"at step {saved['step']}." in stdout
    assert read_log(str(out), 'meta')[0]['config']['max_iters'] == 100000  # its log, not the second's


def test_sample_interrupted_while_streaming(tmp_path, tiny_dataset):
    out = tmp_path / 'run'
    assert run_script('train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=2',
                      '--eval_interval=2').returncode == 0
    process = subprocess.Popen([sys.executable, 'sample.py', f'--out_dir={out}', '--max_new_tokens=10000000'],
                               cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **interruptible())
    try:
        assert process.stdout.read(50)  # streaming has begun
        process.send_signal(signal.SIGINT)
        _, stderr = finish(process)
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == 'interrupted', stderr
    assert 'Traceback' not in stderr


@pytest.mark.slow  # three builds of the C++ kernels: 45 s on 2 cores
def test_a_killed_first_build_then_a_normal_run_finishes(tmp_path, tiny_dataset):
    """SIGKILL during the first build of cpu_kernels leaves its lock file behind; the next run must
    not wait on it. Then Ctrl-C during a build is one line, and a third run builds and trains."""
    env = {**os.environ, 'TORCH_EXTENSIONS_DIR': str(tmp_path / 'ext')}
    command = [sys.executable, 'train.py', f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "run"}', *TINY,
               '--block=mingru', '--scan_backend=compiled', '--max_iters=2', '--eval_interval=2']
    locks = lambda: {root for root, _, files in os.walk(tmp_path / 'ext') if 'lock' in files}
    building = lambda: {f for f in os.listdir(tmp_path / 'ext') if '.building-' in f}
    for sig in (signal.SIGKILL, signal.SIGINT):
        earlier, half_built = locks(), building() if os.path.exists(tmp_path / 'ext') else set()
        process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, **interruptible())
        wait_for(lambda: locks() - earlier, "this run's own build to be under way", process)
        process.send_signal(sig)
        _, stderr = finish(process)
        if sig == signal.SIGINT:  # the build says what it is doing, then the interruption is one line
            said = [line for line in stderr.strip().splitlines() if not line.startswith('warning:')]
            assert process.returncode == 130 and said == [
                'building the C++ CPU kernels (cpu_kernels.cpp): once for this source and torch, about a minute ...',
                'interrupted before training began: nothing was saved'], stderr
            assert building() <= half_built  # this build left no half-built folder (the SIGKILLed one's stays)
    assert locks()  # the killed build's lock is still there
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoints.load_checkpoint(str(tmp_path / 'run' / 'ckpt.pt'))['step'] == 2


def test_a_signal_during_a_long_evaluation_stops_it_at_once(tmp_path, tiny_dataset):
    """Step 0's evaluation of a large eval_iters takes minutes: SIGINT ends it within seconds, exit 130."""
    out = tmp_path / 'run'
    process = subprocess.Popen([sys.executable, 'train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY,
                                '--eval_iters=1000000'], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, **interruptible())
    try:
        stdout, _ = watch(process)
        wait_for(lambda: stdout.has('step 0: evaluating'), 'the evaluation to begin', process)
        process.send_signal(signal.SIGINT)
        start = time.time()
        _, stderr = finish(process, 'the interrupted evaluation to end')
    finally:
        process.kill()
    assert process.returncode == 130 and time.time() - start < 60, stderr
    assert 'SIGINT: saved' in stdout.text() and checkpoints.load_checkpoint(str(out / 'ckpt.pt'))['step'] == 0
    assert read_log(str(out))[-1] == {'kind': 'stop', 'step': 0, 'reason': 'SIGINT'}


def test_ctrl_c_from_the_first_statement_on_is_one_line_and_status_130():
    """cli.exit_on_interrupt(), every script's first statement: a Ctrl-C while the imports run (torch's
    take seconds) ends the process with one line, and a Python caller sees 130, not death by SIGINT."""
    code = ('from minrnn import cli\ncli.exit_on_interrupt()\nimport os, signal, time\n'
            'os.kill(os.getpid(), signal.SIGINT)\nsignal.pause()')  # until the signal ends it
    result = run_script('-c', code, **interruptible())
    assert result.returncode == 130 and result.stderr == 'interrupted\n', result.stderr


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='reads /proc to see the import under way')
@pytest.mark.parametrize('script', ['train.py', 'bench.py', 'sample.py', 'evaluate.py', 'reproduce.py'])
def test_ctrl_c_while_a_script_imports_torch(script):
    """SIGINT once torch's library is being loaded (seen in the process's memory map), whatever the
    machine's speed: one line, status 130."""
    process = subprocess.Popen([sys.executable, script, '--help'], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, **interruptible())
    try:
        def loading_torch():
            with contextlib.suppress(OSError), open(f'/proc/{process.pid}/maps') as maps:
                return 'libtorch' in maps.read()
            return False
        wait_for(loading_torch, 'torch to be loading', process)
        process.send_signal(signal.SIGINT)
        _, stderr = finish(process)
    finally:
        process.kill()
    if process.returncode == 0:
        pytest.skip('the imports had finished before the signal came (--help printed)')
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == 'interrupted', stderr
    assert 'Traceback' not in stderr


def test_ctrl_c_ends_a_long_bench_in_one_line(tmp_path):
    """bench.py, as every script, ends on Ctrl-C through cli.run_cli: one line, exit 130; what it had
    written is on disk."""
    process = subprocess.Popen([sys.executable, 'bench.py', '--parts', 'train', '--out', str(tmp_path / 'bench'),
                                '--device=cpu'], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, **interruptible())
    try:
        stdout, _ = watch(process)
        wait_for(lambda: stdout.has('measuring train on'), 'bench.py to begin measuring', process)
        process.send_signal(signal.SIGINT)
        _, stderr = finish(process, 'the interrupted bench to end')
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == 'interrupted', stderr
    assert 'Traceback' not in stderr and (tmp_path / 'bench' / 'env.json').exists()
