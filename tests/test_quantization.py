"""Quantized bundles: graph structure, the accuracy gate and its fallback, serving, calibration data.

Random-init weights: the accuracy numbers these tests see show that the machinery works, not how a trained model
degrades under quantization.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cseg.bundle.schema import read_manifest
from cseg.calib.quantize import INT4_CPU_ACCURACY_LEVEL, excluded_nodes, weight_nodes
from cseg.errors import InvalidInputError
from cseg.runtime import Runtime


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def _check_qdq(path, original, keep_fp32):
    """`original`: the fp32 graph, whose linear layers (minus the fp32-keep ones) must now read dequantized inputs."""
    fp32 = onnx.load(str(original))
    model = onnx.load(str(path))
    producers = _producers(model)
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    excluded = set(excluded_nodes(fp32, keep_fp32))
    targets = set(weight_nodes(fp32)) - excluded
    quantized = [n for n in model.graph.node if n.name in targets]
    assert len(quantized) == len(targets) > 0, path
    for node in quantized:  # both the activation and the weight arrive dequantized
        assert all(producers[i].op_type == "DequantizeLinear" for i in node.input[:2] if i in producers), node.name
    for node in model.graph.node:
        if node.name in excluded and node.op_type in ("MatMul", "Gemm", "Conv"):
            assert all(i not in producers or producers[i].op_type != "DequantizeLinear" for i in node.input), node.name
    scales = [initializers[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[1] in initializers]  # fmt: skip
    assert scales and all(np.isfinite(s).all() and (s > 0).all() for s in scales)
    return model


def _check_dynamic_int8(path, original, keep_fp32):
    """cpu-target int8: every linear layer but the fp32-keep ones is now a MatMulInteger fed by a dynamically
    quantized (u8) activation and a per-channel s8 weight; the fp32-keep ones and the convolutions are still float."""
    fp32 = onnx.load(str(original))
    model = onnx.load(str(path))
    producers = _producers(model)
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    excluded = set(excluded_nodes(fp32, keep_fp32))
    convolutions = {n.name for n in fp32.graph.node if n.op_type == "Conv"}
    targets = set(weight_nodes(fp32)) - excluded - convolutions
    integer = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(integer) == len(targets) > 0, path
    for node in integer:
        assert producers[node.input[0]].op_type == "DynamicQuantizeLinear", node.name
        weight = initializers[node.input[1]]
        assert weight.dtype == np.int8 and initializers[node.input[3]].size == weight.shape[1], node.name  # per channel
    # ORT's dynamic quantizer splits the Gemms it leaves float into "<name>_MatMul" + Add
    still_float = {n.name.removesuffix("_MatMul") for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    assert not targets & still_float and (excluded | convolutions) & set(weight_nodes(fp32)) <= still_float
    return model


def test_cpu_int8_bundle_is_dynamic_int8_where_the_policy_says(int8_bundle, tiny_bundle):
    manifest = read_manifest(int8_bundle)
    fp32 = read_manifest(tiny_bundle)  # the same checkpoint exported in fp32: same node names
    table = manifest["quantization"]["graphs"]
    assert set(table) == {"vlm_vision", "vlm_decoder", "sam3_vision", "sam3_text"}
    for key, row in table.items():
        graph = manifest["graphs"][key]
        assert row["shipped"] == graph["precision"] == "int8", key
        assert all(entry["cosine"] >= 0.99 for entry in row["gate"].values())
        assert row["scheme"].startswith("int8 dynamic"), key
        _check_dynamic_int8(int8_bundle / graph["file"], tiny_bundle / fp32["graphs"][key]["file"], graph["keep_fp32"])
    for key in ("concept_head", "sam3_decoder"):  # not in the cpu int8 policy
        assert manifest["graphs"][key]["precision"] == "fp32"
    assert not (int8_bundle / "graphs" / "vlm_decoder.onnx").exists()  # the fp32 original left the bundle
    end_to_end = manifest["quantization"]["end_to_end"]
    assert end_to_end["samples"] == 1 and 0 <= end_to_end["mask_iou_min"] <= 1
    assert "random-init" in manifest["quantization"]["note"]


def test_inspect_shows_the_quantization_table(int8_bundle, capsys):
    from cseg.cli import main

    assert main(["inspect", str(int8_bundle)]) == 0
    report = capsys.readouterr().out
    assert "quantization int8" in report and "vlm_decoder   asked int8  shipped int8" in report
    assert "end to end vs fp32" in report


def test_int4_bundle_uses_blocked_weight_only_matmuls(int4_bundle):
    manifest = read_manifest(int4_bundle)
    graph = manifest["graphs"]["vlm_decoder"]
    assert graph["precision"] == "int4"
    model = onnx.load(str(int4_bundle / graph["file"]))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulNBits" in ops and "DequantizeLinear" not in ops
    levels = [{a.name: a.i for a in n.attribute}.get("accuracy_level") for n in model.graph.node
              if n.op_type == "MatMulNBits"]  # fmt: skip
    assert set(levels) == {INT4_CPU_ACCURACY_LEVEL}, "int8 compute on every int4 MatMul (level 0 dequantizes per call)"
    kept = excluded_nodes(model, ["lm_head"])
    assert kept and all(n.op_type == "MatMul" for n in model.graph.node if n.name in kept)


@pytest.mark.parametrize("fixture", ["int8_bundle", "int4_bundle"])
def test_quantized_bundles_serve(fixture, request, photo):
    runtime = Runtime.open(request.getfixturevalue(fixture))
    full = runtime.segment(photo, "helmet", route="full", max_new_tokens=4)
    short = runtime.segment(photo, "helmet", route="shortcut")
    assert full.mask.shape == short.mask.shape == photo.shape[:2] and len(full.token_ids) == 4


def test_a_graph_missing_its_gate_or_slower_than_fp32_falls_back(tiny_checkpoint, calibration_folder, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    import cseg.calib.bundle_quantization as orchestration
    from cseg.export.bundle import export_bundle

    monkeypatch.setitem(orchestration.MIN_COSINE, "int4", 1.5)  # impossible: forces the fallback int4 -> int8
    timed = []

    def slower(reference, candidate, feeds, options):  # int8 timed slower than fp32: forces int8 -> fp32
        timed.append(candidate.name)
        return {"fp32_ms": 10.0, "ms": 12.0, "speedup": 0.833}

    monkeypatch.setattr(orchestration, "speed", slower)
    lines = []
    bundle = export_bundle(*tiny_checkpoint, tmp_path / "b", precision="int4", calib=calibration_folder,
                           progress=False, report=lines.append)  # fmt: skip
    manifest = read_manifest(bundle)
    row = manifest["quantization"]["graphs"]["vlm_decoder"]
    assert row["requested"] == "int4" and row["shipped"] == "fp32" and timed == ["vlm_decoder.int8.onnx"]
    assert [t["precision"] for t in row["tried"]] == ["int4", "int8"] and not row["tried"][0]["passed"]
    assert row["tried"][1]["passed"] and "not faster than fp32" in row["tried"][1]["rejected"]
    assert any("WARNING vlm_decoder: int4 misses its gate" in line for line in lines)
    assert any("WARNING vlm_decoder: int8 is not faster than fp32" in line for line in lines)
    assert manifest["graphs"]["vlm_decoder"]["precision"] == "fp32"
    assert (bundle / manifest["graphs"]["vlm_decoder"]["file"]).exists()  # the fp32 graph stays in the bundle
    assert Runtime.open(bundle).segment(np.zeros((32, 32, 3), np.uint8), "bolt", route="full", max_new_tokens=2)


def test_speed_times_fp32_and_int8_interleaved(tiny_bundle, int8_bundle):
    from cseg.calib.quantize import speed
    from cseg.runtime.onnxruntime.graph import session_options

    graph = read_manifest(int8_bundle)["graphs"]["sam3_text"]
    fp32 = tiny_bundle / read_manifest(tiny_bundle)["graphs"]["sam3_text"]["file"]
    feed = {"input_ids": np.ones((1, 32), np.int64), "attention_mask": np.ones((1, 32), np.int64)}
    timing = speed(fp32, int8_bundle / graph["file"], [feed], session_options({}), rounds=2)
    assert timing["fp32_ms"] > 0 and timing["ms"] > 0
    assert timing["speedup"] == pytest.approx(timing["fp32_ms"] / timing["ms"], rel=0.01)


def test_fp8_graphs_are_qdq_and_run_on_the_cpu(tiny_bundle, tmp_path, calibration_folder):
    from cseg.calib.calibration_set import load
    from cseg.calib.collect import collect, feeds
    from cseg.calib.quantize import compare, quantize
    from cseg.runtime import Runtime

    items = load(calibration_folder).items
    collect(Runtime.open(tiny_bundle), items[:2], tmp_path / "train", progress=False)
    collect(Runtime.open(tiny_bundle), items[3:], tmp_path / "held", progress=False)
    manifest = read_manifest(tiny_bundle)
    for key in ("sam3_text", "vlm_vision"):
        source, target = tiny_bundle / manifest["graphs"][key]["file"], tmp_path / f"{key}.fp8.onnx"
        quantize(source, target, "fp8", feeds(tmp_path / "train" / key), manifest["graphs"][key]["keep_fp32"])
        model = _check_qdq(target, source, manifest["graphs"][key]["keep_fp32"])
        types = {t.data_type for t in model.graph.initializer}
        assert onnx.TensorProto.FLOAT8E4M3FN in types
        report = compare(source, target, feeds(tmp_path / "held" / key))  # ONNX Runtime CPU runs simulated FP8
        assert min(e["cosine"] for e in report.values()) > 0.98


def test_calibration_collection_records_inputs_by_name(tiny_bundle, calibration_folder, tmp_path, capsys):
    from cseg.cli import main

    assert main(["calib", "collect", "--bundle", str(tiny_bundle), "--calib", str(calibration_folder),
                 "--out", str(tmp_path / "data")]) == 0  # fmt: skip
    manifest = read_manifest(tiny_bundle)
    for key, graph in manifest["graphs"].items():
        files = sorted((tmp_path / "data" / key).glob("*.npz"))
        assert files, key
        with np.load(files[0]) as data:
            assert set(data.files) <= {t["name"] for t in graph["inputs"]}
    assert "sha256" in capsys.readouterr().out


def test_bad_calibration_sets_are_refused(tmp_path, tiny_checkpoint):
    from cseg.calib.calibration_set import load
    from cseg.export.bundle import export_bundle

    with pytest.raises(InvalidInputError, match="calib.jsonl"):
        load(tmp_path)
    (tmp_path / "calib.jsonl").write_text('{"image": "missing.png", "prompt": "x"}\n')
    with pytest.raises(InvalidInputError, match="missing.png does not exist"):
        load(tmp_path)
    (tmp_path / "calib.jsonl").write_text("not json\n")
    with pytest.raises(InvalidInputError, match="line 1"):
        load(tmp_path)
    from skimage import data
    from PIL import Image

    Image.fromarray(data.coffee()).save(tmp_path / "one.png")
    (tmp_path / "calib.jsonl").write_text(json.dumps({"image": "one.png", "prompt": "cup"}) + "\n")
    with pytest.raises(InvalidInputError, match="at least 2 samples"):
        export_bundle(*tiny_checkpoint, tmp_path / "b", precision="int8", calib=tmp_path, progress=False)
