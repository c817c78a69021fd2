"""A test double of the `tensorrt` module, to exercise cseg's TensorRT runtime (runtime/tensorrt_graphs.py) on a
CUDA GPU where TensorRT itself cannot be installed.

Its "engines" run the bundle's ONNX graph with ONNX Runtime on host copies of the device buffers cseg binds. So
everything of cseg's is real (device buffers, profiles and contexts, tensor addresses, the device KV cache written
in place by the prefill and row by row by the decode steps, the static decode step's mask, output ordering, the
CUDA-graph attempt and its fallback); only the kernels are not TensorRT's. Because it copies synchronously it cannot
be captured into a CUDA graph: with it, every capture takes the fallback path (a warning), which the tests expect.
A "plan" is a JSON file naming the ONNX file.
"""

from __future__ import annotations

import json
from enum import Enum

import numpy as np
import onnxruntime as ort

from cseg.runtime.cuda_graphs import check, runtime_api

__version__ = "0.0.0-double"
_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


class Logger:
    WARNING = 2

    def __init__(self, level=None):
        self.level = level


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


def nptype(dtype):
    return dtype  # this double's "DataType" is the numpy dtype itself


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes):
        return _Engine(json.loads(plan)["onnx"])


class _Engine:
    def __init__(self, onnx_path: str):
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.args = {t.name: t for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.inputs = [t.name for t in self.session.get_inputs()]
        self.outputs = [t.name for t in self.session.get_outputs()]
        self.num_io_tensors = len(self.args)

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return np.dtype(_TYPES[self.args[name].type])

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(d if isinstance(d, int) else -1 for d in self.args[name].shape)

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine = engine
        self.shapes = {n: engine.get_tensor_shape(n) for n in engine.inputs if -1 not in engine.get_tensor_shape(n)}
        self.addresses: dict[str, int] = {}
        self.output_shapes: dict[str, tuple] = {}
        self.cudart = runtime_api()

    def set_optimization_profile_async(self, index: int, stream) -> bool:
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        self.output_shapes = {}
        return True

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = int(pointer)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        if name not in self.output_shapes:  # TensorRT infers output shapes from input shapes; run on zeros
            feed = {n: np.zeros(self.shapes[n], self.engine.get_tensor_dtype(n)) for n in self.engine.inputs}
            outputs = self.engine.session.run(self.engine.outputs, feed)
            self.output_shapes = {n: v.shape for n, v in zip(self.engine.outputs, outputs)}
        return self.output_shapes[name]

    def execute_async_v3(self, stream) -> bool:
        cudart = self.cudart
        check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")  # refused while capturing: fallback
        feed = {}
        for name in self.engine.inputs:
            value = np.empty(self.shapes[name], self.engine.get_tensor_dtype(name))
            if value.nbytes:
                check(cudart.cudaMemcpy(value.ctypes.data, self.addresses[name], value.nbytes,
                                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy")  # fmt: skip
            feed[name] = value
        outputs = self.engine.session.run(self.engine.outputs, feed)
        for name, value in zip(self.engine.outputs, outputs):
            value = np.ascontiguousarray(value)
            self.output_shapes[name] = value.shape
            if value.nbytes:
                check(cudart.cudaMemcpy(self.addresses[name], value.ctypes.data, value.nbytes,
                                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")  # fmt: skip
        return True
