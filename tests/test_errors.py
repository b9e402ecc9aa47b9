"""Every bad input and damaged file ends in one `error:` line (never a traceback) that names the fix,
and runs no code from a file it reads. One test per class of input; the cases are the ones a probe
found. Interrupted work is tests/test_interruptions.py's."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from minrnn import checkpoints, cpu_kernels, runs
from conftest import DEADLINE, ROOT, TINY, assert_one_error_line, read_log, run_script


def train_error(*args):
    """train.main's one-line message for a run that must fail before it trains."""
    with pytest.raises(SystemExit) as failure:
        train.main([*TINY, '--max_iters=1', *args])
    message = str(failure.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    return message


class Marker:
    """An object whose unpickling creates a file: proof that a load ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, 'w'))


# ----------------------------------------------------------------------------- config values

@pytest.mark.parametrize('arg, fragment', [
    ('--learning_rate=-1', 'learning_rate must be a finite number > 0'),
    ('--learning_rate=1e999', 'learning_rate must be a finite number > 0'),
    ('--beta1=2', 'beta1 must be in [0, 1)'),
    ('--beta2=1', 'beta2 must be in [0, 1)'),
    ('--grad_clip=-1', 'grad_clip must be a finite number >= 0'),
    ('--weight_decay=-1', 'weight_decay must be'),
    ('--min_lr=-1', 'min_lr must be'),
    ('--warmup_iters=-1', 'warmup_iters must be >= 0'),
    ('--lr_decay_iters=0', 'lr_decay_iters must be an int >= 1'),
    ('--lr_decay_iters=soon', 'lr_decay_iters must be an int >= 1'),
    ('--seed=-1', 'seed must be'),
    ('--ddp_timeout=0', 'ddp_timeout must be >= 1'),
    ('--ff_mult=-1', 'ff_mult must be a finite number >= 0'),
    ('--expansion=0', 'expansion must be a finite number > 0'),
    ('--expansion=-1.5', 'expansion must be a finite number > 0'),
    ('--conv_kernel=-1', 'conv_kernel must be >= 0'),
    ('--dt_rank=-1', 'dt_rank must be >= 0'),
    ('--mamba_expand=0', 'mamba_expand must be >= 1'),
    ('--d_conv=0', 'd_conv must be >= 1'),
    ('--scan_chunk_elems=0', 'scan_chunk_elems must be >= 1'),
    ('--device=tpu', "unknown device 'tpu'"),
    ('--device=bogus', "unknown device 'bogus'"),
    ('--device=', "unknown device ''"),
    ('--dtype=float8', 'dtype must be'),
    ('--scan_backend=fast', "scan_backend must be one of 'auto'"),
    ('--scan_backend=triton', "scan_backend='triton' runs on a CUDA GPU"),  # --device=cpu (TINY)
])
def test_every_out_of_range_value_is_one_line_before_training(tmp_path, tiny_dataset, arg, fragment):
    message = train_error(f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "run"}', arg)
    assert fragment in message
    assert not (tmp_path / 'run').exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_a_gpu(tmp_path, tiny_dataset):
    assert 'no CUDA GPU here' in train_error(f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', '--device=cuda')


def test_non_finite_values_from_a_config_file(tmp_path, tiny_dataset):
    for line, fragment in [("learning_rate = float('nan')", 'learning_rate must be a finite number > 0, got nan'),
                           ("grad_clip = float('inf')", 'grad_clip must be a finite number >= 0')]:
        (tmp_path / 'c.py').write_text(line + '\n')
        assert fragment in train_error(str(tmp_path / 'c.py'), f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}/r')


def test_a_config_file_that_exits_or_raises(tmp_path, tiny_dataset):
    for body, fragment in [('import sys\nsys.exit(3)\n', 'SystemExit'), ('1 / 0\n', 'ZeroDivisionError')]:
        path = tmp_path / 'c.py'
        path.write_text(body)
        result = run_script('train.py', str(path), f'--dataset={tiny_dataset}', '--device=cpu')
        assert_one_error_line(result, 'config file', fragment)


def test_reproduce_checks_every_run_before_the_first_trains(tmp_path, tiny_dataset):
    common = ['--out_root', str(tmp_path / 'out'), '--results', str(tmp_path / 'results')]
    result = run_script('reproduce.py', *common, '--', f'--dataset={tiny_dataset}', '--max_iters=-5')
    assert_one_error_line(result, 'max_iters must be >= 0')
    (tmp_path / 'afile').write_text('')
    result = run_script('reproduce.py', '--results', str(tmp_path / 'afile'), '--', f'--dataset={tiny_dataset}')
    assert_one_error_line(result, 'is a file')
    result = run_script('reproduce.py', *common, '--seeds', '0')
    assert_one_error_line(result, '--seeds must be in 1..')
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- data files

def broken_copy(tiny_dataset, tmp_path, name, content):
    copy = tmp_path / 'data'
    shutil.copytree(tiny_dataset, copy)
    (copy / name).write_bytes(content)
    return copy


@pytest.mark.parametrize('name, content, fragment', [
    ('train.bin', b'\x01\x00\x02', 'not a whole number of uint16 tokens'),
    ('val.bin', b'', 'has 0 tokens'),
    ('val.bin', np.array([0, 1, 60000] * 40, dtype=np.uint16).tobytes(), 'token ids up to 60000'),
    ('meta.json', os.urandom(200), 'not a readable vocabulary'),
    ('meta.json', b'{"chars": ["a", "a"]}', 'not a list of distinct characters'),
    ('meta.json', b'[1, 2]', 'not a readable vocabulary'),
])
def test_a_broken_dataset_file_names_the_prepare_command(tmp_path, tiny_dataset, name, content, fragment):
    copy = broken_copy(tiny_dataset, tmp_path, name, content)
    message = train_error(f'--dataset={copy}', f'--out_dir={tmp_path / "out"}')
    assert fragment in message and 'prepare' in message


def test_a_dataset_pickle_is_never_loaded(tmp_path, tiny_dataset):
    """An older dataset folder (meta.pkl) or a planted one: the pickle is not read, so its code never runs."""
    ran = tmp_path / 'code_ran'
    copy = broken_copy(tiny_dataset, tmp_path, 'meta.pkl', pickle.dumps(Marker(ran)))
    os.remove(copy / 'meta.json')
    result = run_script('train.py', f'--dataset={copy}', f'--out_dir={tmp_path / "out"}', *TINY)
    assert_one_error_line(result, 'meta.json', 'meta.pkl')
    assert not ran.exists()


# ----------------------------------------------------------------------------- checkpoints

def test_an_unsafe_checkpoint_is_called_unsafe_and_runs_nothing(tmp_path):
    ran = tmp_path / 'code_ran'
    torch.save({'format': checkpoints.CHECKPOINT_FORMAT, 'payload': Marker(ran)}, str(tmp_path / 'best.pt'))
    result = run_script('sample.py', f'--out_dir={tmp_path}')
    assert_one_error_line(result, 'is unsafe', 'not loaded')
    assert not ran.exists()


def test_a_torch_file_without_the_expected_keys(tmp_path):
    torch.save({'format': checkpoints.CHECKPOINT_FORMAT, 'model': {}}, str(tmp_path / 'best.pt'))
    assert_one_error_line(run_script('sample.py', f'--out_dir={tmp_path}'), 'not a checkpoint of this project')


def test_an_out_dir_that_cannot_be_written(tmp_path, tiny_dataset):
    result = run_script('train.py', f'--dataset={tiny_dataset}', '--out_dir=/proc/minrnn/run', *TINY)
    assert_one_error_line(result, 'out_dir', '/proc/minrnn/run')


# ----------------------------------------------------------------------------- scripts

def test_sample_with_a_binary_prompt_file_or_a_closed_pipe(tmp_path, tiny_dataset):
    out = tmp_path / 'run'
    assert run_script('train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=2',
                      '--eval_interval=2').returncode == 0
    (tmp_path / 'prompt.bin').write_bytes(b'\xff\xfe\x00\x81' * 10)
    result = run_script('sample.py', f'--out_dir={out}', f'--start=FILE:{tmp_path / "prompt.bin"}')
    assert_one_error_line(result, 'is not UTF-8 text')
    # `sample.py | head -c 10`: the reader goes away while the text streams
    piped = subprocess.run(f'{sys.executable} sample.py --out_dir={out} --max_new_tokens=20000 | head -c 10',
                           shell=True, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert len(piped.stdout) == 10 and piped.stderr.startswith('sampling ') and len(piped.stderr.splitlines()) == 1


@pytest.mark.parametrize('args, fragment', [
    (['--name', '../../escaped'], 'must be a plain folder name'),
    (['--name', ''], 'must be a plain folder name'),
    (['--name', '..'], 'must be a plain folder name'),
])
def test_prepare_refuses_names_outside_data(tmp_path, args, fragment):
    (tmp_path / 'in.txt').write_text('some text to prepare\n' * 20)
    assert_one_error_line(run_script('data/char/prepare.py', '--input', str(tmp_path / 'in.txt'), *args), fragment)
    assert not os.path.exists(os.path.join(ROOT, '..', 'escaped'))


def test_prepare_with_too_little_text_or_a_folder(tmp_path):
    (tmp_path / 'one.txt').write_text('x')
    result = run_script('data/char/prepare.py', '--input', str(tmp_path / 'one.txt'), '--name', 'minrnn_test_one')
    assert_one_error_line(result, 'fewer than 2 characters')
    result = run_script('data/char/prepare.py', '--input', str(tmp_path), '--name', 'minrnn_test_one')
    assert_one_error_line(result, 'is not a file')
    result = run_script('data/shakespeare_char/prepare.py', '--input', str(tmp_path), '--out_dir', str(tmp_path))
    assert_one_error_line(result, 'is not a file')
    assert not os.path.exists(os.path.join(ROOT, 'data', 'minrnn_test_one'))


def test_an_unexpected_failure_is_one_line_and_its_traceback_is_one_variable_away(monkeypatch, capsys):
    from minrnn.cli import run_cli

    def buggy():
        return {}['no such key']
    monkeypatch.delenv('MINRNN_DEBUG', raising=False)
    with pytest.raises(SystemExit) as failure:
        run_cli(buggy)
    assert str(failure.value.code).startswith("error: unexpected KeyError: 'no such key' (a bug? MINRNN_DEBUG=1")
    monkeypatch.setenv('MINRNN_DEBUG', '1')
    with pytest.raises(KeyError):
        run_cli(buggy)


def test_plot_curves_with_string_fields_draws_what_is_valid(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'log.jsonl').write_text('{"kind": "meta", "format": 1, "block": "mingru", "config": {}}\n'
                                   '{"kind": "eval", "step": 0, "val_loss": 2.0, "time": "soon"}\n'
                                   '{"kind": "eval", "step": 1, "val_loss": 1.0, "time": 3.0}\n'
                                   '{"kind": "eval", "step": "two", "val_loss": 0.5}\n')
    for x in ('step', 'time'):
        result = run_script('plot_curves.py', str(run), '--x', x, '--out', str(tmp_path / 'plots'))
        assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
        assert (tmp_path / 'plots' / f'curves_{x}.png').stat().st_size > 0


# ----------------------------------------------------------------------------- the kernel build

def test_the_kernel_build_is_shared_by_every_checkout_of_the_same_source(tmp_path):
    """A second checkout (another path, the same cpu_kernels.cpp) loads the build the first one made."""
    from minrnn import cpu_kernels
    if not cpu_kernels.available():
        pytest.skip('no compiler here')
    checkout = tmp_path / 'another_checkout'
    (checkout / 'minrnn').mkdir(parents=True)
    for name in ('__init__.py', 'cpu_kernels.py', 'cpu_kernels.cpp'):
        shutil.copy(os.path.join(ROOT, 'minrnn', name), checkout / 'minrnn' / name)
    library = cpu_kernels.load().__file__
    built = os.stat(library).st_mtime_ns
    code = 'from minrnn import cpu_kernels; print(cpu_kernels.load().__file__)'
    result = subprocess.run([sys.executable, '-c', code], cwd=checkout, capture_output=True, text=True, timeout=DEADLINE)
    assert result.stdout.strip() == library, result.stderr
    assert os.stat(library).st_mtime_ns == built  # loaded, not built again


# ----------------------------------------------------------------------------- every script: devices, sizes, damage

@pytest.mark.parametrize('script, args, fragment', [
    ('sample.py', ['--device=bogus'], "unknown device 'bogus'"),
    ('sample.py', ['--device=meta'], "unknown device 'meta'"),
    ('sample.py', ['--device=cuda'], 'torch sees no CUDA GPU here'),
    ('evaluate.py', ['--device=cuda:3', 'somewhere'], 'torch sees no CUDA GPU here'),
    ('bench.py', ['--quick', '--device', 'bogus'], "unknown device 'bogus'"),
    ('bench.py', ['--quick', '--device', 'cuda'], 'torch sees no CUDA GPU here'),
    ('reproduce_gpu.py', [], '--rehearse runs every part on this CPU'),
    ('bench.py', ['--lengths', '0'], '--lengths must be >= 1'),
    ('bench.py', ['--batch', '100000', '--width', '100000'], 'lower --batch, --lengths or --width'),
    ('bench.py', ['--lengths', '-5'], '--lengths must be >= 1'),
    ('bench.py', ['--repeats', '0'], '--repeats must be >= 1'),
    ('bench.py', ['--positions', '-5'], '--positions must be >= 1'),
    ('bench.py', ['--batch', '0'], '--batch must be >= 1'),
    ('bench.py', ['--width', '0'], '--width must be >= 1'),
    ('bench.py', ['--seconds_per_point', '-1'], '--seconds_per_point'),
    ('bench.py', ['--max_step_seconds', 'nan'], '--max_step_seconds'),
    ('sample.py', ['--seed=1180591620717411303424'], '--seed must be in [0, 2^63)'),
    ('sample.py', ['--temperature=inf'], '--top_k=1'),
    ('plot_curves.py', ['run', '--at', '-5'], '--at takes steps >= 0'),
    ('train.py', ['--compile'], 'write --compile=True'),
])


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CUDA cases need a machine without a GPU')
def test_every_script_refuses_a_device_or_size_it_cannot_use_in_one_line(script, args, fragment):
    assert_one_error_line(run_script(script, *args), fragment)


@pytest.mark.parametrize('args, fragment', [
    (['--n_embd=1200000000', '--n_head=1'], 'too large for any machine'),
    (['--batch_size=1000000000000'], 'activations of batch_size=1000000000000'),
    (['--block=mingru', '--expansion=1e12'], "parameters (n_embd=32, n_layer=2 and the block's width keys)"),
    (['--block=mamba', '--d_state=1000000000000'], 'more than the'),
    (['--block=mamba', '--dt_rank=1000000000000'], 'more than the'),
])
def test_a_size_that_cannot_fit_stops_before_allocating(tmp_path, tiny_dataset, args, fragment):
    message = train_error(f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "run"}', *args)
    assert fragment in message and not os.path.exists(tmp_path / 'run' / 'ckpt.pt')


def test_empty_inputs_are_a_clear_error_not_a_signal():
    from minrnn import cpu_kernels
    from model import CharLM, ModelConfig
    model = CharLM(ModelConfig(block='mingru', n_embd=8, n_layer=1, vocab_size=5))
    for shape in [(1, 0), (0, 4)]:
        with pytest.raises(ValueError, match='at least one token'):
            model(torch.zeros(shape, dtype=torch.long))
    if cpu_kernels.available():
        with pytest.raises(ValueError, match=r'shape \(2, 0, 3\)'):
            cpu_kernels.scan(torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), None)
        with pytest.raises(ValueError, match=r'shape \(0, 3, 4\)'):
            cpu_kernels.selective_scan(*(torch.zeros(0, 3, 4),) * 2, torch.zeros(4, 2), *(torch.zeros(0, 3, 2),) * 2,
                                       torch.zeros(4))


def test_a_damaged_bench_folder_and_no_steps_at_all(tmp_path, tiny_dataset):
    (tmp_path / 'env.json').write_text('{"dev')
    assert_one_error_line(run_script('bench.py', '--replot', str(tmp_path)), 'env.json is missing or damaged')
    result = train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "run"}', *TINY, '--max_iters=0'])
    assert result['step'] == 0 and read_log(str(tmp_path / 'run'), 'eval')[0]['step'] == 0  # evaluated, no step


def test_a_binary_config_file(tmp_path):
    (tmp_path / 'c.py').write_bytes(b'\xff\xfe\x00\x81' * 10)
    assert_one_error_line(run_script('train.py', str(tmp_path / 'c.py')), 'is not UTF-8 text')


def test_damaged_log_lines_are_skipped_with_a_warning_and_the_resume_goes_on(tmp_path, tiny_dataset, capsys):
    out = str(tmp_path / 'run')
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=4', '--eval_interval=2'])
    with open(os.path.join(out, 'log.jsonl'), 'ab') as f:
        f.write(b'5\n[1, 2]\n{"kind": "eval", "step": "x"}\n{"kind": "eval", "step": true}\n\xff\xfe\x81\n')
    result = train.main([f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=6', '--eval_interval=2',
                         '--init_from=resume'])
    assert result['step'] == 6
    err = capsys.readouterr().err
    assert err.count('unreadable line skipped') == 3, err  # 5, [1, 2] and the binary line, each named
    assert [r['step'] for r in read_log(out, 'eval')] == [0, 2, 4, 6]


def test_sample_names_the_checkpoint_that_exists_and_refuses_a_broken_one(tmp_path, tiny_dataset):
    out = tmp_path / 'run'
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=2', '--eval_interval=2'])
    os.rename(out / 'best.pt', out / 'kept.pt')
    assert_one_error_line(run_script('sample.py', f'--out_dir={out}', '--device=cpu'), 'use it with --checkpoint=latest')
    ckpt = torch.load(out / 'kept.pt', weights_only=True)
    broken = {**ckpt, 'model': {k: v * float('nan') for k, v in ckpt['model'].items()}}
    torch.save(broken, out / 'best.pt')
    assert_one_error_line(run_script('sample.py', f'--out_dir={out}', '--device=cpu'), 'not all finite')
    short = {**ckpt, 'vocab': {'stoi': ckpt['vocab']['stoi'], 'itos': {0: 'a'}}}
    torch.save(short, out / 'best.pt')
    assert_one_error_line(run_script('sample.py', f'--out_dir={out}', '--device=cpu'), 'does not cover')
    os.replace(out / 'kept.pt', out / 'best.pt')
    assert_one_error_line(run_script('sample.py', f'--out_dir={out}', '--start=FILE:/dev/zero'), 'is longer than')
    tiny = run_script('sample.py', f'--out_dir={out}', '--temperature=1e-45', '--max_new_tokens=5', '--device=cpu')
    assert tiny.returncode == 0 and 'warning' not in tiny.stderr, tiny.stderr  # a legitimate, greedy-like temperature


def test_the_lock_and_the_scripts_work_without_fcntl(tmp_path, monkeypatch):
    """Where fcntl is missing (Windows), runs.py takes its msvcrt branch: a stand-in msvcrt here shows
    that the branch is taken and asks for a non-blocking lock of one byte. Windows itself is not tested."""
    import importlib
    import types
    calls = []
    fake = types.SimpleNamespace(LK_NBLCK=2, locking=lambda fd, mode, n: calls.append((mode, n)))
    monkeypatch.setitem(sys.modules, 'fcntl', None)  # import fcntl now fails
    monkeypatch.setitem(sys.modules, 'msvcrt', fake)
    try:
        windows_runs = importlib.reload(runs)
        with windows_runs.out_dir_lock(str(tmp_path / 'run')):
            assert calls == [(2, 1)]
    finally:
        monkeypatch.undo()
        importlib.reload(runs)


def test_without_a_progress_bar_a_line_every_log_interval_and_a_long_run_is_warned_about(tmp_path, tiny_dataset,
                                                                                         capsys):
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "run"}', *TINY, '--max_iters=10000000',
                '--max_seconds=1', '--log_interval=2', '--eval_interval=100000000'])
    out = capsys.readouterr().out
    assert 'step 2: loss ' in out and ' ms/iter, lr ' in out  # nanoGPT's line, without the bar
    assert 'hours' in out


@pytest.mark.parametrize('damage, fragment', [({'model_config': {'block_size': 0}}, 'block_size'),
                                              ({'model_config': {'block': 'rwkv'}}, "unknown block 'rwkv'"),
                                              ({'config': None}, 'no training configuration')])


def test_evaluate_refuses_a_checkpoint_it_cannot_build_in_one_line(tmp_path, tiny_dataset, damage, fragment):
    out = tmp_path / 'run'
    assert run_script('train.py', f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, '--max_iters=2',
                      '--eval_interval=2').returncode == 0
    ckpt = checkpoints.load_checkpoint(str(out / 'best.pt'))
    for key, value in damage.items():
        ckpt[key] = {**ckpt[key], **value} if isinstance(value, dict) else value
    torch.save(ckpt, out / 'best.pt')
    assert_one_error_line(run_script('evaluate.py', str(out), '--out', str(tmp_path / 'context'), '--device=cpu'),
                          fragment)


def test_dataset_shorter_than_the_context(tmp_path):
    from minrnn.dataset import write_char_dataset
    write_char_dataset('abcdefghij' * 3, str(tmp_path / 'short'))
    with pytest.raises(SystemExit, match=r'27 tokens.*block_size'):
        train.main([f'--dataset={tmp_path / "short"}', f'--out_dir={tmp_path / "out"}', *TINY])


def test_a_compiled_backend_that_cannot_build_is_a_one_line_error(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setattr(cpu_kernels, '_build', {'error': 'RuntimeError: Ninja is required to load C++ extensions'})
    with pytest.raises(SystemExit, match=r"^error: .*Ninja is required.*pip install ninja.*scan_backend='sequential'"):
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path}', *TINY, '--block=mingru',
                    '--scan_backend=compiled'])


def test_missing_meta_names_the_prepare_command(tmp_path, tiny_dataset):
    import shutil
    copy = tmp_path / 'data'
    shutil.copytree(tiny_dataset, copy)
    os.remove(copy / 'meta.json')
    with pytest.raises(SystemExit, match=r'meta.json.*prepare.py'):
        train.main([f'--dataset={copy}', f'--out_dir={tmp_path / "out"}', *TINY])
