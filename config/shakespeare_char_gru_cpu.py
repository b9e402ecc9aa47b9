# The full GRU (torch.nn.GRU: oneDNN on a CPU) on the CPU recipe, beside minGRU: its learning rate and
# causal conv (shakespeare_char_mingru_cpu.py), the recurrence at the width that brings the model to
# the Transformer's 0.80M parameters: hidden 86 = expansion * 128, then the projection back.
base = 'shakespeare_char_cpu.py'
out_dir = 'out/shakespeare_char_gru_cpu'
block = 'gru'
expansion = 86 / 128
ff_mult = 4.0
conv_kernel = 4
learning_rate = 3e-3
