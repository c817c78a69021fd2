"""`Detections`: one frame's instances as the trackers see them (boxes, scores, optional masks and defect flags).

Made from a `Segmentation` (what `Runtime.apply` returns) or directly from arrays (the synthetic conveyor, tests).
Masks are optional: association uses boxes only, masks are carried through to the track for overlays and events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cseg.errors import InvalidInputError
from cseg.segmentation import Segmentation


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    scores: np.ndarray  # (N,) float32
    size: tuple[int, int]  # (height, width) of the frame
    masks: np.ndarray | None = None  # (N, H, W) bool, or None
    defective: np.ndarray | None = None  # (N,) bool: this instance looks defective in this frame; None: not judged
    origin: np.ndarray | None = None  # (N,) int: ground-truth id per detection (synthetic data only; -1 false positive)

    def __post_init__(self):
        boxes = np.asarray(self.boxes, dtype=np.float32)
        boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4), np.float32)
        n = boxes.shape[0]
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if scores.shape != (n,):
            raise InvalidInputError(f"detections: {n} boxes but {scores.shape[0]} scores")
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise InvalidInputError("detections: boxes and scores must be finite numbers")
        if n and np.any(boxes[:, 2:] < boxes[:, :2]):
            raise InvalidInputError("detections: boxes must be xyxy with x2 >= x1 and y2 >= y1")
        if len(self.size) != 2 or min(self.size) <= 0:
            raise InvalidInputError(f"detections: size must be (height, width) > 0, got {self.size!r}")
        if self.masks is not None and (self.masks.dtype != bool or self.masks.shape != (n, *self.size)):
            raise InvalidInputError(f"detections: masks must be bool ({n}, {self.size[0]}, {self.size[1]}), got "
                                    f"{self.masks.dtype} {self.masks.shape}")  # fmt: skip
        for name in ("defective", "origin"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=bool if name == "defective" else np.int64).reshape(-1)
                if value.shape != (n,):
                    raise InvalidInputError(f"detections: {n} boxes but {value.shape[0]} {name} values")
                object.__setattr__(self, name, value)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def centers(self) -> np.ndarray:
        return (self.boxes[:, :2] + self.boxes[:, 2:]).astype(np.float64) / 2

    @classmethod
    def of(cls, segmentation: Segmentation, defective=None) -> "Detections":
        """The instances of a Segmentation; `defective` is an optional per-instance bool (see defects_by_overlap)."""
        if not isinstance(segmentation, Segmentation):
            raise InvalidInputError(f"expected a Segmentation, got {type(segmentation).__name__}")
        instances = segmentation.instances
        return cls(instances.boxes, instances.scores, segmentation.mask.shape, instances.masks, defective)

    def select(self, keep) -> "Detections":
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return Detections(self.boxes[keep], self.scores[keep], self.size, pick(self.masks), pick(self.defective),
                          pick(self.origin))  # fmt: skip


def defects_by_overlap(parts: Segmentation, defects: Segmentation, min_overlap: float = 0.02) -> np.ndarray:
    """Per part instance: whether a second rule's defect instances cover at least `min_overlap` of its mask (a
    "part" rule finds the parts to count, a "scratch" rule on the same frame marks the defective ones)."""
    if parts.mask.shape != defects.mask.shape:
        raise InvalidInputError(f"part and defect segmentations differ in size: {parts.mask.shape} vs "
                                f"{defects.mask.shape}")
    if len(parts.instances) == 0:
        return np.zeros(0, bool)
    defect = defects.instances.masks.any(axis=0) if len(defects.instances) else np.zeros(parts.mask.shape, bool)
    masks = parts.instances.masks
    area = np.maximum(masks.sum(axis=(1, 2)), 1)
    return (masks & defect).sum(axis=(1, 2)) / area >= min_overlap
