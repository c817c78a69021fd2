"""The belt tracker's shortcuts (issue 30's 1 ms per frame) give what the long way gives."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cseg.track import BeltTracker, Detections
from cseg.track.belt import _FAR, _UNMATCHED
from cseg.track.belt_speed import SpeedVotes


def padded_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """The priced assignment the long way: one "unmatched" column per track and row per detection."""
    tracks, detections = cost.shape
    padded = np.full((tracks + detections, detections + tracks), _FAR)
    padded[:tracks, :detections] = cost
    padded[:tracks, detections:][np.diag_indices(tracks)] = _UNMATCHED
    padded[tracks:, :detections][np.diag_indices(detections)] = _UNMATCHED
    padded[tracks:, detections:] = 0
    rows, cols = linear_sum_assignment(padded)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if i < tracks and j < detections and cost[i, j] < _FAR]


def test_the_assignment_without_padding_is_the_padded_one():
    rng = np.random.default_rng(0)
    tracker = BeltTracker("right")
    shapes = [(0, 3), (3, 0), (1, 1), (5, 5), (8, 3), (3, 8), (20, 25)]
    for tracks, detections in shapes * 30:
        cost = rng.uniform(0, 2.2, (tracks, detections))  # pairs worth taking (< 1.5) and not
        cost[rng.random(cost.shape) < rng.uniform(0, 0.95)] = _FAR  # outside the gate: from dense to sparse
        assert tracker._assign(cost) == padded_assignment(cost)


def test_most_support_bounds_the_support_of_every_speed():
    """The peak search is skipped when most_support() says no speed can beat the current one: it must be an upper
    bound of support(), and a tight one (else the skip would never happen)."""
    rng = np.random.default_rng(1)
    votes = SpeedVotes(np.array([1.0, 0.0]), gate=0.5, cross_gate=0.5)
    assert votes.most_support() == 0
    for i in range(6):
        x, y = rng.uniform(0, 640, 25), rng.choice([60.0, 160.0], 25)  # two lanes
        boxes = np.stack([x - 30, y, x + 30, y + 40], 1)
        votes.remember(Detections(boxes.astype(np.float32), np.ones(25, np.float32), (240, 640)), float(i))
        distance, elapsed, tolerance = votes.votes()
        # the support is the most just inside an interval's end: check there and at every proposal
        speeds = np.concatenate([votes.speeds(), (distance - tolerance * (1 - 1e-6)) / elapsed,
                                 (distance + tolerance * (1 - 1e-6)) / elapsed])  # fmt: skip
        best = int(votes.support(speeds).max()) if len(speeds) else 0
        assert best <= votes.most_support() <= best + 1
