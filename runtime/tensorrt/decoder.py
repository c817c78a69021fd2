"""The decoder on the device: `DeviceDecoder` runs the generation loop of `HostDecoder` (runtime/host/decoder.py)
with its steps on the vlm_decoder engine and the KV cache (`DeviceKVCache`) in device memory, allocated once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cseg.runtime.cuda.buffers import DeviceArray
from cseg.runtime.cuda.graphs import check, runtime_api
from cseg.runtime.host.decoder import HostDecoder, static_decode_mask
from cseg.runtime.tensorrt.io import profile_range

if TYPE_CHECKING:  # engine.py builds the decoder (open_engines), so it cannot be imported from here at run time
    from cseg.runtime.tensorrt.engine import TrtGraph


class DeviceKVCache:
    """The KV cache on the device: one [1, capacity, kv_heads, head_dim] buffer per layer and kind, allocated once."""

    def __init__(self, count: int, capacity: int, kv_heads: int, head_dim: int, dtype):
        self.arrays = [DeviceArray((1, capacity, kv_heads, head_dim), dtype) for _ in range(count)]
        self.row_bytes = kv_heads * head_dim * np.dtype(dtype).itemsize
        self.capacity, self.length = capacity, 0

    def at(self, index: int, row: int) -> int:
        return int(self.arrays[index].pointer) + row * self.row_bytes


class DeviceDecoder(HostDecoder):
    """HostDecoder's generation loop with its steps on the vlm_decoder engine: `prefill` profile for the prompt (new
    keys/values written straight into the cache), `decode` profile for single tokens against the whole static cache
    (captured, replayed)."""

    def __init__(self, graph: TrtGraph, model: dict, generation: dict, kv_dtype: str):
        super().__init__(graph, model, generation, kv_dtype)
        # the engine's own ranges, not the recipe's (engines registered by hand may differ): the longest prompt one
        # prefill takes, and the decode step's static past length, which is the KV cache's capacity
        self.max_prompt = profile_range(graph.engine, "input_ids", graph.profiles.index("prefill"))[2][1]
        capacity = profile_range(graph.engine, self.past_names[0], graph.profiles.index("decode"))[2][1]
        self.capacity = capacity
        self.max_length = min(self.max_length, capacity)  # generation stops where the engine's static cache ends
        self.cache = DeviceKVCache(len(self.past_names), capacity, self.kv_heads, self.head_dim, self.kv_dtype)

    def new_cache(self, length: int) -> DeviceKVCache:
        if length > self.capacity:
            raise ValueError(f"{length} positions exceed the engine's KV cache of {self.capacity} (its total_tokens)")
        self.cache.length = 0
        return self.cache

    def step(self, cache: DeviceKVCache, ids, image_embeds, positions, mask):
        seq, start = ids.shape[1], cache.length
        feed = {"input_ids": ids, "image_embeds": image_embeds, "position_ids": positions}
        shape = (1, seq, self.kv_heads, self.head_dim)
        if start == 0:
            empty = (1, 0, self.kv_heads, self.head_dim)
            device_inputs = {name: (cache.at(i, 0), empty) for i, name in enumerate(self.past_names)}
            device_outputs = {name: (cache.at(i, 0), shape) for i, name in enumerate(self.new_names)}
            out = self.graph.run({**feed, "attention_mask": mask}, "prefill", device_inputs=device_inputs,
                                 device_outputs=device_outputs, fetch=["logits", "hidden_states"])  # fmt: skip
        else:
            full = (1, cache.capacity, self.kv_heads, self.head_dim)
            device_inputs = {name: (cache.at(i, 0), full) for i, name in enumerate(self.past_names)}
            static = static_decode_mask(mask, start, cache.capacity)
            out = self.graph.run({**feed, "attention_mask": static}, "decode", device_inputs=device_inputs,
                                 fetch=["logits", "hidden_states"])  # fmt: skip
            cudart = runtime_api()
            for i, name in enumerate(self.new_names):  # the step's keys/values into their row of the cache
                check(cudart.cudaMemcpyAsync(cache.at(i, start), self.graph.buffers[name].pointer, cache.row_bytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.graph.stream.handle),
                      "cudaMemcpyAsync")  # fmt: skip
        cache.length = start + seq
        return out["logits"], out["hidden_states"]
