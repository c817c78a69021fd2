"""The bundle contract: manifest.json, its JSON Schema, and file hashing. Shared by the exporter and the runtime.

A bundle is complete when manifest.json exists, validates against MANIFEST_SCHEMA, and every file it lists has the
recorded sha256. The exporter writes manifest.json last, into a temporary directory that is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cseg.errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_KEYS = ("vlm_vision", "vlm_decoder", "concept_head", "sam3_vision", "sam3_text", "sam3_decoder")

_TENSOR = {
    "type": "object",
    "required": ["name", "dtype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "dtype": {"enum": ["float32", "float16", "int64", "int32", "bool"]},
        "shape": {"type": "array", "items": {"type": ["integer", "string"]}},
    },
}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_GRAPH = {
    "type": "object",
    "required": ["file", "sha256", "backend", "precision", "inputs", "outputs", "tolerances"],
    "properties": {
        "file": {"type": "string"},
        "sha256": _SHA256,
        "data_files": {"type": "array", "items": {"type": "string"}},
        "backend": {"enum": ["onnxruntime", "tensorrt"]},
        "precision": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
        "outputs": {"type": "array", "items": _TENSOR, "minItems": 1},
        "tolerances": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
_PARITY_OUTPUT = {
    "type": "object",
    "required": ["max_abs", "mean_abs", "tolerance"],
    "properties": {"max_abs": {"type": "number"}, "mean_abs": {"type": "number"}, "tolerance": {"type": "number"}},
}
_SOURCE = {
    "type": "object",
    "required": ["path", "sha256", "files"],
    "properties": {"path": {"type": "string"}, "sha256": _SHA256, "files": {"type": "object"}},
}
MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "format_version", "cseg_version", "created", "target", "precision", "source", "model", "preprocessing",
        "prompt", "generation", "router", "postprocess", "tokenizers", "graphs", "parity", "files",
    ],
    "properties": {
        "format_version": {"const": FORMAT_VERSION},
        "cseg_version": {"type": "string"},
        "created": {"type": "string"},
        "target": {"type": "string"},
        "precision": {"type": "string"},
        "source": {"type": "object", "required": ["conceptseg", "sam3"],
                   "properties": {"conceptseg": _SOURCE, "sam3": _SOURCE}},
        "model": {"type": "object", "required": ["num_queries", "hidden_size", "num_layers", "num_kv_heads",
                                                 "head_dim", "image_token_id", "top_k"]},
        "preprocessing": {"type": "object", "required": ["vlm", "sam3"]},
        "prompt": {"type": "object", "required": ["question", "system", "chat_template"]},
        "generation": {"type": "object", "required": ["max_length", "eos_token_ids", "pad_token_id"]},
        "router": {"type": "object", "required": ["kind"]},
        "postprocess": {"type": "object"},
        "tokenizers": {"type": "object", "required": ["vlm", "sam3"]},
        "graphs": {"type": "object", "required": list(GRAPH_KEYS), "additionalProperties": _GRAPH},
        "parity": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _PARITY_OUTPUT}},
        "files": {"type": "object", "minProperties": 1, "additionalProperties": _SHA256},
        "quantization": {"type": "object", "required": ["precision", "calibration", "graphs", "end_to_end"]},
    },
}  # fmt: skip


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(bundle: Path) -> dict[str, str]:
    """The `files` section: sha256 of every file under `bundle` except the manifest itself."""
    return {str(f.relative_to(bundle)): file_sha256(f) for f in sorted(Path(bundle).rglob("*"))
            if f.is_file() and f.name != MANIFEST_NAME}  # fmt: skip


def validate_manifest(manifest: dict) -> None:
    """Raise BundleError naming the first schema violation (format version first: it explains the rest)."""
    import jsonschema

    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version!r} is not the {FORMAT_VERSION} this cseg reads; re-export it with this "
            "version of cseg (cseg-export ...)"
        )
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BundleError(f"manifest.json is invalid at {where}: {exc.message}") from None


def read_manifest(bundle: str | Path) -> dict:
    path = Path(bundle) / MANIFEST_NAME
    if not Path(bundle).is_dir():
        raise BundleError(f"bundle {bundle} is not a directory; pass the folder cseg-export wrote")
    if not path.is_file():
        raise BundleError(f"{bundle} has no {MANIFEST_NAME}: not a bundle, or an export that did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is corrupt, export it again") from None
    validate_manifest(manifest)
    return manifest


def verify_files(bundle: str | Path, manifest: dict) -> None:
    """Every listed file exists and has its recorded sha256; raise BundleError naming the first that does not."""
    for relative, expected in manifest["files"].items():
        path = Path(bundle) / relative
        if not path.is_file():
            raise BundleError(f"bundle file {relative} is missing; copy the whole bundle directory or export again")
        if file_sha256(path) != expected:
            raise BundleError(f"bundle file {relative} does not match its sha256 in manifest.json (changed or corrupt)")
