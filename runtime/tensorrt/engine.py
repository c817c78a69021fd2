"""Serving a GPU-target bundle from its TensorRT engines (TensorRT + cuda-python; no torch): the engines (`TrtGraph`,
the twin of onnxruntime/graph.py's `OrtGraph`), the checks that they can run here, and `open_engines`.

Every engine gets one execution context per optimization profile and device buffers allocated once, at the largest
shapes its profiles allow, with fixed addresses bound to every context: work whose shapes repeat can then be captured
as a CUDA graph the first time and replayed afterwards (cuda/graphs.py's CapturedWork). Replayed: the decoder's decode
step (static shapes: the whole KV cache of `total_tokens` positions, unfilled positions masked), and the SAM 3
decoder and concept head per input shape. A capture that fails falls back to plain enqueueing, with a warning.

Requests run one at a time per Runtime on its stream (a lock): one KV cache and one set of buffers on the device.
"""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import numpy as np

from cseg.bundle.schema import read_bundle_json
from cseg.errors import BundleError, EngineError
from cseg.lru import LRU
from cseg.runtime.cuda.buffers import DeviceArray
from cseg.runtime.cuda.graphs import CapturedWork, Stream, check, device_identity, runtime_api
from cseg.runtime.host.decoder import kv_dtype
from cseg.runtime.tensorrt.decoder import DeviceDecoder
from cseg.runtime.tensorrt.io import io_dtype, largest_shapes, set_address, set_input_shape
from cseg.runtime.tensorrt.sam3 import DeviceSam3

INSTALL_HINT = (
    "On a Jetson, TensorRT comes with JetPack (its Python bindings: sudo apt install python3-libnvinfer); on a "
    "workstation: pip install tensorrt (the build matching your CUDA), plus pip install 'cseg[tensorrt]'."
)
CAPTURED_SHAPES = 8  # CUDA graphs kept per engine (one per distinct input-shape set, least recently used dropped)


def tensorrt_module():
    """Import TensorRT 10 or later, or raise EngineError saying how to install it (never an ImportError traceback)."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the bindings are there but a TensorRT library is not
        raise EngineError(f"TensorRT is not available on this machine ({exc}). {INSTALL_HINT}") from None
    major = tensorrt.__version__.split(".")[0]
    if not major.isdigit() or int(major) < 10:  # name-based I/O, execute_async_v3 and strong typing are 10's API
        raise EngineError(f"TensorRT {tensorrt.__version__} is too old: cseg needs TensorRT 10 or later (JetPack 6 "
                          f"ships 10.3). {INSTALL_HINT}")  # fmt: skip
    return tensorrt


def require_engines(bundle: Path, manifest: dict) -> None:
    if not manifest.get("tensorrt"):
        raise BundleError(
            f"this {manifest['target']} bundle has no TensorRT engines yet: run `cseg build {bundle}` on the device "
            "(or open it with device='cpu' to check its ONNX graphs on the CPU)"
        )


def check_engines(bundle: Path, manifest: dict, tensorrt_version: str, identity: dict) -> None:
    """Refuse engines this machine cannot run, saying what to do: a plan runs only where it was built."""
    require_engines(bundle, manifest)
    built = manifest["tensorrt"]
    if built["version"] != tensorrt_version:
        raise BundleError(
            f"the engines in {bundle} were built with TensorRT {built['version']}, this machine has TensorRT "
            f"{tensorrt_version}: re-run `cseg build {bundle}` here"
        )
    if not same_device(built, identity):
        raise BundleError(f"the engines in {bundle} were built for {describe_device(built)}, this machine has "
                          f"{describe_device(identity)}: re-run `cseg build {bundle}` here")  # fmt: skip


def same_device(built: dict, here: dict) -> bool:
    """Whether a plan built on `built` (cuda.graphs.device_identity) may run `here`. Memory is compared to within a
    GB: the Orin modules differ by many GB, while what the OS reports can move a little between JetPack updates.
    Engines recorded without SM count or memory (an older cseg) count as another device."""
    return (built["gpu"] == here["gpu"] and list(built["compute_capability"]) == list(here["compute_capability"])
            and built.get("sm_count") == here["sm_count"]
            and abs(built.get("memory_gb", float("inf")) - here["memory_gb"]) < 1.0)  # fmt: skip


def describe_device(identity: dict) -> str:
    capability = "".join(map(str, identity["compute_capability"]))
    return (f"{identity['gpu']} (sm_{capability}, {identity.get('sm_count', 'unknown')} SMs, "
            f"{identity.get('memory_gb', 'unknown')} GB)")  # fmt: skip


def load_engine(runtime, path: Path, tensorrt_version: str):
    """Deserialize a plan from a read-only memory map of its file: TensorRT reads the pages it needs, and the plan is
    not first copied into a bytes object (on a Jetson, host memory is the GPU's memory)."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as plan:
        engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BundleError(f"TensorRT {tensorrt_version} cannot load {path.name}: re-run `cseg build` on this device")
    return engine


class TrtGraph:
    """One engine, with the `run(feed) -> outputs` interface of OrtGraph (plus profiles and device-resident I/O)."""

    def __init__(self, trt, runtime, key: str, path: Path, entry: dict, recipe: dict, stream: Stream, *,
                 capture: tuple[str, ...] = (), buffer_shapes: dict | None = None):  # fmt: skip
        """capture: the profiles whose runs are captured as CUDA graphs (per input-shape set); buffer_shapes: own
        buffer shapes that differ from the profiles' largest (None: no own buffer, the caller binds device memory)."""
        self.key, self.trt, self.stream, self.capture = key, trt, stream, capture
        self.engine = load_engine(runtime, path, trt.__version__)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.output_names = [t["name"] for t in entry["outputs"]]  # the manifest's order (the FPN levels, say)
        if sorted(self.output_names) != sorted(set(names) - self.input_names):
            raise BundleError(f"engine {path.name} has outputs {sorted(set(names) - self.input_names)}, manifest.json "
                              f"says {self.output_names}: re-run `cseg build`")  # fmt: skip
        self.profiles = [p["name"] for p in recipe["profiles"]] or ["default"]
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise BundleError(f"engine {path.name} has {self.engine.num_optimization_profiles} optimization profiles, "
                              f"the recipe names {len(self.profiles)} ({', '.join(self.profiles)}): rebuild it from "
                              "the recipe (`cseg build`)")  # fmt: skip
        self.contexts = {}
        user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED  # memory: use_context_memory()
        for index, name in enumerate(self.profiles):
            context = self.engine.create_execution_context(user_managed)
            if context is None:  # TensorRT logs why (usually: no device memory left for the activations)
                raise EngineError(f"{key}: TensorRT could not create an execution context for profile {name}")
            if not context.set_optimization_profile_async(index, stream.handle):
                raise EngineError(f"{key}: TensorRT refused optimization profile {name}")
            self.contexts[name] = context
        largest = largest_shapes(self.engine, key, self.contexts, self.input_names, self.output_names)
        shapes = {**largest, **(buffer_shapes or {})}
        self.buffers = {name: DeviceArray(shape, io_dtype(trt, self.engine, key, name))
                        for name, shape in shapes.items() if shape is not None}  # fmt: skip
        for context in self.contexts.values():
            for name, buffer in self.buffers.items():
                set_address(context, key, name, buffer.pointer)
        self._captured: LRU[tuple, CapturedWork] = LRU(CAPTURED_SHAPES, lambda _, work: work.close())

    def use_context_memory(self, pointer: int, size: int) -> None:
        """Give every context of this engine the activation memory `pointer` (at least device_memory_size_v2 bytes),
        shared with the other engines' contexts: all of them run one at a time on one stream."""
        for context in self.contexts.values():
            context.set_device_memory(int(pointer), size)

    def run(self, feed: dict[str, np.ndarray], profile: str = "default", *, device_inputs: dict | None = None,
            device_outputs: dict | None = None, fetch=None) -> dict[str, np.ndarray]:  # fmt: skip
        """Copy `feed` in, run, copy the outputs in `fetch` (default: all) out.

        device_inputs / device_outputs: {name: (pointer, shape)} already on the device (the KV cache, SAM 3's FPN),
        bound instead of this engine's own buffers."""
        inputs = dict(device_inputs or {})
        for name in sorted(self.input_names - inputs.keys()):
            if name not in feed:
                raise BundleError(f"engine {self.key} needs input {name}, which the runtime did not provide")
            inputs[name] = (self.buffers[name].pointer, self.buffers[name].upload(feed[name], self.stream))
        context, signature = self.bind(profile, inputs, device_outputs)
        self.launch(context, profile, signature)
        wanted = self.output_names if fetch is None else fetch
        return {name: self.buffers[name].download(self.stream, context.get_tensor_shape(name)) for name in wanted}

    def bind(self, profile: str, inputs: dict, outputs: dict | None = None):
        """Point `profile`'s context at device memory: inputs {name: (pointer, shape)}, outputs {name: (pointer,
        shape)} (default: this engine's own buffers). Returns the context and the signature captures are keyed by."""
        context = self.contexts[profile]
        signature = [profile]
        for name in sorted(self.input_names):
            pointer, shape = inputs[name]
            set_input_shape(context, self.engine, self.key, (self.profiles.index(profile), profile), name, shape)
            set_address(context, self.key, name, pointer)
            signature.append((name, int(pointer), tuple(shape)))
        for name in self.output_names:
            pointer = outputs[name][0] if outputs and name in outputs else self.buffers[name].pointer
            set_address(context, self.key, name, pointer)
            signature.append((name, int(pointer)))
        return context, tuple(signature)

    def enqueue(self, context, stream: Stream) -> None:
        if not context.execute_async_v3(stream.handle):
            raise EngineError(f"TensorRT could not enqueue {self.key}")

    def launch(self, context, profile: str, signature: tuple) -> None:
        """Enqueue a bound run: replayed from its CUDA graph when the profile is captured (one per signature)."""
        if profile not in self.capture:
            self.enqueue(context, self.stream)
            return
        # a new signature runs once uncaptured first (TensorRT allocates lazily), then is captured
        work = self._captured.get_or_create(
            signature, lambda: CapturedWork(self.stream, lambda stream: self.enqueue(context, stream)))
        work.launch()


def shared_context_memory(sizes: dict[str, int]) -> int:
    """Bytes of the one context-memory block open_engines allocates, from each engine's need (device_memory_size_v2,
    every profile included): the largest. The contexts (one per engine and profile) run one at a time on one stream,
    so they can share it; with TensorRT's default allocation each context holds its own, e.g. the decoder's
    activations twice (prefill and decode), on a Jetson out of the memory everything else uses."""
    return max(sizes.values(), default=0)


def open_engines(bundle: Path, manifest: dict):
    """(graphs, decoder, lock, SAM 3's device steps) serving `bundle` from its engines; graphs the bundle keeps as
    ONNX (the router) are left to the caller."""
    require_engines(bundle, manifest)  # before TensorRT: a bundle without engines says what to do, anywhere
    trt = tensorrt_module()
    check_engines(bundle, manifest, trt.__version__, device_identity())
    recipe = read_bundle_json(bundle / manifest["recipe"])
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    stream = Stream()
    model = manifest["model"]
    kv_names = [f"{io}_{kind}_{i}" for io in ("past", "new") for kind in ("key", "value")
                for i in range(model.get("num_layers", 0))]  # a rule-only bundle: no LLM, no KV cache  # fmt: skip
    graphs = {}
    for key, engine in manifest["tensorrt"]["engines"].items():
        # vlm_vision and the prefill see new shapes per request: plain enqueue. The decode step always has the same
        # shapes; SAM 3's graphs and the concept head repeat theirs (per concept count / generated length).
        capture, buffers = ("default",), None
        if key == "vlm_vision":
            capture = ()
        elif key == "vlm_decoder":
            # past: the cache itself is bound; new: written into the cache (prefill) or staged one row (decode)
            one_row = (1, 1, model["num_kv_heads"], model["head_dim"])
            capture, buffers = ("decode",), {n: None if n.startswith("past") else one_row for n in kv_names}
        graphs[key] = TrtGraph(trt, runtime, key, bundle / engine["file"], manifest["graphs"][key],
                               recipe["graphs"][key], stream, capture=capture, buffer_shapes=buffers)  # fmt: skip
    # one block of context (activation) memory for every context of every engine, instead of one per context
    size = shared_context_memory({key: graph.engine.device_memory_size_v2 for key, graph in graphs.items()})
    block = check(runtime_api().cudaMalloc(max(1, size)), "cudaMalloc (TensorRT context memory)")
    for graph in graphs.values():
        graph.use_context_memory(block, size)
    decoder = (DeviceDecoder(graphs["vlm_decoder"], model, manifest["generation"], kv_dtype(manifest))
               if "vlm_decoder" in graphs else None)  # fmt: skip
    sam3 = DeviceSam3(graphs["sam3_vision"], graphs["sam3_decoder"], manifest["preprocessing"]["sam3"], stream)
    return graphs, decoder, threading.Lock(), sam3
