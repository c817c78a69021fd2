"""GPU-target bundles, export side: the per-target ONNX, the build recipe, trtexec lines and `cseg build`.

Everything up to the engines runs here on the CPU (the converted graphs are ONNX that ONNX Runtime also runs). The
engine build needs TensorRT and a GPU: that test is skipped, with the reason, elsewhere. Serving from engines:
tests/test_engines_serving.py.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from cseg.bundle.schema import read_manifest
from cseg.bundle.verify import verify_files
from cseg.eval.metrics import iou
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
    from cseg.bundle.report import describe

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
    from cseg.bundle.schema import MANIFEST_NAME, hash_files
    from cseg.engines.build import build_bundle
    from cseg.errors import EngineError

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


def test_cseg_build_without_tensorrt_exits_with_a_clear_message(orin_bundle, capsys):
    if NO_TENSORRT is None:
        pytest.skip("TensorRT is installed here: the refusal cannot happen")
    from cseg.cli import main

    assert main(["build", str(orin_bundle)]) == 3
    error = capsys.readouterr().err
    assert "cseg build: error: TensorRT is not available on this machine" in error and "JetPack" in error
    assert "Traceback" not in error


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
