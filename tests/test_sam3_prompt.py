"""SAM 3's prompt as Meta's SAM 3 builds it: 32 text tokens, 1 image-dependent geometry token, Q concept tokens."""

import sys

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cseg.export.sam3_prompt import geometry_token, sam3_prompt
from cseg.images import load_frame
from cseg.runtime.preprocess import sam3_pixels


@pytest.fixture(scope="module")
def vision(reference, photo):
    return reference.sam3_vision(torch.from_numpy(sam3_pixels(load_frame(photo), reference.sam3.image_size)))


class _RoiAlignOfNoBoxes:
    """torchvision.ops as transformers' geometry encoder calls it with zero boxes (no torchvision here)."""

    class ops:
        @staticmethod
        def roi_align(features, boxes, size):
            assert sum(len(b) for b in boxes) == 0
            return features.new_zeros(0, features.shape[1], size, size)


def test_geometry_token_is_transformers_geometry_encoder_with_no_boxes(reference, vision, monkeypatch):
    modeling = sys.modules[type(reference.sam3.model).__module__]  # the module itself, not transformers' lazy proxy
    monkeypatch.setattr(modeling, "torchvision", _RoiAlignOfNoBoxes, raising=False)
    out = reference.sam3.model.geometry_encoder(
        box_embeddings=torch.zeros(1, 0, 4), box_mask=torch.zeros(1, 0, dtype=torch.bool),
        box_labels=torch.zeros(1, 0, dtype=torch.long), img_feats=vision.fpn_hidden_states[:-1],
        img_pos_embeds=vision.fpn_position_encoding[:-1],
    )  # fmt: skip
    assert out.last_hidden_state.shape == (1, 1, 256) and out.attention_mask.all()
    torch.testing.assert_close(geometry_token(reference.sam3.model, vision), out.last_hidden_state)


def test_prompt_is_text_geometry_concepts_and_the_token_depends_on_the_image(reference, vision):
    features, mask = reference.sam3_text("red apple")
    concepts = torch.randn(1, 5, 256)
    tokens, valid = sam3_prompt(reference.sam3.model, vision, features, mask, concepts)
    assert tokens.shape == (1, 32 + 1 + 5, 256)
    assert valid.dtype == torch.bool and valid[0, 32:].all() and torch.equal(valid[0, :32], mask[0].bool())
    torch.testing.assert_close(tokens[:, :32], features)
    torch.testing.assert_close(tokens[:, 33:], concepts)
    torch.testing.assert_close(tokens[:, 32:33], geometry_token(reference.sam3.model, vision))
    shortcut, shortcut_valid = sam3_prompt(reference.sam3.model, vision, features, mask, None)
    assert shortcut.shape == (1, 33, 256) and shortcut_valid.shape == (1, 33)
    other = reference.sam3_vision(torch.zeros(1, 3, reference.sam3.image_size, reference.sam3.image_size))
    assert not torch.allclose(geometry_token(reference.sam3.model, other), tokens[:, 32:33])


@torch.no_grad()
def test_the_geometry_token_changes_sams_answer(reference, vision):
    """The reference decodes with it: its logits are not those of transformers' text-only prompt."""
    features, mask = reference.sam3_text("red apple")
    with_token = reference.sam3_decode(vision, features, mask)
    text_only = reference.sam3.model(
        vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(pooler_output=features), attention_mask=mask
    )
    assert not np.allclose(with_token.semantic_logits.numpy(), text_only.semantic_seg.numpy(), atol=1e-4)
