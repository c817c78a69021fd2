"""Regression tests of issue 19 (bundles): what `--force` may replace, leftovers of interrupted exports, file
integrity at open. The manifest's types and ranges and the CLI's output paths: test_hardening_bundle_manifest.py."""

import builtins
import contextlib
import copy
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from cseg.bundle.schema import BUNDLE_FORMAT, MANIFEST_NAME, file_sha256, read_manifest
from cseg.bundle.verify import verify_files
from cseg.errors import BundleError
from cseg.runtime import Runtime
from cseg.runtime.rules import bundle_id

from bundle_edit import copy_bundle, write_manifest


# --- item 1: --force replaces only a cseg bundle, refusals come before any work -----------------------------------


@pytest.fixture
def no_export_work(monkeypatch):
    """The exporter with its work replaced by a fake manifest; `calls` counts how often the work started."""
    import cseg.export.bundle as bundle_module

    calls = []

    def fake(staging, *args):
        calls.append(staging)
        return {"format": BUNDLE_FORMAT, "fake": True}, None  # (manifest, text features: none)

    monkeypatch.setattr(bundle_module, "_export_into", fake)
    return bundle_module.export_bundle, calls


def test_force_refuses_everything_but_a_cseg_bundle(tiny_checkpoint, tmp_path, no_export_work, monkeypatch):
    export, calls = no_export_work
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_text("precious")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "name": "someone else's"}))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / MANIFEST_NAME).write_text(json.dumps({"format": BUNDLE_FORMAT}))
    link = tmp_path / "link"
    link.symlink_to(bundle)
    model_dir, sam3_dir = tiny_checkpoint
    cases = [
        (user, "without a cseg manifest.json"), (foreign, "without a cseg manifest.json"), (a_file, "is a file"),
        (link, "is a symlink"), (model_dir, "holds the checkpoint"), (model_dir.parent, "holds the checkpoint"),
        (sam3_dir, "holds the checkpoint"),
    ]  # fmt: skip
    for out, message in cases:
        with pytest.raises(BundleError, match=message):
            export(model_dir, sam3_dir, out, force=True, progress=False)
    monkeypatch.chdir(user)
    for out in (".", "sub/..", "..", "/"):
        with pytest.raises(BundleError, match="current directory or one above it"):
            export(model_dir, sam3_dir, out, force=True, progress=False)
    assert calls == []  # every refusal came before any export work
    assert (user / "holiday.jpg").read_text() == "precious" and a_file.read_text() == "keep me"
    assert json.loads((foreign / MANIFEST_NAME).read_text())["name"] == "someone else's"
    assert link.is_symlink() and (bundle / MANIFEST_NAME).is_file()
    export(model_dir, sam3_dir, bundle, force=True, progress=False)  # a cseg bundle is replaced
    assert json.loads((bundle / MANIFEST_NAME).read_text())["fake"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no .NAME.old-PID / .partial-PID


def test_force_refusal_from_the_cli_is_one_line(tiny_checkpoint, tmp_path, capsys):
    from cseg.cli import export_main

    (tmp_path / "mine.txt").write_text("x")
    args = ["--model", str(tiny_checkpoint[0]), "--sam3", str(tiny_checkpoint[1]), "--force", "--out"]
    assert export_main([*args, str(tmp_path / "mine.txt")]) == 2
    assert export_main([*args, str(tiny_checkpoint[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "holds the checkpoint" in err[1]


# --- item 8: leftovers of interrupted exports ----------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_folders_are_removed_live_ones_kept(tiny_checkpoint, tmp_path, no_export_work):
    export, _ = no_export_work
    dead, alive = _dead_pid(), os.getppid()
    names = (f".bundle.partial-{dead}", f".bundle.old-{dead}", f".bundle.partial-{alive}", f".other.partial-{dead}")
    for name in names:
        (tmp_path / name / "graphs").mkdir(parents=True)
    export(*tiny_checkpoint, tmp_path / "bundle", progress=False)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".bundle.partial-" + str(alive), ".other.partial-" + str(dead), "bundle"])


def test_int8_export_writes_the_manifest_last_and_removes_its_calibration_set(tiny_checkpoint, tmp_path,
                                                                              no_export_work, monkeypatch):  # fmt: skip
    import cseg.export.bundle as bundle_module

    export, _ = no_export_work
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    seen = []

    def quantize(staging, manifest, profile, precision, calibration, report, progress, keep_slower=False, text=None):
        seen.append(((staging / MANIFEST_NAME).exists(), calibration.root.is_dir(), len(calibration.items)))
        raise KeyboardInterrupt  # killed while quantizing

    monkeypatch.setattr(bundle_module, "quantize_bundle", quantize)
    with pytest.raises(KeyboardInterrupt):
        export(*tiny_checkpoint, tmp_path / "out" / "bundle", precision="int8", progress=False, report=lambda _: None)
    assert seen == [(False, True, 8)]  # no manifest in the staging folder while the graphs were still fp32
    assert list((tmp_path / "out").iterdir()) == [] and list(temp.iterdir()) == []


def test_fit_router_removes_its_default_calibration_set(tiny_bundle, tmp_path, monkeypatch):
    from cseg import cli
    from cseg.calib import router_fit

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    roots = []
    numbers = {"accuracy": 1.0, "skip_rate": 0.5, "iou_loss": 0.0, "latency_saved_ms": 0.0}

    def fit_and_install(runtime, calibration, bundle, **_):
        roots.append(calibration.root)
        return {"threshold": 0.5, "learned": numbers, "heuristic": numbers}

    monkeypatch.setattr(router_fit, "fit_and_install", fit_and_install)
    assert cli.main(["calib", "fit-router", "--bundle", str(tiny_bundle), "--min-skip-rate", "0.5"]) == 0
    assert roots and not roots[0].exists() and list(temp.iterdir()) == []
    assert not (tiny_bundle.parent / ".cseg-calibration-set").exists()


# --- item 3: every loaded file listed, inside the bundle, hashed; graph I/O as the ONNX files say ---------------


def test_unlisted_files_and_disagreeing_hashes_are_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    unlisted = copy.deepcopy(manifest)
    del unlisted["files"]["graphs/sam3_decoder.onnx"]
    with pytest.raises(BundleError, match="graph sam3_decoder .* is not listed"):
        verify_files(bundle, unlisted, hashes=False)
    claimed = copy.deepcopy(manifest)
    claimed["graphs"]["sam3_text"]["sha256"] = "0" * 64
    with pytest.raises(BundleError, match="graph sam3_text: its sha256 in manifest.json differs"):
        verify_files(bundle, claimed, hashes=False)
    tokenizer = copy.deepcopy(manifest)
    tokenizer["tokenizers"]["sam3"]["tokenizer_config.json"] = "elsewhere/tokenizer_config.json"
    with pytest.raises(BundleError, match="sam3 tokenizer file tokenizer_config.json .* is not listed"):
        verify_files(bundle, tokenizer, hashes=False)
    write_manifest(bundle, unlisted)
    with pytest.raises(BundleError, match="not listed"):
        Runtime.open(bundle, verify=False)  # listing is checked even without hashing


def test_paths_leading_out_of_the_bundle_are_refused_without_saying_what_exists(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    outside = tmp_path / "outside.json"
    shutil.copy(bundle / "tokenizers/sam3/tokenizer.json", outside)
    messages = []
    for path in ("../../../../etc/passwd", "../../../../no/such/file", str(outside), "/no/such/file",
                 "tokenizers/../../outside.json"):  # fmt: skip
        changed = copy.deepcopy(manifest)
        changed["tokenizers"]["sam3"]["tokenizer.json"] = path
        changed["files"][path] = file_sha256(outside)
        with pytest.raises(BundleError, match="not a path inside the bundle") as caught:
            verify_files(bundle, changed)
        messages.append(str(caught.value).replace(repr(path), "PATH"))
    assert len(set(messages)) == 1  # the same words whether or not the path exists
    link = bundle / "tokenizers/sam3/tokenizer.json"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(BundleError, match="'tokenizers/sam3/tokenizer.json', which is not a path inside the bundle"):
        Runtime.open(bundle, verify=False)
    link.unlink()
    os.mkfifo(link)  # listed but not a regular file: refused, never read (reading a FIFO blocks)
    with pytest.raises(BundleError, match="tokenizer.json is missing \\(or not a regular file\\)"):
        Runtime.open(bundle)


def test_graph_io_must_match_the_onnx_file(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    dtype = copy.deepcopy(manifest)
    dtype["graphs"]["sam3_text"]["inputs"][1]["dtype"] = "int32"
    write_manifest(bundle, dtype)
    with pytest.raises(BundleError, match="sam3_text: manifest.json declares attention_mask:int32\\[1,32\\], its ONNX "
                                          "file has attention_mask:int64\\[1,32\\]"):  # fmt: skip
        Runtime.open(bundle)
    # a swapped graph whose hashes were updated everywhere: the sha256 cannot catch it, the I/O check does
    shutil.copy(bundle / "graphs/sam3_text.onnx", bundle / "graphs/sam3_decoder.onnx")
    swapped = copy.deepcopy(manifest)
    swapped["graphs"]["sam3_decoder"]["sha256"] = swapped["files"]["graphs/sam3_decoder.onnx"] = file_sha256(
        bundle / "graphs/sam3_decoder.onnx")
    write_manifest(bundle, swapped)
    with pytest.raises(BundleError, match="graph sam3_decoder has 2 inputs in its ONNX file, manifest.json declares 6"):
        Runtime.open(bundle)


def test_bundle_id_comes_from_the_verified_file_hashes_external_data_included(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    claimed = copy.deepcopy(manifest)
    claimed["graphs"]["sam3_vision"]["sha256"] = "0" * 64  # a claim only: the listed hash is what binds rules
    assert bundle_id(claimed) == bundle_id(manifest)
    weights = copy.deepcopy(manifest)
    weights["graphs"]["sam3_vision"]["data_files"] = ["graphs/sam3_vision.onnx.data"]
    weights["files"]["graphs/sam3_vision.onnx.data"] = "1" * 64
    other = copy.deepcopy(weights)
    other["files"]["graphs/sam3_vision.onnx.data"] = "2" * 64
    assert len({bundle_id(manifest), bundle_id(weights), bundle_id(other)}) == 3


# --- issue 29 item 5: what the graphs need of the tokenizers; files the user may not read ------------------------


def _replace_file(bundle, manifest, relative, write) -> dict:
    """Change a bundle file with `write(path)` and rewrite its sha256 in a copy of the manifest (a consistent swap)."""
    write(bundle / relative)
    changed = copy.deepcopy(manifest)
    changed["files"][relative] = file_sha256(bundle / relative)
    write_manifest(bundle, changed)
    return changed


def _with_tokens(source, count: int):
    """A writer: the tokenizer of `source` with `count` added tokens (ids past its vocabulary)."""
    from tokenizers import Tokenizer

    def write(path):
        tokenizer = Tokenizer.from_file(str(source))
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(count)])
        tokenizer.save(str(path))

    return write


def test_a_tokenizer_that_does_not_fit_its_graphs_is_refused(tiny_bundle, tmp_path):
    """A tokenizer swapped for another (hashes rewritten to match) passed the sha256 check and served: now its
    vocabulary is checked against the embedding it feeds and its special-token ids against the manifest's."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    vlm, sam3 = "tokenizers/vlm/tokenizer.json", "tokenizers/sam3/tokenizer.json"
    originals = {path: (bundle / path).read_bytes() for path in (vlm, sam3)}
    recorded = manifest["model"]["sam3_text_tokens"]  # recorded at export
    assert recorded["vocab_size"] > 0 and recorded["bos_token_id"] != recorded["eos_token_id"]
    swapped = _replace_file(bundle, manifest, sam3, lambda path: path.write_bytes(originals[vlm]))
    verify_files(bundle, swapped)  # consistent: the hashes cannot tell
    framed = (r"SAM 3 tokenizer \S*tokenizers/sam3/tokenizer.json frames a phrase with ids \d+ \.\.\. \d+, but the "
              r"text encoder was exported for \d+ \.\.\. \d+")
    with pytest.raises(BundleError, match=framed):
        Runtime.open(bundle)
    (bundle / sam3).write_bytes(originals[sam3])
    rows = recorded["vocab_size"]
    _replace_file(bundle, manifest, sam3, _with_tokens(bundle / sam3, 1))
    too_many = (rf"tokenizer \S*sam3/tokenizer.json has token ids up to {rows}, but the embedding it feeds "
                rf"\(model.sam3_text_tokens.vocab_size\) has {rows} rows")
    with pytest.raises(BundleError, match=too_many):
        Runtime.open(bundle)
    (bundle / sam3).write_bytes(originals[sam3])
    rows = manifest["model"]["vocab_size"]
    _replace_file(bundle, manifest, vlm, _with_tokens(bundle / vlm, rows))
    with pytest.raises(BundleError, match=r"vlm/tokenizer.json has token ids up to \d+, but the embedding it feeds "
                                          rf"\(model.vocab_size\) has {rows} rows"):  # fmt: skip
        Runtime.open(bundle)
    (bundle / vlm).write_bytes(originals[vlm])
    generation = manifest["generation"]
    other = copy.deepcopy(manifest)
    other["generation"]["im_end_token_id"] = generation["pad_token_id"]
    write_manifest(bundle, other)
    with pytest.raises(BundleError, match=rf"VLM tokenizer \S*vlm/tokenizer.json: <\|im_end\|> is not "
                                          rf"generation.im_end_token_id {generation['pad_token_id']} \(it is "
                                          rf"{generation['im_end_token_id']}\)"):  # fmt: skip
        Runtime.open(bundle)
    write_manifest(bundle, manifest)
    Runtime.open(bundle)  # the original opens


@contextlib.contextmanager
def _unreadable(monkeypatch, denied):
    """`denied` (a file, or a folder and everything in it) as a user without read permission meets it: EACCES.
    chmod where tests run as another user; as root (who reads everything) the OS calls the loaders use, patched."""
    if os.geteuid() != 0:
        mode = denied.stat().st_mode
        denied.chmod(0)
        try:
            yield
        finally:
            denied.chmod(mode)
        return

    def blocked(path, opening: bool) -> bool:
        if isinstance(path, int):
            return False
        path = os.path.abspath(os.fsdecode(path))
        return (opening and path == str(denied)) or path.startswith(str(denied) + os.sep)

    def deny(real, opening):
        def call(path, *args, **kwargs):
            if blocked(path, opening):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real(path, *args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        for module, name, opening in ((builtins, "open", True), (io, "open", True), (os, "open", True),
                                      (os, "stat", False)):  # fmt: skip
            patch.setattr(module, name, deny(getattr(module, name), opening))
        yield


def test_bundle_files_the_user_may_not_read_are_bundle_errors(tiny_bundle, tmp_path, monkeypatch):
    """A bundle folder or one graph file without read permission came out as a builtin PermissionError."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    graph = "graphs/sam3_decoder.onnx"
    for denied, verify, message in (
        (bundle / graph, True, rf"bundle file {graph} cannot be read \(Permission denied\)"),
        (bundle / graph, False, rf"bundle file {graph} cannot be read \(Permission denied\)"),  # not hashed: opened
        (bundle / "tokenizers/vlm", False, r"bundle file tokenizers/vlm/\S+ cannot be read \(Permission denied\)"),
        (bundle, True, rf"bundle {bundle} cannot be read \(Permission denied: \S*manifest.json\)"),
    ):  # fmt: skip
        with _unreadable(monkeypatch, denied), pytest.raises(BundleError, match=message):
            Runtime.open(bundle, verify=verify)
    Runtime.open(bundle)
