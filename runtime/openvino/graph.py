"""OpenVINO's CPU plugin serving one bundle graph, with OrtGraph's interface (`input_names`, `output_names`,
`run(feed) -> {name: array}`): the host paths (HostSam3, Runtime) call either alike.

The ONNX file is read as it is (OpenVINO's ONNX frontend reads the com.microsoft ops our fused attention uses).
The inference precision is always set explicitly: on a CPU with bf16 units OpenVINO's default is bf16, and a graph
chosen for f32 must not silently run in bf16.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from cseg.errors import BundleError

_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "boolean": "bool"}
PRECISIONS = ("f32", "bf16")


def _describe(name: str, dtype: str, shape) -> str:
    return f"{name}:{dtype}[{','.join(str(d) if isinstance(d, int) else '?' for d in shape)}]"


def _port(port, name: str) -> str:
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return _describe(name, _DTYPES.get(kind, kind), dims)


def _names(ports, declared: list[dict]) -> list[str]:
    """Each port's name as the manifest declares it: a port may carry several tensor names (OpenVINO read `small`'s
    presence_logit as also named clamp_23, and get_any_name() may return either)."""
    wanted = [t["name"] for t in declared] + [None] * max(0, len(ports) - len(declared))
    return [name if name in port.get_names() else port.get_any_name() for port, name in zip(ports, wanted)]


def compile_settings(precision: str, threads: int = 0) -> dict:
    """The CPU plugin's properties: latency (one request at a time per call, as the runtime runs), the precision,
    and the thread count the bundle's session settings give ONNX Runtime (0: the plugin's own choice)."""
    if precision not in PRECISIONS:
        raise BundleError(f"OpenVINO inference precision must be one of {PRECISIONS}, got {precision!r}")
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        settings["INFERENCE_NUM_THREADS"] = int(threads)
    return settings


class OpenVinoGraph:
    def __init__(self, key: str, path: Path, entry: dict, precision: str = "f32", threads: int = 0):
        import openvino as ov  # here, not at module level: the runtime works without it

        self.key, self.precision = key, precision
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", compile_settings(precision, threads))
        except BundleError:
            raise
        except Exception as exc:  # the frontend and the plugin raise several types for what they cannot take
            raise BundleError(f"graph {key} ({path.name}) cannot be loaded by OpenVINO: {exc}") from None
        self.input_names = set(_names(self.compiled.inputs, entry["inputs"]))
        self.output_names = _names(self.compiled.outputs, entry["outputs"])
        for side, ports in (("inputs", self.compiled.inputs), ("outputs", self.compiled.outputs)):
            found = [_port(p, n) for p, n in zip(ports, _names(ports, entry[side]))]
            wanted = [_describe(t["name"], t["dtype"], t["shape"]) for t in entry[side]]
            if found != wanted:
                raise BundleError(f"graph {key}: manifest.json declares {side} {wanted}, OpenVINO reads {found}")
        self._dtypes = {t["name"]: np.dtype(t["dtype"]) for t in entry["inputs"]}
        # An infer request runs one call at a time; the runtime's callers may come from several threads (as ONNX
        # Runtime sessions allow), so each call takes a request from a pool and returns it.
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used = {name: np.ascontiguousarray(value, self._dtypes[name]) for name, value in feed.items()
                if name in self.input_names}  # fmt: skip
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False (the default): the arrays are copies, the next call reuses the request's buffers
            result = request.infer(used)
            return {name: np.asarray(result[port]) for name, port in zip(self.output_names, self.compiled.outputs)}
        finally:
            self._requests.put(request)
