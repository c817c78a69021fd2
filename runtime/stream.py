"""`Runtime.stream`: apply a rule to a frame source without ever stopping on a bad frame.

A reader thread pulls frames from the source as fast as it yields them (a camera does not wait for us). With
drop="none" every frame is processed in order: at most BACKLOG frames wait, then the reader waits too (a folder or a
generator is simply read more slowly; a live camera's own buffer takes over), and latency grows when processing is
slower than the source. With drop="oldest" only the newest waiting frame is kept (older ones are dropped and
counted), and a frame that has waited longer than `budget_ms` is dropped too: results stay close to live. The default
follows the source: a finite sequence (list, tuple, array of frames, a folder's files) loses nothing ("none"); an
iterator or a capture is treated as live ("oldest").

The reader stops when the iterator is closed or garbage, and pauses while the consumer has held a result for more
than IDLE_S without asking for the next one (an abandoned iterator must not pull an endless source at full speed).
"""

from __future__ import annotations

import math
import numbers
import queue
import threading
import time
from dataclasses import dataclass

from cseg.errors import InvalidInputError
from cseg.segmentation import Segmentation

DROP_POLICIES = ("oldest", "none")
BACKLOG = 8  # frames waiting at most with drop="none": bounds memory whatever the source's speed
IDLE_S = 1.0  # how long the consumer may hold a result before the reader of drop="oldest" stops pulling frames
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
    arrived: float | None = None  # time.perf_counter() when the frame left the source (Runtime.track's default clock)


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
    """A one-slot mailbox: a new frame replaces the waiting one (counted as dropped). The end mark and a source's
    error are final items: they queue behind the waiting frame instead of replacing it."""

    def __init__(self):
        self._frame = None
        self._final: list = []
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, item, timeout=None) -> None:
        with self._ready:
            if item is _END or item[3] is not None:
                self._final.append(item)
            else:
                self.dropped += self._frame is not None
                self._frame = item
            self._ready.notify()

    def get(self):
        with self._ready:
            while self._frame is None and not self._final:
                self._ready.wait()
            if self._frame is not None:
                item, self._frame = self._frame, None
                return item
            return self._final.pop(0)


class _Consumer:
    """Whether the consumer is asking for results: it is away while it holds a yielded one."""

    def __init__(self):
        self._back = threading.Event()
        self._back.set()
        self._left = 0.0

    def leave(self) -> None:
        self._left = time.monotonic()
        self._back.clear()

    def come_back(self) -> None:
        self._back.set()

    def wait_if_idle(self, stop: threading.Event) -> None:
        """Block the reader while the consumer has been away for more than IDLE_S, until it asks again or stops."""
        if self._back.is_set() or time.monotonic() - self._left < IDLE_S:
            return
        while not self._back.wait(0.1) and not stop.is_set():
            pass


def default_drop(source) -> str:
    """"none" for a finite sequence (every frame counts), "oldest" for an iterator or a capture (live)."""
    return "none" if hasattr(source, "__len__") and not hasattr(source, "read") else "oldest"


def stream(apply, source, *, budget_ms: float | None, drop: str | None):
    """An iterator of FrameResult, one per processed frame; `apply(frame)` makes the Segmentation.

    The source and the options are checked here, before the first frame is asked for."""
    if isinstance(source, (str, bytes)):
        raise InvalidInputError(
            f"frames is a {type(source).__name__}; pass an iterable of frames or paths (one path: [path]; a folder: "
            "sorted(Path(folder).glob('*.png')) or cseg watch)"
        )
    if not hasattr(source, "read") and not hasattr(source, "__iter__"):
        raise InvalidInputError(
            f"frames must be an iterable of frames or an OpenCV capture, got {type(source).__name__}"
        )
    drop = default_drop(source) if drop is None else drop
    if drop not in DROP_POLICIES:
        raise InvalidInputError(f"drop must be one of {DROP_POLICIES} or None, got {drop!r}")
    if budget_ms is not None and not (
        isinstance(budget_ms, numbers.Real) and not isinstance(budget_ms, bool) and math.isfinite(budget_ms)
        and budget_ms > 0
    ):  # fmt: skip
        raise InvalidInputError(f"budget_ms must be a positive number of milliseconds or None, got {budget_ms!r}")
    return _results(apply, source, budget_ms, drop)


def _results(apply, source, budget_ms, drop):
    mailbox = _LatestOnly() if drop == "oldest" else queue.Queue(maxsize=BACKLOG)
    stop = threading.Event()
    consumer = _Consumer()

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
                consumer.wait_if_idle(stop)  # with drop="none" its full queue would block the reader anyway
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
                result = FrameResult(index, None, source_error, 0.0, dropped, arrived=arrived)
            else:
                try:
                    segmentation, error = apply(frame), None
                except Exception as exc:  # one bad frame must not stop an inspection line
                    segmentation, error = None, f"{type(exc).__name__}: {exc}"
                latency = (time.perf_counter() - arrived) * 1000
                over = budget_ms is not None and latency > budget_ms
                result = FrameResult(index, segmentation, error, latency, dropped, over, frame, arrived)
            consumer.leave()
            yield result
            consumer.come_back()
    finally:
        stop.set()
