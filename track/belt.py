"""`BeltTracker`: tracking by detection with a conveyor's motion model.

Every part on a belt moves with the belt: one speed along one direction. So the tracker keeps ONE speed (px/s) for
all tracks, not a velocity per track, and predicts each track at the new frame's time as
`last center + speed * (t - t_last) * direction`. A detection may join a track only inside a gate around that
prediction (a fraction of the part's own extent along and across the belt), and the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) picks the pairs. Because the prediction carries the whole displacement, this
holds at frame rates where a part moves more than its own length between frames, where IoU association (ByteTrack,
OC-SORT) has no overlap left to work with.

The speed comes from the matched pairs (median, smoothed). Without a `speed` prior, or when most tracks stop
matching (the belt stopped or started), it is found by voting: every track/detection pair that lies along the belt
proposes a speed, and the one that best explains the frame wins: most pairs inside their gates, fewest parts that
would appear or vanish in the middle of the image (parts enter upstream and leave downstream). Irregular gaps between
parts make the true speed the clear winner; a perfectly periodic row of parts is ambiguous beyond half its pitch per
frame without a prior (give `speed` from the belt's encoder there).

A hidden part keeps moving with the belt, so its track coasts: beyond `max_misses` frames it stays alive while the belt
has carried it less than `coast` of its own length since it was last seen (at most `max_coast` frames). At a slow
belt or a high frame rate an occlusion lasts many frames, and a patience counted in frames alone would end the track
and give the part a second id; at a fast belt the patience in frames decides, as before.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cseg.errors import InvalidInputError
from cseg.track.detections import Detections
from cseg.track.geometry import _is_number, unit_direction
from cseg.track.tracker import Track, Tracker

_FAR = 1e6  # cost of a pair outside the gate: never chosen


class BeltTracker(Tracker):
    def __init__(self, direction="right", *, speed: float | None = None, gate: float = 0.5, cross_gate: float = 0.5,
                 smoothing: float = 0.5, min_hits: int = 3, max_misses: int = 3, coast: float = 1.0,
                 max_coast: int = 30):  # fmt: skip
        super().__init__(min_hits=min_hits, max_misses=max_misses)
        if not (_is_number(coast) and coast >= 0):
            raise InvalidInputError(f"coast must be a number of part lengths >= 0, got {coast!r}")
        if isinstance(max_coast, bool) or not isinstance(max_coast, int) or max_coast < max_misses:
            raise InvalidInputError(f"max_coast must be an integer >= max_misses ({max_misses}), got {max_coast!r}")
        self.coast, self.max_coast = float(coast), max_coast
        self.direction = unit_direction(direction, "the belt direction")
        for name, value in (("gate", gate), ("cross_gate", cross_gate)):
            if not (_is_number(value) and value > 0):
                raise InvalidInputError(f"{name} must be a positive fraction of the part's size, got {value!r}")
        if speed is not None and not (_is_number(speed) and speed >= 0):
            raise InvalidInputError(f"speed must be None or a belt speed >= 0 in pixels per second, got {speed!r}")
        if not (_is_number(smoothing) and 0 < smoothing <= 1):
            raise InvalidInputError(f"smoothing must be in (0, 1], got {smoothing!r}")
        self.speed = None if speed is None else float(speed)
        self.gate, self.cross_gate, self.smoothing = float(gate), float(cross_gate), float(smoothing)
        self._belt_velocity = (None, np.zeros(2))

    def _alive(self, track: Track) -> bool:
        """max_misses frames, or longer while the belt has carried the hidden part less than `coast` part lengths."""
        if track.misses <= self.max_misses:
            return True
        if track.misses > self.max_coast or not self.speed:
            return False
        box = track.box
        length = abs(box[2] - box[0]) * abs(self.direction[0]) + abs(box[3] - box[1]) * abs(self.direction[1])
        return self.speed * (self.now - track.last.t) <= self.coast * float(length)

    def _velocity(self, track: Track) -> np.ndarray:
        if self._belt_velocity[0] != self.speed:  # one array per speed, shared by every track
            self._belt_velocity = (self.speed, (self.speed or 0.0) * self.direction)
        return self._belt_velocity[1]

    def _offsets(self, tracks: list[Track], detections: Detections, t: float):
        """Along- and across-belt offsets of every detection from every track's last center, the elapsed times, and
        the gate sizes (pixels) of each pair."""
        across = np.array([-self.direction[1], self.direction[0]])
        last = np.array([track.last.center for track in tracks])
        delta = detections.centers[None, :, :] - last[:, None, :]
        elapsed = np.array([t - track.last.t for track in tracks])
        def extent(boxes, axis):  # a box's size along an axis
            return np.abs(boxes[:, 2] - boxes[:, 0]) * abs(axis[0]) + np.abs(boxes[:, 3] - boxes[:, 1]) * abs(axis[1])

        boxes = np.array([track.box for track in tracks])
        size_along = (extent(boxes, self.direction)[:, None] + extent(detections.boxes, self.direction)[None]) / 2
        size_across = (extent(boxes, across)[:, None] + extent(detections.boxes, across)[None]) / 2
        size_along, size_across = np.maximum(size_along, 1.0), np.maximum(size_across, 1.0)
        return delta @ self.direction, delta @ across, elapsed, size_along, size_across

    def _cost(self, offsets, speed: float) -> np.ndarray:
        along, across, elapsed, size_along, size_across = offsets
        error_along = np.abs(along - speed * elapsed[:, None]) / (self.gate * size_along)
        error_across = np.abs(across) / (self.cross_gate * size_across)
        cost = np.hypot(error_along, error_across)
        cost[(error_along > 1) | (error_across > 1)] = _FAR
        return cost

    def _assign(self, cost: np.ndarray) -> list[tuple[int, int]]:
        rows, cols = linear_sum_assignment(cost)
        return [(int(i), int(j)) for i, j in zip(rows, cols) if cost[i, j] < _FAR]

    def _outside(self, centers: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Whether each center lies outside the frame or within half its box of the edge (not fully in view)."""
        height, width = self.size
        half = (boxes[:, 2:] - boxes[:, :2]) / 2
        return np.any((centers < half) | (centers > np.array([width, height]) - half), axis=1)

    def _plausibility(self, tracks: list[Track], detections: Detections, offsets, speed: float, pairs) -> tuple:
        """(matched pairs, -(detections that appear inside the frame + tracks seen last frame that vanish inside it)),
        compared in that order: the most pairs first (a speed that pushes everything out of view explains every
        appearance but matches nothing), then the fewest surprises: parts enter upstream and leave downstream."""
        _, _, elapsed, _, _ = offsets
        new = np.ones(len(detections), bool)
        lost = np.array([track.misses == 0 for track in tracks])
        for i, j in pairs:
            new[j], lost[i] = False, False
        step = speed * (self._t - self.last_t) * self.direction
        born_inside = ~self._outside(detections.centers[new] - step, detections.boxes[new])
        moved = np.array([track.center + speed * elapsed[i] * self.direction for i, track in enumerate(tracks)])
        boxes = np.array([track.box for track in tracks])
        vanished_inside = ~self._outside(moved[lost], boxes[lost]) if lost.any() else np.zeros(0, bool)
        return len(pairs), -int(born_inside.sum()) - int(vanished_inside.sum())

    def _vote(self, tracks, detections, offsets) -> tuple[float | None, list]:
        """The speed that best explains the frame (see _plausibility; ties: the slowest). The current speed, once
        there is one, gives way only to a speed that matches strictly more pairs, and at least two (a frame of
        misses and false positives must not swap it for an absurd one). A speed that crosses the frame in fewer than
        `min_hits` frames is not proposed: no part could be confirmed at it."""
        along, across, elapsed, size_along, size_across = offsets
        plausible = (np.abs(across) <= self.cross_gate * size_across) & (along >= -self.gate * size_along)
        fastest = float(np.abs(np.array(self.size[::-1]) @ self.direction)) / self.min_hits / (self._t - self.last_t)
        proposed = np.unique(np.round(np.clip(along / elapsed[:, None], 0, None)[plausible], 3))
        best, best_pairs, best_score = None, [], None
        for speed in proposed[proposed <= fastest]:  # at most tracks x detections (400 with 20 parts)
            pairs = self._assign(self._cost(offsets, speed))
            score = self._plausibility(tracks, detections, offsets, speed, pairs)
            if best_score is None or score > best_score:
                best, best_pairs, best_score = float(speed), pairs, score
        return best, best_pairs

    def _associate(self, detections: Detections, t: float):
        tracks = self.tracks
        if not tracks or not len(detections):
            return [], list(range(len(detections)))
        offsets = self._offsets(tracks, detections, t)
        self._t = t
        pairs = self._assign(self._cost(offsets, self.speed)) if self.speed is not None else []
        recent = sum(track.misses == 0 for track in tracks)
        if len(pairs) * 2 < min(recent, len(detections)):  # no speed yet, or most tracks lost it: vote again
            voted, voted_pairs = self._vote(tracks, detections, offsets)
            # an established speed gives way only to more evidence than one pair (a missed part next to a new one
            # is one pair at any speed)
            if voted is not None and (self.speed is None or len(voted_pairs) > max(len(pairs), 1)):
                pairs, self.speed = voted_pairs, voted
        if pairs:
            along, _, elapsed, _, _ = offsets
            measured = float(np.median([along[i, j] / elapsed[i] for i, j in pairs]))
            self.speed = max(0.0, (1 - self.smoothing) * self.speed + self.smoothing * measured)
        matched = {j for _, j in pairs}
        return [(tracks[i], j) for i, j in pairs], [j for j in range(len(detections)) if j not in matched]
