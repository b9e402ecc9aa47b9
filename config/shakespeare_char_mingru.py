# minGRU at the paper's scale, sized to the Transformer's ~10.7M parameters.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_mingru'
block = 'mingru'
expansion = 1.0      # gates 2 d^2 + out d^2 + feed-forward 9 d^2 = 12 d^2 a layer, as the Transformer's
ff_mult = 4.5
conv_kernel = 4
