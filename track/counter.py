"""Counting confirmed tracks across a line (or into a zone), each part once.

A track's state against the line is its side: "before" (signed distance < -hysteresis), "past" (> +hysteresis), or
unchanged while its anchor (the box center) is inside the band between. Box flicker on the line therefore never flips
it, and a track is counted at most once whatever it does afterwards (a part pushed back and forth is one part; going
back past the line is reported once as `reverse`).

A part counts when its confirmed track goes from "before" to "past", the crossing point lying on the segment (give
or take `margin` pixels). A track that is first "past" without ever having been "before" (first seen already past
the line: missed while crossing, a low frame rate, a line near the image edge) counts only when its track proves the
crossing: with p0 its first observed anchor at time t0, v its velocity and t_b its `lookback_t` (the time of the frame
`max_misses + 1` frames before t0), it counts iff v points across the line (v . n > 0) and the back-projected anchor
p0 - v (t0 - t_b) lies before the line (signed distance < 0) with the crossing point on the segment. Why this cannot
count a part twice: a track ends only after more than `max_misses` consecutive misses, so a part that lost its track
and got a new one was last seen by the old track no later than t_b; if the old track had crossed, the part was past the
line at t_b already and the new track proves nothing (t_b is the stream's first frame when the stream is younger: no
older track existed). A part on screen at the stream's first frame has no t_b: a crossing nobody saw is not counted.
One way round the proof: the old track does not end but lives on, on something else lying on the part (a false
positive taken the frame the part's own detection, jittered, looked worse: found on held-out seed 44 of the synthetic
conveyor), while the part's detection starts the new track. So a proven crossing also needs no counted track's box
in the new track's first frame to lie on its first box (IoU >= SHADOW_IOU; touching parts overlap by jitter only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cseg.errors import InvalidInputError
from cseg.track.geometry import Line, Zone, _is_number, paired_ious
from cseg.track.tracker import Observation, Track

SHADOW_IOU = 0.2  # a counted track's box overlapping a new track's first box this much: the same part (see above)


@dataclass(frozen=True)
class Crossing:
    kind: str  # "count" or "reverse"
    track: Track
    observation: Observation
    count: int  # the counter's total for this kind after this crossing
    proven: bool = False  # counted by the back-projection proof (first seen past the line)


class _State:
    __slots__ = ("side", "last_frame", "before", "counted", "reversed", "track")

    def __init__(self):
        self.side = 0  # -1 before, +1 past, 0 not yet known
        self.last_frame = -(2**62)
        self.before: tuple[float, float] | None = None  # last anchor seen before the line
        self.counted = self.reversed = False
        self.track: Track | None = None  # once counted (see LineCounter.shadowed)


def new_observations(track: Track, last_frame: int) -> list[Observation]:
    """The track's observations after frame `last_frame`, oldest first (read from the end: usually one)."""
    history = track.history
    if history[-1].frame <= last_frame:
        return []
    if len(history) == 1 or history[-2].frame <= last_frame:  # the usual case: this frame's observation alone
        return [history[-1]]
    new = []
    for observation in reversed(history):
        if observation.frame <= last_frame:
            break
        new.append(observation)
    return new[::-1]


class LineCounter:
    def __init__(self, line: Line, *, hysteresis: float = 2.0, margin: float = 0.0):
        if not isinstance(line, Line):
            raise InvalidInputError(f"line must be a cseg.track.Line, got {type(line).__name__}")
        for name, value in (("hysteresis", hysteresis), ("margin", margin)):
            if not (_is_number(value) and value >= 0):
                raise InvalidInputError(f"{name} must be a number of pixels >= 0, got {value!r}")
        self.line, self.hysteresis, self.margin = line, float(hysteresis), float(margin)
        self.count = self.reversed = 0
        self._states: dict[int, _State] = {}

    def _crosses(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the segment a -> b (a before the line, b past it) meets the line on the counted segment."""
        da, db = self.line.signed_distance(a), self.line.signed_distance(b)
        point = a + (b - a) * (da / (da - db)) if da != db else b
        return self.line.within(point, self.margin)

    def proves_crossing(self, track: Track) -> bool:
        """The back-projection proof above, for a track first seen past the line."""
        first = track.history[0]
        if track.lookback_t is None or float(track.velocity @ self.line.normal) <= 0:
            return False
        center = np.array(first.center)
        back = center - track.velocity * (first.t - track.lookback_t)
        return float(self.line.signed_distance(back)) < 0 and self._crosses(back, center)

    def shadowed(self, track: Track) -> bool:
        """Whether a counted track's box lay on `track`'s first box in that frame (see the module's docstring); the
        counted tracks still alive, seen this frame or not (the one that took the false positive may be missing)."""
        first = track.history[0]
        for state in self._states.values():
            if state.track is None or state.track is track:
                continue
            for observation in reversed(state.track.history):  # the frame is recent: a few steps back at most
                if observation.frame <= first.frame:
                    if observation.frame == first.frame and paired_ious(observation.box, first.box) >= SHADOW_IOU:
                        return True
                    break
        return False

    def update(self, tracks: list[Track]) -> list[Crossing]:
        crossings = []
        for track in tracks:
            if not track.confirmed:
                continue
            state = self._states.get(track.id)
            if state is None:
                state = self._states[track.id] = _State()
            for observation in new_observations(track, state.last_frame):
                state.last_frame = observation.frame
                center = observation.center
                distance = self.line.distance(center)
                side = -1 if distance < -self.hysteresis else 1 if distance > self.hysteresis else state.side
                if side == 1 and state.side != 1 and not state.counted:
                    proven = state.side == 0
                    crossed = (self.proves_crossing(track) and not self.shadowed(track) if proven
                               else self._crosses(np.array(state.before), np.array(center)))  # fmt: skip
                    if crossed:
                        state.counted, state.track = True, track
                        self.count += 1
                        crossings.append(Crossing("count", track, observation, self.count, proven))
                elif side == -1 and state.side == 1 and state.counted and not state.reversed:
                    state.reversed = True
                    self.reversed += 1
                    crossings.append(Crossing("reverse", track, observation, self.reversed))
                if side == -1:
                    state.before = center  # an array only when it is needed (once per part)
                state.side = side
        return crossings

    def end(self, tracks: list[Track]) -> None:
        for track in tracks:
            self._states.pop(track.id, None)


class ZoneCounter:
    """Counts each confirmed track once, the first time its anchor is inside the zone; `occupancy` is how many
    confirmed tracks are inside now."""

    def __init__(self, zone: Zone):
        if not isinstance(zone, Zone):
            raise InvalidInputError(f"zone must be a cseg.track.Zone, got {type(zone).__name__}")
        self.zone = zone
        self.count = 0
        self._inside: dict[int, bool] = {}
        self._counted: set[int] = set()

    @property
    def occupancy(self) -> int:
        return sum(self._inside.values())

    def update(self, tracks: list[Track]) -> list[Crossing]:
        crossings = []
        for track in tracks:
            if not track.confirmed:
                continue
            inside = self.zone.contains(track.center)
            self._inside[track.id] = inside
            if inside and track.id not in self._counted:
                self._counted.add(track.id)
                self.count += 1
                crossings.append(Crossing("count", track, track.last, self.count))
        return crossings

    def end(self, tracks: list[Track]) -> None:
        for track in tracks:
            self._inside.pop(track.id, None)
            self._counted.discard(track.id)
