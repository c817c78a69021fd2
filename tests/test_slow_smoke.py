"""Cheap forms of every slow test's set-up, in the default suite, so that an interface change breaks CI rather than
the next slow run (issue 29: test_meta_oracle's graph half called the sam3_decoder spec without "queries" for weeks).

Each test here runs the same helpers its slow test runs, on the tiny checkpoint and the bundles the suite exports
anyway, in seconds. The slow test each one covers is named in its docstring; README lists them all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoint):
    from cseg.export.loading import load_conceptseg, load_sam3

    return load_conceptseg(tiny_checkpoint[0]), load_sam3(tiny_checkpoint[1], attn_implementation="eager")


def _bundle_sessions(bundle):
    import onnxruntime as ort

    return lambda key: ort.InferenceSession(str(bundle / "graphs" / f"{key}.onnx"), providers=["CPUExecutionProvider"])


@torch.no_grad()
def _self_oracle(vlm, sam3, image, prompts) -> dict:
    """What tests/meta_oracle.py writes, made by cseg's own tiny reference: both halves of the comparison run
    without Meta's model (the slow test's `oracle` fixture needs `make meta-oracle`)."""
    from cseg.export.graphs.sam3_text import TEXT_LENGTH
    from cseg.export.reference import ReferencePipeline
    from cseg.images import load_frame
    from cseg.runtime.preprocess import sam3_pixels

    reference = ReferencePipeline(vlm, sam3)
    pixels = sam3_pixels(load_frame(str(image)), reference.sam3.image_size)
    vision = reference.sam3_vision(torch.from_numpy(pixels))
    meta = {"pixel_values": pixels, "prompts": np.array(prompts), "missing_keys": np.array([], str)}
    for i in range(len(prompts)):
        ids = np.zeros((1, TEXT_LENGTH), np.int64)
        ids[0, : 3 + i] = np.arange(1, 4 + i)  # stand-in ids, as Meta's CLIP ids are to the generated checkpoint
        mask = torch.from_numpy((ids != 0).astype(np.int64))
        features = reference.sam3.model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=mask)
        sam = reference.sam3_decode(vision, features.pooler_output, mask)
        meta.update({f"input_ids_{i}": ids, f"text_features_{i}": features.pooler_output.numpy(),
                     f"semantic_logits_{i}": sam.semantic_logits.numpy(), f"pred_logits_{i}": sam.pred_logits.numpy(),
                     f"presence_logit_{i}": sam.presence_logit.numpy(),
                     f"pred_boxes_{i}": sam.pred_boxes.numpy()})  # fmt: skip
    return meta


def test_meta_oracle_set_up_and_both_halves_on_tiny(tiny_models, tiny_bundle, photo, tmp_path):
    """Covers tests/test_meta_oracle.py::test_cseg_matches_metas_sam3: the graph half's specs with its settings (the
    KeyError of issue 29), then compare_with_meta, reference half and graph half, against a self-made oracle."""
    from PIL import Image

    import test_meta_oracle as oracle

    vlm, sam3 = tiny_models
    for key in ("sam3_vision", "sam3_text", "sam3_decoder"):
        assert oracle.graph_spec(vlm, sam3, key).key == key
    assert callable(oracle.exported_sessions(vlm, sam3, tmp_path))
    image = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(image)
    meta = _self_oracle(vlm, sam3, image, oracle.PROMPTS)
    results = oracle.compare_with_meta(vlm, sam3, image, meta, _bundle_sessions(tiny_bundle))
    for prompt in oracle.PROMPTS:
        assert oracle._passes(results[prompt]["reference"]) and oracle._passes(results[prompt]["graphs_fp32"]), prompt
    # the script Meta's venv runs: at least it compiles (importing it needs Meta's sam3)
    compile((oracle.ROOT / "tests" / "meta_oracle.py").read_text(), "meta_oracle.py", "exec")


def test_full_size_export_steps_on_tiny(tiny_models, tmp_path):
    """Covers tests/test_full_size_export.py::test_full_size_sam3_exports_with_parity: export_and_check (the specs
    with its settings, export, parity, the measurements) on the tiny SAM 3's text graph; the other graphs' specs."""
    from cseg.export.graphs import GRAPHS

    import test_full_size_export as full

    vlm, sam3 = tiny_models
    result = full.export_and_check(vlm, sam3, "sam3_text", tmp_path)
    assert set(result["parity"]) == {"text_features"} and result["files"] == ["sam3_text.onnx"]
    assert not (tmp_path / "sam3_text.onnx").exists()
    for key in ("sam3_decoder", "sam3_vision"):
        assert GRAPHS[key](vlm, sam3, {"top_k": 20, "queries": vlm.num_queries, "vlm_grid": [1, 42, 42]}).key == key


def test_full_size_rule_only_summary_on_tiny(rule_only_bundle):
    """Covers tests/test_full_size_export.py::test_full_size_rule_only_export: its export call is the rule_only_bundle
    fixture's (export_bundle(None, sam3, queries=...)); what it reads of the bundle runs here."""
    import test_full_size_export as full

    summary = full.rule_only_summary(rule_only_bundle)
    assert set(summary["graph_export_s"]) == {"sam3_vision", "sam3_decoder"}


class _Stop(Exception):
    pass


@pytest.mark.parametrize("options", [{"target": "orin-nano", "precision": "fp16"},
                                     {"target": "orin-nano", "precision": "int8"},
                                     {"precision": "int8", "keep_slower": True}])  # fmt: skip
def test_rule_only_slow_exports_get_past_their_checks(tiny_checkpoint, calibration_folder, monkeypatch, tmp_path,
                                                      options):  # fmt: skip
    """Covers tests/test_rule_only.py::test_a_rule_from_an_fp32_cpu_bundle_on_an_orin_nano_rule_only_bundle[fp16,
    int8] and ::test_an_int8_rule_only_bundle_applies_as_the_int8_full_bundle: their _rule_only_export with their
    options gets through target, precision, footprint and calibration checks to the graph export (stopped there)."""
    import cseg.export.bundle as bundle
    import test_rule_only

    seen = {}

    def stop(staging, model_dir, sam3_dir, sam3_given, target, profile, precision, settings, *rest):
        seen.update(target=target, precision=precision, settings=settings)
        raise _Stop

    monkeypatch.setattr(bundle, "_export_into", stop)
    with pytest.raises(_Stop):
        test_rule_only._rule_only_export(tiny_checkpoint, tmp_path / "b", calibration_folder, **options)
    assert seen["target"] == options.get("target", "cpu") and seen["settings"]["queries"] == 8
    assert not (tmp_path / "b").exists()


def test_rule_only_slow_tests_apply_steps_on_tiny(rule_only_bundle, runtime, photo):
    """The same two slow tests, after their export: open a rule-only bundle on the cpu, induce on a full one, apply on
    their photographs, compare masks."""
    from cseg.eval.metrics import iou
    from cseg.runtime import Runtime

    import test_rule_only

    nano = Runtime.open(rule_only_bundle, device="cpu")
    rule = runtime.induce([(photo, [[40, 30, 300, 260]])], "astronaut", max_new_tokens=2)
    photos = test_rule_only._photos()
    assert set(photos) == set(test_rule_only.PHOTOS)
    image = photos["coffee"]
    assert iou(runtime.apply(rule, image).mask, nano.apply(rule, image).mask) >= 0.999


def test_parity_sweep_runs_one_seed():
    """Covers tests/test_parity.py's slow sweep and seed tests: check_seed is what they call; the default suite's
    test_seed_6161s_decoder_passes_the_gate runs it on one seed (decoder alone), so only the arguments are checked
    here."""
    import test_parity

    sweep = test_parity._sweep()
    assert sweep.seed_list("1000-1002,6161") == [1000, 1001, 1002, 6161]
    assert sweep.MODES == ("full", "rule-only")
    assert len(test_parity.SWEEP_TINY) >= 50 and len(test_parity.SWEEP_SMALL) == 3
