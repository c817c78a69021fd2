"""Image input handling shared by the reference and the runtime: validation, the two model resizes, demonstrations.

Accepted images: a path (str / os.PathLike), a PIL image, or a numpy uint8 array HxWx3 (RGB; pass bgr=True for
OpenCV frames). Monochrome inspection cameras are common, so HxW and HxWx1 uint8 arrays are taken as grayscale.
Everything else is refused with an InvalidInputError that says what was received, before any kernel runs.
Numpy frames reach the SAM 3 kernel (cseg.runtime.preprocess) as they are (a `Frame`); PIL serves paths, PIL inputs
and the VLM's resize.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from cseg.errors import InvalidInputError
from cseg.prompting import Layout

MAX_SIDE = 16384
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what folder sources are read for
VLM_SIDE = 600  # research: force-resize to int(sqrt(max_pixels=360000)) square, aspect not kept
SAM3_MEAN = SAM3_STD = 0.5
DEMO_BOX_COLOR = "red"
DEMO_BOX_WIDTH = 2
MAX_DEMOS = 4  # the research mosaic has 2x2 tiles
TILE_SIDE = VLM_SIDE // 2  # research mydataset.py: reference tiles of RESIZE_SIZE // 2 = 300 pixels
_limit_lock = threading.Lock()  # guards PIL's global pixel limit (see _pixel_limit)
_limit_users = 0
_limit_saved = Image.MAX_IMAGE_PIXELS


@dataclass
class Frame:
    """A validated image as the host path reads it: HxWx3 uint8 pixels with any strides (a camera buffer, a flipped
    view, a grey frame broadcast over 3 channels), in RGB or BGR order. Numpy frames are never copied or converted;
    the PIL image (for the VLM path and drawing) is made only when asked for."""

    pixels: np.ndarray
    bgr: bool = False
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    def pil(self) -> Image.Image:
        """The frame as an RGB PIL image (made on first use)."""
        if self.image is None:
            self.image = Image.fromarray(np.ascontiguousarray(self.pixels[:, :, ::-1] if self.bgr else self.pixels))
        return self.image


def load_frame(image, *, bgr: bool = False, what: str = "image") -> Frame:
    """Return `image` as a Frame, or raise InvalidInputError naming what is wrong with it."""
    if isinstance(image, Frame):
        return image
    if not isinstance(image, np.ndarray):
        pil = load_image(image, bgr=bgr, what=what)
        return Frame(np.asarray(pil), False, pil)
    image = np.asarray(image)  # subclasses (np.matrix, masked arrays) as the plain array they hold, not copied
    if image.dtype != np.uint8:
        raise InvalidInputError(
            f"{what} array has dtype {image.dtype}; expected uint8 (0-255). "
            "For floats in [0, 1] use (a * 255).round().astype(np.uint8)"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        hint = " (drop the alpha channel: a[..., :3])" if image.ndim == 3 and image.shape[2] == 4 else ""
        raise InvalidInputError(f"{what} array has shape {image.shape}; expected HxWx3 (or HxW grayscale){hint}")
    _check_size(image.shape[1], image.shape[0], what)
    # a grey frame is read through a zero channel stride: no copy, and bgr makes no difference to it
    return Frame(np.broadcast_to(image, (*image.shape[:2], 3)), bool(bgr) and image.shape[2] == 3)


def load_image(image, *, bgr: bool = False, what: str = "image") -> Image.Image:
    """Return `image` as an RGB PIL image, or raise InvalidInputError naming what is wrong with it."""
    if isinstance(image, (str, os.PathLike)):
        pil = _open(os.fspath(image), what)
    elif isinstance(image, Image.Image):
        if bgr:
            raise InvalidInputError(f"{what}: bgr=True applies to numpy arrays only, got a PIL image")
        pil = image
        with _decoding(what):  # a lazily opened image decodes here: truncated, closed, PIL's limits
            pil.load()
    elif isinstance(image, (np.ndarray, Frame)):
        return load_frame(image, bgr=bgr, what=what).pil()
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
    with _decoding(f"{what} path {path!r}"), _pixel_limit(), Image.open(path) as opened:
        _check_size(*opened.size, what)  # from the header: a small file can declare a huge image
        opened.load()
        return opened.copy()


def image_size(path, what: str = "image") -> tuple[int, int]:
    """(width, height) of the image file `path` from its header, without decoding the pixels."""
    if not os.path.isfile(path):
        raise InvalidInputError(f"{what} path {os.fspath(path)!r} does not exist or is not a file")
    with _decoding(f"{what} path {os.fspath(path)!r}"), _pixel_limit(), Image.open(path) as opened:
        return opened.size


@contextmanager
def _decoding(what: str):
    """PIL's errors while reading a file's header or decoding its pixels, as InvalidInputError saying what is wrong
    with the image: the one place for paths and for PIL images the caller opened lazily (decoded on first use)."""
    try:
        yield
    except InvalidInputError:  # our own checks inside (sizes); it is a ValueError too
        raise
    # PIL refuses a header above twice the raised limit itself, and warns above it (an error where warnings are)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{what} declares too many pixels: {exc}") from None
    except UnidentifiedImageError as exc:
        raise InvalidInputError(f"{what} is not a readable image: {exc}") from None
    except OSError as exc:  # "image file is truncated", a broken stream, a read error
        raise InvalidInputError(f"{what} is not a readable image (truncated or corrupt?): {exc}") from None
    except ValueError as exc:
        if "closed image" in str(exc):  # PIL's only ValueError for an image whose file was closed before it decoded
            raise InvalidInputError(f"{what} is a closed PIL image: pass it while it is open, or a copy made then "
                                    "(image.copy())") from None  # fmt: skip
        # a PNG text chunk beyond PngImagePlugin.MAX_TEXT_CHUNK, a malformed header field
        raise InvalidInputError(f"{what} cannot be decoded: {exc}") from None


def vlm_image(image: Image.Image) -> Image.Image:
    """The research VLM input: a VLM_SIDE square, aspect ratio not kept (PIL bicubic, as Image.resize defaults)."""
    return image.resize((VLM_SIDE, VLM_SIDE), Image.Resampling.BICUBIC)


def vlm_target(image: Image.Image, demos) -> Image.Image:
    """The target as the VLM sees it: the VLM square of `image`, or of a prepared Episode's own target."""
    return vlm_image(demos.target if isinstance(demos, Episode) and demos.target is not None else image)


@dataclass(frozen=True)
class Episode:
    """A reference image already made (the research evaluation's episodes, cseg.eval.datasets) and its prompt layout;
    `image` None: no reference image, only the layout's question template (ReasonSeg). `target`: the image the VLM
    reasons over (resized to its square as any target) in place of the one SAM 3 segments, when the two are made
    from the original separately (the research ReasonSeg script: the VLM sees the original resized to 600x600, SAM 3
    a 1008x1008 resize of it)."""

    image: Image.Image | None
    layout: Layout
    target: Image.Image | None = None


def check_demos(demos):
    """Validate demonstrations: a list of (image, boxes) pairs, boxes xyxy in that image's pixels (or an Episode)."""
    if demos is None:
        return []
    if isinstance(demos, Episode):
        if demos.target is None:
            return demos
        return replace(demos, target=load_image(demos.target, what="the episode's target"))
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


def render_demonstrations(demos) -> tuple[Image.Image | None, Layout]:
    """The reference image the VLM sees and the prompt layout that goes with it.

    One demonstration: resized to the VLM square with its boxes drawn in red, the question of the research inference
    script (src/eval/inference_single_example.py). Two to four: the research benchmark episode (mydataset.py
    build_meta_reference + construct_mosaic): bilinear 300x300 tiles in a 2x2 mosaic, each tile's boxes offset into
    it, the first box (the top-left tile's) withheld for the model's self-check and the others drawn and listed in the
    "cot" question. Extrapolated beyond the research, which has exactly one box per tile: a tile's boxes are listed in
    order, a tile without boxes lists [] (as an empty reference mask does there), and demonstrations without any box
    get the episode question without boxes and check (as MIG references without ref_box do there).
    """
    if isinstance(demos, Episode):
        return demos.image, demos.layout
    if len(demos) == 1:
        image, boxes = demos[0]
        canvas = vlm_image(image)
        scaled = [_scale_box(b, image.size, (VLM_SIDE, VLM_SIDE), (0, 0)) for b in boxes]
        draw_boxes(canvas, scaled)
        return canvas, Layout("inference", 1, bool(scaled))
    tiles, entries = [], []
    for i, (image, boxes) in enumerate(demos):
        tiles.append(tile(image))
        offset = tile_offset(i)
        entries += [_scale_box(b, image.size, (TILE_SIDE, TILE_SIDE), offset) for b in boxes] or [[]]
    canvas = mosaic(tiles)
    if not any(entries):
        return canvas, Layout("cot", len(demos), listed=None)
    draw_boxes(canvas, entries[1:])  # the first is withheld: not drawn, not listed
    return canvas, Layout("cot", len(demos), listed=entries[1:])


def tile(image: Image.Image) -> Image.Image:
    """A reference as a mosaic tile: torchvision's resize of the research code, PIL bilinear on PIL images."""
    return image.resize((TILE_SIDE, TILE_SIDE), Image.Resampling.BILINEAR)


def tile_offset(index: int) -> tuple[int, int]:
    """(x, y) of tile `index` in the 2x2 mosaic: row-major, as construct_mosaic lays them."""
    return (index % 2) * TILE_SIDE, (index // 2) * TILE_SIDE


def mosaic(tiles: Sequence[Image.Image]) -> Image.Image:
    """Up to four TILE_SIDE tiles on a black VLM square."""
    canvas = Image.new("RGB", (VLM_SIDE, VLM_SIDE))
    for i, image in enumerate(tiles):
        canvas.paste(image, tile_offset(i))
    return canvas


def draw_boxes(canvas: Image.Image, boxes) -> None:
    """Red 2-pixel rectangles (research draw_bboxes: entries that are not 4 numbers are skipped)."""
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        if box is not None and len(box) == 4:
            draw.rectangle(box, outline=DEMO_BOX_COLOR, width=DEMO_BOX_WIDTH)


def _scale_box(box, src: tuple[int, int], dst: tuple[int, int], offset: tuple[int, int]) -> list[int]:
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    x1, y1, x2, y2 = box
    return [round(x1 * sx) + offset[0], round(y1 * sy) + offset[1], round(x2 * sx) + offset[0], round(y2 * sy) + offset[1]]
