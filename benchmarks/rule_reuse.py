"""Rule reuse vs reasoning per frame, and one Runtime shared by threads (not part of the test suite).

    .venv/bin/python benchmarks/rule_reuse.py --bundle BUNDLE [--repeat 3] [--tokens 16] [--frames 12]

Prints the median latency of the full path (demonstration + reasoning) and of apply(rule) on the same frame,
measured alternately in one run, and the apply() throughput with 1 and 2 threads on one Runtime.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()

    from skimage import data

    from cseg import Runtime

    runtime = Runtime.open(args.bundle, verify=False)
    demos, frame = [(data.coffee(), [[120, 30, 420, 300]])], data.astronaut()
    rule = runtime.induce(demos, "the cup", image=frame, max_new_tokens=args.tokens)
    full, applied = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        runtime.segment(frame, "the cup", demos, route="full", max_new_tokens=args.tokens)
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        runtime.apply(rule, frame)
        applied.append(time.perf_counter() - started)

    def throughput(threads: int) -> float:
        per_thread = args.frames // threads
        workers = [threading.Thread(target=lambda: [runtime.apply(rule, frame) for _ in range(per_thread)])
                   for _ in range(threads)]  # fmt: skip
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return per_thread * threads / (time.perf_counter() - started)

    result = {
        "full_path_ms": round(float(np.median(full)) * 1000, 1),
        "apply_ms": round(float(np.median(applied)) * 1000, 1),
        "full_over_apply": round(float(np.median(full) / np.median(applied)), 2),
        "apply_fps_1_thread": round(throughput(1), 3),
        "apply_fps_2_threads": round(throughput(2), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
