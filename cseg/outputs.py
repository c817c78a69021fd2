"""Output paths of the command line, checked before any work: a run that can only fail when it writes its result
fails at its start instead, with one line naming the option. Missing parent folders are created."""

from __future__ import annotations

import functools
import io
import os
import tempfile
import warnings
from pathlib import Path

from cseg.errors import InvalidInputError


def output_file(path: str | None, option: str) -> Path | None:
    """`path` as a file this process can write, or InvalidInputError saying why not (None passes through)."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; name a file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        # append + non-blocking: an existing file is not changed, and a FIFO without a reader fails instead of hanging
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666))
        if not existed:
            target.unlink()
    except OSError as exc:
        raise InvalidInputError(f"{option} {path} cannot be written: {exc.strerror}") from None
    return target


def output_image(path: str | None, option: str) -> Path | None:
    """output_file for an RGB image PIL writes (an overlay): PIL picks the format from the extension, so one it cannot
    write RGB in (.xyz, .xbm, .h5) is refused here, listing those it can, rather than after the work that made it."""
    target = output_file(path, option)
    if target is not None and target.suffix.lower() not in _rgb_extensions():
        suffix = target.suffix or "(no extension)"
        raise InvalidInputError(f"{option} {path}: PIL cannot write an RGB image as {suffix!r}; name a file ending in "
                                f"one of {' '.join(_rgb_extensions())}")  # fmt: skip
    return target


@functools.cache
def _rgb_extensions() -> tuple[str, ...]:
    """The extensions of every format this PIL saves an RGB image in: tried on a 2x2 image, since some registered
    savers are stubs (HDF5, GRIB) or take other modes only (XBM, MSP)."""
    from PIL import Image

    Image.init()  # registers every plugin
    extensions = []
    for extension, name in sorted(Image.registered_extensions().items()):
        try:
            with warnings.catch_warnings():  # a format's deprecation notice (IM) is not the user's concern here
                warnings.simplefilter("ignore")
                Image.new("RGB", (2, 2)).save(io.BytesIO(), name)
        except Exception:  # noqa: BLE001 - each plugin fails in its own way (OSError, ValueError, KeyError)
            continue
        extensions.append(extension)
    return tuple(extensions)


def output_folder(path: str | None, option: str) -> Path | None:
    """`path` as a folder this process can write into (created if missing), or InvalidInputError saying why not."""
    if path is None:
        return None
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{option} {path} is a file; name a folder to write into")
    try:
        target.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=target).close()
    except OSError as exc:
        raise InvalidInputError(f"{option} {path} cannot be written into: {exc.strerror}") from None
    return target
