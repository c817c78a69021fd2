"""cseg: ConceptSeg-R1 (a Qwen2.5-VL reasoner that prompts a frozen SAM 3) for edge and workstation GPUs.

The package is split the way the work flows: `cseg.export` (PyTorch reference, checkpoints, ONNX export),
`cseg.calib` (calibration, quantization), `cseg.engines` (per-target builds), `cseg.runtime` (torch-free serving).
This top-level package holds only what all of them share and imports neither torch nor transformers.
"""

from cseg.errors import BundleError, CheckpointError, CsegError, InvalidInputError
from cseg.options import SegmentOptions
from cseg.segmentation import Instances, Segmentation

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "Rule",
    "Runtime",
    "CheckpointError",
    "CsegError",
    "Instances",
    "InvalidInputError",
    "SegmentOptions",
    "Segmentation",
    "__version__",
]


def __getattr__(name: str):
    # Runtime imports onnxruntime: load it on first use so `import cseg` stays light for the export side.
    if name in ("Runtime", "Rule"):
        import cseg.runtime

        return getattr(cseg.runtime, name)
    raise AttributeError(f"module 'cseg' has no attribute {name!r}")
