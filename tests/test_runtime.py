"""The torch-free runtime: end-to-end parity with the PyTorch reference, bundle checks, bad input, no torch."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cseg.errors import BundleError, InvalidInputError
from cseg.images import load_image
from cseg.runtime import Runtime

# Agreement required between the runtime (ONNX Runtime fp32) and the reference (PyTorch fp32) on the same input:
# identical route, generated text and answer; presence within 1e-5; at most 0.01% of mask pixels differing (only
# pixels whose logit is within ~1e-5 of 0 can flip, see test_bilinear_resize_matches_torch).
MAX_PRESENCE_DELTA = 1e-5
MAX_MASK_DIFF = 1e-4


def _assert_same(got, want):
    assert (got.route, got.route_by) == (want.route, want.route_by)
    assert got.text == want.text and got.answer == want.answer and got.bbox == want.bbox
    assert abs(got.presence - want.presence) <= MAX_PRESENCE_DELTA
    assert np.mean(got.mask != want.mask) <= MAX_MASK_DIFF
    assert len(got.instances) == len(want.instances)
    if want.route_score is None:
        assert got.route_score is None
    else:
        assert abs(got.route_score - want.route_score) <= MAX_PRESENCE_DELTA


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


def test_demonstrations_and_bgr_frames_match_the_reference(runtime, reference, photo):
    from skimage import data

    demos = [(data.coffee(), [[100, 20, 400, 300]])]
    kwargs = {"route": "full", "max_new_tokens": 8}
    _assert_same(runtime.segment(photo[:, :, ::-1].copy(), "cup", demos, bgr=True, **kwargs),
                 reference.segment(photo, "cup", demos, **kwargs))  # fmt: skip
    many = [(data.coffee(), []), (data.chelsea(), [[10, 10, 100, 100]])]
    _assert_same(runtime.segment(photo, "cat", many, **kwargs), reference.segment(photo, "cat", many, **kwargs))


def test_concept_tokens_and_decode_states_match_the_reference(runtime, reference, photo):
    image = load_image(photo)
    state = runtime.image_state(image, {})
    got = runtime.reason(state, "helmet", [], 9, {})
    want = reference.reason(reference.image_state(image, {}), "helmet", [], 9, {})
    assert got.generated_tokens == want.generated_tokens == 9
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
    with pytest.raises(BundleError, match="tensorrt backend"):
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
    with pytest.raises(BundleError, match="graph_optimization_level"):
        Runtime.open(tiny_bundle, verify=False, session={"graph_optimization_level": "fast"})


def test_runtime_serves_without_torch_or_transformers(tiny_bundle):
    code = (
        "import sys, numpy as np\n"
        "from cseg import Runtime\n"
        f"rt = Runtime.open({str(tiny_bundle)!r})\n"
        "image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)\n"
        "r = rt.segment(image, 'helmet', route='full', max_new_tokens=3)\n"
        "assert r.mask.shape == (64, 80)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_runtime_sources_import_no_torch():
    from pathlib import Path

    import cseg.runtime

    for path in Path(cseg.runtime.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "import transformers" not in text, path


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
