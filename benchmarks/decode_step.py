"""One decode step of bundles' vlm_decoder graphs, through the runtime's own HostDecoder (not part of the tests; README,
Measured here: GroupQueryAttention on the shared KV cache against the sequence-major graph).

    .venv/bin/python benchmarks/decode_step.py BUNDLE [BUNDLE ...] [--cached 300] [--steps 16] [--rounds 3]

Per round and bundle (blocks interleaved, a pause between them so one session's spinning threads do not slow the
next): a cache holding `cached` positions of random keys/values, then `steps` single-token steps as generation runs
them (IO binding, the cache written in place); median ms per step, and each bundle against the first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cseg.bundle.schema import read_manifest
from cseg.runtime.host.decoder import HostDecoder
from cseg.runtime.onnxruntime.graph import OrtGraph, session_options

PAUSE_S = 0.2


def decoder(bundle: Path) -> HostDecoder:
    manifest = read_manifest(bundle)
    entry = manifest["graphs"]["vlm_decoder"]
    graph = OrtGraph("vlm_decoder", bundle / entry["file"], entry, session_options(manifest.get("session", {})),
                     ["CPUExecutionProvider"])  # fmt: skip
    return HostDecoder.from_manifest(graph, manifest)


def step_times(decoder: HostDecoder, cached: int, steps: int, rng) -> list[float]:
    cache = decoder.new_cache(cached + steps)
    for buffer in cache.buffers:  # positions past the filled length are never attended to
        buffer[:] = rng.standard_normal(buffer.shape).astype(buffer.dtype)
    cache.length = cached
    mask = np.ones((1, cached + steps), np.int64)
    no_image = np.zeros((1, decoder.hidden_size), np.float32)
    times = []
    for index in range(cached, cached + steps):
        token = np.array([[int(rng.integers(0, decoder.vocab_size))]], np.int64)
        position = np.full((3, 1, 1), index, np.int64)
        started = time.perf_counter()
        decoder.step(cache, token, no_image, position, mask[:, : index + 1])
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--cached", type=int, default=300)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    decoders = {bundle: decoder(bundle) for bundle in args.bundles}
    rng = np.random.default_rng(0)
    for bundle, each in decoders.items():
        print(f"{bundle}: KV cache {each.layout}")
        step_times(each, args.cached, 2, rng)  # warm-up
    for round_ in range(args.rounds):
        medians = {}
        for bundle, each in decoders.items():
            medians[bundle] = float(np.median(step_times(each, args.cached, args.steps, rng)))
            time.sleep(PAUSE_S)
        first = medians[args.bundles[0]]
        timings = ", ".join(f"{b.name} {ms:.1f} ms ({first / ms:.2f}x)" for b, ms in medians.items())
        print(f"round {round_ + 1}: {timings}")


if __name__ == "__main__":
    main()
