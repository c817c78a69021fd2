"""A bench run's numbers: per-stage statistics, decode rate, time to first token, the runtime's speed-up over each
reference configuration, and the table `cseg bench` prints."""

from __future__ import annotations

import numpy as np

from cseg.bench.timing import PATHS, Measurement


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return float("nan")



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
