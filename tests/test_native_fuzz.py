"""Property-based tests of cseg.runtime.native (hypothesis): the kernels read user arrays with any strides and write
into caller-owned buffers, so every shape, layout, dtype, buffer size and index selection must give the oracle's
answer or a clean refusal, and never a read or write outside the arrays.

- preprocess vs torch's antialiased bilinear (the oracle of test_host_path: within 1 grey level), over shapes from 1x1
  to huge aspect ratios; any layout (flips, BGR, padding, steps, zero strides: a grey or a repeated-row frame) gives
  the bits of its contiguous copy.
- upsample + threshold, bilinear and bicubic, vs the numpy oracles (tests/oracles.py: equal), over shapes, index
  selections (any order, repeats, none) and the logits' layout and dtype.
- Output buffers of a wrong shape, dtype or layout, frames of another dtype, indices out of range and empty or
  oversized sides are refused with an exception naming the problem, and nothing outside the buffer is written: each
  output sits between guard bytes that must come back unchanged.

The default suite runs the "cseg-native" profile (deterministic, ~60 examples per property). scripts/sanitize.sh runs
the same tests with HYPOTHESIS_PROFILE=cseg-sanitize (thousands of random examples) against the module built with
AddressSanitizer + UndefinedBehaviorSanitizer, named by CSEG_NATIVE_MODULE (loaded in place of the installed one by
tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oracles import resize_bicubic, resize_bilinear, torch_resize_uint8

from cseg.errors import InvalidInputError
from cseg.images import SAM3_MEAN, SAM3_STD, load_frame
from cseg.runtime import native
from cseg.runtime.preprocess import sam3_pixels

settings.register_profile("cseg-native", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.register_profile("cseg-sanitize", max_examples=int(os.environ.get("CSEG_FUZZ_EXAMPLES", "2000")),
                          deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "cseg-native"))
GUARD = 64  # bytes on either side of an output buffer
MEAN, STD = [SAM3_MEAN] * 3, [SAM3_STD] * 3

# sides: mostly small, with 1 and the extremes of a long thin strip (huge aspect ratios; a strip is thin in one
# direction, at most 7 pixels, so that the dense oracles stay fast)
side = st.one_of(st.integers(1, 48), st.just(1), st.integers(200, 3000))


def _thin(shape):
    height, width = shape
    if height * width <= 20000:
        return shape
    return (min(height, 7), width) if height <= width else (height, min(width, 7))


strip = st.tuples(side, side).map(_thin)
out_side = st.one_of(st.integers(1, 40), st.just(1), st.integers(100, 400))


def _guarded(shape, dtype):
    """An uninitialised C-contiguous array of `shape` inside a buffer whose GUARD bytes around it are 0xA5."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buffer = np.full(size + 2 * GUARD, 0xA5, np.uint8)
    return buffer, buffer[GUARD : GUARD + size].view(dtype).reshape(shape)


def _guards_intact(buffer) -> bool:
    return bool((buffer[:GUARD] == 0xA5).all() and (buffer[-GUARD:] == 0xA5).all())


def _preprocess(frame, size, bgr=False):
    buffer, out = _guarded((1, 3, size, size), np.float32)
    native.preprocess(frame, out, bgr, MEAN, STD)
    assert _guards_intact(buffer), "preprocess wrote outside its output"
    return out


def _masks(logits, select, height, width, bicubic):
    buffer, out = _guarded((len(select), height, width), np.uint8)
    native.upsample_threshold(logits, np.asarray(select, np.int64), out, bicubic)
    assert _guards_intact(buffer), "upsample_threshold wrote outside its output"
    assert set(np.unique(out)) <= {0, 1}
    return out.astype(bool)


def test_the_module_under_test_is_the_one_asked_for():
    """scripts/sanitize.sh names the sanitized build: a run that silently fuzzed the installed module would prove
    nothing about memory safety."""
    wanted = os.environ.get("CSEG_NATIVE_MODULE")
    if wanted:
        assert Path(native.__file__).resolve() == Path(wanted).resolve()


@FUZZ
@given(shape=strip, size=out_side, seed=st.integers(0, 2**32 - 1))
def test_preprocess_matches_torch_over_shapes(shape, size, seed):
    height, width = shape
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    grey = np.rint((_preprocess(rgb, size)[0] * SAM3_STD + SAM3_MEAN) * 255).astype(np.int16)
    assert np.abs(grey - torch_resize_uint8(rgb, size)).max() <= 1


def _layouts(rgb: np.ndarray):
    """(name, view, what it shows: an equal contiguous array, and whether to read it as BGR)."""
    padded = np.zeros((rgb.shape[0] + 3, rgb.shape[1] + 5, 4), np.uint8)
    padded[1:-2, 2:-3, :3] = rgb
    fortran = np.asfortranarray(rgb)
    return {
        "row flip": rgb[::-1],
        "column flip": rgb[:, ::-1],
        "both flips": rgb[::-1, ::-1],
        "channel flip": rgb[:, :, ::-1],
        "padded rows and pixels": padded[1:-2, 2:-3, :3],
        "every other pixel": np.repeat(rgb, 2, axis=1)[:, ::2],
        "fortran order": fortran,
        "grey through a zero channel stride": np.broadcast_to(rgb[:, :, 1:2], rgb.shape),
        "one row through a zero row stride": np.broadcast_to(rgb[:1], rgb.shape),
        "one pixel through zero strides": np.broadcast_to(rgb[:1, :1], rgb.shape),
    }


@FUZZ
@given(shape=strip, size=out_side, bgr=st.booleans(), layout=st.integers(0, 9), seed=st.integers(0, 2**32 - 1))
def test_preprocess_reads_any_layout_as_its_contiguous_copy(shape, size, bgr, layout, seed):
    height, width = shape
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    name, view = list(_layouts(rgb).items())[layout]
    assert np.array_equal(_preprocess(view, size, bgr), _preprocess(np.ascontiguousarray(view), size, bgr)), name


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@FUZZ
@given(shape=strip, bgr=st.booleans(), matrix=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_grey_frames_and_matrices_through_load_frame(shape, bgr, matrix, seed):
    """The public path: HxW grey arrays (np.matrix too) reach the kernel as a zero channel stride, never copied."""
    height, width = shape
    grey = np.random.default_rng(seed).integers(0, 256, (max(height, 2), max(width, 2)), dtype=np.uint8)
    image = np.asmatrix(grey) if matrix else grey
    want = sam3_pixels(load_frame(np.stack([grey] * 3, 2)), 24)
    assert np.array_equal(sam3_pixels(load_frame(image, bgr=bgr), 24), want)


def _logits(rng, count, height, width, layout):
    logits = rng.standard_normal((count, height, width)).astype(np.float32)
    if layout == "transposed":  # a non-contiguous view: the binding copies it (an input, nothing is lost)
        return logits, np.ascontiguousarray(logits.transpose(0, 2, 1)).transpose(0, 2, 1)
    if layout == "float64":
        return logits, logits.astype(np.float64)
    if layout == "flipped":
        return logits, np.ascontiguousarray(logits[::-1])[::-1]
    return logits, logits


@FUZZ
@given(count=st.integers(1, 5), shape=strip, out_h=out_side, out_w=out_side, bicubic=st.booleans(),
       layout=st.sampled_from(["contiguous", "transposed", "float64", "flipped"]), data=st.data())  # fmt: skip
def test_masks_equal_their_oracle(count, shape, out_h, out_w, bicubic, layout, data):
    height, width = shape
    select = data.draw(st.lists(st.integers(0, count - 1), max_size=6), label="select")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    logits, given_logits = _logits(rng, count, height, width, layout)
    want = (resize_bicubic if bicubic else resize_bilinear)(logits[select], out_h, out_w) > 0
    assert np.array_equal(_masks(given_logits, select, out_h, out_w, bicubic), want)


# --- refusals: each names the problem, writes nothing outside the buffer ------------------------------------------


@FUZZ
@given(shape=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 9), st.integers(0, 9)))
def test_preprocess_refuses_output_buffers_of_another_shape(shape):
    assume(not (shape[:2] == (1, 3) and shape[2] == shape[3]))
    buffer, out = _guarded(shape, np.float32)
    with pytest.raises(ValueError, match=r"\[1, 3, size, size\]"):
        native.preprocess(np.zeros((4, 4, 3), np.uint8), out, False, MEAN, STD)
    assert _guards_intact(buffer)


BAD_PIXELS = {
    "float64": lambda: np.zeros((1, 3, 8, 8), np.float64),
    "float16": lambda: np.zeros((1, 3, 8, 8), np.float16),
    "non-contiguous": lambda: np.zeros((1, 3, 8, 16), np.float32)[..., ::2],
    "fortran order": lambda: np.asfortranarray(np.zeros((1, 3, 8, 8), np.float32)),
    "read-only": lambda: np.broadcast_to(np.zeros(1, np.float32), (1, 3, 8, 8)),
    "3-D": lambda: np.zeros((3, 8, 8), np.float32),
}


@pytest.mark.parametrize("name", BAD_PIXELS)
def test_preprocess_refuses_outputs_it_would_have_to_copy(name):
    """An output nanobind would convert is a temporary copy: the result would be lost. Refused instead."""
    with pytest.raises(TypeError, match="incompatible function arguments"):
        native.preprocess(np.zeros((4, 4, 3), np.uint8), BAD_PIXELS[name](), False, MEAN, STD)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64, np.float32, np.float64, np.bool_])
def test_frames_of_another_dtype_are_refused(dtype):
    frame = np.ones((6, 5, 3), dtype)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        native.preprocess(frame, np.empty((1, 3, 4, 4), np.float32), False, MEAN, STD)
    with pytest.raises(InvalidInputError, match="dtype"):
        load_frame(frame)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (0, 0, 3)])
def test_empty_frames_are_refused(shape):
    with pytest.raises(ValueError, match="between 1 and"):
        native.preprocess(np.zeros(shape, np.uint8), np.empty((1, 3, 4, 4), np.float32), False, MEAN, STD)


def test_oversized_virtual_frames_are_refused():
    """A zero stride makes a frame of 2^31 pixels from 3 bytes: its width would overflow the kernels' int indices."""
    for width in (2**31 + 5, 2**24 + 1):
        frame = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (1, width, 3), (0, 0, 1))
        with pytest.raises(ValueError, match="width is"):
            native.preprocess(frame, np.empty((1, 3, 2, 2), np.float32), False, MEAN, STD)


def test_mean_and_std_take_three_values():
    with pytest.raises(ValueError, match="3 values"):
        native.preprocess(np.zeros((4, 4, 3), np.uint8), np.empty((1, 3, 2, 2), np.float32), False, [0.5], STD)


@FUZZ
@given(count=st.integers(1, 4), select=st.lists(st.integers(-6, 9), min_size=1, max_size=5), bicubic=st.booleans())
def test_masks_refuse_indices_out_of_range(count, select, bicubic):
    assume(not all(0 <= i < count for i in select))
    buffer, out = _guarded((len(select), 9, 7), np.uint8)
    with pytest.raises(IndexError, match="out of range"):
        native.upsample_threshold(np.ones((count, 3, 4), np.float32), np.array(select, np.int64), out, bicubic)
    assert _guards_intact(buffer) and (out == 0xA5).all()  # checked before anything is written


@FUZZ
@given(selected=st.integers(0, 4), masks=st.integers(0, 4), bicubic=st.booleans())
def test_masks_refuse_an_output_of_another_count(selected, masks, bicubic):
    assume(selected != masks)
    buffer, out = _guarded((masks, 5, 6), np.uint8)
    with pytest.raises(ValueError, match="one mask per selected index"):
        native.upsample_threshold(np.ones((2, 3, 4), np.float32), np.zeros(selected, np.int64), out, bicubic)
    assert _guards_intact(buffer)


@pytest.mark.parametrize("shape", [(2, 0, 4), (2, 4, 0), (1, 0, 0)])
@pytest.mark.parametrize("bicubic", [False, True])
def test_masks_refuse_empty_logits(shape, bicubic):
    """An empty side gave taps at index -1: a read before the logits (found by the sanitizer run)."""
    with pytest.raises(ValueError, match="between 1 and"):
        native.upsample_threshold(np.zeros(shape, np.float32), np.zeros(1, np.int64), np.empty((1, 5, 5), np.uint8),
                                  bicubic)  # fmt: skip


BAD_MASKS = {
    "bool": lambda: np.zeros((1, 8, 8), bool),
    "int8": lambda: np.zeros((1, 8, 8), np.int8),
    "non-contiguous": lambda: np.zeros((1, 8, 16), np.uint8)[..., ::2],
    "read-only": lambda: np.broadcast_to(np.zeros(1, np.uint8), (1, 8, 8)),
}


@pytest.mark.parametrize("name", BAD_MASKS)
def test_masks_refuse_outputs_they_would_have_to_copy(name):
    with pytest.raises(TypeError, match="incompatible function arguments"):
        native.upsample_threshold(np.ones((1, 4, 4), np.float32), np.zeros(1, np.int64), BAD_MASKS[name]())


def test_empty_outputs_and_selections_write_nothing():
    for out_shape, select in [((0, 5, 5), []), ((2, 0, 5), [0, 1]), ((2, 5, 0), [1, 1])]:
        buffer, out = _guarded(out_shape, np.uint8)
        native.upsample_threshold(np.ones((2, 3, 4), np.float32), np.array(select, np.int64), out)
        assert _guards_intact(buffer)
    buffer, out = _guarded((1, 3, 0, 0), np.float32)
    native.preprocess(np.zeros((4, 4, 3), np.uint8), out, False, MEAN, STD)
    assert _guards_intact(buffer)
