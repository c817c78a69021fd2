"""Image input handling shared by the reference and the runtime: validation, the two model resizes, demonstrations.

Accepted images: a path (str / os.PathLike), a PIL image, or a numpy uint8 array HxWx3 (RGB; pass bgr=True for
OpenCV frames). Monochrome inspection cameras are common, so HxW and HxWx1 uint8 arrays are taken as grayscale and
expanded to RGB. Everything else is refused with an InvalidInputError that says what was received.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from cseg.errors import InvalidInputError

MAX_SIDE = 16384
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what folder sources are read for
VLM_SIDE = 600  # research: force-resize to int(sqrt(max_pixels=360000)) square, aspect not kept
SAM3_MEAN = SAM3_STD = 0.5
DEMO_BOX_COLOR = "red"
DEMO_BOX_WIDTH = 2
MAX_DEMOS = 4  # the research mosaic has 2x2 tiles
_limit_lock = threading.Lock()  # guards PIL's global pixel limit (see _pixel_limit)
_limit_users = 0
_limit_saved = Image.MAX_IMAGE_PIXELS


def load_image(image, *, bgr: bool = False, what: str = "image") -> Image.Image:
    """Return `image` as an RGB PIL image, or raise InvalidInputError naming what is wrong with it."""
    if isinstance(image, (str, os.PathLike)):
        pil = _open(os.fspath(image), what)
    elif isinstance(image, Image.Image):
        pil = image
        if bgr:
            raise InvalidInputError(f"{what}: bgr=True applies to numpy arrays only, got a PIL image")
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image, bgr, what)
        _check_size(rgb.shape[1], rgb.shape[0], what)
        pil = Image.fromarray(rgb)
    elif image is None:
        raise InvalidInputError(f"{what} is None: pass a path, a PIL image or an HxWx3 uint8 numpy array")
    else:
        raise InvalidInputError(
            f"{what} must be a path, a PIL image or an HxWx3 uint8 numpy array, got {type(image).__name__}"
        )
    if pil.mode not in ("RGB", "L", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        raise InvalidInputError(f"{what} has PIL mode {pil.mode!r}; convert it to 8-bit RGB first")
    _check_size(*pil.size, what)
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def _check_size(width: int, height: int, what: str) -> None:
    if width < 2 or height < 2 or width > MAX_SIDE or height > MAX_SIDE:
        raise InvalidInputError(f"{what} is {width}x{height}; each side must be between 2 and {MAX_SIDE} pixels")


@contextmanager
def _pixel_limit():
    """PIL's own bomb limit (~89M pixels, process-wide) refused legal images such as 16384x11000; it is raised to
    MAX_SIDE² only while cseg opens a file, whose size _open checks from the header before decoding, and the
    caller's value is back once the last concurrent open ends."""
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_SIDE * MAX_SIDE
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _open(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise InvalidInputError(f"{what} path {path!r} does not exist or is not a file")
    try:
        with _pixel_limit(), Image.open(path) as opened:
            _check_size(*opened.size, what)  # from the header: a small file can declare a huge image
            opened.load()
            return opened.copy()
    # PIL refuses a header above twice the raised limit itself, and warns above it (an error where warnings are)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{what} path {path!r} declares too many pixels: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"{what} path {path!r} is not a readable image: {exc}") from None


def _array_to_rgb(array: np.ndarray, bgr: bool, what: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InvalidInputError(
            f"{what} array has dtype {array.dtype}; expected uint8 (0-255). "
            "For floats in [0, 1] use (a * 255).round().astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.ndim != 3 or array.shape[2] != 3:
        hint = " (drop the alpha channel: a[..., :3])" if array.ndim == 3 and array.shape[2] == 4 else ""
        raise InvalidInputError(f"{what} array has shape {array.shape}; expected HxWx3 (or HxW grayscale){hint}")
    return np.ascontiguousarray(array[:, :, ::-1] if bgr else array)


def vlm_image(image: Image.Image) -> Image.Image:
    """The research VLM input: a VLM_SIDE square, aspect ratio not kept (PIL bicubic, as Image.resize defaults)."""
    return image.resize((VLM_SIDE, VLM_SIDE), Image.Resampling.BICUBIC)


def sam3_pixels(image: Image.Image, size: int) -> np.ndarray:
    """SAM 3 input [1, 3, size, size] float32: bilinear resize, scale to [0, 1], normalise with mean = std = 0.5."""
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return ((resized - SAM3_MEAN) / SAM3_STD).transpose(2, 0, 1)[None].copy()


def check_demos(demos) -> list[tuple[Image.Image, list[tuple[float, float, float, float]]]]:
    """Validate demonstrations: a list of (image, boxes) pairs, boxes xyxy in that image's pixels."""
    if demos is None:
        return []
    if not isinstance(demos, (list, tuple)):
        raise InvalidInputError(f"demos must be a list of (image, boxes) pairs, got {type(demos).__name__}")
    if len(demos) > MAX_DEMOS:
        raise InvalidInputError(f"{len(demos)} demonstrations given; ConceptSeg-R1 takes at most {MAX_DEMOS}")
    checked = []
    for i, demo in enumerate(demos):
        if not (isinstance(demo, (list, tuple)) and len(demo) == 2):
            raise InvalidInputError(f"demos[{i}] must be an (image, boxes) pair, got {type(demo).__name__}")
        image = load_image(demo[0], what=f"demos[{i}] image")
        checked.append((image, _check_boxes(demo[1], image.size, i)))
    return checked


def _check_boxes(boxes, size: tuple[int, int], i: int) -> list[tuple[float, float, float, float]]:
    if boxes is None:
        return []
    try:
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    except (TypeError, ValueError):
        raise InvalidInputError(f"demos[{i}] boxes must be a list of [x1, y1, x2, y2] numbers, got {boxes!r}") from None
    width, height = size
    for box in array:
        x1, y1, x2, y2 = box
        if not (np.isfinite(box).all() and 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InvalidInputError(
                f"demos[{i}] box {box.tolist()} is not a valid xyxy box inside the {width}x{height} image"
            )
    return [tuple(map(float, box)) for box in array]


def render_demonstrations(demos: Sequence[tuple[Image.Image, list]]) -> tuple[Image.Image, bool]:
    """The reference image the VLM sees, and whether boxes were drawn on it.

    One demonstration: resized to the VLM square with its boxes drawn in red (the research inference script).
    Two to four: pasted as half-size tiles into a 2x2 mosaic, boxes offset into the mosaic (the research benchmark
    episode layout; its withheld-box self-check is a training device and is not reproduced).
    """
    if len(demos) == 1:
        image, boxes = demos[0]
        canvas = vlm_image(image)
        scaled = [_scale_box(b, image.size, (VLM_SIDE, VLM_SIDE), (0, 0)) for b in boxes]
    else:
        half = VLM_SIDE // 2
        canvas = Image.new("RGB", (VLM_SIDE, VLM_SIDE))
        scaled = []
        for i, (image, boxes) in enumerate(demos):
            offset = ((i % 2) * half, (i // 2) * half)
            canvas.paste(image.resize((half, half), Image.Resampling.BICUBIC), offset)
            scaled += [_scale_box(b, image.size, (half, half), offset) for b in boxes]
    draw = ImageDraw.Draw(canvas)
    for box in scaled:
        draw.rectangle(box, outline=DEMO_BOX_COLOR, width=DEMO_BOX_WIDTH)
    return canvas, bool(scaled)


def _scale_box(box, src: tuple[int, int], dst: tuple[int, int], offset: tuple[int, int]) -> list[int]:
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    x1, y1, x2, y2 = box
    return [round(x1 * sx) + offset[0], round(y1 * sy) + offset[1], round(x2 * sx) + offset[0], round(y2 * sy) + offset[1]]
