"""Host-side inputs of the VLM graphs, in numpy: what transformers' Qwen2.5-VL processor and model compute in torch.

Ported, not imported (the runtime has no torch): Qwen2VLImageProcessor's resize/normalise/patchify, the vision
tower's window reordering and rotary position ids (transformers.vision_utils), and the M-RoPE position ids of the
language model (Qwen2_5_VLModel.get_rope_index). Tests compare each with the transformers original.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_patches(image: Image.Image, prep: dict) -> tuple[np.ndarray, list[int]]:
    """One RGB image -> (patches [t*h*w, C*T*P*P] float32, grid [t, h, w]), as Qwen2VLImageProcessor makes them."""
    patch, merge, temporal = prep["patch_size"], prep["merge_size"], prep["temporal_patch_size"]
    height, width = smart_resize(image.height, image.width, patch * merge, prep["min_pixels"], prep["max_pixels"])
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels = pixels * np.float32(prep["rescale_factor"])
    pixels = (pixels - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    channels = pixels.shape[2]
    grid_h, grid_w = height // patch, width // patch
    blocks = pixels.transpose(2, 0, 1).reshape(channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
    blocks = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], temporal, *blocks.shape[5:]))
    return np.ascontiguousarray(blocks.reshape(grid_h * grid_w, -1), dtype=np.float32), [1, grid_h, grid_w]


def window_layout(window_lengths, size: int) -> dict[str, np.ndarray]:
    """The window-ordered tokens laid out as windows of `size` slots (the largest window; edge windows are smaller):
    per slot, the token it reads (the window's first on padding) and whether it is a real token; per token, its slot.
    vlm_vision gathers with the first two, attends within each window under the mask, and gathers back with the last;
    the padding keeps every shape static but the number of windows."""
    lengths = np.asarray(window_lengths, dtype=np.int64)
    if lengths.size and (lengths.max() > size or lengths.min() < 1):
        raise ValueError(f"window lengths must lie in 1..{size}, got {lengths.min()}..{lengths.max()}")
    starts = np.cumsum(lengths) - lengths
    slots = np.arange(size)
    valid = slots[None, :] < lengths[:, None]
    window_of = np.repeat(np.arange(len(lengths)), lengths)
    return {
        "window_gather": (starts[:, None] + np.where(valid, slots[None, :], 0)).astype(np.int64),
        "window_valid": valid,
        "window_scatter": (window_of * size + np.arange(lengths.sum()) - starts[window_of]).astype(np.int64),
    }


def window_slots(vision: dict) -> int:
    """Tokens in a full attention window of the vision tower: (window_size / patch_size)^2 patches."""
    window = vision["window_size"] // vision["spatial_merge_size"] // vision["patch_size"]
    return window * window * vision["spatial_merge_size"] ** 2


def vision_inputs(grids: list[list[int]], vision: dict) -> dict[str, np.ndarray]:
    """Rotary position ids, window order and its inverse, the padded window layout and per-token image ids for
    vlm_vision."""
    merge, unit = vision["spatial_merge_size"], vision["spatial_merge_size"] ** 2
    window = vision["window_size"] // merge // vision["patch_size"]
    positions, order, window_lengths, image_lengths = [], [], [], []
    offset = 0
    for t, h, w in grids:
        hpos = np.arange(h)[:, None].repeat(w, axis=1).reshape(h // merge, merge, w // merge, merge)
        wpos = np.arange(w)[None, :].repeat(h, axis=0).reshape(h // merge, merge, w // merge, merge)
        pair = np.stack([hpos.transpose(0, 2, 1, 3).ravel(), wpos.transpose(0, 2, 1, 3).ravel()], axis=-1)
        positions.append(np.tile(pair, (t, 1)))
        lh, lw = h // merge, w // merge
        pad_h, pad_w = window - lh % window, window - lw % window
        index = np.full((t, lh + pad_h, lw + pad_w), -100, dtype=np.int64)
        index[:, :lh, :lw] = np.arange(t * lh * lw).reshape(t, lh, lw)
        nh, nw = (lh + pad_h) // window, (lw + pad_w) // window
        index = index.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        counts = (index != -100).sum(-1).ravel()
        order.append(index[index != -100] + offset)
        window_lengths += [c * unit for c in counts if c > 0]  # transformers drops empty windows (unique_consecutive)
        image_lengths += [h * w] * t
        offset += t * lh * lw
    window_index = np.concatenate(order).astype(np.int64)
    return {
        "position_ids": np.concatenate(positions).astype(np.int64),
        "window_index": window_index,
        "reverse_window_index": np.argsort(window_index, kind="stable").astype(np.int64),
        **window_layout(window_lengths, window_slots(vision)),
        "image_ids": np.repeat(np.arange(len(image_lengths)), image_lengths).astype(np.int64),
    }


def rope_positions(input_ids: np.ndarray, image_token_id: int, grids: list[list[int]], merge: int) -> np.ndarray:
    """M-RoPE position ids [3, 1, L] of a prompt: text counts up on all three axes; an image's tokens take
    (t, row, column) offsets from the current position, which then advances by its larger side."""
    ids = input_ids.reshape(-1)
    out = np.zeros((3, ids.size), dtype=np.int64)
    position, i, grid = 0, 0, iter(grids)
    while i < ids.size:
        if ids[i] == image_token_id:
            t, h, w = next(grid)
            lh, lw = h // merge, w // merge
            count = t * lh * lw
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
            out[:, i : i + count] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + position
            position += max(lh, lw)
            i += count
        else:
            out[:, i] = position
            position += 1
            i += 1
    return out[:, None, :]
