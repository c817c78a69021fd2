"""Where ConceptSeg-R1's concept tokens enter SAM 3: the one place this choice is made.

INFERRED, not seen (ANATOMY section 2): the modified SAM 3 ships only as a binary zip, so the exact injection is
unverified. The evidence points to the Q concept tokens [1, Q, 256] being concatenated after SAM 3's text tokens,
all of them valid (unmasked), so every fusion point (DETR encoder, decoder, scoring, mask head) attends to them.
Change it here, and only here, when the real modified source can be read.

Masks follow transformers' Sam3Model convention: True / 1 = a token to attend to (upstream SAM 3 uses the opposite).
transformers' Sam3Model adds no geometry CLS token when there are no box prompts, so the prompt is text ⊕ concept.
"""

from __future__ import annotations

import torch


def sam3_prompt(
    text_features: torch.Tensor, text_mask: torch.Tensor, concept_tokens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens [B, T(+Q), 256] and their attention mask [B, T(+Q)] (bool, True = valid)."""
    text_mask = text_mask.bool()
    if concept_tokens is None:
        return text_features, text_mask
    concept_tokens = concept_tokens.to(text_features.dtype)
    concept_mask = torch.ones(concept_tokens.shape[:2], dtype=torch.bool, device=text_mask.device)
    return torch.cat([text_features, concept_tokens], dim=1), torch.cat([text_mask, concept_mask], dim=1)
