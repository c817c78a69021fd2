"""vlm_vision: Qwen2.5-VL vision tower + patch merger, for any number of images of any size.

transformers splits attention per window with a data-dependent torch.split, which neither exporter can keep
dynamic. Here the host passes what depends on the image grids (the same quantities transformers computes, with its
own helpers at export time and a numpy port in the runtime): rotary position ids, the window reordering and its
inverse, the windows padded to one fixed size (cseg.runtime.vlm_inputs.window_layout) and per-token image ids.
Window layers gather the tokens into [windows, size] slots, attend within each window under a key mask (the padding
slots are masked out) and gather the results back: the cost is windows x size^2 instead of patches^2, and every
shape but the number of windows is static (what TensorRT needs). Full-attention layers are one SDPA over a
block-diagonal mask of the image ids. Same math as the research model's varlen flash attention; the module's own
weights and rotary embedding are used throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from cseg.export.graph_spec import GraphSpec, TensorSpec
from cseg.runtime.vlm_inputs import window_layout, window_slots


class VisionTower(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.full_attention = set(visual.fullatt_block_indexes)
        self.unit = visual.spatial_merge_unit

    def forward(self, pixel_values, position_ids, window_index, reverse_window_index, window_gather, window_valid,
                window_scatter, image_ids):
        visual = self.visual
        hidden = visual.patch_embed(pixel_values)
        seq, dim = hidden.shape
        hidden = hidden.reshape(seq // self.unit, self.unit, dim)[window_index].reshape(seq, dim)
        cos, sin = visual.rotary_pos_emb(hidden, position_ids)
        cos = cos.reshape(seq // self.unit, self.unit, -1)[window_index].reshape(seq, -1)
        sin = sin.reshape(seq // self.unit, self.unit, -1)[window_index].reshape(seq, -1)
        image_mask = (image_ids[:, None] == image_ids[None, :])[None]  # [1, seq, seq]
        windows = (window_gather, window_valid[:, None, None, :], window_scatter)  # key mask [windows, 1, 1, size]
        for index, block in enumerate(visual.blocks):
            layout = None if index in self.full_attention else windows
            hidden = hidden + self._attention(block.attn, block.norm1(hidden), cos, sin, image_mask, layout)
            hidden = hidden + block.mlp(block.norm2(hidden))
        return visual.merger(hidden)[reverse_window_index]

    @staticmethod
    def _attention(attn, hidden, cos, sin, image_mask, windows):
        seq = hidden.shape[0]
        q, k, v = attn.qkv(hidden).reshape(seq, 3, attn.num_heads, -1).unbind(1)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        qkv = torch.stack((q, k, v))  # [3, seq, heads, dim]
        if windows is None:  # one sequence of all patches, [1, heads, seq, dim]: the 4-D form ONNX maps
            q, k, v = qkv.transpose(1, 2)[:, None].unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=image_mask)
            return attn.proj(out[0].transpose(0, 1).reshape(seq, -1))
        gather, mask, scatter = windows
        q, k, v = qkv[:, gather].permute(0, 1, 3, 2, 4).unbind(0)  # [windows, heads, size, dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(-1, hidden.shape[1])[scatter]  # [windows * size, dim] -> [seq, dim]
        return attn.proj(out)


def host_inputs(grid_thw: torch.Tensor, vision_config) -> dict[str, torch.Tensor]:
    """The grid-dependent inputs, computed with transformers' own helpers (the runtime has a numpy port)."""
    merge = vision_config.spatial_merge_size
    position_ids = get_vision_position_ids(grid_thw, merge)
    window_index, cu_window = get_vision_window_index(
        grid_thw, spatial_merge_size=merge, window_size=vision_config.window_size, patch_size=vision_config.patch_size
    )
    cu_images, _ = get_vision_attention_seqlens(grid_thw, vision_config)
    tokens = torch.arange(int(grid_thw.prod(-1).sum()))
    lengths = torch.unique_consecutive(cu_window.to(torch.int64)).diff()  # transformers drops the empty windows too
    layout = window_layout(lengths.numpy(), window_slots(vars(vision_config)))
    return {
        "position_ids": position_ids.to(torch.int64),
        "window_index": window_index.to(torch.int64),
        "reverse_window_index": torch.argsort(window_index).to(torch.int64),
        **{name: torch.from_numpy(value) for name, value in layout.items()},
        "image_ids": torch.searchsorted(cu_images.to(torch.int64), tokens, right=True) - 1,
    }


def spec(vlm, sam3, settings) -> GraphSpec:
    visual = vlm.model.model.visual
    config = visual.config
    patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    grid = settings["vlm_grid"]  # [t, h, w] of one VLM image, in patches
    slots = window_slots(vars(config))

    def make_inputs(sizes, generator):
        grids = torch.tensor([grid] * sizes["images"])
        patches = int(grids.prod(-1).sum())
        pixels = torch.randn(patches, patch_dim, generator=generator)
        return {"pixel_values": pixels, **host_inputs(grids, config)}

    return GraphSpec(
        key="vlm_vision",
        module=VisionTower(visual).eval(),
        inputs=[
            TensorSpec("pixel_values", "float32", ("patches", patch_dim)),
            TensorSpec("position_ids", "int64", ("patches", 2)),
            TensorSpec("window_index", "int64", ("merged",)),
            TensorSpec("reverse_window_index", "int64", ("merged",)),
            TensorSpec("window_gather", "int64", ("windows", slots)),
            TensorSpec("window_valid", "bool", ("windows", slots)),
            TensorSpec("window_scatter", "int64", ("patches",)),
            TensorSpec("image_ids", "int64", ("patches",)),
        ],
        outputs=[TensorSpec("image_embeds", "float32", ("merged", config.out_hidden_size))],
        make_inputs=make_inputs,
        export_sizes={"images": 1},
        validation_sizes=[{"images": 2}],
        axis_bounds={"patches": (4, 4 * 16384), "merged": (1, 16384), "windows": (1, 16384)},
        # TensorRT-Edge-LLM keeps these in fp32 for Qwen2.5-VL: fp16 overflow in the last MLP and the merger
        keep_fp32=(f"blocks.{config.depth - 1}.mlp.down_proj", "merger", "rotary_pos_emb"),
        notes="one call per request: target image, plus the demonstration image first when there is one",
    )
