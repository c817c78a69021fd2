"""One defect decision per part: k of n judged frames at or near the line.

Each frame's instance may carry a per-frame verdict (`Detections.defective`: a defect rule's overlap, a score). One
frame's verdict is noisy (glare, a mask that clips), one event per frame would fire the reject gate many times per part,
so a confirmed track is judged on the first `n` observations whose anchor lies within `near` pixels of the line
(every observation when `near` is None): defective as soon as `k` of them are. A part seen fewer than n times there
(it moved fast, it was missed) is judged when it leaves the band or its track ends, on the same fraction:
defective iff at least ceil(k * m / n) of its m judged observations are; a part that jumped over the whole band
between two frames is judged on its observation nearest the line. Exactly one `defect` event per part; a good part
gets none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cseg.errors import InvalidInputError
from cseg.track.counter import new_observations
from cseg.track.geometry import Line, _is_number
from cseg.track.tracker import Observation, Track


@dataclass(frozen=True)
class DefectRule:
    k: int = 2
    n: int = 3
    near: float | None = None  # pixels either side of the line; None: the whole field of view

    def __post_init__(self):
        for name, value in (("k", self.k), ("n", self.n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"defect rule: {name} must be an integer >= 1, got {value!r}")
        if self.k > self.n:
            raise InvalidInputError(f"defect rule: k={self.k} of n={self.n} frames can never hold (k must be <= n)")
        if self.near is not None and not (_is_number(self.near) and self.near >= 0):
            raise InvalidInputError(f"defect rule: near must be None or pixels >= 0, got {self.near!r}")


@dataclass(frozen=True)
class Verdict:
    track: Track
    observation: Observation  # the observation that decided
    defective: bool
    judged: int  # observations judged
    positives: int


class _Window:
    __slots__ = ("last_frame", "judged", "positives", "decided", "last", "nearest")

    def __init__(self):
        self.last_frame = -(2**62)
        self.judged = self.positives = 0
        self.decided = False
        self.last: Observation | None = None
        self.nearest: tuple[float, Observation] | None = None  # (distance to the line, observation) with a verdict


class DefectJudge:
    def __init__(self, rule: DefectRule, line: Line | None = None):
        if not isinstance(rule, DefectRule):
            raise InvalidInputError(f"defects must be a DefectRule, got {type(rule).__name__}")
        if rule.near is not None and line is None:
            raise InvalidInputError("defect rule: near= is a distance to the line; give a line or near=None")
        self.rule, self.line = rule, line
        self.defects = 0
        self._windows: dict[int, _Window] = {}

    def _near(self, distance: float | None) -> int:
        """-1 before the band, 0 in it, +1 past it (always 0 without a band)."""
        if self.rule.near is None:
            return 0
        return -1 if distance < -self.rule.near else 1 if distance > self.rule.near else 0

    def _decide(self, track: Track, window: _Window, defective: bool) -> Verdict:
        window.decided = True
        self.defects += defective
        return Verdict(track, window.last, defective, window.judged, window.positives)

    def _partial(self, track: Track, window: _Window) -> Verdict | None:
        if window.decided or (window.judged == 0 and window.nearest is None):
            return None
        if window.judged == 0:  # jumped over the band: its observation nearest the line decides
            window.last = window.nearest[1]
            window.judged, window.positives = 1, int(bool(window.last.defective))
        return self._decide(track, window, window.positives >= math.ceil(self.rule.k * window.judged / self.rule.n))

    def update(self, tracks: list[Track]) -> list[Verdict]:
        verdicts = []
        for track in tracks:
            if not track.confirmed:
                continue
            window = self._windows.get(track.id)
            if window is None:
                window = self._windows[track.id] = _Window()
            if window.decided:
                continue
            for observation in new_observations(track, window.last_frame):
                window.last_frame = observation.frame
                if window.decided:
                    break
                distance = None if self.line is None else self.line.distance(observation.center)
                place = self._near(distance)
                if observation.defective is not None and distance is not None:
                    if window.nearest is None or abs(distance) < window.nearest[0]:
                        window.nearest = (abs(distance), observation)
                if place > 0:  # left the band: judge on what was seen
                    if (verdict := self._partial(track, window)) is not None:
                        verdicts.append(verdict)
                    break
                if place < 0 or observation.defective is None:
                    continue
                window.judged += 1
                window.positives += observation.defective
                window.last = observation
                if window.positives >= self.rule.k or window.judged >= self.rule.n:
                    verdicts.append(self._decide(track, window, window.positives >= self.rule.k))
        return verdicts

    def end(self, tracks: list[Track]) -> list[Verdict]:
        """Tracks that ended: judge the undecided ones on what was seen, then forget them."""
        verdicts = []
        for track in tracks:
            window = self._windows.pop(track.id, None)
            if window is not None and (verdict := self._partial(track, window)) is not None:
                verdicts.append(verdict)
        return verdicts
