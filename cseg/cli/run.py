"""Serving a bundle from the command line: `cseg segment` (one image), `cseg induce` (reason once, save the rule),
`cseg watch` (apply a rule to a folder, a video or a camera) and `cseg publish-rule` (a rule to a fleet over MQTT:
cseg watch --rules mqtt://... takes each new version between frames; see cseg.runtime.rule_feed)."""

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
RULES_CONNECT_S = 5.0  # how long cseg watch --rules waits for the broker at start
WATCH_OUT = OutputArgs(("--out", "folder", {"help": "write overlays here"}),
                       ("--jsonl", "file", {"help": "write JSON lines here (default: stdout)"}))  # fmt: skip


def register(sub) -> None:
    induce = sub.add_parser("induce", help="reason once over demonstrations and save the rule for cseg watch")
    induce.add_argument("question")
    add_groups(induce, BundleArgs(), DemoArgs(required=True))
    induce.add_argument("--image", help="target image to reason about (default: the first --demo)")
    add_groups(induce, GenerationArgs(), INDUCE_OUT)
    induce.add_argument("--publish", metavar="URL",
                        help="also publish the rule, retained, to mqtt[s]://HOST:PORT/TOPIC (see cseg publish-rule)")
    induce.add_argument("--version", help="the published rule's version (default: 16 hex of its sha256)")
    induce.set_defaults(run=induce_rule)

    publish = sub.add_parser("publish-rule", help="publish a rule to edge loops (cseg watch --rules) over MQTT")
    publish.add_argument("rule", help="rule file from cseg induce")
    publish.add_argument("url", help="mqtt://HOST:PORT/TOPIC or mqtts://... (credentials: user:pass@ or "
                                     "CSEG_MQTT_USERNAME/CSEG_MQTT_PASSWORD; CA: CSEG_MQTT_CA)")  # fmt: skip
    publish.add_argument("--version", help="the rule's version (default: 16 hex of its sha256)")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    publish.set_defaults(run=publish_rule)

    watch_parser = sub.add_parser("watch", help="apply a rule to a folder, a video file or a camera index")
    watch_parser.add_argument("source", help="folder of images, video file, or camera index (0, 1, ...)")
    add_groups(watch_parser, BundleArgs())
    watch_parser.add_argument("--rule", help="rule file from cseg induce (with --rules: in force until one arrives)")
    watch_parser.add_argument("--rules", metavar="URL",
                              help="take rules published to mqtt[s]://HOST:PORT/TOPIC (cseg publish-rule), each new "
                                   "version between two frames")  # fmt: skip
    watch_parser.add_argument("--rules-wait", type=float, default=30.0, metavar="SECONDS",
                              help="with --rules and no --rule: how long to wait for the first rule (default 30)")
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
    if args.publish:  # a bad URL or version is refused before the reasoning runs
        from cseg.runtime.rule_feed import check_version, parse_rules_url

        parse_rules_url(args.publish)
        if args.version is not None:
            check_version(args.version)
    elif args.version is not None:
        raise InvalidInputError("--version names a published rule's version: it needs --publish URL")
    runtime = BundleArgs().parse(args)
    image = samples.resolve(args.image) if args.image else None
    rule = runtime.induce(DemoArgs().parse(args), args.question, image=image, max_new_tokens=args.max_new_tokens)
    path = rule.save(args.out)
    print(f"rule: answer {rule.answer!r}, rule text {rule.rule!r}, {rule.concept_tokens.shape[1]} concept tokens")
    print(f"saved {path} (+ {path.with_suffix('.npz').name}); next: cseg watch --bundle {args.bundle} --rule {path} SOURCE")
    if args.publish:
        _publish(path, args.publish, args.version, 10.0)
    return 0


def publish_rule(args) -> int:
    if not (args.timeout > 0):
        raise InvalidInputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    _publish(args.rule, args.url, args.version, args.timeout)
    return 0


def _publish(path, url: str, version: str | None, timeout: float) -> None:
    from cseg.runtime.rule_feed import publish_rule as publish, redact

    sent = publish(url, path, version=version, timeout=timeout)
    print(f"published rule version {sent['version']} ({sent['bytes']} bytes, sha256 {sent['sha256'][:16]}..., SAM 3 "
          f"weights {str(sent['sam3_weights'])[:16]}) to {redact(url)}, retained")  # fmt: skip


def watch_source(args) -> int:
    from cseg.runtime import Rule
    from cseg.runtime.watch import watch

    at_least(args, 1, "--every", "--max-frames")
    WATCH_OUT.parse(args)
    if args.rules:
        from cseg.runtime.rule_feed import parse_rules_url

        parse_rules_url(args.rules)
        if not args.rules_wait > 0:
            raise InvalidInputError(f"--rules-wait must be a positive number of seconds, got {args.rules_wait}")
    elif not args.rule:
        raise InvalidInputError("give --rule RULE.json, --rules mqtt://HOST:PORT/TOPIC, or both")
    setup = TrackArgs().parse(args)  # every --track flag checked before the bundle is opened
    runtime = BundleArgs().parse(args)
    rule = Rule.load(args.rule) if args.rule else None
    sink_stats, feed = [], None
    try:
        if args.rules:
            feed = rule = open_rules_feed(args.rules, runtime.manifest, rule, args.rule, args.rules_wait)
        if setup is not None:
            setup.open_sinks()
        summary = watch(runtime, rule, args.source, out=args.out, jsonl=args.jsonl, budget_ms=args.budget_ms,
                        drop=args.drop, max_frames=args.max_frames, every=args.every,
                        monitor=setup and setup.monitor, defect_rule=setup and setup.defect_rule,
                        fps=setup and setup.fps)  # fmt: skip
    finally:
        if setup is not None:
            sink_stats = setup.close()
        if feed is not None:
            feed.close()
    print(f"{summary['frames']} frames, {summary['errors']} errors, {summary['dropped']} dropped", file=sys.stderr)
    if feed is not None:
        rules = summary["rules"]
        print(f"rules: version {rules['version']} at the end, {rules['updates']} received and applied, "
              f"{rules['refused']} refused (other SAM 3 weights or shapes), {rules['corrupt']} corrupt",
              file=sys.stderr)  # fmt: skip
    if setup is not None:
        print(track_summary(summary["track"], sink_stats), file=sys.stderr)
    return 0


def open_rules_feed(url: str, manifest: dict, local, local_path, wait_s: float):
    """A started RuleFeed for --rules. Without a local --rule: the broker must answer (else a clear error at start)
    and the first valid rule must arrive within --rules-wait; with one, the loop starts on it either way."""
    from cseg.runtime.rule_feed import RuleFeed, RuleFeedError, digest
    from cseg.runtime.rules import rule_files

    def say(line: str) -> None:
        print(f"cseg watch: {line}", file=sys.stderr, flush=True)

    version = digest(*rule_files(local_path))[:16] if local is not None else None  # as publish-rule would name it
    feed = RuleFeed(url, manifest, initial=local, initial_version=version, report=say)
    try:
        try:
            feed.wait_connected(min(RULES_CONNECT_S, wait_s))
        except RuleFeedError as exc:
            if local is None:
                raise
            say(f"warning: {exc}; applying {local_path} (version {version}) until a rule arrives")
        if local is None:
            say(f"waiting up to {wait_s:g} s for a rule on {feed.url}")
        feed.wait(wait_s)
    except BaseException:
        feed.close()
        raise
    say(f"rules from {feed.url}: starting with version {feed.version}")
    return feed


def track_summary(track: dict, sink_stats: list[dict]) -> str:
    """One line: the station's counts, then per sink what was delivered and what was lost (never silently)."""
    line = f"parts {track['parts']}, defects {track['defects']}, reversed {track['reversed']}"
    for stats in sink_stats:
        line += f"; {stats['url']}: sent {stats['sent']}, dropped {stats['dropped']}"
    if track["sink_failures"]:
        line += f"; {track['sink_failures']} sink failures"
    return line
