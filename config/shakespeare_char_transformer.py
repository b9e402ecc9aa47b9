# The Transformer at the paper's scale: nanoGPT's GPT on its own recipe, about 10.7M parameters.
base = 'shakespeare_char.py'
out_dir = 'out/shakespeare_char_transformer'
block = 'transformer'
