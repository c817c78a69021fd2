"""Frames to a `cseg serve` (or an export-triton tritonserver) on the same host by reference: the client writes the
frame into a POSIX shared-memory object of its own and the request carries only its name and shape (`image_ref`,
cseg.serve.contract); the server maps the object read-only and the Runtime reads the pixels where the client wrote
them.

Why: a 1080p frame is 6.2 MB; carried in the gRPC message it is copied by the client's serialisation, by gRPC on both
sides and by Triton's request parsing (an empty model answered a 1080p frame in 33 ms so on the 2-core EPYC, loaded).
Triton's own system shared memory (register the region, point the input at it) saves the wire copies but not
Triton's copy of the input into the model's process: a Python-backend model with cseg's outputs answered a 1080p frame
from a registered region in 5.7 ms, by reference in 3.7 ms, an 8x8 frame in 2.1 ms (idle EPYC, stock tritonserver
2.51, medians of 40); PyTriton copies the input twice more on its relay to the serving process.

Client (FrameRegions): each calling thread has its own region (a request is synchronous: the region is free again
when it returns), grown when a larger frame comes, unlinked when outgrown and at close. Where the server cannot read
it (another host or a container with its own /dev/shm, a server that does not take frames so), it answers a
SharedFrameError once, the reason is kept in `disabled` and frames go in the message from then on.

Server (SharedFrames): maps each named object once and keeps the mapping while the object exists (a camera's region
is mapped once, not per frame: its pages are faulted in once); a mapping whose object was unlinked or replaced is let
go at the next request, so a client that went away pins no memory beyond that. Only objects named cseg-... are read,
and nothing is ever written.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import threading
import uuid
import weakref

import numpy as np

from cseg.errors import SharedFrameError
from cseg.images import Frame

log = logging.getLogger("cseg.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# below this the message copies cost less than the region write + its bookkeeping: prompts, rule ids, small frames
MIN_BYTES = 1 << 18
_ROUND = 1 << 20  # regions grow in whole MiB: frames of one camera vary little, a region is not remade per frame
NAME = re.compile(r"cseg-[A-Za-z0-9_-]{1,120}")
SHM_DIR = "/dev/shm"  # where POSIX shared-memory objects live on Linux (shm_open's namespace)


def is_local(url: str) -> bool:
    """Whether `url` (host:port) names this host's loopback, where client and server share /dev/shm."""
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    return host in LOCAL_HOSTS


class FrameRegions:
    """The client's per-thread shared-memory regions for frames."""

    def __init__(self):
        self._prefix = f"cseg-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._regions: dict[str, object] = {}  # name -> multiprocessing.shared_memory.SharedMemory
        self.disabled: str | None = None  # why frames go in the message (None: they go by reference)
        self._finalizer = weakref.finalize(self, _destroy, self._regions)  # a dropped RemoteRuntime frees /dev/shm

    def place(self, value: np.ndarray, bgr: bool = False) -> bytes | None:
        """`value` (a contiguous HxWx3 uint8 frame) written into this thread's region -> the `image_ref` that names
        it (`bgr`: the server reads the channels reversed); None where frames go in the message (disabled, or a frame
        too small to be worth it). A frame that is this thread's `buffer()` is not copied: it is there already."""
        if self.disabled is not None or value.nbytes < MIN_BYTES:
            return None
        try:
            region = self._region(value.nbytes)
            if not self.holds(value):
                np.ndarray(value.shape, np.uint8, buffer=region.buf)[...] = value  # the one copy of the frame
        except Exception as exc:  # no /dev/shm, out of space: the message path still works
            self.disable(f"shared memory is not available here: {exc!r}")
            return None
        ref = {"region": region.name.lstrip("/"), "shape": list(value.shape), **({"bgr": True} if bgr else {})}
        return json.dumps(ref).encode()

    def buffer(self, height: int, width: int) -> np.ndarray:
        """A writable HxWx3 uint8 array at the start of this thread's region (grown to hold it): a frame written into
        it goes to the server without a copy here."""
        region = self._region(height * width * 3)
        return np.ndarray((height, width, 3), np.uint8, buffer=region.buf)

    def holds(self, value) -> bool:
        """Whether `value` is this thread's buffer(): a C-contiguous uint8 frame at the start of its region."""
        name = getattr(self._local, "name", None)
        with self._lock:
            region = self._regions.get(name)
        if region is None or not isinstance(value, np.ndarray) or value.dtype != np.uint8:
            return False
        start = np.frombuffer(region.buf, np.uint8, count=1).__array_interface__["data"][0]
        return (value.flags.c_contiguous and value.__array_interface__["data"][0] == start
                and value.nbytes <= region.size)  # fmt: skip

    def disable(self, reason: str) -> None:
        if self.disabled is None:
            log.info("frames go in the gRPC message: %s", reason)
        self.disabled = reason
        self.close()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._regions)

    def close(self) -> None:
        """Free every region (the server lets go of its mapping at its next request); a later call makes a new one."""
        with self._lock:
            _destroy(self._regions)

    def _region(self, nbytes: int):
        from multiprocessing import shared_memory

        name = getattr(self._local, "name", None)
        with self._lock:
            region = self._regions.get(name)
        if region is not None and region.size >= nbytes:
            return region
        if region is not None:  # outgrown: unlinked now, the server drops its mapping at its next request
            with self._lock:
                _destroy({name: self._regions.pop(name)})
        name = f"{self._prefix}-{threading.get_ident()}-{uuid.uuid4().hex[:6]}"
        region = shared_memory.SharedMemory(name, create=True, size=-(-nbytes // _ROUND) * _ROUND)
        with self._lock:
            self._regions[name] = region
        self._local.name = name
        return region


def _destroy(regions: dict) -> None:
    for region in list(regions.values()):
        try:
            region.unlink()  # first: the name goes even where a view still holds the mapping
        except FileNotFoundError:
            pass
        try:
            region.close()
        except BufferError:  # another thread's write still holds a view: unmapped when that is freed
            pass
    regions.clear()


class SharedFrames:
    """The server's read-only mappings of clients' regions: `frame(image_ref)` -> the frame (a read-only view; a
    cseg Frame marked BGR where the reference says so)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}  # name -> (inode, mapping)

    def frame(self, image_ref):
        try:
            ref = json.loads(bytes(image_ref))
            name, shape = ref["region"], tuple(int(n) for n in ref["shape"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SharedFrameError(f'image_ref must be JSON {{"region": NAME, "shape": [H, W, 3]}}: {exc}') from None
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SharedFrameError(f"image_ref names region {name!r}: not a cseg frame region (cseg-[A-Za-z0-9_-]+)")
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise SharedFrameError(f"image_ref's shape must be [H, W, 3], got {list(shape)}")
        mapping = self._mapping(name)
        if int(np.prod(shape, dtype=np.int64)) > len(mapping):
            raise SharedFrameError(f"image_ref's region {name} holds {len(mapping)} bytes, less than a "
                                   f"{shape[0]}x{shape[1]}x3 frame")  # fmt: skip
        pixels = np.ndarray(shape, np.uint8, buffer=mapping)  # read-only: the mapping is
        return Frame(pixels, True) if ref.get("bgr") is True else pixels  # as a local Runtime takes bgr=True

    def _mapping(self, name: str) -> mmap.mmap:
        path = os.path.join(SHM_DIR, name)
        with self._lock:
            self._sweep_locked()
            held = self._maps.get(name)
            if held is not None:
                return held[1]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise SharedFrameError(f"no shared-memory region {name} on the server's host ({exc.strerror}): "
                                       "the client is on another host or in another /dev/shm") from None  # fmt: skip
            try:
                inode = os.fstat(fd).st_ino
                mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            except (OSError, ValueError) as exc:  # an empty object cannot be mapped
                raise SharedFrameError(f"shared-memory region {name} cannot be mapped: {exc}") from None
            finally:
                os.close(fd)
            self._maps[name] = (inode, mapping)
            return mapping

    def sweep(self) -> None:
        """Let go of mappings whose object is gone or replaced (the pages go once the last view of them is freed):
        at every request, and from `cseg serve`'s idle thread (a client that left pins nothing for long)."""
        with self._lock:
            self._sweep_locked()

    def _sweep_locked(self) -> None:
        for name, (inode, _) in list(self._maps.items()):
            try:
                gone = os.stat(os.path.join(SHM_DIR, name)).st_ino != inode
            except OSError:
                gone = True
            if gone:
                del self._maps[name]  # not closed: a request may still read a view of it; unmapped when unreferenced

    def __len__(self) -> int:
        return len(self._maps)
