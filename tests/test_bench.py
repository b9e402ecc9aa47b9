import csv
import json

import torch

import bench
from model import BLOCKS
from conftest import run_script
from scan import resolve_backend


def test_quick_bench_writes_every_column(tmp_path):
    result = run_script('bench.py', '--quick', '--out', str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    auto = resolve_backend('auto', 'cpu')
    ratios = [r for r in bench.RATIOS if r[1].format(auto=auto) != r[2].format(auto=auto)]
    variants = bench.layer_variants(32, 'cpu')
    assert f'minLSTM ({auto})' in variants and 'nn.LSTM' in variants
    for name, expected in [('train.csv', len(variants) * 2), ('recipe.csv', len(BLOCKS)), ('generate.csv', len(BLOCKS) * 2),
                           ('ratios.csv', len(ratios) * 2)]:
        with open(tmp_path / name) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == expected, name
        assert all(value not in ('', None) for row in rows for value in row.values()), name
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


def test_every_series_of_the_speed_figure_has_its_own_look():
    looks = [tuple(sorted(bench.variant_style(v).items(), key=str)) for v in bench.layer_variants(32, 'cpu')]
    assert len(set(looks)) == len(looks)


def test_traffic_counts_bytes_and_flops_of_each_op():
    """A bfloat16 matmul reads its two operands and writes its result once, 2 x m x k x n FLOPs; a view
    moves nothing; the roofline time is the slower of the two on the GPU's datasheet figures."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        a, b = torch.empty(64, 128, dtype=torch.bfloat16), torch.empty(128, 32, dtype=torch.bfloat16)
        traffic = bench.Traffic(bench.H100)
        with traffic:
            (a @ b).t()
    assert traffic.bytes == (64 * 128 + 128 * 32 + 64 * 32) * 2
    assert traffic.flops == 2 * 64 * 128 * 32
    assert traffic.seconds == max(traffic.bytes / 3.35e12, traffic.flops / 989e12)
