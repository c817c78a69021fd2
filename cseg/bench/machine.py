"""The machine's measured bounds (fp32, bf16 and int8 compute peaks, memory bandwidth) and the runtime's graphs
against them: the roofline of `cseg bench`. Each graph is put against the peak of the precision it ran in and against
the best precision this machine has: on an AMX Xeon bf16 and int8 peak 7-13x above fp32 (issue 32), so "67% of the
fp32 peak" alone would hide how far a graph is from what the machine can do."""

from __future__ import annotations

import numpy as np

from cseg.bench.timing import median_ms

# Stages that are one call of their graph at the graph's export sizes in a bench request (one image, no
# demonstration), so the FLOPs the exporter counted are the FLOPs run. sam3_decoder is counted at 4 words and the
# full path's concept tokens: an estimate for the shortcut path (its FLOPs are dominated by the mask decoder).
ROOFLINE_STAGES = ("sam3_vision", "sam3_text", "vlm_vision", "sam3_decoder")
PEAK_SIDE = 2048  # the square matmul that measures the machine's peak
BANDWIDTH_BYTES = 256 * 2**20  # the array a copy streams through memory (far above any cache)


def machine_peaks(repeat: int = 5) -> dict:
    """What this machine can do at best, measured: fp32 GFLOP/s of a numpy 2048^3 matmul, int8 GOP/s of ONNX
    Runtime's MatMulInteger (u8 x s8, MLAS: the kernels the int8 graphs use) of the same size, bf16 GFLOP/s of the
    same matmul in OpenVINO at bf16 inference precision (the bf16 path the runtime has) where the CPU has native bf16
    (None elsewhere, `bf16_why` says why: emulated bf16 is no peak), and memory bandwidth (GB/s, read + write) of a
    numpy copy of 256 MB."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((PEAK_SIDE, PEAK_SIDE), dtype=np.float32)
    flops = 2 * PEAK_SIDE**3
    source = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    target = np.empty_like(source)
    bf16, bf16_why = _bf16_peak(matrix, repeat)
    return {
        "fp32_gflop_s": flops / median_ms(lambda: matrix @ matrix, repeat) / 1e6,
        "int8_gop_s": _int8_peak(rng, repeat),
        "bf16_gflop_s": bf16,
        "bf16_why": bf16_why,
        "bandwidth_gb_s": 2 * source.nbytes / median_ms(lambda: np.copyto(target, source), repeat) / 1e6,
    }


def _bf16_peak(matrix: np.ndarray, repeat: int) -> tuple[float | None, str]:
    from cseg import cpu_backends

    if cpu_backends.native_precision() != "bf16":
        return None, "no native bf16 on this CPU (no AVX512-BF16 or AMX): bf16 would be emulated"
    missing = cpu_backends.openvino_missing()
    if missing:
        return None, missing
    import openvino as ov

    parameter = ov.opset13.parameter([PEAK_SIDE, PEAK_SIDE], ov.Type.f32, name="a")
    weight = ov.opset13.constant(matrix)
    model = ov.Model([ov.opset13.matmul(parameter, weight, False, False)], [parameter], "bf16_peak")
    # the properties the runtime compiles its bf16 graphs with (runtime/openvino/graph.py; cseg/ may not import it)
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"}
    compiled = ov.Core().compile_model(model, "CPU", settings)
    request = compiled.create_infer_request()
    seconds = median_ms(lambda: request.infer({0: matrix}), repeat) / 1000
    return 2 * PEAK_SIDE**3 / seconds / 1e9, "OpenVINO MatMul at bf16 inference precision"


def _int8_peak(rng, repeat: int) -> float:
    try:  # onnx comes with the export extra (as does --reference); the runtime alone does not need it
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return float("nan")
    import onnxruntime as ort

    weight = numpy_helper.from_array(rng.integers(-128, 128, (PEAK_SIDE, PEAK_SIDE), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [PEAK_SIDE, PEAK_SIDE])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [PEAK_SIDE, PEAK_SIDE])],
                              [weight])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (PEAK_SIDE, PEAK_SIDE), dtype=np.uint8)}
    return 2 * PEAK_SIDE**3 / median_ms(lambda: session.run(None, feed), repeat) / 1e6


def roofline(summary: dict, manifest: dict, peaks: dict, choices: dict | None = None) -> dict:
    """Per graph of ROOFLINE_STAGES: the exporter's FLOP count over the runtime's median stage time, against the
    machine's peak for the precision the graph ran in (`choices`: Runtime.cpu_choices, where OpenVINO bf16 served a
    graph) and against the best peak the machine has; and decode tokens/s against the bound memory bandwidth sets
    (every weight byte of the decoder graph read once per token)."""
    stages = summary["backends"]["runtime"]["full"]["stages_ms"]
    by_precision = {name: peaks.get(key) for name, key in _PEAKS.items()}
    measured = [name for name, value in by_precision.items() if value and value > 0]  # NaN, None: not measured
    best = max(measured, key=lambda name: by_precision[name])
    out = {"peaks": peaks, "best": best, "graphs": {}, "cached": []}
    for key in ROOFLINE_STAGES:
        graph = manifest["graphs"].get(key, {})
        if key not in stages and f"{key}_cache" in stages:
            out["cached"].append(key)  # the runtime's cache served it in every run: no graph run to time
        if "flops" not in graph or key not in stages:
            continue  # a bundle exported before FLOPs were counted
        achieved = graph["flops"]["count"] / stages[key]["median"] / 1e6
        choice = (choices or {}).get(key)
        ran = "bf16" if choice is not None and choice.backend == "openvino" and choice.precision == "bf16" else None
        ran = ran or ("int8" if graph["precision"] == "int8" else "fp32")  # int4 is weight-only: it computes in fp32
        out["graphs"][key] = {"gflop": graph["flops"]["count"] / 1e9, "precision": ran,
                              "achieved_gflop_s": achieved, "fraction_of_peak": achieved / by_precision[ran],
                              "fraction_of_best": achieved / by_precision[best]}  # fmt: skip
    decoder = manifest["graphs"]["vlm_decoder"]
    bound = peaks["bandwidth_gb_s"] * 1e9 / decoder["bytes"]
    rate = summary["backends"]["runtime"]["full"]["decode_tokens_per_s"]
    out["decode"] = {"tokens_per_s": rate, "bound_tokens_per_s": bound, "fraction_of_bound": rate / bound,
                     "weight_mb": decoder["bytes"] / 1e6}  # fmt: skip
    return out


# the precision a graph runs in -> the key of its peak in machine_peaks()
_PEAKS = {"fp32": "fp32_gflop_s", "bf16": "bf16_gflop_s", "int8": "int8_gop_s"}


def roofline_table(line: dict) -> str:
    peaks = line["peaks"]
    bf16 = f"{peaks['bf16_gflop_s']:.0f} GFLOP/s" if peaks.get("bf16_gflop_s") else "none"
    lines = [f"machine: fp32 {peaks['fp32_gflop_s']:.0f} GFLOP/s (numpy {PEAK_SIDE}^3 matmul), bf16 {bf16} "
             f"({peaks.get('bf16_why', 'not measured')}), int8 {peaks['int8_gop_s']:.0f} GOP/s (ORT MatMulInteger), "
             f"memory {peaks['bandwidth_gb_s']:.1f} GB/s (copy); best: {line['best']}"]  # fmt: skip
    for key, graph in line["graphs"].items():
        lines.append(f"  {key:<13} {graph['precision']:<5} {graph['gflop']:8.1f} GFLOP  "
                     f"{graph['achieved_gflop_s']:7.1f} GFLOP/s = {100 * graph['fraction_of_peak']:5.1f}% of its "
                     f"{graph['precision']} peak, "
                     f"{100 * graph['fraction_of_best']:5.1f}% of the best ({line['best']})")  # fmt: skip
    for key in line.get("cached", []):
        lines.append(f"  {key:<13} served from the runtime's cache in these runs: no graph run timed")
    decode = line["decode"]
    lines.append(f"  decode {decode['tokens_per_s']:.1f} tokens/s of a {decode['bound_tokens_per_s']:.1f} tokens/s "
                 f"bandwidth bound ({decode['weight_mb']:.0f} MB of weights per token): "
                 f"{100 * decode['fraction_of_bound']:.0f}%")  # fmt: skip
    return "\n".join(lines)
