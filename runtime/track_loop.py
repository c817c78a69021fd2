"""`Runtime.track`: the stream loop plus part identities and line events (issue 30).

Every FrameResult of `Runtime.stream` (ok or error) goes through a cseg.track `LineMonitor` with a timestamp; the loop
yields, per frame, the result, its events and each instance's track id. What goes wrong with one frame (it failed
upstream, its timestamp cannot be had or goes back, it has another size) becomes an `error` event and the loop goes on:
an inspection line must never stop on one frame. The monitor hands events to its sinks, which queue and never block;
their delivery stats (sent / dropped) are in `summary()`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from cseg.errors import InvalidInputError
from cseg.options import check_bgr
from cseg.runtime.stream import FrameResult, stream


@dataclass
class TrackedFrame:
    result: FrameResult  # as Runtime.stream yields it (result None and error set when the frame failed)
    events: list  # cseg.track.Event, in order: count / reverse / defect / error
    track_ids: np.ndarray  # per instance of result.result: its confirmed track's id, or -1 (empty for an error)
    t: float  # the timestamp the monitor was given (seconds)


def clock(times):
    """The timestamp of a FrameResult: when it arrived (None), times[index] (a sequence) or times(index)."""
    if times is None:
        return lambda item: item.arrived if item.arrived is not None else time.monotonic()
    if callable(times):
        return lambda item: times(item.index)
    if hasattr(times, "__getitem__") and hasattr(times, "__len__") and not isinstance(times, (str, bytes, dict)):
        return lambda item: times[item.index]
    raise InvalidInputError(f"times must be None (arrival time), a sequence of seconds per frame or a callable "
                            f"index -> seconds, got {type(times).__name__}")  # fmt: skip


class TrackRun:
    """An iterator of TrackedFrame; see Runtime.track."""

    def __init__(self, results, monitor, time_of, defects_of=None):
        self.monitor = monitor
        self.final_events: list = []
        self.kinds: Counter = Counter()  # events per kind so far
        self.finished = False
        self._results, self._time_of, self._defects_of = results, time_of, defects_of
        self._frames = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> TrackedFrame:
        return next(self._frames)

    def _run(self):
        for item in self._results:
            yield self._step(item)
        self.finish()

    def _step(self, item: FrameResult) -> TrackedFrame:
        defective = self._defects_of(item) if self._defects_of is not None else None
        try:
            t = float(self._time_of(item))
        except Exception as exc:  # noqa: BLE001 - a caller's timestamp that cannot be had is that frame's error
            t = math.nan
            item = replace(item, result=None, error=f"no timestamp for frame {item.index}: {type(exc).__name__}: {exc}")
        try:
            events = self.monitor.update(item, t, defective=defective)
        except InvalidInputError as exc:  # instances the monitor cannot take (e.g. defect flags of another length)
            events = self.monitor.update(replace(item, result=None, error=str(exc)), t)
        self.kinds.update(event.kind for event in events)
        return TrackedFrame(item, events, self.monitor.track_ids(), t)

    def finish(self) -> list:
        """End of the frames: the monitor decides the verdicts still open (idempotent)."""
        if not self.finished:
            self.finished = True
            self.final_events = self.monitor.finish()
            self.kinds.update(event.kind for event in self.final_events)
        return self.final_events

    def close(self) -> list:
        """Stop early (a frame limit, Ctrl-C): stop reading the source, then finish."""
        self._frames.close()
        if hasattr(self._results, "close"):
            self._results.close()
        return self.finish()

    def summary(self, flush_s: float = 5.0) -> dict:
        """Counts, events per kind, the monitor's own sink failures and each sink's stats after waiting up to
        `flush_s` seconds for its queue to drain (what is still queued then shows as `queued`)."""
        deadline = time.monotonic() + flush_s
        for sink in self.monitor.sinks:
            if hasattr(sink, "flush"):
                sink.flush(max(deadline - time.monotonic(), 0.0))
        sinks = [sink.stats() for sink in self.monitor.sinks if hasattr(sink, "stats")]
        return {**self.monitor.counts, "events": dict(self.kinds), "sink_failures": self.monitor.sink_failures,
                "sinks": sinks}  # fmt: skip


def track(runtime, frames, rule, monitor, *, line, defect_rule, min_overlap: float, times, budget_ms, drop,
          bgr) -> TrackRun:  # fmt: skip
    """Runtime.track: the loop below with this process's Runtime doing each frame's work. `rule` is a Rule or a
    RuleFeed (cseg.runtime.rule_feed): then each frame takes the rule in force, and events name its version."""
    from cseg.runtime.rule_feed import RuleFeed
    from cseg.runtime.runtime import _check_rule, rule_source
    from cseg.track import rule_identity

    current = rule_source(rule, runtime.manifest)
    if defect_rule is not None:
        _check_rule(defect_rule, runtime.manifest)
    bgr = hasattr(frames, "read") if bgr is None else bgr
    check_bgr(bgr)
    monitor = line_monitor(monitor, line)
    if not monitor.rule_id:
        monitor.rule_id, monitor.rule_version = rule_identity(current())
        if isinstance(rule, RuleFeed):  # events name the rule in force: its id, and the version the feed gives it
            current = _following(current, rule, monitor)
    pair = None if defect_rule is None else lambda frame: runtime.apply_many([current(), defect_rule], frame, bgr=bgr)
    return track_frames(lambda frame: runtime.apply(current(), frame, bgr=bgr), frames, monitor, line=None,
                        pair=pair, min_overlap=min_overlap, times=times, budget_ms=budget_ms, drop=drop,
                        identity=lambda: rule_identity(current()))  # fmt: skip


def _following(current, feed, monitor):
    """current() that also moves the monitor's rule identity to each new rule the feed puts in force."""
    from cseg.track import rule_identity

    def rule_now():
        rule = current()
        if feed.in_use != monitor.rule_version:
            monitor.rule_id, monitor.rule_version = rule_identity(rule)[0], feed.in_use
        return rule

    return rule_now


def line_monitor(monitor, line):
    """The monitor a track loop reports to: the one given, or a LineMonitor on `line` (exactly one of them)."""
    from cseg.track import Line, LineMonitor

    if monitor is None:
        if not isinstance(line, Line):
            raise InvalidInputError("Runtime.track needs monitor= (a cseg.track.LineMonitor) or line= (a "
                                    f"cseg.track.Line), got line={line!r}")  # fmt: skip
        monitor = LineMonitor(line)
    elif line is not None:
        raise InvalidInputError("give Runtime.track monitor= or line=, not both (a monitor has its own line)")
    if not isinstance(monitor, LineMonitor):
        raise InvalidInputError(f"monitor must be a cseg.track.LineMonitor, got {type(monitor).__name__}")
    return monitor


def track_frames(apply, frames, monitor, *, line, pair, min_overlap: float, times, budget_ms, drop,
                 identity) -> TrackRun:  # fmt: skip
    """The track loop on any per-frame work, so a RemoteRuntime (cseg.serve.client) runs the same loop as a local
    Runtime: `apply(frame)` -> the part rule's Segmentation; with a defect rule, `pair(frame)` -> (parts, defects)
    Segmentations of one frame. `identity()` -> (rule id, version) for a monitor that has no rule id yet."""
    from cseg.track import defects_by_overlap

    monitor = line_monitor(monitor, line)
    if not monitor.rule_id:
        monitor.rule_id, monitor.rule_version = identity()
    time_of = clock(times)
    if pair is None:
        return TrackRun(stream(apply, frames, budget_ms=budget_ms, drop=drop), monitor, time_of)
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 < min_overlap <= 1:
        raise InvalidInputError(f"min_overlap must be a fraction in (0, 1], got {min_overlap!r}")
    if monitor.judge is None:
        raise InvalidInputError("a defect rule needs a monitor with defects= (a cseg.track.DefectRule: k of n frames)")
    flags: dict[int, np.ndarray] = {}  # id(part segmentation) -> its instances' defect flags, until the loop takes them

    def apply_pair(frame):
        parts, defects = pair(frame)
        flags[id(parts)] = defects_by_overlap(parts, defects, min_overlap)
        return parts

    def defects_of(item: FrameResult):
        return flags.pop(id(item.result), None) if item.result is not None else None

    return TrackRun(stream(apply_pair, frames, budget_ms=budget_ms, drop=drop), monitor, time_of, defects_of)
