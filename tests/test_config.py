import pytest

from minrnn.settings import ConfigError, resolve
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
    from minrnn import settings
    from minrnn.settings import read_config_file
    from minrnn.blocks import BLOCKS
    for spec in BLOCKS.values():
        for path in spec.configs.values():
            with open(path) as f:
                assigned = {node.targets[0].id: node.value for node in ast.parse(f.read()).body
                            if isinstance(node, ast.Assign)}
            recipe = read_config_file(os.path.join(os.path.dirname(path), ast.literal_eval(assigned.pop('base'))))
            values = read_config_file(path)
            repeated = [key for key in assigned if key in recipe and recipe[key] == values[key]]
            assert not repeated, f'{path} repeats {repeated} of its base'
            assert resolve(settings.defaults(), [path])['block'] == spec.name


@pytest.mark.parametrize('block, suggestion', [('rwkv', None), ('minGRU', 'mingru'), (None, None)])
def test_an_unknown_block_is_named_with_the_choices(block, suggestion):
    from minrnn.blocks import BLOCKS
    from minrnn.settings import check_model
    with pytest.raises(ConfigError) as caught:
        check_model({'block': block})
    message = str(caught.value)
    assert repr(block) in message and all(name in message for name in BLOCKS)
    assert (repr(suggestion) in message) if suggestion else 'did you mean' not in message


def test_every_unknown_key_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        resolve(DEFAULTS, ['--batch_sise=3', '--lerning_rate=1', '--block=gru'])
    assert "'batch_sise'" in str(caught.value) and "'lerning_rate'" in str(caught.value)


def test_nanogpts_own_config_resolves_as_it_is(tmp_path):
    """The keys of nanoGPT's config/train_shakespeare_char.py, its Weights & Biases ones included."""
    from minrnn import settings
    path = tmp_path / 'train_shakespeare_char.py'
    path.write_text("out_dir = 'out-shakespeare-char'\neval_interval = 250\neval_iters = 200\nlog_interval = 10\n"
                    "always_save_checkpoint = False\nwandb_log = False\nwandb_project = 'shakespeare-char'\n"
                    "wandb_run_name = 'mini-gpt'\ndataset = 'shakespeare_char'\ngradient_accumulation_steps = 1\n"
                    "batch_size = 64\nblock_size = 256\nn_layer = 6\nn_head = 6\nn_embd = 384\ndropout = 0.2\n"
                    "learning_rate = 1e-3\nmax_iters = 5000\nlr_decay_iters = 5000\nmin_lr = 1e-4\nbeta2 = 0.99\n"
                    "warmup_iters = 100\n")
    config = settings.configure([str(path)])
    assert config['wandb_project'] == 'shakespeare-char' and config['n_head'] == 6


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
    from minrnn import settings
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
    result = run_script(script, *args)
    assert result.returncode != 0 and result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and '--help' in lines[0], result.stderr
