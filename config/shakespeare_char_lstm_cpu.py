# The full LSTM (torch.nn.LSTM: oneDNN on a CPU) on the CPU recipe, beside minLSTM: its learning rate
# and causal conv (shakespeare_char_minlstm_cpu.py), the recurrence at the width that brings the model
# to the Transformer's 0.80M parameters: hidden 72 = expansion * 128, then the projection back.
base = 'shakespeare_char_cpu.py'
out_dir = 'out/shakespeare_char_lstm_cpu'
block = 'lstm'
expansion = 72 / 128
ff_mult = 4.0
conv_kernel = 4
learning_rate = 3e-3
