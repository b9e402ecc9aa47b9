"""plot_curves.py's numbers from synthetic logs, its handling of bad logs, and reproduce.py end to end."""
import json
import math
import os
import re
import statistics
import sys

import pytest
import torch

import plot_curves
import reproduce
from minrnn import dataset, report
from minrnn import checkpoints
from minrnn.cli import UsageError
from conftest import TINY, read_log

# val losses per seed at steps 0, 100, 200, 300, 400
CURVES = {
    'mingru': [[4.0, 2.0, 1.70, 1.705, 1.71], [4.0, 2.1, 1.80, 1.72, 1.69], [4.0, 1.9, 1.75, 1.74, 1.745]],
    'transformer': [[4.0, 2.5, 2.0, 1.9, 1.8], [4.0, 2.4, 2.1, 1.85, 1.82]],
}


def write_run(folder, block, seed, vals, ms=40.0, name=None, n_embd=128, **config):
    run = folder / (name or f'{block}_seed{seed}')
    run.mkdir(parents=True)
    rows = [{'kind': 'meta', 'format': 1, 'block': block, 'params': 1000,
             'config': {'out_dir': f'out/x/{block}_seed{seed}', 'block': block, 'seed': seed, 'block_size': 64,
                        'n_embd': n_embd, 'n_layer': 4, 'dataset': 'shakespeare_char', 'learning_rate': 1e-3,
                        **config}}]
    for i, v in enumerate(vals):
        rows.append({'kind': 'eval', 'step': 100 * i, 'tokens': 768 * 100 * i, 'time': 5.0 * i + seed,
                     'lr': 1e-3, 'train_loss': v - 0.1, 'val_loss': v})
        if i:
            rows.append({'kind': 'train', 'step': 100 * i, 'loss': v, 'lr': 1e-3, 'ms_per_iter': ms + seed})
    (run / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return str(run)


@pytest.fixture
def logs(tmp_path):
    return [write_run(tmp_path / 'runs', block, seed, vals)
            for block, seeds in CURVES.items() for seed, vals in enumerate(seeds)]


def test_table_numbers_come_from_the_logs(logs, tmp_path):
    rows = {r['block']: r for r in plot_curves.main([*logs, '--out', str(tmp_path / 'plots'), '--at', '100', '400'])}
    assert [r for r in rows] == ['transformer', 'mingru']  # the registry's order
    best = [1.70, 1.69, 1.74]
    assert rows['mingru']['seeds'] == 3
    assert math.isclose(rows['mingru']['best_val_mean'], statistics.fmean(best))
    assert math.isclose(rows['mingru']['best_val_std'], statistics.stdev(best))
    # first step within 0.01 of each seed's best: 200 (1.70), 400 (1.69; 1.72 at 300 is 0.03 off), 200 (1.75 vs 1.74)
    assert rows['mingru']['step_near_best'] == statistics.fmean([200, 400, 200])
    assert math.isclose(rows['mingru']['val@100'], statistics.fmean([2.0, 2.1, 1.9]))
    assert math.isclose(rows['mingru']['ms_per_iter'], statistics.fmean([40, 41, 42]))
    assert rows['transformer']['paper_test_loss'] == 1.547 and rows['mingru']['paper_best_step'] == 575
    table = (tmp_path / 'plots' / 'results.md').read_text()
    assert '1.710 ± 0.026' in table  # mean ± std of [1.70, 1.69, 1.74]
    for name in ('curves_step.png', 'curves_step.svg', 'results.csv'):
        assert (tmp_path / 'plots' / name).stat().st_size > 0


@pytest.mark.parametrize('x', ['time', 'tokens'])
def test_other_x_axes(logs, tmp_path, x):
    plot_curves.main([*logs, '--out', str(tmp_path), '--x', x, '--train', '--band', 'std'])
    assert (tmp_path / f'curves_{x}.png').exists()


def test_bad_logs_and_rows_are_skipped_with_a_warning_line(logs, tmp_path, capsys):
    bad = tmp_path / 'bad'
    (bad / 'empty').mkdir(parents=True)
    (bad / 'empty' / 'log.jsonl').write_text('')
    (bad / 'old').mkdir()
    (bad / 'old' / 'log.jsonl').write_text('{"iter": 0, "val": 4.0}\n')
    (bad / 'binary').mkdir()
    (bad / 'binary' / 'log.jsonl').write_bytes(bytes(range(256)) * 4)
    half = write_run(bad, 'mamba', 0, [4.0, 2.0, 1.8])
    with open(os.path.join(half, 'log.jsonl'), 'a') as f:
        f.write('{"kind": "eval", "step": 3')  # cut short by a kill
    diverged = write_run(bad, 'minlstm', 0, [4.0, 2.0, 1.9])
    with open(os.path.join(diverged, 'log.jsonl'), 'a') as f:  # json writes NaN and Infinity as such
        f.write('{"kind": "eval", "step": 300, "val_loss": NaN, "train_loss": NaN}\n'
                '{"kind": "eval", "step": 400, "val_loss": Infinity}\n{"kind": "eval", "step": 500, "val_loss": "x"}\n')
    rows = plot_curves.main([*logs, str(bad / 'empty'), str(bad / 'old'), str(bad / 'missing'), str(bad / 'binary'),
                             half, diverged, '--out', str(tmp_path / 'plots')])
    err = capsys.readouterr().err
    assert all(line.startswith('warning: ') for line in err.splitlines()) and 'Traceback' not in err
    for name in ('empty', 'old', 'missing', 'binary', 'unreadable line', '3 eval row(s) without a whole step and a finite val loss'):
        assert name in err
    # the half-written and the diverged runs still count, with their good rows
    assert {r['block'] for r in rows} == {'transformer', 'mingru', 'mamba', 'minlstm'}
    assert (tmp_path / 'plots' / 'curves_step.png').stat().st_size > 0
    assert next(r for r in rows if r['block'] == 'minlstm')['best_val_mean'] == 1.9


def test_series_of_unlike_lengths_are_warned_about_and_their_last_step_listed(tmp_path, capsys):
    """A minGRU run to step 300 beside a Mamba run stopped at step 100 and a GRU with one evaluation:
    one warning naming each, and the table's last-step column (max_iters)."""
    paths = [write_run(tmp_path / 'runs', 'mingru', 0, [4.0, 2.0, 1.9, 1.8], max_iters=300),
             write_run(tmp_path / 'runs', 'mamba', 0, [4.0, 2.0], max_iters=2000),
             write_run(tmp_path / 'runs', 'gru', 0, [4.0], max_iters=20)]
    rows = plot_curves.main([*paths, '--out', str(tmp_path / 'plots')])
    assert [(r['series'], r['last_step'], r['max_iters']) for r in rows] == [
        ('minGRU', 300, 300), ('Mamba', 100, 2000), ('GRU', 0, 20)]
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'different steps or on different' in line]
    assert len(warnings) == 1 and all(name in warnings[0] for name in ('minGRU', 'Mamba', 'GRU'))
    assert '| 300 (300) |' in (tmp_path / 'plots' / 'results.md').read_text()


def test_like_series_are_not_warned_about(tmp_path, capsys):
    paths = [write_run(tmp_path / 'runs', block, 0, [4.0, 2.0], max_iters=100) for block in ('mingru', 'mamba')]
    plot_curves.main([*paths, '--out', str(tmp_path / 'plots')])
    assert 'different steps' not in capsys.readouterr().err


def test_groups_by_configuration_not_folder_name(tmp_path, capsys):
    paths = [write_run(tmp_path / 'runs', 'minlstm', seed, [4.0, 2.0], name=name)
             for seed, name in enumerate(('a', 'b', 'try3', 'x_seed9'))]
    paths.append(write_run(tmp_path / 'runs', 'minlstm', 0, [4.0, 1.5], name='wide', n_embd=256))
    paths.append(write_run(tmp_path / 'runs', 'mingru', 0, [4.0, 1.8]))
    rows = plot_curves.main([*paths, '--out', str(tmp_path / 'plots')])
    assert [(r['series'], r['seeds']) for r in rows] == [
        ('minGRU', 1), ('minLSTM n_embd=128', 4), ('minLSTM n_embd=256', 1)]
    assert re.search(r'warning: .*minlstm.*2 series', capsys.readouterr().err)
    lines = (tmp_path / 'plots' / 'results.md').read_text().splitlines()
    assert lines[2].startswith('| minGRU | 1 | 1,000 | 4 x 128, context 64, batch ? | 100 (None) | 1.800 | 100 |')  # no ± 0


def test_runs_that_differ_beyond_their_seed_are_separate_series(tmp_path, capsys):
    """Two learning rates of one seed are two probes, not two seeds; another dataset gets no paper numbers."""
    paths = [write_run(tmp_path / 'runs', 'mingru', 0, [4.0, 2.0, 1.8], name='lr3e-3', learning_rate=3e-3),
             write_run(tmp_path / 'runs', 'mingru', 0, [4.0, 2.2, 1.9], name='lr1e-4', learning_rate=1e-4),
             write_run(tmp_path / 'runs', 'mingru', 0, [4.0, 2.2, 1.9], name='mine', dataset='mytext')]
    rows = plot_curves.main([*paths, '--out', str(tmp_path / 'plots')])
    assert [(r['series'], r['seeds'], r['best_val_std']) for r in rows] == [
        ('minGRU dataset=shakespeare_char learning_rate=0.003', 1, None),
        ('minGRU dataset=shakespeare_char learning_rate=0.0001', 1, None),
        ('minGRU dataset=mytext learning_rate=0.001', 1, None)]
    assert [r['paper_test_loss'] for r in rows] == [1.548, 1.548, None]
    assert '3 series' in capsys.readouterr().err


def test_a_run_named_twice_or_through_a_link_counts_once(logs, tmp_path, capsys):
    link = tmp_path / 'link'
    os.symlink(logs[0], link)
    rows = plot_curves.main([logs[0], logs[0], str(link), logs[1], '--out', str(tmp_path / 'plots')])
    assert rows[0]['seeds'] == 2
    err = capsys.readouterr().err
    assert err.count('named twice (or through a link): counted once') == 2


def test_the_committed_tuning_probes_plot_as_separate_series(tmp_path):
    folder = os.path.join(os.path.dirname(plot_curves.__file__), 'results', 'cpu', 'tuning')
    probes = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.jsonl'))
    rows = plot_curves.main([*probes, '--out', str(tmp_path / 'plots')])
    assert len(rows) == len(probes) and all(r['seeds'] == 1 for r in rows)


def test_a_redraw_gives_the_same_bytes(logs, tmp_path):
    for out in ('a', 'b'):
        plot_curves.main([*logs, '--out', str(tmp_path / out), '--x', 'time'])
    for name in ('curves_time.png', 'curves_time.svg', 'results.md', 'results.csv'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name


def test_the_output_folder_is_not_read_as_a_run(logs, tmp_path, capsys):
    out = tmp_path / 'runs' / 'plots'  # plot_curves.py out/* --out out/plots
    plot_curves.main([*logs, '--out', str(out)])
    plot_curves.main([*logs, str(out), '--out', str(out)])
    assert 'warning' not in capsys.readouterr().err
    (tmp_path / 'afile').write_text('')
    with pytest.raises(SystemExit, match='is a file'):
        plot_curves.main([*logs, '--out', str(tmp_path / 'afile')])


def test_no_usable_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match='none of the given runs'):
        plot_curves.main([str(tmp_path / 'nothing'), '--out', str(tmp_path)])


def stepwise_loss(model, data, block_size):
    """Every token of data scored once by stepping the model through windows of block_size."""
    tokens = torch.from_numpy(data.astype('int64'))
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, block_size):
        window = tokens[start:start + block_size + 1]
        states = [None] * len(model.blocks)
        for pos in range(len(window) - 1):
            logits, states = model.step(window[pos:pos + 1], states, pos)
            total -= torch.log_softmax(logits.double(), dim=-1)[0, window[pos + 1]].item()
            count += 1
    return total / count


def test_reproduce_runs_skips_resumes_and_reports(tmp_path, tiny_dataset, capsys):
    args = ['--scale', 'cpu', '--seeds', '2', '--blocks', 'transformer', 'mingru', '--out_root', str(tmp_path / 'out'),
            '--results', str(tmp_path / 'results'), '--', f'--dataset={tiny_dataset}', *TINY, '--max_iters=6',
            '--eval_interval=3', '--lr_decay_iters=6', '--eval_iters=2']
    reproduce.main(args)
    table = (tmp_path / 'results' / 'results.md').read_text()
    assert table.count('\n') == 4 and '| Transformer | 2 |' in table and '| minGRU | 2 |' in table
    assert (tmp_path / 'results' / 'curves_step.png').exists() and (tmp_path / 'results' / 'curves_time.png').exists()

    # The logged val loss is the whole split, not an estimate: score best.pt token by token with the step path.
    run = tmp_path / 'out' / 'mingru_seed1'
    ckpt = checkpoints.load_checkpoint(str(run / 'best.pt'))
    model = checkpoints.model_from_checkpoint(ckpt).eval()
    _, val_data, _ = dataset.load_dataset(ckpt['config']['dataset'], ckpt['config']['block_size'])
    with torch.no_grad():
        expected = stepwise_loss(model, val_data[:], ckpt['config']['block_size'])
    logged = min(r['val_loss'] for r in read_log(str(tmp_path / 'results' / 'runs' / 'mingru_seed1'), 'eval'))
    assert math.isclose(logged, expected, rel_tol=1e-5)

    # A rerun trains nothing; a run cut short is resumed.
    capsys.readouterr()
    reproduce.main(args)
    assert capsys.readouterr().out.count(': done') == 4
    ckpt_path = tmp_path / 'out' / 'transformer_seed0' / 'ckpt.pt'
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt['step'] = 3
    torch.save(ckpt, ckpt_path)
    reproduce.main(args)
    out = capsys.readouterr().out
    assert 'transformer_seed0: partial' in out and '--init_from=resume' in out


def test_the_gpu_command_rehearsed_on_a_cpu(tmp_path, tiny_dataset):
    """reproduce_gpu.py --rehearse: every part at tiny sizes on this CPU, each ending done within the
    budget, its files written: env.json, kernels.csv, the four runs, the table and figure, the speed."""
    results = tmp_path / 'results'
    from conftest import DEADLINE, run_script
    result = run_script('reproduce_gpu.py', '--rehearse', '--results', str(results), f'--dataset={tiny_dataset}',
                        '--budget', str(DEADLINE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = (results / 'parts.md').read_text().splitlines()[2:]
    assert len(parts) == 5 and all('| done |' in line for line in parts[:2] + parts[3:4]), parts
    assert parts[2].count(' done') == 4 and 'recipe done; train done' in parts[4], parts
    assert json.loads((results / 'env.json').read_text())['torch'] == torch.__version__
    kernels = report.read_csv(str(results / 'kernels.csv'))
    assert [(r['block'], r['dtype']) for r in kernels] == [(b, d) for b in ('mingru', 'minlstm', 'mamba')
                                                           for d in ('float32', 'bfloat16')]
    assert all(r['ok'] == 'True' or r['ok'] is True for r in kernels)
    for block in ('transformer', 'mingru', 'minlstm', 'mamba'):
        rows = read_log(str(results / 'runs' / block))
        assert rows[-1]['kind'] == 'stop' and rows[-1]['reason'] in ('max_iters', 'max_seconds')
    table = (results / 'results.md').read_text()
    assert table.count('\n') == 6 and '| Mamba | 1 |' in table and '1.575' not in table  # not its dataset
    assert (results / 'curves_step.png').stat().st_size > 0
    for name in ('recipe.csv', 'train.csv', 'ratios.csv'):
        assert (results / 'speed' / name).stat().st_size > 0


def test_a_part_past_its_limit_is_reported_as_timed_out(tmp_path):
    import reproduce_gpu
    status = reproduce_gpu.timed([sys.executable, '-c', 'import signal; print("begun", flush=True); signal.pause()'],
                                 str(tmp_path / 'part.log'), 1)
    assert status == 'timed out' and 'begun' in (tmp_path / 'part.log').read_text()
    assert reproduce_gpu.timed([sys.executable, '-c', 'raise SystemExit(3)'], str(tmp_path / 'b.log'), 60) \
        == 'failed (exit 3)'


def test_a_budget_spent_skips_what_is_left_and_says_so(tmp_path, tiny_dataset):
    import reproduce_gpu
    reproduce_gpu.main(['--rehearse', '--results', str(tmp_path), f'--dataset={tiny_dataset}', '--budget', '1'])
    parts = (tmp_path / 'parts.md').read_text()
    assert 'kernels | timed out' in parts and 'transformer skipped' in parts and 'mamba skipped' in parts
    assert 'no run has a log' in parts and 'recipe skipped; train skipped' in parts

def test_no_plan_writes_the_committed_results_unasked_and_no_run_of_another_plan_is_trained_over(tmp_path,
                                                                                                  tiny_dataset):
    from types import SimpleNamespace
    plan = lambda **kw: SimpleNamespace(**{'results': None, 'scale': 'cpu', **kw})
    assert reproduce.results_folder(plan()) == os.path.join('out', 'cpu', 'results')
    assert reproduce.results_folder(plan(results='results/cpu')) == 'results/cpu'

    args = ['--scale', 'cpu', '--seeds', '1', '--blocks', 'mingru', '--out_root', str(tmp_path / 'out'),
            '--results', str(tmp_path / 'results'), '--', f'--dataset={tiny_dataset}', *TINY, '--eval_iters=2']
    reproduce.main([*args, '--max_iters=4', '--eval_interval=2'])
    with pytest.raises(UsageError) as refused:
        reproduce.main([*args, '--max_iters=6', '--eval_interval=2'])
    assert 'mingru_seed0' in str(refused.value) and 'max_iters' in str(refused.value)
    # a finished run of another configuration without its ckpt.pt: refused too, its files kept
    run = tmp_path / 'out' / 'mingru_seed0'
    (run / 'ckpt.pt').unlink()
    before = (run / 'best.pt').read_bytes()
    with pytest.raises(UsageError) as refused:
        reproduce.main([*args, '--max_iters=6', '--eval_interval=2'])
    assert 'max_iters' in str(refused.value) and (run / 'best.pt').read_bytes() == before


@pytest.mark.parametrize('seeds', ['0', '1000000000'])
def test_a_plan_of_no_seeds_or_absurdly_many_is_refused_at_once(seeds):
    from conftest import run_script
    result = run_script('reproduce.py', '--seeds', seeds)
    assert result.returncode == 2 or result.returncode == 1
    assert result.stderr.startswith('error: --seeds') and 'Traceback' not in result.stderr



def test_drawing_from_logs_imports_no_torch(tmp_path):
    """plot_curves.py and the modules it reads (runs, report, blocks, settings) never import torch: a
    figure is drawn from the committed logs alone."""
    from conftest import ROOT, run_script
    runs_dir = os.path.join(ROOT, 'results', 'cpu', 'runs')
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import plot_curves; '
            'plot_curves.main(sys.argv[2:]); print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))')
    result = run_script('-c', code, ROOT, *[os.path.join(runs_dir, name) for name in sorted(os.listdir(runs_dir))[:2]],
                        '--out', str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '[]'
