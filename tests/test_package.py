"""Packaging promises: the shared package stays torch-free; the CLI works and reports errors in one line."""

import json
import subprocess
import sys

from PIL import Image


def _imports_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def test_shared_package_and_runtime_do_not_import_torch_or_transformers():
    for statement in ("import cseg", "import cseg.images, cseg.prompting, cseg.overlay, cseg.samples",
                      "import cseg.runtime"):  # fmt: skip
        loaded = _imports_after(statement)
        assert "torch" not in loaded and "transformers" not in loaded, statement


def test_cli_make_checkpoint_then_segment(tmp_path):
    out = tmp_path / "ckpt"
    run = subprocess.run(
        [sys.executable, "-m", "cseg.cli", "make-checkpoint", "--size", "tiny", "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "cseg export" in run.stdout  # the next command is suggested
    overlay = tmp_path / "overlay.png"
    run = subprocess.run(
        [sys.executable, "-m", "cseg.cli", "segment", "--model", str(out / "conceptseg-r1"), "--sam3",
         str(out / "sam3"), "sample:coffee", "cup", "--out", str(overlay), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(run.stdout)
    assert result["route"] in ("shortcut", "full") and result["mask_shape"] == [400, 600]
    with Image.open(overlay) as picture:
        assert picture.size[0] == 600 and picture.size[1] > 400  # image + caption strip


def test_cli_errors_are_one_line_with_status_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cseg.cli", "segment", "--model", str(tmp_path), "--sam3", str(tmp_path),
         "sample:nothing", "cup"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr and "unknown sample" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "cseg.cli", "make-checkpoint", "--size", "huge", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and "tiny" in run.stderr
