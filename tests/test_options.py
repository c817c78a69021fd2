"""cseg.options.SegmentOptions: the options of a segment call as one validated object, and the keyword API that
builds it (rt.segment(image, prompt, route=..., mask_size=...)) unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cseg.errors import InvalidInputError
from cseg.options import SegmentOptions


def test_defaults_and_normalised_mask_size():
    options = SegmentOptions()
    assert (options.route, options.max_new_tokens, options.bgr, options.mask_size, options.mask_interpolation,
            options.max_length) == ("auto", None, False, None, "bilinear", None)  # fmt: skip
    assert SegmentOptions(mask_size=[np.int64(30), 40]).mask_size == (30, 40)
    assert type(SegmentOptions(mask_size=[np.int64(30), 40]).mask_size[0]) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.route = "full"


@pytest.mark.parametrize("settings, message", [
    ({"route": "fast"}, r"route must be one of \('auto', 'shortcut', 'full'\), got 'fast'"),
    ({"bgr": "no"}, "bgr must be True or False, got 'no'"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer or None, got 0"),
    ({"max_new_tokens": True}, "max_new_tokens must be a positive integer or None, got True"),
    ({"mask_size": (0, 5)}, r"mask_size must be None or \(height, width\) of 1 to \d+ pixels, got \(0, 5\)"),
    ({"mask_size": 64}, "mask_size must be None or"),
    ({"mask_interpolation": "nearest"}, r"mask_interpolation must be one of \('bilinear', 'bicubic'\), got 'nearest'"),
    ({"max_length": -3}, "max_length must be a positive integer or None, got -3"),
])  # fmt: skip
def test_bad_values_are_refused_naming_the_option(settings, message):
    with pytest.raises(InvalidInputError, match=message):
        SegmentOptions(**settings)
    with pytest.raises(InvalidInputError, match=message):
        SegmentOptions.of(SegmentOptions(route="full"), **settings)


def test_keywords_replace_the_fields_of_given_options():
    base = SegmentOptions(route="full", max_new_tokens=4)
    assert SegmentOptions.of(base) is base
    assert SegmentOptions.of(base, route="shortcut") == SegmentOptions(route="shortcut", max_new_tokens=4)
    assert SegmentOptions.of(None, bgr=True) == SegmentOptions(bgr=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rout'; the segment options are route, "):
        SegmentOptions.of(base, rout="full")
    with pytest.raises(InvalidInputError, match="options must be a cseg.options.SegmentOptions, got dict"):
        SegmentOptions.of({"route": "full"})


def test_the_runtime_takes_options_as_keywords_or_one_object(runtime, photo):
    keywords = runtime.segment(photo, "helmet", route="full", max_new_tokens=2, mask_size=(40, 50))
    given = runtime.segment(photo, "helmet", options=SegmentOptions(route="full", max_new_tokens=2, mask_size=(40, 50)))
    mixed = runtime.segment(photo, "helmet", options=SegmentOptions(route="shortcut", max_new_tokens=2),
                            route="full", mask_size=(40, 50))  # fmt: skip
    for result in (given, mixed):
        assert result.route == keywords.route == "full" and result.token_ids == keywords.token_ids
        assert result.mask.shape == (40, 50) and np.array_equal(result.mask, keywords.mask)
    with pytest.raises(InvalidInputError, match="route must be one of"):
        runtime.segment(photo, "helmet", route="fast")
    with pytest.raises(InvalidInputError, match="mask_size must be None or"):
        runtime.segment_many(photo, ["helmet"], options=SegmentOptions(), mask_size=(5,))
    with pytest.raises(TypeError, match="unexpected keyword argument 'routing'"):
        runtime.segment(photo, "helmet", routing="full")
