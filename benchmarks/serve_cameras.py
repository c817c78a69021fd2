"""Many cameras on one `cseg serve`: N cameras (threads, each with its own RemoteRuntime: its own gRPC channel) send
1080p frames through cseg_apply, FRAMES each, against one camera sending the same number of frames alone. Reports
one camera's sequential frames/s, the N cameras' aggregate frames/s and their ratio (issue 31's target: >= 1.2 for
8 cameras on a 2-core CPU), per-camera p50/p99 latency, lost requests (every request must be answered: none may
fail or time out), Triton's batch statistics of cseg_apply, and whether every answer equals the local Runtime's.
README, "Serving many cameras: Triton". Not part of the tests.

    .venv/bin/python benchmarks/serve_cameras.py BUNDLE RULES_DIR RULE_ID [--cameras 8] [--frames 12]
        [--instances N] [--concurrency N] [--threads N] [--max-batch N] [--max-delay-ms MS] [--grpc-port 8011]
        [--url HOST:PORT] [--json FILE]

Starts `python -m cseg.serve` in .venv-serve on loopback with the given serving settings (or measures --url, a
running server), then runs one camera alone, then all cameras at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from serve_overhead import start_server, stop_server, wait_ready  # this folder is on sys.path (the script's)

from cseg.runtime import Rule, Runtime
from cseg.serve import contract
from cseg.serve.client import RemoteRuntime

DISTINCT = 4  # distinct frames in the rotation: the answers are checked against the local Runtime's on each


def frames_1080p(count: int) -> list[np.ndarray]:
    """`count` distinct 1920x1080 RGB frames: a photograph tiled to 1080p, shifted per frame (real content gives the
    model instances to find, so the postprocess and the masks on the wire are those of a real frame)."""
    from skimage import data

    photo = data.astronaut()  # 512x512
    tiled = np.tile(photo, (3, 4, 1))[:1080, :1920]
    return [np.ascontiguousarray(np.roll(tiled, 173 * k, axis=1)) for k in range(count)]


def camera_run(url: str, rule_id: str, frames: list[np.ndarray], count: int, offset: int, out: dict) -> None:
    """One camera: `count` frames in order, each sent when the previous one is answered (a camera waits for its
    result before its next frame: the latency is what it sees). out: latencies (ms), answers, errors."""
    out.update(latencies=[], answers={}, errors=[])
    with RemoteRuntime(url, timeout_s=300) as rt:
        for n in range(count):
            index = (offset + n) % len(frames)
            start = time.perf_counter()
            try:
                result = rt.apply(rule_id, frames[index])
            except Exception as exc:  # a lost request: counted and reported, never retried
                out["errors"].append(repr(exc))
                continue
            out["latencies"].append((time.perf_counter() - start) * 1000)
            out["answers"].setdefault(index, []).append(result)


def run_cameras(url: str, rule_id: str, frames, cameras: int, count: int) -> tuple[float, list[dict]]:
    """All cameras at once; (wall seconds from the first send to the last answer, per-camera outputs)."""
    outs = [{} for _ in range(cameras)]
    threads = [threading.Thread(target=camera_run, args=(url, rule_id, frames, count, k, outs[k]))
               for k in range(cameras)]  # fmt: skip
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, outs


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def batch_counts(url: str, executed: int = 0, wait_s: float = 5.0) -> dict[int, int]:
    """{batch size: executions} of cseg_apply so far (Triton's statistics), once they count `executed` requests or
    after `wait_s` (Triton records a batch's statistics just after its answers leave: the last may lag)."""
    deadline = time.monotonic() + wait_s
    with RemoteRuntime(url) as rt:
        while True:
            model = rt.statistics(contract.APPLY)["model_stats"][0]
            stats = model.get("batch_stats", [])
            counts = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats}
            if sum(size * n for size, n in counts.items()) >= executed or time.monotonic() > deadline:
                return counts
            time.sleep(0.1)


def mismatches(outs: list[dict], expected: list) -> int:
    """Answers that differ from the local Runtime's on the same frame (masks exactly, scores to 1e-5)."""
    bad = 0
    for out in outs:
        for index, results in out["answers"].items():
            want = expected[index]
            for got in results:
                same = np.array_equal(got.mask, want.mask) and np.array_equal(got.instances.masks, want.instances.masks)
                bad += not (same and np.allclose(got.instances.scores, want.instances.scores, atol=1e-5))
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("rules", help="folder of rule files (the server's --rules)")
    parser.add_argument("rule_id")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--frames", type=int, default=12, help="frames per camera (and for the one camera alone)")
    # the server's settings: not given, the server's defaults (cseg serve --help)
    parser.add_argument("--instances", type=int)
    parser.add_argument("--concurrency", type=int, help="the server's requests run at once")
    parser.add_argument("--threads", type=int, help="the server's ONNX Runtime intra-op threads per run")
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--max-delay-ms", type=float)
    parser.add_argument("--grpc-port", type=int, default=8011)
    parser.add_argument("--url", help="a running cseg serve (host:grpc_port); default: start one")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    flags = ("instances", "concurrency", "threads", "max_batch", "max_delay_ms")
    settings = [text for flag in flags if getattr(args, flag) is not None
                for text in (f"--{flag.replace('_', '-')}", str(getattr(args, flag)))]  # fmt: skip
    server = None if args.url else start_server(args.bundle, args.rules, args.grpc_port, settings, "serve_cameras")
    url = args.url or f"127.0.0.1:{args.grpc_port}"
    try:
        wait_ready(url, server, log="serve_cameras.server.log")
        frames = frames_1080p(DISTINCT)
        camera_run(url, args.rule_id, frames, 2, 0, {})  # warm-up: sessions, Triton's first requests
        before = batch_counts(url, executed=2)  # the warm-up's two, recorded
        one_s, (one,) = run_cameras(url, args.rule_id, frames, 1, args.frames)
        many_s, outs = run_cameras(url, args.rule_id, frames, args.cameras, args.frames)
        sent = (args.cameras + 1) * args.frames  # the one camera's frames and the cameras' (not the warm-up's)
        after = batch_counts(url, executed=sum(size * n for size, n in before.items()) + sent)
    finally:
        stop_server(server)
    local = Runtime.open(args.bundle)
    rule = Rule.load(Path(args.rules) / f"{args.rule_id}.json")
    expected = [local.apply(rule, frame) for frame in frames]
    grown = {size: count - before.get(size, 0) for size, count in sorted(after.items())}
    batches = {size: count for size, count in grown.items() if count}
    answered = sum(len(o["latencies"]) for o in outs)
    report = {
        "settings": {"cameras": args.cameras, "frames": args.frames, **{flag: getattr(args, flag) for flag in flags}},
        "one_camera_fps": len(one["latencies"]) / one_s,
        "one_camera_p50_ms": percentile(one["latencies"], 50),
        "cameras_fps": answered / many_s,
        "per_camera": [{"p50_ms": percentile(o["latencies"], 50), "p99_ms": percentile(o["latencies"], 99),
                        "answered": len(o["latencies"])} for o in outs],  # fmt: skip
        "lost": sum(len(o["errors"]) for o in outs + [one]),
        "errors": sorted({e for o in outs + [one] for e in o["errors"]})[:5],
        "mismatches": mismatches(outs + [one], expected),
        "batches": batches,
        "executed": sum(size * count for size, count in batches.items()),
        "sent": sent,
    }
    report["ratio"] = report["cameras_fps"] / report["one_camera_fps"]
    print(f"settings: {report['settings']}")
    print(f"one camera alone : {report['one_camera_fps']:6.2f} frames/s (p50 {report['one_camera_p50_ms']:.1f} ms)")
    print(f"{args.cameras} cameras at once: {report['cameras_fps']:6.2f} frames/s in all = {report['ratio']:.2f}x")
    for k, cam in enumerate(report["per_camera"]):
        print(f"  camera {k}: p50 {cam['p50_ms']:8.1f} ms  p99 {cam['p99_ms']:8.1f} ms  ({cam['answered']} answered)")
    print(f"lost requests: {report['lost']} {report['errors']}; answers unlike the local Runtime's: "
          f"{report['mismatches']}")  # fmt: skip
    print(f"cseg_apply batches (size: count), one camera and all cameras: {batches}; requests executed "
          f"{report['executed']} of {report['sent']} sent")  # fmt: skip
    print(f"median per-camera p50 {statistics.median(c['p50_ms'] for c in report['per_camera']):.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
