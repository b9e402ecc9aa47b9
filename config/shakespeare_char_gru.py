# The full GRU at the paper's scale, its recurrence at the width that brings the model to the
# Transformer's ~10.7M parameters: hidden 256 = expansion * 384.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_gru'
block = 'gru'
expansion = 256 / 384
ff_mult = 4.0
conv_kernel = 4
