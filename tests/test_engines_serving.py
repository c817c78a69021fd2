"""GPU-target bundles, serving side: TensorRT engines' bindings and buffers, loading plans, refusing foreign
engines, the static decode cache, and the TensorRT backend on tests/tensorrt_double.py's stand-in engines.

The stand-in needs no GPU for its bookkeeping; capture and serving on it need a CUDA GPU (skipped, with the reason,
elsewhere). Export side (conversion, recipe, `cseg build`): tests/test_engines.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cseg.bundle.schema import read_manifest
from cseg.errors import BundleError, InvalidInputError, ProfileError
from cseg.eval.metrics import iou
from cseg.images import load_frame
from cseg.runtime import Runtime
from cseg.runtime.cuda.graphs import why_unavailable


def _double_engine(bundle, key: str, tmp_path):
    """tests/tensorrt_double.py's engine of `key` with the recipe's profiles (its bookkeeping needs no GPU)."""
    import tensorrt_double

    manifest = read_manifest(bundle)
    recipe = json.loads((bundle / manifest["recipe"]).read_text())
    plan = tmp_path / f"{key}.plan"
    tensorrt_double.write_plan(plan, bundle / manifest["graphs"][key]["file"], recipe["graphs"][key]["profiles"])
    return tensorrt_double.Runtime(None).deserialize_cuda_engine(plan.read_bytes())


def test_bindings_tensorrt_refuses_raise_naming_the_tensor_the_shape_and_the_profile_range(orin_bundle, tmp_path):
    from cseg.runtime.tensorrt.io import profile_range, set_address, set_input_shape

    engine = _double_engine(orin_bundle, "vlm_decoder", tmp_path)
    context = engine.create_execution_context()
    assert context.set_optimization_profile_async(0, None)
    assert profile_range(engine, "input_ids", 0) == ((1, 1), (1, 640), (1, 2048))  # the engine's own range
    assert context.get_tensor_shape("input_ids") == (1, -1) and -1 in context.get_tensor_shape("hidden_states")
    set_input_shape(context, engine, "vlm_decoder", (0, "prefill"), "input_ids", (1, 2048))
    with pytest.raises(ProfileError, match=r"engine vlm_decoder: input_ids of shape 1x2049 is outside profile "
                                           r"prefill, which takes 1x1 \.\. 1x2048"):  # fmt: skip
        set_input_shape(context, engine, "vlm_decoder", (0, "prefill"), "input_ids", (1, 2049))
    with pytest.raises(ProfileError, match=r"input_ids of shape 2049 is outside"):  # another rank
        set_input_shape(context, engine, "vlm_decoder", (0, "prefill"), "input_ids", (2049,))
    with pytest.raises(ProfileError, match="engine vlm_decoder: TensorRT refused the device address of logits"):
        set_address(context, "vlm_decoder", "logits", 0)
    assert not context.execute_async_v3(None)  # addresses and shapes missing: refused before anything is enqueued


def test_buffers_are_sized_from_the_engine_and_io_numpy_cannot_hold_is_refused(orin_bundle, tmp_path, monkeypatch):
    """An engine built by hand (`cseg build --register`) may take more than the recipe says: buffers follow the
    engine. Outputs of data-dependent shape and I/O types numpy cannot hold are refused with the engine's name."""
    import tensorrt_double
    from cseg.runtime.tensorrt.io import io_dtype, largest_shapes

    manifest = read_manifest(orin_bundle)
    recipe = json.loads((orin_bundle / manifest["recipe"]).read_text())["graphs"]["sam3_decoder"]
    queries = manifest["model"]["num_queries"]
    recipe["profiles"][0]["shapes"]["concept_tokens"]["max"][1] = queries + 3  # what the hand-built engine takes
    plan = tmp_path / "sam3_decoder.plan"
    tensorrt_double.write_plan(plan, orin_bundle / manifest["graphs"]["sam3_decoder"]["file"], recipe["profiles"])
    engine = tensorrt_double.Runtime(None).deserialize_cuda_engine(plan.read_bytes())
    inputs = {n for n in engine.inputs}
    context = engine.create_execution_context()
    shapes = largest_shapes(engine, "sam3_decoder", {"default": context}, inputs, engine.outputs)
    assert shapes["concept_tokens"][1] == queries + 3 and set(shapes) == inputs | set(engine.outputs)
    assert io_dtype(tensorrt_double, engine, "sam3_decoder", "concept_tokens") == np.float32

    monkeypatch.setattr(context, "get_tensor_shape", lambda name: (-1, 4))  # TensorRT's answer for e.g. NonZero
    with pytest.raises(BundleError, match=r"engine sam3_decoder: output \w+ has a data-dependent shape \(-1x4\)"):
        largest_shapes(engine, "sam3_decoder", {"default": context}, inputs, engine.outputs)
    monkeypatch.setattr(engine, "get_tensor_dtype", lambda name: tensorrt_double.DataType.BF16)
    with pytest.raises(BundleError, match=r"engine sam3_decoder: concept_tokens is DataType.BF16, which numpy cannot"):
        io_dtype(tensorrt_double, engine, "sam3_decoder", "concept_tokens")


def test_a_prompt_longer_than_the_decoders_prefill_is_refused_before_it_runs(runtime, photo, monkeypatch):
    """On TensorRT the prefill profile (2048 tokens) is shorter than max_length (2816): such prompts are refused
    with a message, not left to fail as an opaque enqueue error."""

    def never(*args):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(runtime.decoder, "max_prompt", 16)
    monkeypatch.setattr(runtime.decoder, "step", never)
    with pytest.raises(InvalidInputError, match=r"the prompt is \d+ tokens; the decoder's prefill takes at most 16"):
        runtime.segment(photo, "astronaut", route="full", max_new_tokens=4)


def test_tensorrt_older_than_10_is_refused_at_import(monkeypatch):
    import sys
    import types

    from cseg.errors import EngineError
    from cseg.runtime.tensorrt.engine import tensorrt_module

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.2"))
    with pytest.raises(EngineError, match=r"TensorRT 8.6.2 is too old: cseg needs TensorRT 10 or later"):
        tensorrt_module()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert tensorrt_module().__version__ == "10.3.0"


def test_plans_are_loaded_from_a_memory_map_and_foreign_plans_are_refused(orin_bundle, tmp_path):
    import mmap

    import tensorrt_double
    from cseg.runtime.tensorrt.engine import load_engine

    manifest = read_manifest(orin_bundle)
    onnx_path = orin_bundle / manifest["graphs"]["concept_head"]["file"]
    given = []

    class Recording(tensorrt_double.Runtime):
        def deserialize_cuda_engine(self, plan):
            given.append(type(plan))
            return super().deserialize_cuda_engine(plan)

    plan = tmp_path / "concept_head.plan"
    tensorrt_double.write_plan(plan, onnx_path, [])
    assert load_engine(Recording(None), plan, tensorrt_double.__version__).num_io_tensors == 2
    assert given == [mmap.mmap]  # not a bytes copy of the file
    for other in ({"version": "10.3.0"}, {"device": {"gpu": "Orin (nvgpu)", "compute_capability": [8, 7]}}):
        tensorrt_double.write_plan(plan, onnx_path, [], **other)  # the double refuses it as TensorRT does: None
        with pytest.raises(BundleError, match=r"TensorRT 10.16.0-double cannot load concept_head.plan: re-run `cseg build"):
            load_engine(Recording(None), plan, tensorrt_double.__version__)


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


def test_engines_of_another_gpu_or_tensorrt_version_are_refused(orin_bundle):
    from cseg.runtime.tensorrt.engine import check_engines

    manifest = read_manifest(orin_bundle)
    agx = {"gpu": "Orin (nvgpu)", "compute_capability": [8, 7], "sm_count": 16, "memory_gb": 62.8}
    manifest["tensorrt"] = {"version": "10.3.0", **agx, "engines": {}}
    check_engines(orin_bundle, manifest, "10.3.0", agx)
    check_engines(orin_bundle, manifest, "10.3.0", {**agx, "memory_gb": 62.6})  # what the OS reports may move a little
    with pytest.raises(BundleError, match=r"built with TensorRT 10.3.0, this machine has TensorRT 10.16.0: re-run `cseg build"):
        check_engines(orin_bundle, manifest, "10.16.0", agx)
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0], "sm_count": 132, "memory_gb": 85.0}
    with pytest.raises(BundleError, match=r"built for Orin \(nvgpu\) \(sm_87, 16 SMs, 62.8 GB\), this machine has NVIDIA H100 .*re-run"):
        check_engines(orin_bundle, manifest, "10.3.0", h100)
    # the Orin modules share name and compute capability: an AGX-built engine is refused on an NX
    nx = {**agx, "sm_count": 8, "memory_gb": 15.3}
    with pytest.raises(BundleError, match=r"this machine has Orin \(nvgpu\) \(sm_87, 8 SMs, 15.3 GB\)"):
        check_engines(orin_bundle, manifest, "10.3.0", nx)
    with pytest.raises(BundleError, match=r"built for Orin \(nvgpu\) \(sm_87, unknown SMs"):  # an older cseg's record
        check_engines(orin_bundle, {**manifest, "tensorrt": {"version": "10.3.0", "gpu": "Orin (nvgpu)",
                                                             "compute_capability": [8, 7]}}, "10.3.0", agx)  # fmt: skip


def test_decode_step_against_the_whole_static_cache_equals_the_growing_one(orin_bundle, photo):
    """The TensorRT decode step runs with past = the whole cache (unfilled positions masked, holding finite
    garbage) so its shapes never change; on the same exported decoder graph (a GPU target's, sequence-major and
    fp16, run here by ONNX Runtime on the CPU) it must give what the growing cache gives."""
    from cseg.runtime.host.decoder import HostKVCache, static_decode_mask

    runtime = Runtime.open(orin_bundle, device="cpu")
    decoder = runtime.decoder
    assert decoder.layout == "sequence_major"
    state = runtime.image_state(load_frame(photo), {})
    pending = runtime.prefill(state, "astronaut", [], max_new_tokens=4, timings={})
    prefilled = pending.prefilled
    cache, start = prefilled.cache, prefilled.cache.length
    token = np.array([[int(np.argmax(prefilled.logits[0, -1]))]], np.int64)
    position = np.full((3, 1, 1), prefilled.next_position, np.int64)
    no_image = np.zeros((1, prefilled.embed_size), np.float32)
    mask = prefilled.mask.copy()
    mask[0, start] = 1

    capacity = cache.capacity + 5
    full = HostKVCache(len(decoder.past_names), capacity, decoder.kv_heads, decoder.head_dim, decoder.kv_dtype)
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
    # masking does not protect against NaN garbage (0 x NaN): why the device KV cache is allocated zeroed
    for buffer in full.buffers:
        buffer[:, start:] = np.nan
    poisoned = runtime.graphs["vlm_decoder"].run({**feed, "attention_mask": static_decode_mask(mask, start, capacity),
                                                  **dict(zip(names, full.buffers))})  # fmt: skip
    assert not np.isfinite(poisoned["logits"]).all()


def _double_bundle(orin_bundle, tmp_path, monkeypatch):
    """A copy of the orin bundle whose "engines" are tests/tensorrt_double.py plans, with that double as tensorrt."""
    import sys

    from cseg.bundle.schema import MANIFEST_NAME, file_sha256, hash_files
    import tensorrt_double

    bundle = tmp_path / "bundle"
    shutil.copytree(orin_bundle, bundle)
    manifest = read_manifest(bundle)
    recipe = json.loads((bundle / manifest["recipe"]).read_text())
    (bundle / "engines").mkdir()
    engines = {}
    for key, graph in manifest["graphs"].items():
        plan = bundle / "engines" / f"{key}.plan"
        tensorrt_double.write_plan(plan, bundle / graph["file"], recipe["graphs"][key]["profiles"])
        engines[key] = {"file": f"engines/{key}.plan", "sha256": file_sha256(plan), "cache_key": "double"}
    identity = tensorrt_double.current_device()
    manifest["tensorrt"] = {"version": tensorrt_double.__version__, **identity, "engines": engines, "built": "-"}
    manifest["files"] = hash_files(bundle)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_double)
    return bundle


@pytest.mark.skipif(why_unavailable() is not None, reason=f"needs a CUDA GPU: {why_unavailable()}")
@pytest.mark.parametrize("capture", ["succeeds", "fails"])
def test_tensorrt_backend_on_a_tensorrt_double_serves_what_onnx_runtime_serves(orin_bundle, photo, tmp_path,
                                                                                monkeypatch, capture):  # fmt: skip
    """cseg's TensorRT runtime (device buffers, profiles, the device KV cache, static decode steps, CUDA graphs
    captured and replayed) driven by tests/tensorrt_double.py, whose engines run the same ONNX graphs with ONNX
    Runtime: it must give what ONNX Runtime gives on the CPU, whether captures succeed or the engine refuses to be
    captured (execute_async_v3 returning False while capturing: plain enqueueing, one warning per shape)."""
    import warnings

    import tensorrt_double

    bundle = _double_bundle(orin_bundle, tmp_path, monkeypatch)
    monkeypatch.setattr(tensorrt_double, "FAIL_WHILE_CAPTURING", capture == "fails")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = Runtime.open(bundle)
        assert served.backend == "tensorrt"
        onnx_cpu = Runtime.open(bundle, device="cpu")
        for route in ("shortcut", "full", "full"):  # the second full path replays what the first captured
            want = onnx_cpu.segment(photo, "astronaut", route=route, max_new_tokens=8)
            got = served.segment(photo, "astronaut", route=route, max_new_tokens=8)
            assert got.token_ids == want.token_ids, route
            assert iou(want.mask, got.mask) >= 0.999 and abs(want.presence - got.presence) <= 1e-4, route
            np.testing.assert_allclose(got.instances.scores, want.instances.scores, atol=1e-4)
        # the rule path: the whole frame on the device (one graph per input size)
        rule = onnx_cpu.induce([(photo, [[40, 30, 300, 260]])], "astronaut", max_new_tokens=8)
        for frame, bgr in ((photo, False), (photo[::-1, :, ::-1], True), (photo[:301, :203], False), (photo, False)):
            want, got = onnx_cpu.apply(rule, frame, bgr=bgr), served.apply(rule, frame, bgr=bgr)
            assert iou(want.mask, got.mask) >= 0.999 and abs(want.presence - got.presence) <= 1e-4
            assert got.instances.masks.shape == want.instances.masks.shape
            assert all(iou(a, b) >= 0.999 for a, b in zip(want.instances.masks, got.instances.masks))
            assert "sam3_frame_graph" in got.timings
    failed = [str(w.message) for w in caught if "CUDA-graph capture failed" in str(w.message)]
    if capture == "succeeds":
        assert not failed
    else:
        assert failed and all("TensorRT could not enqueue" in m for m in failed), failed
