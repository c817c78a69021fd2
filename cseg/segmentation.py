"""`Segmentation`: what `segment()` returns, from the PyTorch reference and from the runtime alike.

Validated on construction (shapes, dtypes, value sets) so a malformed result fails where it is made, not in the
user's robot code. Masks are numpy bool arrays at the input image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cseg.errors import InvalidInputError

# "rule": a rule induced earlier was applied (SAM 3 alone with the stored concept tokens and phrase)
ROUTES = ("shortcut", "full", "rule")
# "heuristic" = the seed's word-count/presence rule, "learned" = a fitted router, "user" = route forced by the caller.
ROUTERS = ("heuristic", "learned", "user")


def _fail(name: str, expected: str, value) -> None:
    got = f"shape {value.shape}, dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
    raise ValueError(f"Segmentation.{name} must be {expected}, got {got}")


@dataclass(frozen=True)
class Instances:
    """SAM 3's instance output for the prompt: one row per detected object above the score threshold."""

    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) float32, xyxy in input-image pixels
    scores: np.ndarray  # (N,) float32, sigmoid(class logit) * sigmoid(presence logit)

    def __post_init__(self):
        if not (isinstance(self.masks, np.ndarray) and self.masks.ndim == 3 and self.masks.dtype == bool):
            _fail("instances.masks", "a bool array of shape (N, H, W)", self.masks)
        n = self.masks.shape[0]
        if not (isinstance(self.boxes, np.ndarray) and self.boxes.shape == (n, 4) and self.boxes.dtype == np.float32):
            _fail("instances.boxes", f"a float32 array of shape ({n}, 4)", self.boxes)
        if not (isinstance(self.scores, np.ndarray) and self.scores.shape == (n,) and self.scores.dtype == np.float32):
            _fail("instances.scores", f"a float32 array of shape ({n},)", self.scores)

    @classmethod
    def empty(cls, height: int, width: int) -> "Instances":
        return cls(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return int(self.masks.shape[0])


@dataclass(frozen=True)
class Segmentation:
    """One answer to `segment(image, prompt)`.

    `mask` is the semantic mask ConceptSeg-R1 is evaluated on (SAM 3's semantic head, bilinear upsample, logit > 0);
    `instances` are SAM 3's per-object masks for the same prompt (for counting defects, tracking objects).
    """

    mask: np.ndarray  # (H, W) bool
    instances: Instances
    presence: float  # sigmoid of SAM 3's presence logit for the final prompt
    route: str  # "shortcut" (SAM 3 alone on the question), "full" (reasoning + concept tokens) or "rule"
    route_by: str = "heuristic"
    route_score: float | None = None  # what the router compared with its threshold (presence score for the heuristic)
    answer: str = ""  # the <answer> noun phrase given to SAM 3's text encoder ("" on the shortcut path)
    rule: str = ""
    think: str = ""
    bbox: tuple[int, int, int, int] | None = None  # the <bbox> the model wrote, in its 600x600 frame (not used by SAM 3)
    text: str = ""  # the whole generated completion, special tokens removed
    token_ids: tuple[int, ...] = ()  # the generated token ids (the final end-of-turn token included)
    # milliseconds per stage; the runtime adds decode_tokens_per_s (tokens, not ms) on the full path
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not (isinstance(self.mask, np.ndarray) and self.mask.ndim == 2 and self.mask.dtype == bool):
            _fail("mask", "a bool array of shape (H, W)", self.mask)
        if not isinstance(self.instances, Instances):
            _fail("instances", "an Instances", self.instances)
        if self.instances.masks.shape[1:] != self.mask.shape:
            raise ValueError(
                f"Segmentation.instances.masks are {self.instances.masks.shape[1:]} but mask is {self.mask.shape}: "
                "both must be at the input image size"
            )
        if not 0.0 <= float(self.presence) <= 1.0:
            raise ValueError(f"Segmentation.presence must be a probability in [0, 1], got {self.presence}")
        if self.route not in ROUTES:
            raise ValueError(f"Segmentation.route must be one of {ROUTES}, got {self.route!r}")
        if self.route_by not in ROUTERS:
            raise ValueError(f"Segmentation.route_by must be one of {ROUTERS}, got {self.route_by!r}")
        if self.bbox is not None and len(self.bbox) != 4:
            raise ValueError(f"Segmentation.bbox must be None or 4 integers, got {self.bbox!r}")

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def to_json(self) -> dict:
        """The result as JSON-serialisable values (what `cseg segment --json` prints): everything but the masks, which
        `to_rle()` encodes; instance boxes rounded to 0.01 px, scores to 1e-4, timings to 0.01 ms."""
        return {
            "route": self.route,
            "route_by": self.route_by,
            "route_score": self.route_score,
            "presence": self.presence,
            "answer": self.answer,
            "rule": self.rule,
            "think": self.think,
            "bbox": self.bbox,
            "text": self.text,
            "area": self.area,
            "mask_shape": list(self.mask.shape),
            "instances": [
                {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4)}
                for box, score in zip(self.instances.boxes, self.instances.scores)
            ],
            "token_ids": list(self.token_ids),
            "timings_ms": {k: round(v, 2) for k, v in self.timings.items()},
        }

    def to_rle(self) -> dict:
        """COCO RLE (pycocotools encoding) of the semantic mask and of every instance mask, JSON-serialisable."""
        from pycocotools import mask as coco_mask

        def encode(masks: np.ndarray) -> list[dict]:
            if masks.shape[0] == 0:
                return []
            rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
            return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]

        return {"mask": encode(self.mask[None])[0], "instances": encode(self.instances.masks)}

    def to_supervision(self, class_name: str | None = None, tracker_ids=None):
        """The instances as a `supervision.Detections` (install `supervision` to use this). `tracker_ids`: one id per
        instance (-1: not tracked), e.g. `LineMonitor.track_ids()` or `TrackedFrame.track_ids`, fills `tracker_id`."""
        n = len(self.instances)
        if tracker_ids is not None:
            ids = np.asarray(tracker_ids)
            if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
                raise InvalidInputError(f"tracker_ids must be {n} integers (one per instance), got "
                                 f"{ids.dtype} {ids.shape}")  # fmt: skip
            tracker_ids = ids.astype(int)
        try:
            import supervision as sv
        except ImportError as exc:  # optional dependency: only users of supervision pay for it
            raise ImportError("to_supervision() needs the 'supervision' package: pip install supervision") from exc
        name = class_name if class_name is not None else (self.answer or "object")
        return sv.Detections(
            xyxy=self.instances.boxes.astype(np.float32),
            mask=self.instances.masks,
            confidence=self.instances.scores,
            class_id=np.zeros(n, dtype=int),
            tracker_id=tracker_ids,
            data={"class_name": np.array([name] * n)},
        )
