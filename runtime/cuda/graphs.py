"""CUDA streams and CUDA-graph capture/replay of work enqueued on one stream, with cuda-python (no torch, no TensorRT).

The TensorRT backend captures each engine's `execute_async_v3` once and replays it per token (decoder) or per frame
(SAM 3 decoder + concept head): one graph launch instead of hundreds of kernel launches from Python. Nothing here
knows about TensorRT; anything that enqueues work on a stream can be captured, so it is tested on any CUDA GPU.

    stream = Stream()
    work = CapturedWork(stream, lambda s: engine_context.execute_async_v3(s.handle))
    work.launch(); stream.synchronize()

A capture that fails, of any kind (work that cannot be captured, e.g. a synchronising call; an engine that refuses to
enqueue while the stream is capturing, as TensorRT may), falls back to enqueueing directly, with one warning, so a
loop keeps running, only slower.
"""

from __future__ import annotations

import warnings
from typing import Callable

from cseg.errors import CsegError


class CudaError(CsegError):
    """A CUDA call failed, or CUDA (cuda-python, a driver, a GPU) is not available on this machine."""


class CaptureError(CudaError):
    """Work could not be captured into a CUDA graph (it runs uncaptured instead)."""


def runtime_api():
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise CudaError(
            "cuda-python is not installed; install it with pip install 'cseg[tensorrt]' (needs an NVIDIA driver)"
        ) from None
    return runtime


def check(result, call: str = "CUDA call"):
    """Unwrap cuda-python's (error, *values) tuples; raise CudaError naming the call and CUDA's message."""
    cudart = runtime_api()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        message = cudart.cudaGetErrorString(error)[1]
        raise CudaError(f"{call} failed: {message.decode() if message else error} ({error!r})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """How many CUDA GPUs this process can use: 0 without cuda-python, a driver or a GPU (never raises)."""
    try:
        cudart = runtime_api()
    except CudaError:
        return 0
    error, count = cudart.cudaGetDeviceCount()
    return count if error == cudart.cudaError_t.cudaSuccess else 0


def why_unavailable() -> str | None:
    """None when a CUDA GPU can be used, else the reason in words (for messages and test skips)."""
    try:
        cudart = runtime_api()
    except CudaError as exc:
        return str(exc)
    error, count = cudart.cudaGetDeviceCount()
    if error == cudart.cudaError_t.cudaErrorInsufficientDriver:
        from cuda import bindings

        driver, runtime = cudart.cudaDriverGetVersion()[1], cudart.cudaRuntimeGetVersion()[1]
        return insufficient_driver(driver, runtime, bindings.__version__)
    if error != cudart.cudaError_t.cudaSuccess:
        return f"no usable CUDA driver/GPU: {cudart.cudaGetErrorString(error)[1].decode()}"
    return None if count else "no CUDA GPU found"


def insufficient_driver(driver: int, runtime: int, bindings: str) -> str:
    """Why CUDA reports an insufficient driver, in words: none at all, or one older than the installed cuda-bindings
    needs (cuda-bindings 13 on JetPack 6's CUDA 12.6 driver fails every call). Versions as CUDA encodes them."""

    def cuda(version: int) -> str:
        return f"{version // 1000}.{version % 1000 // 10}"

    if not driver:
        return f"no NVIDIA driver found (cuda-bindings {bindings}, built for CUDA {cuda(runtime)})"
    return (f"the NVIDIA driver supports CUDA {cuda(driver)}, but the installed cuda-bindings {bindings} is built for "
            f"CUDA {cuda(runtime)} and needs a CUDA {runtime // 1000} driver: with a CUDA 12 driver (JetPack 6) install pip install 'cseg[tensorrt]' (cuda-bindings "
            "<13); cuda-bindings 13 (pip install 'cseg[tensorrt-cu13]') needs a CUDA 13 (R580 or later) driver")  # fmt: skip


def device_identity(device: int = 0) -> dict:
    """What a TensorRT plan is bound to: the GPU's name and compute capability, and its SM count and memory (the
    Jetson Orin modules share name and compute capability; an AGX-built plan must not load on an NX)."""
    reason = why_unavailable()
    if reason:
        raise CudaError(reason)
    cudart = runtime_api()
    properties = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = properties.name.split(b"\0", 1)[0].decode() if isinstance(properties.name, bytes) else str(properties.name)
    return {"gpu": name, "compute_capability": [properties.major, properties.minor],
            "sm_count": properties.multiProcessorCount, "memory_gb": round(properties.totalGlobalMem / 1e9, 1)}  # fmt: skip


class Stream:
    """A non-blocking CUDA stream (does not synchronise with the legacy default stream)."""

    def __init__(self):
        reason = why_unavailable()
        if reason:
            raise CudaError(reason)
        self._cudart = runtime_api()
        self.handle = check(self._cudart.cudaStreamCreateWithFlags(self._cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")  # fmt: skip

    def synchronize(self) -> None:
        check(self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(self._cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None

    def __int__(self) -> int:
        return int(self.handle)


class CapturedWork:
    """The work `enqueue(stream)` puts on `stream`, captured into a CUDA graph once and replayed by `launch()`.

    Replay reuses the kernels' arguments as they were at capture: inputs and outputs must stay at the same device
    addresses (copy new data into them, do not reallocate). After changing the work itself, call `update()`.
    `warmup` runs the work once uncaptured first: libraries (TensorRT included) allocate lazily on a first run, and
    allocation is not allowed during capture.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[Stream], object], *, warmup: bool = True):
        self.stream = stream
        self.enqueue = enqueue
        self._cudart = stream._cudart
        self._exec = None
        self.fallback_reason: str | None = None
        if warmup:
            enqueue(stream)
            stream.synchronize()
        try:
            graph = self._capture()
            try:
                self._exec = check(self._cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            finally:
                check(self._cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        except CudaError as exc:  # CaptureError included
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        """Enqueue directly from now on; warned once (per captured work: its owner keeps it, fallback and all)."""
        self.fallback_reason = str(exc)
        warnings.warn(f"CUDA-graph capture failed, enqueueing directly instead (slower): {exc}", stacklevel=3)

    @property
    def captured(self) -> bool:
        return self._exec is not None

    def _capture(self):
        """The captured graph, or CaptureError after ending the capture (the stream stays usable), destroying what
        it captured (no leak) and clearing the error an invalidated capture leaves behind."""
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(self.stream.handle, mode), "cudaStreamBeginCapture")
        try:
            self.enqueue(self.stream)
        except BaseException as exc:
            self._discard_capture()
            if isinstance(exc, CsegError):  # e.g. EngineError: TensorRT's enqueue returned False while capturing
                raise CaptureError(f"capture failed: {exc}") from exc
            raise
        error, graph = cudart.cudaStreamEndCapture(self.stream.handle)
        if error != cudart.cudaError_t.cudaSuccess:
            self._discard(graph)
            raise CaptureError(f"capture (cudaStreamEndCapture) failed: {cudart.cudaGetErrorString(error)[1].decode()}")
        return graph

    def _discard_capture(self) -> None:
        self._discard(self._cudart.cudaStreamEndCapture(self.stream.handle)[1])

    def _discard(self, graph) -> None:
        if graph is not None and int(graph):
            self._cudart.cudaGraphDestroy(graph)
        self._cudart.cudaGetLastError()  # the capture's error must not surface in the next, unrelated CUDA call

    def launch(self) -> None:
        """Enqueue one replay on the stream (asynchronous: synchronise the stream before reading results)."""
        if self._exec is None:
            self.enqueue(self.stream)
        else:
            check(self._cudart.cudaGraphLaunch(self._exec, self.stream.handle), "cudaGraphLaunch")

    def update(self) -> None:
        """Re-capture `enqueue` and update the executable graph in place; re-instantiate if CUDA refuses the update
        (a different topology, e.g. another kernel count)."""
        if self._exec is None:
            return
        cudart = self._cudart
        try:
            graph = self._capture()
        except CaptureError as exc:
            self.close()
            self._fall_back(exc)
            return
        try:
            error, _ = cudart.cudaGraphExecUpdate(self._exec, graph)
            if error != cudart.cudaError_t.cudaSuccess:
                cudart.cudaGetLastError()
                check(cudart.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
                self._exec = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def close(self) -> None:
        if self._exec is not None:
            check(self._cudart.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
