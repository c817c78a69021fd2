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
while the belt has carried it less than `coast` of its own length (at most `max_coast` frames) and it is in view.

Each further rule was found on a case of the synthetic conveyor (benchmarks/conveyor.py, with detector noise) and has
a test replaying it (tests/test_track_belt.py); the README has the measurements: a box the frame cuts moves by its
uncut edge (belt_speed.cut_by_frame); an unconfirmed track's pairs pay `_TENTATIVE`; pairs pay for a change of box
size (`_SIZE`, `_SIZE_TENTATIVE`); a questionable observation does not move its track (`_anchor`) nor measure the speed;
the window's support weighs each pair by how well it lines up (`_contradicted`); and without a speed prior no track is
confirmed until the first speed has held (belt_startup.py).
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from cseg.errors import InvalidInputError
from cseg.track.belt_speed import SpeedVotes, cut_by_frame
from cseg.track.belt_startup import StartUp, replay
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
_TENTATIVE = 0.25  # added to an unconfirmed track's pairs (see _cost)
_SIZE = 0.3  # weight of |log(area ratio)| in a confirmed track's pairs (see _cost)
_SIZE_TENTATIVE = 0.6  # the same in an unconfirmed track's (see _cost)
_QUESTIONABLE = 0.5  # a pair costing more (its track's _TENTATIVE aside) moves its track by a median (see _anchor)


class _Offsets(NamedTuple):
    """One frame's geometry of every track/detection pair, computed once per frame: a frame may try several speeds
    on it (the current one, the window's peak, a vote's best-supported ones), and only the along-belt error depends
    on the speed."""

    along: np.ndarray  # (tracks, detections) offset of each detection from each track's last center, along the belt
    elapsed: np.ndarray  # (tracks,) seconds since each track's last observation
    track_boxes: np.ndarray  # (tracks, 4) last boxes
    boxes: np.ndarray  # (detections, 4)
    last: np.ndarray  # (tracks, 2) last centers
    reach_along: np.ndarray  # (tracks, detections) gate x the pair's mean extent along the belt: the along error's unit
    error_across: np.ndarray  # (tracks, detections) across offset in gate units (speed-independent)
    in_lane: np.ndarray  # error_across <= 1
    tentative: np.ndarray  # (tracks,) _TENTATIVE for an unconfirmed track, else 0
    log_area: np.ndarray  # (tracks + detections,) log of each box's area, NaN where the frame cuts it


class BeltTracker(Tracker):
    def __init__(self, direction="right", *, speed: float | None = None, gate: float = 0.5, cross_gate: float = 0.5,
                 smoothing: float = 0.5, min_hits: int = 3, max_misses: int = 3, coast: float = 5.0,
                 max_coast: int = 30):  # fmt: skip
        super().__init__(min_hits=min_hits, max_misses=max_misses)
        self._settings = dict(direction=direction, gate=gate, cross_gate=cross_gate, smoothing=smoothing,
                              min_hits=min_hits, max_misses=max_misses, coast=coast, max_coast=max_coast)  # _replay
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
        self._step = tuple(self.direction.tolist())  # the same as Python floats (per-track arithmetic in _alive)
        self._across = np.array([-self.direction[1], self.direction[0]])
        self._axes = tuple(tuple(np.abs(axis)) for axis in (self.direction, self._across))  # for box extents
        # a belt along x or y (the usual camera set-up): offsets and extents are columns, no projection needed
        self._axis = 0 if abs(self._step[1]) < 1e-12 else 1 if abs(self._step[0]) < 1e-12 else None
        self._undecided = 0  # consecutive frames whose vote for the first speed was tied
        self._since_choice = 0  # frames since a vote or the window chose the speed (see _contradicted)
        self._votes = SpeedVotes(self.direction, self.gate, self.cross_gate, WINDOW)  # the last frames' evidence
        self._startup = StartUp() if speed is None else None  # no identity before the first speed held (see there)
        self._holding = self._startup is not None  # confirmations held (Tracker._observe) during the start-up
        self._questionable: list[Track] = []  # tracks whose observation in this frame was questionable (_anchor)
        self._replaying = False  # tracking kept frames again at a chosen speed (belt_startup.replay)
        self._choices = 0  # speeds chosen so far

    def update(self, detections: Detections, t: float, frame: int | None = None) -> list[Track]:
        startup, choices = self._startup, self._choices
        seen = super().update(detections, t, frame)
        for track in self._questionable:
            track.anchor = (track.last.frame, self._anchor(track))
        if startup is None:
            return seen
        startup.record(detections, self.now, self.frame, self.ended)
        if self._choices != choices:  # chosen first or again: the kept frames tracked again at this speed
            seen = replay(self, startup, detections)
            startup.chosen()
        if not startup.settled(self.speed):
            return seen
        self._startup, self._holding = None, False
        seen, self.ended = startup.confirm(self.tracks, seen, self.ended, self.min_hits)
        return seen

    def _alive(self, track: Track) -> bool:
        """max_misses frames, or longer while the belt has carried the hidden part less than `coast` part lengths and
        its center is still in the frame (a part that left the view is not hidden: coasting on, its track would only
        cost every later frame's association work)."""
        if track.misses <= self.max_misses:
            return True
        if track.misses > self.max_coast or not self.speed or not track.confirmed:
            return False  # an unconfirmed track (often a false positive) does not coast
        box, (dx, dy) = track.box, self._step
        carried = self.speed * (self.now - track.last.t)
        if carried > self.coast * float(abs(box[2] - box[0]) * abs(dx) + abs(box[3] - box[1]) * abs(dy)):
            return False
        x, y = track.last.center
        height, width = self.size
        return 0 <= x + carried * dx <= width and 0 <= y + carried * dy <= height

    def _velocity(self, track: Track) -> np.ndarray:
        if self._belt_velocity[0] != self.speed:  # one array per speed, shared by every track
            self._belt_velocity = (self.speed, (self.speed or 0.0) * self.direction)
        return self._belt_velocity[1]

    def finish(self) -> list[Track]:
        """End every track; a stream that ends during the start-up confirms what it would have at its end."""
        startup, self._startup, self._holding = self._startup, None, False
        if startup is None:
            return super().finish()
        _, ended = startup.confirm(self.tracks, [], [], self.min_hits)
        return super().finish() + ended

    def _anchor(self, track: Track) -> np.ndarray:
        """Where the part was at its last observation: the median, coordinate by coordinate, of its last three boxes
        moved along the belt to that time (a box the frame cuts moves by its uncut edge, not as a whole, see
        cut_by_frame: a cut last box is taken as it is, older cut ones are left out; two left: their mean).

        Used when that observation was questionable (its pair cost more than _QUESTIONABLE; a part's own jittered
        detection costs ~0.1-0.3): one detection does not move a track. Found on seeds 12 (0.25 part lengths per
        frame) and 45/50/51 (1.0) of the synthetic conveyor: a track took a false positive while its part was missed;
        predicted from that box, the part's next detection fell outside the gate and got a second track (on seed 12
        the old one coasted on, took another false positive at the line: counted twice). For every track and frame
        (same results on 136 seeds) the medians cost 0.15-0.2 ms a frame against the 1 ms budget."""
        recent = list(track.history)[-3:]
        boxes = np.array([observation.box for observation in recent], np.float64)
        times = np.array([observation.t for observation in recent])
        usable = cut_by_frame(boxes, self.direction, self.size) == 0
        if not usable[-1] or usable.sum() < 2:
            return track.box
        moved = boxes + ((self.speed or 0.0) * (times[-1] - times))[:, None] * self._direction4
        return np.median(moved[usable], axis=0)

    def _offsets(self, tracks: list[Track], detections: Detections, t: float):
        """Along- and across-belt offsets of every detection from every track's last center, the elapsed times, and
        the gate sizes (pixels) of each pair. Also hands the frame to the speed votes, with the cuts found here."""
        rows = np.array([(track.last.t, 0.0 if track.confirmed else _TENTATIVE)
                         for track in tracks])  # one array for the per-track values: fewer small numpy calls
        elapsed, tentative = t - rows[:, 0], rows[:, 1]
        n = len(tracks)
        # the tracks' and the detections' boxes in one array: their extents and cuts in one pass; a track's box is
        # its anchor where its last observation was questionable (see _anchor)
        boxes = [anchor[1] if (anchor := track.anchor) is not None and anchor[0] == track.last.frame else track.box
                 for track in tracks]  # fmt: skip
        both = np.concatenate([boxes, detections.boxes], dtype=np.float64)
        last = (both[:n, :2] + both[:n, 2:]) / 2
        if self._axis is not None:  # columns (see __init__): the same values as the projections, fewer operations
            a, sign = self._axis, self._step[self._axis]
            extents = both[:, 2:] - both[:, :2]
            extent_along, extent_across = extents[:, a], extents[:, 1 - a]
            centers_along, centers_across = self._centers[:, a] * sign, self._centers[:, 1 - a]
            along = centers_along[None, :] - last[:, a][:, None] * sign
            offset_across = centers_across[None, :] - last[:, 1 - a][:, None]
        else:
            width, height = both[:, 2] - both[:, 0], both[:, 3] - both[:, 1]
            (along_x, along_y), (across_x, across_y) = self._axes
            extent_along, extent_across = width * along_x + height * along_y, width * across_x + height * across_y
            delta = self._centers[None, :, :] - last[:, None, :]
            along, offset_across = delta @ self.direction, delta @ self._across
            centers_along, centers_across = self._centers @ self.direction, self._centers @ self._across
        # gate units: the gate fraction x the pair's mean extent (at least 1 px)
        reach_along = np.maximum(extent_along[:n, None] + extent_along[None, n:], 2.0) * (self.gate / 2)
        reach_across = np.maximum(extent_across[:n, None] + extent_across[None, n:], 2.0) * (self.cross_gate / 2)
        error_across = np.abs(offset_across) / reach_across
        cut = cut_by_frame(both, self.direction, self.size)
        self._votes.add(t, (centers_along, centers_across, extent_along[n:], extent_across[n:], cut[n:]))
        if cut.any():  # see cut_by_frame: the edge the frame does not cut carries the motion
            half = extent_along * 0.5
            along += (cut[:n, None] | cut[None, n:]) * (half[None, n:] - half[:n, None])
        log_area = np.log(np.maximum(extent_along * extent_across, 1.0))
        log_area[cut != 0] = np.nan  # a cut box's size is not its part's
        return _Offsets(along, elapsed, both[:n], both[n:], last, reach_along, error_across, error_across <= 1,
                        tentative, log_area)  # fmt: skip

    def _cost(self, offsets, speed: float) -> np.ndarray:
        """The distance of each detection from each track's predicted position in gate units, plus `_SHAPE` x (1 -
        IoU of the detection's box with the track's box moved there). The position alone cannot tell a part from a
        false positive lying on it (a fragment near its center, closer to the prediction than the part's jittered
        box); the overlap of the whole box can. An unconfirmed track's pairs cost `_TENTATIVE` more: where it and a
        confirmed track both reach a detection (a false positive's track on a part whose own track missed a frame),
        the confirmed one takes it. A confirmed track's pairs cost `_SIZE` x |log of the ratio of the boxes' areas|
        more (not where the frame cuts either box: its size is not the part's). Pairs outside the gate cost `_FAR`, so
        the rest (the overlap, the distance) is computed for the pairs inside only: a few per track, not tracks x
        detections."""
        error_along = np.abs(offsets.along - speed * offsets.elapsed[:, None]) / offsets.reach_along
        rows, cols = np.nonzero((error_along <= 1) & offsets.in_lane)
        cost = np.full(error_along.shape, _FAR)
        if rows.size:
            shift = (speed * offsets.elapsed[rows])[:, None] * self._direction4  # (pairs, 4): x0 y0 x1 y1
            overlap = paired_ious(offsets.track_boxes[rows] + shift, offsets.boxes[cols])
            distance = np.hypot(error_along[rows, cols], offsets.error_across[rows, cols])
            resized = np.abs(offsets.log_area[len(offsets.last) + cols] - offsets.log_area[rows])
            resized = np.where(np.isnan(resized), 0.0, resized)
            size = np.where(offsets.tentative[rows] > 0, _SIZE_TENTATIVE, _SIZE)
            cost[rows, cols] = distance + _SHAPE * (1 - overlap) + offsets.tentative[rows] + size * resized
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

    def _vote(self, tracks, detections, offsets) -> tuple[float | None, list, bool, np.ndarray | None]:
        """The speed that best explains the frame (see _plausibility; ties: the slowest). The current speed, once
        there is one, gives way only to a speed that matches strictly more pairs, and at least two (a frame of
        misses and false positives must not swap it for an absurd one). A speed that crosses the frame in fewer than
        `min_hits` frames is not proposed: no part could be confirmed at it."""
        along, elapsed = offsets.along, offsets.elapsed
        plausible = offsets.in_lane & (along >= -offsets.reach_along)
        fastest = self._fastest()
        proposed = np.round(np.clip(along / elapsed[:, None], 0, None)[plausible], 3)
        proposed = np.unique(np.concatenate([proposed, self._votes.speeds()]))  # the last frames' proposals too
        proposed = proposed[proposed <= fastest]
        support = self._votes.support(proposed)
        if len(support):  # the window's votes come first in a score: a speed with fewer can neither win nor tie
            best_supported = support == support.max()
            proposed, support = proposed[best_supported], support[best_supported]
        recent = np.array([track.misses == 0 for track in tracks])
        best, best_pairs, best_score, tied, best_cost = None, [], None, False, None
        for speed, votes in zip(proposed, support):  # only the best-supported of up to tracks x detections + window's
            cost = self._cost(offsets, speed)
            pairs = self._assign(cost)
            score = (float(votes), *self._plausibility(detections, offsets, speed, pairs, recent))
            tied = tied or (score == best_score and pairs != best_pairs)  # as good, but a different story
            if best_score is None or score > best_score:
                best, best_pairs, best_score, tied, best_cost = float(speed), pairs, score, False, cost
        return best, best_pairs, tied, best_cost

    def _fastest(self) -> float:
        """A speed that crosses the frame in fewer than `min_hits` frames is never proposed: no part could be
        confirmed at it."""
        return float(np.abs(np.array(self.size[::-1]) @ self.direction)) / self.min_hits / (self._t - self.last_t)

    def _contradicted(self) -> float | None:
        """A speed the last frames support clearly better than the current one (1.5 times its pairs and 3 more; 1
        more while the speed is young, chosen in the last 2 x WINDOW frames on little evidence; pairs weighed by how
        well they line up, see below), else None: a speed adopted on a few ambiguous frames keeps matching some pairs
        by coincidence on a dense belt, so this frame's pairs alone would never call for a new vote. Checked every
        frame for 2 x WINDOW frames after the speed was chosen, then every WINDOW frames (votes computed only when read;
        a belt that stops or starts loses its pairs and calls a vote at once anyway). The peak search runs only
        when some speed could be supported enough (`most_support`, a cheap upper bound): on a steady belt the current
        speed is the best supported, and no search is needed (the weighted support is at most the count).

        Weighed, not counted: a pair the true speed lines up is off by the detector's jitter (weight ~0.9), a pair a
        wrong speed lines up by coincidence anywhere inside the tolerance (~0.5 on average). At one part length per
        frame parts about a length apart land where the one before them was: a stopped belt lines up many pairs, and
        counted (12-20 in the window against the true speed's 21-28, held-out seed 28) it held for 30 frames and 16
        parts went uncounted. Measured on 72 seeds, see the README."""
        self._since_choice += 1
        if self.speed is None or (self._since_choice > 2 * WINDOW and self._since_choice % WINDOW):
            return None
        current = float(self._votes.support(self.speed, weighted=True)[0])
        margin = 1 if self._since_choice <= 2 * WINDOW else 3
        if self._votes.most_support() < 1.5 * current + margin:  # no speed is supported enough: skip the search
            return None
        peak, votes = self._votes.peak(self._fastest(), weighted=True)
        if peak is None:
            return None
        return peak if votes >= 1.5 * current + margin else None

    def _associate(self, detections: Detections, t: float):
        self._centers = detections.centers  # a property computed on each access: once per frame
        self._questionable = []
        tracks = self.tracks
        if not tracks or not len(detections):
            self._votes.remember(detections, t)
            return [], list(range(len(detections)))  # (else _offsets remembers them, with the cuts it finds)
        offsets = self._offsets(tracks, detections, t)
        self._t = t
        cost = self._cost(offsets, self.speed) if self.speed is not None else None
        pairs = self._assign(cost) if cost is not None else []
        recent = sum(track.misses == 0 for track in tracks)
        better = None if self._replaying else self._contradicted()
        if better is not None:  # the window contradicts the speed: take the better one if it holds in this frame
            better_cost = self._cost(offsets, better)
            better_pairs = self._assign(better_cost)
            if len(better_pairs) >= 2:
                pairs, cost, self.speed, self._since_choice = better_pairs, better_cost, better, 0
                self._choices += 1
        if not self._replaying and len(pairs) * 2 < min(recent, len(detections)):  # no speed yet, or most lost it
            voted, voted_pairs, tied, voted_cost = self._vote(tracks, detections, offsets)
            # the first speed waits while another explains the frame as well (one part missed next to one entering
            # fits a stopped belt and a moving one alike), for at most min_hits frames: then the slowest tie holds
            # (right for a periodic row below half its pitch per frame). An established speed gives way only to more
            # evidence than one pair (a missed part next to a new one is one pair at any speed).
            self._undecided = self._undecided + 1 if self.speed is None and tied else 0
            if self.speed is None and tied and self._undecided <= self.min_hits:
                voted = None
            if voted is not None and (self.speed is None or len(voted_pairs) > max(len(pairs), 1)):
                pairs, cost, self.speed, self._since_choice = voted_pairs, voted_cost, voted, 0
                self._choices += 1
        if pairs:
            rows, cols = np.array(pairs).T  # questionable: costlier than a part's own jittered detection (_anchor)
            questionable = cost[rows, cols] - offsets.tentative[rows] > _QUESTIONABLE
            if questionable.any():
                self._questionable = [tracks[i] for i in rows[questionable]]
            # the speed as the pairs measure it, the questionable ones left out unless they are the most (a false
            # positive taken behind a missed part pulled the speed of a frame with few pairs down by a quarter and
            # the part got a second track; when most are questionable, the speed is what is off: all of them)
            doubts = questionable.tolist() if 2 * questionable.sum() <= len(pairs) else [False] * len(pairs)
            along, elapsed = offsets.along, offsets.elapsed
            measured = float(statistics.median([along[i, j] / elapsed[i] for (i, j), doubt in zip(pairs, doubts)
                                                if not doubt]))  # np.median's value  # fmt: skip
            self.speed = max(0.0, (1 - self.smoothing) * self.speed + self.smoothing * measured)
        matched = {j for _, j in pairs}
        return [(tracks[i], j) for i, j in pairs], [j for j in range(len(detections)) if j not in matched]
