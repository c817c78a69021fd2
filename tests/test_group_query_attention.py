"""The cpu target's decoder attention (export/group_query_attention.py): the PyTorch operator computes what ONNX
Runtime's GroupQueryAttention kernel computes, with past and present in one buffer as the runtime binds them, and
both equal plain grouped attention over the cache (causal, padding masked)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from cseg.bundle.schema import read_manifest
from cseg.export.graphs.vlm_decoder import spec as decoder_spec
from cseg.export.group_query_attention import DOMAIN, OP, CacheInputs, group_query_attention

HEADS, KV_HEADS, DIM, CAPACITY = 4, 2, 8, 12


@pytest.fixture(scope="module")
def kernel():
    """One GroupQueryAttention node, as the dynamo exporter writes it (no rotary inputs, attention_bias given)."""
    node = helper.make_node(OP, ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total", "", "", "",
                                 "attention_bias"], ["output", "present_key", "present_value"], domain=DOMAIN,
                            num_heads=HEADS, kv_num_heads=KV_HEADS, scale=DIM**-0.5)  # fmt: skip
    cache = [1, KV_HEADS, "capacity", DIM]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in (
        ("query", [1, "seq", HEADS * DIM]), ("key", [1, "seq", KV_HEADS * DIM]), ("value", [1, "seq", KV_HEADS * DIM]),
        ("past_key", cache), ("past_value", cache), ("attention_bias", [1, 1, "seq", "total"]))]  # fmt: skip
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
               helper.make_tensor_value_info("total", TensorProto.INT32, [])]  # fmt: skip
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in node.output]
    model = helper.make_model(helper.make_graph([node], "gqa", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])  # fmt: skip
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _step(kernel, buffers, q, k, v, mask):
    """Run the kernel with past and present bound to the same buffers (what runtime/host/decoder.py does); returns
    its output and what the operator computes from the buffers as they were before."""
    seq = q.shape[1]
    cache = CacheInputs.from_mask(tuple(torch.from_numpy(b) for b in buffers), torch.from_numpy(mask), seq)
    want, *present = group_query_attention(*(torch.from_numpy(t) for t in (q, k, v)), *cache.past, cache.seqlens_k,
                                           cache.total_length, cache.attention_bias, HEADS, KV_HEADS, DIM**-0.5)  # fmt: skip
    binding = kernel.io_binding()
    feed = {"query": q, "key": k, "value": v, "seqlens_k": cache.seqlens_k.numpy(), "total": cache.total_length.numpy(),
            "attention_bias": cache.attention_bias.contiguous().numpy()}  # fmt: skip
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name, buffer in zip(("key", "value"), buffers):
        binding.bind_cpu_input(f"past_{name}", buffer)
        binding.bind_output(f"present_{name}", "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
    binding.bind_output("output")
    kernel.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[-1], want.numpy(), [p.numpy() for p in present]


def _grouped_attention(q, keys, values, allowed):
    """q [S, N, D], keys/values [T, KV, D], allowed [S, T]: softmax attention per query head over its KV head."""
    out = np.zeros_like(q)
    for head in range(HEADS):
        group = head // (HEADS // KV_HEADS)
        scores = q[:, head] @ keys[:, group].T * DIM**-0.5
        scores = np.where(allowed, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, head] = (weights / weights.sum(-1, keepdims=True)) @ values[:, group]
    return out


def test_operator_equals_the_kernel_on_a_shared_buffer_prompt_then_steps(kernel):
    rng = np.random.default_rng(0)
    buffers = [np.zeros((1, KV_HEADS, CAPACITY, DIM), np.float32) for _ in range(2)]
    keys, values = (np.zeros((CAPACITY, KV_HEADS, DIM), np.float32) for _ in range(2))
    mask = np.ones((1, CAPACITY), np.int64)
    mask[0, 2] = 0  # a pad position in the prompt: masked for every later query
    prompt = 5
    for start, seq in ((0, prompt), (prompt, 1), (prompt + 1, 1), (prompt + 2, 1)):
        q = rng.standard_normal((1, seq, HEADS * DIM), dtype=np.float32)
        k, v = (rng.standard_normal((1, seq, KV_HEADS * DIM), dtype=np.float32) for _ in range(2))
        total = start + seq
        got, want, present = _step(kernel, buffers, q, k, v, mask[:, :total])
        keys[start:total], values[start:total] = k.reshape(seq, KV_HEADS, DIM), v.reshape(seq, KV_HEADS, DIM)
        allowed = np.tril(np.ones((seq, total), bool), start) & (mask[0, :total] == 1)
        plain = _grouped_attention(q.reshape(seq, HEADS, DIM), keys[:total], values[:total], allowed)
        np.testing.assert_allclose(want, plain.reshape(1, seq, HEADS * DIM), atol=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # the kernel wrote the new positions into the shared buffer; the operator's present holds the same
        for buffer, kept, written in zip(buffers, present, (keys, values)):
            np.testing.assert_array_equal(buffer[0, :, :total], written[:total].transpose(1, 0, 2))
            np.testing.assert_allclose(kept[0, :, :total], buffer[0, :, :total], atol=0)
            assert not kept[0, :, total:].any()  # the operator zeroes what lies past the filled length


def test_cache_inputs_from_the_attention_mask():
    past = (torch.zeros(1, KV_HEADS, CAPACITY, DIM),) * 2
    cache = CacheInputs.from_mask(past, torch.tensor([[1, 1, 0, 1, 1, 1]]), 2)
    assert cache.seqlens_k.dtype == cache.total_length.dtype == torch.int32  # what the kernel accepts
    assert cache.seqlens_k.tolist() == [5] and int(cache.total_length) == 6 and cache.total_length.dim() == 0
    assert cache.attention_bias.shape == (1, 1, 2, 6)
    assert (cache.attention_bias[0, 0, :, 2] == torch.finfo(torch.float32).min).all()
    assert (cache.attention_bias[0, 0, :, [0, 1, 3, 4, 5]] == 0).all()


def test_the_layout_is_chosen_by_the_target(tiny_bundle, orin_bundle):
    """The cpu target ships the shared layout (GroupQueryAttention in the graph); GPU targets keep standard ONNX."""
    import onnx

    for bundle, layout in ((tiny_bundle, "shared"), (orin_bundle, "sequence_major")):
        manifest = read_manifest(bundle)
        entry = manifest["graphs"]["vlm_decoder"]
        op_count = manifest["model"]["num_layers"] if layout == "shared" else 0
        assert entry["kv_cache"] == layout
        model = onnx.load(str(bundle / entry["file"]), load_external_data=False)
        assert sum(node.op_type == OP and node.domain == DOMAIN for node in model.graph.node) == op_count
        outputs = [t["name"] for t in entry["outputs"]]
        assert outputs[2] == ("present_key_0" if layout == "shared" else "new_key_0")


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown KV cache layout 'paged'; one of sequence_major, shared"):
        decoder_spec(None, None, {"kv_cache": "paged"})
