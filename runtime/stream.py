"""`Runtime.stream`: apply a rule to a frame source without ever stopping on a bad frame.

A reader thread pulls frames from the source as fast as it yields them (a camera does not wait for us). With
drop="none" every frame is processed in order: at most BACKLOG frames wait, then the reader waits too (a folder or a
generator is simply read more slowly; a live camera's own buffer takes over), and latency grows when processing is
slower than the source. With drop="oldest" only the newest waiting frame is kept (older ones are dropped and
counted), and a frame that has waited longer than `budget_ms` is dropped too: results stay close to live.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from cseg.errors import InvalidInputError
from cseg.segmentation import Segmentation

DROP_POLICIES = ("oldest", "none")
BACKLOG = 8  # frames waiting at most with drop="none": bounds memory whatever the source's speed
_END = object()


@dataclass
class FrameResult:
    index: int  # position of the frame in the source
    result: Segmentation | None  # None when the frame failed
    error: str | None  # what was wrong with this frame
    latency_ms: float  # from the moment the frame left the source to the result
    dropped_before: int  # frames dropped since the previous result
    over_budget: bool = False
    frame: object = None  # the frame as the source gave it (array or path), for overlays and logs


def frames_of(source):
    """Frames from an iterable, or from an OpenCV capture (anything with .read() -> (ok, frame))."""
    if hasattr(source, "read") and callable(source.read):
        while True:
            ok, frame = source.read()
            if not ok:
                return
            yield frame
    else:
        yield from source


class _LatestOnly:
    """A one-slot mailbox: a new frame replaces the waiting one (counted as dropped); the end mark never does."""

    def __init__(self):
        self._frame = None
        self._closed = False
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, item, timeout=None) -> None:
        with self._ready:
            if item is _END:
                self._closed = True
            else:
                self.dropped += self._frame is not None
                self._frame = item
            self._ready.notify()

    def get(self):
        with self._ready:
            while self._frame is None and not self._closed:
                self._ready.wait()
            item, self._frame = (self._frame, None) if self._frame is not None else (_END, None)
            return item


def stream(apply, source, *, budget_ms: float | None, drop: str):
    """An iterator of FrameResult, one per processed frame; `apply(frame)` makes the Segmentation.

    The options are checked here, before the first frame is asked for."""
    if drop not in DROP_POLICIES:
        raise InvalidInputError(f"drop must be one of {DROP_POLICIES}, got {drop!r}")
    if budget_ms is not None and not budget_ms > 0:
        raise InvalidInputError(f"budget_ms must be a positive number of milliseconds or None, got {budget_ms!r}")
    return _results(apply, source, budget_ms, drop)


def _results(apply, source, budget_ms, drop):
    mailbox = _LatestOnly() if drop == "oldest" else queue.Queue(maxsize=BACKLOG)
    stop = threading.Event()

    def deliver(item) -> bool:
        while not stop.is_set():
            try:
                mailbox.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read():
        try:
            for index, frame in enumerate(frames_of(source)):
                if not deliver((index, frame, time.perf_counter(), None)):
                    return
        except Exception as exc:  # a broken source ends the stream with an error, not a traceback
            deliver((-1, None, time.perf_counter(), f"frame source failed: {type(exc).__name__}: {exc}"))
        deliver(_END)

    reader = threading.Thread(target=read, name="cseg-stream-reader", daemon=True)
    reader.start()
    dropped_seen = dropped_by_age = 0
    try:
        while (item := mailbox.get()) is not _END:
            index, frame, arrived, source_error = item
            waited = (time.perf_counter() - arrived) * 1000
            if drop == "oldest" and budget_ms is not None and waited > budget_ms and source_error is None:
                dropped_by_age += 1
                continue
            total_dropped = (mailbox.dropped if drop == "oldest" else 0) + dropped_by_age
            dropped, dropped_seen = total_dropped - dropped_seen, total_dropped
            if source_error:
                yield FrameResult(index, None, source_error, 0.0, dropped)
                continue
            try:
                result, error = apply(frame), None
            except Exception as exc:  # one bad frame must not stop an inspection line
                result, error = None, f"{type(exc).__name__}: {exc}"
            latency = (time.perf_counter() - arrived) * 1000
            yield FrameResult(index, result, error, latency, dropped, budget_ms is not None and latency > budget_ms, frame)
    finally:
        stop.set()
