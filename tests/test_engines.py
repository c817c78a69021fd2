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

from cseg.bundle_files import verify_files
from cseg.errors import BundleError, InvalidInputError, ProfileError
from cseg.images import load_frame
from cseg.manifest import read_manifest
from cseg.metrics import iou
from cseg.runtime import Runtime
from cseg.runtime.cuda.graphs import why_unavailable

import trtexec_rules


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
    assert "--stronglyTyped" in line and "--timingCacheFile=" in line
    script = (orin_bundle / "build_engines.sh").read_text()
    assert all(command in script for command in recipe["trtexec"].values())
    # what trtexec's own option rules make of every line: the recipe's profiles, in order
    parsed = dict(zip(recipe["trtexec"], trtexec_rules.parse_script(script)))
    assert parsed.keys() == recipe["graphs"].keys()
    for key, graph in recipe["graphs"].items():
        assert parsed[key]["profiles"] == [p["shapes"] for p in graph["profiles"]], key
        assert parsed[key]["options"]["--saveEngine"] == [graph["engine"]]
    assert manifest["footprint"]["fits"] and manifest["target_profile"]["device"]["arch"] == "sm_87"
    from cseg.bundle_report import describe

    report = describe(orin_bundle)
    assert "Jetson Orin NX (sm_87, 16 GB); estimated footprint" in report and "engines     not built yet" in report
    # the converted graphs, int4 DequantizeLinear and QDQ included, use only what both JetPacks' TensorRT document
    support = manifest["tensorrt_support"]
    assert support["versions"] == {"10.3": "10.3", "10.16": "10.15"}
    assert support["graphs"].keys() == manifest["graphs"].keys()
    for key, graph in support["graphs"].items():
        assert graph["unsupported"] == {"10.3": [], "10.16": []} and graph["ops"] > 0, key
    assert support["graphs"]["vlm_decoder"]["opset"] >= 21 and "INT4" in support["graphs"]["vlm_decoder"]["dtypes"]
    assert report.count(": all supported") == len(manifest["graphs"]) and "not a TensorRT parse" in report


def test_trtexec_lines_follow_trtexecs_profile_rule():
    """Two profiles need `--profile=N` before each one's shapes: trtexec refuses repeated shape options without it."""
    from cseg.engines.recipe import trtexec_command

    def shapes(low, high):
        return {"ids": {"min": [1, low], "opt": [1, low], "max": [1, high]}}

    graph = {"onnx": "graphs/d.onnx", "engine": "engines/d.plan", "workspace_mb": 512,
             "profiles": [{"name": "prefill", "shapes": shapes(1, 2048)}, {"name": "decode", "shapes": shapes(1, 1)}]}
    line = trtexec_command("d", graph, "engines/timing.cache")
    assert trtexec_rules.parse(line)["profiles"] == [shapes(1, 2048), shapes(1, 1)]
    assert line.index("--profile=0") < line.index("--minShapes=ids:1x1") < line.index("--profile=1")
    without = line.replace("--profile=0 ", "").replace("--profile=1 ", "")
    with pytest.raises(trtexec_rules.TrtexecError, match="without --profile are not allowed"):
        trtexec_rules.parse(without)
    with pytest.raises(trtexec_rules.TrtexecError, match="index cannot be the same"):
        trtexec_rules.parse(line.replace("--profile=1", "--profile=0"))
    with pytest.raises(trtexec_rules.TrtexecError, match="missing shape spec at profile index 1"):
        trtexec_rules.parse(line.replace("--profile=1", "--profile=2"))
    with pytest.raises(trtexec_rules.TrtexecError, match="profile index 1"):  # shapes not right behind --profile
        trtexec_rules.parse(line.replace("--profile=1 ", "--profile=1 --stronglyTyped "))
    with pytest.raises(trtexec_rules.TrtexecError, match="without --profile"):  # a shape option after the sets
        trtexec_rules.parse(line + " --stronglyTyped --maxShapes=ids:1x4")


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


class _Builder:
    """Just enough of TensorRT's builder for engines/build.py's checks of what TensorRT returns."""

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

    class Config:
        def create_timing_cache(self, data):
            return _Builder.Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            return cache.data != b"another GPU"  # TensorRT: False for a cache made elsewhere

        def set_memory_pool_limit(self, pool, size):
            pass

        def add_optimization_profile(self, profile):
            return -1  # TensorRT: an invalid profile

    def __init__(self, logger):
        pass

    def create_builder_config(self):
        return _Builder.Config()

    def create_network(self, flags):
        return object()

    def create_optimization_profile(self):
        return type("Profile", (), {"set_shape": lambda self, *args: None})()


def _fake_trt():
    import types

    parser = type("Parser", (), {"__init__": lambda self, *a: None, "parse_from_file": lambda self, path: True})
    import tensorrt_double

    return types.SimpleNamespace(Logger=tensorrt_double.Logger, Builder=_Builder, OnnxParser=parser,
                                 NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
                                 MemoryPoolType=types.SimpleNamespace(WORKSPACE=0))  # fmt: skip


def test_a_stale_timing_cache_is_replaced_and_a_refused_profile_is_named(tmp_path):
    from cseg.engines.build import _Builder as Build
    from cseg.errors import EngineError

    lines = []
    builder = Build(_fake_trt(), b"another GPU", lines.append)
    assert builder.cache.data == b"" and "made on another GPU or TensorRT version: starting a new one" in lines[0]
    graph = {"workspace_mb": 64, "profiles": [{"name": "prefill", "shapes": {"ids": {"min": [1, 1], "opt": [1, 8],
                                                                                    "max": [1, 4]}}}]}  # fmt: skip
    with pytest.raises(EngineError, match=r"d: TensorRT refused optimization profile prefill \(ids \[1, 1\] \.\. "
                                          r"\[1, 8\] \.\. \[1, 4\]\)"):  # fmt: skip
        builder.build(tmp_path / "d.onnx", graph, "d", progress=False)


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


def test_the_tensorrt_contexts_share_one_block_of_context_memory():
    """One block, the largest engine's need, for every context (they run one at a time on one stream): the
    decoder's two profiles no longer hold its activations twice."""
    from cseg.runtime.tensorrt.engine import shared_context_memory

    sizes = {"vlm_decoder": 900 << 20, "sam3_vision": 600 << 20, "concept_head": 10 << 20}
    assert shared_context_memory(sizes) == 900 << 20
    assert shared_context_memory({}) == 0


def test_no_dla_and_a_recipe_asking_for_it_is_refused(orin_bundle, tmp_path, monkeypatch):
    """DLA is not used (cseg builds strongly typed networks for the GPU); a hand-edited recipe naming a core is
    refused before anything is built, not silently built for the GPU."""
    import sys

    import tensorrt_double
    from cseg.engines.build import build_bundle
    from cseg.errors import EngineError
    from cseg.manifest import MANIFEST_NAME, hash_files

    bundle = tmp_path / "bundle"
    shutil.copytree(orin_bundle, bundle)
    assert "DLA" not in (bundle / "build_engines.sh").read_text()
    recipe = json.loads((bundle / "recipe.json").read_text())
    assert not any("dla_core" in graph for graph in recipe["graphs"].values())
    recipe["graphs"]["sam3_vision"]["dla_core"] = 0
    (bundle / "recipe.json").write_text(json.dumps(recipe))
    manifest = read_manifest(bundle)
    manifest["files"] = hash_files(bundle)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_double)
    with pytest.raises(EngineError, match=r"asks for DLA cores \({'sam3_vision': 0}\): cseg builds .* GPU only"):
        build_bundle(bundle, cache=tmp_path / "cache", progress=False, report=lambda line: None)


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


def test_cseg_build_without_tensorrt_exits_with_a_clear_message(orin_bundle, capsys):
    if NO_TENSORRT is None:
        pytest.skip("TensorRT is installed here: the refusal cannot happen")
    from cseg.cli import main

    assert main(["build", str(orin_bundle)]) == 3
    error = capsys.readouterr().err
    assert "cseg build: error: TensorRT is not available on this machine" in error and "JetPack" in error
    assert "Traceback" not in error


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


@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and a GPU: {NO_TENSORRT}")
def test_engines_build_once_and_serve_what_the_onnx_graphs_serve(tiny_checkpoint, calibration_folder, photo, tmp_path):
    from cseg.engines.build import build_bundle
    from cseg.export.bundle import export_bundle
    from cseg.runtime.cuda.graphs import device_identity

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


def _double_bundle(orin_bundle, tmp_path, monkeypatch):
    """A copy of the orin bundle whose "engines" are tests/tensorrt_double.py plans, with that double as tensorrt."""
    import sys

    from cseg.manifest import MANIFEST_NAME, file_sha256, hash_files
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
