"""The request flow of ConceptSeg-R1, written once for every backend (PyTorch reference, ONNX Runtime, TensorRT).

A backend provides the model steps; this module does input validation, the Shortcut Router decision, timings and
the assembly of the `Segmentation`. Keeping the flow here is what makes the reference and the runtime comparable:
they can differ only in the steps, never in the routing.

Backend protocol:
    image_state(frame: cseg.images.Frame, timings) -> state   SAM 3 image features (and whatever else is per image)
    sam3_segment(state, text, concept_tokens, timings) -> raw   SAM 3 for one phrase (+ concept tokens or None)
    reason(state, question, demos, max_new_tokens, timings) -> Reasoning   the full reasoning path up to SAM 3
    presence(raw) -> float                                   sigmoid of SAM 3's presence logit
    postprocess(raw, (height, width)) -> (mask, Instances)   at the input image size
    learned_router -> object | None                          a fitted router, when the backend has one; then
    learned_route(state, question, demos, raw, max_new_tokens, timings) -> (score, take_shortcut, pending)
    and reason(..., pending=pending) continues decoding from the prefill the router looked at
Options a backend takes as keywords only when a caller sets them (a backend without them is never asked):
reason/learned_route(..., max_length=N), prompt + completion at most N tokens within the backend's own budget;
postprocess(raw, size, interpolation="bicubic"), the masks upsampled as cv2's INTER_CUBIC.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from cseg import prompting
from cseg.errors import InvalidInputError
from cseg.images import MAX_SIDE, check_demos, load_frame
from cseg.segmentation import Segmentation

ROUTE_CHOICES = ("auto", "shortcut", "full")
MASK_INTERPOLATIONS = ("bilinear", "bicubic")  # torch's bilinear (SAM 3, the default); cv2's INTER_CUBIC


@dataclass
class Reasoning:
    """What the full path produced before SAM 3."""

    text: str  # the generated completion, special tokens removed
    parsed: prompting.ParsedAnswer
    concept_tokens: Any  # [1, Q, 256] in the backend's array type
    token_ids: tuple[int, ...] = ()  # the generated ids, the final end-of-turn token included


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


def check_bgr(bgr) -> None:
    """bgr must be a real bool (numpy's too): a truthy string such as "no" would silently swap the channels."""
    if not isinstance(bgr, (bool, np.bool_)):
        raise InvalidInputError(f"bgr must be True or False, got {bgr!r}")


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInputError(f"{name} must be a positive integer or None, got {value!r}")


def check_options(route: str, max_new_tokens, bgr=False) -> None:
    check_bgr(bgr)
    if route not in ROUTE_CHOICES:
        raise InvalidInputError(f"route must be one of {ROUTE_CHOICES}, got {route!r}")
    _check_count("max_new_tokens", max_new_tokens)


def segment(backend, image, prompt, demos=None, *, route="auto", max_new_tokens=None, bgr=False, mask_size=None,
            mask_interpolation="bilinear", max_length=None) -> Segmentation:  # fmt: skip
    """One image, one prompt (see `segment_many` for several prompts on one image)."""
    return segment_many(backend, image, [prompt], demos, route=route, max_new_tokens=max_new_tokens, bgr=bgr,
                        mask_size=mask_size, mask_interpolation=mask_interpolation,
                        max_length=max_length)[0]  # fmt: skip


def check_mask_size(mask_size) -> tuple[int, int] | None:
    """None (the input image's size) or (height, width) of positive ints up to images.MAX_SIDE."""
    if mask_size is None:
        return None
    if (not isinstance(mask_size, (tuple, list)) or len(mask_size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
                       for v in mask_size)):  # fmt: skip
        raise InvalidInputError(f"mask_size must be None or (height, width) of 1 to {MAX_SIDE} pixels, got {mask_size!r}")
    return int(mask_size[0]), int(mask_size[1])


def generation_room(prompt: int, budget: int, max_length: int | None = None) -> int:
    """Tokens a backend may generate after a `prompt`-token prompt: prompt + completion at most the backend's
    `budget`, lowered by a request's `max_length` (whatever max_new_tokens asks for). A prompt that leaves no room is
    refused before it runs: a long prompt costs memory and time in proportion to its length."""
    limit = budget if max_length is None else min(max_length, budget)
    if prompt >= limit:
        raise InvalidInputError(f"the prompt is {prompt} tokens, leaving no room to generate within {limit}")
    return limit - prompt


def check_mask_interpolation(interpolation) -> str:
    if not isinstance(interpolation, str) or interpolation not in MASK_INTERPOLATIONS:
        raise InvalidInputError(f"mask_interpolation must be one of {MASK_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


@dataclass(frozen=True)
class _Request:
    """One call's options as the backend steps take them: the keyword dicts hold only what the caller set."""

    size: tuple[int, int]  # (height, width) of the masks
    max_new_tokens: int | None
    generation: dict  # {"max_length": n} or {}
    masks: dict  # {"interpolation": "bicubic"} or {}


def segment_many(backend, image, prompts, demos=None, *, route="auto", max_new_tokens=None, bgr=False, mask_size=None,
                 mask_interpolation="bilinear", max_length=None):  # fmt: skip
    """Several prompts on one image: the image is encoded once and its features serve every prompt.

    mask_size (height, width): the masks upsampled from SAM 3's logits straight to that size and thresholded there
    (an evaluation at a fixed size, as the research scripts do), instead of the input image's size.
    mask_interpolation: "bilinear" (torch's, align_corners=False: what SAM 3 and the research's own inference do) or
    "bicubic" (cv2.resize INTER_CUBIC: what the research ReasonSeg evaluation does).
    max_length: prompt + completion at most this many tokens (the research ReasonSeg evaluation's generate(
    max_length=2048)); the bundle's own budget still applies, and max_new_tokens can only lower it further.
    """
    check_options(route, max_new_tokens, bgr)
    mask_size = check_mask_size(mask_size)
    check_mask_interpolation(mask_interpolation)
    _check_count("max_length", max_length)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidInputError(f"prompts must be a non-empty list of strings, got {type(prompts).__name__}")
    timings: dict[str, float] = {}
    with timed(timings, "preprocess"):
        questions = [prompting.check_prompt(p) for p in prompts]
        frame = load_frame(image, bgr=bgr)
        demos = check_demos(demos)
    request = _Request(mask_size or (frame.height, frame.width), max_new_tokens,
                       {"max_length": max_length} if max_length is not None else {},
                       {"interpolation": mask_interpolation} if mask_interpolation != "bilinear" else {})  # fmt: skip
    state = backend.image_state(frame, timings)
    results = []
    for question in questions:
        results.append(_answer(backend, state, request, question, demos, route, timings))
        timings = {}  # the image's preprocessing and encoding are charged to the first prompt only
    return results


def _answer(backend, state, request: _Request, question, demos, route, timings) -> Segmentation:
    if route == "auto" and getattr(backend, "learned_router", None) is not None:
        return _learned(backend, state, request, question, demos, timings)
    route_by = "heuristic" if route == "auto" else "user"
    route_score = None
    if route == "shortcut" or (route == "auto" and prompting.shortcut_worth_trying(question)):
        raw = backend.sam3_segment(state, question, None, timings)
        route_score = backend.presence(raw)
        if route == "shortcut" or prompting.shortcut_accepts(question, route_score):
            return _shortcut(backend, raw, request, route_by, route_score, timings)
    reasoning = backend.reason(state, question, demos, request.max_new_tokens, timings, **request.generation)
    return _full(backend, state, request, reasoning, route_by, route_score, timings)


def _learned(backend, state, request: _Request, question, demos, timings) -> Segmentation:
    """The fitted router: SAM 3 on the question and the VLM prefill, then shortcut or continue decoding."""
    raw = backend.sam3_segment(state, question, None, timings)
    score, take_shortcut, pending = backend.learned_route(state, question, demos, raw, request.max_new_tokens,
                                                          timings, **request.generation)  # fmt: skip
    if take_shortcut:
        return _shortcut(backend, raw, request, "learned", score, timings)
    reasoning = backend.reason(state, question, demos, request.max_new_tokens, timings, pending=pending)
    return _full(backend, state, request, reasoning, "learned", score, timings)


def _shortcut(backend, raw, request: _Request, route_by, route_score, timings) -> Segmentation:
    with timed(timings, "postprocess"):
        mask, instances = backend.postprocess(raw, request.size, **request.masks)
    return Segmentation(mask, instances, backend.presence(raw), "shortcut", route_by, route_score, timings=timings)


def _full(backend, state, request: _Request, reasoning: Reasoning, route_by, route_score, timings) -> Segmentation:
    raw = backend.sam3_segment(state, reasoning.parsed.answer, reasoning.concept_tokens, timings)
    with timed(timings, "postprocess"):
        mask, instances = backend.postprocess(raw, request.size, **request.masks)
    parsed = reasoning.parsed
    return Segmentation(
        mask, instances, backend.presence(raw), "full", route_by, route_score, answer=parsed.answer, rule=parsed.rule,
        think=parsed.think, bbox=parsed.bbox, text=reasoning.text, token_ids=reasoning.token_ids, timings=timings,
    )  # fmt: skip
