# The Transformer baseline in nanoGPT's CPU recipe for shakespeare_char (its README: "a baby GPT"
# for a laptop): 4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout, 2000 iterations.
# About 0.80M parameters; reaches val loss ~1.88 (nanoGPT reports 1.88 for this recipe).
out_dir = 'out/shakespeare_char_transformer_cpu'
dataset = 'shakespeare_char'
block = 'transformer'
device = 'cpu'
compile = False

eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
