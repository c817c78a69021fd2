"""concept_head: hidden states of the generated tokens [1, T, H] -> concept tokens [1, Q, 256]. T is dynamic."""

from __future__ import annotations

import torch

from cseg.export.graph_spec import GraphSpec, TensorSpec


def spec(vlm, sam3, settings) -> GraphSpec:
    head = vlm.model.concept_head().eval()
    hidden = vlm.model.config.text_config.hidden_size

    def make_inputs(sizes, generator):
        return {"hidden_states": torch.randn(1, sizes["tokens"], hidden, generator=generator)}

    return GraphSpec(
        key="concept_head",
        module=head,
        inputs=[TensorSpec("hidden_states", "float32", (1, "tokens", hidden))],
        outputs=[TensorSpec("concept_tokens", "float32", (1, head.num_queries, 256))],
        make_inputs=make_inputs,
        export_sizes={"tokens": 17},
        validation_sizes=[{"tokens": 1}, {"tokens": 150}],
        axis_bounds={"tokens": (1, 4096)},
        keep_fp32=("connector.blocks.*.norm*",),
        notes="keys/values are all generated tokens including the final <|im_end|>; no mask, as in the research code",
    )
