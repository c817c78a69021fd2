"""vlm_decoder: the Qwen2.5 language model, prefill and one-token decode in one graph with a KV cache.

Inputs: token ids, the vision tower's embeddings (scattered into the image-placeholder positions inside the graph,
so the 1 GB embedding table stays in the graph), M-RoPE position ids [3, 1, S] computed on the host exactly as
transformers' get_rope_index does, the attention mask over past + new tokens, and the past keys/values (length 0 on
prefill). Outputs: logits of the last position only, the post-norm last-layer hidden state of every input position
(the concept head's input, collected while decoding instead of by a second full forward), and the keys/values of
the new positions only.

KV tensors are sequence-major, [1, length, kv_heads, head_dim]: the runtime keeps one buffer per layer preallocated
at the maximum length, passes its filled prefix as past and lets the graph write the new positions right after it.
Both are contiguous slices of the same buffer, so no token copies or reallocates the cache.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from cseg.export.graph_spec import GraphSpec, TensorSpec


class Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.image_token_id = model.config.image_token_id

    def forward(self, input_ids, image_embeds, position_ids, attention_mask, *past):
        embeds = self.language_model.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        # the k-th image placeholder takes the k-th row of image_embeds (what masked_scatter does in transformers)
        row = (torch.cumsum(is_image.to(torch.int64), dim=1) - 1).clamp(min=0)
        embeds = torch.where(is_image[..., None], image_embeds[row[0]][None].to(embeds.dtype), embeds)
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


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def spec(vlm, sam3, settings) -> GraphSpec:
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
        for name in kv_names(layers, "past"):
            inputs[name] = torch.randn(1, past, kv_heads, head_dim, generator=generator)
        return inputs

    kv_in = [TensorSpec(n, "float32", (1, "past", kv_heads, head_dim)) for n in kv_names(layers, "past")]
    kv_out = [TensorSpec(n, "float32", (1, "seq", kv_heads, head_dim)) for n in kv_names(layers, "new")]
    return GraphSpec(
        key="vlm_decoder",
        module=Decoder(model).eval(),
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
        export_sizes={"seq": 7, "past": 5, "image_tokens": 3},
        validation_sizes=[{"seq": 12, "past": 0, "image_tokens": 4}, {"seq": 1, "past": 19, "image_tokens": 0}],
        axis_bounds={"seq": (1, 8192), "past": (0, 8192), "total": (1, 8192), "image_tokens": (1, 16384)},
        keep_fp32=("norm", "rotary_emb", "lm_head"),
        notes="prefill: past length 0, all prompt ids; decode: one id, one dummy image_embeds row",
    )
