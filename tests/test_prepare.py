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
