"""SAM 3 outputs -> masks at the input image size, with the native kernel (cseg.runtime.native): the logits upsampled
(torch's bilinear, align_corners=False, or with `bicubic` cv2's INTER_CUBIC as the research ReasonSeg evaluation
does) and thresholded at 0 in one pass, so no float image at full size is ever made."""

from __future__ import annotations

import numpy as np

from cseg.runtime import native
from cseg.segmentation import Instances


def upsample_threshold(logits: np.ndarray, height: int, width: int, select: np.ndarray | None = None,
                       bicubic: bool = False) -> np.ndarray:  # fmt: skip
    """[K, h, w] logits -> bool [N, height, width], logit > 0 after upsampling; `select` picks N of the K masks."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    select = np.arange(len(logits)) if select is None else select
    out = np.empty((len(select), height, width), dtype=bool)
    native.upsample_threshold(logits, np.ascontiguousarray(select, dtype=np.int64), out.view(np.uint8), bicubic)
    return out


def semantic_mask(logits: np.ndarray, size: tuple[int, int], bicubic: bool = False) -> np.ndarray:
    """[1, 1, h, w] semantic logits -> bool [height, width]."""
    return upsample_threshold(logits[0], *size, bicubic=bicubic)[0]


def instances(scores, boxes, masks, size: tuple[int, int], threshold: float, bicubic: bool = False) -> Instances:
    """Top-K instance outputs -> those scoring above the threshold, masks at the input size, boxes in pixels."""
    return select_instances(scores, boxes, lambda keep: upsample_threshold(masks[0], *size, keep, bicubic), size,
                            threshold)  # fmt: skip


def select_instances(scores, boxes, kept_masks, size: tuple[int, int], threshold: float) -> Instances:
    """Instances above the threshold, boxes scaled to pixels; `kept_masks(keep)` makes the masks of the kept
    indices at `size` (here on the CPU, or copied back from the device)."""
    height, width = size
    keep = np.flatnonzero(scores[0] > threshold)
    if not len(keep):
        return Instances.empty(height, width)
    scale = np.array([width, height, width, height], dtype=np.float32)
    return Instances(masks=kept_masks(keep), boxes=(boxes[0, keep] * scale).astype(np.float32),
                     scores=scores[0, keep].astype(np.float32))  # fmt: skip
