"""`cseg watch`: apply a rule to a folder of images, a video file or a camera, with a live progress line.

The frame sources (OpenCV captures, image folders) and the loop over Runtime.stream serve frames, so they live with
the runtime; the base package cseg/ keeps nothing that only serving uses."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from cseg.errors import InvalidInputError
from cseg.images import IMAGE_SUFFIXES


def open_source(source: str):
    """A folder (its images in name order), a camera index ("0"), or a video file. Returns (frames, is_opencv)."""
    path = Path(source)
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise InvalidInputError(f"folder {source} cannot be read: {exc.strerror or exc}") from None
        if not files:
            raise InvalidInputError(f"folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [str(p) for p in files], False
    try:
        import cv2
    except ImportError:
        raise InvalidInputError("video files and cameras need OpenCV: pip install opencv-python-headless") from None
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
    elif path.is_file():
        capture = cv2.VideoCapture(str(path))
    else:
        raise InvalidInputError(f"source {source!r} is not a folder, a video file or a camera index")
    if not capture.isOpened():
        raise InvalidInputError(f"OpenCV cannot open {source!r}")
    return capture, True


def watch(runtime, rule, source: str, *, out: str | None, jsonl: str | None, budget_ms, drop: str | None,
          max_frames: int | None, every: int) -> dict:  # fmt: skip
    from cseg.images import load_image
    from cseg.overlay import overlay

    frames, bgr = open_source(source)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    log = open(jsonl, "w") if jsonl else sys.stdout
    latencies, errors, dropped, started = [], 0, 0, time.perf_counter()
    try:
        for count, item in enumerate(runtime.stream(frames, rule, budget_ms=budget_ms, drop=drop, bgr=bgr), 1):
            dropped += item.dropped_before
            record = {"frame": item.index, "latency_ms": round(item.latency_ms, 2), "dropped_before": item.dropped_before,
                      "over_budget": item.over_budget}  # fmt: skip
            if item.result is None:
                errors += 1
                record["error"] = item.error
            else:
                result = item.result
                latencies.append(item.latency_ms)
                record.update(route=result.route, area=result.area, instances=len(result.instances),
                              presence=round(result.presence, 4),
                              timings={k: round(v, 2) for k, v in result.timings.items()})  # fmt: skip
                if out and item.index % every == 0:
                    image = load_image(item.frame, bgr=bgr)
                    overlay(image, result, rule.answer or rule.question).save(Path(out) / f"frame_{item.index:06d}.png")
            print(json.dumps(record), file=log, flush=True)
            elapsed = time.perf_counter() - started
            p50, p99 = (np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2)
            print(f"\rframes {count}  {count / elapsed:5.2f} fps  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                  f"dropped {dropped}  errors {errors}", end="", file=sys.stderr, flush=True)  # fmt: skip
            if max_frames and count >= max_frames:
                break
    finally:
        print(file=sys.stderr)
        if jsonl:
            log.close()
    if not latencies and not errors:  # FFmpeg opens many non-video files (text as "tty") and reads nothing
        raise InvalidInputError(f"source {source!r} delivered no frames: not a video OpenCV can decode, or empty")
    return {"frames": len(latencies) + errors, "errors": errors, "dropped": dropped}
