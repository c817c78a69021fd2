"""The torch-free runtime: end-to-end parity with the PyTorch reference, bundle checks, bad input, no torch."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cseg.errors import BundleError, InvalidInputError
from cseg.eval.metrics import iou
from cseg.images import load_frame, load_image
from cseg.runtime import Runtime

# Agreement required between the runtime (ONNX Runtime fp32) and the reference (PyTorch fp32) on the same input:
# identical route and generated text (token ids are compared in test_generated_ids_...); mask IoU >= 0.999 (only
# pixels whose logit is within ~1e-5 of 0 can flip, see test_bilinear_resize_matches_torch); presence and instance
# scores within 1e-4; the same number of instances with boxes within 0.5 px.
MIN_MASK_IOU = 0.999
MAX_SCORE_DELTA = 1e-4
MAX_BOX_DELTA_PX = 0.5


def _assert_same(got, want):
    assert (got.route, got.route_by) == (want.route, want.route_by)
    assert got.token_ids == want.token_ids
    assert got.text == want.text and got.answer == want.answer and got.bbox == want.bbox
    assert abs(got.presence - want.presence) <= MAX_SCORE_DELTA
    assert iou(got.mask, want.mask) >= MIN_MASK_IOU
    assert len(got.instances) == len(want.instances)
    if len(want.instances):
        order = np.argsort(-want.instances.scores)  # the runtime returns the top-K sorted by score
        np.testing.assert_allclose(got.instances.scores, want.instances.scores[order], atol=MAX_SCORE_DELTA)
        np.testing.assert_allclose(got.instances.boxes, want.instances.boxes[order], atol=MAX_BOX_DELTA_PX)
        for g, w in zip(got.instances.masks, want.instances.masks[order]):
            assert iou(g, w) >= MIN_MASK_IOU
    if want.route_score is None:
        assert got.route_score is None
    else:
        assert abs(got.route_score - want.route_score) <= MAX_SCORE_DELTA


@pytest.mark.parametrize(
    "prompt, kwargs",
    [
        ("astronaut", {}),  # router: shortcut
        ("the person holding a flag in this picture", {"max_new_tokens": 12}),  # router: full without trying
        ("four words right here", {"max_new_tokens": 10}),  # router: tries, rejects, reasons
        ("helmet", {"route": "full", "max_new_tokens": 30}),
        ("a long question forced through the shortcut", {"route": "shortcut"}),
    ],
)
def test_runtime_matches_the_reference_end_to_end(runtime, reference, photo, prompt, kwargs):
    _assert_same(runtime.segment(photo, prompt, **kwargs), reference.segment(photo, prompt, **kwargs))


def test_the_research_reasonseg_options_match_the_reference(runtime, reference, photo):
    """Masks made at another size with bicubic interpolation (the runtime's cv2 INTER_CUBIC kernel, the reference's
    torch bicubic: same kernel, a = -0.75) and max_length bounding prompt + completion, on both backends."""
    state = runtime.image_state(load_frame(photo), {})
    prompt = runtime.prefill(state, "helmet", None, None, {}).prefilled.cache.length
    options = {"route": "full", "mask_size": (301, 402), "mask_interpolation": "bicubic", "max_length": prompt + 5}
    got, want = runtime.segment(photo, "helmet", **options), reference.segment(photo, "helmet", **options)
    assert 1 <= len(want.token_ids) <= 5 and want.mask.shape == (301, 402)
    _assert_same(got, want)
    with pytest.raises(InvalidInputError, match=f"leaving no room to generate within {prompt}$"):
        reference.segment(photo, "helmet", route="full", max_length=prompt)


def test_demonstrations_and_bgr_frames_match_the_reference(runtime, reference, photo):
    from skimage import data

    demos = [(data.coffee(), [[100, 20, 400, 300]])]
    kwargs = {"route": "full", "max_new_tokens": 8}
    _assert_same(runtime.segment(photo[:, :, ::-1].copy(), "cup", demos, bgr=True, **kwargs),
                 reference.segment(photo, "cup", demos, **kwargs))  # fmt: skip
    many = [(data.coffee(), []), (data.chelsea(), [[10, 10, 100, 100]])]
    _assert_same(runtime.segment(photo, "cat", many, **kwargs), reference.segment(photo, "cat", many, **kwargs))


def test_instances_match_the_reference(runtime, reference, photo, monkeypatch):
    """Random weights score every query ~0.25, under SAM 3's 0.5: the threshold is set (on both sides) between the
    8th and 9th best reference score, so instances exist and fewer than the runtime's top-K pass."""
    import cseg.export.reference as reference_module

    for prompt, kwargs in [("astronaut", {"route": "shortcut"}), ("helmet", {"route": "full", "max_new_tokens": 5})]:
        monkeypatch.setattr(reference_module, "INSTANCE_SCORE_THRESHOLD", 0.0)
        scores = np.sort(reference.segment(photo, prompt, **kwargs).instances.scores)[::-1]
        threshold = float(scores[7] + scores[8]) / 2
        monkeypatch.setattr(reference_module, "INSTANCE_SCORE_THRESHOLD", threshold)
        monkeypatch.setitem(runtime.manifest["postprocess"], "instance_score_threshold", threshold)
        got, want = runtime.segment(photo, prompt, **kwargs), reference.segment(photo, prompt, **kwargs)
        assert len(want.instances) == 8
        _assert_same(got, want)


@pytest.mark.parametrize("demos", [None, "coffee"])
def test_generated_ids_concept_tokens_match_the_reference(runtime, reference, photo, demos):
    from skimage import data

    image = load_frame(photo)
    demos = [(load_image(data.coffee()), [(30.0, 40.0, 300.0, 200.0)])] if demos else []
    state = runtime.image_state(image, {})
    got = runtime.reason(state, "helmet", demos, 9, {})
    want = reference.reason(reference.image_state(image, {}), "helmet", demos, 9, {})
    assert got.token_ids == want.token_ids and len(got.token_ids) == 9
    scale = max(1.0, float(want.concept_tokens.abs().max()))
    assert float(np.abs(got.concept_tokens - want.concept_tokens.numpy()).max()) <= 1e-4 * scale


def test_kv_cache_is_allocated_once_per_request(runtime, photo, monkeypatch):
    caches = []
    original = runtime.decoder.new_cache
    monkeypatch.setattr(runtime.decoder, "new_cache", lambda n: caches.append(original(n)) or caches[-1])
    result = runtime.segment(photo, "helmet", route="full", max_new_tokens=7)
    assert len(caches) == 1
    prompt = caches[0].capacity - 7
    assert caches[0].length == prompt + 7  # prefill + one step per generated token, written in place
    assert result.timings["vlm_decode"] > 0 and result.timings["vlm_prefill"] > 0


def test_segment_many_encodes_once_and_reuses_vision_tokens(runtime, photo, monkeypatch):
    calls = {"sam3_vision": 0, "vlm_vision": 0}
    for key in calls:
        graph = runtime.graphs[key]
        original = graph.run
        monkeypatch.setattr(graph, "run", lambda feed, _o=original, _k=key: calls.__setitem__(_k, calls[_k] + 1) or _o(feed))
    results = runtime.segment_many(photo, ["astronaut", "helmet", "glove"], route="full", max_new_tokens=2)
    assert calls == {"sam3_vision": 1, "vlm_vision": 1} and len(results) == 3


def test_another_seed_and_config_match_the_reference(tiny_alt_checkpoint, tiny_alt_bundle, photo):
    from cseg.export.reference import ReferencePipeline

    runtime, reference = Runtime.open(tiny_alt_bundle), ReferencePipeline.from_pretrained(*tiny_alt_checkpoint)
    for prompt, kwargs in [("astronaut", {}), ("helmet", {"route": "full", "max_new_tokens": 12})]:
        _assert_same(runtime.segment(photo, prompt, **kwargs), reference.segment(photo, prompt, **kwargs))


def test_grayscale_camera_frames_are_served(runtime, photo):
    gray = photo.mean(axis=2).astype(np.uint8)
    result = runtime.segment(gray, "astronaut")
    assert result.mask.shape == gray.shape


@pytest.mark.parametrize(
    "image, prompt, kwargs, message",
    [
        (None, "cat", {}, "None"),
        (np.zeros((8, 8, 3), np.float32), "cat", {}, "dtype float32"),
        (np.zeros((8, 8, 4), np.uint8), "cat", {}, "alpha"),
        ("photo", "  ", {}, "empty"),
        ("photo", "cat", {"route": "fast"}, "route"),
        ("photo", "cat", {"max_new_tokens": -1}, "max_new_tokens"),
        ("photo", "cat", {"demos": "x.png"}, "list"),
    ],
)
def test_bad_input_is_refused_clearly(runtime, photo, image, prompt, kwargs, message):
    image = photo if isinstance(image, str) else image
    demos = kwargs.pop("demos", None)
    with pytest.raises(InvalidInputError, match=message):
        runtime.segment(image, prompt, demos, **kwargs)


def _copy(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_open_refuses_broken_bundles(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        Runtime.open(tmp_path / "nothing")
    with pytest.raises(BundleError, match="no manifest.json"):
        Runtime.open(tmp_path)
    copy = _copy(tiny_bundle, tmp_path)
    with open(copy / "graphs" / "vlm_decoder.onnx", "r+b") as handle:
        handle.seek(50)
        handle.write(b"tampered")
    with pytest.raises(BundleError, match="vlm_decoder.onnx does not match its sha256"):
        Runtime.open(copy)
    with pytest.raises(BundleError, match="cannot be loaded by ONNX Runtime"):
        Runtime.open(copy, verify=False)


def test_open_refuses_other_targets_and_versions(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["sam3_vision"]["backend"] = "tensorrt"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no TensorRT engines yet: run `cseg build"):
        Runtime.open(copy)
    manifest["format_version"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 2"):
        Runtime.open(copy)
    with pytest.raises(InvalidInputError, match="device"):
        Runtime.open(tiny_bundle, device="cuda")


def test_session_options_come_from_the_manifest_with_overrides(tiny_bundle):
    rt = Runtime.open(tiny_bundle, verify=False, session={"intra_op_num_threads": 1})
    assert rt.graphs["sam3_text"].session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(InvalidInputError, match="graph_optimization_level"):  # the caller's argument, not the bundle
        Runtime.open(tiny_bundle, verify=False, session={"graph_optimization_level": "fast"})


def serves_without_torch(bundle, check: str = "") -> None:
    """Open `bundle` and segment on the full path in a fresh interpreter (after `check`, a line of Python about `rt`):
    neither torch nor transformers may be imported. Shared with the OpenVINO backend's test."""
    code = (
        "import sys, numpy as np\n"
        "from cseg import Runtime\n"
        f"rt = Runtime.open({str(bundle)!r})\n"
        f"{check}\n"
        "image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)\n"
        "r = rt.segment(image, 'helmet', route='full', max_new_tokens=3)\n"
        "assert r.mask.shape == (64, 80)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_runtime_serves_without_torch_or_transformers(tiny_bundle):
    serves_without_torch(tiny_bundle)


def test_runtime_sources_import_no_torch_nor_engines():
    """Every source of runtime/, its backend folders included; engines/ may import runtime/, never the reverse."""
    from pathlib import Path

    import cseg.runtime

    sources = list(Path(cseg.runtime.__file__).parent.rglob("*.py"))
    assert {"host", "onnxruntime", "tensorrt", "cuda"} <= {path.parent.name for path in sources}
    for path in sources:
        text = path.read_text()
        assert "import torch" not in text and "import transformers" not in text, path
        assert "cseg.engines" not in text and "from cseg import engines" not in text, path


def test_cli_segment_with_a_bundle(tiny_bundle, tmp_path):
    overlay = tmp_path / "overlay.png"
    run = subprocess.run(
        [sys.executable, "-m", "cseg.cli", "segment", "--bundle", str(tiny_bundle), "sample:chelsea", "cat",
         "--out", str(overlay), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(run.stdout)
    assert result["route"] in ("shortcut", "full") and overlay.is_file()
    assert {"sam3_vision", "sam3_decoder"} <= set(result["timings_ms"])
    run = subprocess.run([sys.executable, "-m", "cseg.cli", "segment", "sample:chelsea", "cat"], capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 2 and "--bundle" in run.stderr


def test_documented_conversions_and_refusals_keep_the_runtime_serving(runtime, photo, tmp_path):
    """Every bad input gets InvalidInputError (or a documented conversion); the Runtime keeps serving after it."""
    from PIL import Image

    before = runtime.segment(photo, "astronaut")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(photo).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    refused = [
        (np.zeros((1, 1, 3), np.uint8), "1x1"),
        (np.zeros((8, 8), np.uint16), "dtype uint16"),
        (Image.new("I;16", (8, 8)), "mode 'I;16'"),
        (np.zeros((8, 8, 3), np.float64), "dtype float64"),
        (np.zeros((8, 8, 4), np.uint8), "alpha"),
        (str(truncated), "not a readable image"),
        (str(not_image), "not a readable image"),
        (np.zeros((8, 20000, 3), np.uint8), "20000x8"),
    ]
    for image, message in refused:
        with pytest.raises(InvalidInputError, match=message):
            runtime.segment(image, "astronaut")
    with pytest.raises(InvalidInputError, match="2001 characters"):
        runtime.segment(photo, "x" * 2001)
    converted = runtime.segment(Image.fromarray(photo).convert("RGBA"), "astronaut")  # PIL RGBA: alpha dropped
    assert np.array_equal(converted.mask, before.mask)
    after = runtime.segment(photo, "astronaut")
    assert np.array_equal(after.mask, before.mask) and after.presence == before.presence


def test_large_frames_give_full_size_masks(runtime):
    frame = np.random.default_rng(0).integers(0, 255, (6000, 8000, 3), dtype=np.uint8)
    result = runtime.segment(frame, "astronaut", route="shortcut")
    assert result.mask.shape == (6000, 8000) and result.instances.masks.shape[1:] == (6000, 8000)


def test_missing_manifest_keys_are_named(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["generation"]["eos_token_ids"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="generation.*eos_token_ids"):
        Runtime.open(copy)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 1e6


@pytest.mark.parametrize("warm, calls, bound_mb", [(10, 40, 30), pytest.param(20, 200, 50, marks=pytest.mark.slow)])
def test_resident_memory_is_flat_over_many_calls(runtime, warm, calls, bound_mb):
    """Bound: after the warm-up calls, the calls may add at most `bound_mb` (allocator noise, not a leak: one frame's
    1008x1008 float maps kept per call would add 4 MB each). 40 calls in the default suite (~25 s), 200 in the slow
    one (~2 min)."""
    frame = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for _ in range(warm):
        runtime.segment(frame, "helmet", route="shortcut")
    start = _rss_mb()
    for i in range(calls):
        runtime.segment(frame, f"helmet {i % 3}", route="shortcut")
    assert _rss_mb() - start < bound_mb
