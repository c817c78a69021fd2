"""The CUDA-graph utility (runtime/cuda/graphs.py) and device arrays, on any CUDA GPU; no TensorRT involved.

The work captured is a chain of small NVRTC-compiled kernels (x = x * a + b), launched with cuda-python's driver API
on the utility's stream: the situation of a decode step, where launch overhead dominates.
"""

from __future__ import annotations

import ctypes
import statistics
import time
import warnings

import numpy as np
import pytest

from cseg.runtime.cuda.graphs import CapturedWork, CudaError, Stream, check, runtime_api, why_unavailable

NO_GPU = why_unavailable()
gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA GPU: {NO_GPU}")

AFFINE = b"""
extern "C" __global__ void affine(float *x, float a, float b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * a + b;
}
"""
N = 4096
CHAIN = 64  # kernels per captured chain


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_utility_says_why():
    assert isinstance(NO_GPU, str) and NO_GPU
    with pytest.raises(CudaError, match="cuda|CUDA"):
        Stream()


@pytest.fixture(scope="module")
def affine_kernel():
    from cuda.bindings import driver, nvrtc

    cudart = runtime_api()
    check(cudart.cudaSetDevice(0), "cudaSetDevice")  # makes the primary context current for the driver API
    major = check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, 0))
    minor = check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, 0))
    program = _nvrtc(nvrtc.nvrtcCreateProgram(AFFINE, b"affine.cu", 0, [], []))
    options = [f"--gpu-architecture=compute_{major}{minor}".encode()]
    (error,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    if error != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        size = _nvrtc(nvrtc.nvrtcGetProgramLogSize(program))
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        raise AssertionError(log.decode())
    ptx = b" " * _nvrtc(nvrtc.nvrtcGetPTXSize(program))
    _nvrtc(nvrtc.nvrtcGetPTX(program, ptx))
    module = _driver(driver.cuModuleLoadData(ptx))
    return _driver(driver.cuModuleGetFunction(module, b"affine"))


def _nvrtc(result):
    from cuda.bindings import nvrtc

    error, *values = result
    assert error == nvrtc.nvrtcResult.NVRTC_SUCCESS, error
    return values[0] if values else None


def _driver(result):
    from cuda.bindings import driver

    error, *values = result
    assert error == driver.CUresult.CUDA_SUCCESS, error
    return values[0] if values else None


def _chain(kernel, array, coefficients):
    """enqueue(stream) launching one affine kernel per (a, b), in order, on the array's device memory."""
    from cuda.bindings import driver

    def enqueue(stream):
        for a, b in coefficients:
            arguments = ((int(array.pointer), a, b, N), (ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_int))
            _driver(driver.cuLaunchKernel(kernel, (N + 255) // 256, 1, 1, 256, 1, 1, 0, stream.handle, arguments, 0))

    return enqueue


def _coefficients(seed):
    rng = np.random.default_rng(seed)
    return [(float(a), float(b)) for a, b in rng.uniform(0.9, 1.1, size=(CHAIN, 2))]


class _HostMemoryRuntime:
    """cudaMalloc/cudaMallocHost handing out host memory that holds NaN, as reused device memory may."""

    def __init__(self):
        from cuda.bindings import runtime

        self.success, self.blocks = runtime.cudaError_t.cudaSuccess, []

    def cudaMalloc(self, nbytes):
        block = np.full(nbytes // 4 + 1, np.nan, np.float32)
        self.blocks.append(block)
        return self.success, block.ctypes.data

    cudaMallocHost = cudaMalloc

    def cudaMemset(self, pointer, value, nbytes):
        ctypes.memset(pointer, value, nbytes)
        return (self.success,)


def test_device_arrays_start_zeroed(monkeypatch):
    """The KV cache's unwritten rows are read (masked) by every static decode step: they must not hold NaN."""
    from cseg.runtime.cuda import buffers as cuda_buffers

    cudart = _HostMemoryRuntime()
    monkeypatch.setattr(cuda_buffers, "runtime_api", lambda: cudart)
    array = cuda_buffers.DeviceArray((3, 5), np.float16)
    device = np.frombuffer((ctypes.c_byte * array.nbytes).from_address(int(array.pointer)), np.float16)
    assert not array.host.any() and not device.any()


@gpu
def test_device_arrays_start_zeroed_where_freed_memory_held_nan():
    from cseg.runtime.cuda.buffers import DeviceArray

    stream = Stream()
    for _ in range(2):
        array = DeviceArray((N,), np.float32)
        assert not array.download(stream).any()
        array.upload(np.full(N, np.nan, np.float32), stream)
        stream.synchronize()
        array.close()
    stream.close()


@pytest.fixture()
def device_array():
    from cseg.runtime.cuda.buffers import DeviceArray

    array = DeviceArray((N,), np.float32)
    yield array
    array.close()


@gpu
def test_replay_gives_the_results_of_direct_enqueue(affine_kernel, device_array):
    stream = Stream()
    start = np.linspace(-1, 1, N, dtype=np.float32)
    enqueue = _chain(affine_kernel, device_array, _coefficients(0))
    repeats = 5

    device_array.upload(start, stream)
    for _ in range(repeats):
        enqueue(stream)
    direct = device_array.download(stream)

    device_array.upload(start, stream)
    work = CapturedWork(stream, enqueue, warmup=False)
    assert work.captured
    for _ in range(repeats):
        work.launch()
    replayed = device_array.download(stream)
    np.testing.assert_array_equal(replayed, direct)  # same kernels, same order: bit-identical

    expected = start.astype(np.float64)
    for _ in range(repeats):
        for a, b in _coefficients(0):
            expected = expected * a + b
    np.testing.assert_allclose(replayed, expected, rtol=1e-4, atol=1e-4)
    work.close()
    stream.close()


@gpu
def test_update_replays_the_new_work(affine_kernel, device_array):
    stream = Stream()
    start = np.ones(N, np.float32)
    coefficients = _coefficients(1)
    work = CapturedWork(stream, _chain(affine_kernel, device_array, coefficients), warmup=False)
    coefficients[:] = _coefficients(2)  # the same kernels with other arguments: updated in place
    work.update()
    device_array.upload(start, stream)
    work.launch()
    updated = device_array.download(stream)

    device_array.upload(start, stream)
    _chain(affine_kernel, device_array, _coefficients(2))(stream)
    np.testing.assert_array_equal(updated, device_array.download(stream))
    work.close()
    stream.close()


@gpu
def test_work_that_cannot_be_captured_falls_back_to_direct_enqueue(affine_kernel, device_array):
    stream = Stream()
    chain = _chain(affine_kernel, device_array, _coefficients(3))

    def synchronising(s):  # a stream synchronisation is not allowed inside a capture
        chain(s)
        s.synchronize()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work = CapturedWork(stream, synchronising, warmup=False)
    assert not work.captured and "capture failed" in str(caught[0].message)
    start = np.full(N, 0.5, np.float32)
    device_array.upload(start, stream)
    work.launch()
    fallback = device_array.download(stream)
    device_array.upload(start, stream)
    chain(stream)
    np.testing.assert_array_equal(fallback, device_array.download(stream))
    stream.close()


@gpu
def test_replay_is_faster_than_enqueue_for_a_chain_of_small_kernels(affine_kernel, device_array):
    stream = Stream()
    enqueue = _chain(affine_kernel, device_array, _coefficients(4))
    work = CapturedWork(stream, enqueue)

    def timed(run, rounds=20):
        stream.synchronize()
        began = time.perf_counter()
        for _ in range(rounds):
            run()
        stream.synchronize()
        return (time.perf_counter() - began) / rounds

    direct = statistics.median(timed(lambda: enqueue(stream)) for _ in range(7))
    replay = statistics.median(timed(work.launch) for _ in range(7))
    print(f"\nchain of {CHAIN} kernels: enqueue {direct * 1e6:.1f} us, replay {replay * 1e6:.1f} us, "
          f"ratio {direct / replay:.1f}x")  # fmt: skip
    assert replay < direct
    work.close()
    stream.close()


class _FakeRuntime:
    """The CUDA runtime calls CapturedWork makes, recorded, with CUDA's results (no GPU needed): `invalidate` makes
    cudaStreamEndCapture fail as after an unsupported call during capture."""

    def __init__(self, invalidate: bool = False):
        from cuda.bindings import runtime

        self.cudaError_t, self.cudaStreamCaptureMode = runtime.cudaError_t, runtime.cudaStreamCaptureMode
        self.cudaGetErrorString = runtime.cudaGetErrorString
        self.invalidate, self.capturing, self.calls = invalidate, False, []
        self.graphs, self.destroyed = [], []

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = True
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        self.capturing = False
        if self.invalidate:
            return self.cudaError_t.cudaErrorStreamCaptureInvalidated, None
        self.graphs.append(100 + len(self.graphs))
        return self._ok(self.graphs[-1])

    def cudaGraphDestroy(self, graph):
        self.destroyed.append(graph)
        return self._ok()

    def cudaGraphInstantiate(self, graph, flags):
        return self._ok(7)

    def cudaGetLastError(self):
        self.calls.append("cudaGetLastError")
        return self._ok()


class _FakeStream:
    handle = 1

    def __init__(self, cudart):
        self._cudart = cudart

    def synchronize(self):
        pass


@pytest.mark.parametrize("how", ["engine refuses while capturing", "capture invalidated"])
def test_a_failed_capture_of_any_kind_falls_back_once_without_leaking_the_graph(how):
    """TensorRT's execute_async_v3 may return False while the stream is capturing (cseg raises EngineError then), and
    a capture can be invalidated: either way capture ends, its graph is destroyed, the error is cleared, one warning
    is given, and the work is enqueued directly from then on."""
    from cseg.errors import EngineError

    cudart = _FakeRuntime(invalidate=how == "capture invalidated")
    enqueued = []

    def enqueue(stream):
        if cudart.capturing and how == "engine refuses while capturing":
            raise EngineError("TensorRT could not enqueue vlm_decoder")
        enqueued.append(cudart.capturing)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work = CapturedWork(_FakeStream(cudart), enqueue)
        work.launch()
        work.launch()
    assert not work.captured and [str(w.message) for w in caught if "capture failed" in str(w.message)] == [
        f"CUDA-graph capture failed, enqueueing directly instead (slower): {work.fallback_reason}"]
    assert sorted(cudart.destroyed) == cudart.graphs  # every graph a capture returned is destroyed
    assert "cudaGetLastError" in cudart.calls and not cudart.capturing
    assert enqueued == [False, False, False] if how == "engine refuses while capturing" else enqueued[-2:] == [False, False]


def test_an_insufficient_driver_is_named_with_the_versions_and_the_fix():
    from cseg.runtime.cuda.graphs import insufficient_driver

    jetpack6 = insufficient_driver(12060, 13050, "13.5.0")
    assert jetpack6.startswith("the NVIDIA driver supports CUDA 12.6, but the installed cuda-bindings 13.5.0 is built "
                               "for CUDA 13.5 and needs a CUDA 13 driver")  # fmt: skip
    assert "'cseg[tensorrt]' (cuda-bindings <13)" in jetpack6 and "cseg[tensorrt-cu13]" in jetpack6
    assert insufficient_driver(0, 12090, "12.9.0") == "no NVIDIA driver found (cuda-bindings 12.9.0, built for CUDA 12.9)"
    if NO_GPU is not None and "driver" in NO_GPU:  # this machine: the reason names what is installed
        from cuda import bindings

        assert f"cuda-bindings {bindings.__version__}" in NO_GPU
