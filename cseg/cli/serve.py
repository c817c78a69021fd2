"""`cseg serve BUNDLE`: the bundle behind Triton Inference Server (PyTriton), for many cameras on one server.

    make serve-env                                   # its own environment: PyTriton needs numpy<2
    .venv-serve/bin/cseg serve bundle/ --rules rules/ --grpc-port 8001
    # clients: cseg.serve.client.RemoteRuntime("127.0.0.1:8001")

Binds 127.0.0.1 unless --host says otherwise (the server has no authentication: expose it deliberately).

`cseg export-triton BUNDLE REPO`: the same bundle as a model repository for a stock tritonserver / DeepStream
nvinferserver (cseg.serve.triton_repo: the SAM 3 graphs as onnxruntime / tensorrt_plan models, the request flow as
Python-backend models).
"""

from __future__ import annotations

import argparse
import logging

from cseg.cli.args import DEVICE_HELP, at_least
from cseg.serve.server import (  # numpy and cseg only: PyTriton loads when serving
    CONCURRENCY, INSTANCES, MAX_DELAY_MS, THREADS)

DEFAULTS = {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002, "max_batch": 8, "max_queue": 64,
            "instances": INSTANCES, "concurrency": CONCURRENCY, "threads": THREADS}  # fmt: skip


def register(sub) -> None:
    parser = sub.add_parser("serve", help="serve a bundle with Triton Inference Server (gRPC/HTTP, many clients)")
    parser.add_argument("bundle", help="bundle directory written by cseg export")
    parser.add_argument("--rules", help="folder of rule files (NAME.json + NAME.npz): cseg_apply serves them as NAME")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "tensorrt"], help=DEVICE_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULTS["http_port"], help="HTTP port (KServe v2 protocol)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULTS["grpc_port"], help="gRPC port (RemoteRuntime)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULTS["metrics_port"], help="Prometheus metrics; 0: off")
    parser.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"],
                        help="most requests the dynamic batcher groups into one call")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=DEFAULTS["max_queue"],
                        help="requests waiting at most per model; more are rejected at once")  # fmt: skip
    parser.add_argument("--queue-timeout-s", type=float, default=30.0,
                        help="a request waiting longer than this in the queue is rejected")  # fmt: skip
    parser.add_argument("--max-delay-ms", type=float, default=MAX_DELAY_MS,
                        help="how long the batcher waits for more requests to group")  # fmt: skip
    parser.add_argument("--instances", type=int, default=DEFAULTS["instances"],
                        help="model instances per model: batches served at once, one's graph run overlapping "
                        "another's transfers and host work")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"],
                        help="requests run at once over all instances (each batch's requests share them)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                        help="ONNX Runtime intra-op threads per graph run (default: the cores divided among "
                        "--concurrency runs; 0: one per core each, the lowest latency for a lone camera)")  # fmt: skip
    parser.add_argument("--shared-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="let clients on this host send frames through shared memory (by reference or "
                        "Triton's; a client can then have the server read any cseg-... shared-memory object, or with "
                        "Triton's any this user can open); default: on when --host is loopback")  # fmt: skip
    parser.set_defaults(run=serve)

    repo = sub.add_parser("export-triton", help="write a Triton model repository (stock tritonserver, DeepStream)")
    repo.add_argument("bundle", help="bundle directory written by cseg export")
    repo.add_argument("repo", help="model repository folder to write (refused if it exists, unless --force)")
    repo.add_argument("--rules", help="rules folder the Python-backend models share (adds cseg_induce, which saves "
                      "its rules there for cseg_apply)")  # fmt: skip
    repo.add_argument("--device", default="auto", choices=["auto", "cpu", "tensorrt"],
                      help="device the Python-backend models open the bundle with (as cseg serve --device)")
    repo.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"],
                      help="max_batch_size of the models that batch (graphs with a dynamic batch axis, the flow)")
    repo.add_argument("--force", action="store_true", help="replace a repository this command wrote before")
    repo.set_defaults(run=export_triton)


def serve(args) -> int:
    from cseg.errors import InvalidInputError
    from cseg.serve.server import serve as run_server

    at_least(args, 1, "--max-batch", "--max-queue", "--instances", "--concurrency")
    at_least(args, 0, "--threads")
    ports = [args.port, args.grpc_port] + ([args.metrics_port] if args.metrics_port else [])
    if not all(1 <= port <= 65535 for port in ports) or len(set(ports)) != len(ports):
        raise InvalidInputError(f"ports must be distinct numbers from 1 to 65535, got {ports}")
    if not args.queue_timeout_s > 0 or not args.max_delay_ms >= 0:
        raise InvalidInputError("--queue-timeout-s must be > 0 and --max-delay-ms >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(_triton) -> None:
        print(f"cseg serve: ready on {args.host} (gRPC {args.grpc_port}, HTTP {args.port})", flush=True)

    run_server(args.bundle, rules=args.rules, host=args.host, http_port=args.port, grpc_port=args.grpc_port,
               metrics_port=args.metrics_port, max_batch=args.max_batch, max_queue=args.max_queue,
               queue_timeout_s=args.queue_timeout_s, max_delay_ms=args.max_delay_ms, device=args.device,
               instances=args.instances, concurrency=args.concurrency,
               threads=args.threads, shared_memory=args.shared_memory, ready=ready)  # fmt: skip
    return 0


def export_triton(args) -> int:
    from cseg.serve.triton_repo import export_repository

    at_least(args, 1, "--max-batch")
    summary = export_repository(args.bundle, args.repo, rules=args.rules, force=args.force, max_batch=args.max_batch,
                                device=args.device)  # fmt: skip
    for name, model in summary.items():
        print(f"{name}: {model['backend']}, max_batch_size {model['max_batch_size']}, {model['instance_kind']}")
    print(f"wrote {args.repo} ({len(summary)} models; every config.pbtxt parsed as Triton's ModelConfig and checked "
          "against its ONNX graph); serve it with: tritonserver --model-repository " + str(args.repo) + " (a full "
          "tritonserver; the one PyTriton bundles has only the Python backend: cseg.serve.stock.stock_command loads "
          "the Python-backend models alone)")  # fmt: skip
    return 0
