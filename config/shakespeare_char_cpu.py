# The CPU recipe: nanoGPT's run of shakespeare_char for a laptop (its README: context 64, batch 12,
# 4 layers of 128 with 4 heads, no dropout, 2,000 steps, eval_iters 20), the paper recipe
# (shakespeare_char.py) otherwise; on its own it trains nanoGPT's baby GPT. Every block's _cpu file starts from it (base = ...) and adds its own keys, sized to the
# Transformer's 0.80M parameters; a block tuned to another learning rate says so in its file.
base = 'shakespeare_char.py'
device = 'cpu'
compile = False
eval_iters = 20

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
max_iters = 2000  # lr_decay_iters follows it
