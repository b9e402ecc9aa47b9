"""
The blocks, as the scripts know them: for each, its name in configs, its name and colour in tables
and figures, the configuration keys it reads, whether evaluation may carry its state, the paper's
numbers for it and its config files. No torch here: drawing a figure from logs reads this table and
nothing of the model. The block's math is model.py's MIXERS[name] (docs/code.md, "Adding a block").
"""
import math
from dataclasses import dataclass

from minrnn.settings import BACKENDS, Key, at_least


@dataclass(frozen=True)
class BlockSpec:
    name: str        # its config value: block='mingru'
    display: str     # its name in tables, legends and messages
    colour: str      # its colour in every figure
    keys: dict       # the configuration keys it reads beyond the shared ones: name -> Key
    recurrent: bool  # a fixed-size state: evaluate.py carries it through a whole split
    paper: tuple     # the paper's Shakespeare result, (test loss, step near its best); None: not in it
    configs: dict    # scale ('cpu', 'paper') -> its config file, for reproduce.py and bench.py


BLOCKS = {}  # name -> BlockSpec, in the order tables and legends list them


def register(spec):
    """Add a block. A key it shares with another block must be the same Key object (declared once)."""
    for other in BLOCKS.values():
        for name in spec.keys.keys() & other.keys.keys():
            if spec.keys[name] is not other.keys[name]:
                raise ValueError(f'block {spec.name!r} declares key {name!r} differently from block {other.name!r}; '
                                 f'share one Key')
    BLOCKS[spec.name] = spec
    return spec


def block_keys():
    """Every block-specific key, each once."""
    return {name: key for spec in BLOCKS.values() for name, key in spec.keys.items()}


def readers(key):
    """The blocks that read a block-specific key (for --help and messages)."""
    return [name for name, spec in BLOCKS.items() if key in spec.keys]


def display(block):
    """A block's name in tables and legends: minGRU, not mingru."""
    return BLOCKS[block].display if block in BLOCKS else block


def configs_of(block):
    return {'cpu': f'config/shakespeare_char_{block}_cpu.py', 'paper': f'config/shakespeare_char_{block}.py'}


SCAN_BACKEND = Key('auto', "the scan's kernel: " + ', '.join(map(repr, BACKENDS)) + ' (minrnn/scan.py)',
                   ok=lambda v: v in BACKENDS, rule='one of ' + ', '.join(map(repr, BACKENDS)))
EXPANSION = Key(1.5, 'recurrent width = expansion * n_embd', ok=lambda v: 0 < v < math.inf, rule='a finite number > 0',
                check=lambda c: (f"expansion ({c['expansion']}) * n_embd ({c['n_embd']}) must give a recurrent width "
                                 f">= 1" if round(c['expansion'] * c['n_embd']) < 1 else None))
CONV_KERNEL = Key(0, 'causal depthwise conv before the recurrence (0: off)', **at_least(0))
MIN_RNN_KEYS = {'expansion': EXPANSION, 'conv_kernel': CONV_KERNEL, 'scan_backend': SCAN_BACKEND}

register(BlockSpec('transformer', 'Transformer', 'tab:blue', recurrent=False, paper=(1.547, 2000),
                   configs=configs_of('transformer'), keys={'n_head': Key(
                       6, 'attention heads', **at_least(1),
                       check=lambda c: (f"n_embd ({c['n_embd']}) must be divisible by n_head ({c['n_head']})"
                                        if c['n_embd'] % c['n_head'] else None))}))
register(BlockSpec('mingru', 'minGRU', 'tab:orange', MIN_RNN_KEYS, recurrent=True, paper=(1.548, 575),
                   configs=configs_of('mingru')))
register(BlockSpec('minlstm', 'minLSTM', 'tab:green', MIN_RNN_KEYS, recurrent=True, paper=(1.555, 625),
                   configs=configs_of('minlstm')))
register(BlockSpec('mamba', 'Mamba', 'tab:red', recurrent=True, paper=(1.575, 400), configs=configs_of('mamba'), keys={
    'd_state': Key(16, 'SSM state size N per channel', **at_least(1)),
    'd_conv': Key(4, 'causal conv width', **at_least(1)),
    'mamba_expand': Key(2, 'inner width = mamba_expand * n_embd', **at_least(1)),
    'dt_rank': Key(0, 'rank of the delta projection; 0 = ceil(n_embd / 16)', **at_least(0)),
    'scan_backend': SCAN_BACKEND,
    'scan_chunk_elems': Key(1 << 26, 'above batch*time*channels*d_state elements, the plain scan runs channel '
                                     'chunks with recomputation in backward (bounds activation memory)', **at_least(1)),
}))
# The full GRU and LSTM, not in the paper's table: black and cyan, which stand apart from each other
# and from the paper's four.
register(BlockSpec('gru', 'GRU', 'black', {'expansion': EXPANSION, 'conv_kernel': CONV_KERNEL}, recurrent=True,
                   paper=None, configs=configs_of('gru')))
register(BlockSpec('lstm', 'LSTM', 'tab:cyan', {'expansion': EXPANSION, 'conv_kernel': CONV_KERNEL}, recurrent=True,
                   paper=None, configs=configs_of('lstm')))
