"""cseg.runtime: torch-free serving of a bundle (numpy, onnxruntime, tokenizers, pillow; TensorRT when present)."""

from cseg.runtime.runtime import Runtime

__all__ = ["Runtime"]
