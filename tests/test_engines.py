"""GPU-target bundles: the per-target ONNX, the build recipe, `cseg build`, and serving from TensorRT engines.

Everything up to the engines runs here on the CPU (the converted graphs are ONNX that ONNX Runtime also runs). The
engine build and the TensorRT runtime need TensorRT and a GPU: those tests are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from cseg.errors import BundleError
from cseg.images import load_image
from cseg.bundle_files import verify_files
from cseg.manifest import read_manifest
from cseg.metrics import iou
from cseg.runtime import Runtime
from cseg.runtime.cuda_graphs import why_unavailable


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"TensorRT is not installed here ({exc})"
    return why_unavailable()


NO_TENSORRT = _tensorrt_missing()


def test_every_graph_is_converted_for_tensorrt(orin_bundle):
    manifest = read_manifest(orin_bundle)
    verify_files(orin_bundle, manifest)
    shipped = {key: graph["precision"] for key, graph in manifest["graphs"].items()}
    assert shipped == {"vlm_vision": "int8", "vlm_decoder": "int4", "concept_head": "fp16", "sam3_vision": "int8",
                       "sam3_text": "int8", "sam3_decoder": "fp16"}, manifest["quantization"]["graphs"]  # fmt: skip
    assert {graph["backend"] for graph in manifest["graphs"].values()} == {"tensorrt"}
    for key, graph in manifest["graphs"].items():
        model = onnx.load(str(orin_bundle / graph["file"]))
        ops = {node.op_type for node in model.graph.node}
        weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
        assert "MatMulNBits" not in ops, key  # an ORT-only op TensorRT cannot parse
        assert not any(t.data_type == onnx.TensorProto.FLOAT and t.dims[0] * t.dims[1] > 4096 for t in weights
                       if t.name not in _kept_fp32(model)), f"{key} still has fp32 weights"  # fmt: skip
        if graph["precision"] == "int4":
            assert any(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
        if graph["precision"] == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    kv = {t["name"]: t["dtype"] for t in manifest["graphs"]["vlm_decoder"]["inputs"] + manifest["graphs"]["vlm_decoder"]["outputs"]}
    assert kv["past_key_0"] == kv["new_value_0"] == "float16" and kv["image_embeds"] == "float32"
    e2e = manifest["quantization"]["end_to_end"]
    assert e2e["samples"] >= 1 and 0.0 <= e2e["mask_iou_min"] <= 1.0


def _kept_fp32(model) -> set[str]:
    """Initializers of nodes the spec keeps in fp32 (norm weights etc. feed those nodes only)."""
    return {i for n in model.graph.node if n.op_type not in ("MatMul", "Gemm", "Conv") for i in n.input}


def test_the_recipe_has_a_profile_for_every_dynamic_input_and_a_static_decode_step(orin_bundle):
    manifest = read_manifest(orin_bundle)
    recipe = json.loads((orin_bundle / manifest["recipe"]).read_text())
    total = manifest["target_profile"]["shapes"]["total_tokens"]
    for key, graph in manifest["graphs"].items():
        dynamic = {t["name"] for t in graph["inputs"] if any(isinstance(d, str) for d in t["shape"])}
        for profile in recipe["graphs"][key]["profiles"]:
            assert set(profile["shapes"]) == dynamic, (key, profile["name"])
            for shapes in profile["shapes"].values():
                assert all(a <= b <= c for a, b, c in zip(shapes["min"], shapes["opt"], shapes["max"]))
        assert bool(recipe["graphs"][key]["profiles"]) == bool(dynamic)
    decode = next(p for p in recipe["graphs"]["vlm_decoder"]["profiles"] if p["name"] == "decode")
    assert all(s["min"] == s["opt"] == s["max"] for s in decode["shapes"].values())  # captured once, replayed
    assert decode["shapes"]["past_key_0"]["max"][1] == total and decode["shapes"]["attention_mask"]["max"] == [1, total + 1]
    concepts = recipe["graphs"]["sam3_decoder"]["profiles"][0]["shapes"]["concept_tokens"]
    assert concepts["min"][1] == 0 and concepts["max"][1] == manifest["model"]["num_queries"]
    line = recipe["trtexec"]["vlm_decoder"]
    assert line.startswith("trtexec --onnx=graphs/vlm_decoder.int4.onnx --saveEngine=engines/vlm_decoder.plan")
    assert "--stronglyTyped" in line and line.count("--minShapes=") == 2 and "--timingCacheFile=" in line
    script = (orin_bundle / "build_engines.sh").read_text()
    assert all(command in script for command in recipe["trtexec"].values())
    assert manifest["footprint"]["fits"] and manifest["target_profile"]["device"]["arch"] == "sm_87"
    from cseg.bundle_report import describe

    report = describe(orin_bundle)
    assert "Jetson Orin NX (sm_87, 16 GB); estimated footprint" in report and "engines     not built yet" in report


def test_a_gpu_bundle_without_engines_says_to_build_them_and_serves_on_the_cpu(orin_bundle, tiny_bundle, photo):
    with pytest.raises(BundleError, match="no TensorRT engines yet: run `cseg build"):
        Runtime.open(orin_bundle)
    converted = Runtime.open(orin_bundle, device="cpu")
    fp32 = Runtime.open(tiny_bundle)
    for route in ("shortcut", "full"):
        want = fp32.segment(photo, "astronaut", route=route, max_new_tokens=8)
        got = converted.segment(photo, "astronaut", route=route, max_new_tokens=8)
        assert got.mask.shape == want.mask.shape and got.route == route
        # random-init weights: int4/int8/fp16 move the mask a little (the gate and the manifest table hold the numbers)
        assert iou(want.mask, got.mask) > 0.8 and abs(want.presence - got.presence) < 0.05


def test_cseg_build_without_tensorrt_exits_with_a_clear_message(orin_bundle, capsys):
    if NO_TENSORRT is None:
        pytest.skip("TensorRT is installed here: the refusal cannot happen")
    from cseg.cli import main

    assert main(["build", str(orin_bundle)]) == 3
    error = capsys.readouterr().err
    assert "cseg build: error: TensorRT is not available on this machine" in error and "JetPack" in error
    assert "Traceback" not in error


def test_engines_of_another_gpu_or_tensorrt_version_are_refused(orin_bundle):
    from cseg.runtime.tensorrt_graphs import check_engines

    manifest = read_manifest(orin_bundle)
    manifest["tensorrt"] = {"version": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": [8, 7], "engines": {}}
    orin = {"gpu": "Orin (nvgpu)", "compute_capability": [8, 7]}
    check_engines(orin_bundle, manifest, "10.3.0", orin)
    with pytest.raises(BundleError, match=r"built with TensorRT 10.3.0, this machine has TensorRT 10.16.0: re-run `cseg build"):
        check_engines(orin_bundle, manifest, "10.16.0", orin)
    with pytest.raises(BundleError, match=r"built for Orin \(nvgpu\) \(sm_87\), this machine has NVIDIA H100 .*re-run"):
        check_engines(orin_bundle, manifest, "10.3.0", {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]})


def test_decode_step_against_the_whole_static_cache_equals_the_growing_one(runtime, photo):
    """The TensorRT decode step runs with past = the whole cache (unfilled positions masked, holding garbage) so its
    shapes never change; on the same exported decoder graph it must give what the growing cache gives."""
    from cseg.runtime.generation import KVCache, static_decode_mask

    decoder = runtime.decoder
    state = runtime.image_state(load_image(photo), {})
    pending = runtime.prefill(state, "astronaut", [], max_new_tokens=4, timings={})
    prefilled = pending.prefilled
    cache, start = prefilled.cache, prefilled.cache.length
    token = np.array([[int(np.argmax(prefilled.logits[0, -1]))]], np.int64)
    position = np.full((3, 1, 1), prefilled.next_position, np.int64)
    no_image = np.zeros((1, prefilled.embed_size), np.float32)
    mask = prefilled.mask.copy()
    mask[0, start] = 1

    capacity = cache.capacity + 5
    full = KVCache(len(decoder.past_names), capacity, decoder.kv_heads, decoder.head_dim)
    rng = np.random.default_rng(0)
    for src, dst in zip(cache.buffers, full.buffers):
        dst[:] = rng.normal(size=dst.shape) * 100  # garbage where nothing was written yet
        dst[:, :start] = src[:, :start]
    feed = {"input_ids": token, "image_embeds": no_image, "position_ids": position}
    names = decoder.past_names
    static = runtime.graphs["vlm_decoder"].run({**feed, "attention_mask": static_decode_mask(mask, start, capacity),
                                                **dict(zip(names, full.buffers))})  # fmt: skip
    logits, hidden = decoder.step(cache, token, no_image, position, mask[:, : start + 1])
    np.testing.assert_allclose(static["logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(static["hidden_states"], hidden, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(static["new_key_0"], cache.buffers[0][:, start : start + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and a GPU: {NO_TENSORRT}")
def test_engines_build_once_and_serve_what_the_onnx_graphs_serve(tiny_checkpoint, calibration_folder, photo, tmp_path):
    from cseg.engines.build import build_bundle
    from cseg.export.bundle import export_bundle
    from cseg.runtime.cuda_graphs import device_identity

    target = {(8, 7): "orin-agx", (8, 9): "ada", (9, 0): "hopper"}.get(tuple(device_identity()["compute_capability"]))
    if target is None:
        pytest.skip(f"no cseg target for {device_identity()}")
    bundle = export_bundle(*tiny_checkpoint, tmp_path / "bundle", target=target, precision="fp16",
                           calib=calibration_folder, progress=False, report=lambda line: None)  # fmt: skip
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    lines = []
    build_bundle(bundle, cache=tmp_path / "cache", progress=False, report=lines.append)
    build_bundle(copy, cache=tmp_path / "cache", progress=False, report=lines.append)
    assert sum("from the engine cache" in line for line in lines) == 6
    engines, onnx_cpu = Runtime.open(bundle), Runtime.open(bundle, device="cpu")
    assert engines.backend == "tensorrt"
    for route in ("shortcut", "full"):
        want = onnx_cpu.segment(photo, "astronaut", route=route, max_new_tokens=8)
        got = engines.segment(photo, "astronaut", route=route, max_new_tokens=8)
        assert got.token_ids == want.token_ids
        assert iou(want.mask, got.mask) >= 0.98 and abs(want.presence - got.presence) <= 1e-2


@pytest.mark.skipif(why_unavailable() is not None, reason=f"needs a CUDA GPU: {why_unavailable()}")
def test_tensorrt_backend_on_a_tensorrt_double_serves_what_onnx_runtime_serves(orin_bundle, photo, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    """cseg's TensorRT runtime (device buffers, profiles, the device KV cache, static decode steps, capture attempts)
    driven by tests/tensorrt_double.py, whose engines run the same ONNX graphs with ONNX Runtime: it must give what
    ONNX Runtime gives on the CPU."""
    import sys
    import warnings

    from cseg.manifest import MANIFEST_NAME, file_sha256, hash_files
    from cseg.runtime.cuda_graphs import device_identity
    import tensorrt_double

    bundle = tmp_path / "bundle"
    shutil.copytree(orin_bundle, bundle)
    manifest = read_manifest(bundle)
    (bundle / "engines").mkdir()
    engines = {}
    for key, graph in manifest["graphs"].items():
        plan = bundle / "engines" / f"{key}.plan"
        plan.write_text(json.dumps({"onnx": str(bundle / graph["file"])}))
        engines[key] = {"file": f"engines/{key}.plan", "sha256": file_sha256(plan), "cache_key": "double"}
    manifest["tensorrt"] = {"version": tensorrt_double.__version__, **device_identity(), "engines": engines, "built": "-"}
    manifest["files"] = hash_files(bundle)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_double)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = Runtime.open(bundle)
        assert served.backend == "tensorrt"
        onnx_cpu = Runtime.open(bundle, device="cpu")
        for route in ("shortcut", "full"):
            want = onnx_cpu.segment(photo, "astronaut", route=route, max_new_tokens=8)
            got = served.segment(photo, "astronaut", route=route, max_new_tokens=8)
            assert got.token_ids == want.token_ids, route
            assert iou(want.mask, got.mask) >= 0.999 and abs(want.presence - got.presence) <= 1e-4, route
            np.testing.assert_allclose(got.instances.scores, want.instances.scores, atol=1e-4)
    assert any("CUDA-graph capture failed" in str(w.message) for w in caught)  # the double cannot be captured
