"""SAM 3 outputs -> masks at the input image size, in numpy, as the reference does it in torch."""

from __future__ import annotations

import numpy as np

from cseg.segmentation import Instances


def _axis(in_size: int, out_size: int):
    """Source taps and weights along one axis, as torch's upsample_bilinear2d with align_corners=False."""
    scale = np.float32(in_size / out_size)
    source = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    first = np.minimum(source.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = (source - first).astype(np.float32)
    return first, second, np.float32(1) - weight, weight


def resize_bilinear(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """[..., h, w] -> [..., height, width] float32."""
    logits = logits.astype(np.float32, copy=False)
    x0, x1, wx0, wx1 = _axis(logits.shape[-1], width)
    y0, y1, wy0, wy1 = _axis(logits.shape[-2], height)
    rows = logits[..., x0] * wx0 + logits[..., x1] * wx1
    return rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]


def semantic_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[1, 1, h, w] semantic logits -> bool [height, width], logit > 0."""
    return resize_bilinear(logits[0, 0], *size) > 0


def instances(scores, boxes, masks, size: tuple[int, int], threshold: float) -> Instances:
    """Top-K instance outputs -> those scoring above the threshold, masks at the input size, boxes in pixels."""
    height, width = size
    keep = scores[0] > threshold
    if not keep.any():
        return Instances.empty(height, width)
    scale = np.array([width, height, width, height], dtype=np.float32)
    return Instances(
        masks=resize_bilinear(masks[0, keep], height, width) > 0,
        boxes=(boxes[0, keep] * scale).astype(np.float32),
        scores=scores[0, keep].astype(np.float32),
    )
