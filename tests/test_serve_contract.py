"""The serving contract and the request handlers without a server: what `cseg serve` sends for Segmentations and what
RemoteRuntime makes of it (padding, errors, PyTriton's empty answers), and how a batch's requests run."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cseg.errors import CsegError, InvalidInputError

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the test extra) is not installed")

from cseg.serve import contract  # noqa: E402
from cseg.serve.client import ServerError  # noqa: E402


def test_the_contract_round_trips_instances_and_padding():
    """Server outputs -> client results without a server: instances go back to their prompt, padding rows vanish."""
    from cseg.segmentation import Instances, Segmentation
    from cseg.serve.client import decode
    from cseg.serve.server import _outputs

    masks = np.zeros((2, 4, 5), bool)
    masks[0, 1, 1] = masks[1, 2, 3] = True
    two = Instances(masks, np.array([[0, 0, 2, 2], [1, 1, 4, 3]], np.float32), np.array([0.9, 0.6], np.float32))
    first = Segmentation(masks.any(0), two, 0.8, "shortcut", answer="a")
    second = Segmentation(np.zeros((4, 5), bool), Instances.empty(4, 5), 0.1, "full", answer="b", token_ids=(3, 4))
    wire = _outputs([first, second])
    assert all(value.size > 0 for value in wire.values())  # PyTriton cannot send a zero-sized tensor
    assert wire["mask"].dtype == np.uint8 and wire["mask"].shape == (1, 2, 4, 1)  # packed: 5 pixels in a byte
    got = decode(wire.get)
    assert [len(r.instances) for r in got] == [2, 0] and got[1].token_ids == (3, 4) and got[1].route == "full"
    assert np.array_equal(got[0].instances.masks, masks) and got[0].instances.scores.tolist() == pytest.approx([0.9, 0.6])
    alone = decode(_outputs([second], "v1").get)[0]
    assert len(alone.instances) == 0 and alone.rule_version == "v1"
    with pytest.raises(InvalidInputError, match="bad frame"):
        decode(contract.placeholder_outputs(contract.error_payload(InvalidInputError("bad frame"))).get)
    with pytest.raises(CsegError, match="boom") as caught:
        decode(contract.placeholder_outputs(b'{"type": "KeyError", "message": "boom"}').get)
    assert type(caught.value) is CsegError  # a name that is no cseg error class is never instantiated
    hollow = {name: value[:, :0] if value.ndim > 1 else value[:0] for name, value in wire.items()}
    with pytest.raises(ServerError, match="empty tensors"):  # what PyTriton with numpy 2 answers: never a result
        decode(hollow.get)


def test_masks_are_packed_on_the_wire():
    """8 pixels a byte along a row, any width; a server's width that its bytes cannot hold is refused, not cut."""
    masks = np.random.default_rng(0).random((3, 5, 13)) > 0.5
    packed = contract.pack_masks(masks)
    assert packed.dtype == np.uint8 and packed.shape == (3, 5, 2)
    assert np.array_equal(contract.unpack_masks(packed, 13), masks)
    with pytest.raises(ValueError, match="cannot hold 17 pixels"):
        contract.unpack_masks(packed, 17)


def test_a_batch_runs_its_requests_concurrently_in_order_and_each_answers_for_itself(monkeypatch):
    """Handlers(concurrency=2): two requests of a batch are inside the runtime at once (a barrier of two passes only
    then), the answers come back in request order, and a failing request is its own error answer."""
    from cseg.serve.server import Handlers

    barrier = threading.Barrier(2, timeout=10)

    class Runtime:
        def apply(self, rule, image):
            if image[0, 0, 0] == 9:
                raise InvalidInputError("bad frame")
            barrier.wait()  # BrokenBarrierError after 10 s if the other request is not running at the same time
            return rule, int(image[0, 0, 0])

    handlers = Handlers(Runtime(), {"cup": ("the rule", "v1")}, concurrency=2)
    def request(value: int) -> dict:
        image = np.full((1, 4, 4, 3), value, np.uint8)
        return {"image": image, "rule_id": np.array([[b"cup"]], dtype=object)}

    monkeypatch.setattr("cseg.serve.server._outputs", lambda results, version=None, start=None: {"answer": results[0],
                                                                                     "version": version})  # fmt: skip
    answers = handlers.apply([request(1), request(2), request(9), request(3), request(4)])
    assert [a.get("answer") for a in answers] == [("the rule", 1), ("the rule", 2), None, ("the rule", 3),
                                                  ("the rule", 4)]  # fmt: skip
    assert b"bad frame" in bytes(answers[2]["error"][0][0]) and answers[0]["version"] == "v1"
    serial = Handlers(Runtime(), {"cup": ("the rule", "v1")}, concurrency=1)
    assert serial._pool is None  # concurrency 1: the batch loops on the calling thread, as before


def test_a_frame_by_reference_is_read_in_place_and_let_go_when_its_region_goes():
    from cseg.errors import SharedFrameError
    from cseg.images import Frame
    from cseg.serve.shm import MIN_BYTES, FrameRegions, SharedFrames

    frame = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    regions, frames = FrameRegions(), SharedFrames()
    ref = regions.place(frame)
    got = frames.frame(ref)
    assert np.array_equal(got, frame) and not got.flags.writeable and len(frames) == 1
    frame[0, 0] = 255 - frame[0, 0]
    assert frames.frame(regions.place(frame))[0, 0].tolist() == frame[0, 0].tolist()  # the same region, mapped once
    assert len(frames) == 1 and regions.place(np.zeros((8, 8, 3), np.uint8)) is None  # small: in the message
    assert MIN_BYTES > 8 * 8 * 3
    buffer = regions.buffer(300, 400)  # a frame written straight into the region (a camera's BGR), not copied
    buffer[...] = frame[..., ::-1]
    assert regions.holds(buffer) and not regions.holds(frame) and not regions.holds(buffer[1:])
    got = frames.frame(regions.place(buffer, bgr=True))
    assert isinstance(got, Frame) and got.bgr and np.array_equal(got.pixels, frame[..., ::-1])
    name = regions.names()[0]
    regions.close()  # the client unlinks its region: the server lets go of its mapping at the next sweep
    frames.sweep()
    assert len(frames) == 0
    with pytest.raises(SharedFrameError, match=f"no shared-memory region {name}"):
        frames.frame(ref)
    regions.disable("test")
    assert regions.place(frame) is None and regions.disabled == "test"
