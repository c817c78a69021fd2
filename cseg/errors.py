"""The one exception hierarchy of cseg.

Every error a user can cause names the problem and the fix. Catch `CsegError` to catch them all;
`InvalidInputError` is also a `ValueError` so generic input-validation code keeps working.
"""


class CsegError(Exception):
    """Base class of every error cseg raises on purpose."""


class InvalidInputError(CsegError, ValueError):
    """An image, prompt or demonstration that cseg cannot segment (wrong type, shape, dtype, empty, unreadable)."""


class CheckpointError(CsegError):
    """A model directory that is missing, incomplete, or does not have the published ConceptSeg-R1/SAM 3 layout."""


class BundleError(CsegError):
    """A bundle that is incomplete, tampered with, or built for another target, GPU or TensorRT version."""


class EngineError(CsegError):
    """TensorRT is missing, an engine cannot be built, or engines belong to another GPU or TensorRT version."""


class ExportError(CsegError):
    """An export step failed: a graph could not be exported, or does not reproduce its PyTorch module."""


class OutputNameError(ExportError):
    """The exported graph's outputs are not the ones its spec declares."""


class OutputShapeError(ExportError):
    """An exported graph output has another shape than the PyTorch module's on the same inputs."""


class ParityError(ExportError):
    """An exported graph output differs from the PyTorch module's by more than its stated tolerance."""


class ProfileError(EngineError):
    """A tensor shape outside the range an engine's optimization profile was built for, or a binding TensorRT refused."""


class SharedFrameError(InvalidInputError):
    """A frame sent by reference (a shared-memory region named in `image_ref`, cseg.serve.shm) that the server cannot
    read: not on its host, gone, too small, or the server does not take frames so. RemoteRuntime sends it again in the
    message and keeps doing so."""
