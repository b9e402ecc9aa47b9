# The Transformer baseline on the CPU recipe (nanoGPT's "baby GPT" for a laptop): 4 heads, about
# 0.80M parameters; reaches val loss ~1.88 (nanoGPT reports 1.88 for this recipe).
base = 'shakespeare_char_cpu.py'
out_dir = 'out/shakespeare_char_transformer_cpu'
block = 'transformer'
