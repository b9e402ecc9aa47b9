# minLSTM on the CPU recipe, sized to the Transformer's 0.80M parameters. The learning rate and the
# causal conv follow the minGRU tuning (shakespeare_char_mingru_cpu.py); for minLSTM (one seed, val
# loss at step 2000): lr 3e-3 1.749 | lr 3e-3 + conv 1.697 <- this file.
base = 'shakespeare_char_cpu.py'
out_dir = 'out/shakespeare_char_minlstm_cpu'
block = 'minlstm'
expansion = 1.0
ff_mult = 4.0
conv_kernel = 4
learning_rate = 3e-3
