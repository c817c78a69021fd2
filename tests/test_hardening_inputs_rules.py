"""Regression tests of issue 19's input-hardening items, continued from test_hardening_inputs.py: rule files and
the paths that apply a rule (Runtime.apply, Runtime.stream, cseg watch)."""

import numpy as np
import pytest

from cseg.errors import InvalidInputError

# --- rule files -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_rule(runtime):
    """A valid rule for the tiny bundle without the reasoning run (the arrays' values do not matter here)."""
    from cseg.runtime.rules import Rule, bundle_id

    features, mask = runtime._text_features("bolt")
    concept = np.zeros((1, runtime.model["num_queries"], features.shape[2]), np.float32)
    return Rule(question="bolt", answer="bolt", rule="", think="", text="", concept_tokens=concept,
                text_features=features, text_mask=mask, bundle=bundle_id(runtime.manifest))  # fmt: skip


def _rewrite(path, meta=None, **arrays):
    """Change a saved rule's JSON and/or arrays, keeping its sha256 consistent (what a hand edit does)."""
    import hashlib
    import io
    import json

    meta = meta or json.loads(path.read_text())
    if arrays:
        with np.load(path.with_suffix(".npz")) as data:
            values = {**dict(data), **arrays}
        buffer = io.BytesIO()
        np.savez(buffer, **values)
        path.with_suffix(".npz").write_bytes(buffer.getvalue())
        meta["arrays"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.write_text(json.dumps(meta))


def test_rule_save_and_load_take_the_same_path(hand_rule, tmp_path):
    from cseg.runtime.rules import Rule

    saved = hand_rule.save(tmp_path / "scratch")
    assert saved == tmp_path / "scratch.json" and Rule.load(tmp_path / "scratch").answer == "bolt"
    (tmp_path / "notes.npz").write_bytes(b"the user's own file")
    hand_rule.save(tmp_path / "notes.txt")  # used to overwrite notes.npz
    assert (tmp_path / "notes.npz").read_bytes() == b"the user's own file"
    assert Rule.load(tmp_path / "notes.txt").question == "bolt"
    for bad in (None, b"x.json", 3):
        with pytest.raises(InvalidInputError, match="rule path"):
            Rule.load(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("answer"), "'answer' is missing"),
    (lambda m: m.update(question=["a"]), "'question' is missing or not a string"),
    (lambda m: m.update(token_ids=[1, -2]), "token_ids"),
    (lambda m: m.update(token_ids="123"), "token_ids"),
    (lambda m: m.update(arrays=[]), "'arrays'"),
    (lambda m: m["arrays"].update(file="../outside.npz"), "beside the rule"),
    (lambda m: m["arrays"].update(file="/dev/zero"), "beside the rule"),  # read 8.9 GB
    (lambda m: m.update(format=True), "format"),
])  # fmt: skip
def test_rule_json_is_validated_at_load(hand_rule, tmp_path, edit, message):
    import json

    from cseg.runtime.rules import Rule

    path = hand_rule.save(tmp_path / "r.json")
    meta = json.loads(path.read_text())
    edit(meta)
    _rewrite(path, meta)
    with pytest.raises(InvalidInputError, match=message):
        Rule.load(path)


@pytest.mark.parametrize("arrays, message", [
    ({"concept_tokens": np.zeros((1, 8, 256), np.float64)}, "float64"),
    ({"text_features": np.zeros((32, 64), np.float32)}, "3 axes"),
    ({"concept_tokens": np.full((1, 8, 256), np.nan, np.float32)}, "NaN"),
    # issue 29 item 5: finite but beyond fp16 (1e30 loaded and applied, a garbage mask); named with its field
    ({"concept_tokens": np.full((1, 8, 256), 1e30, np.float32)}, r"r\.json: concept_tokens holds 1e\+30, beyond 65504"),
    ({"text_features": np.full((1, 32, 256), -7e4, np.float32)}, "text_features holds 70000, beyond 65504"),
    ({"text_mask": np.full((1, 32), 7, np.int64)}, "0/1"),
    ({"text_mask": np.ones((1, 5), np.int64)}, "disagree"),
    ({"extra": np.zeros(3)}, "expected"),
])  # fmt: skip
def test_rule_arrays_are_validated_at_load(hand_rule, tmp_path, arrays, message):
    from cseg.runtime.rules import Rule

    path = hand_rule.save(tmp_path / "r.json")
    _rewrite(path, **arrays)
    with pytest.raises(InvalidInputError, match=message):
        Rule.load(path)


def test_rule_arrays_that_are_not_regular_files_or_bombs_are_refused(hand_rule, tmp_path):
    import hashlib
    import io
    import json
    import os
    import zipfile

    from cseg.runtime.rules import MAX_ARRAYS_BYTES, Rule

    path = hand_rule.save(tmp_path / "r.json")
    arrays = path.with_suffix(".npz")
    arrays.unlink()
    os.mkfifo(arrays)  # hung the reader
    with pytest.raises(InvalidInputError, match="not a regular file"):
        Rule.load(path)
    arrays.unlink()
    arrays.symlink_to("/dev/zero")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        Rule.load(path)
    arrays.unlink()
    # a few kilobytes that declare a large member (the 3.2 MB bomb loaded as 3 GiB)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("concept_tokens", "text_features", "text_mask"):
            archive.writestr(f"{name}.npy", b"\0" * (MAX_ARRAYS_BYTES // 2))
    arrays.write_bytes(buffer.getvalue())
    meta = json.loads(path.read_text())
    meta["arrays"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="declares more than"):
        Rule.load(path)
    # an npy header that declares more elements than its data holds (np.load allocates from the header)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 10**8, 256)})
    members = {f"{k}.npy": _npy(getattr(hand_rule, k)) for k in ("concept_tokens", "text_features", "text_mask")}
    members["concept_tokens.npy"] = header.getvalue() + b"\0" * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    arrays.write_bytes(buffer.getvalue())
    meta["arrays"]["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="more than its data holds"):
        Rule.load(path)
    path.write_text("[" * 100_000)
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        Rule.load(path)


def _npy(value) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, value)
    return buffer.getvalue()


def test_rule_arrays_must_fit_the_bundles_model(runtime, hand_rule, photo):
    import dataclasses

    too_many = dataclasses.replace(hand_rule, concept_tokens=np.zeros((1, 99, hand_rule.concept_tokens.shape[2]), np.float32))
    with pytest.raises(InvalidInputError, match="this bundle's model takes"):
        runtime.apply(too_many, photo)
    bad_values = dataclasses.replace(hand_rule, text_mask=hand_rule.text_mask * 3)
    with pytest.raises(InvalidInputError, match="0/1"):
        runtime.apply(bad_values, photo)
    assert runtime.apply(hand_rule, photo).route == "rule"


# --- Runtime.stream -------------------------------------------------------------------------------------------------


def _readers() -> int:
    import threading

    return sum(t.name == "cseg-stream-reader" for t in threading.enumerate())


def _wait_for(condition, seconds=3.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_an_abandoned_stream_stops_pulling_its_endless_source(monkeypatch):
    import time

    from cseg.runtime import stream as stream_module

    monkeypatch.setattr(stream_module, "IDLE_S", 0.1)
    pulled = [0]

    def endless():
        while True:
            pulled[0] += 1
            yield pulled[0]

    held = stream_module.stream(lambda f: f, endless(), budget_ms=None, drop=None)  # an iterator: live, "oldest"
    assert next(held).error is None
    time.sleep(0.3)  # the consumer holds a result and does not come back
    before = pulled[0]
    time.sleep(0.3)
    assert pulled[0] - before <= 1  # was ~1.5M frames in 3 s at 100% CPU
    assert next(held).index > 0  # asking again resumes the reader
    held.close()
    assert _wait_for(lambda: _readers() == 0)
    dropped = stream_module.stream(lambda f: f, endless(), budget_ms=None, drop="oldest")
    next(dropped)
    del dropped  # no reference left: the reader stops at once, not at garbage collection
    assert _wait_for(lambda: _readers() == 0)


def test_a_failing_source_keeps_its_last_good_frame_with_drop_oldest():
    import time

    from cseg.runtime.stream import stream

    def unplugged():
        yield from (1, 2, 3)
        raise RuntimeError("camera unplugged")

    results = list(stream(lambda f: (time.sleep(0.05), f)[1], unplugged(), budget_ms=None, drop="oldest"))
    assert results[-1].error == "frame source failed: RuntimeError: camera unplugged"
    assert results[-2].index == 2 and results[-2].result == 3  # the newest good frame is not replaced by the error


def test_finite_sources_lose_no_frames_by_default():
    import time

    from cseg.runtime.stream import stream

    slow = lambda f: (time.sleep(0.01), f)[1]  # noqa: E731
    assert [r.index for r in stream(slow, list(range(20)), budget_ms=None, drop=None)] == list(range(20))
    assert [r.index for r in stream(slow, np.zeros((5, 2, 2, 3), np.uint8), budget_ms=None, drop=None)] == list(range(5))


@pytest.mark.parametrize("frames, kwargs, message", [
    ("frame.png", {}, "frames is a str"),
    (b"frame.png", {}, "frames is a bytes"),
    (42, {}, "iterable of frames"),
    ([], {"budget_ms": "100"}, "budget_ms"),
    ([], {"budget_ms": float("nan")}, "budget_ms"),
    ([], {"budget_ms": True}, "budget_ms"),
    ([], {"drop": "newest"}, "drop"),
])  # fmt: skip
def test_stream_arguments_are_refused_before_the_first_frame(runtime, hand_rule, frames, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        runtime.stream(frames, hand_rule, **kwargs)


def test_stream_needs_a_rule(runtime):
    with pytest.raises(InvalidInputError, match="rule must be a cseg Rule"):
        runtime.stream([], "x")


# --- item 12: bgr and cseg watch, with a rule -----------------------------------------------------------------------


def test_bgr_must_be_a_bool(runtime, hand_rule, photo):
    with pytest.raises(InvalidInputError, match="bgr must be True or False"):
        runtime.segment(photo, "bolt", bgr="yes")  # was taken as True
    with pytest.raises(InvalidInputError, match="bgr"):
        runtime.apply(hand_rule, photo, bgr="no")
    with pytest.raises(InvalidInputError, match="bgr"):
        runtime.stream([photo], hand_rule, bgr=1)
    assert runtime.apply(hand_rule, photo, bgr=np.bool_(False)).route == "rule"


def test_watch_refuses_a_source_that_delivers_no_frames(runtime, hand_rule, monkeypatch, tmp_path):
    from cseg.runtime import watch

    monkeypatch.setattr(watch, "open_source", lambda source: (iter(()), True))  # what OpenCV gave for a text file
    with pytest.raises(InvalidInputError, match="delivered no frames"):
        watch.watch(runtime, hand_rule, str(tmp_path / "notes.txt"), out=None, jsonl=str(tmp_path / "log.jsonl"),
                    budget_ms=None, drop=None, max_frames=None, every=1)  # fmt: skip
