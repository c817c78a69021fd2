"""Reference implementations the native host path is tested against (numpy and torch; never used to serve)."""

from __future__ import annotations

import numpy as np


def _axis(in_size: int, out_size: int):
    """Source taps and weights along one axis, as torch's upsample_bilinear2d with align_corners=False."""
    scale = np.float32(in_size / out_size)
    source = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    first = np.minimum(source.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = (source - first).astype(np.float32)
    return first, second, np.float32(1) - weight, weight


def resize_bilinear(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """[..., h, w] -> [..., height, width] float32: the numpy postprocess that served requests before wave 2."""
    logits = logits.astype(np.float32, copy=False)
    x0, x1, wx0, wx1 = _axis(logits.shape[-1], width)
    y0, y1, wy0, wy1 = _axis(logits.shape[-2], height)
    rows = logits[..., x0] * wx0 + logits[..., x1] * wx1
    return rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]


def _cubic_axis(in_size: int, out_size: int):
    """Source indices [4, out] and float32 weights [4, out] along one axis: Keys' cubic (a = -0.75) of the exact
    fractional source coordinate in float64, the last weight 1 minus the others (OpenCV's form), indices clamped."""
    numerator = (2 * np.arange(out_size) + 1) * in_size - out_size  # (i + 0.5) * in / out - 0.5, times 2 * out
    floor = numerator // (2 * out_size)
    t = (numerator - floor * 2 * out_size) / (2 * out_size)
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    weights = np.stack([w0, w1, w2, 1 - w0 - w1 - w2]).astype(np.float32)
    index = np.clip(floor[None] + np.arange(-1, 3)[:, None], 0, in_size - 1)
    return index, weights


def resize_bicubic(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """[..., h, w] -> [..., height, width] float32 in the native kernel's order (rows first, then columns; each sum
    of four products left to right): the bicubic masks' numpy oracle, itself checked against cv2.resize."""
    logits = logits.astype(np.float32, copy=False)
    ix, wx = _cubic_axis(logits.shape[-1], width)
    iy, wy = _cubic_axis(logits.shape[-2], height)
    x = [logits[..., i] for i in ix]
    rows = ((x[0] * wx[0] + x[1] * wx[1]) + x[2] * wx[2]) + x[3] * wx[3]
    y, w = [rows[..., i, :] for i in iy], [v[:, None] for v in wy]
    return ((y[0] * w[0] + y[1] * w[1]) + y[2] * w[2]) + y[3] * w[3]


def torch_resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """Meta's SAM 3 resize: torchvision v2 Resize on a uint8 image = torch's antialiased bilinear interpolation of
    the uint8 tensor (CPU: torch's own uint8 kernel) -> [3, size, size] uint8."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()


def torch_resize_float(rgb: np.ndarray, size: int) -> np.ndarray:
    """The same resize as torchvision v2 runs it on a GPU: float interpolation, rounded to grey levels."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    out = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255)[0].numpy().astype(np.uint8)
