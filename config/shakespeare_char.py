# The paper recipe: nanoGPT's config/train_shakespeare_char.py, the set-up the paper's language-model
# experiment names (6 layers 384 wide with 6 heads, context 256, batch 64, dropout 0.2, lr 1e-3 ->
# 1e-4 over 5,000 steps, beta2 0.99, warm-up 100). Every block's paper-scale file starts from it
# (base = ...) and adds its own keys, sized to the Transformer's ~10.7M parameters; on its own it
# trains nanoGPT's GPT.
dataset = 'shakespeare_char'

eval_interval = 250
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3
max_iters = 5000  # lr_decay_iters follows it
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
