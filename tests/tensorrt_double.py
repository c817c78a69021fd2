"""A test double of the `tensorrt` module, to exercise cseg's TensorRT runtime (runtime/tensorrt/) where
TensorRT itself cannot be installed: its bookkeeping runs anywhere (profiles, shapes, bindings), its enqueue needs a
CUDA GPU.

Its "engines" run the bundle's ONNX graph with ONNX Runtime on host copies of the device buffers cseg binds. So
everything of cseg's is real (device buffers, profiles and contexts, tensor addresses, the device KV cache written
in place by the prefill and row by row by the decode steps, the static decode step's mask, output ordering, CUDA-graph
capture and replay); only the kernels are not TensorRT's. It is as strict as TensorRT's documented contract
(NvInferRuntime.h) where cseg depends on it:
- `deserialize_cuda_engine` returns None for a plan of another TensorRT version or GPU;
- `set_input_shape` returns False for a shape outside the context's optimization profile (or of another rank, or
  changing a static dimension); `set_tensor_address` returns False for an unknown tensor or a null pointer;
- shapes are -1 where TensorRT cannot know them yet (dynamic inputs not set, outputs depending on them);
- `execute_async_v3` returns False when an input shape or any I/O address is not set, when a user-managed context
  has no device memory, and while the stream is capturing if `FAIL_WHILE_CAPTURING` is set (TensorRT may do so);
- `nptype` raises TypeError for a type numpy cannot hold (bfloat16 here).
The enqueue is asynchronous: copies of the inputs to pinned host memory, a host function (cuLaunchHostFunc) that
runs ONNX Runtime, copies of the outputs back, all on the caller's stream, so it can be captured into a CUDA graph
and replayed. A "plan" is a JSON file naming the ONNX file, the profiles, the version and the GPU (write_plan).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
from enum import Enum

import numpy as np
import onnxruntime as ort

from cseg.runtime.cuda.graphs import CudaError, check, device_identity, runtime_api, why_unavailable

__version__ = "10.16.0-double"
FAIL_WHILE_CAPTURING = False  # tests set it: execute_async_v3 then returns False while the stream is capturing
DEVICE_MEMORY = 1 << 20  # what every engine asks for as context (activation) memory


class DataType(Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT64 = np.int64
    BOOL = np.bool_
    BF16 = "bfloat16"  # numpy has no bfloat16: nptype refuses it, as TensorRT's does


_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
          "tensor(bool)": DataType.BOOL, "tensor(bfloat16)": DataType.BF16}  # fmt: skip


def nptype(dtype: DataType):
    if not isinstance(dtype.value, type):
        raise TypeError(f"Could not resolve TensorRT datatype {dtype} to an equivalent numpy datatype.")
    return dtype.value


class Logger:
    WARNING = 2

    def __init__(self, level=None):
        self.level = level


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


def current_device() -> dict | None:
    """The identity plans are bound to here (None without a GPU, so CPU tests can load plans written with None)."""
    return device_identity() if why_unavailable() is None else None


def write_plan(path, onnx_path, profiles: list[dict], *, version: str = __version__, device="here") -> None:
    """A double "plan": profiles as the recipe writes them ([{"name", "shapes": {tensor: {min, opt, max}}}])."""
    device = current_device() if device == "here" else device
    path.write_text(json.dumps({"onnx": str(onnx_path), "profiles": [p["shapes"] for p in profiles],
                                "version": version, "device": device}))  # fmt: skip


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan):
        plan = json.loads(bytes(plan))
        if plan["version"] != __version__ or plan["device"] != current_device():
            return None  # TensorRT logs the mismatch and returns null
        return _Engine(plan)


class _Engine:
    def __init__(self, plan: dict):
        self.session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.profiles = plan["profiles"] or [{}]
        self.args = {t.name: t for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.inputs = [t.name for t in self.session.get_inputs()]
        self.outputs = [t.name for t in self.session.get_outputs()]
        self.num_io_tensors = len(self.args)
        self.num_optimization_profiles = len(self.profiles)
        self.device_memory_size_v2 = DEVICE_MEMORY

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return _TYPES[self.args[name].type]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(d if isinstance(d, int) else -1 for d in self.args[name].shape)

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple:
        shapes = self.profiles[index][name]
        return tuple(tuple(shapes[which]) for which in ("min", "opt", "max"))

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        return _Context(self, strategy)


class _Context:
    def __init__(self, engine: _Engine, strategy):
        self.engine = engine
        self.profile = 0
        self.user_managed = strategy == ExecutionContextAllocationStrategy.USER_MANAGED
        self.device_memory = None
        self.shapes = {n: engine.get_tensor_shape(n) for n in engine.inputs if -1 not in engine.get_tensor_shape(n)}
        self.addresses: dict[str, int] = {}
        self._inferred: dict[tuple, dict] = {}
        # host staging and callback per (shapes, addresses): reused by repeated runs, alive while graphs replay them
        self._runs: dict[tuple, tuple] = {}

    def set_optimization_profile_async(self, index: int, stream) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        return True

    def set_device_memory(self, pointer: int, size: int) -> None:
        if size < self.engine.device_memory_size_v2:
            raise ValueError(f"{size} bytes of context memory, the engine needs {self.engine.device_memory_size_v2}")
        self.device_memory = int(pointer)

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        declared = self.engine.get_tensor_shape(name) if name in self.engine.inputs else None
        if declared is None or len(shape) != len(declared):
            return False
        if any(d != -1 and d != s for d, s in zip(declared, shape)):
            return False
        if -1 in declared:
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            if not all(a <= s <= b for a, s, b in zip(low, shape, high)):
                return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        if name not in self.engine.args or not int(pointer):
            return False
        self.addresses[name] = int(pointer)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.inputs:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        if any(n not in self.shapes for n in self.engine.inputs):
            return self.engine.get_tensor_shape(name)  # depends on input shapes not set yet: -1
        key = tuple(self.shapes[n] for n in self.engine.inputs)
        if key not in self._inferred:  # TensorRT infers output shapes from input shapes; run on zeros once
            feed = {n: np.zeros(self.shapes[n], nptype(self.engine.get_tensor_dtype(n))) for n in self.engine.inputs}
            outputs = self.engine.session.run(self.engine.outputs, feed)
            self._inferred[key] = {n: v.shape for n, v in zip(self.engine.outputs, outputs)}
        return self._inferred[key][name]

    def execute_async_v3(self, stream) -> bool:
        engine = self.engine
        if any(n not in self.shapes for n in engine.inputs) or set(self.addresses) != set(engine.args):
            return False
        if self.user_managed and self.device_memory is None:
            return False
        cudart = runtime_api()
        if FAIL_WHILE_CAPTURING:
            status = check(cudart.cudaStreamIsCapturing(stream), "cudaStreamIsCapturing")
            if status != cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone:
                return False
        key = (tuple(self.shapes[n] for n in engine.inputs), tuple(sorted(self.addresses.items())))
        if key not in self._runs:
            self._runs[key] = self._staging()
        inputs, outputs, function, _ = self._runs[key]
        for name, staged in inputs.items():
            staged.copy(cudart, staged.pointer, self.addresses[name], "DeviceToHost", stream)
        _launch_host_func(stream, function)
        for name, staged in outputs.items():
            staged.copy(cudart, self.addresses[name], staged.pointer, "HostToDevice", stream)
        return True

    def _staging(self):
        engine = self.engine
        inputs = {n: _Pinned(self.shapes[n], nptype(engine.get_tensor_dtype(n))) for n in engine.inputs}
        outputs = {n: _Pinned(self.get_tensor_shape(n), nptype(engine.get_tensor_dtype(n))) for n in engine.outputs}

        def run(_):  # on CUDA's host-function thread, after the input copies (no CUDA calls allowed here)
            values = engine.session.run(engine.outputs, {n: staged.array for n, staged in inputs.items()})
            for name, value in zip(engine.outputs, values):
                outputs[name].array[...] = value

        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(run)
        return inputs, outputs, ctypes.cast(callback, ctypes.c_void_p), callback  # alive while graphs replay it


@functools.cache
def _cu_launch_host_func():
    function = ctypes.CDLL("libcuda.so.1").cuLaunchHostFunc
    function.argtypes, function.restype = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p), ctypes.c_int
    return function


def _launch_host_func(stream, function) -> None:
    """The driver's cuLaunchHostFunc, called directly: cuda-bindings' cudaLaunchHostFunc hands CUDA a wrapper of
    its own that does not survive its first call, so a host node captured into a graph broke from the graph's second
    replay on (a segfault on the H100; NVIDIA/cuda-python#790 reports the same)."""
    error = _cu_launch_host_func()(int(stream), function, None)
    if error:
        raise CudaError(f"cuLaunchHostFunc failed: CUresult {error}")


class _Pinned:
    """A pinned host array (what an asynchronous, capturable copy needs), freed when garbage collected."""

    def __init__(self, shape, dtype):
        self.cudart = runtime_api()
        self.nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        self.pointer = check(self.cudart.cudaMallocHost(max(1, self.nbytes)), "cudaMallocHost")
        raw = (ctypes.c_byte * max(1, self.nbytes)).from_address(int(self.pointer))
        self.array = np.frombuffer(raw, np.uint8)[: self.nbytes].view(dtype).reshape(shape)

    def copy(self, cudart, destination, source, kind: str, stream) -> None:
        if self.nbytes:
            direction = getattr(cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
            check(cudart.cudaMemcpyAsync(destination, source, self.nbytes, direction, stream), "cudaMemcpyAsync")

    def __del__(self):
        self.cudart.cudaFreeHost(self.pointer)
