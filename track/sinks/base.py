"""`QueuedSink`: the part every sink shares. The inspection loop must never wait for the plant network.

`send(event, counts)` only appends to a bounded queue and returns; a worker thread delivers. When the receiver is down
the queue fills; at `queue_size` the OLDEST event is dropped and counted (`stats()["dropped"]`): the loss is known
and reported, never silent, and the loop goes on. The counts themselves are never lost: every sink keeps the latest
`counts` apart from the queue and republishes them when its receiver comes back (MQTT's retained count, OPC UA's
counter variables), so a dashboard reads the right total after an outage even when events were dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from cseg.errors import CsegError, InvalidInputError

RETRY_S = (0.05, 1.0)  # the worker's wait between delivery attempts while the receiver is down: first, longest


class SinkError(CsegError):
    """A sink that cannot start at all (an OPC UA port already taken, an unwritable events file), or a receiver that
    is not reached when the caller asks to wait for it (MqttSink.wait_connected)."""


class QueuedSink:
    def __init__(self, url: str, queue_size: int = 1000):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidInputError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.url = url
        self._queue: deque = deque()
        self._size = queue_size
        self._ready = threading.Condition()
        self._stop = False
        self.counts: dict = {}
        self.sent = self.dropped = self.failures = 0
        self.last_error: str | None = None
        self._worker: threading.Thread | None = None

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name=f"cseg-sink {self.url}", daemon=True)
        self._worker.start()

    # --- what the loop calls: never blocks on the network -----------------------------------------------------------

    def send(self, event, counts: dict | None = None) -> None:
        with self._ready:
            if counts is not None:
                self.counts = dict(counts)
            if self._stop:
                self.dropped += 1
                return
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._ready.notify()

    def stats(self) -> dict:
        with self._ready:
            return {"url": self.url, "connected": self.connected(), "queued": len(self._queue), "sent": self.sent,
                    "dropped": self.dropped, "failures": self.failures, "last_error": self.last_error,
                    **self._extra_stats()}  # fmt: skip

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ready:
                if not self._queue and not self._busy():
                    return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> dict:
        """Deliver what is queued (up to `timeout` s), stop; events still queued then are counted as dropped."""
        self.flush(timeout)
        with self._ready:
            self._stop = True
            self.dropped += len(self._queue)
            self._queue.clear()
            self._ready.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        self._shutdown()
        return self.stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the worker --------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        wait = RETRY_S[0]
        while True:
            with self._ready:
                while not self._queue and not self._stop:
                    self._ready.wait(0.5)
                if self._stop:
                    return
                event, counts = self._queue[0], self.counts
            try:
                delivered = self._deliver(event, counts)
            except Exception as exc:  # a receiver's failure is reported in stats, never raised into the loop
                delivered = False
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            with self._ready:
                if delivered:
                    if self._queue and self._queue[0] is event:
                        self._queue.popleft()
                    else:  # send() dropped it as the oldest while it was being delivered: not lost after all
                        self.dropped -= 1
                    self.sent += 1
                    wait = RETRY_S[0]
                    continue
            time.sleep(wait)
            wait = min(wait * 2, RETRY_S[1])

    # --- what a sink implements ------------------------------------------------------------------------------------

    def _deliver(self, event, counts: dict) -> bool:
        """Deliver one event (True), or False when the receiver is not there now (it is retried later)."""
        raise NotImplementedError

    def connected(self) -> bool:
        return True

    def _busy(self) -> bool:
        return False

    def _extra_stats(self) -> dict:
        return {}

    def _shutdown(self) -> None:
        pass
