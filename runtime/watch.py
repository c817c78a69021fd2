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


def frame_clock(source: str, frames, fps: float | None):
    """Runtime.track's `times` for a watch source: frame i at i / fps with --fps; else a video file's own frame rate,
    a folder's files one second apart (any steady unit serves the tracker: its speeds are per that unit), and a
    camera's arrival time (None). A folder's files arrive as fast as they are read, so their arrival says nothing."""
    if fps is not None:
        return lambda index: index / fps
    if isinstance(frames, list):
        return float
    if source.isdigit():
        return None
    import cv2

    rate = frames.get(cv2.CAP_PROP_FPS)
    return (lambda index: index / rate) if rate and rate > 0 else None


def watch(runtime, rule, source: str, *, out: str | None, jsonl: str | None, budget_ms, drop: str | None,
          max_frames: int | None, every: int, monitor=None, defect_rule=None,
          fps: float | None = None) -> dict:  # fmt: skip
    """The loop of `cseg watch`. With `monitor` (a cseg.track.LineMonitor: `--track`) it runs Runtime.track: each
    record gains the frame's track ids and events, overlays show track ids and the line, and the summary the counts.
    `rule` may be a RuleFeed (`--rules mqtt://...`): each record then names the rule version applied to its frame
    (the stream applies in this thread, so the feed's `in_use` is the yielded frame's), the summary the feed's stats.
    """
    from cseg.images import load_image
    from cseg.overlay import overlay
    from cseg.runtime.rule_feed import RuleFeed

    feed = rule if isinstance(rule, RuleFeed) else None

    frames, bgr = open_source(source)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    if monitor is None:
        items = runtime.stream(frames, rule, budget_ms=budget_ms, drop=drop, bgr=bgr)
    else:
        from cseg.track.draw import draw_tracks

        items = runtime.track(frames, rule, monitor, defect_rule=defect_rule, times=frame_clock(source, frames, fps),
                              budget_ms=budget_ms, drop=drop, bgr=bgr)  # fmt: skip
    log = open(jsonl, "w") if jsonl else sys.stdout
    latencies, errors, dropped, started = [], 0, 0, time.perf_counter()
    try:
        for count, tracked in enumerate(items, 1):
            item = tracked if monitor is None else tracked.result
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
                    shown = rule if feed is None else feed.rule()
                    picture = overlay(load_image(item.frame, bgr=bgr), result, shown.answer or shown.question)
                    if monitor is not None:
                        picture = draw_tracks(picture, monitor.tracker.tracks, monitor.counter.line, monitor.counts)
                    picture.save(Path(out) / f"frame_{item.index:06d}.png")
            if feed is not None:
                record["rule_version"] = feed.in_use
            if monitor is not None:
                record.update(track_ids=tracked.track_ids.tolist(), events=[e.to_dict() for e in tracked.events])
            print(json.dumps(record), file=log, flush=True)
            elapsed = time.perf_counter() - started
            p50, p99 = (np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2)
            counted = "" if monitor is None else f"  parts {monitor.counter.count}"
            print(f"\rframes {count}  {count / elapsed:5.2f} fps  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                  f"dropped {dropped}  errors {errors}{counted}", end="", file=sys.stderr, flush=True)  # fmt: skip
            if max_frames and count >= max_frames:
                break
    finally:
        if monitor is not None:
            items.close()  # the stream stops; verdicts still open are decided (their events go to the sinks)
        print(file=sys.stderr)
        if jsonl:
            log.close()
    if not latencies and not errors:  # FFmpeg opens many non-video files (text as "tty") and reads nothing
        raise InvalidInputError(f"source {source!r} delivered no frames: not a video OpenCV can decode, or empty")
    summary = {"frames": len(latencies) + errors, "errors": errors, "dropped": dropped}
    if monitor is not None:
        summary["track"] = items.summary(flush_s=0.0)
    if feed is not None:
        summary["rules"] = feed.stats()
    return summary
