"""The tensor contract of `cseg serve`: model names, tensor names, dtypes and shapes, used by the server
(cseg.serve.server binds exactly these) and the client (cseg.serve.client builds and reads exactly these).

cseg_segment and cseg_apply take one image per request and are configured with max_batch_size > 0, so every tensor
below carries a leading batch dimension of 1 per request on the wire (Triton's dynamic batcher groups requests; the
shapes here are without it). A request answers for itself: an error in one request of a batch is that request's
`error` output, the others are served.

cseg_segment  (Runtime.segment / segment_many: P prompts on one image, one image-encoder pass)
  in   image            UINT8  [H, W, 3]   RGB pixels (the client turns BGR, paths and PIL images into this);
                                           optional: a request carries exactly one of image and image_ref
  in   image_ref        BYTES  [1]         optional, same host only: JSON {"region": NAME, "shape": [H, W, 3]}, the
                                           frame's RGB pixels at the start of the POSIX shared-memory object
                                           /dev/shm/NAME (NAME: cseg-[A-Za-z0-9_-]+), which the server maps
                                           read-only (cseg.serve.shm): the frame is never copied on the way
  in   prompt           BYTES  [P]         UTF-8 prompts, 1 <= P <= MAX_PROMPTS, each <= MAX_PROMPT_BYTES bytes
  in   options          BYTES  [1]         JSON object of SegmentOptions fields (route, max_new_tokens, mask_size,
                                           mask_interpolation, max_length); "{}" for the defaults
cseg_apply    (Runtime.apply with a rule the server loaded from its --rules folder)
  in   image            UINT8  [H, W, 3]   or image_ref, as above
  in   image_ref        BYTES  [1]
  in   rule_id          BYTES  [1]         the rule file's name without .json
outputs of both (P = 1 for cseg_apply; N instances over all prompts)
  out  mask             UINT8  [P, h, w8]  semantic masks, 8 pixels per byte along a row (numpy.packbits, first
                                           pixel in the high bit; w8 = ceil(w / 8)); h, w: the image size, or
                                           options' mask_size, in meta's mask_size
  out  instance_masks   UINT8  [N, h, w8]  as mask
  out  boxes            FP32   [N, 4]      xyxy, input-image pixels
  out  scores           FP32   [N]
  out  instance_prompt  INT32  [N]         which prompt each instance belongs to; -1: a padding row, not an instance
  out  presence         FP32   [P]
  out  route            BYTES  [P]         "shortcut" | "full" | "rule"
  out  meta             BYTES  [P]         JSON: route_by, route_score, answer, rule, think, bbox, text, token_ids,
                                           timings (ms; `runtime`: the server's Runtime call for the request),
                                           rule_version (cseg_apply: sha256 of the rule's files, 16 hex), mask_size
                                           ([h, w]: what the packed masks unpack to)
  out  error            BYTES  [1]         "" when served, else JSON {"type": cseg error class name, "message": ...}

cseg_induce   (Runtime.induce: reason once over demonstrations; the server keeps the rule for cseg_apply)
  Not batched (max_batch_size 0: a generation per request, and demonstrations differ in shape): the shapes below
  are the wire's, without a batch dimension.
  in   image            UINT8  [H, W, 3]   the target the model reasons about (the client sends the first
                                           demonstration's image when the caller gives none, as Runtime.induce)
  in   question         BYTES  [1]         UTF-8, <= MAX_PROMPT_BYTES bytes
  in   demo_images      BYTES  [D]         each demonstration's RGB pixels, raw row-major HxWx3 bytes, 1 <= D <= 4
                                           (demonstrations differ in size: one tensor cannot hold them as UINT8)
  in   demo_sizes       INT32  [D, 2]      (height, width) of each demonstration
  in   demo_boxes       FP32   [B, 4]      xyxy boxes, in their demonstration's pixels
  in   demo_box_index   INT32  [B]         which demonstration each box belongs to; -1: a padding row (a request
                                           without any box sends one)
  in   options          BYTES  [1]         JSON: {"max_new_tokens": int or null, "rule_id": str or null}; rule_id
                                           names the rule (letters, digits, . _ -; an id the server has already is
                                           replaced: a new version), null: the rule's content hash
                                           (cseg.track.rule_identity)
  out  rule_id          BYTES  [1]         what cseg_apply takes to apply the rule
  out  rule_version     BYTES  [1]         as cseg_apply reports it (sha256 of the rule's files, 16 hex)
  out  rule_files       BYTES  [2]         the rule's JSON and its npz, as Rule.save wrote them into the server's
                                           --rules folder (RemoteRuntime.induce loads them into a cseg Rule: the
                                           same rule can go to an edge device's rule-only bundle)
  out  error            BYTES  [1]         as above
A server without --rules keeps induced rules in memory (gone at restart); with it, each is saved there as
RULE_ID.json + RULE_ID.npz, the files `cseg serve --rules` loads at start. A rule-only bundle has no reasoner:
cseg_induce answers it with a BundleError.

Masks go packed because they were most of an answer's bytes, and every byte is copied several times between the
handler, PyTriton, Triton and gRPC: a 1080p answer without instances was 4 MB of BOOL (the mask and the padding row
below), Triton's compute_output for it 11 ms; packed, 0.5 MB.

PyTriton cannot send a tensor with a zero-sized dimension (its shared-memory copy refuses it), so no output is ever
empty on the wire: with no instance, one padding row (instance_prompt -1, all zeros) is sent; a failed request's
tensors are all one-element placeholders beside its `error`. Readers select rows by instance_prompt.

This module imports numpy only: the client side needs neither PyTriton nor the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

SEGMENT = "cseg_segment"
APPLY = "cseg_apply"
INDUCE = "cseg_induce"
MODELS = (SEGMENT, APPLY, INDUCE)
MAX_DEMOS = 4  # cseg.images.MAX_DEMOS: the research mosaic has 2x2 tiles
MAX_PROMPTS = 16  # prompts per segment request: each is a SAM 3 decoder pass (and maybe a VLM generation)
MAX_PROMPT_BYTES = 8000  # prompting.MAX_PROMPT_CHARS (2000) characters of up to 4 UTF-8 bytes, checked before decoding
OPTION_FIELDS = ("route", "max_new_tokens", "mask_size", "mask_interpolation", "max_length")  # bgr: the client's job


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type  # numpy dtype; bytes tensors are np.bytes_ (Triton BYTES)
    shape: tuple[int, ...]  # without the batch dimension; -1: any size
    optional: bool = False  # a request may leave it out (image / image_ref: one of the two)

    @property
    def triton_dtype(self) -> str:
        return {np.uint8: "UINT8", np.bool_: "BOOL", np.float32: "FP32", np.int32: "INT32", np.bytes_: "BYTES"}[
            self.dtype
        ]


IMAGE = TensorSpec("image", np.uint8, (-1, -1, 3))
FRAME = (replace(IMAGE, optional=True), TensorSpec("image_ref", np.bytes_, (1,), optional=True))  # one of the two
INPUTS = {
    SEGMENT: (*FRAME, TensorSpec("prompt", np.bytes_, (-1,)), TensorSpec("options", np.bytes_, (1,))),
    APPLY: (*FRAME, TensorSpec("rule_id", np.bytes_, (1,))),
    INDUCE: (IMAGE, TensorSpec("question", np.bytes_, (1,)), TensorSpec("demo_images", np.bytes_, (-1,)),
             TensorSpec("demo_sizes", np.int32, (-1, 2)), TensorSpec("demo_boxes", np.float32, (-1, 4)),
             TensorSpec("demo_box_index", np.int32, (-1,)), TensorSpec("options", np.bytes_, (1,))),
}
OUTPUTS = (
    TensorSpec("mask", np.uint8, (-1, -1, -1)),
    TensorSpec("instance_masks", np.uint8, (-1, -1, -1)),
    TensorSpec("boxes", np.float32, (-1, 4)),
    TensorSpec("scores", np.float32, (-1,)),
    TensorSpec("instance_prompt", np.int32, (-1,)),
    TensorSpec("presence", np.float32, (-1,)),
    TensorSpec("route", np.bytes_, (-1,)),
    TensorSpec("meta", np.bytes_, (-1,)),
    TensorSpec("error", np.bytes_, (1,)),
)
OUTPUT_NAMES = tuple(spec.name for spec in OUTPUTS)
INDUCE_OUTPUTS = (
    TensorSpec("rule_id", np.bytes_, (1,)),
    TensorSpec("rule_version", np.bytes_, (1,)),
    TensorSpec("rule_files", np.bytes_, (2,)),
    TensorSpec("error", np.bytes_, (1,)),
)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(n, h, w) bool -> (n, h, ceil(w / 8)) uint8, the wire form of `mask` and `instance_masks`."""
    return np.packbits(masks, axis=-1)


def unpack_masks(packed: np.ndarray, width: int) -> np.ndarray:
    """The wire form -> (n, h, width) bool (a view of unpackbits' 0/1 bytes: no second copy)."""
    if packed.shape[-1] != -(-width // 8):
        raise ValueError(f"packed masks of {packed.shape[-1]} bytes per row cannot hold {width} pixels")
    return np.unpackbits(packed, axis=-1, count=width).view(bool)


def error_payload(exc: BaseException) -> bytes:
    """What a failed request's `error` output holds: the cseg exception's class name and message."""
    return json.dumps({"type": type(exc).__name__, "message": str(exc)}).encode()


def placeholder_outputs(error: bytes, outputs=OUTPUTS, *, batched: bool = True) -> dict[str, np.ndarray]:
    """A failed request's outputs: every tensor present with one element per free dimension (see the padding note
    above), with its batch dimension unless the model is not batched (cseg_induce), and the error."""
    out = {}
    for spec in outputs:
        shape = tuple(1 if size == -1 else size for size in spec.shape)
        dtype = object if spec.dtype is np.bytes_ else spec.dtype
        out[spec.name] = np.zeros((1, *shape) if batched else shape, dtype=dtype)
        if spec.dtype is np.bytes_:
            out[spec.name][...] = b""
    if "instance_prompt" in out:
        out["instance_prompt"][...] = -1
    out["error"][...] = error
    return out
