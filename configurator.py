"""
nanoGPT-style configuration: defaults, then Python config files, then --key=value overrides.

    python train.py config/shakespeare_char_mingru_cpu.py --batch_size=32 --compile=False

A config file is plain Python whose top-level assignments override defaults. Unlike nanoGPT's
exec-into-globals, every name is checked: an unknown key or a value of the wrong type is a
ConfigError that lists the valid choices, so a typo never silently trains the wrong model.
"""
import ast
import difflib
import os
import types


class ConfigError(ValueError):
    pass


def _suggest(key, valid):
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ''
    return f"unknown config key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}"


def _check_type(key, value, default):
    """Values must have their default's type; an int is accepted where a float is expected."""
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f'config key {key!r} expects {expected.__name__} (default {default!r}), '
                          f'got {type(value).__name__} {value!r}')
    return value


def _parse_value(text):
    """--key=value: a Python literal (3, 1e-3, True, 'x'), else the bare text as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _read_config_file(path):
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or '.'
        choices = sorted(f for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(folder) else []
        listing = f"; files in {folder}/: {', '.join(choices)}" if choices else ''
        raise ConfigError(f'config file {path!r} does not exist{listing}')
    namespace = {}
    with open(path) as f:
        source = f.read()
    try:
        exec(compile(source, path, 'exec'), namespace)
    except Exception as e:  # a config file is user code: name it in the message
        raise ConfigError(f'config file {path!r} failed: {type(e).__name__}: {e}') from e
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def resolve(defaults, args):
    """Return a new dict: defaults updated by the config files and --key=value items of args."""
    config = dict(defaults)
    for arg in args:
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise ConfigError(f'expected --key=value, got {arg!r}')
            updates = {key: _parse_value(text)}
        else:
            updates = _read_config_file(arg)
        for key, value in updates.items():
            if key not in defaults:
                raise ConfigError(_suggest(key, defaults))
            config[key] = _check_type(key, value, defaults[key])
    return config
