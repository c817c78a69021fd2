"""Regression tests of issue 19 (bundles): what `--force` may replace, leftovers of interrupted exports, file
integrity at open, the manifest's types and ranges, and the CLI's output paths."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from cseg.bundle_files import verify_files
from cseg.errors import BundleError
from cseg.manifest import BUNDLE_FORMAT, MANIFEST_NAME, file_sha256, read_manifest, validate_manifest
from cseg.runtime import Runtime
from cseg.runtime.rules import bundle_id


def _copy(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _write(bundle, manifest):
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


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
    bundle = _copy(tiny_bundle, tmp_path)
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
    _write(bundle, unlisted)
    with pytest.raises(BundleError, match="not listed"):
        Runtime.open(bundle, verify=False)  # listing is checked even without hashing


def test_paths_leading_out_of_the_bundle_are_refused_without_saying_what_exists(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
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
    bundle = _copy(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    dtype = copy.deepcopy(manifest)
    dtype["graphs"]["sam3_text"]["inputs"][1]["dtype"] = "int32"
    _write(bundle, dtype)
    with pytest.raises(BundleError, match="sam3_text: manifest.json declares attention_mask:int32\\[1,32\\], its ONNX "
                                          "file has attention_mask:int64\\[1,32\\]"):  # fmt: skip
        Runtime.open(bundle)
    # a swapped graph whose hashes were updated everywhere: the sha256 cannot catch it, the I/O check does
    shutil.copy(bundle / "graphs/sam3_text.onnx", bundle / "graphs/sam3_decoder.onnx")
    swapped = copy.deepcopy(manifest)
    swapped["graphs"]["sam3_decoder"]["sha256"] = swapped["files"]["graphs/sam3_decoder.onnx"] = file_sha256(
        bundle / "graphs/sam3_decoder.onnx")
    _write(bundle, swapped)
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


# --- item 6: types and ranges of every field the runtime uses, checked at open --------------------------------------


def _set(manifest, path, value):
    """A copy of `manifest` with `path` (dotted, or a tuple of keys) set to `value` (or deleted)."""
    changed = copy.deepcopy(manifest)
    *parents, last = path.split(".") if isinstance(path, str) else path
    node = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return changed


_DELETE = object()
BAD_VALUES = [
    ("generation.eos_token_ids", [], "eos_token_ids"),
    ("generation.eos_token_ids", [-1], "eos_token_ids/0"),
    ("generation.eos_token_ids", [10**6], "outside the vocabulary"),
    ("generation.repetition_penalty", 0, "repetition_penalty"),
    ("generation.repetition_penalty", -1, "repetition_penalty"),
    ("generation.repetition_penalty", "1.05", "repetition_penalty"),
    ("generation.max_length", 10**12, "max_length"),
    ("generation.max_length", 1, "max_length"),
    ("generation.pad_token_id", None, "pad_token_id"),
    ("postprocess.instance_score_threshold", 2, "instance_score_threshold"),
    ("postprocess.instance_score_threshold", -1, "instance_score_threshold"),
    ("model.image_token_id", "x", "image_token_id"),
    ("model.image_token_id", 1.5, "image_token_id"),
    ("model.image_token_id", 10**6, "outside the vocabulary"),
    ("model.num_layers", 10**12, "num_layers"),
    ("model.num_layers", 3, "num_layers = 3 disagrees with graph vlm_decoder"),
    ("model.num_layers", 2.0, "num_layers"),
    ("model.num_layers", True, "num_layers"),
    ("model.sam3_text_length", 10**12, "sam3_text_length"),
    ("model.sam3_text_length", 31, "sam3_text_length = 31 disagrees with graph sam3_text's input_ids"),
    ("model.num_kv_heads", 3, "num_kv_heads"),
    ("model.head_dim", 0, "head_dim"),
    ("model.hidden_size", 65, "hidden_size"),
    ("model.vocab_size", 10**12, "vocab_size"),
    ("model.num_queries", 7, "num_queries"),
    ("model.top_k", 0, "top_k"),
    ("model.vision.window_size", 0, "window_size"),
    ("model.vision.window_size", 20, "window_size"),
    ("model.vision.spatial_merge_size", 3, "merge_size"),
    ("preprocessing.vlm.max_pixels", 1, "min_pixels <= max_pixels"),
    ("preprocessing.vlm.min_pixels", 10, "min_pixels <= max_pixels"),
    ("preprocessing.vlm.std", [0.2, 0.2], "std"),
    ("preprocessing.vlm.std", [0.2, 0.0, 0.2], "std/1"),
    ("preprocessing.vlm.rescale_factor", 0, "rescale_factor"),
    ("preprocessing.vlm.temporal_patch_size", 3, "patch volume"),
    ("preprocessing.sam3.size", 337, "preprocessing.sam3.size = 337 disagrees"),
    ("preprocessing.sam3.size", -1, "size"),
    ("router.kind", "learned", "threshold"),
    ("router.kind", "magic", "kind"),
    ("session.intra_op_num_threads", -1, "intra_op_num_threads"),
    ("session.graph_optimization_level", "fast", "graph_optimization_level"),
    ("tokenizers.vlm", {}, "tokenizer.json"),
    ("graphs.sam3_text.inputs.0.shape", [1, -32], "shape"),
    ("graphs.sam3_text.inputs", [], "inputs"),
    ("graphs.vlm_decoder.file", "", "file"),
    ("format", "other", "not a bundle written by this cseg"),
    ("format", _DELETE, "not a bundle written by this cseg"),
    ("model.vision", _DELETE, "vision"),
    ("postprocess.instance_score_threshold", _DELETE, "instance_score_threshold"),
]


@pytest.mark.parametrize("path, value, message", BAD_VALUES, ids=[f"{p}={v!r:.20}" for p, v, _ in BAD_VALUES])
def test_out_of_range_manifest_values_are_refused_by_name(tiny_bundle, path, value, message):
    manifest = _set(read_manifest(tiny_bundle), path, value)
    with pytest.raises(BundleError, match=message):
        validate_manifest(manifest)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_manifest_json_are_refused(tiny_bundle, tmp_path, text):
    bundle = _copy(tiny_bundle, tmp_path)
    raw = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(raw.replace('"repetition_penalty": 1.05', f'"repetition_penalty": {text}'))
    with pytest.raises(BundleError, match="not valid JSON.*not a finite number"):
        read_manifest(bundle)


def test_tokenizer_and_manifest_must_agree_on_the_image_token(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    _write(bundle, _set(manifest, "model.image_token_id", manifest["model"]["image_token_id"] - 1))
    with pytest.raises(BundleError, match=r"<\|image_pad\|> is not model.image_token_id"):
        Runtime.open(bundle)


def _optional_paths(root, node=None, prefix=()):
    """Every key path whose removal on its own leaves the manifest schema-valid."""
    found = []
    for key, value in (root if node is None else node).items():
        path = (*prefix, key)
        try:
            validate_manifest(_set(root, path, _DELETE))
            found.append(path)
        except BundleError:
            pass
        if isinstance(value, dict) and path != ("files",):
            found += _optional_paths(root, value, path)
    return found


def test_inspect_and_the_runtime_serve_every_schema_valid_manifest(tiny_bundle, tmp_path, photo):
    """Each key the schema lets go, removed on its own, must not break `cseg inspect`; all of them removed at once
    must not break the runtime (a KeyError would mean the schema misses a key the code reads)."""
    from cseg.bundle_report import describe

    bundle = _copy(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    optional = _optional_paths(manifest)
    assert ("generation", "repetition_penalty") in optional and ("session",) in optional
    minimal = manifest
    for path in optional:
        _write(bundle, _set(manifest, path, _DELETE))
        describe(bundle, verify=False)
        try:
            validate_manifest(_set(minimal, path, _DELETE))
            minimal = _set(minimal, path, _DELETE)
        except (BundleError, KeyError):  # already gone with its parent, or needed once a sibling went
            pass
    _write(bundle, minimal)
    describe(bundle)
    runtime = Runtime.open(bundle)
    for route in ("shortcut", "full"):
        assert runtime.segment(photo, "the astronaut", route=route, max_new_tokens=3).mask.shape == photo.shape[:2]


def test_inspect_refuses_incomplete_sections_instead_of_a_key_error(tiny_bundle, tmp_path):
    from cseg.bundle_report import describe

    bundle = _copy(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    quantized = {**manifest, "quantization": {"precision": "int8", "calibration": {}, "graphs": {}, "end_to_end": {}}}
    learned = _set(manifest, "router", {"kind": "learned", "feature_width": 69})
    for broken, message in ((quantized, "quantization/(calibration|end_to_end)"), (learned, "threshold")):
        _write(bundle, broken)
        with pytest.raises(BundleError, match=message):
            describe(bundle)


# --- item 10: CLI output paths checked before the work; calib collect verifies ---------------------------------


def _cli_cases(tmp_path):
    folder, a_file = tmp_path / "folder", tmp_path / "file.txt"
    folder.mkdir()
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nowhere = tmp_path / "no-bundle"  # the outputs must be refused before the bundle is even opened
    seg = ["segment", "--bundle", str(nowhere), "sample:astronaut", "cup"]
    return [
        (seg + ["--out", str(folder)], "--out .* is a folder"),
        (seg + ["--out", str(a_file / "x.png")], "--out .* cannot be written"),
        (seg + ["--out", "/proc/cseg/x.png"], "--out .* cannot be written"),
        (["bench", "--bundle", str(nowhere), "--json", str(folder)], "--json .* is a folder"),
        (["bench", "--bundle", str(nowhere), "--plot", str(fifo)], "--plot .* cannot be written"),
        (["eval", "--bundle", str(nowhere), "--data", str(nowhere), "--format", "folder", "--json", str(folder)],
         "--json .* is a folder"),
        (["eval", "--bundle", str(nowhere), "--data", str(nowhere), "--format", "folder", "--work", str(a_file)],
         "--work .* is a file"),
        (["eval", "--bundle", str(nowhere), "--data", str(nowhere), "--format", "folder", "--csv", "/proc/x.csv"],
         "--csv .* cannot be written"),
        (["induce", "--bundle", str(nowhere), "--demo", "sample:coffee", "cup", "--out", str(folder)],
         "--out .* is a folder"),
        (["watch", "--bundle", str(nowhere), "--rule", "r.json", str(folder), "--out", str(a_file)],
         "--out .* is a file"),
        (["watch", "--bundle", str(nowhere), "--rule", "r.json", str(folder), "--jsonl", str(folder)],
         "--jsonl .* is a folder"),
        (["calib", "collect", "--bundle", str(nowhere), "--out", str(a_file)], "--out .* is a file"),
        (["make-checkpoint", "--out", str(a_file)], "--out .* is a file"),
        (["make-checkpoint", "--out", "/proc/cseg-checkpoint"], "--out .* cannot be written into"),
        (["export", "--model", str(nowhere), "--sam3", str(nowhere), "--out", "/proc/cseg/bundle"],
         "cannot create the bundle"),
    ]  # fmt: skip


def test_cli_output_paths_are_checked_before_the_work(tmp_path, capsys):
    from cseg.cli import main

    for argv, message in _cli_cases(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], (argv, err)
        assert re.search(message, err[0]), (argv, err[0])


def test_cli_missing_output_folders_are_created_up_front(tmp_path):
    from cseg.outputs import output_file, output_folder

    assert output_file(str(tmp_path / "a" / "b" / "m.json"), "--json").parent.is_dir()
    assert not (tmp_path / "a" / "b" / "m.json").exists()  # probed, not left behind
    existing = tmp_path / "keep.json"
    existing.write_text("old")
    output_file(str(existing), "--json")
    assert existing.read_text() == "old"
    assert output_folder(str(tmp_path / "c" / "d"), "--out").is_dir()


def test_calib_collect_verifies_the_bundle(tiny_bundle, tmp_path, capsys):
    from cseg.cli import main

    bundle = _copy(tiny_bundle, tmp_path)
    with open(bundle / "graphs" / "sam3_text.onnx", "r+b") as handle:
        handle.seek(200)
        handle.write(b"corrupt")
    assert main(["calib", "collect", "--bundle", str(bundle), "--out", str(tmp_path / "data")]) == 2
    assert "sam3_text.onnx does not match its sha256" in capsys.readouterr().err


def test_a_deeply_nested_manifest_is_a_bundle_error(tmp_path):
    from cseg.manifest import read_manifest

    (tmp_path / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(tmp_path)
