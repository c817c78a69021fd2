"""`cseg serve` (Triton through PyTriton) and RemoteRuntime, with real components on loopback.

The server runs in the serving environment (.venv-serve: PyTriton needs numpy<2), started once per module as a
subprocess on free loopback ports with the tiny bundle; the client runs here (this venv's numpy 2). Every remote
answer is compared with the local Runtime's on the same bundle: PyTriton with numpy 2 answers with *empty* tensors, so
"it answered" proves nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cseg.errors import InvalidInputError
from serving import NEEDS_SERVE_ENV, ROOT, Server, free_ports, rules, same  # noqa: F401 - rules: a fixture

pytestmark = NEEDS_SERVE_ENV
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the test extra) is not installed")

from cseg.serve import contract  # noqa: E402
from cseg.serve.client import RemoteRuntime  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_bundle, rules, tmp_path_factory):
    server = Server(tiny_bundle, rules[0], tmp_path_factory.mktemp("serve") / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def remote(server):
    with RemoteRuntime(server.url, timeout_s=60) as rt:
        yield rt


def test_segment_equals_the_local_runtime(remote, runtime, photo):
    frame = photo[:200, :300]
    remote_many = remote.segment_many(frame, ["astronaut", "the flag"], route="shortcut")
    local_many = runtime.segment_many(frame, ["astronaut", "the flag"], route="shortcut")
    assert len(remote_many) == 2
    for got, want in zip(remote_many, local_many):
        assert got.mask.size > 0 and len(got.instances) == len(want.instances)
        same(got, want)
    full = remote.segment(frame, "where is the helmet?", route="full", max_new_tokens=8)
    same(full, runtime.segment(frame, "where is the helmet?", route="full", max_new_tokens=8))
    bgr = remote.segment(np.ascontiguousarray(frame[..., ::-1]), "astronaut", route="shortcut", bgr=True)
    same(bgr, local_many[0])


def test_apply_equals_the_local_runtime_and_carries_the_rule_version(remote, runtime, rules, photo):
    got = remote.apply("cup", photo)
    same(got, runtime.apply(rules[1], photo))
    assert got.route == "rule" and len(got.rule_version) == 16
    streamed = list(remote.stream([photo, photo[:1]], "cup"))  # as Runtime.stream: a bad frame is an error result
    same(streamed[0].result, got)
    assert streamed[1].result is None and "between 2 and" in streamed[1].error


def test_induce_keeps_the_rule_for_apply_and_a_new_induction_is_a_new_version(server, remote, runtime, rules, photo):
    from skimage import data

    demos = [(data.coffee(), [[120, 30, 420, 300]])]
    got = remote.induce(demos, "the cup", image=photo, max_new_tokens=10, rule_id="cup-remote")
    want = runtime.induce(demos, "the cup", image=photo, max_new_tokens=10)
    assert got.id == "cup-remote" and len(got.version) == 16 and (rules[0] / "cup-remote.json").is_file()
    assert (got.rule.answer, got.rule.token_ids) == (want.answer, want.token_ids)
    np.testing.assert_allclose(got.rule.concept_tokens, want.concept_tokens, atol=1e-5)
    applied = remote.apply(got, photo)  # the server keeps it: apply by the RemoteRule (or its id)
    assert applied.rule_version == got.version
    same(applied, runtime.apply(want, photo))
    same(runtime.apply(got.rule, photo), applied)  # the rule sent back is the rule: it applies locally the same
    again = remote.induce([(data.coffee(), [[120, 30, 420, 300], [10, 10, 60, 60]])], "the mug", image=photo,
                          max_new_tokens=6, rule_id="cup-remote")  # fmt: skip
    assert again.version != got.version and remote.apply("cup-remote", photo).rule_version == again.version
    named = remote.induce([(data.coffee(), None)], "the cup", max_new_tokens=4)  # no box, no target, no id
    from cseg.track import rule_identity

    assert named.id == rule_identity(named.rule)[0] and remote.apply(named.id, photo).route == "rule"


def test_induce_bad_input_is_the_cseg_error(remote, photo):
    with pytest.raises(InvalidInputError, match="rule_id must be"):
        remote.induce([(photo, None)], "the cup", rule_id="../escape")  # refused here, before the wire
    with pytest.raises(InvalidInputError, match="at most 4"):
        remote.induce([(photo, None)] * 5, "the cup")
    image = np.ascontiguousarray(photo[:32, :32])
    raw = {"image": image, "question": np.array([b"the cup"], object),
           "demo_images": np.array([image.tobytes()], object), "demo_sizes": np.array([[32, 31]], np.int32),
           "demo_boxes": np.zeros((1, 4), np.float32), "demo_box_index": np.array([-1], np.int32),
           "options": np.array([b"{}"], object)}  # fmt: skip

    def send(**changed):
        from cseg.serve.client import decode_rule

        sent = {**raw, **changed}
        return decode_rule(remote._send(contract.INDUCE, sent, contract.INDUCE_OUTPUTS, batched=False).as_numpy)

    with pytest.raises(InvalidInputError, match=r"demo_images\[0\] has 3072 bytes, not the 32x31x3"):
        send()
    with pytest.raises(InvalidInputError, match="rule_id must be"):
        send(demo_sizes=np.array([[32, 32]], np.int32), options=np.array([b'{"rule_id": "a/b"}'], object))
    with pytest.raises(InvalidInputError, match="must name a demonstration"):
        send(demo_sizes=np.array([[32, 32]], np.int32), demo_box_index=np.array([3], np.int32))
    with pytest.raises(InvalidInputError, match="options must be a JSON object"):
        send(demo_sizes=np.array([[32, 32]], np.int32), options=np.array([b'{"route": "full"}'], object))
    assert remote.apply("cup", photo).route == "rule"  # still serving


def test_remote_track_equals_the_local_track(remote, runtime, rules, photo):
    """The same loop (cseg.runtime.track_loop) on remote frames: the same events, track ids and verdicts as local.
    The tiny random model finds no instance above its threshold on these frames, so this checks the real wire's frame
    flow, error events and ids; tests/test_track_runtime.py runs the remote loop on known instances."""
    from cseg.track import Line, LineMonitor

    height, width = photo.shape[:2]
    frames = [np.ascontiguousarray(np.roll(photo, 60 * k, axis=1)) for k in range(3)] + [photo[:1]]

    def tracked(rt, rule):
        monitor = LineMonitor(Line(width / 2, 0, width / 2, height, "right"), rule_id="cup", rule_version="1",
                              source="test")  # fmt: skip
        run = rt.track(frames, rule, monitor, times=[0.0, 0.5, 1.0, 1.5])
        return list(run), run.final_events

    def plain(events):
        return [{k: v for k, v in e.to_dict().items() if k != "wall_time"} for e in events]

    remote_frames, remote_final = tracked(remote, "cup")
    local_frames, local_final = tracked(runtime, rules[1])
    assert len(remote_frames) == len(local_frames) == 4
    for got, want in zip(remote_frames, local_frames):
        assert (got.result.index, got.t) == (want.result.index, want.t)
        assert (got.result.error is None) == (want.result.error is None)
        assert np.array_equal(got.track_ids, want.track_ids)
        assert plain(got.events) == plain(want.events)
    assert "between 2 and" in remote_frames[3].events[0].error  # the bad frame: an error event, the loop went on
    assert plain(remote_final) == plain(local_final)
    run = remote.track(frames[:1], "cup", line=Line(width / 2, 0, width / 2, height, "right"))
    list(run)
    assert run.monitor.rule_id == "cup" and len(run.monitor.rule_version) == 16  # the server's id and version


def test_fan_in_all_answered_correctly_and_batched(server, runtime, rules, photo):
    frames = [np.ascontiguousarray(np.roll(photo, 37 * k, axis=1)) for k in range(4)]
    expected = [runtime.apply(rules[1], frame) for frame in frames]
    before = _batches(server.url)
    failures, results = [], {}

    def camera(index: int) -> None:
        try:
            with RemoteRuntime(server.url, timeout_s=60) as rt:  # a client per camera: its own channel
                for round_ in range(2):
                    results[index, round_] = rt.apply("cup", frames[index % len(frames)])
        except Exception as exc:  # reported below with the camera's index
            failures.append((index, repr(exc)))

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and len(results) == 12
    for (index, _), result in results.items():
        same(result, expected[index % len(frames)])
    grown = {size: count - before.get(size, 0) for size, count in _batches(server.url).items()}
    assert sum(size * count for size, count in grown.items()) == 12  # every request executed once, none lost
    assert any(size > 1 and count > 0 for size, count in grown.items()), f"no batch formed: {grown}"
    raw = grpcclient.InferenceServerClient(server.url)
    try:  # the batches above were served by the default instances (and their requests by the request pool)
        groups = raw.get_model_config(contract.APPLY).config.instance_group
    finally:
        raw.close()
    from cseg.serve.server import INSTANCES

    assert sum(group.count for group in groups) == INSTANCES > 1


def _batches(url: str) -> dict[int, int]:
    """{batch size: executions} of cseg_apply, from Triton's statistics."""
    with RemoteRuntime(url) as rt:
        stats = rt.statistics(contract.APPLY)
    model = stats["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in model.get("batch_stats", [])}


def test_bad_input_gets_the_cseg_error_and_the_server_keeps_serving(server, remote, photo):
    with pytest.raises(InvalidInputError, match="unknown rule 'nope'"):
        remote.apply("nope", photo)
    with pytest.raises(InvalidInputError, match="prompt is empty"):
        remote.segment(photo, "   ")  # refused here, before the wire
    with pytest.raises(InvalidInputError, match="dtype float32"):
        remote.segment(photo.astype(np.float32), "astronaut")
    # the same mistakes sent as raw requests: the server's own checks, mapped back to the cseg exception
    image = np.ascontiguousarray(photo[:64, :64])
    options = np.array([b"{}"], dtype=object)
    with pytest.raises(InvalidInputError, match="prompt is empty"):
        remote._infer(contract.SEGMENT, {"image": image, "prompt": np.array([b" "], dtype=object), "options": options})
    with pytest.raises(InvalidInputError, match="more than the 8000 allowed"):
        huge = np.array([b"x" * 9000], dtype=object)
        remote._infer(contract.SEGMENT, {"image": image, "prompt": huge, "options": options})
    with pytest.raises(InvalidInputError, match="route must be one of"):
        bad = np.array([b'{"route": "fast"}'], dtype=object)
        remote._infer(contract.SEGMENT, {"image": image, "prompt": np.array([b"cat"], dtype=object), "options": bad})
    with pytest.raises(InvalidInputError, match="image"):
        remote._infer(contract.APPLY, {"image": np.zeros((1, 1, 3), np.uint8), "rule_id": np.array([b"cup"], object)})
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        wrong = grpcclient.InferInput("image", [1, 8, 8, 3], "FP32")  # Triton's own dtype check
        wrong.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
        rule_id = grpcclient.InferInput("rule_id", [1, 1], "BYTES")
        rule_id.set_data_from_numpy(np.array([[b"cup"]], dtype=object))
        with pytest.raises(Exception, match="(?i)data-type|datatype|dtype"):
            raw.infer(contract.APPLY, [wrong, rule_id])
    finally:
        raw.close()
    assert remote.apply("cup", photo).route == "rule"  # still serving


def test_frames_go_by_reference_one_region_per_thread_freed_at_close(server, runtime, rules, photo):
    big = np.ascontiguousarray(np.tile(photo, (3, 4, 1))[:1080, :1920])  # 1080p: the region grows
    rt = RemoteRuntime(server.url, timeout_s=60)
    same(rt.apply("cup", photo), runtime.apply(rules[1], photo))
    assert rt.shared_memory_off is None
    first = rt._frames.names()
    assert len(first) == 1 and Path("/dev/shm", first[0]).stat().st_size >= photo.nbytes
    assert _registered(server.url, rt) == []  # by reference: nothing registered with Triton
    buffer = rt.frame_buffer(*photo.shape[:2])  # a camera writes its BGR frame here: the client copies nothing
    buffer[...] = photo[..., ::-1]
    same(rt.apply("cup", buffer, bgr=True), runtime.apply(rules[1], buffer.copy(), bgr=True))
    assert rt._frames.names() == first and rt._frames.holds(buffer)
    same(rt.apply("cup", big), runtime.apply(rules[1], big))
    second = rt._frames.names()
    assert len(second) == 1 and second != first and Path("/dev/shm", second[0]).stat().st_size >= big.nbytes
    assert not Path("/dev/shm", first[0]).exists()  # the outgrown region was unlinked, not leaked
    rt.close()
    assert not Path("/dev/shm", second[0]).exists()
    same(rt.apply("cup", photo), runtime.apply(rules[1], photo))  # a closed client makes a new region
    rt.close()
    message = RemoteRuntime(server.url, timeout_s=60, shared_memory=False)
    same(message.apply("cup", photo), runtime.apply(rules[1], photo))
    assert "not asked for" in message.shared_memory_off and message._frames is None
    message.close()


def test_a_forged_or_missing_frame_reference_is_a_clear_error_and_the_server_goes_on(server, remote, photo):
    from multiprocessing import shared_memory

    raw = grpcclient.InferenceServerClient(server.url)
    region = shared_memory.SharedMemory(f"cseg-test-{id(raw)}", create=True, size=1 << 16)  # smaller than the frame
    try:
        cases = {  # image_ref -> what the answer's error says
            b'{"region": "../../etc/passwd", "shape": [8, 8, 3]}': "not a cseg frame region",
            b'{"region": "cseg-nobody-here", "shape": [8, 8, 3]}': "no shared-memory region cseg-nobody-here",
            f'{{"region": "{region.name}", "shape": [512, 512, 3]}}'.encode(): "less than a 512x512x3 frame",
            f'{{"region": "{region.name}", "shape": [8, 8]}}'.encode(): "shape must be [H, W, 3]",
            b"not json": "must be JSON",
        }
        for ref, message in cases.items():
            tensor = grpcclient.InferInput("image_ref", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[ref]], dtype=object))
            rule_id = grpcclient.InferInput("rule_id", [1, 1], "BYTES")
            rule_id.set_data_from_numpy(np.array([[b"cup"]], dtype=object))
            error = json.loads(bytes(raw.infer(contract.APPLY, [tensor, rule_id]).as_numpy("error")[0][0]))
            assert error["type"] == "SharedFrameError" and message in error["message"], (ref, error)
        both = [grpcclient.InferInput("image", [1, 8, 8, 3], "UINT8"), tensor, rule_id]
        both[0].set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
        error = json.loads(bytes(raw.infer(contract.APPLY, both).as_numpy("error")[0][0]))
        assert error["type"] == "InvalidInputError" and "exactly one of image and image_ref" in error["message"]
    finally:
        raw.close()
        region.close()
        region.unlink()
    assert remote.apply("cup", photo).route == "rule"  # still serving


def _registered(url: str, rt: RemoteRuntime) -> list[str]:
    """The system shared-memory regions Triton has registered for `rt` (its own shared-memory API)."""
    raw = grpcclient.InferenceServerClient(url)
    try:
        status = raw.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        raw.close()
    return [name for name in status if name.startswith(rt._frames._prefix)]
