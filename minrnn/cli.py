"""
How every script meets its user: one `error:` line that names the fix for an expected failure, never
a traceback; Ctrl-C at any moment, imports included, ends in one line with exit status 130.

    from minrnn import cli
    cli.exit_on_interrupt()    # the script's first statement: before torch is imported
    ...
    if __name__ == '__main__':
        cli.run_cli(main)
"""
import argparse
import os
import signal
import sys


class UsageError(Exception):
    """An expected failure: reported in one `error:` line that names the fix, never a traceback."""


DEBUG = 'MINRNN_DEBUG'  # set (to anything but '' or 0) to see the traceback of an unexpected error
INTERRUPTED = 130       # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def _exit_interrupted(signum, frame):
    print('interrupted', file=sys.stderr, flush=True)
    os._exit(INTERRUPTED)


def exit_on_interrupt():
    """Until run_cli() takes over, Ctrl-C ends the process at once with one line and status 130. Python's
    own default would print a traceback, or die by the signal (a caller sees -2, not 130), and a
    KeyboardInterrupt inside torch's import can surface as an ImportError. Nothing is lost: a script
    has written nothing before run_cli() starts its main()."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job keeps ignoring it
        signal.signal(signal.SIGINT, _exit_interrupted)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the scripts' error form: one `error:` line naming the fix, not usage + error;
    the script's docstring as its description, laid out as written; every default shown in --help."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=_Formatter, **kwargs)

    def error(self, message):
        sys.exit(f'error: {message} (see {self.prog} --help)')


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def run_cli(main, interrupted='interrupted'):
    """Run a script's main() so that it ends in one line, whatever happens: a UsageError or an OSError
    as `error: ...` (exit 1), Ctrl-C as the `interrupted` message (exit 130), a closed stdout
    (`| head`) quietly. Anything else is a bug: one line too, unless MINRNN_DEBUG is set, which
    shows its traceback."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on a KeyboardInterrupt, handled below
    try:
        main()
    except UsageError as e:
        sys.exit(f'error: {e}')
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(INTERRUPTED)
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
