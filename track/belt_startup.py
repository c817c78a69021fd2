"""The belt tracker's start-up without a speed prior: no identity is reported until the first belt speed has held.

Without `speed`, the first speed is voted on the first frames' few detections, and at a part length per frame it is
ambiguous: parts about a length apart land where the one before them was, so a stopped belt explains the first frames
about as well as the moving one. Seeds 72-135 of the synthetic conveyor (benchmarks/conveyor.py, with noise), first
run after the fixes that held on seeds 0-71, showed it: the first speed was a stopped belt's alias on several
sequences (seed 79: 11 frames, seed 112: 8) before the window's votes overturned it, and every track confirmed
meanwhile chained different parts under one id: 5.7 ID switches per 100 parts at 1.0 (2.8 once the window's peak
was fixed, see SpeedVotes.peak), nearly all of them in those frames; 0 with the start-up.

So while the first speed is young (`StartUp.settled`), tracks are built but none is confirmed (nothing is counted,
judged or reported), the frames are kept (boxes and scores, no masks), and each time the speed is chosen again the
kept frames are tracked again from scratch at the new speed (`replay` below): the tracks built at the wrong
speed are dropped unseen. Once the speed has held `SETTLE` frames (or `LONGEST` frames after the first choice, when
the belt keeps changing its mind), the tracks with `min_hits` observations are confirmed at once and handed on with
their whole history, those that ended meanwhile too: the counter finds their crossings and the defect judge decides
on what they showed, as for any track confirmed late. With a `speed` prior (the belt's encoder) there is no start-up.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from cseg.track.detections import Detections
from cseg.track.tracker import Track

SETTLE = 12  # frames a chosen speed holds before the start-up ends (the window's young period: 2 x WINDOW)
LONGEST = 24  # frames after the first choice the start-up lasts at most


class StartUp:
    def __init__(self):
        self.frames: deque = deque(maxlen=LONGEST + SETTLE)  # (detections without masks, t, frame index)
        self.ended: list[Track] = []  # tracks that ended during the start-up (unconfirmed so far)
        self.since_choice = self.since_first = 0

    def record(self, detections: Detections, t: float, frame: int, ended: list[Track]) -> None:
        """One frame tracked during the start-up (its masks dropped: only boxes are tracked again)."""
        light = detections if detections.masks is None else dataclasses.replace(detections, masks=None)
        self.frames.append((light, t, frame))
        self.ended.extend(ended)

    def chosen(self) -> None:
        """A speed was chosen (first or again) in the last frame."""
        self.since_choice = 0

    def settled(self, speed: float | None) -> bool:
        """Counts the last frame; whether the start-up is over."""
        if speed is None:
            return False
        self.since_choice += 1
        self.since_first += 1
        return self.since_choice >= SETTLE or self.since_first >= LONGEST

    def confirm(self, tracks: list[Track], seen: list[Track], ended: list[Track], min_hits: int):
        """Confirm the tracks with `min_hits` observations, alive or ended during the start-up: (seen, ended) for the
        counter and the defect judge, each such track in `seen` once (its history replayed there), the ended ones in
        `ended` too."""
        seen, ended = list(seen), list(ended)
        for track in tracks + self.ended:
            if track.hits >= min_hits:
                track.confirmed = True
                if track not in seen:
                    seen.append(track)
        for track in self.ended:
            if track.confirmed and track not in ended:
                ended.append(track)
        return seen, ended


def replay(tracker, startup: StartUp, current: Detections) -> list[Track]:
    """Track the kept frames again from scratch at `tracker`'s speed, held (no vote): a fresh tracker with the same
    settings replays them (the last one with `current`, masks and all) and `tracker` takes its state. New tracks get
    new ids (the dropped ones were never reported). Returns the tracks seen in the last frame."""
    fresh = type(tracker)(**tracker._settings, speed=tracker.speed)
    fresh._replaying, fresh._holding, fresh._next_id = True, True, tracker._next_id
    frames = list(startup.frames)
    startup.ended = []
    seen = []
    for k, (detections, t, frame) in enumerate(frames):
        seen = fresh.update(current if k == len(frames) - 1 else detections, t, frame)
        startup.ended.extend(fresh.ended)
    fresh._replaying, fresh._startup, fresh._choices, fresh._since_choice = False, startup, tracker._choices, 0
    tracker.__dict__.update(fresh.__dict__)
    return seen
