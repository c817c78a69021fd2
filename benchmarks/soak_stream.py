"""Soak test (not part of the test suite): N frames through Runtime.stream on one Runtime, resident memory sampled.

    .venv/bin/python benchmarks/soak_stream.py --bundle BUNDLE --frames 10000 --every 500 --json soak.json

Induces a rule once from a bundled photograph, then streams frames (the photograph shifted by a different offset
each time, so no two are equal) with drop="none". Prints one line per sample: frames done, RSS in MB, fps so far.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument("--json")
    args = parser.parse_args()

    from skimage import data

    from cseg import Runtime

    runtime = Runtime.open(args.bundle, session={"intra_op_num_threads": args.threads})
    photo = data.coffee()
    rule = runtime.induce([(photo, [[120, 30, 420, 300]])], "the cup", max_new_tokens=8)
    frames = (np.roll(photo, i % photo.shape[1], axis=1) for i in range(args.frames))
    samples, errors, started = [], 0, time.perf_counter()
    for count, item in enumerate(runtime.stream(frames, rule, drop="none"), 1):
        errors += item.error is not None
        if count % args.every == 0 or count == 1:
            sample = {"frames": count, "rss_mb": round(rss_mb(), 1), "fps": round(count / (time.perf_counter() - started), 2)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    steady = [s["rss_mb"] for s in samples if s["frames"] >= args.every]  # after the arenas have warmed up
    summary = {"frames": args.frames, "errors": errors, "samples": samples,
               "rss_end_minus_first_steady_mb": round(steady[-1] - steady[0], 1) if steady else None,
               "rss_steady_range_mb": [min(steady), max(steady)] if steady else None}  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
