"""The files of a bundle: every file the runtime loads must be one the manifest lists, inside the bundle, a regular
file, and (unless hashing is skipped) have its recorded sha256.

"Inside" is checked on the path as written (no absolute path, no `..`) and on where it leads (symlinks resolved),
before anything is opened; the messages name the manifest's entry only, never whether something outside the
bundle exists. The sha256 catches corruption and incomplete copies, not an attacker who rewrites manifest.json too.
"""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

from cseg.bundle.schema import file_sha256
from cseg.errors import BundleError


def loaded_files(manifest: dict) -> dict[str, str]:
    """Every file the runtime may open, relative to the bundle, with what it is (for messages)."""
    files = {}
    for key, graph in manifest["graphs"].items():
        files[graph["file"]] = f"graph {key}"
        files.update({data: f"external data of graph {key}" for data in graph.get("data_files", [])})
    for name, tokenizer in manifest["tokenizers"].items():
        files.update({path: f"{name} tokenizer file {role}" for role, path in tokenizer.items()})
    if "recipe" in manifest:
        files[manifest["recipe"]] = "the TensorRT recipe"
    for key, engine in manifest.get("tensorrt", {}).get("engines", {}).items():
        files[engine["file"]] = f"TensorRT engine {key}"
    return files


def verify_files(bundle: str | Path, manifest: dict, *, hashes: bool = True) -> None:
    """Raise BundleError naming the first file that is unlisted, outside the bundle, missing, or (hashes=True)
    differs from its sha256; and any graph or engine whose own sha256 disagrees with the `files` list."""
    root = Path(bundle).resolve()
    listed = manifest["files"]
    for relative in listed:
        _check_inside(root, relative)
    for relative, what in loaded_files(manifest).items():
        if relative not in listed:
            raise BundleError(f"{what} ({relative!r}) is not listed in manifest.json's files, so it cannot be "
                              "verified; export the bundle again")  # fmt: skip
    recorded = [(f"graph {key}", graph) for key, graph in manifest["graphs"].items()]
    recorded += [(f"TensorRT engine {key}", e) for key, e in manifest.get("tensorrt", {}).get("engines", {}).items()]
    for what, entry in recorded:
        if entry["sha256"] != listed[entry["file"]]:
            raise BundleError(f"{what}: its sha256 in manifest.json differs from the one files lists for "
                              f"{entry['file']}")  # fmt: skip
    for relative, expected in listed.items():
        path = root / relative
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
            digest = None
            if regular and hashes:
                digest = file_sha256(path)
            elif regular:  # opened even unhashed: ONNX Runtime and tokenizers would refuse it later in their own words
                open(path, "rb").close()
        except (FileNotFoundError, NotADirectoryError):
            regular = False
        except OSError as exc:  # permissions (EACCES), an I/O error: the file is there but cannot be read
            raise BundleError(f"bundle file {relative} cannot be read ({exc.strerror or exc}); give this user read "
                              "permission on the bundle's files") from None  # fmt: skip
        if not regular:
            raise BundleError(f"bundle file {relative} is missing (or not a regular file); copy the whole bundle "
                              "directory or export again")  # fmt: skip
        if hashes and digest != expected:
            raise BundleError(f"bundle file {relative} does not match its sha256 in manifest.json (changed or corrupt)")


def _check_inside(root: Path, relative: str) -> None:
    written = PurePosixPath(relative)
    refused = BundleError(f"manifest.json lists {relative!r}, which is not a path inside the bundle (absolute, '..', "
                          "or a symlink leading out); export the bundle again")  # fmt: skip
    if "\0" in relative or written.is_absolute() or ".." in written.parts or not written.parts:
        raise refused
    try:
        inside = (root / written).resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise refused
