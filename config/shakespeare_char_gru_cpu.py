# The full GRU (torch.nn.GRU: oneDNN on a CPU) in nanoGPT's CPU recipe for shakespeare_char, beside
# minGRU: its data, context, batch, schedule, learning rate and causal conv
# (config/shakespeare_char_mingru_cpu.py), the recurrence at the width that brings the model to the
# Transformer's parameter count (0.80M): hidden 86 = expansion * 128, then the projection back.
out_dir = 'out/shakespeare_char_gru_cpu'
dataset = 'shakespeare_char'
block = 'gru'
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
expansion = 86 / 128
ff_mult = 4.0
conv_kernel = 4

learning_rate = 3e-3
max_iters = 2000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
