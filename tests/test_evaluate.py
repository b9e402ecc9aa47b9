"""evaluate.py: the carried-state, sliding-window and per-position scores against brute force."""
import math

import numpy as np
import pytest
import torch

import evaluate
import train
from minrnn import checkpoints
from minrnn import scoring
from conftest import TINY
from test_model import tiny_model

DATA = np.random.default_rng(0).integers(0, 11, 203).astype(np.uint16)  # not a multiple of any window


def stepwise_losses(model, tokens, context=None):
    """-log p(token t) for t = 1.., each predicted by the step path from the `context` tokens before it
    (all of them when None), in float64."""
    losses = []
    for t in range(1, len(tokens)):
        start = 0 if context is None else max(0, t - context)
        states = [None] * len(model.blocks)
        for pos, token in enumerate(tokens[start:t]):
            logits, states = model.step(torch.tensor([int(token)]), states, pos)
        losses.append(-torch.log_softmax(logits[0], -1)[int(tokens[t])].item())
    return losses


@pytest.mark.parametrize('block, overrides', [('mingru', {'conv_kernel': 4}), ('minlstm', {}), ('mamba', {'ff_mult': 0}),
                                              ('gru', {}), ('lstm', {'conv_kernel': 4})])
def test_carried_state_scores_every_token_from_everything_before_it(block, overrides):
    model = tiny_model(block, **overrides)
    with torch.no_grad():
        expected = sum(stepwise_losses(model, DATA[:120])) / 119
        for chunk in (7, 24, 500):  # chunks that do not divide the split, and one longer than it
            assert math.isclose(scoring.carried_state_loss(model, DATA[:120], chunk, 'cpu'), expected, rel_tol=1e-10)


def test_sliding_window_scores_every_token_from_the_window_before_it():
    model = tiny_model('transformer')  # block_size 24
    with torch.no_grad():
        expected = stepwise_losses(model, DATA[:80], context=24)
        got = scoring.sliding_window_loss(model, DATA[:80], 24, 5, 'cpu')
    assert math.isclose(got, sum(expected) / len(expected), rel_tol=1e-10)


def test_position_losses_average_to_the_windowed_score():
    model = tiny_model('mingru')
    data = DATA[:193]  # 192 predictions: 8 windows of 24
    with torch.no_grad():
        by_position = scoring.position_losses(model, data, 24, 3, 'cpu')
        windowed = scoring.full_split_loss(model, data, 24, 'cpu', batch_tokens=5 * 24)
    assert len(by_position) == 24 and math.isclose(sum(by_position) / 24, windowed, rel_tol=1e-10)


@pytest.mark.parametrize('block', ['transformer', 'mingru', 'mamba'])
def test_the_whole_split_score_does_not_depend_on_its_batching(block):
    """Batches of a fixed token budget score what batches of a training batch_size scored: every
    window once, the short last one included (202 predictions: 8 windows of 24 and one of 10)."""
    model = tiny_model(block)
    with torch.no_grad():
        scores = [scoring.full_split_loss(model, DATA, 24, 'cpu', batch_tokens=rows * 24) for rows in (1, 2, 12)]
        scores.append(scoring.full_split_loss(model, DATA, 24, 'cpu'))
    assert all(math.isclose(score, scores[0], rel_tol=1e-12) for score in scores), scores


def test_the_command_writes_csv_table_and_figures(tmp_path, tiny_dataset):
    run_dirs = []
    for block in ('transformer', 'mingru'):
        out = tmp_path / block
        train.main([f'--dataset={tiny_dataset}', f'--out_dir={out}', *TINY, f'--block={block}', '--max_iters=2',
                    '--eval_interval=2'])
        run_dirs.append(str(out))
    rows, positions = evaluate.main([*run_dirs, '--out', str(tmp_path / 'context')])
    windowed = {(r['block'], r['context']) for r in rows if r['how'] == 'windowed'}
    assert ('transformer', 32) in windowed and ('transformer', 64) not in windowed  # past its position table
    assert ('mingru', 512) in windowed  # 16 x block_size 32
    assert {r['how'] for r in rows} == {'windowed', 'carried', 'sliding'}
    # the windowed score at the training context is the number training logged for best.pt
    logged = checkpoints.load_checkpoint(run_dirs[1] + '/best.pt')['best_val_loss']
    assert math.isclose(next(r['val_loss'] for r in rows if r['block'] == 'mingru' and r['context'] == 32), logged,
                        rel_tol=1e-6)
    for name in ('context.csv', 'position.csv', 'context.md', 'context.png', 'position.png'):
        assert (tmp_path / 'context' / name).stat().st_size > 0
    assert len([p for p in positions if p['block'] == 'mingru']) == 4 * 32
