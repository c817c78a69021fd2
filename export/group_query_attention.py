"""ONNX Runtime's com.microsoft.GroupQueryAttention as a PyTorch operator, for the cpu target's decoder.

In standard ONNX the decoder pays for its KV cache every layer and every token: the sequence-major past is transposed
to heads-major, concatenated with the new position and expanded from the KV heads to the query heads, and the key
is transposed once more for the score MatMul (README, Measured here: a decode step's profile). GroupQueryAttention
reads a heads-major cache [1, kv_heads, capacity, head_dim] in place, writes the new positions into it (when past and
present are the same buffer, which the runtime binds them to) and maps query heads to KV heads without copies.

The operator's eager form below is what ONNX Runtime's CPU kernel computes (checked against it in the tests): the
new keys/values go to positions [total - seq, total) of the cache, query i attends causally to positions up to
total - seq + i, `attention_bias` [1, 1, seq, total] is added to the scores (the padding mask), and present positions
from `total` on are zero (what the kernel writes when past and present are separate buffers; with a shared buffer it
leaves them as they were, and nothing reads them). Its ONNX form is the one contrib node, written by the dynamo
exporter through `TRANSLATIONS`. transformers reaches it through its attention-function registry
(`ATTENTION_IMPLEMENTATION`), with the cache tensors handed down in the layer kwargs (`CacheInputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxscript
import torch
from onnx.defs import OpSchema
from torch import Tensor
from transformers import AttentionInterface

ATTENTION_IMPLEMENTATION = "cseg_group_query_attention"
DOMAIN = "com.microsoft"
OP = "GroupQueryAttention"


@torch.library.custom_op("cseg::group_query_attention", mutates_args=())
def group_query_attention(query: Tensor, key: Tensor, value: Tensor, past_key: Tensor, past_value: Tensor,
                          seqlens_k: Tensor, total_length: Tensor, attention_bias: Tensor, num_heads: int,
                          kv_heads: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """query [1, S, N * D], key/value [1, S, KV * D], past [1, KV, C, D], seqlens_k [1] int32 = total - 1,
    total_length [] int32, attention_bias [1, 1, S, total] -> output [1, S, N * D], present key and value
    [1, KV, C, D]."""
    seq, total, head_dim = query.shape[1], int(total_length), past_key.shape[-1]
    start = total - seq
    present = []
    for past, new in ((past_key, key), (past_value, value)):
        buffer = torch.zeros_like(past)
        buffer[:, :, :start] = past[:, :, :start]
        buffer[:, :, start:total] = new.view(1, seq, kv_heads, head_dim).transpose(1, 2)
        present.append(buffer)
    keys, values = (p[:, :, :total].repeat_interleave(num_heads // kv_heads, dim=1) for p in present)
    causal = torch.ones(seq, total, dtype=torch.bool).tril(start)
    bias = attention_bias.float().masked_fill(~causal, float("-inf"))
    heads = query.view(1, seq, num_heads, head_dim).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(heads, keys, values, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(1, seq, num_heads * head_dim), present[0], present[1]


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_length, attention_bias, num_heads, kv_heads, scale):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _schema() -> OpSchema:
    """The contrib op's signature up to attention_bias (ONNX itself does not know it; the exporter needs it to
    build the node). Inputs after attention_bias are left out: a node may omit trailing optional inputs."""
    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    inputs = [param("query", "T")]
    inputs += [param(name, "T", "", param_option=optional) for name in ("key", "value", "past_key", "past_value")]
    inputs += [param("seqlens_k", "M"), param("total_sequence_length", "M")]
    rest = (("cos_cache", "T"), ("sin_cache", "T"), ("position_ids", "P"), ("attention_bias", "T"))
    inputs += [param(name, kind, "", param_option=optional) for name, kind in rest]
    return OpSchema(
        OP, DOMAIN, 1,
        inputs=inputs,
        outputs=[param("output", "T"), param("present_key", "T"), param("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], ""),
                          ("P", ["tensor(int64)"], "")],  # fmt: skip
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
                    OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, ""),
                    OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "")],  # fmt: skip
    )


_ONNX_OP = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), OP, _schema())


def _to_onnx(query, key, value, past_key, past_value, seqlens_k, total_length, attention_bias, num_heads, kv_heads,
             scale):  # fmt: skip
    return _ONNX_OP(query, key, value, past_key, past_value, seqlens_k, total_length, None, None, None, attention_bias,
                    num_heads=num_heads, kv_num_heads=kv_heads, scale=scale)  # fmt: skip


# the dynamo exporter's custom_translation_table for graphs that use the operator
TRANSLATIONS = {torch.ops.cseg.group_query_attention.default: _to_onnx}


@dataclass
class CacheInputs:
    """What every layer's attention needs besides its own q/k/v: the per-layer past buffers (key, value, key, ...),
    the filled length and the padding bias; the layers leave their present buffers in `present`."""

    past: tuple[Tensor, ...]
    seqlens_k: Tensor
    total_length: Tensor
    attention_bias: Tensor
    present: list[Tensor | None]

    @classmethod
    def from_mask(cls, past: tuple[Tensor, ...], attention_mask: Tensor, seq: int) -> "CacheInputs":
        """attention_mask [1, total]: 1 for the positions to attend to (the filled cache and the new ones)."""
        total = attention_mask.shape[1]
        lengths = torch.ones_like(attention_mask[0]).sum(dim=0, keepdim=True, dtype=torch.int32)  # [total]
        padding = (attention_mask == 0).float() * torch.finfo(torch.float32).min
        bias = padding[:, None, None, :].expand(1, 1, seq, total)
        return cls(past, lengths - 1, lengths[0], bias, [None] * len(past))


def _attention(module, query, key, value, attention_mask, scaling, cseg_cache: CacheInputs, **_):
    """transformers' attention function signature; query/key/value arrive [1, heads, S, D] with rotary applied, and
    the output goes back as [1, S, heads * D]."""
    layer, kv_heads = module.layer_idx, key.shape[1]
    flat = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (query, key, value)]
    out, present_key, present_value = group_query_attention(
        *flat, cseg_cache.past[2 * layer], cseg_cache.past[2 * layer + 1], cseg_cache.seqlens_k,
        cseg_cache.total_length, cseg_cache.attention_bias, query.shape[1], kv_heads, scaling,
    )  # fmt: skip
    cseg_cache.present[2 * layer : 2 * layer + 2] = present_key, present_value
    return out, None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, _attention)
