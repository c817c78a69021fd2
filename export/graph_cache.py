"""Traced graphs kept for the next export of the same module (`CSEG_EXPORT_CACHE=FOLDER`; off when unset).

Tracing is most of an export: on the tiny checkpoints ~50 of the ~60 s (torch.export's decompositions and the ONNX
translation, measured with cProfile), on the published ones the better part of an hour. Exporting one checkpoint again
at another precision, for another target, or after a calibration change traces the very same modules again; with the
cache the traced graph is copied instead. Quantization, fusion and the GPU conversions work on the copy as on a fresh
trace (they read the file, never change the cached one).

An entry is found by a sha256 of everything the trace depends on: the graph's key, exporter, opset, input/output
specs, export sizes and file name (an external .data file is referenced by name); the example inputs' bytes (a trace
specializes on them); every parameter's and buffer's name, dtype, shape and bytes; the module's repr (layer
configurations); the custom translations by name; the torch, transformers and onnx versions; and the source of cseg's
export package (the wrappers and the model code). What it cannot see (a method patched at run time, a config value
that changes neither a weight nor a repr) is what the parity check is for: it compares the copied graph with the
PyTorch module on fresh inputs exactly as it compares a fresh trace, so a stale entry is refused, not shipped.

A failure to read or write the cache only costs the trace it would have saved: the export goes on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

ENV = "CSEG_EXPORT_CACHE"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """sha256 of the export package's Python sources (its graph wrappers and model code)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict:
    import onnx
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__}


def _tensor_bytes(tensor: torch.Tensor):
    """The tensor's bytes without a copy where it is already contiguous (bf16 included: numpy has no bf16, bytes do)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else b""


def entry_key(spec, args: tuple, file_name: str) -> str:
    digest = hashlib.sha256()
    header = {
        "key": spec.key, "exporter": spec.exporter, "opset": spec.opset, "file": file_name,
        "inputs": [t.as_json() for t in spec.inputs], "outputs": [t.as_json() for t in spec.outputs],
        "export_sizes": spec.export_sizes, "module": repr(spec.module), "code": _code_digest(), **_versions(),
        "translations": sorted(f"{op}:{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}"
                               for op, f in spec.translations.items()),
        "args": [(str(a.dtype), list(a.shape)) for a in args],
    }  # fmt: skip
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for arg in args:
        digest.update(_tensor_bytes(arg))
    state = dict(spec.module.named_parameters(remove_duplicate=False))
    state.update(spec.module.named_buffers(remove_duplicate=False))  # non-persistent ones too (rotary tables)
    for name in sorted(state):
        tensor = state[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def folder() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else None


def fetch(key: str, path: Path) -> list[Path] | None:
    """Copy the cached graph (and its .data) to `path`; its files, or None when there is none (or it cannot be read)."""
    root = folder()
    entry = root / key if root is not None else None
    if entry is None or not (entry / path.name).is_file():
        return None
    try:
        files = [path]
        shutil.copyfile(entry / path.name, path)
        data = entry / (path.name + ".data")
        if data.is_file():
            shutil.copyfile(data, str(path) + ".data")
            files.append(Path(str(path) + ".data"))
        return files
    except OSError:  # a cache that cannot be read costs the trace, nothing else
        for file in (path, Path(str(path) + ".data")):
            file.unlink(missing_ok=True)
        return None


def store(key: str, files: list[Path]) -> None:
    """Keep a fresh trace's files under `key` (written aside, then renamed: a reader never sees half an entry)."""
    root = folder()
    if root is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        if (root / key).exists():
            return
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
        for file in files:
            shutil.copyfile(file, staging / file.name)
        try:
            staging.rename(root / key)
        except OSError:  # another export stored it first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:  # a full or read-only cache costs the next export its trace, not this export
        pass
