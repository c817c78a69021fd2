"""cseg.track: from per-frame instances to line events (issue 30).

    from cseg.track import Line, LineMonitor, BeltTracker, DefectRule
    monitor = LineMonitor(Line(320, 0, 320, 480, direction="right"), defects=DefectRule(k=2, n=3, near=40))
    for item in runtime.stream(frames, rule):        # FrameResult per frame
        for event in monitor.update(item, t=time.monotonic()):
            print(event.to_json())
"""

from cseg.track.adapter import TrackersAdapter
from cseg.track.belt import BeltTracker
from cseg.track.counter import LineCounter, ZoneCounter
from cseg.track.defects import DefectJudge, DefectRule
from cseg.track.detections import Detections, defects_by_overlap
from cseg.track.events import Event, rule_identity
from cseg.track.geometry import Line, Zone
from cseg.track.monitor import LineMonitor
from cseg.track.tracker import Track, Tracker

__all__ = ["BeltTracker", "DefectJudge", "DefectRule", "Detections", "Event", "Line", "LineCounter", "LineMonitor",
           "Track", "Tracker", "TrackersAdapter", "Zone", "ZoneCounter", "defects_by_overlap",
           "rule_identity"]  # fmt: skip
