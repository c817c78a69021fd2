"""`TrackersAdapter`: Roboflow's `trackers` (ByteTrack, OC-SORT) behind the same interface as `BeltTracker`.

`trackers` associates by IoU with a Kalman filter per track: at video frame rates that is what one wants (no belt
assumption, parts may move freely). It takes and returns `supervision.Detections`; returned rows may be reordered, so
each row carries its input index in `data`. `trackers` confirms a track itself (`minimum_consecutive_frames`) and
gives an unconfirmed one the id -1: such rows are not tracks here at all, so they are never counted. A track's
history starts at its confirmation (the earlier rows are trackers' secret), which the counter's first-seen-past proof
handles like any other late start. Installed apart (it requires the GUI build of OpenCV, which clashes with the
headless one): `pip install --no-deps trackers` plus supervision (see the README).
"""

from __future__ import annotations

import numpy as np

from cseg.errors import InvalidInputError
from cseg.track.detections import Detections
from cseg.track.tracker import Tracker

KINDS = ("bytetrack", "ocsort")


class TrackersAdapter(Tracker):
    def __init__(self, kind: str = "bytetrack", *, max_misses: int = 3, **options):
        """`options` go to trackers' ByteTrackTracker / OCSORTTracker (e.g. minimum_iou_threshold). It runs in
        fixed-rate mode (one step per frame) with its lost-track buffer set to `max_misses` frames, the same
        patience as the belt tracker's."""
        if kind not in KINDS:
            raise InvalidInputError(f"tracker kind must be one of {KINDS}, got {kind!r}")
        super().__init__(min_hits=1, max_misses=max_misses)
        try:
            from trackers import ByteTrackTracker, OCSORTTracker
        except ImportError as exc:
            raise ImportError("the trackers adapter needs Roboflow's trackers: pip install --no-deps trackers "
                              "supervision rich pydeprecate (see the README)") from exc  # fmt: skip
        options = {"lost_track_buffer": max_misses, "frame_rate": 30.0, **options}
        self.kind = kind
        self._tracker = (ByteTrackTracker if kind == "bytetrack" else OCSORTTracker)(**options)
        self._by_id: dict[int, object] = {}  # trackers' id -> our Track
        self._pending: dict[int, int] = {}  # detection index -> trackers' id, for tracks started this frame

    def _associate(self, detections: Detections, t: float):
        import supervision as sv

        n = len(detections)
        rows = sv.Detections(xyxy=detections.boxes.astype(np.float32).reshape(n, 4), confidence=detections.scores,
                             class_id=np.zeros(n, dtype=int), data={"index": np.arange(n)})  # fmt: skip
        result = self._tracker.update(rows)
        matches, self._pending = [], {}
        for index, tracker_id in zip(result.data.get("index", np.zeros(0, int)), result.tracker_id):
            if tracker_id < 0:  # unconfirmed by trackers: not a part
                continue
            track = self._by_id.get(int(tracker_id))
            if track is not None and track in self.tracks:
                matches.append((track, int(index)))
            else:
                self._pending[int(index)] = int(tracker_id)
        return matches, sorted(self._pending)

    def _start(self, detections, j, t, lookback, track_id=None):
        track = super()._start(detections, j, t, lookback, track_id)
        self._by_id[self._pending[j]] = track
        return track

    def update(self, detections: Detections, t: float, frame: int | None = None):
        seen = super().update(detections, t, frame)
        if self.ended:
            gone = {id(track) for track in self.ended}
            self._by_id = {key: track for key, track in self._by_id.items() if id(track) not in gone}
        return seen
