"""Rule update latency to a fleet (issue 31 item 4): one publisher, N edge loops (RuleFeed each, one thread each,
fake frames of --frame-ms), a mosquitto started here on loopback.

    .venv/bin/python benchmarks/rule_fanout.py --bundle BUNDLE --rule RULE.json [--loops 10] [--updates 10]

Each update publishes RULE under a new version (retained, QoS 1); its latency per loop is from the publish call to the
first frame of that loop that takes the new version (so it includes up to one frame of waiting). Prints the median
and max over every loop and update, the worst update, and the publish round trip (to the broker's PUBACK).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from sink_throughput import _wait, start_mosquitto


def edge_loop(feed, seen: dict, stop: threading.Event, frame_s: float) -> None:
    while not stop.is_set():
        feed.rule()  # the rule in force for this frame, as Runtime.stream takes it
        seen.setdefault(feed.in_use, time.perf_counter())
        time.sleep(frame_s)


def fanout(bundle: str, rule: str, loops: int, updates: int, frame_ms: float) -> dict:
    from cseg.bundle.schema import read_manifest
    from cseg.runtime.rule_feed import RuleFeed, publish_rule

    manifest = read_manifest(bundle)
    broker, port = start_mosquitto()
    if broker is None:
        return {"skipped": "no mosquitto binary"}
    url = f"mqtt://127.0.0.1:{port}/bench/rules"
    stop = threading.Event()
    feeds, threads, seen = [], [], [{} for _ in range(loops)]
    try:
        publish_rule(url, rule, version="bench-0")
        feeds = [RuleFeed(url, manifest, report=lambda line: None) for _ in range(loops)]
        for feed in feeds:
            feed.wait(10)
        threads = [threading.Thread(target=edge_loop, args=(f, s, stop, frame_ms / 1000)) for f, s in zip(feeds, seen)]
        for thread in threads:
            thread.start()
        delays, worst, round_trips = [], [], []
        for update in range(1, updates + 1):
            version = f"bench-{update}"
            started = time.perf_counter()
            publish_rule(url, rule, version=version)
            round_trips.append((time.perf_counter() - started) * 1000)
            if not _wait(lambda: all(version in s for s in seen), 10):
                raise RuntimeError(f"{version} did not reach every loop in 10 s")
            these = [(s[version] - started) * 1000 for s in seen]
            delays += these
            worst.append(max(these))
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for feed in feeds:
            feed.close()
        broker.kill()
        broker.wait(10)
    return {"loops": loops, "updates": updates, "frame_ms": frame_ms,
            "latency_ms": {"median": round(statistics.median(delays), 2), "max": round(max(delays), 2)},
            "worst_update_ms": [round(x, 2) for x in worst],
            "publish_round_trip_ms": {"median": round(statistics.median(round_trips), 2),
                                      "max": round(max(round_trips), 2)}}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True, help="the edge's bundle (rules are checked against it)")
    parser.add_argument("--rule", required=True, help="a rule file for that bundle's SAM 3 weights")
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--frame-ms", type=float, default=5.0, help="each fake frame's duration")
    args = parser.parse_args()
    print(json.dumps(fanout(args.bundle, args.rule, args.loops, args.updates, args.frame_ms), indent=1))
