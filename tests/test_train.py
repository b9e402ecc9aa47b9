import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from minrnn import checkpoints, settings
import train
from minrnn.cli import UsageError
from conftest import DEADLINE, ROOT, TINY, finish, read_log, run_script, wait_for, watch


def run_train(tmp_path, dataset, *extra, name='run'):
    out_dir = str(tmp_path / name)
    result = train.main([f'--dataset={dataset}', f'--out_dir={out_dir}', *TINY, *extra])
    return out_dir, result


def evals(out_dir):
    return {row['step']: (row['train_loss'], row['val_loss']) for row in read_log(out_dir) if row['kind'] == 'eval'}


def test_thirty_iterations_learn_and_leave_a_log_and_checkpoints(tmp_path, tiny_dataset):
    out_dir, result = run_train(tmp_path, tiny_dataset, '--max_iters=30', '--eval_interval=10',
                                '--log_interval=5', '--lr_decay_iters=30', '--learning_rate=3e-3')
    rows = read_log(out_dir)
    assert rows[0]['kind'] == 'meta' and rows[0]['params'] > 0
    losses = evals(out_dir)
    assert sorted(losses) == [0, 10, 20, 30]
    assert losses[30][1] < losses[0][1] - 0.5  # val loss fell
    train_rows = [r for r in rows if r['kind'] == 'train']
    assert [r['step'] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert all(r['ms_per_iter'] > 0 for r in train_rows)
    for name in ('ckpt.pt', 'best.pt', 'config.json'):
        assert os.path.exists(os.path.join(out_dir, name))
    ckpt = checkpoints.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    assert ckpt['step'] == 30 and ckpt['best_val_loss'] == min(v for _, v in losses.values())
    assert result['best_val_loss'] == ckpt['best_val_loss']


@pytest.mark.parametrize('block', ['transformer', 'mingru'])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_dataset, block):
    common = [f'--block={block}', '--eval_interval=10', '--lr_decay_iters=40', '--dropout=0.1']
    full, _ = run_train(tmp_path, tiny_dataset, *common, '--max_iters=40', name='full')
    part, _ = run_train(tmp_path, tiny_dataset, *common, '--max_iters=20', name='part')
    run_train(tmp_path, tiny_dataset, *common, '--max_iters=40', '--init_from=resume', name='part')
    assert evals(part) == evals(full)  # every eval, bit for bit, the resumed ones included
    steps = [r['step'] for r in read_log(part) if r['kind'] == 'eval']
    assert steps == [0, 10, 20, 30, 40]  # nothing logged twice


@pytest.mark.parametrize('change, before, after', [
    ('--block=mingru', "'transformer'", "'mingru'"), ('--batch_size=4', '8', '4'),
    ('--gradient_accumulation_steps=2', '1', '2'), ('--weight_decay=0.0', '0.1', '0.0'), ('--beta1=0.5', '0.9', '0.5'),
    ('--seed=7', '1337', '7'), ('--dataset=elsewhere', None, "'elsewhere'")])
def test_a_resume_that_would_change_the_run_is_refused_naming_the_key_and_both_values(tmp_path, tiny_dataset,
                                                                                     change, before, after):
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--max_iters=2', '--eval_interval=2')
    with pytest.raises(SystemExit) as refused:
        train.main([f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=4', change])
    key = change[2:].partition('=')[0]
    message = str(refused.value)
    assert message.startswith('error: ') and f'changes {key} (' in message and after in message
    assert before is None or before in message
    assert checkpoints.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['step'] == 2  # untouched


def test_a_resume_takes_the_runs_own_configuration_and_logs_what_it_changed(tmp_path, tiny_dataset):
    """No config file, no --dataset: the run's own, from its checkpoint; max_iters may change (and
    lr_decay_iters, which followed it, follows it on)."""
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--block=mingru', '--max_iters=2', '--eval_interval=2')
    result = train.main([f'--out_dir={out_dir}', '--init_from=resume', '--max_iters=4'])
    assert result['step'] == 4
    resumed = [row for row in read_log(out_dir) if row['kind'] == 'resume']
    assert resumed == [{'kind': 'resume', 'step': 2, 'changed': {'max_iters': [2, 4], 'lr_decay_iters': [2, 4]}}]
    with open(os.path.join(out_dir, 'config.json')) as f:
        config = json.load(f)
    assert config['block'] == 'mingru' and config['max_iters'] == 4 and config['dataset'] == tiny_dataset


def test_resume_without_a_checkpoint_leaves_no_folder(tmp_path, tiny_dataset):
    with pytest.raises(SystemExit, match='nothing to resume in'):
        run_train(tmp_path, tiny_dataset, '--init_from=resume')
    assert not (tmp_path / 'run').exists()


def test_missing_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(SystemExit, match=r'prepare.py .*--name nodata'):
        train.main(['--dataset=nodata', f'--out_dir={tmp_path}', *TINY])


def test_out_dir_that_is_a_file(tmp_path, tiny_dataset):
    (tmp_path / 'afile').write_text('')
    with pytest.raises(SystemExit, match='is a file, not a folder'):
        run_train(tmp_path, tiny_dataset, name='afile')


def test_sigkill_during_a_checkpoint_write_leaves_the_last_one_loadable(tmp_path):
    """A child process saves big checkpoints over and over; we kill it while a write is under way."""
    path = str(tmp_path / 'ckpt.pt')
    child = subprocess.Popen([sys.executable, '-c', f'''
import sys, torch
sys.path.insert(0, {ROOT!r})
from minrnn.checkpoints import save_checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_KEYS
i = 0
while True:
    save_checkpoint({{**dict.fromkeys(CHECKPOINT_KEYS), 'format': CHECKPOINT_FORMAT, 'i': i,
                     'w': torch.full((30_000_000,), float(i))}}, {path!r})
    i += 1
'''])
    try:
        wait_for(lambda: os.path.exists(path) and os.path.exists(path + '.tmp'),  # one done, the next under way
                 'a checkpoint and the next one under way', child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE)
    finally:
        child.kill()
    ckpt = checkpoints.load_checkpoint(path)
    assert torch.all(ckpt['w'] == ckpt['i'])


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / 'ckpt.pt'
    checkpoints.save_checkpoint({'format': checkpoints.CHECKPOINT_FORMAT, 'w': torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UsageError, match='not a readable checkpoint'):
        checkpoints.load_checkpoint(str(path))
    path.write_bytes(b'hello')
    with pytest.raises(UsageError, match='not a readable checkpoint'):
        checkpoints.load_checkpoint(str(path))
    torch.save({'something': 'else'}, str(path))
    with pytest.raises(UsageError, match='not a checkpoint of this project'):
        checkpoints.load_checkpoint(str(path))


def torchrun(tiny_dataset, out_dir, *extra):
    return subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
         f'--dataset={tiny_dataset}', f'--out_dir={out_dir}', *TINY, '--eval_interval=3', '--log_interval=1',
         '--lr_decay_iters=6', '--dropout=0.1', *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def test_torchrun_two_processes_on_cpu_write_one_log_and_resume_exactly(tmp_path, tiny_dataset):
    full = tmp_path / 'full'
    result = torchrun(tiny_dataset, full, '--max_iters=6')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_log(str(full))
    assert [r['step'] for r in rows if r['kind'] == 'train'] == [1, 2, 3, 4, 5, 6]  # one writer: rank 0
    assert rows[0]['config']['world_size'] == 2
    ckpt = checkpoints.load_checkpoint(str(full / 'ckpt.pt'))
    assert ckpt['step'] == 6 and len(ckpt['rng']) == 2
    assert not torch.equal(ckpt['rng'][0]['data'], ckpt['rng'][1]['data'])  # each rank its own batches

    part = tmp_path / 'part'
    assert torchrun(tiny_dataset, part, '--max_iters=3').returncode == 0
    result = torchrun(tiny_dataset, part, '--max_iters=6', '--init_from=resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert evals(part) == evals(full)


@pytest.mark.parametrize('config_file', sorted(os.listdir(os.path.join(ROOT, 'config'))))
def test_every_config_file_is_valid(config_file):
    result = run_script('train.py', f'config/{config_file}', '--dataset=does_not_exist')
    assert 'not prepared' in result.stderr, result.stderr  # it got past parsing: every key is valid


def test_max_seconds_stops_cleanly_with_an_evaluation_a_checkpoint_and_a_reason(tmp_path, tiny_dataset, capsys):
    out_dir, result = run_train(tmp_path, tiny_dataset, '--max_iters=1000000', '--eval_interval=100000',
                                '--max_seconds=3')
    stopped = checkpoints.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['step']
    assert 0 < stopped < 1000000 and result['step'] == stopped
    rows = read_log(out_dir)
    assert rows[-1] == {'kind': 'stop', 'step': stopped, 'reason': 'max_seconds'}
    assert rows[-2]['kind'] == 'eval' and rows[-2]['step'] == stopped  # a final evaluation at that step
    assert '(max_seconds reached)' in capsys.readouterr().out


def test_a_finished_run_says_where_it_resumed_what_it_reached_and_what_next(tmp_path, tiny_dataset, capsys):
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--max_iters=4', '--eval_interval=2')
    run_train(tmp_path, tiny_dataset, '--max_iters=6', '--eval_interval=2', '--init_from=resume')
    out = capsys.readouterr().out
    assert f'resuming from step 4 of {out_dir}/ckpt.pt' in out
    assert 'done: step 6,' in out and 'best val loss' in out and f'sample: python sample.py --out_dir={out_dir}' in out
    assert read_log(out_dir)[-1] == {'kind': 'stop', 'step': 6, 'reason': 'max_iters'}
    assert 'n_head = 2' in out and 'expansion' not in out and 'd_state' not in out  # only the block's keys


def test_a_short_run_decays_its_learning_rate_to_min_lr(tmp_path, tiny_dataset):
    out_dir = str(tmp_path / 'run')
    train.main([os.path.join(ROOT, 'config', 'shakespeare_char_mingru_cpu.py'), f'--dataset={tiny_dataset}',
                f'--out_dir={out_dir}', '--max_iters=20', '--warmup_iters=5', '--eval_interval=10', '--progress=False'])
    config = checkpoints.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['config']
    assert config['lr_decay_iters'] == 20 and settings.learning_rate_at(20, config) == config['min_lr']


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, 'data', 'shakespeare_char', 'train.bin')),
                    reason='Tiny Shakespeare is not prepared (python data/shakespeare_char/prepare.py); CI prepares it')
def test_training_on_the_real_text_learns(tmp_path):
    out_dir, _ = run_train(tmp_path, 'shakespeare_char', '--max_iters=40', '--eval_interval=40', '--learning_rate=3e-3')
    losses = evals(out_dir)
    assert losses[40][1] < losses[0][1] - 0.5  # from ln(65) = 4.17 towards the character statistics


# ----------------------------------------------------------------------------- nothing finished is destroyed

def test_a_fresh_start_never_replaces_a_finished_run(tmp_path, tiny_dataset):
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--max_iters=4', '--eval_interval=2')
    before = {name: os.path.getmtime(os.path.join(out_dir, name)) for name in ('ckpt.pt', 'best.pt', 'log.jsonl')}
    with pytest.raises(SystemExit, match=r'--init_from=resume.*--overwrite=True'):  # both ways on
        run_train(tmp_path, tiny_dataset, '--max_iters=2')
    with pytest.raises(SystemExit, match='--eval_only=True.*--init_from=resume'):
        run_train(tmp_path, tiny_dataset, '--eval_only=True')
    run_train(tmp_path, tiny_dataset, '--max_iters=4', '--eval_only=True', '--init_from=resume')
    after = {name: os.path.getmtime(os.path.join(out_dir, name)) for name in before}
    assert after == before  # eval_only wrote nothing
    run_train(tmp_path, tiny_dataset, '--max_iters=2', '--overwrite=True')
    assert checkpoints.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['step'] == 2


def test_a_resume_that_changes_the_schedule_says_which_keys_and_how(tmp_path, tiny_dataset, capsys):
    run_train(tmp_path, tiny_dataset, '--max_iters=10', '--eval_interval=5')
    run_train(tmp_path, tiny_dataset, '--max_iters=20', '--eval_interval=5', '--init_from=resume')
    out = capsys.readouterr().out
    assert ('warning: resuming with another schedule (lr_decay_iters 10 -> 20; max_iters 10 -> 20): the learning '
            'rate at step 10 is') in out and '(the run had 1.00e-04)' in out


@pytest.mark.parametrize('args, fragment', [
    (['--min_lr=0.01', '--learning_rate=0.001'], 'min_lr (0.01) must be <= learning_rate (0.001)'),
    (['--warmup_iters=50', '--lr_decay_iters=20', '--max_iters=100'], 'lr_decay_iters (20) must be >= warmup_iters (50)'),
])
def test_learning_rate_keys_are_checked_against_each_other(tmp_path, tiny_dataset, args, fragment):
    with pytest.raises(SystemExit, match=fragment.replace('(', r'\(').replace(')', r'\)')):
        run_train(tmp_path, tiny_dataset, *args)


def test_a_run_that_is_all_warm_up_is_warned_about(tmp_path, tiny_dataset, capsys):
    run_train(tmp_path, tiny_dataset, '--max_iters=4', '--warmup_iters=10', '--eval_interval=4')
    assert re.search(r'warning: warmup_iters \(10\) >= max_iters \(4\)', capsys.readouterr().out)


def test_every_run_records_what_its_numbers_depend_on(tmp_path, tiny_dataset):
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--max_iters=2', '--eval_interval=2', '--block=mingru')
    with open(os.path.join(out_dir, 'config.json')) as f:
        config = json.load(f)
    environment = config['environment']
    assert environment['threads'] == torch.get_num_threads() and environment['torch'] == torch.__version__
    assert environment['cpu_capability'] == torch.backends.cpu.get_cpu_capability() and environment['device_detail']
    assert config['backend_resolved'] in ('compiled', 'sequential') and config['scan_backend'] == 'auto'
    assert read_log(out_dir, 'meta')[0]['config'] == config  # the log's first row carries the same record


def test_a_flag_the_block_does_not_read_is_a_warning(tmp_path, tiny_dataset, capsys):
    run_train(tmp_path, tiny_dataset, '--block=gru', '--n_head=3', '--max_iters=2', '--eval_interval=2')
    assert "--n_head is not read by block 'gru'" in capsys.readouterr().err


def test_the_time_limit_reached_during_an_evaluation_ends_the_run_there(tmp_path, tiny_dataset, monkeypatch):
    """Where max_seconds runs out while step 4 is evaluated, that evaluation is the last: no second
    one a step later."""
    evaluated = []
    original = train.Training.evaluate
    monkeypatch.setattr(train.Training, 'evaluate', lambda self, *a: (evaluated.append(self.step), original(self, *a)))
    monkeypatch.setattr(train.StopRequest, 'requested',
                        lambda self, world, device: 'max_seconds' if evaluated and evaluated[-1] == 4 else None)
    out_dir, result = run_train(tmp_path, tiny_dataset, '--max_iters=100', '--eval_interval=4')
    assert evaluated == [0, 4] and result['step'] == 4
    assert read_log(out_dir)[-1] == {'kind': 'stop', 'step': 4, 'reason': 'max_seconds'}


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_no_old_checkpoint(tmp_path, tiny_dataset):
    """--overwrite=True removes the earlier run's files first: killed at once, the folder holds the new
    config.json and no checkpoint of the old model for sample.py to read."""
    out = tmp_path / 'run'
    run_train(tmp_path, tiny_dataset, '--max_iters=2', '--eval_interval=2')
    command = [sys.executable, 'train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--block=mingru',
               '--overwrite=True', '--eval_iters=1000000']
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, _ = watch(process)
        wait_for(lambda: stdout.has('step 0: evaluating'), 'the new run to begin', process)
        process.send_signal(signal.SIGKILL)
        finish(process)
    finally:
        process.kill()
    assert not (out / 'ckpt.pt').exists() and not (out / 'best.pt').exists()
    assert json.loads((out / 'config.json').read_text())['block'] == 'mingru'


def test_a_signal_while_torch_compile_compiles_is_a_signal(tmp_path):
    """torch.compile wraps what is raised inside it (InductorError); the StopNow of a signal under it is
    still the signal, not an unexpected error."""
    try:
        try:
            raise train.StopNow
        except train.StopNow as stop:
            raise RuntimeError('InductorError: StopNow') from stop
    except RuntimeError as wrapped:
        assert train.stopped_by_signal(wrapped)
    assert not train.stopped_by_signal(RuntimeError('another failure'))


def test_a_paper_scale_config_on_a_cpu_is_said_to_take_hours_before_it_starts():
    from minrnn import devices
    from minrnn.blocks import BLOCKS
    config = settings.configure([BLOCKS['mingru'].configs['paper']])
    warning = devices.long_run_warning(config, 10_700_000, 111_540, 'cpu', BLOCKS['mingru'].configs['cpu'])
    assert warning is not None and 'hours' in warning and 'config/shakespeare_char_mingru_cpu.py' in warning
    cpu = settings.configure([BLOCKS['mingru'].configs['cpu']])
    assert devices.long_run_warning(cpu, 800_000, 111_540, 'cpu') is None  # the CPU recipe: minutes


def test_wandb_log_logs_every_evaluation_where_wandb_is_installed(tmp_path, tiny_dataset, monkeypatch, capsys):
    import types
    logged = []
    fake = types.SimpleNamespace(init=lambda **kw: logged.append(('init', kw['project'], kw['name'])),
                                 log=lambda row: logged.append(('log', row['iter'], round(row['val/loss'], 6))))
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    out_dir, _ = run_train(tmp_path, tiny_dataset, '--max_iters=4', '--eval_interval=2', '--wandb_log=True',
                           '--wandb_project=p', '--wandb_run_name=r')
    vals = [round(r['val_loss'], 6) for r in read_log(out_dir, 'eval')]
    assert logged == [('init', 'p', 'r')] + [('log', step, val) for step, val in zip((0, 2, 4), vals)]
    monkeypatch.setitem(sys.modules, 'wandb', None)  # not installed: a note, and the run goes on
    run_train(tmp_path, tiny_dataset, '--max_iters=2', '--eval_interval=2', '--wandb_log=True', name='without')
    assert 'wandb package is not installed' in capsys.readouterr().out
