# The full LSTM at the paper's scale, its recurrence at the width that brings the model to the
# Transformer's ~10.7M parameters: hidden 213 = expansion * 384.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_lstm'
block = 'lstm'
expansion = 213 / 384
ff_mult = 4.0
conv_kernel = 4
