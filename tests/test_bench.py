import csv

from conftest import run_script


def test_quick_bench_writes_every_column(tmp_path):
    result = run_script('bench.py', '--quick', '--out', str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, expected in [('train.csv', 10 * 2), ('recipe.csv', 4), ('generate.csv', 4 * 2), ('ratios.csv', 9 * 2)]:
        with open(tmp_path / name) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == expected, name
        assert all(value not in ('', None) for row in rows for value in row.values()), name
    for name in ('train.png', 'memory.png', 'generate.png', 'env.json'):
        assert (tmp_path / name).stat().st_size > 0
    assert 'GRU loop / minGRU' in result.stdout and 'ms per generated token' in result.stdout
