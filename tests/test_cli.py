"""The command line's shape: every subcommand keeps the flags it had before the CLI became a package
(tests/data/cli_flags.json is the snapshot of the single-module CLI), and the shared argument groups behave."""

import argparse
import json
from pathlib import Path

import pytest

from cseg.cli import build_parser, export_main
from cseg.cli.args import DemoArgs, OutputArgs, at_least, parse_boxes
from cseg.errors import InvalidInputError

SNAPSHOT = Path(__file__).parent / "data" / "cli_flags.json"


def _describe(parser: argparse.ArgumentParser) -> dict:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            out["<subcommands>"] = {name: _describe(p) for name, p in action.choices.items()}
            continue
        default = action.default
        out["/".join(action.option_strings) or action.dest] = {
            "dest": action.dest, "required": action.required, "nargs": action.nargs,
            "default": default if isinstance(default, (type(None), str, int, float, bool, list)) else repr(default),
            "choices": list(action.choices) if action.choices else None,
            "type": getattr(action.type, "__name__", None), "kind": type(action).__name__,
        }  # fmt: skip
    return out


def _export_parser(monkeypatch) -> argparse.ArgumentParser:
    captured = {}

    def grab(self, argv=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(SystemExit):
        export_main([])
    return captured["parser"]


def test_every_subcommand_keeps_its_flags(monkeypatch):
    snapshot = json.loads(SNAPSHOT.read_text())
    assert _describe(build_parser()) == snapshot["cseg"]
    assert _describe(_export_parser(monkeypatch)) == snapshot["cseg-export"]


def test_the_snapshot_comparison_sees_a_changed_flag(monkeypatch):
    snapshot = json.loads(SNAPSHOT.read_text())
    parser = build_parser()
    parser._subparsers._group_actions[0].choices["segment"].add_argument("--extra")
    assert _describe(parser) != snapshot["cseg"]


def test_shared_groups():
    assert parse_boxes("1,2,3,4; 5,6,7,8") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(InvalidInputError, match="every box needs 4 numbers"):
        parse_boxes("1,2,3")
    args = argparse.Namespace(demo=["a.png", "b.png"], boxes=["1,2,3,4"])
    with pytest.raises(InvalidInputError, match="1 --boxes given for 2 --demo images"):
        DemoArgs().parse(args)
    with pytest.raises(InvalidInputError, match="--every and --max-frames must be at least 1"):
        at_least(argparse.Namespace(every=1, max_frames=0), 1, "--every", "--max-frames")
    at_least(argparse.Namespace(limit=None), 1, "--limit")


def test_outputs_are_checked_before_work(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    outputs = OutputArgs(("--out", "file", {}), ("--work", "folder", {}))
    with pytest.raises(InvalidInputError, match="--out .* is a folder"):
        outputs.parse(argparse.Namespace(out=str(folder), work=None))
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match="--work .* is a file"):
        outputs.parse(argparse.Namespace(out=None, work=str(tmp_path / "file")))
