"""sam3_vision: SAM 3 image encoder + FPN neck, run once per image and cached for every prompt on it.

Only the three FPN levels the detector uses are computed (the 0.5x level is dropped, as Sam3Model.forward drops it).
"""

from __future__ import annotations

import torch
from torch import nn

from cseg.export.graph_spec import GraphSpec, TensorSpec

FPN_LEVELS = 3


class VisionEncoder(nn.Module):
    def __init__(self, vision):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values):
        vision = self.vision
        hidden = vision.backbone(pixel_values).last_hidden_state
        grid = pixel_values.shape[-1] // vision.config.backbone_config.patch_size
        spatial = hidden.view(hidden.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
        return tuple(layer(spatial) for layer in vision.neck.fpn_layers[:FPN_LEVELS])


def fpn_shapes(sam3) -> list[tuple[int, ...]]:
    width = sam3.model.config.vision_config.fpn_hidden_size
    return [(1, width, h, w) for h, w in sam3.model.config.vision_config.backbone_feature_sizes[:FPN_LEVELS]]


def _one_to_one_level(sam3) -> int:
    return sam3.model.config.vision_config.scale_factors.index(1.0)


def spec(vlm, sam3, settings) -> GraphSpec:
    size = sam3.image_size

    def make_inputs(sizes, generator):
        return {"pixel_values": torch.rand(1, 3, size, size, generator=generator) * 2 - 1}

    return GraphSpec(
        key="sam3_vision",
        module=VisionEncoder(sam3.model.vision_encoder).eval(),
        inputs=[TensorSpec("pixel_values", "float32", (1, 3, size, size))],
        outputs=[TensorSpec(f"fpn_{i}", "float32", shape) for i, shape in enumerate(fpn_shapes(sam3))],
        make_inputs=make_inputs,
        export_sizes={},
        validation_sizes=[{}],
        # the neck's 1x level feeds the DETR encoder, hence every mask and score: int8 there took the mask IoU of an
        # applied rule on an int8 orin-nano bundle to 0.92-0.99 against fp32 (tiny random-init SAM 3, six photographs;
        # 0.995-0.9995 with these two convolutions in fp16, ~0.2% of the encoder's FLOPs at full size)
        keep_fp32=("backbone.embeddings", "layer_norm", f"neck.fpn_layers.{_one_to_one_level(sam3)}"),
    )
