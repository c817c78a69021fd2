"""ConceptSeg-R1 as a transformers model: Qwen2.5-VL plus the concept head, under the published parameter names."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from cseg.export.models.concept_head_module import ConceptHead

# Names under which the research code saves the concept head; loading checks that every one of them was read.
CONCEPT_HEAD_PREFIXES = ("learnable_query.", "connector.", "proj_to_sam.")


# The concept head's learned queries: an Embedding [Q, H], so its first dimension is Q.
LEARNABLE_QUERY_WEIGHT = "learnable_query.param.weight"


def num_queries(config: Qwen2_5_VLConfig) -> int:
    """Q, the number of concept tokens. Read from the checkpoint: the research default changed from 16 to 8.

    (load_conceptseg fills a missing num_of_query in from the weights' shape before the model is built.)"""
    value = getattr(config, "num_of_query", None)
    if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"config.json has num_of_query={value!r}; a ConceptSeg-R1 checkpoint must state its number of "
            f"concept queries (a positive integer) or hold {LEARNABLE_QUERY_WEIGHT}"
        )
    return value


class ConceptSegR1ForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with the ConceptSeg-R1 concept head (learnable_query, connector, proj_to_sam) as top-level modules."""

    def __init__(self, config: Qwen2_5_VLConfig):
        super().__init__(config)
        head = ConceptHead.create(num_queries(config), config.text_config.hidden_size)
        self.learnable_query = head.learnable_query
        self.connector = head.connector
        self.proj_to_sam = head.proj_to_sam
        self.post_init()

    def concept_head(self) -> ConceptHead:
        """The concept head as its own module, sharing this model's parameters."""
        return ConceptHead(self.learnable_query, self.connector, self.proj_to_sam)

    @torch.no_grad()
    def concept_tokens(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.concept_head()(hidden_states.to(self.proj_to_sam[0].weight.dtype))


# transformers finds key renames by class name: give ours Qwen2.5-VL's, which read the transformers 4.5x layout
# (model.*, visual.*) the published checkpoint was saved in.
register_checkpoint_conversion_mapping(
    ConceptSegR1ForConditionalGeneration.__name__,
    get_checkpoint_conversion_mapping(Qwen2_5_VLForConditionalGeneration.__name__),
    overwrite=True,
)
