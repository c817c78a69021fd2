"""Memory a serving process tree no longer uses, handed back to the system.

Measured on the tiny bundle (benchmarks/serve_footprint.py): opening the Runtime leaves ~58 MB of freed C heap in the
`cseg serve` process (ONNX Runtime's session creation: model protos, optimiser copies), and 1080p requests grow it
more; glibc's malloc keeps freed pages for reuse and returns them only at the top of the heap. `IdleTrim` calls
`malloc_trim(0)`, which returns every free page, once the server has been idle `after_s` seconds after start or after
its last request, from a daemon thread: never on a request's path (a trim walks the heap: milliseconds), never while
one runs. `bound_child_heaps` keeps frame-sized buffers out of the heaps of Triton's processes. Both no-ops where the
C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time

log = logging.getLogger("cseg.serve")


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


# glibc serves an allocation above its mmap threshold with its own mapping, returned to the system when freed; below
# it, from the heap, kept for reuse. The threshold starts at 128 KB but rises to the largest block freed so far (up to
# 32 MB), so after the first 1080p frame (6 MB) every frame-sized buffer stays in the heap. Triton's processes (the
# server, its Python stubs, PyTriton's tensor stores) only copy frames and answers: there a fixed threshold of 1 MB
# (which also stops the rise) hands them back. Not in the `cseg serve` process: there it cost 4% of a frame's time
# (ONNX Runtime's activations mapped and faulted in on every run: 1016-1020 vs 973 ms per request), and IdleTrim
# returns its heap when idle.
MMAP_THRESHOLD = 1 << 20


def bound_child_heaps() -> None:
    """Frame-sized buffers mapped, not kept in the heap, in every process started from now on (tritonserver, its
    stubs, PyTriton's tensor stores: glibc reads MALLOC_MMAP_THRESHOLD_ at a process's start). A threshold the
    environment sets already is left as it is."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))


class IdleTrim:
    """`release`: callables run on every tick (after_s / 4), busy or not, that let go of what no request holds any
    more (SharedFrames.sweep: the mapping of a region its client has unlinked)."""

    def __init__(self, after_s: float = 5.0, release=()):
        self.after_s = float(after_s)
        self.trims = 0  # how many times the heap was trimmed (tests, logs)
        self._trim, self._release = _malloc_trim(), tuple(release)
        self._lock = threading.Lock()
        self._active, self._last, self._dirty = 0, time.monotonic(), True
        if self._trim is not None or self._release:
            threading.Thread(target=self._run, name="cseg-idle-trim", daemon=True).start()

    def watch(self, infer):
        """`infer` (a PyTriton infer function) counted as activity: no trim while it runs, the idle time from its end."""

        @functools.wraps(infer)
        def watched(requests):
            with self._lock:
                self._active += 1
            try:
                return infer(requests)
            finally:
                with self._lock:
                    self._active -= 1
                    self._last, self._dirty = time.monotonic(), True

        return watched

    def _run(self) -> None:
        while True:
            time.sleep(self.after_s / 4)
            for release in self._release:
                release()
            with self._lock:
                due = self._dirty and self._active == 0 and time.monotonic() - self._last >= self.after_s
                if due:
                    self._dirty = False
            if due and self._trim is not None:
                self._trim(0)
                self.trims += 1
                log.debug("idle: freed C heap returned to the system (malloc_trim)")
