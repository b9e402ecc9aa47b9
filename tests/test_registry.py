"""A block is declared once: a toy block registered here, in this file only (its mixer in model.MIXERS,
its declaration in minrnn/blocks.py's table), trains, samples, is scored, plotted and benchmarked
through the scripts, with no other file changed; and a subclass of MinRNN with coefficients of its
own runs its own math on every backend."""
import os

import pytest
import torch
import torch.nn as nn

import bench
import evaluate
import plot_curves
import sample
from minrnn import scan, settings
import train
from conftest import TINY, read_log
from test_model import assert_parallel_path_equals_step_path
import model
from minrnn.blocks import BLOCKS, BlockSpec, register
from minrnn.settings import Key


class MovingAverage(nn.Module):
    """h_t = decay * h_{t-1} + (1 - decay) * W x_t, on the project's scan: the smallest recurrent mixer."""

    def __init__(self, config):
        super().__init__()
        self.decay = config.toy_decay
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.out = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, state=None):
        b = (1 - self.decay) * self.proj(x)
        h = scan.linear_scan(torch.full_like(b, self.decay), b, h0=state, backend='sequential')
        return self.out(h), h[:, -1]

    def step(self, x, state):
        h = (1 - self.decay) * self.proj(x) + (0 if state is None else self.decay * state)
        return self.out(h), h


@pytest.fixture
def toy_block(tmp_path):
    config = tmp_path / 'toy_cpu.py'
    config.write_text("block = 'toy'\nn_layer = 2\nn_embd = 32\nblock_size = 32\nbatch_size = 8\n"
                      "toy_decay = 0.8\nmax_iters = 30\neval_interval = 10\n")
    spec = register(BlockSpec('toy', 'Toy', 'tab:olive', recurrent=True, paper=None, configs={'cpu': str(config)},
                              keys={'toy_decay': Key(0.9, 'how much of the state a step keeps', ok=lambda v: 0 < v < 1,
                                                     rule='in (0, 1)')}))
    model.MIXERS['toy'] = MovingAverage
    yield spec
    del BLOCKS['toy'], model.MIXERS['toy']


def test_a_block_declared_in_one_place_goes_through_every_script(toy_block, tmp_path, tiny_dataset, capsys):
    assert 'toy_decay' in settings.model_keys() and 'toy_decay' in settings.unused_by('mingru')
    run = str(tmp_path / 'run')
    args = [toy_block.configs['cpu'], f'--dataset={tiny_dataset}', f'--out_dir={run}', *TINY, '--n_layer=2']
    result = train.main(args)
    evals = read_log(run, 'eval')
    assert result['step'] == 30 and evals[-1]['val_loss'] < evals[0]['val_loss']
    assert read_log(run, 'meta')[0]['config']['toy_decay'] == 0.8

    with pytest.raises(SystemExit) as refused:
        train.main([*args, '--toy_decay=1.5', '--out_dir=' + str(tmp_path / 'bad')])
    assert str(refused.value).startswith('error: toy_decay')

    text = sample.sample(sample.parse_args([f'--out_dir={run}', '--max_new_tokens=20', '--device=cpu']),
                         write=lambda s: None)
    assert len(text[0]) == 20

    rows, _ = evaluate.main([run, '--out', str(tmp_path / 'context'), '--device=cpu'])
    assert {r['series'] for r in rows} == {'Toy'} and any(r['how'] == 'carried' for r in rows)

    table = plot_curves.main([run, '--out', str(tmp_path / 'plots')])
    assert table[0]['series'] == 'Toy' and table[0]['paper_test_loss'] is None
    assert os.path.exists(tmp_path / 'plots' / 'curves_step.png')

    out = bench.main(['--quick', '--out', str(tmp_path / 'bench'), '--device=cpu'])
    recipe = open(os.path.join(out, 'recipe.csv')).read()
    assert '\ntoy,' in recipe and 'transformer' in recipe
    assert '\ntoy,' in open(os.path.join(out, 'generate.csv')).read()
    assert '\nToy,' in open(os.path.join(out, 'train.csv')).read()
    assert 'Toy / Transformer' in open(os.path.join(out, 'ratios.csv')).read()


def test_a_key_declared_twice_differently_is_refused():
    with pytest.raises(ValueError, match="'expansion'"):
        register(BlockSpec('twice', 'Twice', 'tab:olive', keys={'expansion': Key(2.0, 'another')}, recurrent=True,
                           paper=None, configs={}))
    assert 'twice' not in BLOCKS


def test_every_field_of_a_declaration_is_required():
    with pytest.raises(TypeError):
        BlockSpec('partial', 'Partial', 'tab:olive', keys={})


def test_a_mixer_without_its_residual_projection_is_refused(toy_block):
    from model import CharLM, ModelConfig

    class NoOut(MovingAverage):
        def __init__(self, config):
            super().__init__(config)
            del self.out

    register(BlockSpec('noout', 'NoOut', 'tab:olive', keys={'toy_decay': toy_block.keys['toy_decay']}, recurrent=True,
                       paper=None, configs={}))
    model.MIXERS['noout'] = NoOut
    try:
        with pytest.raises(TypeError, match='`out`'):
            CharLM(ModelConfig(block='noout', n_embd=8, n_layer=1))
    finally:
        del BLOCKS['noout'], model.MIXERS['noout']


class TanhCandidateMinRNN(model.MinRNN):
    """A minGRU-like layer with coefficients of its own, as a user extending the family writes it:
    h~ = tanh, no log-space form and no fused kernel."""
    n_projections = 2

    def coefficients(self, gates):
        k_z, k_h = gates.chunk(2, dim=-1)
        z = torch.sigmoid(k_z)
        return 1 - z, z * torch.tanh(k_h)


@pytest.mark.parametrize('backend', ['auto', 'log', 'sequential'])
def test_a_min_rnn_with_its_own_coefficients_equals_its_own_step_path(backend):
    torch.manual_seed(0)
    layer = TanhCandidateMinRNN(model.ModelConfig(block='mingru', n_embd=8, conv_kernel=3, scan_backend=backend)).double()
    assert_parallel_path_equals_step_path(layer, torch.randn(2, 11, 8, dtype=torch.float64))
