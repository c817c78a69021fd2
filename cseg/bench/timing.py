"""Timing the backends: every backend on both paths, interleaved run by run, and a frame loop (cseg.bench)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
            out[stage] = {"median": float(np.median(values)), "min": float(values.min()),
                          "p90": float(np.percentile(values, 90)), "p99": float(np.percentile(values, 99)),
                          "max": float(values.max())}  # fmt: skip
        return out



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


def interleaved_ms(calls: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per call of each of `calls` (name -> no-argument callable), taking turns call by call with the order
    rotated each round, so that other load on the machine hits every one alike."""
    names, times = list(calls), {name: [] for name in calls}
    for index in range(warmup + rounds):
        for name in names[index % len(names):] + names[: index % len(names)]:
            started = time.perf_counter()
            calls[name]()
            if index >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}
