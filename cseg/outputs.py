"""Output paths of the command line, checked before any work: a run that can only fail when it writes its result
fails at its start instead, with one line naming the option. Missing parent folders are created."""

from __future__ import annotations

import os
import tempfile
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
