"""The idle memory of a `cseg serve` process tree (issue 31's target: <= 400 MB beside the bundle's own weights),
after start and again after serving traffic, each process's PSS (proportional set size: shared pages split between
the processes sharing them, so the sum is the tree's real share of RAM) grouped by what it is. Not part of the tests.

    .venv/bin/python benchmarks/serve_footprint.py BUNDLE RULES_DIR RULE_ID [--requests 20] [--settle 10]
                                                   [--grpc-port 8001] [serve flags after --, e.g. -- --instances 1]

Starts `python -m cseg.serve` in .venv-serve on loopback (benchmarks/serve_overhead.py's helpers), waits until it is
ready and `--settle` seconds more, reads /proc/PID/smaps_rollup of every process of its session, sends `--requests`
1080p frames through cseg_apply (shared memory, one at a time), waits `--settle` seconds, reads again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import start_server, stop_server, wait_ready  # noqa: E402

from cseg.serve.client import RemoteRuntime  # noqa: E402


def kind(command: str) -> str:
    if "cseg.serve" in command:
        return "cseg serve process"
    if "tritonserver/bin/tritonserver" in command:
        return "tritonserver"
    if "triton_python_backend_stub" in command:
        return "Python backend stubs"
    if "resource_tracker" in command:
        return "PyTriton tensor stores' resource trackers"
    if "spawn_main" in command:
        return "PyTriton tensor stores"
    return command[:60]


def tree_pss(session: int) -> dict[str, list[int]]:
    """MB of PSS per process of `session`, grouped by kind."""
    groups: dict[str, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.getsid(pid) != session:
                continue
            rollup = open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:]
            fields = dict(line.split(":", 1) for line in rollup)
            command = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
        except (OSError, ProcessLookupError):  # a process that ended meanwhile
            continue
        groups[kind(command)].append(int(fields["Pss"].split()[0]) // 1024)
    return groups


def report(title: str, groups: dict[str, list[int]], weights_mb: float) -> None:
    total = sum(sum(values) for values in groups.values())
    print(f"{title}: {total} MB PSS in {sum(len(v) for v in groups.values())} processes, "
          f"{total - weights_mb:.0f} MB beside the bundle's {weights_mb:.0f} MB of graphs")  # fmt: skip
    for name, values in sorted(groups.items(), key=lambda item: -sum(item[1])):
        print(f"  {sum(values):4d} MB  {name} ({', '.join(map(str, values))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("rules")
    parser.add_argument("rule_id")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("serve_flags", nargs="*", help="extra `cseg serve` flags (after --)")
    args = parser.parse_args()
    weights_mb = sum(p.stat().st_size for p in Path(args.bundle).rglob("*.onnx*")) / 2**20
    server = start_server(args.bundle, args.rules, args.grpc_port, args.serve_flags, name="serve_footprint")
    url = f"127.0.0.1:{args.grpc_port}"
    try:
        wait_ready(url, server, log="serve_footprint.server.log")
        time.sleep(args.settle)
        report("idle after start", tree_pss(server.pid), weights_mb)
        frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        with RemoteRuntime(url, timeout_s=120) as remote:
            for _ in range(args.requests):
                remote.apply(args.rule_id, frame)
        time.sleep(args.settle)
        report(f"idle after {args.requests} requests", tree_pss(server.pid), weights_mb)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
