"""The ONNX Runtime backend: one session per bundle graph (`OrtGraph`), and the session options a caller may set."""
