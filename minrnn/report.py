"""
Tables and figures: number formats, CSV files, and one figure style (display names and colours
from minrnn/blocks.py, sizes and fonts a paper could print, files that are byte-identical when
redrawn from the same data).
"""
import csv
import os
import statistics

from minrnn.blocks import BLOCKS, display  # noqa: F401  (report.display: a block's name in tables)


def colour(block, fallback='tab:gray'):
    return BLOCKS[block].colour if block in BLOCKS else fallback


def block_order(block):
    """Tables and legends list blocks in the registry's order."""
    return list(BLOCKS).index(block) if block in BLOCKS else len(BLOCKS)


def mean_std(values):
    """Mean and standard deviation; the deviation is None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(value, digits=3, std=None):
    if value is None:
        return '-'
    text = f'{value:.{digits}f}'
    return text + (f' ± {std:.{digits}f}' if std is not None else '')


def write_csv(path, rows):
    """rows (dicts with the same keys) as a CSV file with a header."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    """A CSV that write_csv wrote, numbers as numbers; [] where the file is absent."""
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if '.' in value or 'e' in value else int(value)
            except ValueError:
                pass
    return rows


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(cells) + ' |' for cells in rows]) + '\n'


def other_than(paths, out):
    """The paths except the output folder itself (out/* names the default output folder too)."""
    return [p for p in paths if os.path.realpath(p) != os.path.realpath(out)]


def pyplot():
    """matplotlib.pyplot without a display, in the project's figure style. ImportError without matplotlib."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    plt.rcParams.update({'font.size': 10, 'axes.titlesize': 11, 'legend.fontsize': 9, 'svg.hashsalt': 'minrnn',
                         'axes.spines.top': False, 'axes.spines.right': False})
    return plt


def save(fig, stem, dpi=150):
    """stem.png and stem.svg, with no date or random ids in them: a redraw of the same data gives the
    same bytes. Returns the paths."""
    import matplotlib.pyplot as plt
    paths = [f'{stem}.png', f'{stem}.svg']
    fig.savefig(paths[0], dpi=dpi, metadata={'Software': None})
    fig.savefig(paths[1], metadata={'Date': None, 'Creator': None})
    plt.close(fig)
    return paths
