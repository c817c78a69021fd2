"""Greedy decoding on the vlm_decoder graph with a preallocated KV cache, collecting the concept head's input.

Matches transformers' generate() under the research settings: greedy, the checkpoint's repetition penalty, stop on
any end-of-sequence id or the length budget. The concept head needs the last-layer state at every generated
position, including the final token: each generated token is fed once (the final one in one extra step whose logits
are not used), and its hidden state is kept. Positions holding the pad id get attention mask 0, as in the research
code's second forward.

`HostDecoder` runs the steps with ONNX Runtime and the cache in host arrays (`HostKVCache`); its device twin,
`DeviceDecoder` (runtime/tensorrt/decoder.py), keeps this loop and runs the steps on a TensorRT engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cseg.errors import InvalidInputError
from cseg.pipeline import generation_room
from cseg.runtime.onnxruntime.graph import OrtGraph


class HostKVCache:
    """One buffer per layer and kind, allocated once at the maximum length: sequence-major [1, length, kv_heads, dim],
    or heads-major [1, kv_heads, length, dim] for the "shared" layout (export/graphs/vlm_decoder.py)."""

    def __init__(self, count: int, max_length: int, kv_heads: int, head_dim: int, dtype=np.float32,
                 layout: str = "sequence_major"):  # fmt: skip
        shape = (1, kv_heads, max_length, head_dim) if layout == "shared" else (1, max_length, kv_heads, head_dim)
        self.buffers = [np.zeros(shape, dtype) for _ in range(count)]
        self.axis = 2 if layout == "shared" else 1  # the sequence axis
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.buffers[0].shape[self.axis]


@dataclass
class Prefilled:
    """A prompt that went through the decoder: its cache, mask, seen ids, last logits and hidden states."""

    cache: HostKVCache
    mask: np.ndarray
    seen: np.ndarray
    logits: np.ndarray
    hidden_states: np.ndarray  # [1, prompt, H]: the router pools the question's positions from here
    next_position: int
    budget: int
    embed_size: int
    prefill_ms: float


@dataclass
class Generated:
    tokens: list[int]
    hidden_states: np.ndarray  # [1, T, H]
    decode_ms: float


def kv_dtype(manifest: dict) -> str:
    """The KV cache's dtype, as the decoder graph declares it (float16 in GPU-target bundles)."""
    return next(t["dtype"] for t in manifest["graphs"]["vlm_decoder"]["inputs"] if t["name"] == "past_key_0")


def kv_layout(manifest: dict) -> str:
    """"shared" (the cpu target since GroupQueryAttention) or "sequence_major" (GPU targets and older bundles)."""
    return manifest["graphs"]["vlm_decoder"].get("kv_cache", "sequence_major")


def static_decode_mask(mask: np.ndarray, start: int, capacity: int) -> np.ndarray:
    """The attention mask of a decode step run against the whole cache of `capacity` positions (static shapes, for
    CUDA-graph replay): the filled positions as in `mask`, the unfilled ones 0, and the new token last (the key it
    attends to is appended after the past by the decoder graph)."""
    static = np.zeros((1, capacity + 1), np.int64)
    static[0, :start] = mask[0, :start]
    static[0, capacity] = mask[0, start]
    return static


class HostDecoder:
    """Runs vlm_decoder with IO binding and no copies of the cache. sequence_major: past = the cache's filled prefix,
    new keys/values written right after it; shared: past and present are the whole buffer, which the graph updates
    in place (every decode step of a request then has the same shapes)."""

    def __init__(self, graph: OrtGraph, model: dict, generation: dict, kv_dtype: str = "float32",
                 layout: str = "sequence_major"):  # fmt: skip
        self.graph = graph
        self.kv_dtype = np.dtype(kv_dtype)  # float16 in GPU-target bundles
        self.layout = layout
        out = "present" if layout == "shared" else "new"
        self.past_names = [f"past_{kind}_{i}" for i in range(model["num_layers"]) for kind in ("key", "value")]
        self.new_names = [f"{out}_{kind}_{i}" for i in range(model["num_layers"]) for kind in ("key", "value")]
        self.kv_heads, self.head_dim = model["num_kv_heads"], model["head_dim"]
        self.hidden_size = model["hidden_size"]
        self.vocab_size = model["vocab_size"]
        self.max_length = generation["max_length"]
        self.eos = set(generation["eos_token_ids"])
        self.pad = generation["pad_token_id"]
        self.penalty = float(generation.get("repetition_penalty") or 1.0)
        # the longest prompt the graph takes in one prefill (None: any; a TensorRT engine: its prefill profile's)
        self.max_prompt: int | None = None

    @classmethod
    def from_manifest(cls, graph: OrtGraph, manifest: dict) -> "HostDecoder":
        """The decoder a bundle describes: model sizes, generation settings, KV cache dtype and layout."""
        return cls(graph, manifest["model"], manifest["generation"], kv_dtype(manifest), kv_layout(manifest))

    def new_cache(self, length: int) -> HostKVCache:
        return HostKVCache(len(self.past_names), length, self.kv_heads, self.head_dim, self.kv_dtype, self.layout)

    def cache_views(self, cache: HostKVCache, seq: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer and kind, the arrays a step of `seq` new positions binds: its past input and the output the
        graph writes into (views of the cache's buffers, no copies)."""
        start = cache.length
        if self.layout == "shared":
            return [(buffer, buffer) for buffer in cache.buffers]
        # contiguous slices: the cache is sequence-major, batch 1
        return [(buffer[:, :start], buffer[:, start : start + seq]) for buffer in cache.buffers]

    def step(self, cache: HostKVCache, ids: np.ndarray, image_embeds: np.ndarray, positions: np.ndarray,
             mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        seq, start = ids.shape[1], cache.length
        if start + seq > cache.capacity:
            raise ValueError(f"KV cache of {cache.capacity} positions is full")
        binding = self.graph.session.io_binding()
        for name, value in (("input_ids", ids), ("image_embeds", image_embeds), ("position_ids", positions),
                            ("attention_mask", mask)):  # fmt: skip
            if name in self.graph.input_names:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for past, new, (source, target) in zip(self.past_names, self.new_names, self.cache_views(cache, seq)):
            binding.bind_cpu_input(past, source)
            binding.bind_output(new, "cpu", 0, self.kv_dtype, list(target.shape), target.ctypes.data)
        binding.bind_output("logits")
        binding.bind_output("hidden_states")
        self.graph.session.run_with_iobinding(binding)
        # only these two: copying every output would copy the whole cache of the shared layout each token
        logits, hidden = (value.numpy() for value in binding.get_outputs()[-2:])
        cache.length = start + seq
        return logits, hidden

    def prefill(self, prompt_ids: np.ndarray, image_embeds: np.ndarray, positions: np.ndarray,
                max_new_tokens: int | None, max_length: int | None = None) -> Prefilled:  # fmt: skip
        """Run the prompt through the decoder; decoding can continue from the result (the router looks first).
        `max_length` lowers the bundle's budget of prompt + completion tokens for this prompt."""
        prompt = prompt_ids.shape[1]
        if self.max_prompt is not None and prompt > self.max_prompt:  # refused before anything is enqueued
            raise InvalidInputError(f"the prompt is {prompt} tokens; the decoder's prefill takes at most "
                                    f"{self.max_prompt}: shorten the question or give fewer demonstrations")  # fmt: skip
        room = generation_room(prompt, self.max_length, max_length)
        budget = min(max_new_tokens, room) if max_new_tokens else room
        cache = self.new_cache(prompt + budget)
        mask = np.ones((1, prompt + budget), np.int64)
        mask[:, :prompt] = prompt_ids != self.pad
        seen = np.zeros(self.vocab_size, dtype=bool)
        seen[np.unique(prompt_ids)] = True
        started = time.perf_counter()
        logits, hidden = self.step(cache, prompt_ids, image_embeds, positions, mask[:, :prompt])
        return Prefilled(cache, mask, seen, logits, hidden, int(positions.max()) + 1, budget,
                         image_embeds.shape[1], (time.perf_counter() - started) * 1000)  # fmt: skip

    def decode(self, state: Prefilled) -> Generated:
        cache, mask, seen, logits = state.cache, state.mask, state.seen, state.logits
        prompt = cache.length
        no_image = np.zeros((1, state.embed_size), np.float32)
        tokens, hidden = [], []
        started = time.perf_counter()
        while True:
            token = self._choose(logits[0, -1], seen)
            tokens.append(token)
            seen[token] = True
            index = prompt + len(tokens) - 1
            mask[0, index] = int(token != self.pad)
            step_position = np.full((3, 1, 1), state.next_position + len(tokens) - 1, dtype=np.int64)
            logits, step_hidden = self.step(cache, np.array([[token]], np.int64), no_image, step_position,
                                            mask[:, : index + 1])  # fmt: skip
            hidden.append(step_hidden[:, 0])
            if token in self.eos or len(tokens) >= state.budget:
                break
        decode_ms = (time.perf_counter() - started) * 1000
        return Generated(tokens, np.stack(hidden, axis=1), decode_ms)

    def _choose(self, logits: np.ndarray, seen: np.ndarray) -> int:
        """Greedy choice after transformers' RepetitionPenaltyLogitsProcessor (ties go to the lowest id)."""
        if self.penalty != 1.0:
            logits = logits.copy()
            penalised = logits[seen]
            logits[seen] = np.where(penalised < 0, penalised * self.penalty, penalised / self.penalty)
        return int(np.argmax(logits))
