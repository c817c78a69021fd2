"""cseg.track: tracker, counter, defect judge and monitor on the synthetic conveyor and on hand-made frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cseg.errors import InvalidInputError
from cseg.track import (BeltTracker, DefectRule, Detections, Event, Line, LineMonitor, TrackersAdapter, Zone,
                        defects_by_overlap)  # fmt: skip
from cseg.track.synthetic import Conveyor, ConveyorSpec, replay, to_segmentation

NOISE = dict(miss=0.1, false_positives=0.5, box_jitter=0.03, score_noise=0.05, defect_flip=0.05, occluder_frames=2)
SIZE = (240, 640)


def run(spec: ConveyorSpec, tracker=None, defects=DefectRule(2, 3, near=60)):
    conveyor = Conveyor(spec)
    monitor = LineMonitor(conveyor.line, tracker=tracker or BeltTracker("right"), defects=defects)
    return conveyor, replay(conveyor, monitor)


def boxes_at(*centers, length=60.0, width=40.0):
    """Detections of parts centered at (x, y) points, in a 640x240 frame."""
    boxes = [[x - length / 2, y - width / 2, x + length / 2, y + width / 2] for x, y in centers]
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(centers), 0.9, np.float32), SIZE)


# --- counting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_belt_counts_exact_with_noise(ratio, seed):
    """Misses, false positives, box/score jitter, an occluding bar, touching pairs: every part counted once."""
    conveyor, result = run(ConveyorSpec(ratio=ratio, parts=30, seed=seed, **NOISE))
    assert len(conveyor.crossing_ids()) == 30
    assert result.count_errors(conveyor) == (0, 0)
    assert result.events[-1].seq == len(result.events)  # seq numbers the events without gaps


def test_bytetrack_holds_where_boxes_overlap_and_fails_beyond():
    """The measured boundary: IoU association (trackers' ByteTrack) counts exactly while consecutive boxes overlap
    (0.5 part length per frame) and loses most parts at one length per frame, where the belt model is exact."""
    pytest.importorskip("trackers")
    conveyor, result = run(ConveyorSpec(ratio=0.5, parts=30, seed=0, **NOISE), TrackersAdapter("bytetrack"))
    assert result.count_errors(conveyor) == (0, 0)
    conveyor, result = run(ConveyorSpec(ratio=1.0, parts=30, seed=0, **NOISE), TrackersAdapter("bytetrack"))
    missed, _ = result.count_errors(conveyor)
    assert missed >= 15
    conveyor, result = run(ConveyorSpec(ratio=1.0, parts=30, seed=0, **NOISE))
    assert result.count_errors(conveyor) == (0, 0)


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_defect_events_exact_without_noise(ratio):
    conveyor, result = run(ConveyorSpec(ratio=ratio, parts=30, seed=3, defective=0.3))
    assert conveyor.defective_ids, "the sequence must hold defective parts"
    assert result.count_errors(conveyor) == (0, 0)
    assert result.defect_errors(conveyor) == (0, 0)
    assert sum(e.kind == "defect" for e in result.events) == len(conveyor.defective_ids)


def test_part_first_seen_past_the_line_is_counted_once():
    """Line 30 px after the entry edge at 1.2 lengths per frame: most parts are first detected already past it;
    their tracks prove the crossing by back-projection and each counts once."""
    spec = ConveyorSpec(ratio=1.2, parts=20, seed=5, line_at=0.05)
    conveyor, result = run(spec, defects=None)
    proven = [e for e in result.events if e.kind == "count"]
    assert result.count_errors(conveyor) == (0, 0) and len(proven) == 20


def _track(track_id: int, frames: dict, lookback_t: float) -> "Track":
    """A confirmed track moving right at 20 px/s with the given {frame: center x} observations (y 120, 60 x 40)."""
    from collections import deque

    from cseg.track.tracker import Observation, Track

    history = deque(Observation(f, float(f), np.array([x - 30, 100, x + 30, 140], np.float32), 0.9, None, -1, (x, 120.0))
                    for f, x in frames.items())  # fmt: skip
    first = min(frames)
    return Track(track_id, first, float(first), lookback_t, hits=len(frames), confirmed=True, box=history[-1].box,
                 velocity=np.array([20.0, 0.0]), history=history)  # fmt: skip


@pytest.mark.parametrize("new_x, counted", [(346.0, False), (400.0, True)])
def test_a_proven_crossing_under_a_counted_track_is_not_counted_again(new_x, counted):
    """Replayed from held-out seed 44 (0.25 part lengths per frame): a counted part's track takes a false positive
    lying on the part the frame the part's own (jittered) detection looks worse; that detection starts a track first
    seen past the line, whose back-projection proves a crossing: the part counted twice. A new track whose first box
    lies on a counted track's box of that frame is the same part. A part touching it (60 px further) still counts."""
    from cseg.track.counter import LineCounter

    counter = LineCounter(Line(320, 0, 320, 240, "right"))
    old = _track(1, {8: 300.0, 9: 320.0, 10: 340.0}, lookback_t=4.0)
    assert [c.kind for c in counter.update([old])] == ["count"]
    new = _track(2, {10: new_x, 11: new_x + 20, 12: new_x + 40}, lookback_t=4.0)  # first seen past the line
    assert counter.proves_crossing(new)
    assert [c.kind for c in counter.update([new])] == (["count"] if counted else [])
    assert counter.count == (2 if counted else 1)


def test_part_already_past_at_the_first_frame_is_not_counted():
    """Nobody saw it cross: no lookback frame, no proof, no count (and the parts that do cross are counted)."""
    monitor = LineMonitor(Line(320, 0, 320, 240, "right"))
    events = []
    for i in range(8):
        events += monitor.update(boxes_at((400 + 20 * i, 60), (200 + 20 * i, 180)), float(i))
    events += monitor.finish()  # (the belt tracker's start-up confirms its tracks when the stream ends this soon)
    counted = [e for e in events if e.kind == "count"]
    assert len(counted) == 1 and (counted[0].box[1] + counted[0].box[3]) / 2 == pytest.approx(180)  # the lower part
    assert monitor.counts["parts"] == 1


def test_flicker_on_the_line_counts_once():
    """A part that stops on the line with its box flickering +-3 px across it, then moves on: one count, no reverse
    (the flicker stays inside the 5 px hysteresis band)."""
    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=20.0), hysteresis=5)
    xs = [260, 280, 300] + [317, 323] * 6 + [340, 360, 380]
    events = []
    for i, x in enumerate(xs):
        events += monitor.update(boxes_at((x, 120)), float(i))
    assert [e.kind for e in events] == ["count"]


def test_unconfirmed_tracks_are_never_counted():
    """A part detected in only 2 frames (min_hits 3) crossing the line, and one-frame false positives: no count."""
    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=60.0, min_hits=3))
    frames = [boxes_at((290, 120)), boxes_at((350, 120)), boxes_at((100, 60)), boxes_at((500, 200)), boxes_at()]
    events = [e for i, d in enumerate(frames) for e in monitor.update(d, float(i))]
    assert events == [] and monitor.counts["parts"] == 0


def test_track_ids_per_instance_of_the_last_frame():
    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=40.0))
    for i in range(3):
        monitor.update(boxes_at((200 + 40 * i, 60), (100 + 40 * i, 180)), float(i))
    assert monitor.track_ids().tolist() == [1, 2]
    monitor.update(boxes_at((100, 120), (220, 180), (320, 60)), 3.0)  # a new part first, then the two known ones
    assert monitor.track_ids().tolist() == [-1, 2, 1]


def test_a_hidden_part_coasts_with_the_belt_and_keeps_its_id():
    """A slow belt (6 px per frame, parts 60 px long): a part hidden for 6 frames (more than max_misses 3) moved 36 px
    meanwhile, less than its length: its track coasts and picks it up again. Without coasting (coast=0) the track ends
    and the part comes back under a second id: the ID switch of the sweep's slow cells."""

    def ids(coast: float) -> set[int]:
        tracker = BeltTracker("right", speed=6.0, coast=coast)  # the speed known: no start-up (belt_startup.py)
        seen = set()
        for i in range(20):
            tracker.update(boxes_at() if 8 <= i < 14 else boxes_at((100 + 6 * i, 120)), float(i))
            seen |= {track.id for track in tracker.tracks if track.misses == 0}
        return seen

    assert ids(1.0) == {1}
    assert ids(0.0) == {1, 2}



def test_a_false_positive_on_a_part_does_not_take_its_track():
    """Replayed from the sweep (0.1 part lengths per frame, seed 0, frames 547-548): a confirmed part, a false
    positive on its upper half that starts a new track, then the part beside a second false positive on its lower
    left. A plain assignment must pair both tracks: the part's track with the second false positive and the new
    track with the part (both inside their gates, cheaper than the one good pair plus a pair outside any gate): an
    ID switch. Priced leftovers and the box overlap in the cost keep the part on its track."""
    def frame(*boxes):
        return Detections(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32), SIZE)

    tracker = BeltTracker("right", speed=5.6)
    for i in range(5):  # the part, 56 x 40, moving 5.6 px per frame: confirmed
        x = 6.3 + 5.6 * (i - 4)
        tracker.update(frame([x, 102.1, x + 56.4, 142.1]), float(i))
    tracker.update(frame([12.0, 102.5, 68.3, 142.0], [17.8, 97.1, 54.6, 121.7]), 5.0)  # + a fragment: a new track
    part = next(track for track in tracker.tracks if track.confirmed)
    tracker.update(frame([17.5, 103.3, 77.0, 140.4], [9.0, 121.2, 46.4, 148.5]), 6.0)
    assert part.misses == 0 and part.last.box[0] == pytest.approx(17.5)


def test_the_speed_vote_sees_through_a_touching_pair():
    """Over several frames the belt's true speed lines up every part's detections; a stopped belt only the
    coincidences of a touching pair (the next part lands where the last one was). SpeedVotes.peak finds the belt."""
    from cseg.track.belt_speed import SpeedVotes

    votes = SpeedVotes(np.array([1.0, 0.0]), gate=0.5, cross_gate=0.5)
    for i in range(6):  # 60 px parts moving 60 px per frame; parts 0 and 1 touch (pitch 60), then gaps of 90-150
        starts = np.array([0.0, -60.0, -150.0, -300.0, -420.0]) + 60 * i
        votes.remember(boxes_at(*[(s + 30, 120) for s in starts if 0 <= s + 30 <= 640]), float(i))
    speed, support = votes.peak(fastest=200.0)
    assert abs(speed - 60) < 5 and support > votes.support(0.0)[0]

def test_reverse_is_reported_once_and_does_not_recount():
    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=40.0, gate=1.5))
    xs = [240, 280, 330, 370, 330, 280, 330, 370]
    kinds = [e.kind for i, x in enumerate(xs) for e in monitor.update(boxes_at((x, 120)), float(i))]
    assert kinds == ["count", "reverse"] and monitor.counts["parts"] == 1


def test_zone_counts_each_track_once():
    monitor = LineMonitor(zone=Zone([(300, 0), (400, 0), (400, 240), (300, 240)]), tracker=BeltTracker(speed=40.0))
    kinds = [e.kind for i in range(12) for e in monitor.update(boxes_at((200 + 40 * i, 120)), float(i))]
    assert kinds == ["count"] and monitor.counter.occupancy == 0


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, words", [
    (lambda: Line(10, 10, 10, 10), "zero length"),
    (lambda: Line(0, 0, 0, 100, direction="sideways"), "not a direction"),
    (lambda: Line(0, 0, 0, 100, direction=(0, 0)), "not a direction"),
    (lambda: Line(0, 0, 0, 100, direction=(float("nan"), 1)), "not a direction"),
    (lambda: Line(0, 0, 0, 100, direction="down"), "parallel"),
    (lambda: Line.parse("1,2,3"), "x1,y1,x2,y2"),
    (lambda: Zone([(0, 0), (1, 1)]), "at least 3"),
    (lambda: BeltTracker("diagonal"), "not a direction"),
    (lambda: BeltTracker(coast=-1), "coast must be"),
    (lambda: BeltTracker(max_misses=5, max_coast=4), "max_coast must be"),
    (lambda: DefectRule(k=4, n=3), "k must be <= n"),
    (lambda: LineMonitor(), "exactly one of line"),
    (lambda: LineMonitor(Line(0, 0, 0, 9), station="a/b"), "station"),
])  # fmt: skip
def test_bad_setup_is_refused_by_name(make, words):
    with pytest.raises(InvalidInputError, match=words):
        make()


def test_bad_frames_are_reported_and_the_loop_goes_on():
    from cseg.runtime import FrameResult

    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=40.0))
    assert monitor.update(boxes_at((200, 120)), 0.0) == []
    assert monitor.update(boxes_at(), 1.0) == []  # no instances: fine, no events
    back = monitor.update(boxes_at((280, 120)), 0.5)
    assert [e.kind for e in back] == ["error"] and "went back" in back[0].error
    other = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), (480, 640))
    resized = monitor.update(other, 2.0)
    assert [e.kind for e in resized] == ["error"] and "640x480" in resized[0].error
    failed = monitor.update(FrameResult(7, None, "ValueError: unreadable", 1.0, 0), 3.0)
    assert failed[0].kind == "error" and failed[0].frame == 7 and failed[0].error == "ValueError: unreadable"
    kinds = [e.kind for i, x in enumerate([280, 320, 360, 400]) for e in monitor.update(boxes_at((x, 120)), 4.0 + i)]
    assert kinds == ["count"]
    assert monitor.counts == {"parts": 1, "reversed": 0, "defects": 0, "frames": 9, "errors": 3}
    with pytest.raises(InvalidInputError, match="takes a Segmentation"):
        monitor.update(np.zeros((240, 640, 3), np.uint8), 10.0)


# --- plumbing -------------------------------------------------------------------------------------------------------


def test_segmentations_and_frame_results_feed_the_monitor():
    """Masks and all: a Segmentation per frame (as Runtime.apply returns), defects from a second rule's overlap."""
    from cseg.runtime import FrameResult

    conveyor = Conveyor(ConveyorSpec(ratio=0.75, parts=6, seed=2, width=320, height=96, part_length=40,
                                     part_width=30, masks=True, defective=0.5))  # fmt: skip
    monitor = LineMonitor(conveyor.line, defects=DefectRule(1, 2), rule_id="r1", rule_version="v1", source="cam0",
                          defect_of=lambda seg: np.zeros(len(seg.instances), bool))
    events = []
    for frame in conveyor:
        item = FrameResult(frame.index, to_segmentation(frame), None, 1.0, 0)
        events += monitor.update(item, frame.t)
    counts = [e for e in events if e.kind == "count"]
    assert len(counts) == len(conveyor.crossing_ids()) == 6
    assert all(e.rule_id == "r1" and e.rule_version == "v1" and e.source == "cam0" for e in events)
    assert all(len(e.box) == 4 and 0 < e.score <= 1 for e in counts)
    assert not any(e.kind == "defect" for e in events)  # defect_of marks nothing here


def test_defects_by_overlap_marks_the_covered_part():
    conveyor = Conveyor(ConveyorSpec(ratio=0.5, parts=3, seed=1, width=320, height=96, part_length=40, part_width=30,
                                     masks=True))  # fmt: skip
    frame = next(f for f in conveyor if len(f.detections) >= 2)
    parts = to_segmentation(frame)
    scratch = frame.detections.select(np.array([1]))
    defects = to_segmentation(type(frame)(0, 0.0, scratch, frame.truth_ids, frame.truth_boxes))
    assert defects_by_overlap(parts, defects).tolist() == [False, True] + [False] * (len(frame.detections) - 2)


def test_a_failing_sink_never_stops_the_monitor():
    class Broken:
        def send(self, event, counts):
            raise OSError("network down")

    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=40.0), sinks=[Broken()])
    kinds = [e.kind for i in range(8) for e in monitor.update(boxes_at((200 + 40 * i, 120)), float(i))]
    assert kinds == ["count"] and monitor.sink_failures == 1


def test_event_json_round_trip():
    event = Event("defect", 3, "st", 12, 4.5, track_id=7, box=(1.0, 2.0, 3.0, 4.0), score=0.9, count=1, rule_id="r")
    again = Event.from_json(event.to_json())
    assert again == event and json.loads(event.to_json())["kind"] == "defect"


def test_jsonl_sink_writes_every_event(tmp_path):
    from cseg.track.sinks import open_sink

    path = tmp_path / "events.jsonl"
    sink = open_sink(str(path))
    for i in range(50):
        sink.send(Event("count", i + 1, "st", i, float(i), track_id=i, count=i + 1), {"parts": i + 1})
    stats = sink.close()
    lines = [Event.from_json(line) for line in path.read_text().splitlines()]
    assert [e.seq for e in lines] == list(range(1, 51)) and stats["dropped"] == 0 and stats["sent"] == 50


@pytest.mark.parametrize("url, words", [
    ("mqtt://", "names no host"),
    ("mqtt://broker:1883", "names no topic"),
    ("mqtt://broker:99999/t", "port"),
    ("mqtt://broker:abc/t", "port"),
    ("mqtt://broker/a/#", "wildcards"),
    ("http://broker/t", "scheme"),
    ("opc.tcp://:4840", "names no host"),
    ("", "not a URL"),
])  # fmt: skip
def test_malformed_sink_urls_are_named(url, words):
    from cseg.track.sinks import open_sink

    with pytest.raises(InvalidInputError, match=words) as error:
        open_sink(url)
    assert repr(url) in str(error.value) or url == ""


def test_draw_tracks_marks_the_line_and_the_confirmed_ids():
    from PIL import Image

    from cseg.track.draw import CONFIRMED_COLOR, LINE_COLOR, draw_tracks

    monitor = LineMonitor(Line(320, 0, 320, 240, "right"), tracker=BeltTracker("right", speed=40.0))
    for i in range(3):
        monitor.update(boxes_at((200 + 40 * i, 120)), float(i))
    picture = np.asarray(draw_tracks(Image.new("RGB", (640, 240)), monitor.tracker.tracks, monitor.counter.line,
                                     monitor.counts))  # fmt: skip
    assert tuple(picture[5, 320]) == LINE_COLOR
    assert tuple(picture[100, 250]) == CONFIRMED_COLOR  # the top edge of the part's box at x 250..310, y 100


def test_end_to_end_smoke_through_a_tiny_bundle(runtime, photo):
    """The plumbing: Runtime.stream's FrameResults (random-init models: whatever instances they give) into a monitor;
    the bad frame becomes an error event, the rule's identity rides on every event."""
    from cseg.track import rule_identity

    rule = runtime.induce([(photo, [[20, 20, 120, 120]])], "the object", image=photo, max_new_tokens=4)
    rule_id, version = rule_identity(rule)
    monitor = LineMonitor(Line(photo.shape[1] / 2, 0, photo.shape[1] / 2, photo.shape[0], "right"), rule_id=rule_id,
                          rule_version=version, source="test")  # fmt: skip
    events = []
    for item in runtime.stream([photo, None, photo, photo], rule, drop="none"):
        events += monitor.update(item, float(item.index))
    assert [e.frame for e in events if e.kind == "error"] == [1]
    assert all(e.rule_id == rule_id and e.rule_version == version for e in events)
    assert monitor.counts["frames"] == 4 and monitor.counts["errors"] == 1


def test_track_imports_no_torch_and_no_optional_packages():
    """cseg.track runs beside the torch-free runtime: the trackers, paho and asyncua imports wait until used."""
    import subprocess
    import sys

    code = ("import sys, cseg.track, cseg.track.sinks, cseg.track.synthetic, cseg.track.draw; "
            "print(' '.join(sorted(sys.modules)))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = set(run.stdout.split())
    assert not loaded & {"torch", "transformers", "trackers", "supervision", "paho", "asyncua", "cv2"}
