"""Issue 29 item 5: an export killed with SIGKILL once its staging manifest is written, or while it replaces the
bundle already at `--out`, leaves `--out` absent or a complete bundle that opens (with `--force`: the old one or the
new one, never none).

Real child processes, killed with SIGKILL at the point each announces on stdout. In the children the export's work
(graph export and quantization, minutes) is replaced by copying the test bundle's files, so a child takes seconds;
everything from sealing the int8 manifest to the final swap is the real code.
"""

import json
import select
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from cseg.bundle.schema import MANIFEST_NAME
from cseg.export.destination import remove_stale
from cseg.runtime import Runtime

CHILD = r"""
import os, shutil, sys, time
from pathlib import Path

import cseg.export.bundle as bundle_module
from cseg.bundle import writer
from cseg.bundle.schema import read_manifest
from cseg.export import destination

source, model, sam3, out, point, force, calib = sys.argv[1:]


def export_into(staging, *args):  # the graphs as exported and checked: the test bundle's files
    for path in Path(source).rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            (staging / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, staging / path.relative_to(source))
    return read_manifest(source), None


def announced_after(function):  # the kill point: after the first call of `function`
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        print("KILL ME", flush=True)
        time.sleep(600)
        return result
    return call


bundle_module._export_into = export_into
bundle_module.quantize_bundle = lambda staging, manifest, *args, **kwargs: {**manifest, "precision": "int8"}
if point == "manifest written":
    writer.write = announced_after(writer.write)
else:  # "first move": the first change at --out, whichever call replace() makes (an exchange, or a rename)
    os.rename = announced_after(os.rename)
    if hasattr(destination, "_exchange"):
        destination._exchange = announced_after(destination._exchange)
bundle_module.export_bundle(model, sam3, out, precision="int8", calib=calib, force=force == "1", progress=False,
                            report=lambda _: None)
print("FINISHED", flush=True)
"""


def _start(tiny_bundle, tiny_checkpoint, calib, out, point, force):
    argv = [sys.executable, "-c", CHILD, str(tiny_bundle), *map(str, tiny_checkpoint), str(out), point,
            str(int(force)), str(calib)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when_announced(child, timeout=150) -> str:
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline().strip() if ready else "(nothing announced in time)"
    child.kill()  # SIGKILL
    child.wait()
    assert line == "KILL ME", (line, child.stderr.read()[-3000:])
    return line


def _precision(out):
    return json.loads((out / MANIFEST_NAME).read_text())["precision"]


def test_an_export_killed_at_its_end_leaves_no_bundle_or_a_complete_one(tiny_bundle, tiny_checkpoint, tmp_path):
    cases = {  # name: (kill point, an old bundle at --out replaced with --force)
        "new": ("manifest written", False),
        "forced": ("manifest written", True),
        "swapping": ("first move", True),
    }
    outs = {name: tmp_path / name / "bundle" for name in cases}
    for name, (_, force) in cases.items():
        outs[name].parent.mkdir()
        if force:
            shutil.copytree(tiny_bundle, outs[name])  # the old bundle (fp32)
    calib = tmp_path / "calib"  # two small images: the default set's photographs cost the children seconds
    calib.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 24)).save(calib / f"{name}.png")
    (calib / "calib.jsonl").write_text("".join(f'{{"image": "{n}.png", "prompt": "cup"}}\n' for n in "ab"))
    children = {name: _start(tiny_bundle, tiny_checkpoint, calib, outs[name], *case) for name, case in cases.items()}
    for child in children.values():  # started together: their imports overlap
        _kill_when_announced(child)
    assert not outs["new"].exists()  # killed before the rename: nothing at --out
    assert _precision(outs["forced"]) == "fp32"  # the old bundle, untouched
    # the old code renamed the old bundle away first: a kill here left no bundle at all
    assert outs["swapping"].is_dir(), "--force left no bundle at --out"
    assert _precision(outs["swapping"]) == "int8"  # exchanged in one step: the new bundle
    for name in ("forced", "swapping"):
        Runtime.open(outs[name])  # complete: every file there with its sha256
        remove_stale(outs[name].resolve())  # what the next export does first: the killed export's leftovers go
        assert [p.name for p in outs[name].parent.iterdir()] == ["bundle"]


@pytest.mark.parametrize("exists", [False, True])
def test_replace_moves_the_staging_folder_into_place(tmp_path, exists):
    from cseg.export.destination import replace, staging_dir

    target = tmp_path / "bundle"
    staging = staging_dir(target, "partial")
    staging.mkdir()
    (staging / "new").write_text("new")
    if exists:
        target.mkdir()
        (target / "old").write_text("old")
    replace(staging, target)
    assert [p.name for p in target.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["bundle"]
