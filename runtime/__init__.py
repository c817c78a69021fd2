"""cseg.runtime: torch-free serving of a bundle (numpy, onnxruntime, tokenizers, pillow; TensorRT when present)."""

from cseg.runtime.rules import Rule
from cseg.runtime.runtime import Runtime
from cseg.runtime.stream import FrameResult

__all__ = ["FrameResult", "Rule", "Runtime"]
