"""The runtime's numpy/tokenizers ports of transformers code, each against the transformers original."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cseg import prompting
from cseg.export.graphs.vlm_vision import host_inputs
from cseg.images import load_image, vlm_image
from oracles import resize_bilinear
from cseg.runtime.vlm_inputs import image_patches, rope_positions, vision_inputs


def test_image_patches_match_the_qwen_image_processor(reference, runtime, photo):
    processor = reference.vlm.image_processor
    for image in (vlm_image(load_image(photo)), load_image(photo).resize((333, 517))):
        want = processor(images=[image], return_tensors="np")
        patches, grid = image_patches(image, runtime.prep["vlm"])
        assert [grid] == want["image_grid_thw"].tolist()
        np.testing.assert_allclose(patches, want["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("grids", [[[1, 42, 42]], [[1, 42, 42], [1, 42, 42]], [[1, 28, 46]], [[1, 16, 60]]])
def test_vision_inputs_match_transformers_helpers(reference, runtime, grids):
    want = host_inputs(torch.tensor(grids), reference.vlm.model.config.vision_config)
    got = vision_inputs(grids, runtime.model["vision"])
    assert want.keys() == got.keys()
    for key in want:
        assert np.array_equal(want[key].numpy(), got[key]), key


@pytest.mark.parametrize("with_demo", [False, True])
def test_prompt_ids_and_rope_positions_match_transformers(reference, runtime, photo, with_demo):
    image = load_image(photo)
    demos = [(image, [(5.0, 5.0, 50.0, 40.0)])] if with_demo else []
    inputs = reference.vlm_inputs(image, "scratch on the lid", demos)
    problem = prompting.build_question("scratch on the lid", n_references=int(with_demo))
    text = prompting.render_chat(problem, 1 + int(with_demo))
    assert text == reference.vlm.tokenizer.apply_chat_template(
        prompting.build_messages(problem, 1 + int(with_demo)), tokenize=False, add_generation_prompt=True
    )
    grids = inputs["image_grid_thw"].tolist()
    ids, question = runtime.chat.encode_prompt(problem, [t * h * w // 4 for t, h, w in grids], "scratch on the lid")
    assert np.array_equal(ids, inputs["input_ids"].numpy())
    assert runtime.chat.decode(ids[0, question]).strip() == "scratch on the lid"
    want, _ = reference.vlm.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
    got = rope_positions(ids, reference.vlm.model.config.image_token_id, grids, 2)
    assert np.array_equal(got, want.numpy())


@pytest.mark.parametrize("text", ["red apple", "", "A  Much LONGER phrase, " * 10, "scratch\non the lid!"])
def test_sam3_tokenizer_matches_the_clip_tokenizer(reference, runtime, text):
    ids, mask = runtime.sam3_tokenizer.encode(text)
    want = reference.sam3.tokenizer([text], padding="max_length", max_length=32, truncation=True)
    assert ids.tolist() == want["input_ids"] and mask.tolist() == want["attention_mask"]


def test_completion_decoding_matches_transformers(reference, runtime):
    ids = list(range(0, 900, 7)) + [reference.vlm.model.config.image_token_id, 915]
    want = reference.vlm.tokenizer.decode(ids, skip_special_tokens=True)
    assert runtime.chat.decode(ids) == want


@pytest.mark.parametrize("source, target", [((96, 96), (512, 512)), ((24, 24), (7, 13)), ((96, 80), (401, 600)),
                                            ((1, 5), (3, 11))])  # fmt: skip
def test_bilinear_resize_matches_torch(source, target):
    logits = torch.randn(3, *source, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(logits[None], size=target, mode="bilinear", align_corners=False)[0]
    got = resize_bilinear(logits.numpy(), *target)
    # Where a float32 source coordinate lands next to a pixel boundary the tap weights differ by ~1e-5: torch's own
    # float32 and float64 results differ by as much (3.5e-5 seen at 96x80 -> 401x600). Masks threshold at 0, so only
    # pixels with |logit| below this can flip.
    np.testing.assert_allclose(got, want.numpy(), atol=5e-5)


def test_render_chat_without_images_is_text_only():
    assert "<|image_pad|>" not in prompting.render_chat("Q", 0)
    assert isinstance(Image.new("RGB", (2, 2)), Image.Image)


def test_window_layout_pads_gathers_and_scatters_back():
    from cseg.runtime.vlm_inputs import window_layout

    layout = window_layout([3, 1, 4], 4)
    assert layout["window_gather"].tolist() == [[0, 1, 2, 0], [3, 3, 3, 3], [4, 5, 6, 7]]  # padding reads the first
    assert layout["window_valid"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert layout["window_scatter"].tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    tokens = np.arange(8) * 10  # gather into the padded windows and back: every token where it was
    assert np.array_equal(tokens[layout["window_gather"]].ravel()[layout["window_scatter"]], tokens)
    with pytest.raises(ValueError, match="window lengths"):
        window_layout([5], 4)
