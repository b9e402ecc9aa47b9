import csv
import json

import torch

import bench
from minrnn import static_cost
from minrnn.blocks import BLOCKS
from conftest import run_script
from minrnn.scan import resolve_backend


def test_quick_bench_writes_every_column(tmp_path):
    """--quick: 2 lengths, every block's mixer (each scan backend where it reads one) and the paper's
    loop baselines, every block's recipe iteration and generation at 2 positions, and the ratios."""
    result = run_script('bench.py', '--quick', '--out', str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    auto = resolve_backend('auto', 'cpu')
    tables = {}
    for name in ('train.csv', 'recipe.csv', 'generate.csv', 'ratios.csv'):
        with open(tmp_path / name) as f:
            tables[name] = list(csv.DictReader(f))
        assert tables[name] and all(value not in ('', None) for row in tables[name] for value in row.values()), name
    variants = {row['variant'] for row in tables['train.csv']}
    assert {'GRU (loop)', 'LSTM (loop)', 'GRU', 'LSTM', 'Transformer', f'minGRU ({auto})', 'minGRU (log)',
            'minGRU (sequential)', f'minLSTM ({auto})', f'Mamba ({auto})'} <= variants
    assert all(sum(row['variant'] == v for row in tables['train.csv']) == 2 for v in variants)  # both lengths
    assert [row['block'] for row in tables['recipe.csv']] == list(BLOCKS)
    assert len(tables['generate.csv']) == 2 * len(BLOCKS)
    labels = {row['ratio'] for row in tables['ratios.csv']}
    assert {'GRU loop / minGRU', 'LSTM loop / minLSTM', 'minGRU log / auto', 'Mamba / Transformer'} <= labels
    for name in ('train.png', 'memory.png', 'generate.png', 'env.json'):
        assert (tmp_path / name).stat().st_size > 0
    env = json.loads((tmp_path / 'env.json').read_text())  # results name the command, machine and torch
    assert env['command'].startswith('python bench.py --quick') and env['torch'] == torch.__version__
    assert env['device'] == 'cpu' and env['device_detail'] and env['cpu_capability'] and env['auto_backend'] == auto
    assert 'GRU loop / minGRU' in result.stdout and 'ms per generated token' in result.stdout
    assert 'a smoke run of --quick sizes' in result.stdout  # not findings
    # --replot redraws the figures from the CSVs alone
    for name in ('train.png', 'memory.png', 'generate.png'):
        (tmp_path / name).unlink()
    assert run_script('bench.py', '--replot', str(tmp_path)).returncode == 0
    for name in ('train.png', 'memory.png', 'generate.png'):
        assert (tmp_path / name).stat().st_size > 0


def test_a_variant_over_max_step_seconds_is_not_timed_at_longer_lengths(tmp_path):
    """The log backends take seconds a step on a CPU where the others take milliseconds: a variant
    slower than --max_step_seconds at one length is left out of the longer ones, and says so."""
    result = run_script('bench.py', '--quick', '--parts', 'train', '--max_step_seconds', '1e-9', '--out', str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / 'train.csv') as f:
        rows = list(csv.DictReader(f))
    assert rows and {row['T'] for row in rows} == {'16'}  # --quick's lengths are 16 and 32
    assert 'not timed at longer T' in result.stdout + result.stderr
    # another part measured into the same folder: env.json names the command of each part's CSV
    second = run_script('bench.py', '--quick', '--parts', 'recipe', '--out', str(tmp_path))
    assert second.returncode == 0, second.stderr[-2000:]
    parts = json.loads((tmp_path / 'env.json').read_text())['parts']
    assert '--parts train' in parts['train']['command'] and '--parts recipe' in parts['recipe']['command']


def test_every_series_of_the_speed_figure_has_its_own_look():
    looks = [tuple(sorted(bench.variant_style(v).items(), key=str)) for v in bench.layer_variants(32, 'cpu')]
    assert len(set(looks)) == len(looks)


def test_traffic_counts_bytes_and_flops_of_each_op():
    """A bfloat16 matmul reads its two operands and writes its result once, 2 x m x k x n FLOPs; a view
    moves nothing; the roofline time is the slower of the two on the GPU's datasheet figures."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        a, b = torch.empty(64, 128, dtype=torch.bfloat16), torch.empty(128, 32, dtype=torch.bfloat16)
        traffic = static_cost.Traffic(static_cost.H100)
        with traffic:
            (a @ b).t()
    assert traffic.bytes == 28_672 and traffic.flops == 524_288
    assert abs(traffic.seconds / 8.5588e-9 - 1) < 1e-4  # its bytes at the H100's 3.35 TB/s, not its FLOPs


def test_no_default_writes_into_the_committed_results():
    assert bench.output_folder(bench.parse_args([]), 'cpu') == 'out/bench/cpu'
    assert bench.output_folder(bench.parse_args(['--quick']), 'cpu') == 'out/bench-quick'
    assert bench.output_folder(bench.parse_args(['--out', 'results/speed/cpu']), 'cpu') == 'results/speed/cpu'


def test_a_load_group_stalls_for_the_latency_its_loop_does_not_cover():
    """load_stalls on a made-up loop: loads used at once stall for the whole latency less the one
    instruction before their use; a load whose value is first read a pass later (issued a pass ahead)
    is covered by the instructions in between; a store splits the loads into two round trips."""
    at_once = [('LDG.E', ' R4, desc[UR4][R2.64]'), ('FFMA', ' R6, R4, R4, R5'), ('STG.E', ' desc[UR4][R2.64], R6')]
    assert static_cost.load_stalls(at_once, latency=100) == 99
    ahead = [('FFMA', ' R6, R4, R4, R5'), ('LDG.E', ' R4, desc[UR4][R2.64]')] + [('FADD', ' R7, R7, R7')] * 60
    assert static_cost.load_stalls(ahead, latency=100) == 100 - 61  # read back at the top of the next pass
    two_trips = [('LDG.E', ' R4, desc[UR4][R2.64]'), ('STG.E', ' desc[UR4][R8.64], R9'),
                 ('LDG.E.64', ' R10, desc[UR4][R2.64]'), ('FADD', ' R6, R4, R11')]
    assert static_cost.load_stalls(two_trips, latency=100) == (100 - 3) + (100 - 1)

