"""Frames to a `cseg serve` on the same host through Triton's system shared memory instead of inside the gRPC message.

Why: a 1080p frame is 6.2 MB; carried in the gRPC message it is copied by the client's serialisation, by gRPC on both
sides and by Triton's request parsing, and those copies were most of what serving added to a call (on the 2-core
EPYC, loaded: an empty model answered a 1080p frame in 33 ms by gRPC bytes, 13 ms from shared memory, 8.5 ms for an
8x8 frame). With shared memory the client writes the frame once into a region the server has mapped (Triton's
`register_system_shared_memory`) and the request carries only the region's name.

Each calling thread has its own region (a request is synchronous: the region is free again when it returns), grown
when a larger frame comes. The server must allow it (`cseg serve` does on loopback; elsewhere --shared-memory) and
must see this host's /dev/shm: where it does not (a remote host, a container with its own /dev/shm, an older server),
registration fails once, the reason is kept in `disabled` and frames go in the message as before.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref

log = logging.getLogger("cseg.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# below this the message copies cost less than the region write + its bookkeeping: prompts, rule ids, small frames
MIN_BYTES = 1 << 18
_ROUND = 1 << 20  # regions grow in whole MiB: frames of one camera vary little, a region is not remade per frame


def is_local(url: str) -> bool:
    """Whether `url` (host:port) names this host's loopback, where client and server share /dev/shm."""
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    return host in LOCAL_HOSTS


class FrameRegions:
    """Per-thread shared-memory regions for frames, registered with the server lazily (again after a reconnect)."""

    def __init__(self):
        self._prefix = f"cseg-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._regions: dict[str, tuple] = {}  # name -> (tritonclient handle, size)
        self._registered: set[str] = set()  # names the server has, as far as this channel knows
        self.disabled: str | None = None  # why frames go in the message (None: they go through shared memory)
        self._finalizer = weakref.finalize(self, _destroy, self._regions)  # a dropped RemoteRuntime frees /dev/shm

    def place(self, client, value):
        """`value` (a contiguous array) written into this thread's region, registered with `client`'s server ->
        (region name, byte size) for InferInput.set_shared_memory; None where frames go in the message. A transport
        failure (server down) is raised as it is: the caller reports it like any other."""
        from tritonclient.utils import InferenceServerException

        if self.disabled is not None or value.nbytes < MIN_BYTES:
            return None
        try:
            import tritonclient.utils.shared_memory as shm

            name = self._region(client, shm, value.nbytes)
            if name not in self._registered:
                self._register(client, name)
            shm.set_shared_memory_region(self._regions[name][0], [value])
        except InferenceServerException as exc:
            if _transport(exc):
                raise
            self._disable(f"the server refused shared memory: {exc.message()}")
            return None
        except Exception as exc:  # no /dev/shm, no libcshm, out of space: the message path still works
            self._disable(f"shared memory is not available here: {exc!r}")
            return None
        return name, value.nbytes

    def forget(self) -> None:
        """The channel was dropped: the server (maybe restarted) is asked again before a region is used."""
        with self._lock:
            self._registered.clear()

    def close(self, client=None) -> None:
        """Unregister (best effort: the server may be gone) and free every region; a later call makes a new one."""
        if client is not None:
            for name in list(self._registered):
                try:
                    client.unregister_system_shared_memory(name)
                except Exception:  # a server that is down has forgotten it anyway
                    pass
        self.forget()
        with self._lock:
            _destroy(self._regions)

    def _region(self, client, shm, nbytes: int) -> str:
        name = getattr(self._local, "name", None)
        if name not in self._regions:  # none yet in this thread, or freed by close()
            name = None
        if name is not None and self._regions[name][1] >= nbytes:
            return name
        if name is not None:  # outgrown: the server lets go of it before it is unlinked
            self._release(client, shm, name)
        name = f"{self._prefix}-{threading.get_ident()}-{uuid.uuid4().hex[:6]}"
        size = -(-nbytes // _ROUND) * _ROUND
        handle = shm.create_shared_memory_region(name, "/" + name, size, create_only=True)
        with self._lock:
            self._regions[name] = (handle, size)
        self._local.name = name
        return name

    def _release(self, client, shm, name: str) -> None:
        from tritonclient.utils import InferenceServerException

        with self._lock:
            handle, _ = self._regions.pop(name)
            registered = name in self._registered
            self._registered.discard(name)
        if registered:
            try:
                client.unregister_system_shared_memory(name)
            except InferenceServerException:  # a restarted server never had it
                pass
        shm.destroy_shared_memory_region(handle)

    def _register(self, client, name: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            client.register_system_shared_memory(name, "/" + name, self._regions[name][1])
        except InferenceServerException as exc:
            if "already" not in str(exc):  # registered before a dropped channel: the server still has it
                raise
        with self._lock:
            self._registered.add(name)

    def _disable(self, reason: str) -> None:
        if self.disabled is None:
            log.info("frames go in the gRPC message: %s", reason)
        self.disabled = reason


def _transport(exc) -> bool:
    """Whether an InferenceServerException is the server being unreachable (not a refusal of shared memory)."""
    status = str(exc.status() or "")
    return ("UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status) and "restricted" not in str(exc.message())


def _destroy(regions: dict) -> None:
    import tritonclient.utils.shared_memory as shm

    for handle, _ in list(regions.values()):
        try:
            shm.destroy_shared_memory_region(handle)
        except Exception:  # already unlinked
            pass
    regions.clear()
