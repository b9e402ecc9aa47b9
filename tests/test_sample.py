import pytest

import sample
import train
from minrnn.cli import UsageError
from conftest import TINY, run_script, small_text

PROMPT = small_text()[:6]  # characters the dataset has, real or synthetic


@pytest.fixture(scope='module', params=['transformer', 'mingru'])
def run_dir(request, tmp_path_factory, tiny_dataset):
    out_dir = str(tmp_path_factory.mktemp(f'sample_{request.param}'))
    train.main([f'--dataset={tiny_dataset}', f'--out_dir={out_dir}', *TINY, f'--block={request.param}',
                '--max_iters=4', '--eval_interval=2'])
    return out_dir


def generate(run_dir, *args):
    return sample.sample(sample.parse_args([f'--out_dir={run_dir}', *args]), write=lambda s: None)


def test_length_and_count(run_dir):
    texts = generate(run_dir, f'--start={PROMPT}', '--max_new_tokens=37', '--num_samples=3')
    assert len(texts) == 3 and all(len(t) == 37 for t in texts)


def test_same_seed_same_text_other_seed_other_text(run_dir):
    a = generate(run_dir, '--seed=7', '--max_new_tokens=60')
    assert a == generate(run_dir, '--seed=7', '--max_new_tokens=60')
    assert a != generate(run_dir, '--seed=8', '--max_new_tokens=60')


def test_prompt_from_a_file(run_dir, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    text = small_text()[:20]
    prompt.write_text(text)
    pieces = []
    sample.sample(sample.parse_args([f'--out_dir={run_dir}', f'--start=FILE:{prompt}', '--max_new_tokens=5']),
                  write=pieces.append)
    assert ''.join(pieces).startswith(text) and len(''.join(pieces)) == len(text) + 5 + 1


def test_cli_streams_and_reports_errors_in_one_line(run_dir, tmp_path):
    result = run_script('sample.py', f'--out_dir={run_dir}', f'--start={PROMPT}', '--max_new_tokens=20')
    assert result.returncode == 0 and result.stdout.startswith(PROMPT) and len(result.stdout) == 6 + 20 + 1
    for args, message in [([f'--start={PROMPT}€'], "never saw: ['€']"),
                          (['--max_new_tokens=0'], '--max_new_tokens must be >= 1'),
                          (['--temperature=0'], '--temperature must be a finite number > 0'),
                          (['--top_k=0'], '--top_k must be >= 1'),
                          ([f'--out_dir={tmp_path}'], 'no checkpoint at')]:
        result = run_script('sample.py', f'--out_dir={run_dir}', *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert 'Traceback' not in result.stderr


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / 'best.pt').write_bytes(b'\x00' * 100)
    with pytest.raises(UsageError, match='not a readable checkpoint'):
        generate(str(tmp_path))


@pytest.mark.parametrize('temperature', ['inf', 'nan', '0', '-1'])
def test_temperature_must_be_finite_and_positive_and_greedy_is_named(temperature):
    result = run_script('sample.py', f'--temperature={temperature}')
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'temperature' in result.stderr and '--top_k=1' in result.stderr, result.stderr


def test_the_run_folder_as_nanogpt_users_type_it_and_what_was_sampled(run_dir, capsys):
    """`python sample.py RUN` samples RUN; stderr names the checkpoint, its step and the run's best val loss."""
    assert sample.parse_args([run_dir]).out_dir == run_dir
    sample.sample(sample.parse_args([run_dir, '--max_new_tokens=3']), write=lambda s: None)
    said = capsys.readouterr().err
    assert 'best.pt' in said and 'step 4' in said and 'val loss' in said


def test_help_shows_the_defaults():
    result = run_script('sample.py', '--help')
    assert result.returncode == 0 and '(default: 500)' in result.stdout and '(default: 0.8)' in result.stdout
