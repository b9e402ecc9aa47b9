# The full LSTM at the paper's scale: the data, context, batch, dropout and schedule of
# config/shakespeare_char_transformer.py (nanoGPT's shakespeare_char), its recurrence at the width
# that brings the model to the Transformer's ~10.7M parameters: hidden 213 = expansion * 384.
out_dir = 'out/shakespeare_char_lstm'
dataset = 'shakespeare_char'
block = 'lstm'

eval_interval = 250
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256
n_layer = 6
n_embd = 384
dropout = 0.2
expansion = 213 / 384
ff_mult = 4.0
conv_kernel = 4

learning_rate = 1e-3
max_iters = 5000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
