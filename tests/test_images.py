"""Image input validation and the two model resizes."""

import warnings

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cseg import images, prompting
from cseg.errors import InvalidInputError
from cseg.runtime.preprocess import sam3_pixels


def test_numpy_rgb_bgr_pil_and_path_give_the_same_image(photo, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    reference = np.asarray(images.load_image(photo))
    assert np.array_equal(np.asarray(images.load_image(photo[:, :, ::-1], bgr=True)), reference)
    assert np.array_equal(np.asarray(images.load_image(Image.fromarray(photo))), reference)
    assert np.array_equal(np.asarray(images.load_image(str(path))), reference)
    assert np.array_equal(np.asarray(images.load_image(path)), reference)


def test_grayscale_arrays_are_expanded_to_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for array in (gray, gray[:, :, None]):
        rgb = np.asarray(images.load_image(array))
        assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[:, :, 1], gray)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "is None"),
        ([[1, 2], [3, 4]], "got list"),
        (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((8, 8, 3), bool), "dtype bool"),
        (np.zeros((8, 8, 4), np.uint8), "alpha"),
        (np.zeros((8, 8, 3, 1), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "8x0"),
        (np.zeros((1, 1, 3), np.uint8), "1x1"),
        (Image.new("F", (8, 8)), "mode 'F'"),
    ],
)
def test_bad_images_are_refused_with_what_was_received(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        images.load_image(bad)
    with pytest.raises(InvalidInputError, match=message):
        images.load_frame(bad)


def test_numpy_frames_are_served_as_they_are(photo):
    """The host path reads a camera buffer in place: no copy, no channel swap, no PIL image unless asked for."""
    bgr = photo[:, :, ::-1]
    frame = images.load_frame(bgr, bgr=True)
    assert np.shares_memory(frame.pixels, photo) and frame.bgr and frame.image is None
    assert np.array_equal(np.asarray(frame.pil()), photo)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    frame = images.load_frame(grey, bgr=True)  # bgr means nothing to a grey frame
    assert np.shares_memory(frame.pixels, grey) and frame.pixels.shape == (8, 8, 3) and not frame.bgr
    assert frame.pixels.strides[2] == 0
    with warnings.catch_warnings():  # numpy discourages np.matrix, but a user may still hold one
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = images.load_frame(np.asmatrix(grey))  # an ndarray subclass is read as the array it holds
    assert np.array_equal(matrix.pixels, frame.pixels) and type(matrix.pixels) is np.ndarray


def test_unreadable_and_missing_paths(tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a readable image"):
        images.load_image(not_an_image)
    with pytest.raises(InvalidInputError, match="does not exist"):
        images.load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="does not exist"):
        images.load_image(tmp_path)


def test_sam3_pixels_are_normalised_with_mean_and_std_half():
    white = Image.new("RGB", (50, 30), (255, 0, 128))
    pixels = sam3_pixels(images.load_frame(white), 28)
    assert pixels.shape == (1, 3, 28, 28) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0, :, 5, 5], [1.0, -1.0, 128 / 255 * 2 - 1], atol=1e-6)


def test_one_demonstration_is_resized_with_red_boxes_in_the_600_frame():
    demo = Image.new("RGB", (300, 150), (0, 0, 0))
    canvas, layout = images.render_demonstrations(images.check_demos([(demo, [[30, 15, 150, 75]])]))
    array = np.asarray(canvas)
    assert layout == prompting.Layout("inference", 1, boxes_drawn=True) and canvas.size == (600, 600)
    # the box (30, 15, 150, 75) scales x2 horizontally and x4 vertically: top edge at y = 60, x from 60 to 300
    assert tuple(array[60, 100]) == (255, 0, 0) and tuple(array[150, 300]) == (255, 0, 0)
    assert tuple(array[100, 100]) == (0, 0, 0) and tuple(array[58, 100]) == (0, 0, 0)


def test_several_demonstrations_become_a_2x2_mosaic():
    demos = [(Image.new("RGB", (40, 40), (i * 60, 0, 0)), []) for i in range(1, 4)]
    canvas, layout = images.render_demonstrations(images.check_demos(demos))
    array = np.asarray(canvas)
    assert layout == prompting.Layout("cot", 3, listed=None)  # no boxes at all: the episode question without check
    assert array[10, 10, 0] == 60 and array[10, 310, 0] == 120 and array[310, 10, 0] == 180
    assert tuple(array[310, 310]) == (0, 0, 0)  # empty tile stays black


def test_demonstration_episode_withholds_the_top_left_box():
    """2-4 demonstrations follow the research episode (mydataset.py): 300x300 tiles, boxes offset into the mosaic,
    the first (top-left) box neither drawn nor listed, the others drawn red and listed in the cot question."""
    demos = [(Image.new("RGB", (600, 300), (0, 0, 90)), [[60, 30, 400, 200]]),
             (Image.new("RGB", (100, 100), (0, 90, 0)), [[10, 20, 50, 60]]),
             (Image.new("RGB", (100, 100), (0, 0, 0)), [])]  # fmt: skip
    canvas, layout = images.render_demonstrations(images.check_demos(demos))
    array = np.asarray(canvas)
    # tile 0: x/2, y; tile 1: x3 + 300 across; tile 2: no box -> []
    assert layout == prompting.Layout("cot", 3, listed=[[330, 60, 450, 180], []])
    assert tuple(array[60, 400]) == (255, 0, 0) and tuple(array[120, 330]) == (255, 0, 0)  # drawn edges of tile 1
    assert tuple(array[30, 100]) == (0, 0, 90) and tuple(array[100, 30]) == (0, 0, 90)  # withheld: tile 0 untouched
    assert not (array[:300, :300] == (255, 0, 0)).all(axis=-1).any()
    text = prompting.problem_text("scratch", layout)
    assert "1. Reference Image : Bounding boxes at [[330, 60, 450, 180], []].\n" in text
    assert "induce the visual rule and check it by locating the missed bounding box in the top-left region in  the " \
           "reference image, apply" in text
    assert "</think>  <rule>Visual rule of the reference targets</rule><check>[x1, y1, x2, y2]</check> <bbox>" in text


@pytest.mark.parametrize(
    "demos, message",
    [
        ("x.png", "list of"),
        ([("x",)], "pair"),
        ([(np.zeros((8, 8, 3), np.uint8), [[0, 0, 9, 4]])], "not a valid xyxy box"),
        ([(np.zeros((8, 8, 3), np.uint8), [[4, 4, 2, 6]])], "not a valid xyxy box"),
        ([(np.zeros((8, 8, 3), np.uint8), "abc")], "numbers"),
        ([(np.zeros((8, 8, 3), np.uint8), [])] * 5, "at most 4"),
        ([(None, [])], r"demos\[0\] image is None"),
    ],
)
def test_bad_demonstrations_are_refused(demos, message):
    with pytest.raises(InvalidInputError, match=message):
        images.check_demos(demos)


def _png_with_late_text(image: Image.Image, size: int) -> bytes:
    """A PNG whose zTXt chunk of `size` bytes (compressed to a few KB) follows the pixel data, so PIL reads it only
    when it decodes: the image opens lazily and fails at load()."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    body = b"comment\0\0" + zlib.compress(b"a" * size)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    end = data.rindex(b"IEND") - 4
    return data[:end] + chunk + data[end:]


def test_lazily_opened_truncated_closed_and_text_bomb_images_are_refused(tmp_path):
    """Issue 29 item 5: PIL's own errors (OSError of a truncated file met at decode, ValueError of a closed image or
    of a text chunk above PngImagePlugin.MAX_TEXT_CHUNK) came out raw; they are InvalidInputError from one place."""
    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), np.uint8))
    for suffix in ("png", "jpeg"):
        whole = tmp_path / f"whole.{suffix}"
        pixels.save(whole)
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(InvalidInputError, match="image is not a readable image .*truncated"):
            images.load_image(Image.open(cut))  # opened lazily by the caller: the header is fine, the data is not
        with pytest.raises(InvalidInputError, match="cut.* is not a readable image .*truncated"):
            images.load_frame(str(cut))
    closed = Image.open(tmp_path / "whole.png")
    closed.close()
    with pytest.raises(InvalidInputError, match="image is a closed PIL image"):
        images.load_frame(closed)
    loaded = Image.open(tmp_path / "whole.png")
    loaded.load()
    loaded.close()
    with pytest.raises(InvalidInputError, match="demos.0. image is a closed PIL image"):
        images.check_demos([(loaded, [])])
    bomb = tmp_path / "text.png"
    bomb.write_bytes(_png_with_late_text(pixels, 20 << 20))
    for given in (bomb, Image.open(bomb)):
        with pytest.raises(InvalidInputError, match="cannot be decoded: .*MAX_TEXT_CHUNK"):
            images.load_image(given)
    early = tmp_path / "early.png"  # the text chunk before the pixels: PIL refuses it while reading the header
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (20 << 20), zip=True)
    pixels.save(early, pnginfo=info)
    with pytest.raises(InvalidInputError, match="early.png' cannot be decoded: .*MAX_TEXT_CHUNK"):
        images.load_image(early)
    assert images.load_image(Image.open(tmp_path / "whole.png")).size == (48, 64)  # a good lazy image still loads
