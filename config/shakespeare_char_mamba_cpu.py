# The Mamba-like selective SSM in nanoGPT's CPU recipe for shakespeare_char (same data, context,
# batch, schedule as config/shakespeare_char_transformer_cpu.py). As in Mamba, a block is only
# norm -> mixer -> residual (no feed-forward), so it takes 7 layers to match the Transformer's
# parameter count (0.82M vs 0.80M).
out_dir = 'out/shakespeare_char_mamba_cpu'
dataset = 'shakespeare_char'
block = 'mamba'
device = 'cpu'
compile = False

eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
n_layer = 7
n_embd = 128
dropout = 0.0
ff_mult = 0.0
d_state = 16
d_conv = 4
mamba_expand = 2

learning_rate = 1e-3
max_iters = 2000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
