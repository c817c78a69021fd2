"""A frame -> SAM 3's input, with the native kernel (cseg.runtime.native): the host-side twin of the TensorRT frame
path's CUDA preprocess (cseg.runtime.cuda.kernels), computing the same values. The reference (cseg.export) calls it
too, so both sides feed SAM 3 the very same pixels."""

from __future__ import annotations

import numpy as np

from cseg.images import SAM3_MEAN, SAM3_STD, Frame
from cseg.runtime import native


def sam3_pixels(frame: Frame, size: int) -> np.ndarray:
    """SAM 3 input [1, 3, size, size] float32, as Meta's processor makes it: an antialiased bilinear resize of the
    uint8 image (torchvision v2 Resize), rounded to grey levels, scaled to [0, 1], normalised with mean = std = 0.5.
    One pass of the native kernel, shared by the reference and the runtime."""
    out = np.empty((1, 3, size, size), np.float32)
    native.preprocess(frame.pixels, out, frame.bgr, [SAM3_MEAN] * 3, [SAM3_STD] * 3)
    return out
