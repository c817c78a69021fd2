"""The backend protocol: what cseg.pipeline asks of a backend, and the public calls every backend offers.

Implemented by `cseg.Runtime` (ONNX Runtime and TensorRT: one class, the steps differ underneath) and by the PyTorch
reference, `cseg.export.ReferencePipeline`; tests/test_backend.py checks both against it with `conformance`, member
by member and signature by signature (isinstance with a runtime-checkable Protocol sees only that the names exist).

The flow (cseg.pipeline) calls the steps in this order:
    image_state(frame, timings) -> state                        SAM 3 image features (and whatever else is per image)
    sam3_segment(state, text, concept_tokens, timings) -> raw   SAM 3 for one phrase (+ concept tokens or None)
    reason(state, question, demos, max_new_tokens, timings) -> Reasoning   the full path up to SAM 3
    presence(raw) -> float                                      sigmoid of SAM 3's presence logit
    postprocess(raw, (height, width)) -> (mask, Instances)      at the requested size
A backend with a fitted router (RoutedBackend) also has
    learned_router -> object | None                             the router, or None: then the seed heuristic routes
    learned_route(state, question, demos, raw, max_new_tokens, timings) -> (score, take_shortcut, pending)
    and reason(..., pending=pending) continues decoding from the prefill the router looked at.
Keywords the flow passes only when the caller set them: reason/learned_route(..., max_length=N), prompt +
completion at most N tokens within the backend's own budget; postprocess(raw, size, interpolation="bicubic"), the
masks upsampled as cv2's INTER_CUBIC.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from cseg.options import SegmentOptions
    from cseg.pipeline import Reasoning
    from cseg.segmentation import Instances, Segmentation


@runtime_checkable
class Backend(Protocol):
    def segment(self, image, prompt: str, demos=None, *, options: SegmentOptions | None = None,
                **settings) -> Segmentation: ...  # fmt: skip

    def segment_many(self, image, prompts, demos=None, *, options: SegmentOptions | None = None,
                     **settings) -> list[Segmentation]: ...  # fmt: skip

    def image_state(self, frame, timings: dict) -> Any: ...

    def sam3_segment(self, state, text: str, concept_tokens, timings: dict) -> Any: ...

    def reason(self, state, question: str, demos, max_new_tokens: int | None, timings: dict, *,
               max_length: int | None = None) -> Reasoning: ...  # fmt: skip

    def presence(self, raw) -> float: ...

    def postprocess(self, raw, size: tuple[int, int], interpolation: str = "bilinear") -> tuple[np.ndarray, Instances]:
        ...


@runtime_checkable
class RoutedBackend(Backend, Protocol):
    @property
    def learned_router(self) -> Any: ...

    def learned_route(self, state, question: str, demos, shortcut, max_new_tokens: int | None, timings: dict, *,
                      max_length: int | None = None) -> tuple[float, bool, Any]: ...  # fmt: skip

    def reason(self, state, question: str, demos, max_new_tokens: int | None, timings: dict, *, pending=None,
               max_length: int | None = None) -> Reasoning: ...  # fmt: skip


def conformance(cls: type, protocol: type) -> list[str]:
    """What keeps `cls` from implementing `protocol`, one line per problem ([] when it does): a missing member, a
    property where a method is expected or the other way round, or a method that cannot be called as the protocol
    calls it (a parameter missing, positional where it is passed by keyword, required where the protocol lets it out,
    or an extra one without a default)."""
    problems = []
    for name in _members(protocol):
        wanted = inspect.getattr_static(protocol, name)
        if not hasattr(cls, name):
            problems.append(f"{cls.__name__}.{name} is missing")
            continue
        have = inspect.getattr_static(cls, name)
        if isinstance(wanted, property):
            if not isinstance(have, property):
                problems.append(f"{cls.__name__}.{name} must be a property")
            continue
        if isinstance(have, property) or not callable(getattr(cls, name)):
            problems.append(f"{cls.__name__}.{name} must be a method")
            continue
        problems += [f"{cls.__name__}.{name}: {problem}" for problem in _call_problems(
            inspect.signature(getattr(protocol, name)), _bound_signature(cls, name))]  # fmt: skip
    return problems


def _members(protocol: type) -> list[str]:
    names = set()
    for base in protocol.__mro__:
        if base is object or base is Protocol or base.__name__ == "Generic":
            continue
        names |= {name for name in vars(base) if not name.startswith("_")}
    return sorted(names)


def _bound_signature(cls: type, name: str) -> inspect.Signature:
    """The signature as called on an instance: without self (a staticmethod has none to drop)."""
    signature = inspect.signature(getattr(cls, name))
    if isinstance(inspect.getattr_static(cls, name), staticmethod):
        return signature
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _call_problems(wanted: inspect.Signature, have: inspect.Signature) -> list[str]:
    P = inspect.Parameter
    wanted_params = [p for p in wanted.parameters.values() if p.name != "self"]
    have_params = list(have.parameters.values())
    have_by_name = {p.name: p for p in have_params}
    var_keyword = any(p.kind is P.VAR_KEYWORD for p in have_params)
    positional = [p for p in have_params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    problems = []
    index = 0
    for param in wanted_params:
        if param.kind is P.VAR_KEYWORD:
            if not var_keyword:
                problems.append(f"takes no **{param.name}")
            continue
        got = have_by_name.get(param.name)
        if param.kind is P.POSITIONAL_OR_KEYWORD:
            if index >= len(positional) or positional[index].name != param.name:
                problems.append(f"parameter {index + 1} must be {param.name!r}")
            index += 1
        elif got is None:
            if not var_keyword:
                problems.append(f"takes no keyword {param.name!r}")
            continue
        elif got.kind not in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY):
            problems.append(f"{param.name!r} cannot be passed by keyword")
        if got is not None and param.default is not P.empty and got.default is P.empty:
            problems.append(f"{param.name!r} needs a default (the protocol's is {param.default!r})")
    accepted = {p.name for p in wanted_params}
    for extra in have_params:
        if (extra.name not in accepted and extra.default is P.empty
                and extra.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)):  # fmt: skip
            problems.append(f"extra parameter {extra.name!r} needs a default (the flow never passes it)")
    return problems
