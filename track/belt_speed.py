"""The belt speed as the last frames show it: a Hough vote over detections of nearby frames.

One frame's pairs can be ambiguous where several frames' are not: a part missed beside one entering fits a stopped
belt as well as a moving one, and on a dense belt a wrong speed keeps matching some pairs by coincidence, frame
after frame. Over the last `window` frames, every pair of detections one or two remembered frames apart that lies
along the belt (across offset inside the gate, not backwards) votes for the speed that would carry one onto the
other. At the true speed each part's detections vote together, frame after frame; a wrong speed collects only
coincidences. `BeltTracker` uses the votes to choose its first speed, and to replace a speed the window clearly
contradicts (see belt.py).

Cost: with 20 parts in view, 9 frame pairs x 400 detection pairs, a few numpy operations each (the tracking +
counting budget is 1 ms per frame). They are computed only when the votes are read (every frame for a while after the
speed was chosen, then every `window` frames: see BeltTracker._contradicted), all frame pairs in one pass over the
window's frames padded to the fullest one (a few numpy operations in all, not a few per frame pair).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from cseg.track.detections import Detections


def cut_by_frame(boxes: np.ndarray, direction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per box, int8: +1 where the frame cuts it on the side parts enter (upstream), -1 on the side they leave
    (downstream), else 0; `size`: the frame's (h, w).

    A part entering the view is detected as its visible piece: the box's downstream edge moves with the belt, its
    upstream edge stays on the frame's border, so its center moves at about half the belt's speed (a part leaving, the
    other way round). Measured on the synthetic conveyor, such pairs pulled the first speed estimates low and the
    stopped belt's support up, and matched a part's track onto the next part. So a pair with a cut box measures its
    motion on the edge the frame does not cut (the leading edge entering, the trailing edge leaving): the center's
    offset + or - half the change of the box's length. A box edge within 2 px + 0.5% of the frame of the border counts
    as cut (a detector's box of a cut part ends on the border; the synthetic one jitters by 3% of the part); an uncut
    box taken as cut costs nothing (both its edges move with the belt). A pair's side: its two boxes' sides OR-ed
    (-1 | 1 cannot happen: a part does not enter and leave between two frames)."""
    cut = None
    for axis, (step, extent) in enumerate(zip(direction.tolist(), size[::-1])):  # x then y; only the axes it moves on
        if abs(step) > 1e-9:  # bool -> int8 views: -1, 0, 1 without a conversion (the 1 ms per frame budget)
            near = 2.0 + 0.005 * extent
            low, high = (boxes[:, axis] <= near).view(np.int8), (boxes[:, axis + 2] >= extent - near).view(np.int8)
            side = low - high if step > 0 else high - low
            cut = side if cut is None else cut | side
    return cut


class SpeedVotes:
    def __init__(self, direction: np.ndarray, gate: float, cross_gate: float, window: int = 6):
        self.direction, self.gate, self.cross_gate = direction, gate, cross_gate
        self.across = np.array([-direction[1], direction[0]])
        self.frames = deque(maxlen=window)  # (t, [along, across, length along, width across, cut]) per remembered frame
        self._votes = None  # cached votes of the window's pairs: (distance along, elapsed, tolerance)

    def remember(self, detections: Detections, t: float) -> None:
        """One frame's detections."""
        if not len(detections):
            return
        centers = detections.centers
        boxes = np.asarray(detections.boxes, np.float64)
        sizes = boxes[:, 2:] - boxes[:, :2]
        self.add(t, (centers @ self.direction, centers @ self.across, sizes @ np.abs(self.direction),
                     sizes @ np.abs(self.across), cut_by_frame(boxes, self.direction, detections.size)))  # fmt: skip

    def add(self, t: float, values: tuple) -> None:
        """One frame's detections as `remember` computes them: (center along the belt, across, extent along, across,
        cut_by_frame), one array each (the belt tracker has them already: it adds them itself; stacked only when the
        votes are read)."""
        if len(values[0]):
            self.frames.append((t, values))
            self._votes = None

    def votes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distance along the belt, elapsed seconds, tolerance in pixels) of every voting pair: each remembered frame
        with the two remembered before it (a miss or the occluding bar in between is bridged), pairs reaching back to a
        frame the window has dropped left out. Their order is irrelevant: they are counted, sorted or binned."""
        if self._votes is None:
            self._votes = self._pairs()
        return self._votes

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frames = len(self.frames)
        pairs = [(k - gap, k) for gap in (1, 2) for k in range(gap, frames)]  # (earlier, later) remembered frames
        if not pairs:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        times = np.array([t for t, _ in self.frames])
        grid = np.full((frames, 5, max(len(values[0]) for _, values in self.frames)), np.nan)
        for k, (_, values) in enumerate(self.frames):  # NaN padding compares false: never a vote
            for row, value in enumerate(values):
                grid[k, row, : len(value)] = value
        grid = grid.transpose(1, 0, 2)  # (along, across, length, width, cut) x frames x detections
        earlier, later = np.array(pairs).T
        (u0, a0, l0, w0, c0), (u1, a1, l1, w1, c1) = grid[:, earlier, :, None], grid[:, later, None, :]
        gate = self.gate * (l0 + l1) / 2  # (frame pairs, detections of the earlier, detections of the later)
        # a box the frame cuts moves by its uncut edge (see cut_by_frame): +half the growth entering, - leaving
        step = u1 - u0 + np.sign(c0 + c1) * (l1 - l0) / 2
        near = (np.abs(a1 - a0) <= self.cross_gate * (w0 + w1) / 2) & (step >= -gate)
        elapsed = np.broadcast_to((times[later] - times[earlier])[:, None, None], near.shape)
        return step[near], elapsed[near], gate[near]

    def support(self, speeds, weighted: bool = False) -> np.ndarray:
        """For each speed, how many pairs it explains (distance strictly within the tolerance of speed x elapsed: a
        speed halfway between two others must not collect both sets of votes). `weighted`: each pair counts 1 - its
        error / its tolerance instead of 1 (a triangular kernel: the true speed's pairs are off by jitter, a wrong
        speed's coincidences anywhere inside the tolerance; see BeltTracker._contradicted)."""
        distance, elapsed, tolerance = self.votes()
        speeds = np.atleast_1d(np.asarray(speeds, np.float64))
        if not len(distance):
            return np.zeros(len(speeds), float if weighted else int)
        error = np.abs(distance[None] - speeds[:, None] * elapsed[None]) / tolerance[None]
        return np.maximum(1 - error, 0).sum(axis=1) if weighted else (error < 1).sum(axis=1)

    def most_support(self) -> int:
        """At least the support of any speed (exactly the most, but for rounding): pair k supports the speeds in the
        interval ((distance - tolerance) / elapsed, (distance + tolerance) / elapsed), and the most intervals that
        overlap at one point is found by sorting their ends. Much cheaper than `peak`, which only needs to run when
        this says a speed could beat the current one."""
        distance, elapsed, tolerance = self.votes()
        if not len(distance):
            return 0
        slack = tolerance + 1e-9 * (np.abs(distance) + tolerance)  # widened and closed: an upper bound despite rounding
        low, high = np.sort((distance - slack) / elapsed), np.sort((distance + slack) / elapsed)
        # at each interval's start, the intervals started (low <= s) minus those already over (high < s)
        return int(np.max(np.arange(1, len(low) + 1) - np.searchsorted(high, low, "left")))

    def speeds(self) -> np.ndarray:
        """The speed each pair proposes (>= 0): candidates for a vote."""
        distance, elapsed, _ = self.votes()
        return np.round(np.clip(distance / np.maximum(elapsed, 1e-9), 0, None), 3)

    def peak(self, fastest: float, weighted: bool = False) -> tuple[float | None, float]:
        """The best-supported speed up to `fastest` and its support (`weighted`: see `support`): a histogram of the
        proposed speeds (bins of a quarter of the typical tolerance; weighted, smoothed with the same triangle) finds
        the densest region, its own proposals decide (ties: the slowest). Proposals are binned as they are, negative
        ones too (down to minus a tolerance): clipped at 0 as before, every pair a stopped belt's coincidences put
        anywhere within its tolerance backwards stacked into the one bin at 0, which then outweighed the true speed's
        pairs spread over their own tolerance (seeds 72-135 at one part length per frame: 5.7 -> 2.8 ID switches per
        100 parts)."""
        distance, elapsed, tolerance = self.votes()
        elapsed = np.maximum(elapsed, 1e-9)
        proposed, reach = distance / elapsed, tolerance / elapsed
        keep = (proposed <= fastest) & (proposed > -reach)
        if not keep.any():
            return None, 0
        proposed = proposed[keep]
        width = max(float(np.median(reach[keep])) / 4, 1e-6)
        bins = np.floor(proposed / width).astype(np.int64)
        bins -= bins.min()
        # +-4 bins: about one tolerance; weighted, a triangle (see `support`); at least 9 bins, or "same" misaligns
        kernel = 5 - np.abs(np.arange(-4, 5)) if weighted else np.ones(9, int)
        dense = np.convolve(np.bincount(bins, minlength=9), kernel, mode="same")
        best_bin = int(np.argmax(dense))
        region = np.clip(np.round(proposed[np.abs(bins - best_bin) <= 4], 3), 0, None)
        # its proposals decide; 33 quantiles of them stand for all (hundreds on a full belt, each a pass over all votes)
        candidates = np.unique(np.round(np.quantile(region, np.linspace(0, 1, 33), method="nearest"), 3))
        support = self.support(candidates, weighted)
        best = int(np.argmax(support))  # first maximum: the slowest of the best
        return float(candidates[best]), support[best].item()
