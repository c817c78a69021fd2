"""The PyTorch reference pipeline end to end on tiny checkpoints of the real architectures."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cseg import prompting
from cseg.errors import InvalidInputError
from cseg.export.reference import Sam3Result
from cseg.images import load_frame, load_image
from cseg.runtime.preprocess import sam3_pixels


def test_one_word_prompt_takes_the_shortcut_when_presence_is_high(reference, photo):
    result = reference.segment(photo, "astronaut")
    assert result.presence > prompting.shortcut_limit("astronaut")  # random weights give presence ~0.5
    assert (result.route, result.route_by, result.route_score) == ("shortcut", "heuristic", result.presence)
    assert result.mask.shape == photo.shape[:2] and result.answer == "" and result.text == ""
    assert {"preprocess", "sam3_vision", "sam3_text", "sam3_decoder", "postprocess"} <= set(result.timings)


def test_long_question_reasons_without_trying_the_shortcut(reference, photo):
    question = "the person holding a flag here"
    result = reference.segment(photo, question, max_new_tokens=6)
    assert (result.route, result.route_by, result.route_score) == ("full", "heuristic", None)
    assert {"generate", "hidden_states", "concept_head"} <= set(result.timings)
    assert result.text  # random weights write something, within the budget


def test_low_presence_falls_back_to_reasoning(reference, photo):
    question = "four words right here"  # limit 0.8 > presence ~0.5
    result = reference.segment(photo, question, max_new_tokens=4)
    assert result.route == "full" and result.route_score is not None
    assert result.route_score <= prompting.shortcut_limit(question)


def test_forced_routes_are_recorded_as_user_choices(reference, photo):
    assert reference.segment(photo, "a long question with many words", route="shortcut").route == "shortcut"
    forced = reference.segment(photo, "cat", route="full", max_new_tokens=3)
    assert (forced.route, forced.route_by) == ("full", "user")


def test_full_path_feeds_the_concept_tokens_into_sam3(reference, photo):
    inputs = reference.vlm_inputs(load_image(photo), "helmet")
    reasoning = reference.generate(inputs, 5, {})
    completion = reasoning.completion_ids.shape[1]
    assert completion <= 5
    assert reasoning.hidden_states.shape == (1, completion, reference.vlm.model.config.text_config.hidden_size)
    assert reasoning.concept_tokens.shape == (1, reference.vlm.num_queries, 256)
    vision = reference.sam3_vision(torch.from_numpy(sam3_pixels(load_frame(photo), reference.sam3.image_size)))
    features, mask = reference.sam3_text(reasoning.parsed.answer)
    with_concepts = reference.sam3_decode(vision, features, mask, reasoning.concept_tokens)
    without = reference.sam3_decode(vision, features, mask, None)
    assert not torch.allclose(with_concepts.semantic_logits, without.semantic_logits)


def test_mask_is_the_upsampled_semantic_logit_above_zero(reference, photo):
    result = reference.segment(photo, "astronaut", route="shortcut")
    vision = reference.sam3_vision(torch.from_numpy(sam3_pixels(load_frame(photo), reference.sam3.image_size)))
    sam = reference.sam3_decode(vision, *reference.sam3_text("astronaut"))
    expected = F.interpolate(sam.semantic_logits, size=photo.shape[:2], mode="bilinear", align_corners=False)[0, 0] > 0
    assert np.array_equal(result.mask, expected.numpy())


def test_instances_keep_scores_above_half_and_scale_boxes_to_pixels(reference):
    logits = torch.full((1, 4), -10.0)
    logits[0, 1] = logits[0, 3] = 10.0
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1], [0.5, 0.5, 1.0, 1.0]]])
    masks = torch.full((1, 4, 8, 8), -5.0)
    masks[0, 1, :4, :4] = 5.0
    sam = Sam3Result(torch.zeros(1, 1, 8, 8), torch.tensor([[10.0]]), logits, boxes, masks)
    _, instances = reference.postprocess(sam, (20, 10))
    assert len(instances) == 2
    np.testing.assert_allclose(instances.boxes[0], [1, 4, 5, 12], atol=1e-5)  # x * width 10, y * height 20
    assert instances.masks.shape == (2, 20, 10) and instances.masks[0, :9, :4].all()
    assert not instances.masks[0, 12:].any()


def test_demonstrations_are_the_first_image(reference, photo):
    inputs = reference.vlm_inputs(load_image(photo), "scratch", [(load_image(photo), [(10.0, 10.0, 100.0, 90.0)])])
    assert inputs["image_grid_thw"].tolist() == [[1, 42, 42], [1, 42, 42]]
    image_token = reference.vlm.model.config.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == 2 * 441
    result = reference.segment(photo, "scratch", demos=[(photo, [[10, 10, 100, 90]])], route="full", max_new_tokens=2)
    assert result.route == "full"


@pytest.mark.parametrize(
    "image, prompt, kwargs, message",
    [
        (None, "cat", {}, "None"),
        (np.zeros((8, 8, 3), np.float64), "cat", {}, "dtype float64"),
        (np.zeros((8, 8, 4), np.uint8), "cat", {}, "alpha"),
        ("/no/such/image.jpg", "cat", {}, "does not exist"),
        ("photo", "", {}, "empty"),
        ("photo", "cat", {"route": "fastest"}, "route"),
        ("photo", "cat", {"max_new_tokens": 0}, "max_new_tokens"),
        ("photo", "cat", {"demos": [("photo",)]}, "pair"),
    ],
)
def test_segment_refuses_bad_input(reference, photo, image, prompt, kwargs, message):
    image = photo if isinstance(image, str) and image == "photo" else image
    demos = kwargs.pop("demos", None)
    if demos:
        demos = [tuple(photo if d == "photo" else d for d in pair) for pair in demos]
    with pytest.raises(InvalidInputError, match=message):
        reference.segment(image, prompt, demos, **kwargs)


def test_segment_many_encodes_the_image_once(reference, photo, monkeypatch):
    calls = []
    original = reference.sam3_vision
    monkeypatch.setattr(reference, "sam3_vision", lambda pixels: calls.append(1) or original(pixels))
    results = reference.segment_many(photo, ["astronaut", "flag"], route="shortcut")
    assert len(calls) == 1 and [r.route for r in results] == ["shortcut", "shortcut"]
    assert "sam3_vision" in results[0].timings and "sam3_vision" not in results[1].timings
    single = reference.segment(photo, "flag", route="shortcut")
    assert np.array_equal(results[1].mask, single.mask)
    with pytest.raises(InvalidInputError, match="list of strings"):
        reference.segment_many(photo, "astronaut")
