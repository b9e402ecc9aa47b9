# The Mamba-like block at the paper's scale, sized to the Transformer's ~10.7M parameters.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_mamba'
block = 'mamba'
n_layer = 11
ff_mult = 0.0        # Mamba blocks have no feed-forward: 11 layers of ~6.3 d^2 match 6 of 12 d^2
d_state = 16
d_conv = 4
mamba_expand = 2
