"""cseg.lru.LRU, the one cache of the runtime, and the device caches built on it (without a GPU: their device arrays
and captured graphs are stand-ins that record being closed)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from cseg.lru import LRU


def test_the_least_recently_used_is_evicted_through_the_callback():
    evicted = []
    cache = LRU(2, lambda key, value: evicted.append((key, value)))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert evicted == [("b", 2)] and list(cache) == ["a", "c"] and len(cache) == 2
    assert "b" not in cache and cache.get("b") is None and cache.get("b", 0) == 0
    cache.put("a", 10)  # a replaced value is evicted too (it may hold device memory)
    assert evicted[-1] == ("a", 1) and cache.get("a") == 10 and list(cache) == ["c", "a"]
    same = object()
    cache.put("s", same)
    cache.put("s", same)  # storing the same object again is no eviction
    assert evicted[-1] == ("c", 3) and len(evicted) == 3


def test_get_or_create_frees_before_it_creates_and_creates_once():
    log = []
    cache = LRU(2, lambda key, value: log.append(f"close {key}"))

    def create(key):
        def make():
            log.append(f"create {key}")
            return key.upper()

        return make

    assert cache.get_or_create("a", create("a")) == "A"
    assert cache.get_or_create("b", create("b")) == "B"
    assert cache.get_or_create("a", create("a")) == "A"  # a hit: nothing created, "a" most recent
    assert cache.get_or_create("c", create("c")) == "C"
    assert log == ["create a", "create b", "close b", "create c"]  # "b" closed before "c" was made


def test_evict_where_closes_every_matching_item():
    closed = []
    cache = LRU(8, lambda key, value: closed.append(key))
    for key in [(4, 4, "x"), (4, 4, "y"), (8, 8, "x")]:
        cache.put(key, object())
    cache.evict_where(lambda key: key[:2] == (4, 4))
    assert closed == [(4, 4, "x"), (4, 4, "y")] and list(cache) == [(8, 8, "x")]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, None])
def test_a_cache_without_room_is_refused(capacity):
    with pytest.raises(ValueError, match="at least one item"):
        LRU(capacity)


class _Closing:
    """A stand-in for a DeviceArray or CapturedWork: records being closed, once."""

    closed: list = []

    def __init__(self, *shape_and_dtype):
        self.shape = shape_and_dtype[0] if shape_and_dtype else ()
        self.dtype = np.float32

    def close(self):
        assert self not in _Closing.closed, "closed twice"
        _Closing.closed.append(self)


def test_device_sam3_closes_an_evicted_sizes_buffers_and_its_rule_graphs(monkeypatch):
    """DeviceSam3 keeps FRAME_SIZES input sizes: the least recent one's three device arrays are closed, and with them
    the rule-path CUDA graphs captured on those buffers, and nothing of the other sizes."""
    from cseg.runtime.tensorrt import sam3 as device

    monkeypatch.setattr(device, "DeviceArray", _Closing)
    monkeypatch.setattr(device, "kernels", lambda: None)
    monkeypatch.setattr(_Closing, "closed", [])
    f32 = types.SimpleNamespace(dtype=np.float32)
    vision = types.SimpleNamespace(key="sam3_vision", buffers={"pixel_values": f32, "fpn": f32}, output_names=["fpn"])
    decoder = types.SimpleNamespace(key="sam3_decoder", buffers={
        "semantic_logits": f32, "instance_scores": f32, "fpn_0": f32,
        "instance_masks": types.SimpleNamespace(dtype=np.float32, shape=(1, 3, 8, 8))})  # fmt: skip
    steps = device.DeviceSam3(vision, decoder, {"size": 1008}, stream=None)
    sizes = [(10 + i, 20) for i in range(device.FRAME_SIZES)]
    buffers = {size: steps._buffers(*size) for size in sizes}
    graphs = {size: _Closing() for size in sizes}
    for size, graph in graphs.items():
        steps._rules.put((*size, False, 0.5), graph)
    assert steps._buffers(*sizes[0]) is buffers[sizes[0]]  # a hit: sizes[1] is now the least recently used
    steps._buffers(99, 99)
    stale = buffers[sizes[1]]
    assert _Closing.closed == [graphs[sizes[1]], stale.frame, stale.semantic, stale.masks]
    assert len(steps._sizes) == device.FRAME_SIZES and len(steps._rules) == device.FRAME_SIZES - 1


def test_a_tensorrt_engine_keeps_captured_shapes_and_closes_the_evicted(tmp_path, monkeypatch):
    """TrtGraph (on tests/tensorrt_double.py's engine, stand-in device arrays) captures each input-shape signature
    once, replays it afterwards, and keeps CAPTURED_SHAPES graphs: the least recently used is closed."""
    import onnx
    from onnx import TensorProto, helper

    import tensorrt_double
    from cseg.runtime.tensorrt import engine

    class Work(_Closing):
        def __init__(self, stream, enqueue):
            super().__init__()
            made.append(self)
            self.launches = 0

        def launch(self):
            self.launches += 1

    class Array(_Closing):
        pointer = 0x1000  # not null: the double refuses a null address, as TensorRT does

    made = []
    monkeypatch.setattr(engine, "CapturedWork", Work)
    monkeypatch.setattr(engine, "DeviceArray", Array)
    monkeypatch.setattr(_Closing, "closed", [])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))  # fmt: skip
    onnx.save(model, tmp_path / "relu.onnx")
    tensorrt_double.write_plan(tmp_path / "relu.plan", tmp_path / "relu.onnx", [])
    entry = {"outputs": [{"name": "y"}]}
    graph = engine.TrtGraph(tensorrt_double, tensorrt_double.Runtime(None), "relu", tmp_path / "relu.plan", entry,
                            {"profiles": []}, types.SimpleNamespace(handle=0), capture=("default",))  # fmt: skip
    for signature in range(engine.CAPTURED_SHAPES + 1):
        graph.launch(None, "default", ("default", signature))
    graph.launch(None, "default", ("default", engine.CAPTURED_SHAPES))  # replayed, not captured again
    assert len(made) == engine.CAPTURED_SHAPES + 1 and made[-1].launches == 2
    assert _Closing.closed == [made[0]]
