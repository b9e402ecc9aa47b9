# minlstm in nanoGPT's CPU recipe for shakespeare_char (same data, context, batch, schedule as
# config/shakespeare_char_transformer_cpu.py), sized to its parameter count (0.80M). The learning
# rate and the causal conv follow the minGRU tuning (config/shakespeare_char_mingru_cpu.py); for
# minLSTM (one seed, val loss at step 2000): lr 3e-3 1.749 | lr 3e-3 + conv 1.697 <- this file.
out_dir = 'out/shakespeare_char_minlstm_cpu'
dataset = 'shakespeare_char'
block = 'minlstm'
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
expansion = 1.0
ff_mult = 4.0
conv_kernel = 4

learning_rate = 3e-3
max_iters = 2000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
