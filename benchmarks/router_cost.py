"""What the learned router costs next to the prefill and the full path (not part of the test suite).

    .venv/bin/python benchmarks/router_cost.py --bundle BUNDLE_WITH_ROUTER [--repeat 3]

Serves route="auto" requests on a bundle with a fitted router (cseg calib fit-router) and prints the median
router, prefill and total latency, and the router's share of a shortcut request (SAM 3 + prefill + router).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    from skimage import data

    from cseg import Runtime

    runtime = Runtime.open(args.bundle, verify=False)
    if runtime.learned_router is None:
        raise SystemExit(f"{args.bundle} has no fitted router: run cseg calib fit-router first")
    image = data.astronaut()
    rows = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = runtime.segment(image, "the astronaut's helmet", max_new_tokens=args.tokens)
        total = (time.perf_counter() - started) * 1000
        rows.append({"route": result.route, "router_ms": result.timings["router"],
                     "prefill_ms": result.timings["vlm_prefill"], "total_ms": total})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    shortcut_request = [r["total_ms"] for r in rows if r["route"] == "shortcut"]
    summary = {key: float(np.median([r[key] for r in rows])) for key in ("router_ms", "prefill_ms", "total_ms")}
    if shortcut_request:
        summary["router_share_of_shortcut_request"] = summary["router_ms"] / float(np.median(shortcut_request))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
