"""Rule-only bundles (SAM 3 alone) and portable rules: induce on a full bundle, apply wherever the SAM 3 weights are
the same, be refused wherever they are not."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cseg.bundle.schema import read_manifest
from cseg.errors import BundleError, InvalidInputError
from cseg.export.bundle import RULE_QUERIES
from cseg.bundle.schema import read_manifest
from cseg.eval.metrics import iou
from cseg.runtime import Rule, Runtime


@pytest.fixture(scope="module")
def rule(runtime, photo):
    from skimage import data

    return runtime.induce([(data.coffee(), [[120, 30, 420, 300]])], "the cup", image=photo, max_new_tokens=6)


@pytest.fixture(scope="module")
def rule_only(rule_only_bundle):
    return Runtime.open(rule_only_bundle)


def test_a_rule_only_bundle_is_sam3s_image_encoder_and_decoder(rule_only_bundle, tiny_bundle):
    manifest, full = read_manifest(rule_only_bundle), read_manifest(tiny_bundle)
    assert manifest["contents"] == "rule-only" and full["contents"] == "full"
    assert list(manifest["graphs"]) == ["sam3_vision", "sam3_decoder"] and manifest["tokenizers"] == {}
    assert sorted(manifest["files"]) == ["graphs/sam3_decoder.onnx", "graphs/sam3_vision.onnx"]
    assert "conceptseg" not in manifest["source"]
    # exported without --queries: tuned for the published Q (16), taking rules of 1 to 32 (the full bundle: 0 to its Q)
    assert manifest["model"]["num_queries"] == RULE_QUERIES != full["model"]["num_queries"]
    assert manifest["graphs"]["sam3_decoder"]["axis_bounds"]["concepts"] == [0, 32]
    assert full["graphs"]["sam3_decoder"]["axis_bounds"]["concepts"] == [0, full["model"]["num_queries"]]
    # the same SAM 3 checkpoint gives the same weights id, and the same graphs
    assert manifest["source"]["sam3"]["weights"] == full["source"]["sam3"]["weights"]
    for key in manifest["graphs"]:
        assert manifest["graphs"][key]["sha256"] == full["graphs"][key]["sha256"], key


def test_a_full_bundles_rule_applies_on_the_rule_only_bundle_with_the_same_result(runtime, rule_only, rule, photo):
    """Issue 29: the rule has the tiny ConceptSeg-R1's 8 concept tokens, the rule-only bundle was exported without
    --queries (16): it applies all the same (the decoder's concept axis is dynamic), with the full bundle's result."""
    assert rule.concept_tokens.shape[1] == 8 != rule_only.manifest["model"]["num_queries"]
    want, got = runtime.apply(rule, photo), rule_only.apply(rule, photo)
    assert got.route == "rule" and got.answer == rule.answer and want.mask.any()
    assert iou(want.mask, got.mask) >= 0.999 and abs(want.presence - got.presence) <= 1e-4
    assert np.array_equal(want.instances.boxes, got.instances.boxes)
    streamed = list(rule_only.stream([photo, None, photo], rule, drop="none"))
    assert [r.error is None for r in streamed] == [True, False, True]
    assert np.array_equal(streamed[2].result.mask, got.mask)


def test_a_rule_only_bundle_refuses_segment_and_induce_saying_what_to_do(rule_only, photo):
    for call in (lambda: rule_only.segment(photo, "cup"), lambda: rule_only.segment_many(photo, ["cup"]),
                 lambda: rule_only.induce([(photo, [[0, 0, 9, 9]])], "cup")):  # fmt: skip
        with pytest.raises(BundleError, match="rule-only bundle.*full bundle of the same SAM 3 weights.*copy the rule"):
            call()


def test_rules_of_other_sam3_weights_are_refused_naming_the_weights(rule_only, tiny_alt_bundle, photo, rule):
    other = Runtime.open(tiny_alt_bundle, verify=False)
    alien = other.induce([(photo, [[10, 10, 200, 200]])], "helmet", image=photo, max_new_tokens=2)
    assert alien.sam3_weights == read_manifest(tiny_alt_bundle)["source"]["sam3"]["weights"] != rule.sam3_weights
    for call in (lambda: rule_only.apply(alien, photo), lambda: rule_only.stream([photo], alien)):
        with pytest.raises(BundleError, match=f"SAM 3 weights {alien.sam3_weights[:16]}.*holds SAM 3 weights "
                                              f"{rule.sam3_weights[:16]}"):  # fmt: skip
            call()
    with pytest.raises(BundleError, match="SAM 3 weights"):  # and the other way round
        other.apply(rule, photo)


def test_a_rule_records_what_it_needs_and_survives_the_trip(rule, rule_only, tmp_path, photo):
    path = rule.save(tmp_path / "cup")
    meta = json.loads(path.read_text())
    assert meta["format"] == 2 and meta["sam3_weights"] == rule.sam3_weights and len(rule.sam3_weights) == 64
    assert meta["num_queries"] == rule.concept_tokens.shape[1] and meta["concept_dtype"] == "float32"
    assert np.array_equal(rule_only.apply(Rule.load(path), photo).mask, rule_only.apply(rule, photo).mask)
    meta["num_queries"] += 1
    path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="concept tokens of float32, its arrays hold"):
        Rule.load(path)



def _with_queries(rule, count: int):
    tokens = np.resize(rule.concept_tokens, (1, count, rule.concept_tokens.shape[2])).astype(np.float32)
    return dataclasses.replace(rule, concept_tokens=tokens)


def test_rules_of_any_q_up_to_32_apply_on_a_rule_only_bundle(rule, rule_only, runtime, photo):
    """Issue 29: the Q of the model that induces a rule is not known when a rule-only bundle is exported."""
    for count in (1, 7, 16, 32):
        assert rule_only.apply(_with_queries(rule, count), photo).route == "rule", count
    with pytest.raises(InvalidInputError, match=r"33 concept tokens; this bundle's model takes 1 to 32 \(export the "
                                                r"rule-only bundle with --queries 33\)"):  # fmt: skip
        rule_only.apply(_with_queries(rule, 33), photo)
    # a full bundle takes up to its own ConceptSeg-R1's Q (its TensorRT profile ends there)
    assert runtime.apply(_with_queries(rule, 7), photo).route == "rule"
    with pytest.raises(InvalidInputError, match=r"takes 1 to 8 \(the Q of its ConceptSeg-R1\)"):
        runtime.apply(_with_queries(rule, 9), photo)


def test_rule_files_from_before_portable_rules_stay_bound_to_their_bundle(rule, runtime, rule_only, tmp_path, photo):
    path = rule.save(tmp_path / "old")
    meta = json.loads(path.read_text())
    for key in ("sam3_weights", "num_queries", "concept_dtype"):
        del meta[key]
    path.write_text(json.dumps({**meta, "format": 1}))
    old = Rule.load(path)
    assert old.sam3_weights is None
    assert np.array_equal(runtime.apply(old, photo).mask, runtime.apply(rule, photo).mask)
    with pytest.raises(BundleError, match="bound to the bundle that induced it.*induce it again"):
        rule_only.apply(old, photo)


def test_the_weights_id_does_not_depend_on_the_file_layout(tiny_checkpoint, tiny_alt_checkpoint, tmp_path):
    """The same tensors in two shards (+ index, another order) give the same id; other weights another id."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cseg.export.bundle import sam3_weights_id
    from cseg.export.loading import load_sam3

    source = tiny_checkpoint[1]
    tensors = load_file(str(source / "model.safetensors"))
    names = sorted(tensors, reverse=True)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, sharded / path.name)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}))  # fmt: skip
    ids = [sam3_weights_id(load_sam3(path).model) for path in (source, sharded, tiny_alt_checkpoint[1])]
    assert ids[0] == ids[1] != ids[2]


def test_cli_exports_a_rule_only_bundle_only_on_request(tiny_checkpoint, tmp_path, capsys):
    from cseg.cli import export_main

    sam3 = str(tiny_checkpoint[1])
    for argv, message in (
        (["--sam3", sam3, "--out", str(tmp_path / "b")], "--model .* or --rule-only"),
        (["--model", str(tiny_checkpoint[0]), "--sam3", sam3, "--rule-only", "--out", str(tmp_path / "b")], "not both"),
        (["--model", str(tiny_checkpoint[0]), "--sam3", sam3, "--queries", "8", "--out", str(tmp_path / "b")],
         "--queries is for --rule-only"),
        (["--sam3", sam3, "--rule-only", "--precision", "int4", "--out", str(tmp_path / "b")], "quantizes only the VLM"),
        (["--sam3", sam3, "--rule-only", "--queries", "0", "--out", str(tmp_path / "b")], "from 1 to 4096"),
    ):  # fmt: skip
        assert export_main(argv) == 2
        assert __import__("re").search(message, capsys.readouterr().err), argv
    assert not (tmp_path / "b").exists()


def test_cli_watch_and_inspect_a_rule_only_bundle(rule_only_bundle, rule, tmp_path, photo, capsys):
    from PIL import Image

    from cseg.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.roll(photo, 60 * i, axis=0)).save(frames / f"{i:03d}.png")
    path = rule.save(tmp_path / "rule.json")
    lines = tmp_path / "log.jsonl"
    assert main(["watch", "--bundle", str(rule_only_bundle), "--rule", str(path), str(frames), "--jsonl",
                 str(lines)]) == 0  # fmt: skip
    assert [json.loads(line)["route"] for line in lines.read_text().splitlines()] == ["rule", "rule"]
    assert main(["segment", "--bundle", str(rule_only_bundle), "sample:astronaut", "astronaut"]) == 2
    assert "rule-only bundle" in capsys.readouterr().err
    assert main(["inspect", str(rule_only_bundle)]) == 0
    report = capsys.readouterr().out
    assert "RULE-ONLY" in report and f"weights id {rule.sam3_weights[:16]}" in report and "Q=" in report


def test_the_gpu_recipe_of_a_rule_only_bundle_builds_sam3_alone(rule_only_bundle):
    from cseg.engines.recipe import make_recipe
    from cseg.engines.targets import TARGETS

    manifest = read_manifest(rule_only_bundle)
    profile = TARGETS["orin-nano"]
    manifest["target_profile"] = {key: profile[key] for key in ("device", "tensorrt_versions", "shapes", "workspace_mb")}
    recipe = make_recipe(manifest)
    assert list(recipe["graphs"]) == ["sam3_vision", "sam3_decoder"]
    # tuned for the bundle's usual Q (16), built for rules of any Q up to 32
    assert recipe["graphs"]["sam3_decoder"]["profiles"][0]["shapes"]["concept_tokens"] == {
        "min": [1, 0, 256], "opt": [1, 16, 256], "max": [1, 32, 256]}  # fmt: skip
    assert "--maxShapes=concept_tokens:1x" in recipe["trtexec"]["sam3_decoder"]


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photos():
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTOS}


def _rule_only_export(checkpoint, out, calibration_folder, **options):
    from cseg.export.bundle import export_bundle

    queries = json.loads((checkpoint[0] / "config.json").read_text())["num_of_query"]
    return export_bundle(None, checkpoint[1], out, queries=queries, calib=calibration_folder, progress=False,
                         report=lambda line: None, **options)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_rule_from_an_fp32_cpu_bundle_on_an_orin_nano_rule_only_bundle(runtime, rule, tiny_checkpoint, precision,
                                                                        calibration_folder, tmp_path):  # fmt: skip
    """Accuracy across targets, on the CPU with the Nano's converted graphs (the engines cannot be built here)."""
    bundle = _rule_only_export(tiny_checkpoint, tmp_path / precision, calibration_folder, target="orin-nano",
                               precision=precision)  # fmt: skip
    nano = Runtime.open(bundle, device="cpu")
    ious = {name: iou(runtime.apply(rule, image).mask, nano.apply(rule, image).mask) for name, image in _photos().items()}
    print(precision, {name: round(value, 4) for name, value in ious.items()})
    # the bar. int8 met it once the neck's 1x level stayed fp16 (export/graphs/sam3_vision.py): 0.92-0.99
    # before on this random-init tiny SAM 3
    assert min(ious.values()) >= 0.98


@pytest.mark.slow
def test_an_int8_rule_only_bundle_applies_as_the_int8_full_bundle(int8_bundle, tiny_checkpoint, calibration_folder,
                                                                   tmp_path, photo):  # fmt: skip
    """Same weights, same precision, same calibration: the same quantized image encoder, so the same masks."""
    # keep_slower, as int8_bundle: on the tiny graphs int8 need not be faster, and the speed gate would ship fp32
    bundle = _rule_only_export(tiny_checkpoint, tmp_path / "int8", calibration_folder, precision="int8",
                               keep_slower=True)  # fmt: skip
    vision = [read_manifest(b)["graphs"]["sam3_vision"] for b in (bundle, int8_bundle)]
    assert vision[0]["precision"] == "int8" and vision[0]["sha256"] == vision[1]["sha256"]
    full, rule_only = Runtime.open(int8_bundle), Runtime.open(bundle)
    rule = full.induce([(photo, [[40, 30, 300, 260]])], "astronaut", max_new_tokens=4)
    for image in _photos().values():
        want, got = full.apply(rule, image), rule_only.apply(rule, image)
        assert iou(want.mask, got.mask) >= 0.999 and abs(want.presence - got.presence) <= 1e-4
