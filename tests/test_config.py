import pytest

from configurator import ConfigError, resolve
from conftest import run_script

DEFAULTS = {'batch_size': 64, 'learning_rate': 1e-3, 'block': 'transformer', 'compile': False}


def test_file_then_command_line_overrides(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("batch_size = 12\nblock = 'mingru'\nimport math\n_private = 3\n")
    config = resolve(DEFAULTS, [str(path), '--learning_rate=3e-3', '--compile=True', '--batch_size=16'])
    assert config == {'batch_size': 16, 'learning_rate': 3e-3, 'block': 'mingru', 'compile': True}
    assert DEFAULTS['batch_size'] == 64  # defaults untouched


def test_a_file_starts_from_its_base_beside_it(tmp_path):
    (tmp_path / 'recipe.py').write_text("batch_size = 12\nlearning_rate = 1e-3\n")
    (tmp_path / 'block.py').write_text("base = 'recipe.py'\nblock = 'mingru'\nlearning_rate = 3e-3\n")
    config = resolve(DEFAULTS, [str(tmp_path / 'block.py')])
    assert config == {'batch_size': 12, 'learning_rate': 3e-3, 'block': 'mingru', 'compile': False}


def test_a_base_that_includes_itself_is_refused(tmp_path):
    (tmp_path / 'a.py').write_text("base = 'b.py'\n")
    (tmp_path / 'b.py').write_text("base = 'a.py'\n")
    with pytest.raises(ConfigError, match='includes itself'):
        resolve(DEFAULTS, [str(tmp_path / 'a.py')])


def test_a_blocks_config_file_sets_only_what_its_recipe_does_not():
    """Each recipe is written once: a block's file repeats no key of its base with the base's value."""
    import ast
    import os
    import settings
    from configurator import _read_config_file
    from model import BLOCKS
    for spec in BLOCKS.values():
        for path in spec.configs.values():
            with open(path) as f:
                assigned = {node.targets[0].id: node.value for node in ast.parse(f.read()).body
                            if isinstance(node, ast.Assign)}
            recipe = _read_config_file(os.path.join(os.path.dirname(path), ast.literal_eval(assigned.pop('base'))))
            values = _read_config_file(path)
            repeated = [key for key in assigned if key in recipe and recipe[key] == values[key]]
            assert not repeated, f'{path} repeats {repeated} of its base'
            assert resolve(settings.defaults(), [path])['block'] == spec.name


def test_int_is_accepted_for_float_and_bare_words_are_strings():
    config = resolve(DEFAULTS, ['--learning_rate=1', '--block=minlstm'])
    assert config['learning_rate'] == 1.0 and isinstance(config['learning_rate'], float)
    assert config['block'] == 'minlstm'


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError, match=r"batch_sise.*did you mean batch_size.*valid keys: batch_size, block"):
        resolve(DEFAULTS, ['--batch_sise=3'])


def test_unknown_key_in_a_config_file(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text('n_layers = 3\n')
    with pytest.raises(ConfigError, match='unknown config key .n_layers.'):
        resolve(DEFAULTS, [str(path)])


@pytest.mark.parametrize('arg', ['--batch_size=1.5', '--batch_size=big', '--compile=1', '--learning_rate=fast'])
def test_wrong_type_names_the_expected_type(arg):
    with pytest.raises(ConfigError, match='expects'):
        resolve(DEFAULTS, [arg])


def test_missing_config_file_lists_the_folder(tmp_path):
    (tmp_path / 'real.py').write_text('')
    with pytest.raises(ConfigError, match=r'does not exist; files in .*: real\.py'):
        resolve(DEFAULTS, [str(tmp_path / 'nope.py')])


def test_malformed_argument():
    with pytest.raises(ConfigError, match='expected --key=value'):
        resolve(DEFAULTS, ['--batch_size'])


@pytest.mark.parametrize('args, message', [
    (['config/nope.py'], 'does not exist'),
    (['--batch_sise=3'], 'unknown config key'),
    (['--n_layer=two'], 'expects int'),
    (['--block=rwkv'], "unknown block 'rwkv'; choose one of transformer, mingru, minlstm, mamba, gru, lstm"),
])
def test_train_reports_config_errors_in_one_line(args, message):
    result = run_script('train.py', *args, '--device=cpu', '--progress=False')
    assert result.returncode != 0
    assert result.stderr.strip().startswith('error:') and message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr


def test_key_space_value_gets_a_hint():
    with pytest.raises(ConfigError, match=r"got '--batch_size'; write --batch_size=16"):
        resolve(DEFAULTS, ['--batch_size', '16'])


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_train_help_lists_every_key_with_its_default_and_a_comment(flag):
    import settings
    result = run_script('train.py', 'config/shakespeare_char_mingru_cpu.py', flag)
    assert result.returncode == 0 and result.stdout.startswith('usage: python train.py'), result.stderr
    lines = {line.split()[0].split('=')[0]: line for line in result.stdout.splitlines() if line.startswith('  --')}
    assert set(lines) == {f'--{key}' for key in settings.defaults()}
    for key, default in settings.defaults().items():
        line = lines[f'--{key}']
        assert line.split()[0] == f'--{key}={default!r}' and len(line.split()) > 1, line  # a comment follows
    assert result.stdout.index('I/O:') < result.stdout.index('--out_dir') < result.stdout.index('data:')


@pytest.mark.parametrize('script, args', [
    ('sample.py', ['--bogus']), ('sample.py', ['--num_samples=x']), ('sample.py', ['--top_k=0']),
    ('reproduce.py', ['--scale', 'huge']), ('reproduce.py', ['--seeds', 'x']),
    ('bench.py', ['--parts', 'nothing']), ('plot_curves.py', []), ('plot_curves.py', ['--x', 'y', 'run']),
    ('data/char/prepare.py', ['--input']), ('data/shakespeare_char/prepare.py', ['--bogus']),
])
def test_every_script_reports_a_bad_argument_in_one_line(script, args):
    result = run_script(script, *args, timeout=120)
    assert result.returncode != 0 and result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and '--help' in lines[0], result.stderr
