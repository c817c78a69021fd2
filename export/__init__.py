"""cseg.export: the PyTorch side (torch, transformers): reference pipeline, checkpoints, ONNX export."""

from cseg.export.loading import load_conceptseg, load_sam3
from cseg.export.reference import ReferencePipeline

__all__ = ["ReferencePipeline", "load_conceptseg", "load_sam3"]
