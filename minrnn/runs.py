"""
A run folder (out_dir) and what lies in it:

    config.json   the resolved configuration, with the machine it ran on (devices.environment)
    log.jsonl     one JSON object a line: a 'meta' header, 'eval' rows every eval_interval,
                  'train' rows every log_interval, 'stop' and 'resume' rows where a run stopped
                  (the reason) and went on
    ckpt.pt       the latest checkpoint; best.pt the one of lowest val loss (checkpoints.py)
    .lock         held while a training writes here

This module writes config.json and the log, reads logs back for the tables and figures, and decides
which runs form one series: runs whose configurations are equal apart from the keys in
settings.NEUTRAL_KEYS. No torch here.
"""
import contextlib
import json
import math
import os
import shutil
import sys

from minrnn.blocks import display
from minrnn.cli import UsageError
from minrnn.settings import NEUTRAL_KEYS, unused_by

LOG_FORMAT = 1
RUN_FILES = ('ckpt.pt', 'best.pt', 'log.jsonl')


class RunError(UsageError):
    """A checkpoint or run folder that cannot be used: one line, with what to do."""


def warn(message):
    print(f'warning: {message}', file=sys.stderr)


def write_config(out_dir, config):
    """out_dir/config.json, written whole or not at all; a full disk is one line naming the file."""
    path = os.path.join(out_dir, 'config.json')
    try:
        with open(path + '.tmp', 'w') as f:
            json.dump(config, f, indent=1)
        os.replace(path + '.tmp', path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(path + '.tmp')
        raise RunError(f'could not write {path} ({e.strerror}); free disk space or choose another --out_dir') from None


def remove_run_files(out_dir):
    """A fresh start in out_dir (--overwrite=True): the earlier run's files go first, so that a kill
    at any moment never leaves a new config.json beside an old checkpoint."""
    for name in (*RUN_FILES, 'config.json'):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))


def copy_runs(out_dirs, folder):
    """Each run's log and config into folder/<name>/ (checkpoints stay where they are); the copies' paths."""
    copies = []
    for name, out_dir in out_dirs.items():
        copy = os.path.join(folder, name)
        os.makedirs(copy, exist_ok=True)
        for file in ('log.jsonl', 'config.json'):
            if os.path.exists(os.path.join(out_dir, file)):
                shutil.copy2(os.path.join(out_dir, file), os.path.join(copy, file))
        copies.append(copy)
    return copies


def finished_files(out_dir):
    """The files of an earlier run in out_dir that a fresh start would replace."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]


# ----------------------------------------------------------------------------- the lock

try:
    import fcntl

    def _lock(file):
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
except ImportError:  # Windows
    import msvcrt

    def _lock(file):
        file.seek(0)
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None


@contextlib.contextmanager
def out_dir_lock(out_dir):
    """Held while a training runs: a second one in the same out_dir would overwrite its log and
    checkpoints. The lock is the kernel's (flock; msvcrt on Windows), so a killed run never leaves it."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, '.lock'), 'a+')
    except OSError as e:
        raise RunError(f'cannot write to out_dir {out_dir} ({e.strerror}); choose another --out_dir') from None
    with lock:
        try:
            _lock(lock)
        except BlockingIOError:
            lock.seek(0)
            raise RunError(f'out_dir {out_dir} is in use by another training (process {lock.read().strip()}); '
                           f'wait for it to end, or choose another --out_dir') from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


# ----------------------------------------------------------------------------- the log

def read_rows(log_path):
    """The log's rows that are JSON objects; any other line (cut short by a kill, damaged) is named and skipped."""
    rows = []
    with open(log_path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif line.strip():
                warn(f'{log_path}:{number}: unreadable line skipped (a write cut short?)')
    return rows


def is_step(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RunLog:
    """out_dir/log.jsonl, the record plot_curves.py reads; one JSON object a line."""

    def __init__(self, path, resume_step=None):
        """A fresh log, or with resume_step, the old one cut back to what that checkpoint had seen."""
        self.path = path
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        self.file = open(path, 'a' if resume_step is not None else 'w')

    def _truncate_after(self, step):
        """Drop what the interrupted run logged past its checkpoint: the resumed run logs it again."""
        kept = [row for row in read_rows(self.path)
                if row.get('kind') == 'meta' or (is_step(row.get('step')) and (
                    row['step'] < step or (row.get('kind') in ('train', 'stop', 'resume') and row['step'] == step)))]
        try:
            with open(self.path + '.tmp', 'w') as f:
                f.writelines(json.dumps(row) + '\n' for row in kept)
            os.replace(self.path + '.tmp', self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(self.path + '.tmp')
            raise RunError(f'could not rewrite {self.path} ({e.strerror}); it is unchanged. Free disk space or '
                           f'choose another --out_dir, then resume') from None

    def write(self, **row):
        self.file.write(json.dumps(row) + '\n')
        self.file.flush()

    def close(self):
        self.file.close()


def read_run(path):
    """A run's meta, eval rows and train rows from its log; None (with a warning) if unusable."""
    log_path = path if path.endswith('.jsonl') else os.path.join(path, 'log.jsonl')
    if not os.path.isfile(log_path):
        warn(f'skipping {path}: no log.jsonl there')
        return None
    rows = read_rows(log_path)
    meta = next((r for r in rows if r.get('kind') == 'meta'), None)
    if meta is None or meta.get('format') != LOG_FORMAT or not isinstance(meta.get('config'), dict):
        warn(f'skipping {log_path}: no log header of format {LOG_FORMAT} (an older or foreign log)')
        return None
    evals = [r for r in rows if r.get('kind') == 'eval' and is_step(r.get('step')) and is_number(r.get('val_loss'))]
    trains = [r for r in rows if r.get('kind') == 'train' and is_step(r.get('step')) and is_number(r.get('ms_per_iter'))]
    dropped = sum(r.get('kind') == 'eval' for r in rows) - len(evals)
    if dropped:
        warn(f'{log_path}: {dropped} eval row(s) without a whole step and a finite val loss skipped')
    if not evals:
        warn(f'skipping {log_path}: no evaluation rows with a finite val loss')
        return None
    return {'path': log_path, 'real_path': os.path.realpath(log_path), 'block': meta.get('block', '?'),
            'params': meta.get('params'), 'config': meta['config'],
            'evals': sorted(evals, key=lambda r: r['step']), 'trains': trains}


# ----------------------------------------------------------------------------- series

def identity(config):
    """What makes a run's curve: its configuration without the keys that cannot change it
    (settings.NEUTRAL_KEYS) and the keys its block does not read. Runs with equal identities are
    seeds of one series."""
    unused = unused_by(config.get('block'))
    return {k: v for k, v in config.items() if k not in NEUTRAL_KEYS and k not in unused}


def group_series(runs):
    """[(label, [runs])]: one series per distinct identity, in the order first seen; a run named twice
    (or through a link) counts once, and runs with the same seed in one series count once, each with
    a warning. Within a block whose runs form several series, each label names what differs."""
    seen, unique = set(), []
    for run in runs:
        if run['real_path'] in seen:
            warn(f"{run['path']} is named twice (or through a link): counted once")
            continue
        seen.add(run['real_path'])
        unique.append(run)
    series = {}
    for run in unique:
        key = json.dumps(identity(run['config']), sort_keys=True, default=str)
        members = series.setdefault(key, [])
        if any(m['config'].get('seed') == run['config'].get('seed') for m in members):
            warn(f"{run['path']}: seed {run['config'].get('seed')} is already in its series: counted once")
            continue
        members.append(run)
    groups = list(series.values())
    labelled = [(series_label(members, groups), members) for members in groups]
    for block in dict.fromkeys(m[0]['block'] for m in groups):
        labels = [label for label, members in labelled if members[0]['block'] == block]
        if len(labels) > 1:
            warn(f"the {block} runs differ in more than their seed: {len(labels)} series ({'; '.join(labels)})")
    return labelled


def series_label(members, groups):
    """The block's display name, and where the block has other series, the keys in which they differ."""
    block = members[0]['block']
    name = display(block)
    same_block = [identity(g[0]['config']) for g in groups if g[0]['block'] == block]
    if len(same_block) == 1:
        return name
    mine = identity(members[0]['config'])
    differing = sorted(k for k in set().union(*same_block) if len({json.dumps(s.get(k), default=str) for s in same_block}) > 1)
    return name + ' ' + ' '.join(f'{k}={short(mine.get(k))}' for k in differing)


def short(value):
    return f'{value:g}' if isinstance(value, float) else str(value)
