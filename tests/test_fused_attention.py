"""Fused attention on the cpu target (export/fused_attention.py): which graphs get it, that it computes what the
decomposed blocks compute, and that GPU targets keep standard ONNX."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cseg.bundle.schema import read_manifest
from cseg.engines.targets import TARGETS
from cseg.export.fused_attention import FUSED_DOMAIN, FUSED_OP, fuse_model

FUSED = TARGETS["cpu"]["fused_attention"]
B, H, S, D = 2, 3, 5, 4


def _ops(path):
    return [(n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def _sdpa_block(mask_rank: int | None, nan_guard: bool, leak: bool = False) -> onnx.ModelProto:
    """The two decomposed forms the exporter writes: SAM 3's eager (MatMul(q, kᵀ) * scale + mask) and SDPA's
    (MatMul(q * √s, kᵀ * √s) + mask, then Where(IsNaN) before the last MatMul). leak: the scores are also an output."""
    root = D**-0.25
    nodes = [helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2])]
    if nan_guard:
        nodes += [helper.make_node("Mul", ["q", "root"], ["q_s"]), helper.make_node("Mul", ["k_t", "root"], ["k_s"]),
                  helper.make_node("MatMul", ["q_s", "k_s"], ["scaled"])]  # fmt: skip
    else:
        nodes += [helper.make_node("MatMul", ["q", "k_t"], ["scores"]), helper.make_node("Mul", ["scores", "scale"], ["scaled"])]
    last = "scaled"
    if mask_rank:
        nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
        last = "masked"
    nodes.append(helper.make_node("Softmax", [last], ["p"], axis=-1))
    if nan_guard:
        nodes += [helper.make_node("IsNaN", ["p"], ["nan"]), helper.make_node("Where", ["nan", "zero", "p"], ["p0"])]
    nodes.append(helper.make_node("MatMul", ["p0" if nan_guard else "p", "v"], ["out"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, S, D]) for n in ("q", "k", "v")]
    mask_shape = {4: [B, 1, 1, S], 3: [1, S, S], 2: [S, S]}.get(mask_rank)
    if mask_rank:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, mask_shape))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, H, S, D])]
    if leak:
        outputs.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, None))
    constants = [numpy_helper.from_array(np.array(v, np.float32), n)
                 for n, v in (("root", root), ("scale", D**-0.5), ("zero", 0.0))]  # fmt: skip
    graph = helper.make_graph(nodes, "attention", inputs, outputs, constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("mask_rank, nan_guard", [(None, False), (4, False), (3, True), (2, True)])
def test_fused_block_computes_the_decomposed_attention(mask_rank, nan_guard):
    model = _sdpa_block(mask_rank, nan_guard)
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((B, H, S, D), np.float32) for n in ("q", "k", "v")}
    if mask_rank:  # key padding / block masks as the graphs make them: large negative where masked, never a full row
        shape = {4: (B, 1, 1, S), 3: (1, S, S), 2: (S, S)}[mask_rank]
        keep = rng.random(shape) < 0.6
        keep[..., 0] = True
        feed["mask"] = np.where(keep, 0, np.float32(np.finfo(np.float32).min)).astype(np.float32)
    want = _run(model, feed)[0]
    fused = onnx.ModelProto.FromString(model.SerializeToString())
    assert fuse_model(fused) == 1
    ops = [n.op_type for n in fused.graph.node]
    assert FUSED_OP in ops and "Softmax" not in ops and "IsNaN" not in ops
    assert not fused.graph.initializer  # the scales (and the NaN guard's zero) left with the block
    np.testing.assert_allclose(_run(fused, feed)[0], want, atol=1e-5)


def test_a_block_whose_scores_are_used_elsewhere_is_left_alone():
    model = _sdpa_block(4, False, leak=True)
    assert fuse_model(model) == 0
    assert FUSED_OP not in [n.op_type for n in model.graph.node]


def test_cpu_bundle_runs_the_fused_op_where_the_target_says(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert set(FUSED) and set(FUSED) <= set(manifest["graphs"])
    for key, graph in manifest["graphs"].items():
        ops = _ops(tiny_bundle / graph["file"])
        fused = ops.count((FUSED_DOMAIN, FUSED_OP))
        if key in FUSED:  # every attention block of these graphs, and the manifest says how many
            assert fused > 0 and ("", "Softmax") not in ops, key
            assert graph["fused_attention"] == {"op": f"{FUSED_DOMAIN}.{FUSED_OP}", "blocks": fused}
        else:
            assert fused == 0 and "fused_attention" not in graph, key


def test_cpu_int8_keeps_the_fused_attention(int8_bundle):
    manifest = read_manifest(int8_bundle)
    for key in FUSED:
        graph = manifest["graphs"][key]
        ops = _ops(int8_bundle / graph["file"])
        assert ops.count((FUSED_DOMAIN, FUSED_OP)) == graph["fused_attention"]["blocks"], key
        if graph["precision"] == "int8":
            assert ("", "MatMulInteger") in ops, key


def test_gpu_targets_keep_standard_onnx(orin_bundle):
    assert all(not target.get("fused_attention") for name, target in TARGETS.items() if target["backend"] == "tensorrt")
    for key, graph in read_manifest(orin_bundle)["graphs"].items():
        assert "fused_attention" not in graph
        assert all(domain in ("", "ai.onnx") for domain, _ in _ops(orin_bundle / graph["file"])), key
