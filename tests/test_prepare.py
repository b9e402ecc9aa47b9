import hashlib
import json
import os

import numpy as np
import pytest

from conftest import SHAKESPEARE, run_script
from minrnn.dataset import write_char_dataset


def read(folder):
    with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    return (meta, np.fromfile(os.path.join(folder, 'train.bin'), dtype=np.uint16),
            np.fromfile(os.path.join(folder, 'val.bin'), dtype=np.uint16))


def test_small_text_round_trips(tmp_path):
    text = 'hello world\nthe quick brown fox\n' * 10
    write_char_dataset(text, str(tmp_path))
    meta, train, val = read(tmp_path)
    assert meta['vocab_size'] == len(set(text))
    assert len(train) == int(len(text) * 0.9) and len(train) + len(val) == len(text)
    decoded = ''.join(meta['chars'][int(i)] for i in np.concatenate([train, val]))
    assert decoded == text


def test_prepare_is_idempotent(tmp_path):
    text = 'abcabcabd' * 50
    write_char_dataset(text, str(tmp_path))
    first = {f: open(tmp_path / f, 'rb').read() for f in ('train.bin', 'val.bin', 'meta.json')}
    write_char_dataset(text, str(tmp_path))
    assert first == {f: open(tmp_path / f, 'rb').read() for f in ('train.bin', 'val.bin', 'meta.json')}


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='Tiny Shakespeare not at ../shared')
def test_real_file_vocab_and_split(tmp_path):
    result = run_script('data/shakespeare_char/prepare.py', '--input', SHAKESPEARE, '--out_dir', str(tmp_path))
    assert result.returncode == 0, result.stderr
    meta, train, val = read(tmp_path)
    assert meta['vocab_size'] == 65
    assert (len(train), len(val)) == (1_003_854, 111_540)


def test_checksum_mismatch_is_refused_unless_asked(tmp_path):
    other = tmp_path / 'other.txt'
    other.write_text('not shakespeare at all\n' * 20)
    result = run_script('data/shakespeare_char/prepare.py', '--input', str(other), '--out_dir', str(tmp_path))
    assert result.returncode != 0
    assert 'sha256' in result.stderr and '--any-text' in result.stderr
    assert 'Traceback' not in result.stderr
    result = run_script('data/shakespeare_char/prepare.py', '--input', str(other), '--out_dir', str(tmp_path),
                        '--any-text')
    assert result.returncode == 0, result.stderr
    assert read(tmp_path)[0]['sha256'] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_offline_without_input_names_the_flag(tmp_path):
    env = {**os.environ, 'HTTPS_PROXY': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'}
    result = run_script('data/shakespeare_char/prepare.py', '--out_dir', str(tmp_path), env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and '--input' in lines[0], result.stderr


def test_generic_prepare_for_any_text(tmp_path):
    text_file = tmp_path / 'my.txt'
    text_file.write_text('To be, or not to be\n' * 30)
    result = run_script('data/char/prepare.py', '--input', str(text_file), '--out_dir', str(tmp_path / 'mytext'))
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / 'mytext')[0]['vocab_size'] == len(set('To be, or not to be\n'))


def test_a_full_disk_leaves_no_temporary_file(tmp_path):
    """The dataset's files are written whole or not at all: on a full device the write fails in one
    error line and no .tmp is left beside them."""
    os.symlink('/dev/full', tmp_path / 'train.bin.tmp')
    result = run_script('data/char/prepare.py', '--input', __file__, '--out_dir', str(tmp_path))
    assert result.returncode == 1 and result.stderr.startswith('error: ') and len(result.stderr.splitlines()) == 1
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_a_deeply_nested_meta_json_is_one_error_line(tmp_path):
    from minrnn.dataset import DatasetError, read_meta
    (tmp_path / 'meta.json').write_text('[' * 100_000 + ']' * 100_000)
    with pytest.raises(DatasetError, match='not a readable vocabulary'):
        read_meta(str(tmp_path / 'meta.json'), 'prepare it again')


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='needs the shared copy of Tiny Shakespeare')
def test_prepare_says_the_checksum_matched(tmp_path):
    result = run_script('data/shakespeare_char/prepare.py', '--input', SHAKESPEARE, '--out_dir', str(tmp_path))
    assert result.returncode == 0 and "sha256 matches Tiny Shakespeare's" in result.stdout
