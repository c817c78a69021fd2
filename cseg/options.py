"""The options of a segment call, as one validated object shared by every backend (Runtime, the PyTorch reference).

    from cseg.options import SegmentOptions
    evaluation = SegmentOptions(route="full", mask_size=(512, 512), mask_interpolation="bicubic", max_length=2048)
    result = rt.segment(image, "the cat", options=evaluation)
    result = rt.segment(image, "the cat", route="full", mask_size=(512, 512))  # the same options as keywords

A bad value is refused when the object is made (InvalidInputError naming the option), before any image is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cseg.errors import InvalidInputError
from cseg.images import MAX_SIDE

ROUTE_CHOICES = ("auto", "shortcut", "full")
MASK_INTERPOLATIONS = ("bilinear", "bicubic")  # torch's bilinear (SAM 3, the default); cv2's INTER_CUBIC


def check_bgr(bgr) -> None:
    """bgr must be a real bool (numpy's too): a truthy string such as "no" would silently swap the channels."""
    if not isinstance(bgr, (bool, np.bool_)):
        raise InvalidInputError(f"bgr must be True or False, got {bgr!r}")


def check_count(name: str, value) -> None:
    """None or a positive int (not a bool): token budgets."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInputError(f"{name} must be a positive integer or None, got {value!r}")


def check_options(route: str, max_new_tokens, bgr=False) -> None:
    check_bgr(bgr)
    if route not in ROUTE_CHOICES:
        raise InvalidInputError(f"route must be one of {ROUTE_CHOICES}, got {route!r}")
    check_count("max_new_tokens", max_new_tokens)


def check_mask_size(mask_size) -> tuple[int, int] | None:
    """None (the input image's size) or (height, width) of positive ints up to images.MAX_SIDE."""
    if mask_size is None:
        return None
    if (not isinstance(mask_size, (tuple, list)) or len(mask_size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
                       for v in mask_size)):  # fmt: skip
        raise InvalidInputError(f"mask_size must be None or (height, width) of 1 to {MAX_SIDE} pixels, "
                                f"got {mask_size!r}")  # fmt: skip
    return int(mask_size[0]), int(mask_size[1])


def check_mask_interpolation(interpolation) -> str:
    if not isinstance(interpolation, str) or interpolation not in MASK_INTERPOLATIONS:
        raise InvalidInputError(f"mask_interpolation must be one of {MASK_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


@dataclass(frozen=True)
class SegmentOptions:
    """How `segment` / `segment_many` serve a request (validated when made; mask_size is kept as a tuple of ints).

    route: "auto" (the Shortcut Router decides), "shortcut" (SAM 3 on the prompt alone) or "full" (the reasoner).
    max_new_tokens: at most this many generated tokens (None: the bundle's budget).
    bgr: the image array is in OpenCV's BGR order.
    mask_size: (height, width) the masks are upsampled to from SAM 3's logits and thresholded at (an evaluation at a
        fixed size, as the research scripts do); None: the input image's size.
    mask_interpolation: "bilinear" (torch's, align_corners=False: what SAM 3 and the research's own inference do) or
        "bicubic" (cv2.resize INTER_CUBIC: what the research ReasonSeg evaluation does).
    max_length: prompt + completion at most this many tokens (the research ReasonSeg evaluation's generate(
        max_length=2048)); the bundle's own budget still applies, and max_new_tokens can only lower it further.
    """

    route: str = "auto"
    max_new_tokens: int | None = None
    bgr: bool = False
    mask_size: tuple[int, int] | None = None
    mask_interpolation: str = "bilinear"
    max_length: int | None = None

    def __post_init__(self):
        check_options(self.route, self.max_new_tokens, self.bgr)
        object.__setattr__(self, "mask_size", check_mask_size(self.mask_size))  # a list or numpy ints -> (int, int)
        check_mask_interpolation(self.mask_interpolation)
        check_count("max_length", self.max_length)

    @classmethod
    def of(cls, options: SegmentOptions | None = None, **settings) -> SegmentOptions:
        """One call's options: `options` (default: the defaults) with the keywords a caller gave replacing its
        fields, as segment(..., options=o, route="full") means. A keyword that is no option is a TypeError, as an
        unknown keyword argument always was."""
        unknown = sorted(settings.keys() - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            names = ", ".join(field.name for field in dataclasses.fields(cls))
            raise TypeError(f"unexpected keyword argument {', '.join(map(repr, unknown))}; the segment options are "
                            f"{names} (and options=SegmentOptions(...))")  # fmt: skip
        if options is None:
            return cls(**settings)
        if not isinstance(options, cls):
            raise InvalidInputError(f"options must be a cseg.options.SegmentOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **settings) if settings else options
