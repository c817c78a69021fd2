"""Regression tests of issue 19 (bundles), continued from tests/test_hardening_bundle.py: the manifest's types and
ranges (checked at open, by `cseg inspect` too) and the CLI's output paths."""

import copy
import os
import re

import pytest

from cseg.bundle.schema import MANIFEST_NAME, read_manifest, validate_manifest
from cseg.errors import BundleError
from cseg.runtime import Runtime

from bundle_edit import copy_bundle, write_manifest


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
    bundle = copy_bundle(tiny_bundle, tmp_path)
    raw = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(raw.replace('"repetition_penalty": 1.05', f'"repetition_penalty": {text}'))
    with pytest.raises(BundleError, match="not valid JSON.*not a finite number"):
        read_manifest(bundle)


def test_tokenizer_and_manifest_must_agree_on_the_image_token(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    write_manifest(bundle, _set(manifest, "model.image_token_id", manifest["model"]["image_token_id"] - 1))
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
    from cseg.bundle.report import describe

    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    optional = _optional_paths(manifest)
    assert ("generation", "repetition_penalty") in optional and ("session",) in optional
    minimal = manifest
    for path in optional:
        write_manifest(bundle, _set(manifest, path, _DELETE))
        describe(bundle, verify=False)
        try:
            validate_manifest(_set(minimal, path, _DELETE))
            minimal = _set(minimal, path, _DELETE)
        except (BundleError, KeyError):  # already gone with its parent, or needed once a sibling went
            pass
    write_manifest(bundle, minimal)
    describe(bundle)
    runtime = Runtime.open(bundle)
    for route in ("shortcut", "full"):
        assert runtime.segment(photo, "the astronaut", route=route, max_new_tokens=3).mask.shape == photo.shape[:2]


def test_inspect_refuses_incomplete_sections_instead_of_a_key_error(tiny_bundle, tmp_path):
    from cseg.bundle.report import describe

    bundle = copy_bundle(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    quantized = {**manifest, "quantization": {"precision": "int8", "calibration": {}, "graphs": {}, "end_to_end": {}}}
    learned = _set(manifest, "router", {"kind": "learned", "feature_width": 69})
    for broken, message in ((quantized, "quantization/(calibration|end_to_end)"), (learned, "threshold")):
        write_manifest(bundle, broken)
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
        *_issue29_cli_cases(tmp_path, nowhere),
    ]  # fmt: skip


def _issue29_cli_cases(tmp_path, nowhere):
    """Issue 29 item 5: an overlay extension PIL cannot write was a traceback after the work; WORK/masks or
    WORK/worst being a file a FileExistsError after it; a ground-truth mask of another size than its image was
    resized silently by fit-router. All refused before the work (here: before the missing bundle is opened)."""
    from PIL import Image

    work = tmp_path / "work"
    work.mkdir()
    (work / "masks").write_text("not a folder")
    worst = tmp_path / "work2"
    worst.mkdir()
    (worst / "worst").write_text("not a folder")
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (64, 48)).save(calib / "a.png")
    Image.new("L", (7, 300)).save(calib / "m.png")
    (calib / "calib.jsonl").write_text('{"image": "a.png", "prompt": "cup"}\n'
                                       '{"image": "a.png", "prompt": "cup", "mask": "m.png"}\n')  # fmt: skip
    evaluate = ["eval", "--bundle", str(nowhere), "--data", str(nowhere), "--format", "folder"]
    return [
        (["segment", "--bundle", str(nowhere), "sample:astronaut", "cup", "--out", str(tmp_path / "x.xyz")],
         r"--out .*x\.xyz: PIL cannot write an RGB image as '\.xyz'; name a file ending in one of .*\.jpg .*\.png"),
        (evaluate + ["--work", str(work)], r"--save-masks .*work/masks is a file"),
        (evaluate + ["--work", str(worst)], r"--worst's overlay folder .*work2/worst is a file"),
        (["calib", "fit-router", "--bundle", str(nowhere), "--calib", str(calib), "--max-iou-loss", "0.1"],
         r"calib\.jsonl line 2: the mask .*m\.png is 7x300 but its image .*a\.png is 64x48"),
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

    bundle = copy_bundle(tiny_bundle, tmp_path)
    with open(bundle / "graphs" / "sam3_text.onnx", "r+b") as handle:
        handle.seek(200)
        handle.write(b"corrupt")
    assert main(["calib", "collect", "--bundle", str(bundle), "--out", str(tmp_path / "data")]) == 2
    assert "sam3_text.onnx does not match its sha256" in capsys.readouterr().err


def test_a_deeply_nested_manifest_is_a_bundle_error(tmp_path):
    from cseg.bundle.schema import read_manifest

    (tmp_path / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(tmp_path)
