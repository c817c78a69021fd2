"""`cseg bench`: per-stage latency of a bundle, and of the PyTorch reference on the same machine in the same run.

Both backends serve the same images and prompts through the same request flow (cseg.pipeline), so their
`Segmentation.timings` are comparable stage by stage. Each path (shortcut: SAM 3 alone; full: reasoning with a fixed
token budget) is run `repeat` times after `warmup` runs; medians, p90 and p99 are reported, plus decode tokens/s,
time to first token, a frame-loop throughput and the peak resident memory of this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PATHS = {"shortcut": {"route": "shortcut"}, "full": {"route": "full"}}
HOST_FRAME = (1080, 1920)  # the host-path benchmark: one 1080p BGR camera frame ...
HOST_INSTANCES = 20  # ... with this many instances above the score threshold (SAM 3's 288x288 mask logits)


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
            out[stage] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
                          "p99": float(np.percentile(values, 99))}  # fmt: skip
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


def measure(backend, name: str, image, prompt: str, repeat: int, warmup: int, max_new_tokens: int,
            progress=None) -> dict[str, Measurement]:  # fmt: skip
    results = {}
    for path, options in PATHS.items():
        kwargs = {**options, "max_new_tokens": max_new_tokens} if path == "full" else options
        measurement = Measurement(name, path)
        for index in range(warmup + repeat):
            started = time.perf_counter()
            result = backend.segment(image, prompt, **kwargs)
            total = (time.perf_counter() - started) * 1000
            if index >= warmup:
                stages = {k: v for k, v in result.timings.items() if k != "decode_tokens_per_s"}
                measurement.runs.append({**stages, "total": total, "tokens": float(len(result.token_ids))})
            if progress:
                progress()
        results[path] = measurement
    return results


def frame_loop(backend, frames, prompt: str) -> float:
    """Frames per second of a shortcut-path segment() loop over `frames` (an inspection line without reasoning)."""
    started = time.perf_counter()
    for frame in frames:
        backend.segment(frame, prompt, route="shortcut")
    return len(frames) / (time.perf_counter() - started)


def median_ms(call, repeat: int) -> float:
    """Median wall time of `call()` over `repeat` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


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
    from cseg.runtime.cuda_graphs import why_unavailable

    reason = why_unavailable()
    if reason:
        return {"skipped": reason}
    from cseg.images import SAM3_MEAN, SAM3_STD
    from cseg.runtime.cuda_buffers import DeviceArray
    from cseg.runtime.cuda_graphs import CapturedWork, Stream
    from cseg.runtime.cuda_kernels import kernels

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

    def masks_(s):
        loaded.upsample_threshold(s, device["logits"].pointer, len(logits), *logits.shape[1:], device["masks"].pointer,
                                  height, width, device["scores"].pointer, 0.5)  # fmt: skip

    def frame_graph(s):
        device["frame"].push(s)
        preprocess(s)
        masks_(s)

    def synchronised(enqueue):
        return lambda: (enqueue(stream), stream.synchronize())

    try:
        result = {"preprocess_ms": median_ms(synchronised(preprocess), repeat),
                  "masks_ms": median_ms(synchronised(masks_), repeat)}  # fmt: skip
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
        lines.append(f"host path on CUDA: preprocess {cuda['preprocess_ms']:.3f} ms, masks {cuda['masks_ms']:.3f} ms, "
                     f"captured frame graph {cuda['frame_graph_ms']:.3f} ms ({cuda['frame_graph_launch_host_us']:.0f} "
                     "us of host time per replay)")  # fmt: skip
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


def report(results: dict[str, dict[str, Measurement]], frames_per_s: dict[str, float]) -> dict:
    out = {"peak_rss_mb": _peak_rss_mb(), "frames_per_s": frames_per_s, "backends": {}}
    for backend, paths in results.items():
        out["backends"][backend] = {
            path: {"stages_ms": m.stats(), "runs": len(m.runs), "decode_tokens_per_s": decode_rate(m),
                   "time_to_first_token_ms": time_to_first_token(m)}  # fmt: skip
            for path, m in paths.items()
        }
    if {"runtime", "reference"} <= set(results):
        out["reference_over_runtime"] = {
            path: results["reference"][path].stats()["total"]["median"] / results["runtime"][path].stats()["total"]["median"]
            for path in PATHS
        }  # fmt: skip
    return out


def table(summary: dict) -> str:
    lines = []
    for backend, paths in summary["backends"].items():
        for path, data in paths.items():
            lines.append(f"{backend} / {path} path ({data['runs']} runs): median total "
                         f"{data['stages_ms']['total']['median']:.1f} ms")  # fmt: skip
            for stage, stats in data["stages_ms"].items():
                if stage not in ("total", "tokens"):
                    lines.append(f"  {stage:<16}{stats['median']:>10.1f}{stats['p90']:>10.1f}{stats['p99']:>10.1f} ms")
            if path == "full" and not np.isnan(data["decode_tokens_per_s"]):  # the reference's generate() is one stage
                lines.append(f"  decode {data['decode_tokens_per_s']:.1f} tokens/s, "
                             f"time to first token {data['time_to_first_token_ms']:.1f} ms")  # fmt: skip
    for path, ratio in summary.get("reference_over_runtime", {}).items():
        lines.append(f"{path} path: reference / runtime = {ratio:.2f}x (median total, same run)")
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
    figure, axis = plt.subplots(figsize=(2.2 * len(bars) + 3, 5))
    bottom = np.zeros(len(bars))
    colors = plt.get_cmap("tab20").colors
    for index, stage in enumerate(stages):
        values = np.array([stats.get(stage, {"median": 0.0})["median"] for _, stats in bars])
        axis.bar([label for label, _ in bars], values, bottom=bottom, label=stage, color=colors[index % len(colors)])
        bottom += values
    axis.set_ylabel("median latency (ms)")
    axis.set_title("cseg bench: stage breakdown")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
