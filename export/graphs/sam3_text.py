"""sam3_text: SAM 3's CLIP text encoder + projection to 256, once per phrase (cacheable)."""

from __future__ import annotations

import torch
from torch import nn

from cseg.export.graph_spec import GraphSpec, TensorSpec

TEXT_LENGTH = 32


class TextEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def spec(vlm, sam3, settings) -> GraphSpec:
    vocab = sam3.model.config.text_config.vocab_size

    def make_inputs(sizes, generator):
        ids = torch.randint(0, vocab, (1, TEXT_LENGTH), generator=generator)
        mask = torch.zeros(1, TEXT_LENGTH, dtype=torch.int64)
        mask[0, : sizes["words"]] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return GraphSpec(
        key="sam3_text",
        module=TextEncoder(sam3.model).eval(),
        inputs=[
            TensorSpec("input_ids", "int64", (1, TEXT_LENGTH)),
            TensorSpec("attention_mask", "int64", (1, TEXT_LENGTH)),
        ],
        outputs=[TensorSpec("text_features", "float32", (1, TEXT_LENGTH, 256))],
        make_inputs=make_inputs,
        export_sizes={"words": 5},
        validation_sizes=[{"words": 2}, {"words": TEXT_LENGTH}],
    )
