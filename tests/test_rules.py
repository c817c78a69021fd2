"""Inspection loops: induce a rule once, apply it to frames with SAM 3 alone, stream with drop policies."""

import threading
import time

import numpy as np
import pytest

from cseg.errors import BundleError, InvalidInputError
from cseg.runtime import Rule, Runtime
from cseg.runtime.stream import stream


@pytest.fixture(scope="module")
def demos():
    from skimage import data

    return [(data.coffee(), [[120, 30, 420, 300]])]


@pytest.fixture(scope="module")
def rule(runtime, demos, photo):
    return runtime.induce(demos, "the cup", image=photo, max_new_tokens=10)


def test_saved_rule_gives_the_full_path_result(runtime, rule, demos, photo, tmp_path):
    path = rule.save(tmp_path / "cup")
    assert path.suffix == ".json" and path.with_suffix(".npz").is_file()
    loaded = Rule.load(path)
    assert np.array_equal(loaded.concept_tokens, rule.concept_tokens) and loaded.token_ids == rule.token_ids
    applied = runtime.apply(loaded, photo)
    full = runtime.segment(photo, "the cup", demos, route="full", max_new_tokens=10)
    assert applied.route == "rule" and applied.answer == full.answer and applied.token_ids == full.token_ids
    assert np.array_equal(applied.mask, full.mask) and abs(applied.presence - full.presence) < 1e-6
    assert "sam3_text" not in applied.timings and "vlm_decode" not in applied.timings  # SAM 3 image + decoder only


def test_rules_are_bound_to_their_sam3_weights(rule, tiny_alt_bundle, photo):
    other = Runtime.open(tiny_alt_bundle, verify=False)
    with pytest.raises(BundleError, match="induced for SAM 3 weights"):
        other.apply(rule, photo)
    with pytest.raises(BundleError, match="induced for SAM 3 weights"):
        other.stream([photo], rule)


def test_tampered_or_incomplete_rule_files_are_refused(rule, tmp_path):
    path = rule.save(tmp_path / "r.json")
    arrays = path.with_suffix(".npz")
    arrays.write_bytes(arrays.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InvalidInputError, match="sha256"):
        Rule.load(path)
    arrays.unlink()
    with pytest.raises(InvalidInputError, match="does not exist"):
        Rule.load(path)
    path.write_text("{")
    with pytest.raises(InvalidInputError, match="JSON"):
        Rule.load(path)


def test_induce_needs_demonstrations(runtime, photo):
    with pytest.raises(InvalidInputError, match="at least one"):
        runtime.induce([], "cup", image=photo)


def test_a_bad_frame_yields_an_error_and_the_stream_goes_on(runtime, rule, photo, tmp_path):
    frames = [photo, None, str(tmp_path / "missing.png"), np.zeros((4, 4, 3), np.float32), photo]
    results = list(runtime.stream(frames, rule, drop="none"))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert "InvalidInputError" in results[1].error and results[4].result.mask.shape == photo.shape[:2]


def test_opencv_captures_are_read_as_bgr(runtime, rule, photo, tmp_path):
    import cv2  # a test dependency (pyproject [test])
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (photo.shape[1], photo.shape[0]))
    for _ in range(3):
        writer.write(photo[:, :, ::-1].copy())
    writer.release()
    results = list(runtime.stream(cv2.VideoCapture(path), rule, drop="none"))
    assert len(results) == 3 and all(r.error is None for r in results)


def _camera(count: int, interval_s: float):
    for i in range(count):
        time.sleep(interval_s)
        yield i


def test_drop_oldest_holds_the_budget_under_a_fast_source():
    """A 330 fps source and 30 ms of work per frame: dropping keeps results live, not dropping builds a backlog."""

    def slow(frame):
        time.sleep(0.03)
        return frame

    kept = list(stream(slow, _camera(40, 0.003), budget_ms=100, drop="oldest"))
    assert len(kept) < 20 and max(r.latency_ms for r in kept) < 100
    assert len(kept) + sum(r.dropped_before for r in kept) == 40 and kept[-1].index == 39  # the newest survives
    everything = list(stream(slow, _camera(40, 0.003), budget_ms=100, drop="none"))
    assert [r.index for r in everything] == list(range(40))
    assert everything[-1].latency_ms > 200 and everything[-1].over_budget  # a backlog of up to BACKLOG frames


def test_drop_none_bounds_the_backlog_of_a_fast_source():
    """A source that yields instantly is read only as fast as frames are processed (no unbounded buffering)."""
    from cseg.runtime.stream import BACKLOG

    produced = []

    def source():
        for i in range(30):
            produced.append(i)
            yield i

    results = stream(lambda frame: (time.sleep(0.01), frame)[1], source(), budget_ms=None, drop="none")
    first = next(results)
    time.sleep(0.2)  # the reader has had time to run ahead, but may not
    assert first.index == 0 and len(produced) <= BACKLOG + 3
    assert [r.index for r in results] == list(range(1, 30))


def test_stream_options_are_checked(runtime, rule):
    with pytest.raises(InvalidInputError, match="drop"):
        runtime.stream([], rule, drop="newest")
    with pytest.raises(InvalidInputError, match="budget_ms"):
        runtime.stream([], rule, budget_ms=0)


def test_one_runtime_serves_several_threads_correctly(runtime, photo):
    prompts = ["astronaut", "helmet", "flag", "glove"]
    expected = {p: runtime.segment(photo, p, route="shortcut").mask for p in prompts}
    got, errors = {}, []

    def work(prompt):
        try:
            got[prompt] = runtime.segment(photo, prompt, route="shortcut").mask
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(np.array_equal(got[p], expected[p]) for p in prompts)


def test_cli_induce_then_watch_a_folder(tiny_bundle, tmp_path, photo, capsys):
    import json

    from PIL import Image

    from cseg.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(photo, 40 * i, axis=1)).save(frames / f"{i:03d}.png")
    (frames / "004.png").write_text("corrupt")
    rule = tmp_path / "rule.json"
    assert main(["induce", "--bundle", str(tiny_bundle), "--demo", "sample:coffee", "--boxes", "120,30,420,300",
                 "--max-new-tokens", "4", "--out", str(rule), "the cup"]) == 0  # fmt: skip
    assert rule.is_file() and "cseg watch" in capsys.readouterr().out
    lines = tmp_path / "log.jsonl"
    assert main(["watch", "--bundle", str(tiny_bundle), "--rule", str(rule), str(frames), "--out",
                 str(tmp_path / "overlays"), "--jsonl", str(lines), "--drop", "none"]) == 0  # fmt: skip
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and "error" in records[3]
    assert all(r["route"] == "rule" for r in records[:3])
    assert len(list((tmp_path / "overlays").glob("frame_*.png"))) == 3
    assert "fps" in capsys.readouterr().err
