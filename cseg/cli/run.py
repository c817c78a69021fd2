"""Serving a bundle from the command line: `cseg segment` (one image), `cseg induce` (reason once, save the rule) and
`cseg watch` (apply a rule to a folder, a video or a camera)."""

from __future__ import annotations

import json
import sys
import time

from cseg.cli.args import BundleArgs, DemoArgs, GenerationArgs, OutputArgs, add_groups, at_least
from cseg.cli.track_args import TrackArgs
from cseg.errors import InvalidInputError

SEGMENT_BUNDLE = BundleArgs(required=False, help="bundle directory written by cseg export (torch-free runtime)")
SEGMENT_OUT = OutputArgs(("--out", "image", {"help": "write the overlay PNG here"}))
INDUCE_OUT = OutputArgs(("--out", "file", {"required": True,
                                           "help": "rule file to write (JSON, with its arrays in a .npz beside it)"}))  # fmt: skip
WATCH_OUT = OutputArgs(("--out", "folder", {"help": "write overlays here"}),
                       ("--jsonl", "file", {"help": "write JSON lines here (default: stdout)"}))  # fmt: skip


def register(sub) -> None:
    induce = sub.add_parser("induce", help="reason once over demonstrations and save the rule for cseg watch")
    induce.add_argument("question")
    add_groups(induce, BundleArgs(), DemoArgs(required=True))
    induce.add_argument("--image", help="target image to reason about (default: the first --demo)")
    add_groups(induce, GenerationArgs(), INDUCE_OUT)
    induce.set_defaults(run=induce_rule)

    watch_parser = sub.add_parser("watch", help="apply a rule to a folder, a video file or a camera index")
    watch_parser.add_argument("source", help="folder of images, video file, or camera index (0, 1, ...)")
    add_groups(watch_parser, BundleArgs())
    watch_parser.add_argument("--rule", required=True, help="rule file from cseg induce")
    add_groups(watch_parser, WATCH_OUT)
    watch_parser.add_argument("--every", type=int, default=1, help="write an overlay every N-th frame")
    watch_parser.add_argument("--budget-ms", type=float, default=None, help="latency budget per frame")
    watch_parser.add_argument("--drop", default=None, choices=["oldest", "none"],
                              help="policy when behind (default: none for a folder, oldest for a video or camera)")
    watch_parser.add_argument("--max-frames", type=int, default=None)
    add_groups(watch_parser, TrackArgs())
    watch_parser.set_defaults(run=watch_source)

    seg = sub.add_parser("segment", help="segment one image with a bundle (or the PyTorch reference)")
    seg.add_argument("image", help="image path, or sample:NAME for a photograph bundled with scikit-image")
    seg.add_argument("prompt", help="the concept or question to segment")
    add_groups(seg, SEGMENT_BUNDLE)
    seg.add_argument("--model", help="ConceptSeg-R1 checkpoint directory: run the PyTorch reference instead")
    seg.add_argument("--sam3", help="SAM 3 checkpoint directory (with --model)")
    add_groups(seg, DemoArgs(), GenerationArgs(route=True, help="generation budget (default: research 2816 total)"),
               SEGMENT_OUT)  # fmt: skip
    seg.add_argument("--json", action="store_true", help="print the result as JSON")
    seg.set_defaults(run=segment)


def segment(args) -> int:
    from cseg import samples
    from cseg.images import load_image
    from cseg.overlay import overlay

    if bool(args.bundle) == bool(args.model or args.sam3) or (args.model is None) != (args.sam3 is None):
        raise InvalidInputError("pass either --bundle B (runtime) or both --model and --sam3 (PyTorch reference)")
    SEGMENT_OUT.parse(args)
    demos = DemoArgs().parse(args)
    image = load_image(samples.resolve(args.image))
    if args.bundle:
        backend = SEGMENT_BUNDLE.parse(args)
    else:
        from cseg.export.reference import ReferencePipeline

        backend = ReferencePipeline.from_pretrained(args.model, args.sam3)
    started = time.perf_counter()
    result = backend.segment(image, args.prompt, demos or None, route=args.route, max_new_tokens=args.max_new_tokens)
    elapsed = (time.perf_counter() - started) * 1000
    if args.out:
        overlay(image, result, args.prompt).save(args.out)
    if args.json:
        print(json.dumps({**result.to_json(), "overlay": args.out}, indent=2))
    else:
        said = f", answer {result.answer!r}" if result.route == "full" else ""
        print(f"{result.route} path{said}: {result.area} px, {len(result.instances)} instances, "
              f"presence {result.presence:.3f}, {elapsed:.0f} ms")  # fmt: skip
        if args.out:
            print(f"overlay: {args.out}")
    return 0


def induce_rule(args) -> int:
    from cseg import samples

    INDUCE_OUT.parse(args)
    runtime = BundleArgs().parse(args)
    image = samples.resolve(args.image) if args.image else None
    rule = runtime.induce(DemoArgs().parse(args), args.question, image=image, max_new_tokens=args.max_new_tokens)
    path = rule.save(args.out)
    print(f"rule: answer {rule.answer!r}, rule text {rule.rule!r}, {rule.concept_tokens.shape[1]} concept tokens")
    print(f"saved {path} (+ {path.with_suffix('.npz').name}); next: cseg watch --bundle {args.bundle} --rule {path} SOURCE")
    return 0


def watch_source(args) -> int:
    from cseg.runtime import Rule
    from cseg.runtime.watch import watch

    at_least(args, 1, "--every", "--max-frames")
    WATCH_OUT.parse(args)
    setup = TrackArgs().parse(args)  # every --track flag checked before the bundle is opened
    runtime = BundleArgs().parse(args)
    rule = Rule.load(args.rule)
    sink_stats = []
    try:
        if setup is not None:
            setup.open_sinks()
        summary = watch(runtime, rule, args.source, out=args.out, jsonl=args.jsonl, budget_ms=args.budget_ms,
                        drop=args.drop, max_frames=args.max_frames, every=args.every,
                        monitor=setup and setup.monitor, defect_rule=setup and setup.defect_rule,
                        fps=setup and setup.fps)  # fmt: skip
    finally:
        if setup is not None:
            sink_stats = setup.close()
    print(f"{summary['frames']} frames, {summary['errors']} errors, {summary['dropped']} dropped", file=sys.stderr)
    if setup is not None:
        print(track_summary(summary["track"], sink_stats), file=sys.stderr)
    return 0


def track_summary(track: dict, sink_stats: list[dict]) -> str:
    """One line: the station's counts, then per sink what was delivered and what was lost (never silently)."""
    line = f"parts {track['parts']}, defects {track['defects']}, reversed {track['reversed']}"
    for stats in sink_stats:
        line += f"; {stats['url']}: sent {stats['sent']}, dropped {stats['dropped']}"
    if track["sink_failures"]:
        line += f"; {track['sink_failures']} sink failures"
    return line
