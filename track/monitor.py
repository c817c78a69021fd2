"""`LineMonitor`: one frame in, the line's events out. Tracker + counter + defect judge + sinks, composed.

`update(frame_result_or_segmentation, t)` is the whole per-frame step, so the runtime's stream loop (and
`cseg watch --track`) only has to call it. What must not stop an inspection line becomes an `error` event and the
loop goes on with counts untouched: a frame that failed upstream (FrameResult.error), a frame of another size than the
stream's, a timestamp that went back. What is a mistake in the set-up (a zero-length line, a direction that is not
one, bad k/n) raises InvalidInputError when the monitor is made, before any frame.
"""

from __future__ import annotations

import time

from cseg.errors import InvalidInputError
from cseg.segmentation import Segmentation
from cseg.track.belt import BeltTracker
from cseg.track.counter import Crossing, LineCounter, ZoneCounter
from cseg.track.defects import DefectJudge, DefectRule, Verdict
from cseg.track.detections import Detections
from cseg.track.events import Event
from cseg.track.geometry import Line, Zone
from cseg.track.tracker import Tracker


class LineMonitor:
    def __init__(self, line: Line | None = None, *, zone: Zone | None = None, tracker: Tracker | None = None,
                 defects: DefectRule | None = None, hysteresis: float = 2.0, station: str = "station",
                 rule_id: str = "", rule_version: str = "", source: str = "", sinks=(), defect_of=None):  # fmt: skip
        """`defect_of(segmentation) -> per-instance bool` marks instances defective when frames are Segmentations
        (e.g. `lambda s: defects_by_overlap(s, other_rule_result)`); Detections carry their own `defective`."""
        if (line is None) == (zone is None):
            raise InvalidInputError("a line monitor needs exactly one of line= (a Line) or zone= (a Zone)")
        if line is not None and not isinstance(line, Line):
            raise InvalidInputError(f"line must be a cseg.track.Line, got {type(line).__name__}")
        if not isinstance(station, str) or not station or any(c in station for c in "/#+"):
            raise InvalidInputError(f"station must be a non-empty name without '/', '#' or '+', got {station!r}")
        self.counter = LineCounter(line, hysteresis=hysteresis) if line is not None else ZoneCounter(zone)
        direction = line.direction if line is not None else "right"
        self.tracker = tracker if tracker is not None else BeltTracker(direction)
        if not isinstance(self.tracker, Tracker):
            raise InvalidInputError(f"tracker must be a cseg.track Tracker, got {type(self.tracker).__name__}")
        self.judge = DefectJudge(defects, line) if defects is not None else None
        self.station, self.rule_id, self.rule_version, self.source = station, rule_id, rule_version, source
        self.sinks = list(sinks)
        self.defect_of = defect_of
        self.frames = self.errors = self.sink_failures = 0
        self._seq = 0
        self._index = -1
        self._last_count = 0

    @property
    def counts(self) -> dict:
        return {"parts": self.counter.count, "reversed": getattr(self.counter, "reversed", 0),
                "defects": self.judge.defects if self.judge else 0, "frames": self.frames,
                "errors": self.errors}  # fmt: skip

    def _event(self, kind: str, frame: int, t: float, source: str, **values) -> Event:
        self._seq += 1
        return Event(kind, self._seq, self.station, frame, t, rule_id=self.rule_id, rule_version=self.rule_version,
                     source=source, **values)  # fmt: skip

    def _track_event(self, kind: str, what: Crossing | Verdict, count: int, source: str) -> Event:
        """Frame, time and box of the observation that decided (a track confirmed late replays earlier frames)."""
        observation = what.observation
        return self._event(kind, observation.frame, observation.t, source, track_id=what.track.id,
                           box=tuple(round(float(v), 2) for v in observation.box), score=round(observation.score, 4),
                           count=count)  # fmt: skip

    def _detections(self, item, defective) -> tuple[Detections | None, str | None, int | None]:
        """(detections, error, frame index) of whatever one frame's result is."""
        index = None
        if hasattr(item, "result") and hasattr(item, "error") and hasattr(item, "index"):  # a stream FrameResult
            index = item.index
            if item.result is None:
                return None, item.error or "the frame has no result", index
            item = item.result
        if isinstance(item, Segmentation):
            if defective is None and self.defect_of is not None:
                defective = self.defect_of(item)
            return Detections.of(item, defective), None, index
        if isinstance(item, Detections):
            return item, None, index
        raise InvalidInputError(f"a line monitor takes a Segmentation, a FrameResult or Detections, got "
                                f"{type(item).__name__}")  # fmt: skip

    def update(self, item, t: float | None = None, *, defective=None, source: str | None = None) -> list[Event]:
        """One frame: its events (possibly none). `t` is the frame's time in seconds (default: now, monotonic)."""
        t = time.monotonic() if t is None else t
        source = self.source if source is None else source
        detections, error, index = self._detections(item, defective)
        frame = self._index + 1 if index is None else int(index)
        self._index = frame
        self.frames += 1
        self._last_count = 0 if detections is None else len(detections)  # track_ids(): -1 each when not tracked
        if error is None:
            try:
                seen = self.tracker.update(detections, t, frame)
            except InvalidInputError as exc:  # another size, time going back: skip the frame, say so, go on
                error = str(exc)
        if error is not None:
            self.errors += 1
            at = t if isinstance(t, (int, float)) else float("nan")
            events = [self._event("error", frame, at, source, error=error)]
        else:
            events = self._step(seen, self.tracker.ended, source)
        self._send(events)
        return events

    def track_ids(self) -> "np.ndarray":
        """Per instance of the last frame: its confirmed track's id, or -1 (no track yet, or unconfirmed); what
        `Segmentation.to_supervision()` puts in `tracker_id` and what an overlay labels."""
        import numpy as np

        ids = np.full(self._last_count, -1, dtype=int)
        for track in self.tracker.tracks:
            if track.confirmed and track.misses == 0 and track.last.frame == self._index and track.last.index >= 0:
                ids[track.last.index] = track.id
        return ids

    def finish(self) -> list[Event]:
        """The stream ended: decide the defect verdicts still open (parts still on screen)."""
        ended = self.tracker.finish()  # a track confirmed only now (the belt tracker's start-up) is counted here
        events = self._step([track for track in ended if track.confirmed], ended, self.source)
        self._send(events)
        return events

    def _step(self, seen, ended, source) -> list[Event]:
        events = []
        for crossing in self.counter.update(seen):
            events.append(self._track_event(crossing.kind, crossing, crossing.count, source))
        if self.judge is not None:
            for verdict in self.judge.update(seen) + self.judge.end(ended):
                if verdict.defective:
                    events.append(self._track_event("defect", verdict, self.judge.defects, source))
        self.counter.end(ended)
        return events

    def _send(self, events: list[Event]) -> None:
        """Hand events to the sinks. A sink's own failure is counted (`sink_failures`), never raised: the line goes
        on inspecting (cseg's sinks queue and never raise; this guards a user's own sink)."""
        for sink in self.sinks:
            for event in events:
                try:
                    sink.send(event, self.counts)
                except Exception:  # noqa: BLE001 - see the docstring
                    self.sink_failures += 1
