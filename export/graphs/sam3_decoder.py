"""sam3_decoder: SAM 3's detector side (DETR encoder + decoder, scoring, mask head, presence) for one prompt.

Inputs are the cached image features, the cached text features of the phrase and the concept tokens; the prompt is
composed inside the graph by sam3_prompt(), the one place that decides what SAM 3 is prompted with: text, the
image-dependent geometry token Meta's SAM 3 always adds (computed here from fpn_2), and the concept tokens. The number
of concept tokens is a dynamic axis: Q on the full path, 0 on the shortcut path (same graph, no wasted tokens), and
on a rule-only bundle any Q from 1 to 32, whatever ConceptSeg-R1 induced the rule (concept_bounds).
Outputs: semantic logits, the presence logit, and only the top-K instances (scores, boxes, mask logits), selected
inside the graph so SAM 3's 200 full-resolution instance masks never leave it. The parity check compares them up to
the order of instances whose scores tie (GraphSpec.ranking), against the same forward ranking all 200.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from cseg.export.graph_spec import GraphSpec, Ranking, TensorSpec
from cseg.export.graphs.sam3_text import TEXT_LENGTH
from cseg.export.graphs.sam3_vision import fpn_shapes
from cseg.export.sam3_prompt import sam3_prompt

# A rule-only bundle takes rules of 1..32 concept tokens (published ConceptSeg-R1: 16; the tiny checkpoints: 8)
RULE_MAX_CONCEPTS = 32


class Detector(nn.Module):
    def __init__(self, model, top_k: int):
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, fpn_0, fpn_1, fpn_2, text_features, text_mask, concept_tokens):
        levels = (fpn_0, fpn_1, fpn_2)
        encode = self.model.vision_encoder.neck.position_encoding
        positions = tuple(encode(level.shape, level.device, level.dtype) for level in levels)
        # Sam3Model.forward drops the last FPN level (the 0.5x one sam3_vision does not compute): pad with a copy.
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=levels + levels[-1:], fpn_position_encoding=positions + positions[-1:]
        )
        features, mask = sam3_prompt(self.model, vision, text_features, text_mask, concept_tokens)
        out = self.model(
            vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(pooler_output=features), attention_mask=mask
        )
        scores = torch.sigmoid(out.pred_logits) * torch.sigmoid(out.presence_logits)
        top_scores, index = torch.topk(scores, self.top_k, dim=1)
        return (
            out.semantic_seg,
            out.presence_logits,
            top_scores,
            out.pred_boxes[0, index[0]][None],
            out.pred_masks[0, index[0]][None],
        )


def concept_bounds(queries: int, rule_only: bool) -> tuple[int, int]:
    """How many concept tokens the decoder takes: 0 (the shortcut) .. Q on a full bundle, whose rules come from its
    own ConceptSeg-R1; up to RULE_MAX_CONCEPTS (or Q, if more) on a rule-only one, which cannot know the Q of the
    model that will induce its rules (the graph's axis is dynamic either way; this bounds TensorRT's profile)."""
    return (0, max(queries, RULE_MAX_CONCEPTS) if rule_only else queries)


def spec(vlm, sam3, settings) -> GraphSpec:
    queries = settings["queries"]  # Q: the concept tokens of the full path (for a rule-only bundle, its usual rule's)
    bounds = concept_bounds(queries, rule_only=vlm is None)
    num_queries = sam3.model.config.detr_decoder_config.num_queries
    top_k = min(settings["top_k"], num_queries)
    shapes = fpn_shapes(sam3)
    mask_size = shapes[0][2:]

    def make_inputs(sizes, generator):
        inputs = {f"fpn_{i}": torch.randn(*shape, generator=generator) for i, shape in enumerate(shapes)}
        mask = torch.zeros(1, TEXT_LENGTH, dtype=torch.int64)
        mask[0, : sizes["words"]] = 1
        inputs["text_features"] = torch.randn(1, TEXT_LENGTH, 256, generator=generator)
        inputs["text_mask"] = mask
        inputs["concept_tokens"] = torch.randn(1, sizes["concepts"], 256, generator=generator)
        return inputs

    return GraphSpec(
        key="sam3_decoder",
        module=Detector(sam3.model, top_k).eval(),
        inputs=[
            *(TensorSpec(f"fpn_{i}", "float32", shape) for i, shape in enumerate(shapes)),
            TensorSpec("text_features", "float32", (1, TEXT_LENGTH, 256)),
            TensorSpec("text_mask", "int64", (1, TEXT_LENGTH)),
            TensorSpec("concept_tokens", "float32", (1, "concepts", 256)),
        ],
        outputs=[
            TensorSpec("semantic_logits", "float32", (1, 1, *mask_size)),
            TensorSpec("presence_logit", "float32", (1, 1)),
            TensorSpec("instance_scores", "float32", (1, top_k)),
            TensorSpec("instance_boxes", "float32", (1, top_k, 4)),
            TensorSpec("instance_masks", "float32", (1, top_k, *mask_size)),
        ],
        make_inputs=make_inputs,
        export_sizes={"words": 4, "concepts": queries},
        # the bounds' ends are validated too: a rule-only decoder promises every Q up to its maximum
        validation_sizes=[{"words": 7, "concepts": 0}, {"words": 1, "concepts": queries}]
        + ([{"words": 3, "concepts": bounds[1]}] if bounds[1] != queries else []),
        axis_bounds={"concepts": bounds},
        keep_fp32=("dot_product_scoring", "presence", "box_head"),
        # instances are ranked by score: tied scores may come out in either order (export/parity.py)
        ranking=Ranking("instance_scores", ("instance_scores", "instance_boxes", "instance_masks"),
                        Detector(sam3.model, num_queries).eval()),
        notes=f"concepts = {queries} on the full path (a rule: {bounds[0] + 1}..{bounds[1]}), 0 on the shortcut path; "
        f"top-{top_k} instances by score",
    )
