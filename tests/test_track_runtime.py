"""Runtime.track and `cseg watch --track` (issue 30 item 3): the stream loop plus identities and events.

The tiny bundle's models are random-init, so one test runs the real model for the plumbing (bad frames, timestamps,
sinks, summary) and the others put the synthetic conveyor's instances in place of the model's (Runtime.apply /
apply_many patched) so that counts, track ids and defect events have a known truth."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cseg.errors import InvalidInputError
from cseg.track import DefectRule, Event, Line, LineMonitor, rule_identity
from cseg.track.synthetic import Conveyor, ConveyorSpec, SyntheticFrame, to_segmentation
from test_track_sinks import Subscriber, broker, wait_for  # noqa: F401 - broker is the mosquitto fixture

SPEC = dict(ratio=0.5, parts=6, seed=2, width=320, height=96, part_length=40, part_width=30, masks=True)


def make_rule(runtime, fill: float = 0.0):
    """A valid rule for the tiny bundle without the reasoning run (its arrays' values do not matter here)."""
    from cseg.runtime.rules import Rule, bundle_id

    features, mask = runtime._text_features("part")
    concept = np.full((1, runtime.model["num_queries"], features.shape[2]), fill, np.float32)
    return Rule(question="part", answer="part", rule="", think="", text="", concept_tokens=concept,
                text_features=features, text_mask=mask, bundle=bundle_id(runtime.manifest))  # fmt: skip


def frame_index(frame) -> int:
    """The conveyor frame a fake frame stands for: an int, or a file named by its index."""
    if frame is None or (isinstance(frame, str) and not Path(frame).stem.isdigit()):
        raise InvalidInputError("not a frame")
    return int(frame) if isinstance(frame, int) else int(Path(frame).stem)


def conveyor_apply(conveyor):
    def apply(self, rule, frame, *, bgr=False):
        index = frame_index(frame)
        if index >= len(conveyor):
            raise InvalidInputError(f"frame {frame} cannot be read")
        return to_segmentation(conveyor.frame(index))

    return apply


def defect_segmentation(frame: SyntheticFrame):
    """What a defect rule finds on the frame: the defective parts' instances."""
    keep = np.asarray(frame.detections.defective, bool)
    found = frame.detections.select(keep)
    return to_segmentation(SyntheticFrame(frame.index, frame.t, found, frame.truth_ids, frame.truth_boxes))


def test_runtime_track_plumbing_on_the_tiny_bundle(runtime, photo, tmp_path):
    """The real model (whatever instances it gives): a bad frame and a timestamp that stands still are error events,
    the loop goes on; ids per instance; the rule's identity on every event; every event in the sink; finish at the
    end; the summary counts frames, errors, events and the sink's deliveries."""
    from cseg.track.sinks.jsonl import JsonlSink

    rule = make_rule(runtime)
    height, width = photo.shape[:2]
    sink = JsonlSink(tmp_path / "events.jsonl")
    monitor = LineMonitor(Line(width / 2, 0, width / 2, height, "right"), sinks=[sink], source="test")
    run = runtime.track([photo, None, photo, photo], rule, monitor, times=[0.0, 1.0, 2.0, 2.0])
    frames = list(run)
    assert [f.result.index for f in frames] == [0, 1, 2, 3] and [f.t for f in frames] == [0.0, 1.0, 2.0, 2.0]
    errors = [e for f in frames for e in f.events if e.kind == "error"]
    assert [e.frame for e in errors] == [1, 3] and "does not come after" in errors[1].error
    for f in frames:
        instances = 0 if f.result.result is None else len(f.result.result.instances)
        assert f.track_ids.shape == (instances,)
    assert (frames[3].track_ids == -1).all()  # not tracked: each instance -1, none missing
    assert run.finished and monitor.rule_id == rule_identity(rule)[0]
    events = [e for f in frames for e in f.events] + run.final_events
    assert all(e.rule_id == monitor.rule_id and e.source == "test" for e in events)
    summary = run.summary()
    assert summary["frames"] == 4 and summary["errors"] == 2 and summary["events"]["error"] == 2
    assert summary["sinks"][0]["sent"] == len(events) and summary["sinks"][0]["dropped"] == 0
    sink.close()
    written = [Event.from_json(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e.seq for e in written] == [e.seq for e in events] == list(range(1, len(events) + 1))


def test_runtime_track_refuses_a_bad_set_up(runtime):
    rule = make_rule(runtime)
    line = Line(10, 0, 10, 10, "right")
    with pytest.raises(InvalidInputError, match="needs monitor= .* or line="):
        runtime.track([], rule)
    with pytest.raises(InvalidInputError, match="not both"):
        runtime.track([], rule, LineMonitor(line), line=line)
    with pytest.raises(InvalidInputError, match="times must be"):
        runtime.track([], rule, line=line, times={0: 0.0})
    with pytest.raises(InvalidInputError, match="needs a monitor with defects="):
        runtime.track([], rule, line=line, defect_rule=rule)
    with pytest.raises(InvalidInputError, match="min_overlap"):
        runtime.track([], rule, LineMonitor(line, defects=DefectRule()), defect_rule=rule, min_overlap=0)


def test_runtime_track_counts_ids_and_one_defect_event_per_part(runtime, monkeypatch):
    """Known instances (the noise-free conveyor) through Runtime.track with a defect rule: every crossing part counted
    once, each track id stands for one part, exactly one defect event per defective part, and the ids fill
    to_supervision's tracker_id."""
    conveyor = Conveyor(ConveyorSpec(**SPEC, defective=0.5))
    apply = conveyor_apply(conveyor)
    calls = []

    def apply_many(self, rules, frame, *, bgr=False):
        calls.append(len(rules))
        return [apply(self, rules[0], frame), defect_segmentation(conveyor.frame(frame_index(frame)))]

    monkeypatch.setattr(type(runtime), "apply", apply)
    monkeypatch.setattr(type(runtime), "apply_many", apply_many)
    rule = make_rule(runtime)
    monitor = LineMonitor(conveyor.line, defects=DefectRule(2, 3))
    run = runtime.track(list(range(len(conveyor))), rule, monitor, defect_rule=rule, times=conveyor.times.tolist())
    parts_of = defaultdict(set)
    events = []
    for tracked in run:
        origin = conveyor.frame(tracked.result.index).detections.origin
        for track_id, part in zip(tracked.track_ids, origin):
            if track_id >= 0:
                parts_of[int(track_id)].add(int(part))
        events += tracked.events
    events += run.final_events
    assert set(calls) == {2} and all(len(parts) == 1 for parts in parts_of.values())
    part = {track_id: parts.pop() for track_id, parts in parts_of.items()}
    assert sorted(part[e.track_id] for e in events if e.kind == "count") == sorted(conveyor.crossing_ids())
    defects = [part[e.track_id] for e in events if e.kind == "defect"]
    assert len(defects) == len(set(defects)) and set(defects) == conveyor.defective_ids & set(part.values())
    assert defects and run.summary()["defects"] == len(defects)
    tracked = next(iter(runtime.track([len(conveyor) // 2], rule, line=conveyor.line, times=[0.0])))
    detections = tracked.result.result.to_supervision(tracker_ids=tracked.track_ids)
    assert detections.tracker_id.tolist() == tracked.track_ids.tolist()
    with pytest.raises(InvalidInputError, match="tracker_ids must be"):
        tracked.result.result.to_supervision(tracker_ids=[1] * (len(tracked.track_ids) + 1))


def test_remote_track_runs_the_local_loop(runtime, monkeypatch):
    """RemoteRuntime.track is Runtime.track's loop with the frames applied remotely: given the same per-frame results
    (the conveyor's known instances in place of both the server's and the local model's), the same events, track ids
    and defect verdicts; the defect rule goes as a second request per frame (tests/test_serve.py checks the wire)."""
    from cseg.serve.client import RemoteRuntime

    conveyor = Conveyor(ConveyorSpec(**SPEC, defective=0.5))
    apply = conveyor_apply(conveyor)
    sent = []

    def remote_apply(self, rule, frame, *, bgr=False):
        sent.append(rule)
        if rule == "defects":
            return defect_segmentation(conveyor.frame(frame_index(frame)))
        return apply(self, rule, frame)

    def apply_many(self, rules, frame, *, bgr=False):
        return [apply(self, rules[0], frame), defect_segmentation(conveyor.frame(frame_index(frame)))]

    monkeypatch.setattr(type(runtime), "apply", apply)
    monkeypatch.setattr(type(runtime), "apply_many", apply_many)
    monkeypatch.setattr(RemoteRuntime, "apply", remote_apply)
    rule, frames = make_rule(runtime), [*range(len(conveyor)), None]  # None: a bad frame, an error event

    def events(rt, part_rule, defect_rule):
        monitor = LineMonitor(conveyor.line, defects=DefectRule(2, 3), rule_id="parts", rule_version="1")
        run = rt.track(frames, part_rule, monitor, defect_rule=defect_rule, times=[*conveyor.times.tolist(), 99.0])
        tracked = list(run)
        plain = [{k: v for k, v in e.to_dict().items() if k != "wall_time"} for t in tracked for e in t.events]
        return plain + [e.to_dict() | {"wall_time": None} for e in run.final_events], [t.track_ids for t in tracked]

    remote_events, remote_ids = events(RemoteRuntime("127.0.0.1:1"), "parts", "defects")
    local_events, local_ids = events(runtime, rule, rule)
    assert [e["kind"] for e in remote_events].count("count") > 0 and any(e["kind"] == "defect" for e in remote_events)
    assert any(e["kind"] == "error" and e["frame"] == len(conveyor) for e in remote_events)
    assert [{**e, "wall_time": None} for e in remote_events] == [{**e, "wall_time": None} for e in local_events]
    assert all(np.array_equal(a, b) for a, b in zip(remote_ids, local_ids)) and len(remote_ids) == len(frames)
    assert (sent.count("parts"), sent.count("defects")) == (len(conveyor) + 1, len(conveyor))  # two per good frame
    with pytest.raises(InvalidInputError, match="RemoteRule or the id"):
        RemoteRuntime("127.0.0.1:1").track([], rule, line=conveyor.line)  # a local Rule is not the server's


def conveyor_folder(tmp_path, conveyor) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    blank = Image.new("RGB", (conveyor.spec.width, conveyor.spec.height))
    for index in range(len(conveyor)):
        blank.save(folder / f"{index:06d}.png")
    (folder / f"{len(conveyor):06d}.png").write_text("corrupt")  # the last frame cannot be read
    return folder


def test_cli_watch_track_to_a_file_and_mosquitto(tiny_bundle, runtime, broker, tmp_path, monkeypatch,  # noqa: F811
                                                 capsys):  # fmt: skip
    """cseg watch --track end to end: events to a JSON-lines file and to a mosquitto broker (each once at a paho
    subscriber), per-frame records with track ids, overlays, and a summary line with the counts and the deliveries."""
    from cseg.cli import main
    from cseg.runtime import Runtime

    conveyor = Conveyor(ConveyorSpec(**SPEC))
    monkeypatch.setattr(Runtime, "apply", conveyor_apply(conveyor))
    rule_path = make_rule(runtime).save(tmp_path / "rule.json")
    folder = conveyor_folder(tmp_path, conveyor)
    subscriber = Subscriber(broker.port, "plant/line1/st")
    try:
        wait_for(subscriber.subscribed.is_set, 10, "the subscription")
        line = conveyor.line
        argv = ["watch", "--bundle", str(tiny_bundle), "--rule", str(rule_path), str(folder), "--drop", "none",
                "--track", "--line", f"{line.x1},{line.y1},{line.x2},{line.y2}", "--direction", "right",
                "--station", "st", "--events", str(tmp_path / "events.jsonl"),
                "--events", f"mqtt://127.0.0.1:{broker.port}/plant/line1", "--jsonl", str(tmp_path / "log.jsonl"),
                "--out", str(tmp_path / "overlays"), "--every", "4"]  # fmt: skip
        assert main(argv) == 0
        events = [Event.from_json(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
        wait_for(lambda: len(subscriber.events) >= len(events), 10, "every event at the subscriber")
        assert sorted(subscriber.events) == [e.seq for e in events]
    finally:
        subscriber.close()
    counts = [e for e in events if e.kind == "count"]
    assert len(counts) == len(conveyor.crossing_ids()) == 6 and len({e.track_id for e in counts}) == 6
    assert [e.frame for e in events if e.kind == "error"] == [len(conveyor)]
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == len(conveyor) + 1 and all("track_ids" in r and "events" in r for r in records)
    assert any(i > 0 for r in records for i in r["track_ids"])
    assert len(list((tmp_path / "overlays").glob("frame_*.png"))) == len(range(0, len(conveyor), 4))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("parts 6, defects 0, reversed 0") and err.count(f"sent {len(events)}, dropped 0") == 2


@pytest.mark.parametrize("flags, message", [
    (["--line", "1,2,3,4"], "--line needs --track"),
    (["--events", "e.jsonl", "--fps", "2"], "--events, --fps need --track"),
    (["--track"], "--track needs --line"),
    (["--track", "--line", "5,5,5,5"], "zero length"),
    (["--track", "--line", "1,2,3"], "--line must be x1,y1,x2,y2"),
    (["--track", "--line", "5,0,5,9", "--direction", "sideways"], "'sideways' is not a direction"),
    (["--track", "--line", "0,5,9,5", "--direction", "right"], "parallel to the line"),
    (["--track", "--line", "5,0,5,9", "--events", "mqtt://host:1883"], "names no topic"),
    (["--track", "--line", "5,0,5,9", "--events", "mqtt://host:99999/t"], "port is not a number"),
    (["--track", "--line", "5,0,5,9", "--events", "ftp://host/x"], "scheme 'ftp'"),
    (["--track", "--line", "5,0,5,9", "--events", "a.jsonl", "--events", "a.jsonl"], "the same sink twice"),
    (["--track", "--line", "5,0,5,9", "--tracker", "sort"], "--tracker 'sort'"),
    (["--track", "--line", "5,0,5,9", "--fps", "0"], "--fps must be a positive"),
    (["--track", "--line", "5,0,5,9", "--belt-speed", "-3"], "speed must be None or a belt speed >= 0"),
    (["--track", "--line", "5,0,5,9", "--belt-speed", "nan"], "speed must be None or a belt speed >= 0"),
    (["--track", "--line", "5,0,5,9", "--belt-speed", "30", "--tracker", "bytetrack"], "--belt-speed is for"),
    (["--belt-speed", "30"], "--belt-speed needs --track"),
    (["--track", "--line", "5,0,5,9", "--defect-near", "4"], "--defect-near needs --defect-rule"),
    (["--track", "--line", "5,0,5,9", "--defect-rule", "d.json", "--defect-votes", "3/2"], "k=3 of n=2"),
    (["--track", "--line", "5,0,5,9", "--defect-rule", "d.json", "--defect-votes", "2"], "--defect-votes must be"),
    (["--track", "--line", "5,0,5,9", "--station", "a/b"], "station must be"),
])  # fmt: skip
def test_cli_watch_track_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    """Checked before the bundle is opened (it does not exist here): exit 2 and one line naming the problem."""
    from cseg.cli import main

    argv = ["watch", "--bundle", str(tmp_path / "no-bundle"), "--rule", "r.json", str(tmp_path), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_watch_track_refuses_an_events_file_that_is_a_folder(tmp_path, capsys):
    from cseg.cli import main

    argv = ["watch", "--bundle", "b", "--rule", "r.json", str(tmp_path), "--track", "--line", "5,0,5,9", "--events",
            str(tmp_path)]  # fmt: skip
    assert main(argv) == 2 and "--events" in capsys.readouterr().err


def test_apply_many_equals_apply_per_rule(runtime, photo):
    """One image encoding for several rules gives what one apply per rule gives (the defect rule's path)."""
    rules = [make_rule(runtime), make_rule(runtime, fill=0.5)]
    for many, rule in zip(runtime.apply_many(rules, photo), rules):
        alone = runtime.apply(rule, photo)
        assert np.array_equal(many.mask, alone.mask) and np.array_equal(many.instances.masks, alone.instances.masks)
        assert np.allclose(many.instances.scores, alone.instances.scores) and many.presence == alone.presence
    first, second = runtime.apply_many(rules, photo)
    assert first.presence != second.presence  # the rules differ: each result is its own rule's


def test_cli_watch_track_an_opcua_port_taken_is_one_line(tiny_bundle, runtime, tmp_path, capsys):
    """A sink that cannot start stops the run before the first frame: one line (asyncua's own traceback silenced)."""
    import socket

    from cseg.cli import main

    rule_path = make_rule(runtime).save(tmp_path / "rule.json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"opc.tcp://127.0.0.1:{taken.getsockname()[1]}/cseg"
        argv = ["watch", "--bundle", str(tiny_bundle), "--rule", str(rule_path), str(tmp_path), "--track", "--line",
                "5,0,5,9", "--events", str(tmp_path / "events.jsonl"), "--events", url]  # fmt: skip
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not start" in err[0] and "address already in use" in err[0], err


def test_cli_watch_track_with_a_defect_rule(tiny_bundle, runtime, tmp_path, monkeypatch, capsys):
    """--defect-rule: both rules on each frame (apply_many), one defect event per defective part, in the summary."""
    from cseg.cli import main
    from cseg.runtime import Runtime

    conveyor = Conveyor(ConveyorSpec(**SPEC, defective=0.5))
    apply = conveyor_apply(conveyor)

    def apply_many(self, rules, frame, *, bgr=False):
        return [apply(self, rules[0], frame), defect_segmentation(conveyor.frame(frame_index(frame)))]

    monkeypatch.setattr(Runtime, "apply_many", apply_many)
    rule_path = make_rule(runtime).save(tmp_path / "rule.json")
    line = conveyor.line
    argv = ["watch", "--bundle", str(tiny_bundle), "--rule", str(rule_path), str(conveyor_folder(tmp_path, conveyor)),
            "--track", "--line", f"{line.x1},{line.y1},{line.x2},{line.y2}", "--defect-rule", str(rule_path),
            "--defect-votes", "2/3", "--events", str(tmp_path / "events.jsonl"), "--jsonl", str(tmp_path / "log")]  # fmt: skip
    assert main(argv) == 0
    events = [Event.from_json(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    defects = [e.track_id for e in events if e.kind == "defect"]
    assert len(defects) == len(set(defects)) == len(conveyor.defective_ids) > 0
    assert f"defects {len(defects)}," in capsys.readouterr().err


@pytest.mark.parametrize("flags, speed, starting", [([], None, True), (["--belt-speed", "30"], 30.0, False)])
def test_cli_belt_speed_is_the_trackers_prior(flags, speed, starting):
    """--belt-speed (an encoder's px/s) is the belt tracker's speed: no start-up (track/belt_startup.py)."""
    import argparse

    from cseg.cli.track_args import TrackArgs

    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="cam")
    TrackArgs().add_parser_args(parser)
    setup = TrackArgs().parse(parser.parse_args(["--track", "--line", "5,0,5,9", *flags]))
    tracker = setup.monitor.tracker
    assert tracker.speed == speed and (tracker._startup is not None) == starting
