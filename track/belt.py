"""`BeltTracker`: tracking by detection with a conveyor's motion model.

Every part on a belt moves with the belt: one speed along one direction. So the tracker keeps ONE speed (px/s) for
all tracks, not a velocity per track, and predicts each track at the new frame's time as
`last center + speed * (t - t_last) * direction`. A detection may join a track only inside a gate around that
prediction (a fraction of the part's own extent along and across the belt), and the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) picks the pairs. Because the prediction carries the whole displacement, this
holds at frame rates where a part moves more than its own length between frames, where IoU association (ByteTrack,
OC-SORT) has no overlap left to work with.

A pair's cost adds the overlap of the detection's box with the track's box moved to the prediction (a false positive
lying on a part is near its predicted center but much smaller), and leaving a track or a detection unmatched has a
price, so two mediocre pairs never beat one good pair (see `_assign`).

The speed comes from the matched pairs (median, smoothed). Without a `speed` prior, or when most tracks stop
matching (the belt stopped or started), it is found by voting: every track/detection pair that lies along the belt,
and every pair of detections in the last WINDOW frames (belt_speed.SpeedVotes), proposes a speed, and the one that
best explains what was seen wins: the most detection pairs of the last frames lined up by it, then the most pairs in
this frame, then the fewest parts that would appear or vanish in the middle of the image (parts enter upstream and
leave downstream). A speed chosen on a few ambiguous first frames (a miss beside a part entering fits a stopped belt
as well as a moving one) is replaced as soon as the last frames support another one clearly better. Irregular gaps
between parts make the true speed the clear winner; a perfectly periodic row of parts is ambiguous beyond half its
pitch per frame without a prior (give `speed` from the belt's encoder there).

A hidden part keeps moving with the belt, so its confirmed track coasts: beyond `max_misses` frames it stays alive
while the belt has carried it less than `coast` of its own length since it was last seen (at most `max_coast`
frames). At a slow belt or a high frame rate an occlusion (the bar, then a miss) lasts many frames, and a patience
counted in frames alone would end the track and give the part a second id; at a fast belt the patience in frames
decides, as before. Measured on the synthetic conveyor (benchmarks/conveyor.py, seeds 3-7 with noise): coast 2.5
against 1.0 halves the ID switches at 0.5 part lengths per frame (8 -> 4) and removes them at 0.25 (6 -> 0).
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from cseg.errors import InvalidInputError
from cseg.track.belt_speed import SpeedVotes
from cseg.track.detections import Detections
from cseg.track.geometry import _is_number, paired_ious, unit_direction
from cseg.track.tracker import Track, Tracker

_FAR = 1e6  # cost of a pair outside the gate: never chosen
# cost of leaving one track or one detection unmatched: a pair is taken only when it costs less than its two members
# left alone (2 x 0.75 = 1.5). Inside the gate a pair costs up to sqrt(2) (1 along, 1 across) + _SHAPE (no overlap):
# a pair at the gate's far corner that does not overlap its prediction at all is left unmatched
_UNMATCHED = 0.75
WINDOW = 6  # frames of detections the speed vote weighs
_SHAPE = 0.25  # weight of the box overlap in a pair's cost (see _cost)


class _Offsets(NamedTuple):
    """One frame's geometry of every track/detection pair, computed once per frame: a frame may try several speeds
    on it (the current one, the window's peak, a vote's best-supported ones), and only the along-belt error depends
    on the speed."""

    along: np.ndarray  # (tracks, detections) offset of each detection from each track's last center, along the belt
    across: np.ndarray  # (tracks, detections) the same across the belt
    elapsed: np.ndarray  # (tracks,) seconds since each track's last observation
    size_along: np.ndarray  # (tracks, detections) mean extent of the pair's boxes along the belt (gate unit)
    size_across: np.ndarray
    track_boxes: np.ndarray  # (tracks, 4) last boxes
    boxes: np.ndarray  # (detections, 4)
    last: np.ndarray  # (tracks, 2) last centers
    reach_along: np.ndarray  # (tracks, detections) gate x size_along: the along error's unit
    error_across: np.ndarray  # (tracks, detections) across offset in gate units (speed-independent)
    in_lane: np.ndarray  # error_across <= 1


class BeltTracker(Tracker):
    def __init__(self, direction="right", *, speed: float | None = None, gate: float = 0.5, cross_gate: float = 0.5,
                 smoothing: float = 0.5, min_hits: int = 3, max_misses: int = 3, coast: float = 2.5,
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
        self._direction4 = np.tile(self.direction, 2)  # a shift along the belt of a box's x0 y0 x1 y1
        self._across = np.array([-self.direction[1], self.direction[0]])
        self._axes = tuple(tuple(np.abs(axis)) for axis in (self.direction, self._across))  # for box extents
        self._undecided = 0  # consecutive frames whose vote for the first speed was tied
        self._since_choice = 0  # frames since a vote or the window chose the speed (see _contradicted)
        self._votes = SpeedVotes(self.direction, self.gate, self.cross_gate, WINDOW)  # the last frames' evidence

    def _alive(self, track: Track) -> bool:
        """max_misses frames, or longer while the belt has carried the hidden part less than `coast` part lengths."""
        if track.misses <= self.max_misses:
            return True
        if track.misses > self.max_coast or not self.speed or not track.confirmed:
            return False  # an unconfirmed track (often a false positive) does not coast
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
        observations = [track.last for track in tracks]
        last = np.array([observation.center for observation in observations])
        elapsed = np.array([t - observation.t for observation in observations])
        boxes = np.array([track.box for track in tracks])
        delta = self._centers[None, :, :] - last[:, None, :]
        # each box's extent along and across the belt, the tracks' and the detections' boxes in one pass
        both = np.concatenate([boxes, detections.boxes])
        width, height = np.abs(both[:, 2] - both[:, 0]), np.abs(both[:, 3] - both[:, 1])
        (along_x, along_y), (across_x, across_y) = self._axes  # float64 scalars: the extents are float64
        extent_along, extent_across = width * along_x + height * along_y, width * across_x + height * across_y
        n = len(tracks)
        size_along = np.maximum((extent_along[:n, None] + extent_along[None, n:]) / 2, 1.0)
        size_across = np.maximum((extent_across[:n, None] + extent_across[None, n:]) / 2, 1.0)
        offset_across = delta @ self._across
        error_across = np.abs(offset_across) / (self.cross_gate * size_across)
        return _Offsets(delta @ self.direction, offset_across, elapsed, size_along, size_across, boxes,
                        np.asarray(detections.boxes, np.float64), last, self.gate * size_along, error_across,
                        error_across <= 1)  # fmt: skip

    def _cost(self, offsets, speed: float) -> np.ndarray:
        """The distance of each detection from each track's predicted position in gate units, plus `_SHAPE` x (1 -
        IoU of the detection's box with the track's box moved there). The position alone cannot tell a part from a
        false positive lying on it (a fragment near its center, closer to the prediction than the part's jittered
        box); the overlap of the whole box can. Pairs outside the gate cost `_FAR`, so the rest (the overlap, the
        distance) is computed for the pairs inside only: a few per track, not tracks x detections."""
        error_along = np.abs(offsets.along - speed * offsets.elapsed[:, None]) / offsets.reach_along
        rows, cols = np.nonzero((error_along <= 1) & offsets.in_lane)
        cost = np.full(error_along.shape, _FAR)
        if rows.size:
            shift = (speed * offsets.elapsed[rows])[:, None] * self._direction4  # (pairs, 4): x0 y0 x1 y1
            overlap = paired_ious(offsets.track_boxes[rows] + shift, offsets.boxes[cols])
            distance = np.hypot(error_along[rows, cols], offsets.error_across[rows, cols])
            cost[rows, cols] = distance + _SHAPE * (1 - overlap)
        return cost

    def _assign(self, cost: np.ndarray) -> list[tuple[int, int]]:
        """Pairs of least total cost, where leaving a track or a detection unmatched costs `_UNMATCHED` each.

        A plain assignment pairs as many as it can: with two tracks and two detections it would rather take two
        mediocre pairs (a confirmed part's track on a false positive beside it, a new track on the part) than one
        good pair and two leftovers, because a leftover costs nothing. Pricing the leftovers makes a pair worth
        taking only when it is cheaper than leaving both of its members alone.

        That is the assignment of the matrix padded with one "unmatched" column per track and row per detection
        ((tracks + detections)^2). Solved here without the padding: with k pairs the total is the sum of the pairs'
        costs + _UNMATCHED x (tracks + detections - 2k), i.e. a constant + the sum of (cost - 2 x _UNMATCHED) over the
        pairs taken. So the same optimum is the plain assignment of min(cost - 2 x _UNMATCHED, 0), restricted to the
        tracks and detections that have a pair worth taking, keeping the pairs that gain (< 0)."""
        worth = cost < 2 * _UNMATCHED
        if worth.sum(axis=1).max(initial=0) <= 1 and worth.sum(axis=0).max(initial=0) <= 1:
            # no track has two pairs worth taking, no detection either (the usual frame): the optimum takes them all
            return list(zip(*(index.tolist() for index in np.nonzero(worth))))
        rows, cols = np.flatnonzero(worth.any(axis=1)), np.flatnonzero(worth.any(axis=0))
        gain = np.minimum(cost[np.ix_(rows, cols)] - 2 * _UNMATCHED, 0.0)
        chosen, partner = linear_sum_assignment(gain)
        keep = gain[chosen, partner] < 0
        return list(zip(rows[chosen[keep]].tolist(), cols[partner[keep]].tolist()))  # by track, as the padded form

    def _outside(self, centers: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Whether each center lies outside the frame or within half its box of the edge (not fully in view)."""
        height, width = self.size
        half = (boxes[:, 2:] - boxes[:, :2]) / 2
        return np.any((centers < half) | (centers > np.array([width, height]) - half), axis=1)

    def _plausibility(self, detections: Detections, offsets, speed: float, pairs, recent: np.ndarray) -> tuple:
        """(matched pairs, -(detections that appear inside the frame + tracks seen last frame (`recent`) that vanish
        inside it)), compared in that order: the most pairs first (a speed that pushes everything out of view explains
        every appearance but matches nothing), then the fewest surprises: parts enter upstream and leave downstream."""
        new = np.ones(len(detections), bool)
        lost = recent.copy()
        if pairs:
            matched_tracks, matched_detections = zip(*pairs)
            lost[list(matched_tracks)], new[list(matched_detections)] = False, False
        step = speed * (self._t - self.last_t) * self.direction
        born_inside = ~self._outside(self._centers[new] - step, detections.boxes[new])
        if not lost.any():
            return len(pairs), -int(born_inside.sum())
        moved = offsets.last[lost] + (speed * offsets.elapsed[lost])[:, None] * self.direction
        vanished_inside = ~self._outside(moved, offsets.track_boxes[lost])
        return len(pairs), -int(born_inside.sum()) - int(vanished_inside.sum())

    def _vote(self, tracks, detections, offsets) -> tuple[float | None, list]:
        """The speed that best explains the frame (see _plausibility; ties: the slowest). The current speed, once
        there is one, gives way only to a speed that matches strictly more pairs, and at least two (a frame of
        misses and false positives must not swap it for an absurd one). A speed that crosses the frame in fewer than
        `min_hits` frames is not proposed: no part could be confirmed at it."""
        along, across, elapsed, size_along, size_across = offsets[:5]
        plausible = (np.abs(across) <= self.cross_gate * size_across) & (along >= -self.gate * size_along)
        fastest = self._fastest()
        proposed = np.round(np.clip(along / elapsed[:, None], 0, None)[plausible], 3)
        proposed = np.unique(np.concatenate([proposed, self._votes.speeds()]))  # the last frames' proposals too
        proposed = proposed[proposed <= fastest]
        support = self._votes.support(proposed)
        if len(support):  # the window's votes come first in a score: a speed with fewer can neither win nor tie
            best_supported = support == support.max()
            proposed, support = proposed[best_supported], support[best_supported]
        recent = np.array([track.misses == 0 for track in tracks])
        best, best_pairs, best_score, tied = None, [], None, False
        for speed, votes in zip(proposed, support):  # only the best-supported of up to tracks x detections + window's
            pairs = self._assign(self._cost(offsets, speed))
            score = (float(votes), *self._plausibility(detections, offsets, speed, pairs, recent))
            tied = tied or (score == best_score and pairs != best_pairs)  # as good, but a different story
            if best_score is None or score > best_score:
                best, best_pairs, best_score, tied = float(speed), pairs, score, False
        return best, best_pairs, tied

    def _fastest(self) -> float:
        """A speed that crosses the frame in fewer than `min_hits` frames is never proposed: no part could be
        confirmed at it."""
        return float(np.abs(np.array(self.size[::-1]) @ self.direction)) / self.min_hits / (self._t - self.last_t)

    def _contradicted(self) -> float | None:
        """A speed the last frames support clearly better than the current one (1.5 times its pairs and 3 more),
        else None: a speed adopted on a few ambiguous frames keeps matching some pairs by coincidence on a dense
        belt, so this frame's pairs alone would never call for a new vote. Checked every frame for 2 x WINDOW frames
        after the speed was chosen, then every WINDOW frames (the window's votes are computed only when a check reads
        them; a belt that stops or starts loses its pairs and calls a vote at once anyway). The peak search runs only
        when some speed could be supported enough (`most_support`, a cheap upper bound): on a steady belt the current
        speed is the best supported, and no search is needed."""
        self._since_choice += 1
        if self.speed is None or (self._since_choice > 2 * WINDOW and self._since_choice % WINDOW):
            return None
        current = int(self._votes.support(self.speed)[0])
        if self._votes.most_support() < 1.5 * current + 3:  # no speed at all is supported enough: skip the search
            return None
        peak, votes = self._votes.peak(self._fastest())
        if peak is None:
            return None
        return peak if votes >= 1.5 * current + 3 else None

    def _associate(self, detections: Detections, t: float):
        self._centers = detections.centers  # a property computed on each access: once per frame
        self._votes.remember(detections, t, self._centers)
        tracks = self.tracks
        if not tracks or not len(detections):
            return [], list(range(len(detections)))
        offsets = self._offsets(tracks, detections, t)
        self._t = t
        pairs = self._assign(self._cost(offsets, self.speed)) if self.speed is not None else []
        recent = sum(track.misses == 0 for track in tracks)
        better = self._contradicted()
        if better is not None:  # the window contradicts the speed: take the better one if it holds in this frame
            better_pairs = self._assign(self._cost(offsets, better))
            if len(better_pairs) >= 2:
                pairs, self.speed, self._since_choice = better_pairs, better, 0
        if len(pairs) * 2 < min(recent, len(detections)):  # no speed yet, or most tracks lost it: vote again
            voted, voted_pairs, tied = self._vote(tracks, detections, offsets)
            # the first speed waits while another explains the frame as well (one part missed next to one entering
            # fits a stopped belt and a moving one alike), for at most min_hits frames: then the slowest tie holds
            # (right for a periodic row below half its pitch per frame). An established speed gives way only to more
            # evidence than one pair (a missed part next to a new one is one pair at any speed).
            self._undecided = self._undecided + 1 if self.speed is None and tied else 0
            if self.speed is None and tied and self._undecided <= self.min_hits:
                voted = None
            if voted is not None and (self.speed is None or len(voted_pairs) > max(len(pairs), 1)):
                pairs, self.speed, self._since_choice = voted_pairs, voted, 0
        if pairs:
            along, elapsed = offsets.along, offsets.elapsed
            measured = float(statistics.median([along[i, j] / elapsed[i] for i, j in pairs]))  # np.median's value
            self.speed = max(0.0, (1 - self.smoothing) * self.speed + self.smoothing * measured)
        matched = {j for _, j in pairs}
        return [(tracks[i], j) for i, j in pairs], [j for j in range(len(detections)) if j not in matched]
