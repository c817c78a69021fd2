"""vlm_decoder: the Qwen2.5 language model, prefill and one-token decode in one graph with a KV cache.

Inputs: token ids, the vision tower's embeddings (scattered into the image-placeholder positions inside the graph,
so the 1 GB embedding table stays in the graph), M-RoPE position ids [3, 1, S] computed on the host exactly as
transformers' get_rope_index does, the attention mask over past + new tokens, and the past keys/values (nothing
cached on prefill). Outputs: logits of the last position only, the post-norm last-layer hidden state of every input
position (the concept head's input, collected while decoding instead of by a second full forward), and the
keys/values as the layout below says.

Two layouts of the KV cache (the manifest's graphs.vlm_decoder.kv_cache says which):
- "sequence_major" (GPU targets: standard ONNX for TensorRT): [1, length, kv_heads, head_dim]. The runtime keeps one
  buffer per layer preallocated at the maximum length, passes its filled prefix as past and lets the graph write the
  new positions right after it (outputs new_*). Both are contiguous slices of the same buffer, so no token copies or
  reallocates the cache.
- "shared" (the cpu target): [1, kv_heads, capacity, head_dim], attended to in place by ONNX Runtime's
  GroupQueryAttention (export/group_query_attention.py). The whole buffer goes in as past and comes out as present
  with the new positions written at [total - seq, total), total being the attention mask's length; the runtime binds
  past and present to the same buffer. Decode steps then have the same shapes from the first token to the last.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from cseg.export.graph_spec import GraphSpec, TensorSpec
from cseg.export.group_query_attention import ATTENTION_IMPLEMENTATION, TRANSLATIONS, CacheInputs

KV_LAYOUTS = ("sequence_major", "shared")


class Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.image_token_id = model.config.image_token_id

    def embed(self, input_ids, image_embeds):
        embeds = self.language_model.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        # the k-th image placeholder takes the k-th row of image_embeds (what masked_scatter does in transformers)
        row = (torch.cumsum(is_image.to(torch.int64), dim=1) - 1).clamp(min=0)
        return torch.where(is_image[..., None], image_embeds[row[0]][None].to(embeds.dtype), embeds)

    def forward(self, input_ids, image_embeds, position_ids, attention_mask, *past):
        embeds = self.embed(input_ids, image_embeds)
        heads_major = [p.transpose(1, 2) for p in past]  # transformers' cache layout is [1, kv_heads, length, dim]
        cache = DynamicCache(
            ddp_cache_data=list(zip(heads_major[0::2], heads_major[1::2])), config=self.language_model.config
        )
        out = self.language_model(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask, cache=cache, use_cache=True
        )
        hidden = out.last_hidden_state
        seq = input_ids.shape[1]
        new = [t[:, :, -seq:].transpose(1, 2) for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (self.lm_head(hidden[:, -1:]), hidden, *new)


class SharedCacheDecoder(Decoder):
    """The "shared" layout: every layer's attention is GroupQueryAttention on the cache buffers given as past."""

    def forward(self, input_ids, image_embeds, position_ids, attention_mask, *past):
        embeds = self.embed(input_ids, image_embeds)
        cache = CacheInputs.from_mask(past, attention_mask, input_ids.shape[1])
        config = self.language_model.config
        before, config._attn_implementation = config._attn_implementation, ATTENTION_IMPLEMENTATION
        try:  # a mask mapping of Nones: the operator takes the padding as its bias and is causal by itself
            out = self.language_model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False,
                                      attention_mask=dict.fromkeys(("full_attention", "sliding_attention")),
                                      cseg_cache=cache)  # fmt: skip
        finally:
            config._attn_implementation = before
        hidden = out.last_hidden_state
        return (self.lm_head(hidden[:, -1:]), hidden, *cache.present)


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def spec(vlm, sam3, settings) -> GraphSpec:
    layout = settings.get("kv_cache", "sequence_major")
    if layout not in KV_LAYOUTS:
        raise ValueError(f"unknown KV cache layout {layout!r}; one of {', '.join(KV_LAYOUTS)}")
    shared = layout == "shared"
    model = vlm.model
    text = model.config.text_config
    layers, kv_heads = text.num_hidden_layers, text.num_key_value_heads
    head_dim = text.hidden_size // text.num_attention_heads
    image_token = model.config.image_token_id

    def make_inputs(sizes, generator):
        seq, past, images = sizes["seq"], sizes["past"], sizes["image_tokens"]
        ids = torch.randint(0, image_token, (1, seq), generator=generator)  # stand-in text ids sit below it
        ids[0, 1 : 1 + min(images, seq - 1)] = image_token
        positions = torch.arange(past, past + seq).view(1, 1, -1).expand(3, 1, -1).contiguous()
        inputs = {
            "input_ids": ids,
            "image_embeds": torch.randn(max(images, 1), text.hidden_size, generator=generator),
            "position_ids": positions,
            "attention_mask": torch.ones(1, past + seq, dtype=torch.int64),
        }
        if past > 2:  # a cached pad position, masked out (the padding path of the attention)
            inputs["attention_mask"][0, 2] = 0
        for name in kv_names(layers, "past"):
            if shared:  # the filled positions, then zeros up to the capacity (what an unused cache row holds)
                inputs[name] = torch.zeros(1, kv_heads, sizes["capacity"], head_dim)
                inputs[name][:, :, :past] = torch.randn(1, kv_heads, past, head_dim, generator=generator)
            else:
                inputs[name] = torch.randn(1, past, kv_heads, head_dim, generator=generator)
        return inputs

    if shared:
        cache_shape = (1, kv_heads, "capacity", head_dim)
        kv_in = [TensorSpec(n, "float32", cache_shape) for n in kv_names(layers, "past")]
        kv_out = [TensorSpec(n, "float32", cache_shape) for n in kv_names(layers, "present")]
    else:
        kv_in = [TensorSpec(n, "float32", (1, "past", kv_heads, head_dim)) for n in kv_names(layers, "past")]
        kv_out = [TensorSpec(n, "float32", (1, "seq", kv_heads, head_dim)) for n in kv_names(layers, "new")]
    export_sizes = {"seq": 7, "past": 5, "image_tokens": 3}  # all different: no two dynamic axes traced as one
    validation = [{"seq": 12, "past": 0, "image_tokens": 4}, {"seq": 1, "past": 19, "image_tokens": 0}]
    if shared:  # prompts and single-token steps (what GroupQueryAttention runs), in caches with room to spare
        export_sizes["capacity"] = 16
        validation = [{**sizes, "capacity": sizes["past"] + sizes["seq"] + 4} for sizes in validation]
    return GraphSpec(
        key="vlm_decoder",
        module=(SharedCacheDecoder if shared else Decoder)(model).eval(),
        inputs=[
            TensorSpec("input_ids", "int64", (1, "seq")),
            TensorSpec("image_embeds", "float32", ("image_tokens", text.hidden_size)),
            TensorSpec("position_ids", "int64", (3, 1, "seq")),
            TensorSpec("attention_mask", "int64", (1, "total")),
            *kv_in,
        ],
        outputs=[
            TensorSpec("logits", "float32", (1, 1, text.vocab_size)),
            TensorSpec("hidden_states", "float32", (1, "seq", text.hidden_size)),
            *kv_out,
        ],
        make_inputs=make_inputs,
        export_sizes=export_sizes,
        validation_sizes=validation,
        axis_bounds={"seq": (1, 8192), "total": (1, 8192), "image_tokens": (1, 16384),
                     **({"capacity": (1, 8192)} if shared else {"past": (0, 8192)})},  # fmt: skip
        keep_fp32=("norm", "rotary_emb", "lm_head"),
        notes="prefill: past length 0, all prompt ids; decode: one id, one dummy image_embeds row"
        + ("; past and present: the same cache buffer, filled up to the attention mask's length" if shared else ""),
        translations=TRANSLATIONS if shared else {},
        manifest={"kv_cache": layout},
    )
