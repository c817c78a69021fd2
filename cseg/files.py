"""Reading the files users name or that indexes name (rules, dataset and calibration indexes): regular files only (a
FIFO blocks the reader, /dev/zero never ends), a size limit, paths kept inside their folder, and OS errors or
malformed JSON as InvalidInputError."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cseg.errors import InvalidInputError


def regular_file(path, what: str) -> Path:
    """`path` if it names a regular file (after symlinks), else InvalidInputError saying what is there."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InvalidInputError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"{what} {path} is not a regular file")
    return path


def read_bytes(path, what: str, limit: int) -> bytes:
    """The contents of a regular file of at most `limit` bytes."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # not the stat size: the file may grow while it is read
    except OSError as exc:
        raise InvalidInputError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InvalidInputError(f"{what} {path} is larger than the {limit} bytes allowed")
    return data


def read_text(path, what: str, limit: int) -> str:
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} {path} is not UTF-8 text: {exc}") from None


def parse_json(text: str, what: str):
    """json.loads with its errors (including the RecursionError of deeply nested input) as InvalidInputError."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInputError(f"{what} is not valid JSON: {reason}") from None


def read_json(path, what: str, limit: int):
    return parse_json(read_text(path, what, limit), f"{what} {path}")


def inside(root: Path, relative, what: str) -> Path:
    """`root / relative` where that resolves (symlinks followed) inside `root`: a path read from a dataset or
    calibration index must not reach other files on the machine (`../`, an absolute path, a symlink out)."""
    if not isinstance(relative, str) or not relative:
        raise InvalidInputError(f"{what} must be a non-empty path string, got {relative!r}")
    path = root / relative
    base = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), base]) != base:
        raise InvalidInputError(f"{what} {relative!r} is outside the folder {root}; copy the file into it")
    return path
