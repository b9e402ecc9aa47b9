# mingru in nanoGPT's CPU recipe for shakespeare_char (same data, context, batch, schedule as
# config/shakespeare_char_transformer_cpu.py), sized to its parameter count. Two choices differ from
# the Transformer's, both measured on this recipe (one seed each, val loss at step 2000, minGRU):
# lr 1e-3 -> 1.808, 2e-3 -> 1.741, 3e-3 -> 1.718, 3e-3 with the causal conv -> 1.701
# (logs in results/cpu/tuning/). The conv is the authors' code's option (a depthwise conv before the RNN).
out_dir = 'out/shakespeare_char_mingru_cpu'
dataset = 'shakespeare_char'
block = 'mingru'
device = 'cpu'
compile = False

eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
n_layer = 4
n_embd = 128
dropout = 0.0
expansion = 1.5
ff_mult = 4.0
conv_kernel = 4

learning_rate = 3e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
