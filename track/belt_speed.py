"""The belt speed as the last frames show it: a Hough vote over detections of nearby frames.

One frame's pairs can be ambiguous where several frames' are not: a part missed beside one entering fits a stopped
belt as well as a moving one, and on a dense belt a wrong speed keeps matching some pairs by coincidence, frame
after frame. Over the last `window` frames, every pair of detections one or two remembered frames apart that lies
along the belt (across offset inside the gate, not backwards) votes for the speed that would carry one onto the
other. At the true speed each part's detections vote together, frame after frame; a wrong speed collects only
coincidences. `BeltTracker` uses the votes to choose its first speed, and to replace a speed the window clearly
contradicts (see belt.py).

Cost: with 20 parts in view, about 9 frame pairs x 400 detection pairs per frame, a few numpy operations each
(the tracking + counting budget is 1 ms per frame).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from cseg.track.detections import Detections


class SpeedVotes:
    def __init__(self, direction: np.ndarray, gate: float, cross_gate: float, window: int = 6):
        self.direction, self.gate, self.cross_gate = direction, gate, cross_gate
        self.across = np.array([-direction[1], direction[0]])
        self.frames = deque(maxlen=window)  # (t, along, across, length along, width across) per remembered frame
        # the voting pairs of each remembered frame with the two before it, computed once when the frame arrives
        self._pairs = deque(maxlen=window)
        self._votes = None  # cached concatenation of _pairs: (distance along, elapsed, tolerance)

    def remember(self, detections: Detections, t: float, centers: np.ndarray | None = None) -> None:
        """One frame's detections; `centers`: their `detections.centers` where the caller has them already (a property
        computed on each access)."""
        if not len(detections):
            return
        centers = detections.centers if centers is None else centers
        boxes = np.asarray(detections.boxes, np.float64)
        sizes = np.abs(boxes[:, 2:] - boxes[:, :2])
        frame = (t, centers @ self.direction, centers @ self.across,
                 sizes @ np.abs(self.direction), sizes @ np.abs(self.across))  # fmt: skip
        # pairs with the last two remembered frames: a miss or the occluding bar in between is bridged
        self._pairs.append([self._pair(earlier, frame) for earlier in list(self.frames)[-2:]])
        self.frames.append(frame)
        self._votes = None

    def _pair(self, first, second) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """(the first frame's time, distance along, elapsed, tolerance) of the pairs of two frames that vote."""
        (t0, u0, a0, l0, w0), (t1, u1, a1, l1, w1) = first, second
        gate = self.gate * (l0[:, None] + l1[None]) / 2
        step = u1[None] - u0[:, None]
        near = (np.abs(a1[None] - a0[:, None]) <= self.cross_gate * (w0[:, None] + w1[None]) / 2) & (step >= -gate)
        return t0, step[near], np.full(int(near.sum()), t1 - t0), gate[near]

    def votes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distance along the belt, elapsed seconds, tolerance in pixels) of every voting pair of remembered
        frames."""
        if self._votes is None:  # pairs reaching back to a frame the window has dropped are left out
            first = self.frames[0][0] if self.frames else 0.0
            pairs = [pair for frame in self._pairs for t0, *pair in frame if t0 >= first]
            self._votes = tuple(np.concatenate([p[k] for p in pairs]) if pairs else np.zeros(0) for k in range(3))
        return self._votes

    def support(self, speeds) -> np.ndarray:
        """For each speed, how many pairs it explains (distance strictly within the tolerance of speed x elapsed: a
        speed halfway between two others must not collect both sets of votes)."""
        distance, elapsed, tolerance = self.votes()
        speeds = np.atleast_1d(np.asarray(speeds, np.float64))
        if not len(distance):
            return np.zeros(len(speeds), int)
        return (np.abs(distance[None] - speeds[:, None] * elapsed[None]) < tolerance[None]).sum(axis=1)

    def speeds(self) -> np.ndarray:
        """The speed each pair proposes (>= 0): candidates for a vote."""
        distance, elapsed, _ = self.votes()
        return np.round(np.clip(distance / np.maximum(elapsed, 1e-9), 0, None), 3)

    def peak(self, fastest: float) -> tuple[float | None, int]:
        """The best-supported speed up to `fastest` and its support: a histogram of the proposed speeds (bins of a
        quarter of the typical tolerance) finds the densest region, its own proposals decide (ties: the slowest)."""
        distance, elapsed, tolerance = self.votes()
        proposed = self.speeds()
        keep = proposed <= fastest
        if not keep.any():
            return None, 0
        proposed = proposed[keep]
        width = max(float(np.median(tolerance[keep] / np.maximum(elapsed[keep], 1e-9))) / 4, 1e-6)
        bins = np.floor(proposed / width).astype(np.int64)
        dense = np.convolve(np.bincount(bins), np.ones(9, int), mode="same")  # +-4 bins: about one tolerance
        best_bin = int(np.argmax(dense))
        region = proposed[np.abs(bins - best_bin) <= 4]
        # its proposals decide; 33 quantiles of them stand for all (hundreds on a full belt, each a pass over all votes)
        candidates = np.unique(np.round(np.quantile(region, np.linspace(0, 1, 33), method="nearest"), 3))
        support = self.support(candidates)
        best = int(np.argmax(support))  # first maximum: the slowest of the best
        return float(candidates[best]), int(support[best])
