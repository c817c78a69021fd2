"""Quantizing one exported graph, and the accuracy gate that decides whether the result may ship.

Decision (measured on this stack, see DESIGN): ONNX Runtime's own tools, not nvidia-modelopt. `quantize_static` in
QDQ format with symmetric per-channel weights and symmetric per-tensor activations (zero-point 0) is what TensorRT's
explicit-quantization builder expects, runs on the ORT CPU provider, and needs nothing beyond onnxruntime; modelopt's
ONNX extra would replace onnxruntime with onnxruntime-gpu in the runtime's environment. FP8 (E4M3) uses Distribution
calibration on MatMul/Conv/Gemm only (MinMax fails for it); the CPU executes it as simulated FP8: useful for accuracy,
not for speed. INT4 is weight-only, blocked, symmetric: ORT's MatMulNBits (what the CPU provider runs natively).
`quant_pre_process` is skipped: it fails on graphs with If nodes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

QUANTIZED_OPS = ["MatMul", "Conv", "Gemm"]
INT4_BLOCK = 32
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # module paths the dynamo exporter records on every node
# Gate: every output of the quantized graph must keep this cosine similarity with fp32 on held-out inputs.
MIN_COSINE = {"int8": 0.99, "fp8": 0.99, "int4": 0.98}

logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet_root_logger():
    """quantize_static advises pre-processing through the root logger on every call; we skip it on purpose."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]], names: set[str]):
        self._iter = iter([{k: v for k, v in feed.items() if k in names} for feed in feeds])

    def get_next(self):
        return next(self._iter, None)


def excluded_nodes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Nodes created inside a module whose path matches one of the fp32-keep patterns of the graph's spec."""
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), "")
        if any(fnmatch.fnmatch(scopes, f"*{pattern}*") for pattern in patterns):
            names.append(node.name)
    return names


def weight_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul/Conv/Gemm nodes with a constant weight: the linear layers. Attention's activation-by-activation
    MatMuls are left out: their inputs hold the mask's huge negative values, and a per-tensor MinMax scale over
    those rounds every attention score to zero (measured: hidden-state cosine 0.50 when they were included)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and any(i in constants for i in n.input)]


def quantize(source: Path, target: Path, precision: str, calibration: list[dict], keep_fp32: list[str]) -> dict:
    """Write the `precision` version of `source` to `target`; returns what was done (for the manifest)."""
    model = onnx.load(str(source))
    excluded = excluded_nodes(model, keep_fp32)
    if precision == "int4":
        quantizer = MatMulNBitsQuantizer(model, block_size=INT4_BLOCK, is_symmetric=True, nodes_to_exclude=excluded)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=_large(quantizer.model.model))
        scheme = f"weight-only int4, blocks of {INT4_BLOCK}, symmetric (MatMulNBits)"
    else:
        kind = {"int8": QuantType.QInt8, "fp8": QuantType.QFLOAT8E4M3FN}[precision]
        inputs = {i.name for i in model.graph.input}
        chosen = [name for name in weight_nodes(model) if name not in set(excluded)]
        method = CalibrationMethod.MinMax if precision == "int8" else CalibrationMethod.Distribution
        with _quiet_root_logger():
            quantize_static(
                str(source), str(target), _Feeds(calibration, inputs), quant_format=QuantFormat.QDQ,
                activation_type=kind, weight_type=kind, per_channel=precision == "int8",
                op_types_to_quantize=QUANTIZED_OPS, nodes_to_quantize=chosen, nodes_to_exclude=excluded,
                calibrate_method=method, use_external_data_format=_large(model),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )  # fmt: skip
        scheme = ("int8 QDQ, per-channel symmetric weights, per-tensor symmetric activations (MinMax)" if precision == "int8"
                  else "fp8 E4M3 QDQ (Distribution calibration), simulated on the CPU")  # fmt: skip
    return {"scheme": scheme, "excluded_nodes": len(excluded), "calibration_inputs": len(calibration)}


def _large(model: onnx.ModelProto) -> bool:
    return model.ByteSize() > 1_800_000_000


def compare(reference: Path, candidate: Path, held_out: list[dict]) -> dict[str, dict[str, float]]:
    """Per output, worst over the held-out inputs: cosine similarity, max and mean absolute error."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, candidate)]
    names = [o.name for o in sessions[0].get_outputs()]
    report = {name: {"cosine": 1.0, "max_abs": 0.0, "mean_abs": 0.0} for name in names}
    for feed in held_out:
        outputs = [s.run(names, {k: v for k, v in feed.items() if k in {i.name for i in s.get_inputs()}}) for s in sessions]
        for name, want, got in zip(names, *outputs):
            want, got = want.astype(np.float64).ravel(), got.astype(np.float64).ravel()
            norm = np.linalg.norm(want) * np.linalg.norm(got)
            cosine = float(want @ got / norm) if norm > 0 else float(np.array_equal(want, got))
            entry = report[name]
            entry["cosine"] = min(entry["cosine"], cosine)
            entry["max_abs"] = max(entry["max_abs"], float(np.abs(want - got).max(initial=0.0)))
            entry["mean_abs"] = max(entry["mean_abs"], float(np.abs(want - got).mean()) if want.size else 0.0)
    return report


def passes(report: dict[str, dict[str, float]], precision: str) -> bool:
    return all(entry["cosine"] >= MIN_COSINE[precision] for entry in report.values())
