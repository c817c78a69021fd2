"""`cseg calib collect` (every graph's inputs over a calibration set, for quantization) and `cseg calib fit-router`
(the learned Shortcut Router, fitted and installed into a bundle)."""

from __future__ import annotations

from pathlib import Path

from cseg.cli.args import BundleArgs, GenerationArgs, OutputArgs, add_groups

COLLECT_BUNDLE = BundleArgs(device=False, help="an fp32 bundle")
COLLECT_OUT = OutputArgs(("--out", "folder", {"required": True}))


def register(sub) -> None:
    calib = sub.add_parser("calib", help="calibration data for quantization")
    calib_sub = calib.add_subparsers(dest="calib_command", required=True)
    collect = calib_sub.add_parser("collect", help="record every graph's inputs over a calibration set as .npz")
    add_groups(collect, COLLECT_BUNDLE)
    collect.add_argument("--calib", help="calibration folder with calib.jsonl (default: bundled photographs)")
    add_groups(collect, COLLECT_OUT)
    collect.set_defaults(run=collect_inputs)

    fit = calib_sub.add_parser("fit-router", help="fit the learned Shortcut Router and install it in a bundle")
    add_groups(fit, BundleArgs())
    fit.add_argument("--calib", help="calibration folder (calib.jsonl; ground-truth masks used when given)")
    budget = fit.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-iou-loss", type=float, help="largest mean IoU loss allowed on held-out samples")
    budget.add_argument("--min-skip-rate", type=float, help="smallest share of requests that must skip reasoning")
    fit.add_argument("--iou-margin", type=float, default=0.05, help="how much worse the shortcut may be (default 0.05)")
    add_groups(fit, GenerationArgs())
    fit.set_defaults(run=fit_router)


def collect_inputs(args) -> int:
    from cseg.calib.calibration_set import default_set, load
    from cseg.calib.collect import collect

    COLLECT_OUT.parse(args)
    runtime = COLLECT_BUNDLE.parse(args)  # verified: calibration data from a corrupt bundle would quantize wrongly
    calibration = load(args.calib) if args.calib else default_set(Path(args.out) / "calibration-set")
    counts = collect(runtime, calibration.items, args.out)
    for key, count in sorted(counts.items()):
        print(f"  {key:<13} {count:4d} input sets -> {Path(args.out) / key}")
    print(f"calibration set sha256 {calibration.sha256()}")
    return 0


def fit_router(args) -> int:
    from tqdm import tqdm

    from cseg.calib import router_fit
    from cseg.calib.calibration_set import chosen

    if args.max_iou_loss is not None:
        budget = {"max_iou_loss": args.max_iou_loss}
    else:
        budget = {"min_skip_rate": args.min_skip_rate}
    with chosen(args.calib) as calibration:  # the default set lives in a temporary folder, removed afterwards
        runtime = BundleArgs().parse(args)
        with tqdm(total=len(calibration.items), desc="both routes", unit="sample") as progress:
            fitted = router_fit.fit_and_install(runtime, calibration, args.bundle, budget=budget,
                                                iou_margin=args.iou_margin, max_new_tokens=args.max_new_tokens,
                                                progress=progress.update)  # fmt: skip
    for name in ("learned", "heuristic"):
        numbers = fitted[name]
        print(f"{name:<10} accuracy {numbers['accuracy']:.3f}  skip rate {numbers['skip_rate']:.3f}  "
              f"IoU loss {numbers['iou_loss']:.4f}  latency saved {numbers['latency_saved_ms']:.0f} ms/request")  # fmt: skip
    print(f"router installed in {args.bundle} (threshold {fitted['threshold']:.4f}); route='auto' now uses it")
    return 0
