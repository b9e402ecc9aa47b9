"""The library under the scripts (train.py, sample.py, evaluate.py, plot_curves.py, reproduce.py,
bench.py) and model.py: configuration, data, devices, run folders, scoring, reports, and the scan
with its kernels (scan.py decides which runs; cpu_kernels.py / .cpp and gpu_kernels.py are the fast
paths beside the plain one). docs/code.md maps every module."""
