"""SAM 3's per-frame steps for the runtime: encode a frame, decode a prompt against it, turn the logits into masks.

`HostSam3` runs them with host arrays: the native kernels (cseg.runtime.native) for pre/post-processing and graphs
with a `run(feed) -> outputs` interface (ONNX Runtime). The TensorRT backend's `DeviceSam3`
(runtime/tensorrt/sam3.py) keeps everything between the uint8 frame and the masks on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cseg.images import Frame
from cseg.pipeline import timed
from cseg.runtime import postprocess
from cseg.runtime.preprocess import sam3_pixels
from cseg.segmentation import Instances

SAM3_OUTPUTS = ("semantic_logits", "presence_logit", "instance_scores", "instance_boxes", "instance_masks")


@dataclass
class ImageState:
    frame: Frame
    fpn: Any  # the FPN levels: host arrays, or the device's own buffers (DeviceSam3)
    vlm_target: tuple[list[int], np.ndarray] | None = None  # grid and vision tokens of the target, once computed


@dataclass
class Sam3Output:
    semantic_logits: np.ndarray | None  # None: still on the device (DeviceSam3 turns them into masks there)
    presence_logit: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None


def concept_feed(features, mask, concept_tokens) -> dict[str, np.ndarray]:
    """The sam3_decoder's prompt inputs; no concept tokens (the shortcut) is an empty [1, 0, 256]."""
    tokens = concept_tokens if concept_tokens is not None else np.zeros((1, 0, 256), np.float32)
    return {"text_features": features, "text_mask": mask, "concept_tokens": tokens}


class HostSam3:
    def __init__(self, vision, decoder, size: int):
        self.vision, self.decoder, self.size = vision, decoder, size

    def encode(self, frame: Frame, timings: dict) -> ImageState:
        with timed(timings, "sam3_preprocess"):
            pixels = sam3_pixels(frame, self.size)
        with timed(timings, "sam3_vision"):
            out = self.vision.run({"pixel_values": pixels})
        return ImageState(frame, [out[name] for name in self.vision.output_names])

    def decode(self, state: ImageState, features, mask, concept_tokens, timings: dict) -> Sam3Output:
        with timed(timings, "sam3_decoder"):
            feed = {f"fpn_{i}": level for i, level in enumerate(state.fpn)}
            out = self.decoder.run({**feed, **concept_feed(features, mask, concept_tokens)})
        return Sam3Output(*(out[k] for k in SAM3_OUTPUTS))

    def masks(self, raw: Sam3Output, size: tuple[int, int], threshold: float,
              bicubic: bool = False) -> tuple[np.ndarray, Instances]:  # fmt: skip
        return (postprocess.semantic_mask(raw.semantic_logits, size, bicubic),
                postprocess.instances(raw.scores, raw.boxes, raw.masks, size, threshold, bicubic))

    def apply(self, frame: Frame, features, mask, concept_tokens, threshold: float, timings: dict):
        """A rule on one frame: (raw outputs, semantic mask, instances)."""
        raw = self.decode(self.encode(frame, timings), features, mask, concept_tokens, timings)
        with timed(timings, "postprocess"):
            return (raw, *self.masks(raw, (frame.height, frame.width), threshold))
