"""The host path's CUDA kernels (runtime/kernels/host_path.cu, built into cseg_kernels.fatbin by CMakeLists.txt),
loaded with cuda-python's driver API and launched on a caller's stream. No torch, no CUDA at link time.

The kernels compute what cseg.runtime.native computes on the CPU, bit for bit (one definition: kernels/resample.h):
    preprocess          uint8 HxWx3 frame on the device -> SAM 3 input [1, 3, size, size] float32, in one pass
    upsample_threshold  [K, h, w] mask logits -> [K, H, W] uint8 0/1 (bilinear or bicubic), skipping masks at or
                        below a score threshold
Launches are plain enqueues, so they can be captured into a CUDA graph with the engines around them.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from cseg.errors import EngineError
from cseg.runtime.cuda.graphs import Stream, check, runtime_api

FATBIN_NAME = "cseg_kernels.fatbin"
BLOCK = (32, 8)  # threads per block along output x, y: rows are written coalesced
REBUILD = ("reinstall cseg from its source on this machine with the CUDA toolkit's nvcc on PATH (or CUDA_HOME set): "
           "`pip install --force-reinstall --no-deps ./cseg-checkout` (its install builds the kernels for this GPU)")


def fatbin_path() -> Path:
    """Where the build put the fatbin: beside the CPU module."""
    from cseg.runtime import native

    return Path(native.__file__).with_name(FATBIN_NAME)


def _driver(result, call: str):
    from cuda.bindings import driver

    error, *values = result
    if error != driver.CUresult.CUDA_SUCCESS:
        name = driver.cuGetErrorName(error)[1]
        raise EngineError(f"{call} failed: {name.decode() if name else error}")
    return values[0] if values else None


class HostPathKernels:
    """The fatbin loaded into the current device's primary context (once per process, kept while it runs)."""

    def __init__(self, path: Path | None = None):
        from cuda.bindings import driver

        path = Path(path or fatbin_path())
        if not path.is_file():
            raise EngineError(f"the CUDA kernels of cseg's host path ({path}) were not built: {REBUILD}")
        cudart = runtime_api()
        check(cudart.cudaFree(0), "cudaFree(0)")  # makes the runtime's primary context current for the driver API
        try:
            self._module = _driver(driver.cuModuleLoadData(path.read_bytes()), f"loading {path.name}")
        except EngineError as exc:
            # typically CUDA_ERROR_NO_BINARY_FOR_GPU, or a fatbin from a newer CUDA than the driver (JetPack 6)
            raise EngineError(f"{exc}: the fatbin does not load on this GPU/driver; {REBUILD}") from None
        self._preprocess = _driver(driver.cuModuleGetFunction(self._module, b"cseg_preprocess"), "cuModuleGetFunction")
        self._upsample = _driver(driver.cuModuleGetFunction(self._module, b"cseg_upsample_threshold"),
                                 "cuModuleGetFunction")  # fmt: skip

    def preprocess(self, stream: Stream, frame: int, height: int, width: int, strides: tuple[int, int, int],
                   bgr: bool, out: int, size: int, mean, std) -> None:  # fmt: skip
        """frame: device pointer of HxWx3 uint8 with element strides; out: device pointer of [3, size, size] float32."""
        values = (int(frame), height, width, *strides, int(bgr), int(out), size, *map(float, mean), *map(float, std))
        types = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, *[ctypes.c_longlong] * 3, ctypes.c_int,
                 ctypes.c_void_p, ctypes.c_int, *[ctypes.c_float] * 6)  # fmt: skip
        self._launch(self._preprocess, (size, size, 1), stream, values, types)

    def upsample_threshold(self, stream: Stream, logits: int, count: int, height: int, width: int, out: int,
                           out_height: int, out_width: int, scores: int = 0, threshold: float = 0.0,
                           bicubic: bool = False) -> None:  # fmt: skip
        """logits: device [count, height, width] float32; out: device [count, out_height, out_width] uint8.
        With `scores` (device [count] float32), masks scoring at or below `threshold` are left unwritten;
        `bicubic`: cv2's INTER_CUBIC instead of torch's bilinear."""
        values = (int(logits), height, width, int(scores), float(threshold), int(out), out_height, out_width,
                  int(bicubic))  # fmt: skip
        types = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p,
                 ctypes.c_int, ctypes.c_int, ctypes.c_int)  # fmt: skip
        self._launch(self._upsample, (out_width, out_height, count), stream, values, types)

    @staticmethod
    def _launch(function, extent: tuple[int, int, int], stream: Stream, values, types) -> None:
        from cuda.bindings import driver

        grid = (-(-extent[0] // BLOCK[0]), -(-extent[1] // BLOCK[1]), extent[2])
        if 0 in grid:
            return
        _driver(driver.cuLaunchKernel(function, *grid, *BLOCK, 1, 0, stream.handle, (values, types), 0),
                "cuLaunchKernel")  # fmt: skip


@functools.cache
def kernels() -> HostPathKernels:
    """The process's one loaded copy of the kernels."""
    return HostPathKernels()
