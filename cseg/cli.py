"""`cseg` command line: one subcommand per step of the workflow.

    cseg make-checkpoint --size tiny --seed 0 --out ckpt/
    cseg export --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 --target cpu --out bundle/     (= cseg-export ...)
    cseg-export --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 --target orin-nx --out bundle-nx/  (GPU: ONNX + recipe)
    cseg build bundle-nx/                                                    (on the device: TensorRT engines)
    cseg-export --sam3 ckpt/sam3 --rule-only --target orin-nano --out nano/  (SAM 3 alone: applies rules, cseg watch)
    cseg inspect bundle/
    cseg segment --bundle bundle/ sample:astronaut "astronaut" --out overlay.png --json
    cseg segment --model ckpt/conceptseg-r1 --sam3 ckpt/sam3 sample:astronaut "astronaut"  (PyTorch reference)
    cseg bench --bundle bundle/ --reference ckpt/ --plot bench.png
    cseg eval --bundle bundle/ --data ConceptSeg-Benchmark/ --format conceptseg --json metrics.json
    cseg induce --bundle bundle/ --demo good.png --boxes "10,10,80,60" "scratch on the lid" --out rule.json
    cseg watch --bundle bundle/ --rule rule.json frames/ --out overlays/ --budget-ms 500

Errors a user can cause (bad paths, bad images, broken checkpoints) print one line and exit with status 2;
`cseg build` on a machine without TensorRT exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cseg.errors import CsegError, EngineError, InvalidInputError
from cseg.outputs import output_file, output_folder


def _make_checkpoint(args) -> int:
    from cseg.export.checkpoint_sizes import SIZES
    from cseg.export.make_checkpoint import make_checkpoint

    if args.size not in SIZES:
        raise InvalidInputError(f"unknown --size {args.size!r}; choose one of {', '.join(SIZES)}")
    output_folder(args.out, "--out")
    start = time.perf_counter()
    model_dir, sam3_dir = make_checkpoint(args.size, args.seed, args.out, meta_sam3=args.meta_sam3)
    size_mb = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.size} checkpoints (seed {args.seed}) in {time.perf_counter() - start:.1f} s, {size_mb:.1f} MB:")
    print(f"  ConceptSeg-R1: {model_dir}\n  SAM 3:         {sam3_dir}")
    print(f"next: cseg export --model {model_dir} --sam3 {sam3_dir} --out bundle/")
    return 0


def _parse_boxes(text: str | None) -> list[list[float]]:
    if not text:
        return []
    try:
        boxes = [[float(v) for v in box.split(",")] for box in text.split(";") if box.strip()]
    except ValueError:
        raise InvalidInputError(f"--boxes {text!r}: expected 'x1,y1,x2,y2;x1,y1,x2,y2'") from None
    if any(len(box) != 4 for box in boxes):
        raise InvalidInputError(f"--boxes {text!r}: every box needs 4 numbers x1,y1,x2,y2")
    return boxes


def _segment(args) -> int:
    from cseg import samples
    from cseg.images import load_image
    from cseg.overlay import overlay

    if bool(args.bundle) == bool(args.model or args.sam3) or (args.model is None) != (args.sam3 is None):
        raise InvalidInputError("pass either --bundle B (runtime) or both --model and --sam3 (PyTorch reference)")
    output_file(args.out, "--out")
    demos = _demos(args)
    image = load_image(samples.resolve(args.image))
    if args.bundle:
        from cseg.runtime import Runtime

        backend = Runtime.open(args.bundle, device=args.device)
    else:
        from cseg.export.reference import ReferencePipeline

        backend = ReferencePipeline.from_pretrained(args.model, args.sam3)
    started = time.perf_counter()
    result = backend.segment(image, args.prompt, demos or None, route=args.route, max_new_tokens=args.max_new_tokens)
    elapsed = (time.perf_counter() - started) * 1000
    if args.out:
        overlay(image, result, args.prompt).save(args.out)
    if args.json:
        print(json.dumps(_as_json(result, args.out), indent=2))
    else:
        said = f", answer {result.answer!r}" if result.route == "full" else ""
        print(f"{result.route} path{said}: {result.area} px, {len(result.instances)} instances, "
              f"presence {result.presence:.3f}, {elapsed:.0f} ms")  # fmt: skip
        if args.out:
            print(f"overlay: {args.out}")
    return 0


def _as_json(result, overlay_path) -> dict:
    return {
        "route": result.route,
        "route_by": result.route_by,
        "route_score": result.route_score,
        "presence": result.presence,
        "answer": result.answer,
        "rule": result.rule,
        "think": result.think,
        "bbox": result.bbox,
        "text": result.text,
        "area": result.area,
        "mask_shape": list(result.mask.shape),
        "instances": [
            {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4)}
            for box, score in zip(result.instances.boxes, result.instances.scores)
        ],
        "token_ids": list(result.token_ids),
        "timings_ms": {k: round(v, 2) for k, v in result.timings.items()},
        "overlay": overlay_path,
    }


def _export(args) -> int:
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


def _build(args) -> int:
    from cseg.engines.build import build_bundle
    from cseg.manifest import rule_only

    try:
        manifest = build_bundle(args.bundle, cache=args.cache, force=args.force, register=args.register)
    except EngineError as exc:
        print(f"cseg build: error: {exc}", file=sys.stderr)
        return 3
    built = manifest["tensorrt"]
    serve = (f"cseg watch --bundle {args.bundle} --rule RULE.json SOURCE" if rule_only(manifest)
             else f"cseg segment --bundle {args.bundle} ...")  # fmt: skip
    print(f"engines for {built['gpu']} with TensorRT {built['version']} recorded in {args.bundle}/manifest.json; "
          f"serve it: {serve}")  # fmt: skip
    return 0


def _inspect(args) -> int:
    from cseg.bundle_report import describe

    print(describe(args.bundle, verify=not args.no_verify))
    return 0


def _bench(args) -> int:
    from tqdm import tqdm

    if min(args.repeat, args.frames, args.max_new_tokens) < 1 or args.warmup < 0:
        raise InvalidInputError("--repeat, --frames and --max-new-tokens must be >= 1, --warmup >= 0")
    output_file(args.json, "--json")
    output_file(args.plot, "--plot")
    args.image = args.image or ["sample:astronaut"]
    from cseg import bench, samples
    from cseg.images import load_image
    from cseg.runtime import Runtime

    images = [load_image(samples.resolve(path)) for path in args.image]
    backends = {"runtime": Runtime.open(args.bundle, device=args.device)}
    if args.reference:
        import torch

        from cseg.export.reference import ReferencePipeline

        root = Path(args.reference)
        if not (root / "conceptseg-r1").is_dir() or not (root / "sam3").is_dir():
            raise InvalidInputError(f"--reference {root} must hold conceptseg-r1/ and sam3/ (cseg make-checkpoint layout)")
        for dtype in args.reference_dtype or ["fp32", *(["bf16"] if bench.native_bf16() else [])]:
            backends[f"reference-{dtype}"] = ReferencePipeline.from_pretrained(
                root / "conceptseg-r1", root / "sam3", dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    steps = len(backends) * (len(bench.PATHS) * (args.warmup + args.repeat) + args.frames)
    with tqdm(total=steps, desc="bench", unit="run") as progress:
        results = bench.measure(backends, images[0], args.prompt, args.repeat, args.warmup, args.max_new_tokens,
                                progress.update)  # fmt: skip
        fps = bench.frame_loop(backends, (images * args.frames)[: args.frames], args.prompt)
        progress.update(len(backends) * args.frames)
    summary = bench.report(results, fps)
    summary["roofline"] = bench.roofline(summary, backends["runtime"].manifest, bench.machine_peaks())
    summary["host_path"] = bench.host_path()
    print(bench.table(summary))
    print(bench.roofline_table(summary["roofline"]))
    print(bench.host_path_table(summary["host_path"]))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        bench.plot(summary, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _demos(args) -> list:
    from cseg import samples

    if args.boxes and len(args.boxes) != len(args.demo):
        raise InvalidInputError(f"{len(args.boxes)} --boxes given for {len(args.demo)} --demo images: pair them")
    boxes = args.boxes or [None] * len(args.demo)
    return [(samples.resolve(d), _parse_boxes(b)) for d, b in zip(args.demo, boxes)]


def _induce(args) -> int:
    from cseg import samples
    from cseg.runtime import Runtime

    output_file(args.out, "--out")
    runtime = Runtime.open(args.bundle, device=args.device)
    image = samples.resolve(args.image) if args.image else None
    rule = runtime.induce(_demos(args), args.question, image=image, max_new_tokens=args.max_new_tokens)
    path = rule.save(args.out)
    print(f"rule: answer {rule.answer!r}, rule text {rule.rule!r}, {rule.concept_tokens.shape[1]} concept tokens")
    print(f"saved {path} (+ {path.with_suffix('.npz').name}); next: cseg watch --bundle {args.bundle} --rule {path} SOURCE")
    return 0


def _watch(args) -> int:
    from cseg.runtime import Rule, Runtime
    from cseg.watch import watch

    if args.every < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise InvalidInputError("--every and --max-frames must be at least 1")
    output_folder(args.out, "--out")
    output_file(args.jsonl, "--jsonl")
    runtime = Runtime.open(args.bundle, device=args.device)
    summary = watch(runtime, Rule.load(args.rule), args.source, out=args.out, jsonl=args.jsonl,
                    budget_ms=args.budget_ms, drop=args.drop, max_frames=args.max_frames, every=args.every)  # fmt: skip
    print(f"{summary['frames']} frames, {summary['errors']} errors, {summary['dropped']} dropped", file=sys.stderr)
    return 0


def _eval(args) -> int:
    from cseg import datasets, evaluate
    from cseg.runtime import Runtime

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError("--limit must be at least 1")
    if args.worst < 0:
        raise InvalidInputError("--worst must be 0 (no overlays) or a positive number of samples")
    for folder, option in ((args.work, "--work"), (args.save_masks, "--save-masks")):
        output_folder(folder, option)
    output_file(args.json, "--json")
    output_file(args.csv, "--csv")
    if args.protocol == "research" and args.format not in ("conceptseg", "reasonseg"):
        raise InvalidInputError(f"--protocol research exists for conceptseg and reasonseg, not {args.format}")
    options = {"data": str(Path(args.data).resolve()), "format": args.format, "split": args.split,
               "prompt": args.prompt, "demos": args.demos, "seed": args.seed, "protocol": args.protocol}  # fmt: skip
    samples = datasets.read(args.format, args.data, **{k: options[k] for k in ("split", "prompt", "demos", "seed",
                                                                              "protocol")})  # fmt: skip
    samples = samples[: args.limit] if args.limit else samples
    runtime = Runtime.open(args.bundle, device=args.device)
    work = Path(args.work)
    masks = Path(args.save_masks) if args.save_masks else work / "masks"
    metric_mode = args.metrics or ("research" if args.protocol == "research" else "toolkit")
    records = evaluate.evaluate(runtime, samples, work, masks, route=args.route, max_new_tokens=args.max_new_tokens,
                                metric_mode=metric_mode, options=options, fresh=args.fresh)  # fmt: skip
    summary = {"metrics": metric_mode, "protocol": args.protocol, **evaluate.summarize(records)}
    print(f"metrics: {metric_mode} definitions, protocol: {args.protocol}")
    print(evaluate.table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.csv:
        evaluate.write_csv(records, Path(args.csv))
    if args.worst:
        shown = evaluate.worst_cases(records, samples, work / "worst", args.worst)
        print(f"worst cases: {len(shown)} overlays in {work / 'worst'}")
    print(f"predicted masks: {masks} (per-sample results: {work / 'samples.jsonl'})")
    return 0


def _calib_collect(args) -> int:
    from cseg.calib.calibration_set import default_set, load
    from cseg.calib.collect import collect
    from cseg.runtime import Runtime

    output_folder(args.out, "--out")
    runtime = Runtime.open(args.bundle)  # verified: calibration data from a corrupt bundle would quantize wrongly
    calibration = load(args.calib) if args.calib else default_set(Path(args.out) / "calibration-set")
    counts = collect(runtime, calibration.items, args.out)
    for key, count in sorted(counts.items()):
        print(f"  {key:<13} {count:4d} input sets -> {Path(args.out) / key}")
    print(f"calibration set sha256 {calibration.sha256()}")
    return 0


def _fit_router(args) -> int:
    from cseg.calib.calibration_set import chosen

    with chosen(args.calib) as calibration:  # the default set lives in a temporary folder, removed afterwards
        return _fit_router_on(args, calibration)


def _fit_router_on(args, calibration) -> int:
    import numpy as np
    from tqdm import tqdm

    from cseg.calib import router_fit
    from cseg.runtime import Runtime

    train, held = calibration.split()
    if not held:
        raise InvalidInputError("the calibration set needs at least 2 samples to fit and check a router")
    runtime = Runtime.open(args.bundle, device=args.device)
    with tqdm(total=len(calibration.items), desc="both routes", unit="sample") as progress:
        fitted_on = router_fit.gather(runtime, train, args.max_new_tokens, progress.update)
        checked_on = router_fit.gather(runtime, held, args.max_new_tokens, progress.update)
    router = router_fit.fit(np.stack([o.features for o in fitted_on]), router_fit.labels(fitted_on, args.iou_margin))
    scores = router.scores(np.stack([o.features for o in checked_on]))
    truth = router_fit.labels(checked_on, args.iou_margin)
    chosen = router_fit.choose_threshold(scores, checked_on, args.max_iou_loss, args.min_skip_rate)
    learned = router_fit.evaluate_decisions(scores >= chosen["threshold"], checked_on, truth)
    seed = router_fit.evaluate_decisions(router_fit.heuristic_decisions(checked_on), checked_on, truth)
    budget = {"max_iou_loss": args.max_iou_loss} if args.max_iou_loss is not None else {"min_skip_rate": args.min_skip_rate}
    router_fit.install(args.bundle, router, {
        "threshold": chosen["threshold"], "iou_margin": args.iou_margin, "budget": budget,
        "calibration": {"sha256": calibration.sha256(), "fitted_on": len(fitted_on), "held_out": len(checked_on)},
        "held_out": {"learned": learned, "heuristic": seed},
        "note": "on random-init checkpoints the labels are meaningless; the numbers show the machinery works",
    })  # fmt: skip
    for name, numbers in (("learned", learned), ("heuristic", seed)):
        print(f"{name:<10} accuracy {numbers['accuracy']:.3f}  skip rate {numbers['skip_rate']:.3f}  "
              f"IoU loss {numbers['iou_loss']:.4f}  latency saved {numbers['latency_saved_ms']:.0f} ms/request")  # fmt: skip
    print(f"router installed in {args.bundle} (threshold {chosen['threshold']:.4f}); route='auto' now uses it")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.set_defaults(run=_export, command="export")


def _add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "tensorrt"],
                        help="auto: ONNX Runtime for cpu bundles, TensorRT engines for GPU targets; cpu: any bundle's "
                             "ONNX graphs on the CPU (checks a GPU target's converted graphs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cseg", description="ConceptSeg-R1 export and serving")
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-checkpoint", help="write seeded random-init checkpoints in the published layouts")
    make.add_argument("--size", default="tiny", help="tiny | tiny-alt | small | full (default tiny)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True, help="folder to write conceptseg-r1/ and sam3/ into")
    make.add_argument("--meta-sam3", action="store_true",
                      help="also write sam3/sam3.pt: the same SAM 3 weights in Meta's (facebookresearch/sam3) layout")
    make.set_defaults(run=_make_checkpoint)

    build = sub.add_parser("build", help="build a GPU-target bundle's TensorRT engines, on the device itself")
    build.add_argument("bundle", help="bundle written by cseg-export --target orin-*|ada|hopper")
    build.add_argument("--cache", default=None, help="engine cache folder (default ~/.cache/cseg/engines)")
    build.add_argument("--force", action="store_true", help="rebuild even engines the cache holds")
    build.add_argument("--register", action="store_true",
                       help="build nothing: record engines built by hand with the bundle's build_engines.sh")
    build.set_defaults(run=_build)

    _add_export_arguments(sub.add_parser("export", help="export a checkpoint pair to a bundle (= cseg-export)"))

    inspect = sub.add_parser("inspect", help="print a bundle's manifest readably and verify its files")
    inspect.add_argument("bundle")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every file")
    inspect.set_defaults(run=_inspect)

    bench_parser = sub.add_parser("bench", help="per-stage latency of a bundle (and of the PyTorch reference)")
    bench_parser.add_argument("--bundle", required=True)
    _add_device_argument(bench_parser)
    bench_parser.add_argument("--reference", help="checkpoint folder (conceptseg-r1/ + sam3/) to time side by side")
    bench_parser.add_argument("--reference-dtype", action="append", choices=("fp32", "bf16"),
                              help="reference configuration(s) to time (repeatable; default fp32, and bf16 where the CPU has "
                                   "native bf16: AVX512-BF16 or AMX)")
    bench_parser.add_argument("--image", action="append", default=None, help="image(s); default sample:astronaut")
    bench_parser.add_argument("--prompt", default="helmet")
    bench_parser.add_argument("--repeat", type=int, default=5)
    bench_parser.add_argument("--warmup", type=int, default=1)
    bench_parser.add_argument("--max-new-tokens", type=int, default=32, help="decode budget of the full path")
    bench_parser.add_argument("--frames", type=int, default=10, help="frames in the throughput loop")
    bench_parser.add_argument("--json", help="write the summary here")
    bench_parser.add_argument("--plot", help="write the stage-breakdown plot (PNG) here")
    bench_parser.set_defaults(run=_bench)

    calib = sub.add_parser("calib", help="calibration data for quantization")
    calib_sub = calib.add_subparsers(dest="calib_command", required=True)
    collect = calib_sub.add_parser("collect", help="record every graph's inputs over a calibration set as .npz")
    collect.add_argument("--bundle", required=True, help="an fp32 bundle")
    collect.add_argument("--calib", help="calibration folder with calib.jsonl (default: bundled photographs)")
    collect.add_argument("--out", required=True)
    collect.set_defaults(run=_calib_collect)

    fit = calib_sub.add_parser("fit-router", help="fit the learned Shortcut Router and install it in a bundle")
    fit.add_argument("--bundle", required=True)
    _add_device_argument(fit)
    fit.add_argument("--calib", help="calibration folder (calib.jsonl; ground-truth masks used when given)")
    budget = fit.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-iou-loss", type=float, help="largest mean IoU loss allowed on held-out samples")
    budget.add_argument("--min-skip-rate", type=float, help="smallest share of requests that must skip reasoning")
    fit.add_argument("--iou-margin", type=float, default=0.05, help="how much worse the shortcut may be (default 0.05)")
    fit.add_argument("--max-new-tokens", type=int, default=None)
    fit.set_defaults(run=_fit_router)

    ev = sub.add_parser("eval", help="the paper's metrics of a bundle on a dataset (resumable)")
    ev.add_argument("--bundle", required=True)
    _add_device_argument(ev)
    ev.add_argument("--data", required=True, help="dataset folder")
    ev.add_argument("--format", required=True, choices=["conceptseg", "reasonseg", "cityscapes", "folder"])
    ev.add_argument("--split", default=None, help="split to evaluate (conceptseg: test, cityscapes: val)")
    ev.add_argument("--prompt", help="folder format: the prompt for images without an entry in prompts.json")
    ev.add_argument("--demos", type=int, default=1, help="conceptseg: demonstrations per sample from the train split "
                    "(the research protocol draws its own: 4, or 1 for classes with 2 train items)")
    ev.add_argument("--seed", type=int, default=None, help="conceptseg: seed of the demonstration draws (default 0; "
                    "research protocol: 42, as evaluate_conceptseg.py)")
    ev.add_argument("--protocol", default="default", choices=["default", "research"],
                    help="research: the episodes, prompts and metric definitions of the research scripts")
    ev.add_argument("--metrics", choices=["toolkit", "research"], default=None,
                    help="metric definitions (default: research for --protocol research, else toolkit)")
    ev.add_argument("--fresh", action="store_true", help="discard the results already in --work")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    ev.add_argument("--route", default="auto", choices=["auto", "shortcut", "full"])
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--work", default="cseg-eval-work", help="per-sample results and masks (resume from here)")
    ev.add_argument("--json", help="write the metrics summary here")
    ev.add_argument("--csv", help="write per-sample metrics here")
    ev.add_argument("--save-masks", help="write every predicted mask here (default: WORK/masks)")
    ev.add_argument("--worst", type=int, default=4, help="overlays of the N lowest-mIoU samples (0: none)")
    ev.set_defaults(run=_eval)

    induce = sub.add_parser("induce", help="reason once over demonstrations and save the rule for cseg watch")
    induce.add_argument("question")
    induce.add_argument("--bundle", required=True)
    _add_device_argument(induce)
    induce.add_argument("--demo", action="append", default=[], required=True, help="demonstration image (up to 4)")
    induce.add_argument("--boxes", action="append", help="boxes on the matching --demo: 'x1,y1,x2,y2;...'")
    induce.add_argument("--image", help="target image to reason about (default: the first --demo)")
    induce.add_argument("--max-new-tokens", type=int, default=None)
    induce.add_argument("--out", required=True, help="rule file to write (JSON, with its arrays in a .npz beside it)")
    induce.set_defaults(run=_induce)

    watch_parser = sub.add_parser("watch", help="apply a rule to a folder, a video file or a camera index")
    watch_parser.add_argument("source", help="folder of images, video file, or camera index (0, 1, ...)")
    watch_parser.add_argument("--bundle", required=True)
    _add_device_argument(watch_parser)
    watch_parser.add_argument("--rule", required=True, help="rule file from cseg induce")
    watch_parser.add_argument("--out", help="write overlays here")
    watch_parser.add_argument("--every", type=int, default=1, help="write an overlay every N-th frame")
    watch_parser.add_argument("--jsonl", help="write JSON lines here (default: stdout)")
    watch_parser.add_argument("--budget-ms", type=float, default=None, help="latency budget per frame")
    watch_parser.add_argument("--drop", default=None, choices=["oldest", "none"],
                              help="policy when behind (default: none for a folder, oldest for a video or camera)")
    watch_parser.add_argument("--max-frames", type=int, default=None)
    watch_parser.set_defaults(run=_watch)

    seg = sub.add_parser("segment", help="segment one image with a bundle (or the PyTorch reference)")
    seg.add_argument("image", help="image path, or sample:NAME for a photograph bundled with scikit-image")
    seg.add_argument("prompt", help="the concept or question to segment")
    seg.add_argument("--bundle", help="bundle directory written by cseg export (torch-free runtime)")
    seg.add_argument("--model", help="ConceptSeg-R1 checkpoint directory: run the PyTorch reference instead")
    seg.add_argument("--sam3", help="SAM 3 checkpoint directory (with --model)")
    _add_device_argument(seg)
    seg.add_argument("--demo", action="append", default=[], help="demonstration image (repeat for up to 4)")
    seg.add_argument("--boxes", action="append", help="boxes on the matching --demo: 'x1,y1,x2,y2;...' in pixels")
    seg.add_argument("--route", default="auto", choices=["auto", "shortcut", "full"])
    seg.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: research 2816 total)")
    seg.add_argument("--out", help="write the overlay PNG here")
    seg.add_argument("--json", action="store_true", help="print the result as JSON")
    seg.set_defaults(run=_segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def export_main(argv: list[str] | None = None) -> int:
    """`cseg-export`: the same as `cseg export`."""
    parser = argparse.ArgumentParser(prog="cseg-export", description="export ConceptSeg-R1 + SAM 3 to a bundle")
    _add_export_arguments(parser)
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


if __name__ == "__main__":
    sys.exit(main())
