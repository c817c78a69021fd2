"""The prompt SAM 3's detector sees, and where ConceptSeg-R1's concept tokens enter it: the one place this is decided.

Meta's SAM 3 (facebookresearch/sam3, what ConceptSeg-R1 runs) always prompts a text query with a geometric prompt
too, an empty one: `Sam3Processor.set_text_prompt` passes a dummy geometric prompt, `Sam3Image._encode_prompt`
concatenates [text features, geometry features, visual prompt], and `SequenceGeometryEncoder` appends its CLS token
(valid) even with no boxes or points, projects it (final_proj, norm), lets it attend to the image through its layers
and normalises it (encode_norm). So a text prompt is 32 text tokens + 1 image-dependent geometry token.
transformers' `Sam3Model` only runs its geometry encoder when boxes are given (and its box path needs torchvision's
roi_align), so `geometry_token` below runs the no-box path with the encoder's own modules.

INFERRED, not seen (ANATOMY section 2): the modified SAM 3 ships only as a binary zip, so the concept tokens'
injection is unverified. The evidence points to the Q concept tokens [1, Q, 256] being extra prompt tokens, all valid
(unmasked), so every fusion point (DETR encoder, decoder, scoring, mask head) attends to them. They go last, in the
slot `_encode_prompt` gives extra prompt embeddings. Their position is mathematically moot (up to float summation
order): prompt tokens carry no position encoding and every consumer (attention keys, masked mean pooling) is
invariant to their order; what matters is which tokens are there and their masks.

Masks follow transformers' Sam3Model convention: True / 1 = a token to attend to (upstream SAM 3 uses the opposite).
"""

from __future__ import annotations

import torch


def geometry_token(model, vision) -> torch.Tensor:
    """SequenceGeometryEncoder's output for an empty geometric prompt: its CLS token after the image [B, 1, 256].

    `vision` is the Sam3VisionEncoderOutput; like Sam3Model.forward, the encoder reads the last FPN level the
    detector uses (fpn_hidden_states[:-1][-1]) and its position encoding.
    """
    encoder = model.geometry_encoder
    features, positions = vision.fpn_hidden_states[-2], vision.fpn_position_encoding[-2]
    batch = features.shape[0]
    image = features.flatten(2).transpose(1, 2)  # [B, H*W, C]
    image_positions = positions.flatten(2).transpose(1, 2).to(features.dtype)
    token = encoder.cls_embed.weight.view(1, 1, -1).expand(batch, 1, -1)
    token = encoder.prompt_layer_norm(encoder.final_proj(token))
    # one valid token: its self-attention mask is all ones, i.e. none
    for layer in encoder.layers:
        token = layer(prompt_feats=token, vision_feats=image, vision_pos_encoding=image_positions, prompt_mask=None)
    return encoder.output_layer_norm(token)


def sam3_prompt(
    model, vision, text_features: torch.Tensor, text_mask: torch.Tensor, concept_tokens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens [B, T + 1 (+Q), 256] (text, geometry, concept) and their mask (bool, True = valid)."""
    geometry = geometry_token(model, vision).to(text_features.dtype)
    parts, masks = [text_features, geometry], [text_mask.bool()]
    if concept_tokens is not None:
        parts.append(concept_tokens.to(text_features.dtype))
    extra = sum(part.shape[1] for part in parts[1:])
    masks.append(torch.ones(text_mask.shape[0], extra, dtype=torch.bool, device=text_mask.device))
    return torch.cat(parts, dim=1), torch.cat(masks, dim=1)
