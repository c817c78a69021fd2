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
