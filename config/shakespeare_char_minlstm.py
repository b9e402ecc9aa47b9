# minLSTM at the paper's scale, sized to the Transformer's ~10.7M parameters.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_minlstm'
block = 'minlstm'
expansion = 1.0      # three gate projections + out: 4 d^2, with the feed-forward 12 d^2 a layer
ff_mult = 4.0
conv_kernel = 4
