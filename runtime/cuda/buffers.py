"""Device arrays with a pinned host mirror, allocated once and reused for every request (cuda-python, no torch).

Engines read and write fixed device addresses (which is what lets CUDA graphs replay them): a DeviceArray is
allocated at its largest shape once; each request copies its data in and out asynchronously on the request's stream
through the pinned mirror, and views of the first elements serve smaller shapes.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from cseg.runtime.cuda.graphs import Stream, check, runtime_api


class DeviceArray:
    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = max(1, math.prod(self.shape) * self.dtype.itemsize)
        self._cudart = runtime_api()
        self.pointer = check(self._cudart.cudaMalloc(self.nbytes), "cudaMalloc")
        self.host_pointer = check(self._cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        # Both start zeroed: a static decode step reads the whole KV cache, masked rows included, and a NaN bit
        # pattern left there by reused memory turns a masked-out position (weight 0 x NaN) into a NaN output.
        check(self._cudart.cudaMemset(self.pointer, 0, self.nbytes), "cudaMemset")
        ctypes.memset(int(self.host_pointer), 0, self.nbytes)
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_pointer))
        self.host = np.frombuffer(raw, dtype=np.uint8)[: math.prod(self.shape) * self.dtype.itemsize]
        self.host = self.host.view(self.dtype).reshape(self.shape)

    def upload(self, array: np.ndarray, stream: Stream) -> tuple[int, ...]:
        """Copy `array` (any shape that fits) to the start of the device allocation; returns its shape."""
        array = self.stage(array)
        self.push(stream, array.nbytes)
        return array.shape

    def stage(self, array: np.ndarray) -> np.ndarray:
        """Write `array` into the start of the pinned mirror (no copy to the device yet); returns it as written."""
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.size > self.host.size:
            raise ValueError(f"{array.shape} does not fit a device array allocated for {self.shape}")
        self.host.reshape(-1)[: array.size] = array.reshape(-1)
        return array

    def push(self, stream: Stream, nbytes: int | None = None) -> None:
        """Enqueue the copy of the pinned mirror's first `nbytes` (default: all) to the device. Capturable: a
        replayed graph copies whatever the mirror holds at replay time (fill `host` first)."""
        self._copy(self.pointer, self.host_pointer, self.nbytes if nbytes is None else nbytes, "HostToDevice", stream)

    def pull(self, stream: Stream, nbytes: int | None = None) -> None:
        """Enqueue the copy of the device's first `nbytes` (default: all) into the pinned mirror (capturable; read
        `host` after synchronising the stream)."""
        self._copy(self.host_pointer, self.pointer, self.nbytes if nbytes is None else nbytes, "DeviceToHost", stream)

    def host_view(self, shape) -> np.ndarray:
        """The mirror's first prod(shape) elements as an array of `shape` (no copy)."""
        return self.host.reshape(-1)[: math.prod(shape)].reshape(shape)

    def download(self, stream: Stream, shape=None) -> np.ndarray:
        """Copy the first prod(shape) elements back (default: all) and return them as a new array, after syncing."""
        shape = self.shape if shape is None else tuple(shape)
        self.pull(stream, math.prod(shape) * self.dtype.itemsize)
        stream.synchronize()
        return self.host_view(shape).copy()

    def _copy(self, destination, source, nbytes: int, kind: str, stream: Stream) -> None:
        direction = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        check(self._cudart.cudaMemcpyAsync(destination, source, nbytes, direction, stream.handle), "cudaMemcpyAsync")

    def close(self) -> None:
        if self.pointer is not None:
            self.host = None
            check(self._cudart.cudaFree(self.pointer), "cudaFree")
            check(self._cudart.cudaFreeHost(self.host_pointer), "cudaFreeHost")
            self.pointer = None
