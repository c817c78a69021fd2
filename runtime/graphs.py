"""ONNX Runtime sessions for a bundle's graphs, fed by name from the manifest (never by position: an exporter may
prune unused inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cseg.errors import BundleError, InvalidInputError

_LEVELS = {
    "ORT_DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ORT_ENABLE_BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "ORT_ENABLE_EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# The options a caller may override (Runtime.open(session=...)), with the types they take.
_SESSION_TYPES = {"graph_optimization_level": str, "intra_op_num_threads": int, "inter_op_num_threads": int,
                  "enable_mem_pattern": bool, "enable_cpu_mem_arena": bool}  # fmt: skip


def check_session(session) -> None:
    """The caller's session overrides: None or a dict of known options with values of the right type."""
    if session is None:
        return
    if not isinstance(session, dict):
        raise InvalidInputError(f"session must be a dict of ONNX Runtime options, got {type(session).__name__}")
    for key, value in session.items():
        kind = _SESSION_TYPES.get(key)
        if kind is None:
            raise InvalidInputError(f"unknown session option {key!r}; known: {', '.join(_SESSION_TYPES)}")
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            wanted = f"{'non-negative ' * (kind is int)}{kind.__name__}"
            raise InvalidInputError(f"session option {key} must be a {wanted}, got {value!r}")
    if session.get("graph_optimization_level", "ORT_ENABLE_ALL") not in _LEVELS:
        raise InvalidInputError(f"unknown graph_optimization_level {session['graph_optimization_level']!r}; "
                                f"use one of {', '.join(_LEVELS)}")  # fmt: skip


def session_options(settings: dict) -> ort.SessionOptions:
    """Session options from the manifest's target profile merged with the caller's overrides."""
    options = ort.SessionOptions()
    level = settings.get("graph_optimization_level", "ORT_ENABLE_ALL")
    if level not in _LEVELS:
        raise BundleError(f"unknown graph_optimization_level {level!r}; use one of {', '.join(_LEVELS)}")
    options.graph_optimization_level = _LEVELS[level]
    options.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
    options.inter_op_num_threads = int(settings.get("inter_op_num_threads", 0))
    options.enable_mem_pattern = bool(settings.get("enable_mem_pattern", True))
    options.enable_cpu_mem_arena = bool(settings.get("enable_cpu_mem_arena", True))
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return options


class OrtGraph:
    def __init__(self, key: str, path: Path, entry: dict, options: ort.SessionOptions, providers: list[str]):
        self.key = key
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises several types for unreadable or invalid models
            raise BundleError(f"graph {key} ({path.name}) cannot be loaded by ONNX Runtime: {exc}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        declared = [t["name"] for t in entry["outputs"]]
        if self.output_names != declared:
            raise BundleError(f"graph {key} has outputs {self.output_names}, manifest.json says {declared}")

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: value for name, value in feed.items() if name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, used)))
