"""
nanoGPT-style configuration: defaults, then Python config files, then --key=value overrides.

    python train.py config/shakespeare_char_mingru_cpu.py --batch_size=32 --compile=False

A config file is plain Python whose top-level assignments override defaults. It runs as code, so
only trusted files belong there. Unlike nanoGPT's exec-into-globals, every name is checked: an
unknown key or a value of the wrong type is a ConfigError that lists the valid choices, so a typo
never silently trains the wrong model. A file may start from another, `base = 'recipe.py'` (a
path beside it): the base's values first, then the file's own, so a recipe is written once and a
block's file holds only what is its own.
"""
import argparse
import ast
import difflib
import os
import re
import sys
import types


class UsageError(Exception):
    """An expected failure: reported in one `error:` line that names the fix, never a traceback."""


class ConfigError(UsageError, ValueError):
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


def _read_config_file(path, including=()):
    """The values a config file sets, its base's first (base = 'file.py', resolved beside it)."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or '.'
        choices = sorted(f for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(folder) else []
        listing = f"; files in {folder}/: {', '.join(choices)}" if choices else ''
        raise ConfigError(f'config file {path!r} does not exist{listing}')
    namespace = {}
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except UnicodeDecodeError:
        raise ConfigError(f'config file {path!r} is not UTF-8 text: a config file is Python assignments') from None
    try:
        exec(compile(source, path, 'exec'), namespace)
    except (Exception, SystemExit) as e:  # a config file is user code (sys.exit too): name it in the message
        raise ConfigError(f'config file {path!r} failed: {type(e).__name__}: {e}') from e
    values = {k: v for k, v in namespace.items()
              if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))}
    base = values.pop('base', None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"config file {path!r}: base must be a file name, got {base!r}")
    base_path = os.path.join(os.path.dirname(path), base)
    if os.path.abspath(base_path) in including:
        raise ConfigError(f'config file {path!r}: base {base!r} includes itself')
    return {**_read_config_file(base_path, (*including, os.path.abspath(path))), **values}


def resolve(defaults, args):
    """Return a new dict: defaults updated by the config files and --key=value items of args."""
    config = dict(defaults)
    for i, arg in enumerate(args):
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                following = args[i + 1] if i + 1 < len(args) else None
                hint = f'; write --{key}={following}' if following and key in defaults else ''
                if isinstance(defaults.get(key), bool) and not (following and not following.startswith('--')):
                    hint = f'; write --{key}=True'
                raise ConfigError(f'expected --key=value, got {arg!r}{hint} (python train.py --help lists the keys)')
            updates = {key: _parse_value(text)}
        else:
            updates = _read_config_file(arg)
        for key, value in updates.items():
            if key not in defaults:
                raise ConfigError(_suggest(key, defaults))
            config[key] = _check_type(key, value, defaults[key])
    return config


# ----------------------------------------------------------------------------- help

def help_text(usage, defaults, groups):
    """usage, then every key of defaults with its default and comment, under its group's name."""
    lines = [usage, '']
    for name, keys in groups:
        lines.append(f'{name}:')
        lines += [f'  --{key}={defaults[key]!r}'.ljust(40) + f' {comment}' for key, comment in keys if key in defaults]
    return '\n'.join(lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with train.py's error form: one `error:` line naming the fix, not usage + error; the
    script's docstring as its description, laid out as written."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        sys.exit(f'error: {message} (see {self.prog} --help)')


# ----------------------------------------------------------------------------- the error boundary

DEBUG = 'MINRNN_DEBUG'  # set (to anything but '' or 0) to see the traceback of an unexpected error


def _interrupted_quietly(kind, value, traceback):
    """Ctrl-C before run_cli takes over (while a script imports torch, a second or two) ends in one
    line too; Python still exits as interrupted (130). Every other exception is printed as usual."""
    if issubclass(kind, KeyboardInterrupt):
        print('interrupted', file=sys.stderr)
        return
    sys.__excepthook__(kind, value, traceback)


sys.excepthook = _interrupted_quietly  # scripts import this module first, before torch


def run_cli(main, interrupted='interrupted'):
    """Run a script's main() so that it ends in one line, whatever happens: a UsageError or an OSError
    as `error: ...` (exit 1), Ctrl-C as the `interrupted` message (exit 130), a closed stdout
    (`| head`) quietly. Anything else is a bug: one line too, unless MINRNN_DEBUG is set, which
    shows its traceback."""
    try:
        main()
    except UsageError as e:
        sys.exit(f'error: {e}')
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)
    except Exception as e:
        if os.environ.get(DEBUG, '0') not in ('', '0'):
            raise
        if isinstance(e, OSError):  # a file or folder the system refused: name it
            sys.exit(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        detail = ' '.join(str(e).split())[:300]
        sys.exit(f'error: unexpected {type(e).__name__}: {detail} (a bug? {DEBUG}=1 shows the traceback; '
                 f'please report it)')
