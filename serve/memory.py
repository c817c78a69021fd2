"""Memory a serving process no longer uses, handed back to the system once it is idle.

Measured on the tiny bundle (benchmarks/serve_footprint.py): opening the Runtime leaves ~58 MB of freed C heap in the
`cseg serve` process (ONNX Runtime's session creation: model protos, optimiser copies), and 20 requests of 1080p
frames grow it by ~130 MB more; glibc's malloc keeps freed pages for reuse and returns them only at the top of the
heap. `malloc_trim(0)` returns every free page. It is called once the server has been idle `after_s` seconds after
start or after its last request, by a daemon thread: never on a request's path (a trim walks the heap: milliseconds),
never while one runs. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
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


class IdleTrim:
    def __init__(self, after_s: float = 5.0):
        self.after_s = float(after_s)
        self.trims = 0  # how many times the heap was trimmed (tests, logs)
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._active, self._last, self._dirty = 0, time.monotonic(), True
        if self._trim is not None:
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
            with self._lock:
                due = self._dirty and self._active == 0 and time.monotonic() - self._last >= self.after_s
                if due:
                    self._dirty = False
            if due:
                self._trim(0)
                self.trims += 1
                log.debug("idle: freed C heap returned to the system (malloc_trim)")
