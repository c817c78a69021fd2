"""Where an export writes: refusing destinations it must not replace, staging beside them, and the final swap.

`--force` replaces only a directory that is a cseg bundle (its manifest.json carries the bundle marker): never a
folder of other files, a symlink, a regular file, the checkpoints being exported, or the working directory. Every
check runs before any export work, so a refusal costs nothing. Staging and retired directories are hidden siblings
named after the bundle and the exporting process id; ones whose process is gone (a killed export) are removed by
the next export to the same destination.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import sys
from pathlib import Path

from cseg.bundle.schema import BUNDLE_FORMAT, MANIFEST_NAME
from cseg.errors import BundleError


def check_destination(out: Path, force: bool, sources: tuple) -> Path:
    """The absolute destination for `out`, or BundleError saying why the export may not write there."""
    if out.is_symlink():
        raise BundleError(f"--out {out} is a symlink; name the bundle directory itself (a symlink is never replaced)")
    target = out.resolve()
    if target == target.parent or Path.cwd().is_relative_to(target):
        raise BundleError(f"--out {out} is the current directory or one above it; name a new folder for the bundle")
    for source in sources:
        if Path(source).exists() and Path(source).resolve().is_relative_to(target):
            raise BundleError(f"--out {out} holds the checkpoint {source} being exported; write the bundle elsewhere")
    if not out.exists():
        return target
    if not force:
        raise BundleError(f"{out} already exists; pass --force to replace it (a bundle is never updated in place)")
    if not out.is_dir():
        raise BundleError(f"--out {out} is a file, not a bundle; --force replaces only a cseg bundle directory")
    if not is_bundle(out):
        raise BundleError(f"--out {out} is a folder without a cseg {MANIFEST_NAME}; --force replaces only a cseg "
                          "bundle, never other files: remove it yourself or choose another --out")  # fmt: skip
    return target


def is_bundle(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json written by cseg (the marker), however old or damaged the rest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def staging_dir(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def remove_stale(target: Path) -> None:
    """Remove the staging/retired siblings of `target` left by exports whose process no longer runs (or is this
    one: an earlier export in it that could not clean up)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(partial|old)-(\d+)")
    for path in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        match = pattern.fullmatch(path.name)
        pid = int(match[2]) if match else None
        if pid and path.is_dir() and not path.is_symlink() and (pid == os.getpid() or not _alive(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        pass
    return True


def replace(staging: Path, target: Path) -> None:
    """Move the finished `staging` to `target`, retiring a bundle already there (checked by check_destination).

    A process killed at any point (SIGKILL included) leaves `target` absent or a complete bundle: the old one or the
    new one. Without a bundle there, one rename. Over one (`--force`), the two directories are exchanged in one
    system call where the OS has it (Linux renameat2 RENAME_EXCHANGE), so the old bundle stays at `target` until the
    new one is; two renames took it away first, and a kill between them left no bundle at all (and the next export
    removed both hidden siblings). The retired bundle, now in `staging`'s place, is removed last; a kill before that
    leaves it for the next export to remove (remove_stale)."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = staging_dir(target, "old")  # elsewhere: a short window without a bundle at `target`
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 with RENAME_EXCHANGE); False where the C library, kernel or
    file system has no such call (then nothing happened)."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fcntl.h)
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not offered here: fall back to two renames
        return False
    raise OSError(code, os.strerror(code), str(second))
