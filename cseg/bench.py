"""`cseg bench`: per-stage latency of a bundle, and of the PyTorch reference on the same machine in the same run.

Both backends serve the same images and prompts through the same request flow (cseg.pipeline), so their
`Segmentation.timings` are comparable stage by stage. Each path (shortcut: SAM 3 alone; full: reasoning with a fixed
token budget) is run `repeat` times after `warmup` runs, the backends taking turns run by run; medians, min, max,
p90 and p99 are reported, plus decode tokens/s, time to first token, a frame-loop throughput and the peak resident
memory of this process. The reference can run in several configurations (fp32 and bf16 weights); the runtime's
speed-up is given against each and against the fastest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PATHS = {"shortcut": {"route": "shortcut"}, "full": {"route": "full"}}
HOST_FRAME = (1080, 1920)  # the host-path benchmark: one 1080p BGR camera frame ...
HOST_INSTANCES = 20  # ... with this many instances above the score threshold (SAM 3's 288x288 mask logits)
# Stages that are one call of their graph at the graph's export sizes in a bench request (one image, no
# demonstration), so the FLOPs the exporter counted are the FLOPs run. sam3_decoder is counted at 4 words and the
# full path's concept tokens: an estimate for the shortcut path (its FLOPs are dominated by the mask decoder).
ROOFLINE_STAGES = ("sam3_vision", "sam3_text", "vlm_vision", "sam3_decoder")
PEAK_SIDE = 2048  # the square matmul that measures the machine's peak
BANDWIDTH_BYTES = 256 * 2**20  # the array a copy streams through memory (far above any cache)


@dataclass
class Measurement:
    backend: str
    path: str
    runs: list[dict] = field(default_factory=list)  # per run: stage -> ms, plus "total" (ms) and "tokens" (count)

    def stats(self) -> dict[str, dict[str, float]]:
        stages = sorted({k for run in self.runs for k in run})
        out = {}
        for stage in stages:
            values = np.array([run.get(stage, 0.0) for run in self.runs])
            out[stage] = {"median": float(np.median(values)), "min": float(values.min()),
                          "p90": float(np.percentile(values, 90)), "p99": float(np.percentile(values, 99)),
                          "max": float(values.max())}  # fmt: skip
        return out


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return float("nan")


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX). Without it PyTorch's bf16 is emulated and
    far slower than fp32 (measured on a 2-core AVX2 EPYC: a 2048x1024x4096 Linear 6.4x slower), so `cseg bench`
    times the bf16 reference only where it can be the faster configuration."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def measure(backends: dict, image, prompt: str, repeat: int, warmup: int, max_new_tokens: int,
            progress=None) -> dict[str, dict[str, Measurement]]:  # fmt: skip
    """Every backend on both paths, interleaved run by run (A, B, A, B ..., the order rotated each round) so that
    load from anything else on the machine hits every backend alike; run i of each backend forms a pair."""
    results = {name: {path: Measurement(name, path) for path in PATHS} for name in backends}
    names = list(backends)
    for index in range(warmup + repeat):
        for path, options in PATHS.items():
            kwargs = {**options, "max_new_tokens": max_new_tokens} if path == "full" else options
            for name in names[index % len(names):] + names[: index % len(names)]:
                started = time.perf_counter()
                result = backends[name].segment(image, prompt, **kwargs)
                total = (time.perf_counter() - started) * 1000
                if index >= warmup:
                    stages = {k: v for k, v in result.timings.items() if k != "decode_tokens_per_s"}
                    results[name][path].runs.append({**stages, "total": total, "tokens": float(len(result.token_ids))})
                if progress:
                    progress()
    return results


def frame_loop(backends: dict, frames, prompt: str) -> dict[str, float]:
    """Frames per second of a shortcut-path segment() loop over `frames` (an inspection line without reasoning),
    per backend, the backends taking turns frame by frame."""
    seconds = dict.fromkeys(backends, 0.0)
    for frame in frames:
        for name, backend in backends.items():
            started = time.perf_counter()
            backend.segment(frame, prompt, route="shortcut")
            seconds[name] += time.perf_counter() - started
    return {name: len(frames) / total for name, total in seconds.items()}


def median_ms(call, repeat: int) -> float:
    """Median wall time of `call()` over `repeat` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def machine_peaks(repeat: int = 5) -> dict:
    """What this machine can do at best, measured: fp32 GFLOP/s of a numpy 2048^3 matmul, int8 GOP/s of ONNX
    Runtime's MatMulInteger (u8 x s8, MLAS: the kernels the int8 graphs use) of the same size, and memory bandwidth
    (GB/s, read + write) of a numpy copy of 256 MB."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((PEAK_SIDE, PEAK_SIDE), dtype=np.float32)
    flops = 2 * PEAK_SIDE**3
    source = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    target = np.empty_like(source)
    return {
        "fp32_gflop_s": flops / median_ms(lambda: matrix @ matrix, repeat) / 1e6,
        "int8_gop_s": _int8_peak(rng, repeat),
        "bandwidth_gb_s": 2 * source.nbytes / median_ms(lambda: np.copyto(target, source), repeat) / 1e6,
    }


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


def roofline(summary: dict, manifest: dict, peaks: dict) -> dict:
    """Per graph of ROOFLINE_STAGES: the exporter's FLOP count over the runtime's median stage time, against the
    machine's peak for the graph's precision; and decode tokens/s against the bound memory bandwidth sets (every
    weight byte of the decoder graph read once per token)."""
    stages = summary["backends"]["runtime"]["full"]["stages_ms"]
    out = {"peaks": peaks, "graphs": {}, "cached": []}
    for key in ROOFLINE_STAGES:
        graph = manifest["graphs"].get(key, {})
        if key not in stages and f"{key}_cache" in stages:
            out["cached"].append(key)  # the runtime's cache served it in every run: no graph run to time
        if "flops" not in graph or key not in stages:
            continue  # a bundle exported before FLOPs were counted
        achieved = graph["flops"]["count"] / stages[key]["median"] / 1e6
        peak = peaks["int8_gop_s"] if graph["precision"] == "int8" else peaks["fp32_gflop_s"]
        out["graphs"][key] = {"gflop": graph["flops"]["count"] / 1e9, "precision": graph["precision"],
                              "achieved_gflop_s": achieved, "fraction_of_peak": achieved / peak}  # fmt: skip
    decoder = manifest["graphs"]["vlm_decoder"]
    bound = peaks["bandwidth_gb_s"] * 1e9 / decoder["bytes"]
    rate = summary["backends"]["runtime"]["full"]["decode_tokens_per_s"]
    out["decode"] = {"tokens_per_s": rate, "bound_tokens_per_s": bound, "fraction_of_bound": rate / bound,
                     "weight_mb": decoder["bytes"] / 1e6}  # fmt: skip
    return out


def roofline_table(line: dict) -> str:
    peaks = line["peaks"]
    lines = [f"machine: fp32 {peaks['fp32_gflop_s']:.0f} GFLOP/s (numpy {PEAK_SIDE}^3 matmul), int8 "
             f"{peaks['int8_gop_s']:.0f} GOP/s (ORT MatMulInteger), memory {peaks['bandwidth_gb_s']:.1f} GB/s (copy)"]
    for key, graph in line["graphs"].items():
        lines.append(f"  {key:<13} {graph['precision']:<5} {graph['gflop']:8.1f} GFLOP  {graph['achieved_gflop_s']:7.1f} "
                     f"GFLOP/s = {100 * graph['fraction_of_peak']:5.1f}% of peak")  # fmt: skip
    for key in line.get("cached", []):
        lines.append(f"  {key:<13} served from the runtime's cache in these runs: no graph run timed")
    decode = line["decode"]
    lines.append(f"  decode {decode['tokens_per_s']:.1f} tokens/s of a {decode['bound_tokens_per_s']:.1f} tokens/s "
                 f"bandwidth bound ({decode['weight_mb']:.0f} MB of weights per token): "
                 f"{100 * decode['fraction_of_bound']:.0f}%")  # fmt: skip
    return "\n".join(lines)


def host_path_inputs(seed: int = 0, mask_side: int = 288):
    """A 1080p BGR frame, semantic logits [1, 1, s, s] and HOST_INSTANCES instance logits with scores above 0.5."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*HOST_FRAME, 3), dtype=np.uint8)
    semantic = rng.standard_normal((1, 1, mask_side, mask_side)).astype(np.float32)
    masks = rng.standard_normal((1, HOST_INSTANCES, mask_side, mask_side)).astype(np.float32)
    scores = np.linspace(0.99, 0.6, HOST_INSTANCES, dtype=np.float32)[None]
    boxes = np.tile(np.array([0.1, 0.2, 0.5, 0.6], np.float32), (1, HOST_INSTANCES, 1))
    return frame, semantic, (scores, boxes, masks)


def host_path(repeat: int = 20, size: int = 1008) -> dict:
    """Median ms of the per-frame host path on the native CPU module: SAM 3 preprocessing of a 1080p BGR frame, its
    semantic mask and HOST_INSTANCES instance masks at 1080p; and on the CUDA kernels where a GPU is."""
    from cseg.images import load_frame, sam3_pixels
    from cseg.runtime import native, postprocess

    frame, semantic, instances = host_path_inputs()
    out = {"frame": list(HOST_FRAME), "instances": HOST_INSTANCES, "cpu_threads": native.thread_count(), "cpu": {
        "preprocess_ms": median_ms(lambda: sam3_pixels(load_frame(frame, bgr=True), size), repeat),
        "semantic_ms": median_ms(lambda: postprocess.semantic_mask(semantic, HOST_FRAME), repeat),
        "instances_ms": median_ms(lambda: postprocess.instances(*instances, HOST_FRAME, 0.5), repeat),
    }}  # fmt: skip
    out["cuda"] = _cuda_host_path(frame, semantic, instances, size, repeat)
    return out


def _cuda_host_path(frame, semantic, instances, size: int, repeat: int) -> dict:
    """Device time (launch to synchronise) of the kernels on data already on the GPU, and the host time of one
    replay of the captured frame graph (copy in, preprocess, masks)."""
    from cseg.runtime.cuda.graphs import why_unavailable

    reason = why_unavailable()
    if reason:
        return {"skipped": reason}
    from cseg.images import SAM3_MEAN, SAM3_STD
    from cseg.runtime.cuda.buffers import DeviceArray
    from cseg.runtime.cuda.graphs import CapturedWork, Stream
    from cseg.runtime.cuda.kernels import kernels

    loaded, stream = kernels(), Stream()
    height, width = HOST_FRAME
    scores, _, masks = instances
    logits = np.concatenate([semantic[0], masks[0]])  # the semantic mask and the instances, one launch
    device = {"frame": DeviceArray(frame.shape, np.uint8), "pixels": DeviceArray((1, 3, size, size), np.float32),
              "logits": DeviceArray(logits.shape, np.float32), "scores": DeviceArray((len(logits),), np.float32),
              "masks": DeviceArray((len(logits), height, width), np.uint8)}  # fmt: skip
    device["logits"].upload(logits, stream)
    device["scores"].upload(np.concatenate([[1.0], scores[0]]).astype(np.float32), stream)
    device["frame"].host[...] = frame

    def preprocess(s):
        loaded.preprocess(s, device["frame"].pointer, height, width, (width * 3, 3, 1), True,
                          device["pixels"].pointer, size, [SAM3_MEAN] * 3, [SAM3_STD] * 3)  # fmt: skip

    def masks_(s, bicubic=False):
        loaded.upsample_threshold(s, device["logits"].pointer, len(logits), *logits.shape[1:], device["masks"].pointer,
                                  height, width, device["scores"].pointer, 0.5, bicubic)  # fmt: skip

    def frame_graph(s):
        device["frame"].push(s)
        preprocess(s)
        masks_(s)

    def synchronised(enqueue):
        return lambda: (enqueue(stream), stream.synchronize())

    try:
        result = {"preprocess_ms": median_ms(synchronised(preprocess), repeat),
                  "masks_ms": median_ms(synchronised(masks_), repeat),
                  "masks_bicubic_ms": median_ms(synchronised(lambda s: masks_(s, bicubic=True)), repeat)}  # fmt: skip
        work = CapturedWork(stream, frame_graph)
        result["frame_graph_ms"] = median_ms(lambda: (work.launch(), stream.synchronize()), repeat)
        result["frame_graph_launch_host_us"] = median_ms(work.launch, repeat) * 1000
        stream.synchronize()
        result["captured"] = work.captured
        work.close()
    finally:
        for array in device.values():
            array.close()
        stream.close()
    return result


def host_path_table(summary: dict) -> str:
    cpu = summary["cpu"]
    lines = [f"host path, {summary['frame'][0]}p BGR frame, {summary['instances']} instances (native CPU, "
             f"{summary['cpu_threads']} threads): preprocess {cpu['preprocess_ms']:.1f} ms, semantic mask "
             f"{cpu['semantic_ms']:.1f} ms, instance masks {cpu['instances_ms']:.1f} ms"]  # fmt: skip
    cuda = summary["cuda"]
    if "skipped" in cuda:
        lines.append(f"host path on CUDA: not measured ({cuda['skipped']})")
    else:
        lines.append(f"host path on CUDA: preprocess {cuda['preprocess_ms']:.3f} ms, masks {cuda['masks_ms']:.3f} ms "
                     f"(bicubic {cuda['masks_bicubic_ms']:.3f} ms), captured frame graph {cuda['frame_graph_ms']:.3f} ms "
                     f"({cuda['frame_graph_launch_host_us']:.0f} us of host time per replay)")  # fmt: skip
    return "\n".join(lines)


def decode_rate(measurement: Measurement) -> float:
    """Generated tokens per second of decoding (median over runs)."""
    rates = [run["tokens"] / (run["vlm_decode"] / 1000) for run in measurement.runs
             if run.get("vlm_decode") and run.get("tokens")]  # fmt: skip
    return float(np.median(rates)) if rates else float("nan")


def time_to_first_token(measurement: Measurement) -> float:
    """VLM preprocessing + vision + prefill (median), where the backend reports a prefill stage."""
    stages = ("vlm_preprocess", "vlm_vision", "vlm_prefill")
    values = [sum(run.get(s, 0.0) for s in stages) for run in measurement.runs if "vlm_prefill" in run]
    return float(np.median(values)) if values else float("nan")


def speedups(results: dict[str, dict[str, Measurement]], path: str) -> dict:
    """How much faster the runtime is than each reference configuration on `path`: the ratio of the median totals,
    and the spread of the per-round ratios (run i of the reference over run i of the runtime, taken back to back)."""
    runtime = [run["total"] for run in results["runtime"][path].runs]
    out = {}
    for name in (n for n in results if n.startswith("reference")):
        reference = [run["total"] for run in results[name][path].runs]
        paired = np.array(reference) / np.array(runtime)
        out[name] = {"ratio": float(np.median(reference) / np.median(runtime)), "paired_median": float(np.median(paired)),
                     "paired_min": float(paired.min()), "paired_max": float(paired.max())}  # fmt: skip
    fastest = min(out, key=lambda n: results[n][path].stats()["total"]["median"])
    return {"fastest_reference": fastest, "vs_fastest": out[fastest]["ratio"], "references": out}


def report(results: dict[str, dict[str, Measurement]], frames_per_s: dict[str, float]) -> dict:
    out = {"peak_rss_mb": _peak_rss_mb(), "frames_per_s": frames_per_s, "backends": {}}
    for backend, paths in results.items():
        out["backends"][backend] = {
            path: {"stages_ms": m.stats(), "runs": len(m.runs), "decode_tokens_per_s": decode_rate(m),
                   "time_to_first_token_ms": time_to_first_token(m)}  # fmt: skip
            for path, m in paths.items()
        }
    if "runtime" in results and any(n.startswith("reference") for n in results):
        out["speedup"] = {path: speedups(results, path) for path in PATHS}
    return out


def table(summary: dict) -> str:
    lines = []
    for backend, paths in summary["backends"].items():
        for path, data in paths.items():
            total = data["stages_ms"]["total"]
            lines.append(f"{backend} / {path} path ({data['runs']} runs): median total {total['median']:.1f} ms "
                         f"(min {total['min']:.1f}, max {total['max']:.1f})")  # fmt: skip
            lines.append(f"  {'stage':<16}{'median':>10}{'min':>10}{'max':>10} ms")
            for stage, stats in data["stages_ms"].items():
                if stage not in ("total", "tokens"):
                    lines.append(f"  {stage:<16}{stats['median']:>10.1f}{stats['min']:>10.1f}{stats['max']:>10.1f}")
            if path == "full" and not np.isnan(data["decode_tokens_per_s"]):  # the reference's generate() is one stage
                lines.append(f"  decode {data['decode_tokens_per_s']:.1f} tokens/s, "
                             f"time to first token {data['time_to_first_token_ms']:.1f} ms")  # fmt: skip
    for path, speed in summary.get("speedup", {}).items():
        for name, ratio in speed["references"].items():
            lines.append(f"{path} path: {name} / runtime = {ratio['ratio']:.2f}x (median totals; per round "
                         f"{ratio['paired_median']:.2f}x, range {ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}x)")
        lines.append(f"{path} path: runtime vs the fastest reference ({speed['fastest_reference']}): "
                     f"{speed['vs_fastest']:.2f}x")  # fmt: skip
    for backend, fps in summary["frames_per_s"].items():
        lines.append(f"{backend}: {fps:.2f} frames/s on a shortcut-path frame loop")
    lines.append(f"peak resident memory of this process: {summary['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def plot(summary: dict, path: str | Path) -> None:
    """Stacked bars of the median stage times, one bar per backend and path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{backend}\n{path}", data["stages_ms"]) for backend, paths in summary["backends"].items()
            for path, data in paths.items()]  # fmt: skip
    stages = sorted({s for _, stats in bars for s in stats if s not in ("total", "tokens")})
    line = summary.get("roofline")
    figure, axes = plt.subplots(1, 2 if line else 1, figsize=(2.2 * len(bars) + (8 if line else 3), 5),
                                gridspec_kw={"width_ratios": [2, 1]} if line else None, squeeze=False)  # fmt: skip
    axis = axes[0][0]
    bottom = np.zeros(len(bars))
    colors = plt.get_cmap("tab20").colors
    for index, stage in enumerate(stages):
        values = np.array([stats.get(stage, {"median": 0.0})["median"] for _, stats in bars])
        axis.bar([label for label, _ in bars], values, bottom=bottom, label=stage, color=colors[index % len(colors)])
        bottom += values
    axis.set_ylabel("median latency (ms)")
    axis.set_title("cseg bench: stage breakdown")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    if line:  # the runtime's graphs against the machine's peak, decode against its bandwidth bound
        labels = [f"{key}\n{graph['precision']}" for key, graph in line["graphs"].items()] + ["decode\n(bandwidth)"]
        values = [100 * graph["fraction_of_peak"] for graph in line["graphs"].values()]
        axes[0][1].bar(labels, values + [100 * line["decode"]["fraction_of_bound"]], color="tab:gray")
        axes[0][1].set_ylabel("% of the measured machine bound")
        axes[0][1].set_title("runtime roofline")
        axes[0][1].tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
