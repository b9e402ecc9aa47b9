# The Mamba-like selective SSM on the CPU recipe. As in Mamba, a block is only norm -> mixer ->
# residual (no feed-forward), so it takes 7 layers to match the Transformer's parameter count (0.82M
# vs 0.80M).
base = 'shakespeare_char_cpu.py'
out_dir = 'out/shakespeare_char_mamba_cpu'
block = 'mamba'
n_layer = 7
ff_mult = 0.0
d_state = 16
d_conv = 4
mamba_expand = 2
