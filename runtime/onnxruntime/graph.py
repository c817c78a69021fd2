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


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(bool)": "bool"}  # fmt: skip


def _check_io(key: str, side: str, actual, declared: list[dict]) -> None:
    """The manifest's names, dtypes and shapes of a graph's inputs or outputs are the ONNX file's, in order (outputs
    are read by position). A named dynamic axis in the manifest must be a dynamic one in the file, whatever its name."""
    found = [_describe(t.name, _DTYPES.get(t.type, t.type), t.shape) for t in actual]
    wanted = [_describe(t["name"], t["dtype"], t["shape"]) for t in declared]
    if len(found) != len(wanted):
        raise BundleError(f"graph {key} has {len(found)} {side} in its ONNX file, manifest.json declares {len(wanted)}")
    for got, want in zip(found, wanted):
        if got != want:
            raise BundleError(f"graph {key}: manifest.json declares {want}, its ONNX file has {got}")


def _describe(name: str, dtype: str, shape) -> str:
    return f"{name}:{dtype}[{','.join(str(d) if isinstance(d, int) else '?' for d in shape)}]"


class OrtGraph:
    def __init__(self, key: str, path: Path, entry: dict, options: ort.SessionOptions, providers: list[str]):
        self.key = key
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises several types for unreadable or invalid models
            raise BundleError(f"graph {key} ({path.name}) cannot be loaded by ONNX Runtime: {exc}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        for side, actual in (("inputs", self.session.get_inputs()), ("outputs", self.session.get_outputs())):
            _check_io(key, side, actual, entry[side])

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: value for name, value in feed.items() if name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, used)))
