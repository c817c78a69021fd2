"""CUDA with cuda-python, nothing of TensorRT: streams and CUDA-graph capture (graphs.py), device arrays with pinned
host mirrors (buffers.py), and the host path's kernels loaded from the fatbin (kernels.py)."""
