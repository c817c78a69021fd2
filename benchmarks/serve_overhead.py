"""What serving through Triton adds to a call: local Runtime.apply vs RemoteRuntime.apply on the same bundle, rule and
1080p frame, interleaved (local, remote, local, ...) so a machine's drift hits both alike; medians and p90 (README,
"Serving many cameras: Triton"). Not part of the tests.

    .venv/bin/python benchmarks/serve_overhead.py BUNDLE RULES_DIR RULE_ID [--rounds 30] [--grpc-port 8001] [--stock]

Starts `python -m cseg.serve` in .venv-serve on loopback (--stock: the bundle's `cseg export-triton` repository on
the tritonserver binary PyTriton bundles, started directly by cseg.serve.stock; or uses --url of a running server),
then measures: local, remote with frames by reference (the client copies each into its shared memory), remote with
the frame written into RemoteRuntime.frame_buffer beforehand (as a camera would: no client copy), remote with frames
in the gRPC message. Per request, the wall time minus the server's own Runtime call (the answer's timings["runtime"])
is the serving overhead (gRPC, Triton's queue, the copies); the difference of medians is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cseg.runtime import Rule, Runtime
from cseg.serve.client import RemoteRuntime, ServerError
from cseg.serve.stock import serving_environment

ROOT = Path(__file__).resolve().parents[1]


def start_server(bundle: str, rules: str, grpc_port: int, settings=(), name: str = "serve_overhead"):
    """`python -m cseg.serve` in .venv-serve on loopback with extra `settings` (flags); its log: NAME.server.log."""
    python = ROOT / ".venv-serve" / "bin" / "python"
    if not python.exists():
        sys.exit("no .venv-serve: run make serve-env")
    command = [str(python), "-m", "cseg.serve", bundle, "--rules", rules, "--grpc-port", str(grpc_port),
               "--port", str(grpc_port + 1), "--metrics-port", "0", *settings]  # fmt: skip
    with open(f"{name}.server.log", "wb") as log:  # why a server did not come up
        return subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                                env=serving_environment())  # .venv-serve finds its own packages


def start_stock_server(bundle: str, rules: str, grpc_port: int, name: str = "serve_overhead"):
    """The bundle's export-triton repository (in NAME.stock/) on the bundled stock tritonserver, on loopback."""
    from cseg.serve.stock import stock_command
    from cseg.serve.triton_repo import export_repository

    work = Path(f"{name}.stock").absolute()
    export_repository(bundle, work / "repo", rules=rules, force=True)
    argv, env = stock_command(ROOT / ".venv-serve", work / "repo", work, grpc_port=grpc_port, http_port=grpc_port + 1)
    with open(f"{name}.server.log", "wb") as log:
        return subprocess.Popen(argv, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_server(server: subprocess.Popen | None) -> None:
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the session: PyTriton's tritonserver and stubs go with it
        server.wait(timeout=30)


def wait_ready(url: str, server: subprocess.Popen | None, timeout_s: float = 180,
               log: str = "serve_overhead.server.log") -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}: see {log}")
        try:
            with RemoteRuntime(url) as rt:
                if rt.ready():
                    return
        except ServerError:
            pass
        time.sleep(0.5)
    sys.exit(f"no server at {url} after {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("rules", help="folder of rule files (the server's --rules)")
    parser.add_argument("rule_id")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--url", help="a running cseg serve (host:grpc_port); default: start one")
    parser.add_argument("--stock", action="store_true", help="start a stock tritonserver on the bundle's export-triton "
                        "repository (its Python-backend models) instead of cseg serve")  # fmt: skip
    args = parser.parse_args()
    start = start_stock_server if args.stock else start_server
    server = None if args.url else start(args.bundle, args.rules, args.grpc_port)
    url = args.url or f"127.0.0.1:{args.grpc_port}"
    try:
        wait_ready(url, server)
        local = Runtime.open(args.bundle)
        rule = Rule.load(Path(args.rules) / f"{args.rule_id}.json")
        frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        times: dict[str, list[float]] = {"local": [], "remote": [], "buffer": [], "message": []}
        added: dict[str, list[float]] = {"remote": [], "buffer": [], "message": []}  # wall - the server's Runtime call
        with RemoteRuntime(url, timeout_s=120) as remote, RemoteRuntime(url, timeout_s=120,
                                                                        shared_memory=False) as message:  # fmt: skip
            buffer = remote.frame_buffer(*frame.shape[:2])  # where a camera would write: the same region as remote's
            buffer[...] = frame
            calls = {"local": lambda: local.apply(rule, frame), "remote": lambda: remote.apply(args.rule_id, frame),
                     "buffer": lambda: remote.apply(args.rule_id, buffer),
                     "message": lambda: message.apply(args.rule_id, frame)}  # fmt: skip
            for name, call in calls.items():  # warm-up: sessions, channel, shared memory, Triton's first request
                call()
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    result = call()
                    times[name].append((time.perf_counter() - start) * 1000)
                    if name in added:
                        added[name].append(times[name][-1] - result.timings["runtime"])
            off = remote.shared_memory_off
        for name, values in times.items():
            values = sorted(values)
            print(f"{name:7s} median {statistics.median(values):8.2f} ms  p90 {values[int(0.9 * len(values))]:8.2f} ms"
                  f"  ({len(values)} calls)")  # fmt: skip
        if off:
            print(f"remote: frames went in the gRPC message ({off})")
        for name, how in (("remote", "frames by reference (the client copies each into shared memory)"),
                          ("buffer", "frames by reference, written into RemoteRuntime.frame_buffer (no client copy)"),
                          ("message", "frames in the gRPC message")):  # fmt: skip
            overhead = statistics.median(times[name]) - statistics.median(times["local"])
            direct = sorted(added[name])
            print(f"serving overhead, {how}: per request (wall - the server's Runtime call) median "
                  f"{statistics.median(direct):.2f} ms, p90 {direct[int(0.9 * len(direct))]:.2f} ms; "
                  f"median {name} - median local {overhead:.2f} ms (1080p frame)")  # fmt: skip
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
