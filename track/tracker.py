"""Tracks and the bookkeeping every tracker shares: identities, age, hits, misses, confirmation, removal.

A tracker differs only in how it associates a frame's detections with its tracks (`_associate`): the belt model
(`BeltTracker`) or Roboflow's `trackers` (`TrackersAdapter`). Everything a counter relies on is here, once:

- a track is *confirmed* after `min_hits` observations; an unconfirmed track is never counted nor reported;
- a track missed for more than `max_misses` consecutive frames ends (it is listed once in `ended`); not sooner, even
  when predicted out of the frame: the counter's proof relies on it (a tracker may keep a track longer: the belt
  tracker lets a hidden part coast, see belt.py; a later end only strengthens the proof). A detection overlapping one
  already matched (IoU >= 0.5) starts no track: it is the same part again (or a false positive on it);
- each track keeps its observations (bounded) and `lookback_t`, the time of the frame `max_misses + 1` frames before
  its first observation (or of the stream's first frame, if later; None for a track seen in the first frame): the
  counter's proof that a part first seen past the line did cross it (see counter.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from cseg.errors import InvalidInputError
from cseg.track.detections import Detections
from cseg.track.geometry import box_ious

HISTORY = 64  # observations kept per track: a part crosses the camera's field in far fewer frames
DUPLICATE_IOU = 0.5  # an unmatched detection overlapping a matched one this much is the same part: no new track


class Observation(NamedTuple):
    """One detection of a track (immutable). A NamedTuple, not a frozen dataclass: made for every detection of every
    frame, and a frozen dataclass's __init__ costs several times more (the 1 ms per frame budget of issue 30)."""

    frame: int
    t: float
    box: np.ndarray  # (4,) float32 xyxy
    score: float
    defective: bool | None
    origin: int = -1  # ground-truth id (synthetic data), -1 unknown
    center: tuple[float, float] = (0.0, 0.0)  # the box center (the anchor counted against the line)
    index: int = -1  # the detection's row in its frame (to give each instance its track id)


@dataclass(eq=False)
class Track:
    id: int
    first_frame: int
    first_t: float
    lookback_t: float | None  # time of the frame max_misses + 1 frames before the first one (see above)
    hits: int = 0
    age: int = 0  # frames since the first observation
    misses: int = 0  # consecutive frames without a detection
    confirmed: bool = False
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    score: float = 0.0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # px/s, image coordinates
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    anchor: tuple | None = None  # the belt tracker's (frame, box) it predicts from, if not the last box (belt.py)

    @property
    def center(self) -> np.ndarray:
        return np.array(self.history[-1].center)

    @property
    def last(self) -> Observation:
        return self.history[-1]

    def predicted_box(self, t: float) -> np.ndarray:
        """The last box moved by the track's velocity to time `t` (where a missed or hidden part should be)."""
        shift = self.velocity * (t - self.last.t)
        return (self.box + np.array([shift[0], shift[1], shift[0], shift[1]])).astype(np.float32)


def check_time(t, last_t: float | None) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not math.isfinite(t):
        raise InvalidInputError(f"frame time must be a finite number of seconds, got {t!r}")
    if last_t is not None and t <= last_t:
        raise InvalidInputError(f"frame time {t} does not come after the previous frame's {last_t}: time went back or "
                                "stood still")  # fmt: skip
    return float(t)


class Tracker:
    """Base: subclasses implement `_associate(detections, t) -> (matches [(track, j)], new detection indices)`."""

    def __init__(self, *, min_hits: int = 3, max_misses: int = 3):
        for name, value, low in (("min_hits", min_hits, 1), ("max_misses", max_misses, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        self.min_hits, self.max_misses = min_hits, max_misses
        self.tracks: list[Track] = []
        self.ended: list[Track] = []  # tracks that ended in the last update
        self.frame = -1
        self.size: tuple[int, int] | None = None
        self._times: deque = deque(maxlen=max_misses + 1)  # the last frames' times, for lookback_t
        self._next_id = 1
        self._rows_of: tuple = (None, None)  # (the frame's Detections, its _rows)
        self._holding = False  # no track is confirmed while True (the belt tracker's start-up)

    @property
    def last_t(self) -> float | None:
        return self._times[-1] if self._times else None

    def check(self, detections: Detections, t) -> float:
        """Refuse a frame before touching any state: not Detections, another size than the stream's, time going back."""
        if not isinstance(detections, Detections):
            raise InvalidInputError(f"a tracker takes Detections, got {type(detections).__name__}")
        if self.size is not None and detections.size != self.size:
            raise InvalidInputError(f"frame is {detections.size[1]}x{detections.size[0]} but the stream's frames "
                                    f"are {self.size[1]}x{self.size[0]}: the line and the tracks are in those "
                                    "pixels")
        return check_time(t, self.last_t)

    def update(self, detections: Detections, t: float, frame: int | None = None) -> list[Track]:
        """Associate one frame's detections; returns the tracks observed in this frame (confirmed or not)."""
        t = self.check(detections, t)
        self.now = t  # this frame's time (for _alive)
        self.size = detections.size
        self.frame = self.frame + 1 if frame is None else int(frame)
        matches, new = self._associate(detections, t)
        seen = []
        for track, j in matches:
            self._observe(track, detections, j, t)
            seen.append(track)
        matched = {id(track) for track in seen}
        for track in self.tracks:
            if id(track) not in matched:
                track.misses += 1
                track.age += 1
        lookback = self._times[0] if self._times else None  # max_misses + 1 frames back, or the stream's first
        new = list(new)
        if matches and new:  # a new detection overlapping a matched one is the same part again: no track
            taken = detections.boxes[[j for _, j in matches]]
            duplicate = box_ious(detections.boxes[new], taken).max(axis=1) >= DUPLICATE_IOU
            new = [j for j, same in zip(new, duplicate.tolist()) if not same]
        for j in new:
            seen.append(self._start(detections, j, t, lookback))
        alive = [self._alive(track) for track in self.tracks]  # once per track: the belt's coasting takes some work
        self.ended = [track for track, keep in zip(self.tracks, alive) if not keep]
        self.tracks = [track for track, keep in zip(self.tracks, alive) if keep]
        self._times.append(t)
        return seen

    def _alive(self, track: Track) -> bool:
        return track.misses <= self.max_misses

    def finish(self) -> list[Track]:
        """End every track (the stream is over): the counter and the defect judge decide on what they saw."""
        self.ended, self.tracks = self.tracks, []
        return self.ended

    # --- shared steps ---------------------------------------------------------------------------------------------

    def _start(self, detections: Detections, j: int, t: float, lookback: float | None, track_id: int | None = None):
        if track_id is None:
            track_id, self._next_id = self._next_id, self._next_id + 1
        track = Track(track_id, self.frame, t, lookback, age=-1)
        self.tracks.append(track)
        self._observe(track, detections, j, t)
        return track

    def _rows(self, detections: Detections) -> tuple:
        """The frame's detections as Python lists (rows of boxes, box values, scores, defective, origin), converted
        once per frame rather than element by element for each observation."""
        if self._rows_of[0] is not detections:
            n = len(detections)
            defective = [None] * n if detections.defective is None else detections.defective.tolist()
            origin = [-1] * n if detections.origin is None else detections.origin.tolist()
            rows = (list(detections.boxes), detections.boxes.tolist(), detections.scores.tolist(), defective, origin)
            self._rows_of = (detections, rows)
        return self._rows_of[1]

    def _observe(self, track: Track, detections: Detections, j: int, t: float) -> None:
        boxes, values, scores, defective, origin = self._rows(detections)
        box = boxes[j]  # a row of the frame's array: Detections are not changed after they are made
        x0, y0, x1, y1 = values[j]
        score = scores[j]
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
        track.history.append(Observation(self.frame, t, box, score, defective[j], origin[j], center, j))
        track.box, track.score = box, score
        track.mask = None if detections.masks is None else detections.masks[j]
        track.hits += 1
        track.age += 1
        track.misses = 0
        track.confirmed = track.confirmed or (track.hits >= self.min_hits and not self._holding)
        track.velocity = self._velocity(track)

    def _velocity(self, track: Track) -> np.ndarray:
        """Least-squares velocity of the last (up to 5) observed centers; zero with one observation."""
        recent = list(track.history)[-5:]
        if len(recent) < 2:
            return np.zeros(2)
        times = np.array([o.t for o in recent])
        centers = np.array([o.center for o in recent], dtype=np.float64)
        times = times - times.mean()
        return (times @ (centers - centers.mean(axis=0))) / (times @ times)

    def _associate(self, detections: Detections, t: float):
        raise NotImplementedError
