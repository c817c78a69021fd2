"""`cseg` command line: one subcommand per step of the workflow, one module per group of subcommands, each holding
its parsers and its handlers together; the flags several subcommands share are argument groups (`args.py`).

    cseg make-checkpoint --size tiny --seed 0 --out ckpt/                                      (export.py)
    cseg export --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 --target cpu --out bundle/     (= cseg-export ...)
    cseg-export --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 --target orin-nx --out bundle-nx/  (GPU: ONNX + recipe)
    cseg build bundle-nx/                                                    (on the device: TensorRT engines)
    cseg-export --sam3 ckpt/sam3 --rule-only --target orin-nano --out nano/  (SAM 3 alone: applies rules, cseg watch)
    cseg inspect bundle/
    cseg segment --bundle bundle/ sample:astronaut "astronaut" --out overlay.png --json          (run.py)
    cseg segment --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 sample:astronaut "astronaut"  (PyTorch reference)
    cseg induce --bundle bundle/ --demo good.png --boxes "10,10,80,60" "scratch on the lid" --out rule.json
    cseg watch --bundle bundle/ --rule rule.json frames/ --out overlays/ --budget-ms 500
    cseg bench --bundle bundle/ --reference ckpt/ --plot bench.png                               (bench.py)
    cseg eval --bundle bundle/ --data ConceptSeg-Benchmark/ --format conceptseg --json metrics.json  (eval.py)
    cseg calib collect | fit-router ...                                                          (calib.py)
    cseg serve bundle/ --rules rules/ --grpc-port 8001        (Triton via PyTriton, in .venv-serve; serve.py)

Errors a user can cause (bad paths, bad images, broken checkpoints) print one line and exit with status 2;
`cseg build` on a machine without TensorRT exits with status 3.
"""

from __future__ import annotations

import argparse
import sys

from cseg.cli import bench, calib, export, run, serve
from cseg.cli import eval as evaluation
from cseg.errors import CsegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cseg", description="ConceptSeg-R1 export and serving")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (export, bench, calib, evaluation, run, serve):  # the order `cseg --help` lists them in
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def export_main(argv: list[str] | None = None) -> int:
    """`cseg-export`: the same as `cseg export`."""
    parser = argparse.ArgumentParser(prog="cseg-export", description="export ConceptSeg-R1 + SAM 3 to a bundle")
    export.add_export_arguments(parser)
    return _run(parser.parse_args(argv))


def _run(args) -> int:
    try:
        return args.run(args)
    except CsegError as exc:
        print(f"cseg {args.command}: error: {exc}", file=sys.stderr)
    except OSError as exc:  # the file system refused a write after the up-front checks (disk full, a race): one line
        detail = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        print(f"cseg {args.command}: error: {detail}", file=sys.stderr)
    return 2
