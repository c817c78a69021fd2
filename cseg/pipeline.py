"""The request flow of ConceptSeg-R1, written once for every backend (PyTorch reference, ONNX Runtime, TensorRT).

A backend provides the model steps (the protocol: cseg.backend.Backend, and RoutedBackend for one with a fitted
router); this module does input validation, the Shortcut Router decision, timings and the assembly of the
`Segmentation`. Keeping the flow here is what makes the reference and the runtime comparable: they can differ only in
the steps, never in the routing. A call's options are one cseg.options.SegmentOptions.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cseg import prompting
from cseg.errors import InvalidInputError
from cseg.images import check_demos, load_frame
from cseg.options import SegmentOptions
from cseg.segmentation import Segmentation

if TYPE_CHECKING:
    from cseg.backend import Backend


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


def segment(backend: Backend, image, prompt, demos=None, *, options: SegmentOptions | None = None,
            **settings) -> Segmentation:  # fmt: skip
    """One image, one prompt (see `segment_many` for several prompts on one image)."""
    return segment_many(backend, image, [prompt], demos, options=options, **settings)[0]


def generation_room(prompt: int, budget: int, max_length: int | None = None) -> int:
    """Tokens a backend may generate after a `prompt`-token prompt: prompt + completion at most the backend's
    `budget`, lowered by a request's `max_length` (whatever max_new_tokens asks for). A prompt that leaves no room is
    refused before it runs: a long prompt costs memory and time in proportion to its length."""
    limit = budget if max_length is None else min(max_length, budget)
    if prompt >= limit:
        raise InvalidInputError(f"the prompt is {prompt} tokens, leaving no room to generate within {limit}")
    return limit - prompt


@dataclass(frozen=True)
class _Request:
    """One call's options as the backend steps take them: the keyword dicts hold only what the caller set."""

    size: tuple[int, int]  # (height, width) of the masks
    max_new_tokens: int | None
    generation: dict  # {"max_length": n} or {}
    masks: dict  # {"interpolation": "bicubic"} or {}


def segment_many(backend: Backend, image, prompts, demos=None, *, options: SegmentOptions | None = None,
                 **settings) -> list[Segmentation]:  # fmt: skip
    """Several prompts on one image: the image is encoded once and its features serve every prompt.

    options: a SegmentOptions; settings: its fields as keywords (route="full", mask_size=(h, w), ...), replacing
    those of `options`. Both are validated before the image is read.
    """
    options = SegmentOptions.of(options, **settings)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidInputError(f"prompts must be a non-empty list of strings, got {type(prompts).__name__}")
    timings: dict[str, float] = {}
    with timed(timings, "preprocess"):
        questions = [prompting.check_prompt(p) for p in prompts]
        frame = load_frame(image, bgr=options.bgr)
        demos = check_demos(demos)
    request = _Request(options.mask_size or (frame.height, frame.width), options.max_new_tokens,
                       {"max_length": options.max_length} if options.max_length is not None else {},
                       {"interpolation": options.mask_interpolation}
                       if options.mask_interpolation != "bilinear" else {})  # fmt: skip
    state = backend.image_state(frame, timings)
    results = []
    for question in questions:
        results.append(_answer(backend, state, request, question, demos, options.route, timings))
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
