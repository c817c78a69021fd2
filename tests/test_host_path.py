"""The native host path (runtime/kernels: the CPU module and the CUDA fatbin) against its oracles.

- SAM 3 preprocessing vs torch's antialiased bilinear interpolation (what torchvision v2 Resize runs in Meta's
  processor): within 1 grey level of torch's uint8 kernel and of its float path rounded.
- Mask upsampling + threshold vs the numpy postprocess that served requests before (tests/oracles.py): equal.
- Bicubic masks (the research ReasonSeg evaluation's cv2.resize INTER_CUBIC) vs their numpy oracle: equal; the oracle
  vs cv2.resize itself (within 1e-5 of the IPP path cv2 runs by default, 5e-4 of OpenCV's own code) and torch's
  bicubic (5e-4), upsampling, downsampling and at the borders.
- The fatbin holds code for Orin, Ada and Hopper; on a GPU the CUDA kernels equal the CPU module bit for bit, and a
  captured per-frame graph (preprocess -> a stand-in for the engines -> postprocess) replays what direct launches do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from oracles import resize_bicubic, resize_bilinear, torch_resize_float, torch_resize_uint8

from cseg.images import SAM3_MEAN, SAM3_STD, load_frame
from cseg.runtime import native, postprocess
from cseg.runtime.cuda.graphs import why_unavailable
from cseg.runtime.preprocess import sam3_pixels

NO_GPU = why_unavailable()
gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA GPU: {NO_GPU}")


def _grey_levels(pixels: np.ndarray) -> np.ndarray:
    """Invert the normalisation: [1, 3, s, s] model input -> [3, s, s] grey levels (exact integers)."""
    return np.rint((pixels[0] * SAM3_STD + SAM3_MEAN) * 255).astype(np.int16)


FRAMES = [((1080, 1920), 1008), ((37, 53), 28), ((333, 500), 1008), ((2, 2), 5), ((3000, 17), 64), ((7, 9), 1),
          ((1, 1), 3), ((64, 64), 64)]  # fmt: skip


@pytest.mark.parametrize("shape, size", FRAMES)
def test_preprocess_matches_torch_antialiased_bilinear(shape, size):
    rgb = np.random.default_rng(sum(shape) + size).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = np.empty((1, 3, size, size), np.float32)
    native.preprocess(rgb, out, False, [SAM3_MEAN] * 3, [SAM3_STD] * 3)
    grey = _grey_levels(out)
    assert np.abs(grey - torch_resize_uint8(rgb, size)).max() <= 1  # torch's uint8 kernel rounds between passes
    float_path = np.abs(grey - torch_resize_float(rgb, size))
    assert float_path.max() <= 1 and (float_path > 0).mean() < 1e-4  # only sums within float error of .5 differ


def test_preprocess_reads_any_layout_and_channel_order_identically(photo):
    want = sam3_pixels(load_frame(photo), 96)
    padded = np.zeros((photo.shape[0], photo.shape[1] + 7, 4), np.uint8)
    padded[:, :-7, :3] = photo
    layouts = {
        "bgr": load_frame(np.ascontiguousarray(photo[:, :, ::-1]), bgr=True),
        "bgr view": load_frame(photo[:, :, ::-1], bgr=True),
        "padded rows and pixels": load_frame(padded[:, :-7, :3]),
        "fortran order": load_frame(np.asfortranarray(photo)),
    }
    for name, frame in layouts.items():
        assert np.array_equal(sam3_pixels(frame, 96), want), name
    flipped = sam3_pixels(load_frame(np.ascontiguousarray(photo[::-1, ::-1])), 96)
    assert np.array_equal(sam3_pixels(load_frame(photo[::-1, ::-1]), 96), flipped)  # negative strides
    grey = photo[:, :, 1]
    assert np.array_equal(sam3_pixels(load_frame(grey), 96), sam3_pixels(load_frame(np.stack([grey] * 3, 2)), 96))


def test_preprocess_leaves_the_frame_untouched(photo):
    frame = photo.copy()
    frame.flags.writeable = False  # a read-only camera buffer is accepted
    sam3_pixels(load_frame(frame, bgr=True), 64)
    assert np.array_equal(frame, photo)


MASKS = [((3, 288, 288), (1080, 1920)), ((2, 96, 80), (401, 600)), ((1, 24, 24), (7, 13)), ((2, 1, 5), (3, 11)),
         ((4, 17, 9), (1, 1)), ((1, 1, 1), (5, 4)), ((2, 50, 60), (50, 60)), ((1, 300, 200), (37, 29))]  # fmt: skip


@pytest.mark.parametrize("source, target", MASKS)
def test_upsample_threshold_equals_the_numpy_oracle(source, target):
    logits = np.random.default_rng(sum(source)).standard_normal(source).astype(np.float32)
    want = resize_bilinear(logits, *target) > 0
    assert np.array_equal(postprocess.upsample_threshold(logits, *target), want)
    keep = np.arange(source[0])[::-1][: max(1, source[0] // 2)]
    assert np.array_equal(postprocess.upsample_threshold(logits, *target, keep), want[keep])


# upsampling (the borders read clamped taps), the research sizes, downsampling, 1 pixel, same size, a tiny source
CUBIC = MASKS[:2] + [((1, 288, 288), (427, 640)), ((2, 288, 288), (1008, 1008)), ((1, 300, 200), (37, 29)),
                     ((1, 17, 9), (1, 1)), ((1, 5, 4), (5, 4)), ((2, 2, 2), (9, 7)), ((1, 1, 5), (3, 11))]  # fmt: skip


@pytest.mark.parametrize("source, target", CUBIC)
def test_bicubic_masks_equal_their_oracle(source, target):
    logits = np.random.default_rng(sum(target)).standard_normal(source).astype(np.float32)
    want = resize_bicubic(logits, *target) > 0
    assert np.array_equal(postprocess.upsample_threshold(logits, *target, bicubic=True), want)
    keep = np.arange(source[0])[::-1][: max(1, source[0] // 2)]
    assert np.array_equal(postprocess.upsample_threshold(logits, *target, keep, bicubic=True), want[keep])


@pytest.mark.parametrize("source, target", CUBIC[2:])
def test_the_bicubic_oracle_is_cv2_inter_cubic_and_torch_bicubic(source, target):
    """cv2.resize runs IPP by default on x86 (the weights of the exact coordinate: our definition, to float rounding);
    OpenCV's own code and torch round the source coordinate to float32 first: the same function, 1e-4 apart."""
    import cv2
    import torch
    import torch.nn.functional as F

    logits = np.random.default_rng(sum(source)).standard_normal(source[1:]).astype(np.float32)
    ours = resize_bicubic(logits, *target)
    ipp = cv2.ipp.useIPP()
    default = cv2.resize(logits, target[::-1], interpolation=cv2.INTER_CUBIC).reshape(target)
    try:
        cv2.ipp.setUseIPP(False)
        opencv = cv2.resize(logits, target[::-1], interpolation=cv2.INTER_CUBIC).reshape(target)
    finally:
        cv2.ipp.setUseIPP(ipp)
    np.testing.assert_allclose(ours, default, atol=1e-5 if ipp else 5e-4, rtol=0)
    np.testing.assert_allclose(ours, opencv, atol=5e-4, rtol=0)
    bicubic = F.interpolate(torch.from_numpy(logits)[None, None], size=target, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(ours, bicubic[0, 0].numpy(), atol=5e-4, rtol=0)
    # the masks differ from cv2's only where its value is within rounding of the threshold
    differ = (ours > 0) != (default > 0)
    assert (np.abs(default[differ]) < (1e-5 if ipp else 5e-4)).all()


def test_instances_keep_scores_above_the_threshold_with_pixel_boxes():
    rng = np.random.default_rng(3)
    scores = np.array([[0.9, 0.2, 0.51, 0.5]], np.float32)
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6]] * 4], np.float32)
    masks = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
    got = postprocess.instances(scores, boxes, masks, (60, 100), 0.5)
    assert got.scores.tolist() == pytest.approx([0.9, 0.51])
    np.testing.assert_allclose(got.boxes[0], [10, 12, 50, 36], atol=1e-5)
    assert np.array_equal(got.masks, resize_bilinear(masks[0, [0, 2]], 60, 100) > 0)
    empty = postprocess.instances(scores, boxes, masks, (60, 100), 0.95)
    assert empty.masks.shape == (0, 60, 100) and len(empty.scores) == 0


def test_native_kernels_refuse_what_would_corrupt_memory():
    with pytest.raises(ValueError, match="HxWx3"):
        native.preprocess(np.zeros((4, 4, 4), np.uint8), np.empty((1, 3, 2, 2), np.float32), False, [0.5] * 3,
                          [0.5] * 3)  # fmt: skip
    with pytest.raises(ValueError, match="one mask per selected index"):
        native.upsample_threshold(np.zeros((2, 4, 4), np.float32), np.arange(2), np.empty((1, 8, 8), np.uint8))
    with pytest.raises(IndexError, match="out of range"):
        native.upsample_threshold(np.zeros((2, 4, 4), np.float32), np.array([2]), np.empty((1, 8, 8), np.uint8))


def test_the_runtime_serves_numpy_frames_without_pil(runtime, photo, monkeypatch):
    """A camera frame goes from the array to the kernel: PIL is not touched on the SAM 3 path."""
    from PIL import Image

    want = runtime.segment(photo[:, :, ::-1], "helmet", route="shortcut", bgr=True)

    def no_pil(*args, **kwargs):
        raise AssertionError("the SAM 3 path converted a numpy frame with PIL")

    monkeypatch.setattr(Image, "fromarray", no_pil)
    got = runtime.segment(photo[:, :, ::-1], "helmet", route="shortcut", bgr=True)
    assert np.array_equal(got.mask, want.mask) and np.array_equal(got.instances.masks, want.instances.masks)


def test_the_cpu_module_links_no_cuda():
    """The CPU module loads on a machine without CUDA: nothing of CUDA among its shared-library dependencies."""
    dependencies = subprocess.run(["ldd", native.__file__], capture_output=True, text=True, check=True).stdout
    assert "libcuda" not in dependencies and "libcudart" not in dependencies, dependencies


# --- the CUDA fatbin ------------------------------------------------------------------------------------------------


def _cuobjdump() -> str | None:
    candidate = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "nvidia" / "cu13" / "bin" / "cuobjdump"  # fmt: skip
    return str(candidate) if candidate.is_file() else shutil.which("cuobjdump")


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="no nvcc on this machine: the CUDA fatbin is not built here")  # fmt: skip
def test_the_fatbin_holds_orin_ada_and_hopper_code():
    from cseg.runtime.cuda.kernels import fatbin_path

    tool = _cuobjdump()
    assert tool, "cuobjdump is missing: the test extra installs nvidia-cuda-cuobjdump"
    assert fatbin_path().is_file(), "nvcc exists but the install built no fatbin"
    elves = subprocess.run([tool, "--list-elf", str(fatbin_path())], capture_output=True, text=True, check=True)
    ptx = subprocess.run([tool, "--list-ptx", str(fatbin_path())], capture_output=True, text=True, check=True)
    for arch in ("sm_87", "sm_89", "sm_90"):
        assert arch in elves.stdout, elves.stdout
    assert "sm_90" in ptx.stdout  # PTX of the newest target, for GPUs newer than Hopper


def test_a_missing_fatbin_is_an_engine_error_saying_how_to_rebuild(tmp_path):
    from cseg.errors import EngineError
    from cseg.runtime.cuda.kernels import HostPathKernels

    with pytest.raises(EngineError, match="were not built.*nvcc"):
        HostPathKernels(tmp_path / "cseg_kernels.fatbin")


@pytest.fixture(scope="module")
def cuda():
    from cseg.runtime.cuda.graphs import Stream
    from cseg.runtime.cuda.kernels import kernels

    stream = Stream()
    yield kernels(), stream
    stream.close()


def _device(array, stream):
    from cseg.runtime.cuda.buffers import DeviceArray

    device = DeviceArray(array.shape, array.dtype)
    device.upload(array, stream)
    return device


@gpu
@pytest.mark.parametrize("shape, size", FRAMES[:5])
@pytest.mark.parametrize("bgr", [False, True])
def test_cuda_preprocess_equals_the_cpu_module_bit_for_bit(cuda, shape, size, bgr):
    from cseg.runtime.cuda.buffers import DeviceArray

    kernels, stream = cuda
    rgb = np.random.default_rng(size).integers(0, 256, (*shape, 3), dtype=np.uint8)
    frame, out = _device(rgb, stream), DeviceArray((1, 3, size, size), np.float32)
    kernels.preprocess(stream, frame.pointer, *shape, (shape[1] * 3, 3, 1), bgr, out.pointer, size,
                       [SAM3_MEAN] * 3, [SAM3_STD] * 3)  # fmt: skip
    got = out.download(stream)
    assert np.array_equal(got, sam3_pixels(load_frame(rgb, bgr=bgr), size))
    frame.close()
    out.close()


@gpu
@pytest.mark.parametrize("source, target", MASKS)
@pytest.mark.parametrize("bicubic", [False, True])
def test_cuda_masks_equal_the_cpu_module_bit_for_bit(cuda, source, target, bicubic):
    from cseg.runtime.cuda.buffers import DeviceArray

    kernels, stream = cuda
    rng = np.random.default_rng(sum(target))
    logits = rng.standard_normal(source).astype(np.float32)
    scores = rng.uniform(0, 1, source[0]).astype(np.float32)
    device_logits, device_scores = _device(logits, stream), _device(scores, stream)
    out = DeviceArray((source[0], *target), np.uint8)
    out.upload(np.zeros((source[0], *target), np.uint8), stream)
    kernels.upsample_threshold(stream, device_logits.pointer, source[0], *source[1:], out.pointer, *target,
                               device_scores.pointer, 0.5, bicubic)  # fmt: skip
    got = out.download(stream).astype(bool)
    keep = np.flatnonzero(scores > 0.5)
    assert np.array_equal(got[keep], postprocess.upsample_threshold(logits, *target, keep, bicubic))
    assert not got[scores <= 0.5].any()  # skipped masks stay unwritten
    for array in (device_logits, device_scores, out):
        array.close()


@gpu
def test_a_captured_frame_graph_replays_what_direct_launches_do(cuda, photo):
    """preprocess -> a stand-in for the engines (logits = one channel of the SAM 3 input) -> upsample + threshold,
    captured once; replays on new frames copied into the same pinned/device buffers give the direct results."""
    from cseg.runtime.cuda.buffers import DeviceArray
    from cseg.runtime.cuda.graphs import CapturedWork

    kernels, stream = cuda
    height, width, size = *photo.shape[:2], 64
    frame, pixels = DeviceArray((height, width, 3), np.uint8), DeviceArray((1, 3, size, size), np.float32)
    masks = DeviceArray((3, height, width), np.uint8)

    def enqueue(s):
        kernels.preprocess(s, frame.pointer, height, width, (width * 3, 3, 1), False, pixels.pointer, size,
                           [SAM3_MEAN] * 3, [SAM3_STD] * 3)  # fmt: skip
        kernels.upsample_threshold(s, pixels.pointer, 3, size, size, masks.pointer, height, width)

    frames = [photo, photo[::-1].copy(), np.random.default_rng(0).integers(0, 256, photo.shape, np.uint8)]
    direct = []
    for image in frames:
        frame.upload(image, stream)
        enqueue(stream)
        direct.append(masks.download(stream))
    work = CapturedWork(stream, enqueue)
    assert work.captured, work.fallback_reason
    for image, want in zip(frames, direct):
        frame.upload(image, stream)
        work.launch()
        assert np.array_equal(masks.download(stream), want)
    expected = postprocess.upsample_threshold(sam3_pixels(load_frame(frames[-1]), size)[0], height, width)
    assert np.array_equal(direct[-1].astype(bool), expected)
    work.close()
    for array in (frame, pixels, masks):
        array.close()
