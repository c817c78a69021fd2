"""Quantizing one exported graph, and the accuracy gate that decides whether the result may ship.

Decision (measured on this stack, see DESIGN): ONNX Runtime's own quantizer, not nvidia-modelopt. Its QDQ format with
symmetric per-channel weights and symmetric per-tensor activations (zero-point 0) is what TensorRT's
explicit-quantization builder expects, runs on the ORT CPU provider, and needs nothing beyond onnxruntime; modelopt's
ONNX extra would replace onnxruntime with onnxruntime-gpu in the runtime's environment. FP8 is E4M3 with scales from
the activations' standard deviation (ORT's FP8 rule); the CPU executes it as simulated FP8: accuracy, not speed.
INT4 is weight-only, blocked, symmetric: ORT's MatMulNBits (what the CPU provider runs natively) for the CPU; for
TensorRT the same blocks as DequantizeLinear of INT4 weights (opset 21, TensorRT's weight-only INT4 pattern).
`quant_pre_process` is skipped: it fails on graphs with If nodes.

INT8 on the cpu target is different: dynamic quantization (ORT's MatMulInteger with activations quantized to u8 at
run time, per-channel s8 weights), which MLAS runs with its u8s8 kernels. Measured on a 2-core AVX2 EPYC (no VNNI)
on `small`, interleaved: sam3_text 0.72x fp32 with the symmetric s8s8 QDQ the GPU targets use (MLAS has no fast s8
activations path there), 1.52x as u8s8 QDQ, 1.88x dynamic. The linear layers the exporter wrote as Gemm (2-D
activations: the vision tower) become MatMul + Add inside ORT's dynamic quantizer; the few convolutions (patch
embeddings) stay fp32.

TensorRT builds strongly typed networks: the ONNX types are the precisions. So for a GPU target every graph is
converted to fp16 last (ORT's float16 converter), QDQ scales included (opset 19+ allows fp16 scales), except the
arithmetic of the spec's fp32-keep modules (norms, rotary tables, scoring); the weight-bearing layers inside those
modules (e.g. the LLM's output head) do become fp16, since that is where the memory is.

Only the linear layers (MatMul/Conv/Gemm with a constant weight) are quantized, and only their activations are
calibrated, here, one input at a time. ORT's own calibrator (quantize_static) records the inputs and outputs of every
MatMul of the graph, attention scores included: on the `small` SAM 3 image encoder it needed more than 24 GB for a
single input (killed by the OOM killer), and its CalibMaxIntermediateOutputs option drops data in ORT 1.32 instead of
folding it. The statistics computed here go to ORT's QDQQuantizer unchanged.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic
from onnxruntime.quantization.calibrate import TensorData, TensorsData

_root = logging.getLogger()
_before = list(_root.handlers), _root.level
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer  # noqa: E402

# that module calls logging.basicConfig(level=INFO) when imported, which makes every library print its INFO logs
_root.handlers[:], _root.level = _before
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.transformers.float16 import convert_float_to_float16

# MatMulNBitsQuantizer logs one INFO line per node of the graph; the export log reports what matters.
for _name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

QUANTIZED_OPS = ["MatMul", "Conv", "Gemm"]
INT4_BLOCK = 32
# MatMulNBits' accuracy_level on the cpu target: 4 = activations quantized to int8 per block, int8 dot products. On
# `small`'s decoder (AVX2) a decode step 18.5 -> 7.6 ms, prefill and output cosine with fp32 unchanged; level 0
# (unset) dequantizes the weights to fp32 every call (README, Measured here).
INT4_CPU_ACCURACY_LEVEL = 4
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # module paths the dynamo exporter records on every node
KV_PREFIXES = ("past_key_", "past_value_", "new_key_", "new_value_")
# Gate: every output of the quantized graph must keep this cosine similarity with fp32 on held-out inputs.
MIN_COSINE = {"fp16": 0.999, "int8": 0.99, "fp8": 0.99, "int4": 0.98}
QDQ_OPSET = 19  # FP8 Q/DQ, and DequantizeLinear with fp16 scales


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
    MatMuls are left out: their inputs hold the mask's huge negative values, and a per-tensor min/max scale over
    those rounds every attention score to zero (measured: hidden-state cosine 0.50 when they were included)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and any(i in constants for i in n.input)]


def quantize(source: Path, target: Path, precision: str, calibration: list[dict], keep_fp32: list[str],
             tensorrt: bool = False) -> dict:  # fmt: skip
    """Write the `precision` version of `source` to `target`; returns what was done (for the manifest).

    tensorrt=True: the per-target ONNX of a GPU target (int4 as QDQ, everything not quantized in fp16)."""
    model = onnx.load(str(source))
    info = {"scheme": "fp16", "excluded_nodes": 0, "calibration_inputs": 0}
    if precision != "fp16":
        model, info = _quantized(source, model, precision, calibration, keep_fp32, tensorrt)
    if tensorrt:
        model = to_fp16(model, keep_fp32)
        info["scheme"] += "" if precision == "fp16" else "; fp16 elsewhere"
    save(model, target)
    return info


def _quantized(source: Path, model: onnx.ModelProto, precision: str, calibration: list[dict], keep_fp32: list[str],
               tensorrt: bool) -> tuple[onnx.ModelProto, dict]:  # fmt: skip
    excluded = excluded_nodes(model, keep_fp32)
    if precision == "int4":
        quantizer = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(
            block_size=INT4_BLOCK, is_symmetric=True, quant_format=QuantFormat.QDQ if tensorrt else QuantFormat.QOperator,
            accuracy_level=None if tensorrt else INT4_CPU_ACCURACY_LEVEL, op_types_to_quantize=("MatMul",)),
            nodes_to_exclude=excluded)  # fmt: skip
        quantizer.process()
        form = "DequantizeLinear, opset 21" if tensorrt else "MatMulNBits, int8 compute"
        return quantizer.model.model, {"scheme": f"weight-only int4, blocks of {INT4_BLOCK}, symmetric ({form})",
                                       "excluded_nodes": len(excluded), "calibration_inputs": 0}  # fmt: skip
    kind = {"int8": QuantType.QInt8, "fp8": QuantType.QFLOAT8E4M3FN}[precision]
    chosen = [name for name in weight_nodes(model) if name not in set(excluded)]
    if precision == "int8" and not tensorrt:
        return _dynamic_int8(model, chosen), {
            "scheme": "int8 dynamic (MatMulInteger: u8 activations quantized at run time, per-channel s8 weights)",
            "excluded_nodes": len(excluded), "calibration_inputs": 0}  # fmt: skip
    ranges = activation_statistics(source, model, chosen, calibration)
    if precision == "fp8":
        _raise_opset(model, QDQ_OPSET)  # FP8 Q/DQ need opset 19 (ORT's own bump warns "please verify": the gate does)
    quantizer = QDQQuantizer(
        model, precision == "int8", False, kind, kind, ranges, chosen, excluded, QUANTIZED_OPS,
        {"ActivationSymmetric": True, "WeightSymmetric": True},
    )  # fmt: skip
    quantizer.quantize_model()
    scheme = ("int8 QDQ, per-channel symmetric weights, per-tensor symmetric activations (min/max)" if precision == "int8"
              else "fp8 E4M3 QDQ (scales from activation std)" + ("" if tensorrt else ", simulated on the CPU"))  # fmt: skip
    return quantizer.model.model, {"scheme": scheme, "excluded_nodes": len(excluded),
                                   "calibration_inputs": len(calibration)}  # fmt: skip


def _dynamic_int8(model: onnx.ModelProto, chosen: list[str]) -> onnx.ModelProto:
    """The `chosen` linear layers as MatMulInteger with dynamically quantized activations (ORT's dynamic quantizer).
    It rewrites every Gemm as MatMul + Add first, the MatMul named "<gemm>_MatMul": both names are passed."""
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
    nodes = [*chosen, *(f"{name}_MatMul" for name in chosen if name in gemms)]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        save(model, source)
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                         op_types_to_quantize=["MatMul"], use_external_data_format=model.ByteSize() > 1_800_000_000,
                         extra_options={"MatMulConstBOnly": True})  # fmt: skip
        return onnx.load(str(target))


def to_fp16(model: onnx.ModelProto, keep_fp32: list[str]) -> onnx.ModelProto:
    """fp16 weights and activations; graph inputs/outputs keep their types except the KV cache (fp16 end to end)."""
    _raise_opset(model, QDQ_OPSET)
    kept = set(excluded_nodes(model, keep_fp32)) - {n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS}
    io = [t.name for t in (*model.graph.input, *model.graph.output) if not t.name.startswith(KV_PREFIXES)]
    return convert_float_to_float16(model, keep_io_types=io, node_block_list=sorted(kept))


def _raise_opset(model: onnx.ModelProto, version: int) -> None:
    """Declare at least `version` of the default domain. The ops the exporter writes mean the same from 18 to 21 for
    the types used here; onnx's version converter would serialise the whole model, which fails above protobuf's
    2 GB (every full-size LLM graph). ORT's int4 QDQ path raises the number the same way."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def activation_statistics(source: Path, model: onnx.ModelProto, nodes: list[str], calibration: list[dict]) -> TensorsData:
    """Min, max, mean and std of the float activations entering and leaving `nodes`, one input at a time."""
    constants = {t.name for t in model.graph.initializer}
    wanted = sorted({t for n in model.graph.node if n.name in set(nodes) for t in (*n.input, *n.output)
                     if t and t not in constants})  # fmt: skip
    augmented = onnx.load(str(source))
    present = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted if t not in present)
    stats: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "augmented.onnx"
        save(augmented, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        for feed in calibration:
            for name, value in zip(wanted, session.run(wanted, {k: v for k, v in feed.items() if k in inputs})):
                if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                    continue
                value = value.astype(np.float64)
                low, high, total, squares, count = stats.get(name, [np.inf, -np.inf, 0.0, 0.0, 0])
                stats[name] = [min(low, value.min()), max(high, value.max()), total + value.sum(),
                               squares + (value * value).sum(), count + value.size]  # fmt: skip
    data = {}
    for name, (low, high, total, squares, count) in stats.items():
        mean = total / count
        data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high), avg=np.float32(mean),
                                std=np.float32(np.sqrt(max(squares / count - mean * mean, 0.0))))  # fmt: skip
    return TensorsData(CalibrationMethod.MinMax, data)


def save(model: onnx.ModelProto, path: Path) -> None:
    """Save, with the weights in `<name>.data` beside it when the model is near protobuf's 2 GB limit."""
    if model.ByteSize() > 1_800_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{Path(path).name}.data")
    else:
        onnx.save(model, str(path))


def compare(reference: Path, candidate: Path, held_out: list[dict]) -> dict[str, dict[str, float]]:
    """Per output, worst over the held-out inputs: cosine similarity, max and mean absolute error."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, candidate)]
    names = [o.name for o in sessions[0].get_outputs()]
    report = {name: {"cosine": 1.0, "max_abs": 0.0, "mean_abs": 0.0} for name in names}
    for feed in held_out:
        outputs = [s.run(names, _typed(s, feed)) for s in sessions]
        for name, want, got in zip(names, *outputs):
            want, got = want.astype(np.float64).ravel(), got.astype(np.float64).ravel()
            norm = np.linalg.norm(want) * np.linalg.norm(got)
            cosine = float(want @ got / norm) if norm > 0 else float(np.array_equal(want, got))
            entry = report[name]
            entry["cosine"] = min(entry["cosine"], cosine)
            entry["max_abs"] = max(entry["max_abs"], float(np.abs(want - got).max(initial=0.0)))
            entry["mean_abs"] = max(entry["mean_abs"], float(np.abs(want - got).mean()) if want.size else 0.0)
    return report


def speed(reference: Path, candidate: Path, feeds: list[dict], options: ort.SessionOptions, rounds: int = 5) -> dict:
    """Median ms of one pass over `feeds` for the fp32 graph and its quantized version on ORT's CPU provider with the
    target's session options, the two taking turns pass by pass so that other load on the machine hits both alike."""
    sessions = [ort.InferenceSession(str(p), sess_options=options, providers=["CPUExecutionProvider"])
                for p in (reference, candidate)]  # fmt: skip
    typed = [[_typed(s, feed) for feed in feeds] for s in sessions]
    times: list[list[float]] = [[], []]
    for index in range(rounds + 1):  # the first round warms both up
        for which, session in enumerate(sessions):
            started = time.perf_counter()
            for feed in typed[which]:
                session.run(None, feed)
            if index:
                times[which].append((time.perf_counter() - started) * 1000)
    fp32, quantized = (float(np.median(t)) for t in times)
    return {"fp32_ms": fp32, "ms": quantized, "speedup": fp32 / quantized}


def _typed(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed for `session`'s inputs, floats cast to what it declares (an fp16 KV cache is fed recorded fp32)."""
    floats = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    return {i.name: feed[i.name].astype(floats[i.type]) if i.type in floats else feed[i.name]
            for i in session.get_inputs() if i.name in feed}  # fmt: skip


def passes(report: dict[str, dict[str, float]], precision: str) -> bool:
    return all(entry["cosine"] >= MIN_COSINE[precision] for entry in report.values())
