"""Argument groups the subcommands share, in the manner of Polygraphy's `tools/args`: each group declares its flags
(`add_parser_args`) and turns the parsed values into what a handler needs (`parse`), so a flag is spelled, checked
and opened in one place: `--bundle` + `--device` -> an open `Runtime`, `--demo` + `--boxes` -> demonstrations,
`--max-new-tokens` (+ `--route`), and output paths checked before any work starts.
"""

from __future__ import annotations

import argparse

from cseg.errors import InvalidInputError
from cseg.outputs import output_file, output_folder, output_image
from cseg.options import ROUTE_CHOICES

DEVICE_HELP = ("auto: ONNX Runtime for cpu bundles, TensorRT engines for GPU targets; cpu: any bundle's ONNX graphs on "
               "the CPU (checks a GPU target's converted graphs)")  # fmt: skip


class BundleArgs:
    """--bundle (and --device): parse() opens the bundle's Runtime (its manifest and files verified)."""

    def __init__(self, *, required: bool = True, device: bool = True, help: str | None = None):
        self.required, self.device, self.help = required, device, help

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bundle", required=self.required, help=self.help)
        if self.device:
            parser.add_argument("--device", default="auto", choices=["auto", "cpu", "tensorrt"], help=DEVICE_HELP)

    def parse(self, args):
        from cseg.runtime import Runtime  # onnxruntime: loaded only by the subcommands that serve

        return Runtime.open(args.bundle, device=getattr(args, "device", "auto"))


class GenerationArgs:
    """--max-new-tokens, and --route where the subcommand serves requests (not where it only induces rules)."""

    def __init__(self, *, route: bool = False, default: int | None = None, help: str | None = None):
        self.route, self.default, self.help = route, default, help

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        if self.route:
            parser.add_argument("--route", default="auto", choices=list(ROUTE_CHOICES))
        parser.add_argument("--max-new-tokens", type=int, default=self.default, help=self.help)


class DemoArgs:
    """--demo images with their --boxes ('x1,y1,x2,y2;...'): parse() pairs them into (image, boxes) demonstrations."""

    def __init__(self, *, required: bool = False):
        self.required = required

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--demo", action="append", default=[], required=self.required,
                            help="demonstration image (repeat for up to 4)")
        parser.add_argument("--boxes", action="append",
                            help="boxes on the matching --demo: 'x1,y1,x2,y2;...' in pixels")

    def parse(self, args) -> list:
        from cseg import samples

        if args.boxes and len(args.boxes) != len(args.demo):
            raise InvalidInputError(f"{len(args.boxes)} --boxes given for {len(args.demo)} --demo images: pair them")
        boxes = args.boxes or [None] * len(args.demo)
        return [(samples.resolve(d), parse_boxes(b)) for d, b in zip(args.demo, boxes)]


def parse_boxes(text: str | None) -> list[list[float]]:
    if not text:
        return []
    try:
        boxes = [[float(v) for v in box.split(",")] for box in text.split(";") if box.strip()]
    except ValueError:
        raise InvalidInputError(f"--boxes {text!r}: expected 'x1,y1,x2,y2;x1,y1,x2,y2'") from None
    if any(len(box) != 4 for box in boxes):
        raise InvalidInputError(f"--boxes {text!r}: every box needs 4 numbers x1,y1,x2,y2")
    return boxes


class OutputArgs:
    """Files and folders a subcommand writes: declared as (flag, "file" | "image" | "folder", argparse keywords);
    parse() checks every given one can be written before any work, so a run cannot fail only when it saves its
    result (an "image" also needs an extension PIL can write)."""

    def __init__(self, *outputs: tuple[str, str, dict]):
        self.outputs = outputs

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        for flag, _, keywords in self.outputs:
            parser.add_argument(flag, **keywords)

    def parse(self, args) -> None:
        for flag, kind, _ in self.outputs:
            value = getattr(args, flag.lstrip("-").replace("-", "_"))
            {"file": output_file, "image": output_image, "folder": output_folder}[kind](value, flag)


def at_least(args, minimum: int, *flags: str) -> None:
    """Refuse counts below `minimum` (None passes: the option was not given), naming the flags."""
    values = [getattr(args, flag.lstrip("-").replace("-", "_")) for flag in flags]
    if any(value is not None and value < minimum for value in values):
        raise InvalidInputError(f"{' and '.join(flags)} must be at least {minimum}")


def add_groups(parser: argparse.ArgumentParser, *groups) -> argparse.ArgumentParser:
    for group in groups:
        group.add_parser_args(parser)
    return parser
