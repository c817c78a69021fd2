"""Workstation -> device: `cseg make-checkpoint`, `cseg export` (= `cseg-export`), `cseg build`, `cseg inspect`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cseg.cli.args import OutputArgs, add_groups
from cseg.errors import EngineError, InvalidInputError


CHECKPOINT_OUT = OutputArgs(("--out", "folder", {"required": True,
                                                 "help": "folder to write conceptseg-r1/ and sam3/ into"}))  # fmt: skip


def register(sub) -> None:
    make = sub.add_parser("make-checkpoint", help="write seeded random-init checkpoints in the published layouts")
    make.add_argument("--size", default="tiny", help="tiny | tiny-alt | small | full (default tiny)")
    make.add_argument("--seed", type=int, default=0)
    add_groups(make, CHECKPOINT_OUT)
    make.add_argument("--meta-sam3", action="store_true",
                      help="also write sam3/sam3.pt: the same SAM 3 weights in Meta's (facebookresearch/sam3) layout")
    make.set_defaults(run=make_checkpoint)

    build = sub.add_parser("build", help="build a GPU-target bundle's TensorRT engines, on the device itself")
    build.add_argument("bundle", help="bundle written by cseg-export --target orin-*|ada|hopper")
    build.add_argument("--cache", default=None, help="engine cache folder (default ~/.cache/cseg/engines)")
    build.add_argument("--force", action="store_true", help="rebuild even engines the cache holds")
    build.add_argument("--register", action="store_true",
                       help="build nothing: record engines built by hand with the bundle's build_engines.sh")
    build.set_defaults(run=build_engines)

    add_export_arguments(sub.add_parser("export", help="export a checkpoint pair to a bundle (= cseg-export)"))

    inspect = sub.add_parser("inspect", help="print a bundle's manifest readably and verify its files")
    inspect.add_argument("bundle")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every file")
    inspect.set_defaults(run=inspect_bundle)


def make_checkpoint(args) -> int:
    from cseg.export.models.checkpoint_sizes import SIZES
    from cseg.export.models.make_checkpoint import make_checkpoint as write

    if args.size not in SIZES:
        raise InvalidInputError(f"unknown --size {args.size!r}; choose one of {', '.join(SIZES)}")
    CHECKPOINT_OUT.parse(args)
    start = time.perf_counter()
    model_dir, sam3_dir = write(args.size, args.seed, args.out, meta_sam3=args.meta_sam3)
    size_mb = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.size} checkpoints (seed {args.seed}) in {time.perf_counter() - start:.1f} s, {size_mb:.1f} MB:")
    print(f"  ConceptSeg-R1: {model_dir}\n  SAM 3:         {sam3_dir}")
    print(f"next: cseg export --model {model_dir} --sam3 {sam3_dir} --out bundle/")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `cseg export` and of `cseg-export`, one definition for both."""
    parser.add_argument("--model", help="ConceptSeg-R1 checkpoint directory (or hub id); not with --rule-only")
    parser.add_argument("--sam3", required=True, help="SAM 3 checkpoint directory (or hub id)")
    parser.add_argument("--rule-only", action="store_true",
                        help="SAM 3 alone (image encoder + decoder): a bundle that applies rules induced on a full "
                             "bundle of the same SAM 3 weights (cseg watch), e.g. an 8 GB Orin Nano per camera")
    parser.add_argument("--queries", type=int, default=None,
                        help="--rule-only: the usual concept tokens per rule, which TensorRT tunes for (default 16, "
                             "the published model's); rules of any Q from 1 to max(32, this) apply")
    parser.add_argument("--out", required=True, help="bundle directory to create")
    parser.add_argument("--target", default="cpu",
                        help="cpu | orin-agx (= orin) | orin-nx | orin-nano | ada | hopper (default cpu)")
    parser.add_argument("--precision", default=None,
                        help="cpu: fp32|int8|int4|fp8|auto; GPU: fp16|int8|int4|fp8 (ada, hopper)|auto (default: the "
                             "target's; auto on a GPU = the most accurate that fits)")
    parser.add_argument("--calib", default=None, help="calibration folder with calib.jsonl (default: bundled photos)")
    parser.add_argument("--top-k", type=int, default=20, help="instances SAM 3's decoder graph returns (default 20)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--allow-oversize", action="store_true",
                        help="GPU targets: export even if the estimated footprint does not fit the device (warns)")
    parser.add_argument("--allow-unsupported-ops", action="store_true",
                        help="GPU targets: export even if a graph uses an operator or data type onnx-tensorrt's "
                             "operator matrix does not list for the target's TensorRT (warns; recorded in the manifest)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="GPU targets: the module's memory when the target comes in several (e.g. 32 for orin-agx)")
    parser.add_argument("--keep-slower", action="store_true",
                        help="cpu target: ship an int8 graph even where it runs slower than fp32 on this machine "
                             "(export here, serve on another CPU)")
    parser.add_argument("--openvino", action="store_true",
                        help="cpu target: time OpenVINO against ONNX Runtime per graph on this machine and record "
                             "OpenVINO where it is faster and within its accuracy gate (served with --device auto "
                             "where openvino is installed and the CPU has what the choice assumed)")
    parser.set_defaults(run=export, command="export")


def export(args) -> int:
    from cseg.engines.targets import resolve

    profile, _ = resolve(args.target, args.precision)  # refuse unknown targets/precisions before loading anything
    if args.top_k < 1:
        raise InvalidInputError(f"--top-k must be at least 1, got {args.top_k}")
    if args.rule_only == bool(args.model):
        raise InvalidInputError("pass --model (a full bundle) or --rule-only (SAM 3 alone, applies rules induced on a "
                                "full bundle of the same SAM 3 weights), not both or neither")  # fmt: skip
    if args.queries is not None and not args.rule_only:
        raise InvalidInputError("--queries is for --rule-only bundles; a full bundle reads Q from --model")
    from cseg.export.bundle import export_bundle

    out = export_bundle(
        args.model, args.sam3, args.out, target=args.target, precision=args.precision, top_k=args.top_k,
        queries=args.queries, calib=args.calib, force=args.force, allow_oversize=args.allow_oversize,
        allow_unsupported_ops=args.allow_unsupported_ops, memory_gb=args.memory_gb, keep_slower=args.keep_slower,
        openvino=args.openvino,
    )  # fmt: skip
    check = (f"cseg watch --bundle {out} --device cpu --rule RULE.json FRAMES/" if args.rule_only else
             f"cseg segment --bundle {out} --device cpu ...")  # fmt: skip
    if profile["backend"] == "tensorrt":
        print(f"next, on the device: cseg build {out}   (or by hand: sh {out}/build_engines.sh; then cseg build {out} "
              f"--register). Check the converted graphs here: {check}")  # fmt: skip
    elif args.rule_only:
        print(f"next: induce a rule on a full bundle of the same SAM 3 weights (cseg induce --bundle FULL ... --out "
              f"rule.json), then: cseg watch --bundle {out} --rule rule.json FRAMES/   (details: cseg inspect {out})")  # fmt: skip
    else:
        print(f"next: cseg segment --bundle {out} sample:astronaut \"astronaut\" --out overlay.png   (details: cseg inspect {out})")
    return 0


def build_engines(args) -> int:
    from cseg.bundle.schema import rule_only
    from cseg.engines.build import build_bundle

    try:
        manifest = build_bundle(args.bundle, cache=args.cache, force=args.force, register=args.register)
    except EngineError as exc:  # no TensorRT here, or a build that failed: status 3 tells scripts which
        print(f"cseg build: error: {exc}", file=sys.stderr)
        return 3
    built = manifest["tensorrt"]
    serve = (f"cseg watch --bundle {args.bundle} --rule RULE.json SOURCE" if rule_only(manifest)
             else f"cseg segment --bundle {args.bundle} ...")  # fmt: skip
    print(f"engines for {built['gpu']} with TensorRT {built['version']} recorded in {args.bundle}/manifest.json; "
          f"serve it: {serve}")  # fmt: skip
    return 0


def inspect_bundle(args) -> int:
    from cseg.bundle.report import describe

    print(describe(args.bundle, verify=not args.no_verify))
    return 0
