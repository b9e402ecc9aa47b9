"""
Train a character-level language model (any block of model.py) from a config file.

    python train.py config/shakespeare_char_transformer_cpu.py             # one process
    python train.py config/shakespeare_char_mingru_cpu.py --init_from=resume
    torchrun --standalone --nproc_per_node=4 train.py config/shakespeare_char_mingru.py   # DDP

Writes config.json, log.jsonl, ckpt.pt and best.pt to out_dir (minrnn/runs.py says what each holds).
A resume is the run that was started: its configuration comes from its checkpoint, and the command
may change only what settings.RESUMABLE_KEYS names (how long it runs, how it is watched, where);
it continues bit-exactly on CPU in float32. A fresh start never replaces an earlier run's files
unless --overwrite=True. SIGINT / SIGTERM save a checkpoint at the current step and exit 130 / 143.
"""
from minrnn import cli
cli.exit_on_interrupt()  # first: a Ctrl-C while torch imports ends in one line, exit 130

import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from minrnn import checkpoints, devices, runs, scan, settings
from minrnn.blocks import BLOCKS
from minrnn.cli import UsageError, run_cli
from minrnn.dataset import get_batch, load_dataset
from minrnn.scoring import estimate_loss, full_split_loss, split_batches
from model import CharLM, ModelConfig


class TrainingError(UsageError):
    """A failure to report in one line, with what to do about it."""


# ----------------------------------------------------------------------------- set-up

def setup_distributed(config):
    """(rank, world_size, device); under torchrun also initialises the process group."""
    device = devices.resolve(config['device'])
    if 'RANK' not in os.environ:
        return 0, 1, device
    rank, local_rank, world = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    backend = 'nccl' if device.startswith('cuda') else 'gloo'
    dist.init_process_group(backend, timeout=timedelta(seconds=config['ddp_timeout']))
    return rank, world, device


def resumed_config(argv, config):
    """A resume's configuration: the run's own (its checkpoint's), updated by the command's config
    files and flags only where settings.RESUMABLE_KEYS allows; anything else it would change is
    refused in one line that names the key and both values."""
    ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
    saved = checkpoints.load_checkpoint(ckpt_path, hint=f"nothing to resume in {config['out_dir']}: start without "
                                                        f'--init_from=resume (a new run)')['config']
    config = settings.configure_resume(argv, saved)
    return config


def refuse_to_replace(config):
    """A fresh start writes over out_dir's log and checkpoints: only when asked to."""
    if config['eval_only'] and config['init_from'] != 'resume':
        raise TrainingError('--eval_only=True evaluates a trained checkpoint: add --init_from=resume')
    earlier = runs.finished_files(config['out_dir'])
    if config['init_from'] == 'scratch' and earlier and not config['overwrite']:
        raise TrainingError(f"out_dir {config['out_dir']} holds an earlier run ({', '.join(earlier)}); continue it with "
                            f'--init_from=resume, replace it with --overwrite=True, or choose another --out_dir')


def check_memory(model_config, batch_size, device):
    """Refuse, in one line, a configuration whose parameters and activations cannot fit, before any
    allocation. A lower bound: float32 weights, gradients and AdamW's two moments (16 bytes a
    parameter), and 24 floats of activations per token, layer and unit of width."""
    try:
        with torch.device('meta'):  # shapes only: no memory
            params = CharLM(model_config).num_params()
    except RuntimeError as e:  # a tensor whose size overflows 64 bits
        raise TrainingError(f"this configuration's tensors are too large for any machine ({str(e)[:80]}); lower "
                            f"n_embd (now {model_config.n_embd}), n_layer or the block's width keys") from None
    weights = 16 * params
    activations = 4 * 24 * batch_size * model_config.block_size * model_config.n_layer * model_config.n_embd
    free = devices.free_memory(device)
    if free is None or weights + activations <= free:
        return
    gib = lambda n: f'{n / 2 ** 30:,.1f} GiB'
    culprit = (f'{params:,} parameters (n_embd={model_config.n_embd}, n_layer={model_config.n_layer} and the '
               f"block's width keys)" if weights >= activations else
               f'activations of batch_size={batch_size} x block_size={model_config.block_size}')
    raise TrainingError(f'this configuration needs at least {gib(weights + activations)} ({culprit}), more than the '
                        f'{gib(free)} free on {device}; lower those keys')


class StopNow(Exception):
    """A signal during an evaluation: the run stops without waiting for it to finish."""


class StopRequest:
    """Why the loop should stop after the current step: SIGINT / SIGTERM (save a checkpoint and exit),
    or max_seconds of wall time spent (evaluate, save and exit, as at max_iters). Inside
    interruptible() (an evaluation, which can take minutes) a signal stops at once; a second signal
    ends the process at once."""

    def __init__(self, max_seconds=0):
        self.signal = None
        self.previous = {}
        self.immediate = False
        self.deadline = time.monotonic() + max_seconds if max_seconds else None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # the second one: the user means now
            os._exit(128 + signum)
        self.signal = signal.Signals(signum).name
        if self.immediate:
            raise StopNow

    @contextlib.contextmanager
    def interruptible(self, allowed=True):
        """A stretch of work (no file written in it) that a signal may cut short."""
        self.immediate = allowed
        try:
            if allowed and self.signal:
                raise StopNow
            yield
        finally:
            self.immediate = False

    def requested(self, world, device):
        """The signal's name, 'max_seconds' or None, the same in every process: all stop after the
        same step, or one would wait forever."""
        out_of_time = self.deadline is not None and time.monotonic() > self.deadline
        flag = 2 if self.signal is not None else 1 if out_of_time else 0
        if world > 1:
            flag = torch.tensor(float(flag), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            flag = int(flag.item())
        if flag == 2:
            self.signal = self.signal or 'SIGTERM'
            return self.signal
        return 'max_seconds' if flag == 1 else None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- one process's run

class Training:
    """One process's training: the data, the model and its optimizer, and the loop's progress (step,
    best val loss, time and tokens), which a checkpoint saves and a resume restores."""

    def __init__(self, config, data, command, rank, world, device):
        self.config, self.command, self.rank, self.world, self.device = config, command, rank, world, device
        self.master = rank == 0
        self.dtype = devices.resolve_dtype(config['dtype'], device)
        torch.manual_seed(config['seed'] + rank)
        self.data_generator = torch.Generator().manual_seed(config['seed'] + rank)
        self.train_data, self.val_data, self.meta = data
        self.model_config = ModelConfig.from_dict({**config, 'vocab_size': self.meta['vocab_size']})
        check_memory(self.model_config, config['batch_size'], device)
        self.raw_model = CharLM(self.model_config).to(device)
        self.optimizer = self.raw_model.configure_optimizer(config['weight_decay'], config['learning_rate'],
                                                            (config['beta1'], config['beta2']), devices.kind(device))
        self.scaler = torch.amp.GradScaler(devices.kind(device), enabled=self.dtype == 'float16')
        self.ckpt_path = os.path.join(config['out_dir'], 'ckpt.pt')
        self.step, self.best_val, self.best_step, self.elapsed, self.tokens_seen = 0, float('inf'), None, 0.0, 0
        self.resumed_from = None
        self.bad_steps, self.window = 0, (0.0, 0)  # consecutive non-finite steps; (seconds, steps) since the last log
        if config['init_from'] == 'resume':
            self.resume()
        self.first_step = self.step
        self.model = torch.compile(self.raw_model) if config['compile'] else self.raw_model
        self.eval_model = self.model  # compiled too, but outside DDP: evaluation needs no gradient sync
        if world > 1:
            index = [torch.device(device).index] if devices.kind(device) == 'cuda' else None
            self.model = DDP(self.model, device_ids=index)
        self.autocast = (torch.autocast(devices.kind(device), dtype=getattr(torch, self.dtype))
                         if self.dtype != 'float32' else contextlib.nullcontext())
        self.tokens_per_step = config['batch_size'] * config['block_size'] * config['gradient_accumulation_steps'] * world
        self.log = self.start_log() if self.master and not config['eval_only'] else None
        self.wandb = self.start_wandb() if self.master and config['wandb_log'] and not config['eval_only'] else None
        self.last_eval_seconds = None

    def resume(self):
        ckpt = checkpoints.load_checkpoint(self.ckpt_path, hint=f"nothing to resume in {self.config['out_dir']}: start "
                                                         f'without --init_from=resume (a new run)')
        checkpoints.check_resumable(ckpt, self.model_config, self.meta, self.config['dataset'])
        self.raw_model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.scaler.load_state_dict(ckpt['scaler'])
        self.step, self.best_val, self.elapsed, self.tokens_seen = ckpt['step'], ckpt['best_val_loss'], ckpt['elapsed'], ckpt['tokens']
        self.best_step = ckpt.get('best_val_step')
        self.resumed_from = ckpt['config']
        if self.master:
            print(f'resuming from step {self.step} of {self.ckpt_path} (best val loss so far {self.best_val:.4f})')
            change = settings.schedule_changes(ckpt['config'], self.config, self.step)
            if change:
                print(f'warning: {change}')
        self.restore_rng(ckpt['rng'])

    def restore_rng(self, saved):
        if len(saved) == self.world:  # exact: every process continues its own random streams
            rng = saved[self.rank]
            torch.set_rng_state(rng['torch'])
            self.data_generator.set_state(rng['data'])
            if devices.kind(self.device) == 'cuda' and rng.get('cuda') is not None:
                torch.cuda.set_rng_state(rng['cuda'])
            return
        torch.manual_seed(self.config['seed'] + self.rank + 1000 * self.step)
        self.data_generator.manual_seed(self.config['seed'] + self.rank + 1000 * self.step)
        if self.master:
            print(f'warning: the checkpoint was written by {len(saved)} process(es), this run has {self.world}: '
                  f'training continues with fresh random streams (not bit-exact)')

    def resolved_config(self):
        """The configuration as it ran: with what 'auto' became and what the numbers depend on."""
        config = self.config
        reads_scan = 'scan_backend' in BLOCKS[config['block']].keys
        return {**config, 'vocab_size': self.meta['vocab_size'], 'world_size': self.world,
                'device_resolved': self.device, 'dtype_resolved': self.dtype, 'torch_version': torch.__version__,
                'backend_resolved': scan.resolve_backend(config['scan_backend'], self.device) if reads_scan else None,
                'environment': devices.environment(self.device),
                'params': self.raw_model.num_params(), 'params_non_embedding': self.raw_model.num_params(non_embedding=True)}

    def start_log(self):
        """Print the configuration, open log.jsonl (its header on a fresh start, a 'resume' row on a
        resume) and, on a fresh start, write config.json; a resume rewrites it with its next
        checkpoint, so that at any moment it describes the ckpt.pt beside it."""
        config, resolved = self.config, self.resolved_config()
        unused = settings.unused_by(config['block']) | {'environment'}
        print('configuration:\n' + '\n'.join(f'  {k} = {v!r}' for k, v in resolved.items() if k not in unused))
        env = resolved['environment']
        print(f"machine: {env['device_detail']}, {env['threads']} threads, {env['cpu_capability']}, torch {env['torch']}")
        for warning in settings.schedule_warnings(config):
            print(f'warning: {warning}')
        print(f"parameters: {resolved['params']:,} total, {resolved['params_non_embedding']:,} non-embedding; "
              f'{self.tokens_per_step:,} tokens per step')
        cpu_config = BLOCKS[config['block']].configs.get('cpu')
        warning = devices.long_run_warning(config, resolved['params'], len(self.val_data), self.device, cpu_config)
        if warning:
            print(f'warning: {warning}', flush=True)
        resuming = config['init_from'] == 'resume'
        if not resuming:
            runs.write_config(config['out_dir'], resolved)
        log = runs.RunLog(os.path.join(config['out_dir'], 'log.jsonl'), resume_step=self.step if resuming else None)
        if resuming:
            changed = {k: [self.resumed_from.get(k), v] for k, v in config.items()
                       if k in settings.RESUMABLE_KEYS and k in self.resumed_from and self.resumed_from[k] != v
                       and k not in ('init_from', 'overwrite')}
            log.write(kind='resume', step=self.step, changed=changed)
        else:
            log.write(kind='meta', format=runs.LOG_FORMAT, block=config['block'], val_loss='whole split',
                      params=resolved['params'], params_non_embedding=resolved['params_non_embedding'],
                      tokens_per_step=self.tokens_per_step, config=resolved)
        return log

    def start_wandb(self):
        """Weights & Biases, as nanoGPT's wandb_log does it, where the package is installed (it is not a
        dependency); otherwise one line, and the run goes on with its log.jsonl."""
        try:
            import wandb
        except ImportError:
            print('note: wandb_log=True, but the wandb package is not installed (pip install wandb): the run is '
                  'logged to log.jsonl only')
            return None
        wandb.init(project=self.config['wandb_project'], name=self.config['wandb_run_name'],
                   config=self.resolved_config())
        return wandb

    # ---- saving

    def rng_state(self):
        return {'torch': torch.get_rng_state(), 'data': self.data_generator.get_state(),
                'cuda': torch.cuda.get_rng_state() if devices.kind(self.device) == 'cuda' else None}

    def save(self, path):
        """Called by every process at the same points: each one's RNG states go into the file."""
        rng_states = [self.rng_state()]
        if self.world > 1:
            rng_states = [None] * self.world
            dist.all_gather_object(rng_states, self.rng_state())
        if not self.master:
            return
        checkpoints.save_checkpoint({
            'format': checkpoints.CHECKPOINT_FORMAT, 'model': self.raw_model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scaler': self.scaler.state_dict(),
            'model_config': self.model_config.asdict(), 'config': self.config, 'step': self.step,
            'best_val_loss': self.best_val, 'best_val_step': self.best_step, 'elapsed': self.elapsed,
            'tokens': self.tokens_seen, 'rng': rng_states,
            'vocab': {'stoi': self.meta['stoi'], 'itos': self.meta['itos']}}, path)
        if path == self.ckpt_path:  # config.json describes the ckpt.pt beside it
            runs.write_config(self.config['out_dir'], self.resolved_config())

    # ---- the loop's parts

    def evaluate(self, lr, final, stop):
        """Score both splits, log them, save best.pt on improvement and ckpt.pt (eval_only: nothing).
        A signal during the scoring (one process) stops it at once: StopNow."""
        t0, config = time.perf_counter(), self.config
        self.eval_model.eval()
        try:
            with stop.interruptible(allowed=self.world == 1), self.eval_progress() as tick:
                train_loss = estimate_loss(self.eval_model, self.train_data, config['eval_iters'], config['batch_size'],
                                           config['block_size'], config['seed'], self.device, self.autocast,
                                           self.rank, self.world, on_batch=tick)
                val_loss = full_split_loss(self.eval_model, self.val_data, config['block_size'], self.device,
                                           self.autocast, self.rank, self.world, on_batch=tick)
        finally:
            self.eval_model.train()
        self.last_eval_seconds = time.perf_counter() - t0
        if self.master:
            tqdm.write(f'step {self.step}: train loss {train_loss:.4f}, val loss {val_loss:.4f} '
                       f'({self.last_eval_seconds:.1f} s)')
        if self.wandb is not None:
            self.wandb.log({'iter': self.step, 'train/loss': train_loss, 'val/loss': val_loss, 'lr': lr})
        if config['eval_only']:
            return
        if self.master:
            self.log.write(kind='eval', step=self.step, tokens=self.tokens_seen, time=round(self.elapsed, 3), lr=lr,
                           train_loss=train_loss, val_loss=val_loss)
        if val_loss < self.best_val:
            self.best_val, self.best_step = val_loss, self.step
            self.save(os.path.join(config['out_dir'], 'best.pt'))
        if config['always_save_checkpoint'] or final:
            self.save(self.ckpt_path)
        self.elapsed += time.perf_counter() - t0

    @contextlib.contextmanager
    def eval_progress(self):
        """Sign of life while an evaluation runs (minutes at a large eval_iters or on a slow device): a
        second bar over its batches, or without bars a line saying it is under way and how long the
        last one took. Yields the function to call after each batch."""
        if not self.master:
            yield lambda: None
            return
        batches = -(-self.config['eval_iters'] // self.world) + -(-len(
            split_batches(len(self.val_data), self.config['block_size'])) // self.world)
        if not self.config['progress']:
            last = f' (the last took {self.last_eval_seconds:.0f} s)' if self.last_eval_seconds is not None else ''
            print(f'step {self.step}: evaluating, {batches} batches{last}', flush=True)
            yield lambda: None
            return
        with tqdm(total=batches, desc='evaluating', leave=False, position=1, dynamic_ncols=True) as bar:
            yield lambda: bar.update(1)

    def train_step(self):
        """One optimizer step over gradient_accumulation_steps micro-batches; returns the loss."""
        accumulate = self.config['gradient_accumulation_steps']
        for micro in range(accumulate):
            x, y = get_batch(self.train_data, self.config['batch_size'], self.config['block_size'],
                             self.data_generator, self.device)
            sync = self.world == 1 or micro == accumulate - 1
            with (contextlib.nullcontext() if sync else self.model.no_sync()), self.autocast:
                loss = self.model(x, y)[1] / accumulate
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.config['grad_clip'] or float('inf'))
        loss_value = loss.item() * accumulate
        finite = math.isfinite(loss_value) and (self.scaler.is_enabled() or math.isfinite(grad_norm.item()))
        if finite:
            self.scaler.step(self.optimizer)
            self.bad_steps = 0
        else:
            self.skip_bad_step(loss_value, grad_norm.item())
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def skip_bad_step(self, loss_value, grad_norm):
        self.bad_steps += 1
        limit = self.config['max_bad_steps']
        if self.master:
            tqdm.write(f'warning: step {self.step}: non-finite loss or gradient (loss {loss_value}, grad norm '
                       f'{grad_norm}); step skipped ({self.bad_steps}/{limit})')
        if self.bad_steps >= limit:
            raise TrainingError(
                f'{self.bad_steps} consecutive non-finite steps, the first at step {self.step - self.bad_steps + 1}; '
                f'the last good checkpoint {self.ckpt_path} is kept. Lower --learning_rate, use --dtype=float32 (or '
                f'bfloat16 instead of float16), or try --scan_backend=sequential')

    def record(self, loss_value, lr, seconds, bar):
        """Count the step, log the training loss every log_interval (and print it where no bar shows)."""
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        self.elapsed += seconds
        self.window = (self.window[0] + seconds, self.window[1] + 1)
        remaining_hours = seconds * (self.config['max_iters'] - self.step) / 3600
        if self.master and self.step == self.first_step + 1 and remaining_hours > 2:
            tqdm.write(f"warning: at {seconds:.1f} s a step on {self.device}, the {self.config['max_iters'] - self.step} "
                       f'steps left take about {remaining_hours:.0f} hours (measured on the first step); a config '
                       f'for this device, or --max_seconds, bounds it')
        if self.master and self.step % self.config['log_interval'] == 0:
            ms = round(1000 * self.window[0] / self.window[1], 2)
            self.log.write(kind='train', step=self.step, loss=loss_value, lr=lr, ms_per_iter=ms)
            if bar.disable:
                print(f'step {self.step}: loss {loss_value:.4f}, {ms:.1f} ms/iter, lr {lr:.2e}', flush=True)
            self.window = (0.0, 0)
        bar.update(1)
        bar.set_postfix(loss=f'{loss_value:.4f}', tok_s=f'{self.tokens_per_step / seconds:,.0f}', refresh=False)

    # ---- the loop

    def run(self):
        """Train to max_iters (or max_seconds, or a signal), evaluating every eval_interval steps.
        Returns the outcome: final step, best val loss and its step, and the signal if one ended it."""
        config = self.config
        bar = tqdm(total=config['max_iters'], initial=self.step, disable=not (self.master and config['progress']),
                   dynamic_ncols=True, desc=config['block'])
        stopping, interrupted = None, None
        with StopRequest(config['max_seconds']) as stop:
            while True:
                lr = settings.learning_rate_at(self.step, config)
                for group in self.optimizer.param_groups:
                    group['lr'] = lr
                if self.step >= config['max_iters'] or config['eval_only']:
                    stopping = 'eval_only' if config['eval_only'] else 'max_iters'
                if self.step % config['eval_interval'] == 0 or stopping:
                    try:
                        self.evaluate(lr, stopping, stop)
                    except Exception as error:  # StopNow, or wrapped by torch.compile compiling inside
                        if not stopped_by_signal(error):
                            raise
                        interrupted = self.interrupt(stop.signal, bar)
                        break
                    if not stopping and stop.requested(self.world, self.device) == 'max_seconds':
                        stopping = 'max_seconds'  # this evaluation was the last: not another one a step later
                        if not config['always_save_checkpoint']:
                            self.save(self.ckpt_path)
                if stopping:
                    break
                t0 = time.perf_counter()
                loss_value = self.train_step()
                self.record(loss_value, lr, time.perf_counter() - t0, bar)
                request = stop.requested(self.world, self.device)
                if request == 'max_seconds':
                    stopping = request  # evaluate and save at the top of the loop, then stop
                elif request:
                    interrupted = self.interrupt(request, bar)
                    break
        bar.close()
        self.finish(stopping)
        return {'step': self.step, 'best_val_loss': self.best_val, 'best_val_step': self.best_step,
                'signal': interrupted}

    def interrupt(self, signal_name, bar):
        """Save where the run stands (eval_only: nothing to save), log why it stopped, and say how to go on."""
        if self.config['eval_only']:
            return signal_name
        self.save(self.ckpt_path)
        if self.log is not None:
            self.log.write(kind='stop', step=self.step, reason=signal_name)
        if self.master:
            bar.close()
            print(f'{signal_name}: saved {self.ckpt_path} at step {self.step}. Resume with: '
                  f'{resume_command(self.command)}')
        return signal_name

    def finish(self, stopping):
        if self.log is not None:
            if stopping:
                self.log.write(kind='stop', step=self.step, reason=stopping)
            self.log.close()
        if self.master and stopping and not self.config['eval_only']:
            print(summary(self.config['out_dir'], self.step, self.elapsed, self.best_val, self.best_step, stopping))
        if self.world > 1:
            dist.barrier()  # rank 0 may still be writing the checkpoint: tear gloo/nccl down together


def stopped_by_signal(error):
    """Whether a signal's StopNow is this error or lies under it (torch.compile wraps what is raised
    while it compiles, InductorError and the like)."""
    while error is not None:
        if isinstance(error, StopNow):
            return True
        error = error.__cause__ or error.__context__
    return False


def resume_command(command):
    """The command that continues this run: the same arguments, init_from=resume once."""
    words = [w for w in command.split(' ') if not w.startswith(('--init_from=', '--overwrite='))]
    return ' '.join(words + ['--init_from=resume'])


def summary(out_dir, step, elapsed, best_val, best_step, reason):
    """What a finished run prints: its best result, where its files are, what to do next."""
    path = lambda name: os.path.join(out_dir, name)
    at = f' at step {best_step}' if best_step is not None else ''
    why = ' (max_seconds reached)' if reason == 'max_seconds' else ''
    return (f'done: step {step}{why}, {elapsed:.0f} s of training and evaluation; best val loss {best_val:.4f} '
            f'(whole val split){at}\n'
            f"  checkpoints: {path('best.pt')} (best), {path('ckpt.pt')} (latest); log: {path('log.jsonl')}\n"
            f'  sample: python sample.py --out_dir={out_dir}\n'
            f'  plot:   python plot_curves.py {out_dir}')


def train(config, command='python train.py ...'):
    settings.check(config)
    data = load_dataset(config['dataset'], config['block_size'])  # checked before out_dir is made
    distributed = 'RANK' in os.environ
    if distributed:
        refuse_to_replace(config)  # in every process, before any of them writes
    rank, world, device = setup_distributed(config)
    writes = rank == 0 and not config['eval_only']
    with runs.out_dir_lock(config['out_dir']) if writes else contextlib.nullcontext():
        if not distributed:
            refuse_to_replace(config)  # inside the lock: a busy out_dir is reported as busy
        if writes and config['init_from'] == 'scratch':
            runs.remove_run_files(config['out_dir'])  # --overwrite: no old checkpoint beside the new config.json
        return Training(config, data, command, rank, world, device).run()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if {'-h', '--help'} & set(argv):
        print(settings.usage())
        return None
    try:
        config = settings.configure(argv)
        if config['init_from'] == 'resume':  # before anything is made: a failed resume leaves no folder
            config = resumed_config(argv, config)
        for key in settings.unused_flags(argv, config['block']):
            print(f"warning: --{key} is not read by block {config['block']!r}: ignored", file=sys.stderr)
        result = train(config, command=' '.join(['python train.py', *argv]))
    except UsageError as e:
        sys.exit(f'error: {e}')
    except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors
        if not (dist.is_available() and dist.is_initialized()):
            raise
        detail = (str(e).splitlines() or [''])[0][:160]
        # Printed now: torchrun may SIGTERM this process while it tears down, before exit could print.
        print(f'error: a process of this distributed run failed or stopped answering ({type(e).__name__}: '
              f'{detail}); the last checkpoint in the out_dir is intact: resume with --init_from=resume',
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            # Free the DDP reducer (in reference cycles) and its gloo work while the interpreter is
            # alive: freed at shutdown instead, gloo threads can abort the process (SIGABRT).
            gc.collect()
            dist.destroy_process_group()
    if result['signal'] and __name__ == '__main__':
        sys.exit(128 + signal.Signals[result['signal']])
    return result


if __name__ == '__main__':
    run_cli(main, interrupted='interrupted before training began: nothing was saved')
