# the Mamba-like block at the paper's scale: the data, context, batch, dropout and schedule of
# config/shakespeare_char_transformer.py (nanoGPT's shakespeare_char), sized to its ~10.7M parameters.
out_dir = 'out/shakespeare_char_mamba'
dataset = 'shakespeare_char'
block = 'mamba'

eval_interval = 250
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256
n_layer = 11
n_embd = 384
dropout = 0.2
ff_mult = 0.0        # Mamba blocks have no feed-forward: 11 layers of ~6.3 d^2 match 6 of 12 d^2
d_state = 16
d_conv = 4
mamba_expand = 2

learning_rate = 1e-3
max_iters = 5000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
