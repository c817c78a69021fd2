"""The bundle contract: manifest.json, its JSON Schema, and file hashing. Shared by the exporter and the runtime.

A bundle is complete when manifest.json exists, validates against MANIFEST_SCHEMA, and every file it lists has the
recorded sha256. The exporter writes manifest.json last, into a temporary directory that is renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

from cseg.errors import BundleError

BUNDLE_FORMAT = "cseg-bundle"  # the marker that says a manifest.json (and so its folder) was written by cseg
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_KEYS = ("vlm_vision", "vlm_decoder", "concept_head", "sam3_vision", "sam3_text", "sam3_decoder")
# A rule-only bundle (`contents`: "rule-only") serves Runtime.apply alone: SAM 3's image encoder and its decoder with
# concept tokens. A rule brings its phrase's text features, so SAM 3's text encoder (354M of its 840M parameters)
# stays out, and so does everything of the VLM.
RULE_ONLY = "rule-only"
RULE_ONLY_GRAPH_KEYS = ("sam3_vision", "sam3_decoder")

# Bounds are generous for real checkpoints (Qwen2.5-VL-72B, SAM 3) and tight enough that no value can make the
# runtime allocate or loop without end: sizes the runtime allocates from are checked against the graphs as well.


def _int(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


def _number(low: float, high: float, *, above: bool = False) -> dict:
    return {"type": "number", ("exclusiveMinimum" if above else "minimum"): low, "maximum": high}


def _object(required: dict, optional: dict | None = None) -> dict:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


_TEXT = {"type": "string"}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PATH = {"type": "string", "minLength": 1}  # relative to the bundle; containment is checked with the files
_TOKEN = _int(0, 10_000_000)
_SIDE = _int(1, 16384)
_RGB = {"type": "array", "items": _number(-1e3, 1e3), "minItems": 3, "maxItems": 3}
_RGB_STD = {"type": "array", "items": _number(0, 1e3, above=True), "minItems": 3, "maxItems": 3}
_TENSOR = _object({
    "name": {"type": "string", "minLength": 1},
    "dtype": {"enum": ["float32", "float16", "int64", "int32", "bool"]},
    "shape": {"type": "array", "maxItems": 8, "items": {"anyOf": [_int(0, 1 << 31), {"type": "string"}]}},
})
_TENSORS = {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 4096}
_GRAPH = _object({
    "file": _PATH,
    "sha256": _SHA256,
    "backend": {"enum": ["onnxruntime", "tensorrt"]},
    "precision": _TEXT,
    "inputs": _TENSORS,
    "outputs": _TENSORS,
    "tolerances": {"type": "object", "additionalProperties": _number(0, 1e6)},
}, {"data_files": {"type": "array", "items": _PATH}, "bytes": _int(0, 1 << 50),
    "kv_cache": {"enum": ["sequence_major", "shared"]}})  # vlm_decoder's cache layout (export/graphs/vlm_decoder.py)
_PARITY_OUTPUT = _object({"max_abs": _number(0, 1e30), "mean_abs": _number(0, 1e30), "tolerance": _number(0, 1e30)})
# weights: the SAM 3 weights id (export/bundle.py sam3_weights_id), what a portable rule is bound to
_SOURCE = _object({"path": _TEXT, "sha256": _SHA256, "files": {"type": "object"}},
                  {"weights": _SHA256, "layout": {"enum": ["meta"]}})  # layout: a Meta sam3.pt, converted at export
_SAM3_MODEL = {"num_queries": _int(1, 4096), "top_k": _int(1, 10000)}
_MODEL = _object({
    "num_queries": _int(1, 4096),
    "hidden_size": _int(1, 65536),
    "num_layers": _int(1, 1024),
    "num_kv_heads": _int(1, 1024),
    "head_dim": _int(1, 4096),
    "vocab_size": _int(1, 10_000_000),
    "image_token_id": _TOKEN,
    "top_k": _int(1, 10000),
    "sam3_text_length": _int(1, 1024),
    "vision": _object({"patch_size": _int(1, 1024), "spatial_merge_size": _int(1, 64),
                       "window_size": _int(1, 1 << 20)}, {"temporal_patch_size": _int(1, 64)}),
}, {"sam3_text_tokens": _object({"vocab_size": _int(1, 10_000_000), "bos_token_id": _TOKEN,
                                 "eos_token_id": _TOKEN})})  # the SAM 3 tokenizer check (runtime/text.py); optional
_SAM3_PREPROCESSING = _object({"size": _int(1, 16384)}, {"mean": _number(-1e3, 1e3), "std": _number(0, 1e3, above=True)})
_PREPROCESSING = _object({
    "vlm": _object({
        "patch_size": _int(1, 1024), "merge_size": _int(1, 64), "temporal_patch_size": _int(1, 64),
        "min_pixels": _int(1, 16384 * 16384), "max_pixels": _int(1, 16384 * 16384),
        "rescale_factor": _number(0, 1e3, above=True), "mean": _RGB, "std": _RGB_STD,
        "grid_thw": {"type": "array", "items": _int(1, 16384), "minItems": 3, "maxItems": 3},
    }),
    "sam3": _SAM3_PREPROCESSING,
})
_GENERATION = _object({
    "max_length": _int(2, 1 << 20),
    "eos_token_ids": {"type": "array", "items": _TOKEN, "minItems": 1, "maxItems": 64},
    "pad_token_id": _TOKEN,
}, {"repetition_penalty": _number(0, 100, above=True), "im_end_token_id": _TOKEN})
_ROUTER = {
    **_object({"kind": {"enum": ["heuristic", "learned"]}}),
    "if": {"properties": {"kind": {"const": "learned"}}},
    "then": {"required": ["threshold", "feature_width"], "properties": {
        "threshold": _number(0, 1.000001),  # above 1 (fit-router's "never skip") by a hair
        "feature_width": _int(1, 1 << 20),
        "held_out": _object({"learned": _object({"skip_rate": _number(0, 1), "iou_loss": _number(-1, 1)})}),
    }},
}
_LEVELS = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"]
_SESSION = {"type": "object", "additionalProperties": False, "properties": {
    "graph_optimization_level": {"enum": _LEVELS},
    "intra_op_num_threads": _int(0, 4096), "inter_op_num_threads": _int(0, 4096),
    "enable_mem_pattern": {"type": "boolean"}, "enable_cpu_mem_arena": {"type": "boolean"},
}}
_FRACTION = _number(0, 1)
_QUANTIZATION = _object({
    "precision": _TEXT,
    "calibration": _object({"sha256": _SHA256, "samples": _int(0, 1 << 30), "held_out": _int(0, 1 << 30)}),
    "graphs": {"type": "object", "additionalProperties": _object({"requested": _TEXT, "shipped": _TEXT})},
    # token_agreement: bundles with a VLM (a rule-only bundle generates no tokens)
    "end_to_end": _object({"mask_iou_min": _FRACTION, "presence_delta_max": _FRACTION}, {"token_agreement": _FRACTION}),
})
# The exporter's per-graph choice between ONNX Runtime and OpenVINO on the CPU it ran on (cseg/cpu_backends.py):
# an OpenVINO choice names its inference precision and the CPU flags it assumes (one of them must be present).
_MS = _number(0, 1e9)
_CPU_CHOICE = {
    **_object({"backend": {"enum": ["onnxruntime", "openvino"]}, "why": _TEXT},
              {"precision": {"enum": ["f32", "bf16"]}, "requires_any": {"type": "array", "items": _TEXT},
               "onnxruntime_ms": _MS, "openvino_ms": {"type": "object", "additionalProperties": _MS},
               "gate": {"type": "object"}}),
    "if": {"properties": {"backend": {"const": "openvino"}}},
    "then": {"required": ["precision", "requires_any"]},
}
_CPU_BACKENDS = _object({
    "cpu": _object({"model": _TEXT, "flags": {"type": "array", "items": _TEXT}}),
    "graphs": {"type": "object", "additionalProperties": _CPU_CHOICE},
}, {"openvino": {"type": ["string", "null"]}, "measured": _TEXT})
_GPU_TARGET = {  # what `cseg inspect`, `cseg build` and the TensorRT backend read from a GPU-target bundle
    "recipe": _PATH,
    "target_profile": _object({
        "device": _object({"name": _TEXT, "arch": _TEXT, "memory_gb": _number(0, 1e6, above=True)}),
        "tensorrt_versions": {"type": "object", "minProperties": 1, "additionalProperties": _TEXT},
        "shapes": _object({"total_tokens": _int(2, 1 << 20)}),
    }),
    "footprint": _object({"total_gb": _number(0, 1e6), "usable_gb": _number(0, 1e6), "fits": {"type": "boolean"}}),
    # the static check of the graphs against onnx-tensorrt's operator matrix (cseg/engines/tensorrt_support.py)
    "tensorrt_support": _object({
        "source": _TEXT,
        "versions": {"type": "object", "minProperties": 1, "additionalProperties": _TEXT},
        "graphs": {"type": "object", "additionalProperties": _object({
            "opset": _int(0, 1000),
            "ops": _int(0, 1 << 20),
            "dtypes": {"type": "array", "items": _TEXT},
            "unsupported": {"type": "object", "additionalProperties": {"type": "array", "items": _TEXT}},
        })},
    }),
    "tensorrt": _object({
        "version": _TEXT, "gpu": _TEXT, "built": _TEXT,
        "compute_capability": {"type": "array", "items": _int(0, 100), "minItems": 2, "maxItems": 2},
        "engines": {"type": "object", "additionalProperties": _object({"file": _PATH, "sha256": _SHA256})},
    }),
}
_COMMON = {  # what every bundle has
    "format": {"const": BUNDLE_FORMAT},
    "format_version": {"const": FORMAT_VERSION},
    "cseg_version": _TEXT,
    "created": _TEXT,
    "target": _TEXT,
    "precision": _TEXT,
    "postprocess": _object({"instance_score_threshold": _FRACTION}),
    "parity": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _PARITY_OUTPUT}},
    "files": {"type": "object", "minProperties": 1, "additionalProperties": _SHA256},
}
_FULL = _object({  # a full bundle: the reasoner and SAM 3 (no `contents`, or "full")
    "source": _object({"conceptseg": _SOURCE, "sam3": _SOURCE}),
    "model": _MODEL,
    "preprocessing": _PREPROCESSING,
    "prompt": _object({"question": _TEXT, "system": _TEXT, "chat_template": _TEXT}),
    "generation": _GENERATION,
    "router": _ROUTER,
    "tokenizers": _object({"vlm": _object({"tokenizer.json": _PATH}),
                           "sam3": _object({"tokenizer.json": _PATH}, {"tokenizer_config.json": _PATH})}),
    "graphs": {"type": "object", "required": list(GRAPH_KEYS), "additionalProperties": _GRAPH},
})
_RULE_ONLY = _object({
    "source": _object({"sam3": {**_SOURCE, "required": [*_SOURCE["required"], "weights"]}}),
    "model": _object(_SAM3_MODEL),
    "preprocessing": _object({"sam3": _SAM3_PREPROCESSING}),
    "tokenizers": {"type": "object", "maxProperties": 0},
    "graphs": {"type": "object", "required": list(RULE_ONLY_GRAPH_KEYS), "additionalProperties": False,
               "properties": {key: _GRAPH for key in RULE_ONLY_GRAPH_KEYS}},
})
MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **_object(_COMMON, {"contents": {"enum": ["full", RULE_ONLY]}, "session": _SESSION, "quantization": _QUANTIZATION,
                        "cpu_backends": _CPU_BACKENDS, **_GPU_TARGET}),
    "if": {"required": ["contents"], "properties": {"contents": {"const": RULE_ONLY}}},
    "then": _RULE_ONLY,
    "else": _FULL,
    "dependentRequired": {"target_profile": ["footprint", "recipe"], "tensorrt": ["target_profile"],
                          "tensorrt_support": ["target_profile"]},
}  # fmt: skip


def rule_only(manifest: dict) -> bool:
    """Whether the bundle serves rules alone (SAM 3's image encoder and decoder; no VLM, no text encoder)."""
    return manifest.get("contents") == RULE_ONLY


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
    """Raise BundleError naming the first violation: the marker and format version first (they explain the rest),
    then the schema (types and ranges), then the sizes the runtime works with against the graphs' declared I/O."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f'manifest.json has no "format": "{BUNDLE_FORMAT}": not a bundle written by this cseg; '
                          "export it again (cseg-export ...)")  # fmt: skip
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version!r} is not the {FORMAT_VERSION} this cseg reads; re-export it with this "
            "version of cseg (cseg-export ...)"
        )
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"manifest.json is invalid at {where}: {error.message}")
    _check_sizes(manifest)


@functools.cache
def _validator():
    import jsonschema

    # JSON Schema calls 2.0 an integer and Python calls True one; the runtime needs real ints (range, shapes)
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(MANIFEST_SCHEMA)


def _check_sizes(manifest: dict) -> None:
    """The model, preprocessing and generation values the runtime allocates and indexes with must agree with the
    graphs' declared inputs/outputs (which Runtime.open checks against the ONNX files)."""
    model, graphs = manifest["model"], manifest["graphs"]
    unknown = sorted(set(manifest.get("cpu_backends", {}).get("graphs", {})) - set(graphs))
    if unknown:
        raise BundleError(f"manifest.json: cpu_backends names graphs the bundle does not have: {', '.join(unknown)}")
    tensors = {key: {t["name"]: t["shape"] for t in (*g["inputs"], *g["outputs"])} for key, g in graphs.items()}

    def agree(field: str, value, key: str, name: str, axis: int) -> None:
        shape = tensors[key].get(name)
        if shape is None or len(shape) <= axis:
            raise BundleError(f"manifest.json: graph {key} declares no {name} with {axis + 1} dimensions")
        if isinstance(shape[axis], int) and shape[axis] != value:  # a named dynamic axis takes any size
            raise BundleError(f"manifest.json: {field} = {value} disagrees with graph {key}'s {name} ({shape[axis]})")

    size = manifest["preprocessing"]["sam3"]["size"]
    for field, value, key, name, axis in (
        ("model.top_k", model["top_k"], "sam3_decoder", "instance_scores", 1),
        ("preprocessing.sam3.size", size, "sam3_vision", "pixel_values", 2),
        ("preprocessing.sam3.size", size, "sam3_vision", "pixel_values", 3),
    ):  # fmt: skip
        agree(field, value, key, name, axis)
    if rule_only(manifest):
        return
    layers = model["num_layers"]
    shared = graphs["vlm_decoder"].get("kv_cache") == "shared"
    kv = {f"{io}_{kind}_{i}" for io in ("past", "present" if shared else "new") for kind in ("key", "value")
          for i in range(layers)}  # fmt: skip
    declared = {n for n in tensors["vlm_decoder"] if n.startswith(("past_", "new_", "present_"))}
    if declared != kv:
        raise BundleError(f"manifest.json: model.num_layers = {layers} disagrees with graph vlm_decoder's "
                          f"{len(declared) // 4} layers of KV cache")  # fmt: skip
    vlm, vision = manifest["preprocessing"]["vlm"], model["vision"]
    for field, value, key, name, axis in (
        ("model.num_kv_heads", model["num_kv_heads"], "vlm_decoder", "past_key_0", 1 if shared else 2),
        ("model.head_dim", model["head_dim"], "vlm_decoder", "past_key_0", 3),
        ("model.vocab_size", model["vocab_size"], "vlm_decoder", "logits", 2),
        ("model.hidden_size", model["hidden_size"], "vlm_decoder", "hidden_states", 2),
        ("model.hidden_size", model["hidden_size"], "concept_head", "hidden_states", 2),
        ("model.num_queries", model["num_queries"], "concept_head", "concept_tokens", 1),
        ("model.sam3_text_length", model["sam3_text_length"], "sam3_text", "input_ids", 1),
        ("preprocessing.vlm patch volume", 3 * vlm["temporal_patch_size"] * vlm["patch_size"] ** 2, "vlm_vision",
         "pixel_values", 1),
    ):  # fmt: skip
        agree(field, value, key, name, axis)
    if (vlm["patch_size"], vlm["merge_size"]) != (vision["patch_size"], vision["spatial_merge_size"]):
        raise BundleError("manifest.json: preprocessing.vlm patch_size/merge_size disagree with model.vision's")
    factor = vlm["patch_size"] * vlm["merge_size"]
    if not factor**2 <= vlm["min_pixels"] <= vlm["max_pixels"]:
        raise BundleError(f"manifest.json: preprocessing.vlm needs {factor ** 2} <= min_pixels <= max_pixels, got "
                          f"{vlm['min_pixels']} and {vlm['max_pixels']}")  # fmt: skip
    if vision["window_size"] < factor:
        raise BundleError(f"manifest.json: model.vision.window_size {vision['window_size']} is below one merged patch "
                          f"({factor} pixels)")  # fmt: skip
    if (manifest["router"]["kind"] == "learned") != ("router" in graphs):
        raise BundleError("manifest.json: a learned router needs graphs.router, and graphs.router a learned router")
    if "router" in graphs:
        agree("router.feature_width", manifest["router"]["feature_width"], "router", "features", 1)
    generation = manifest["generation"]
    ids = {"model.image_token_id": model["image_token_id"], "generation.pad_token_id": generation["pad_token_id"],
           **{f"generation.eos_token_ids[{i}]": t for i, t in enumerate(generation["eos_token_ids"])}}  # fmt: skip
    for field, token in ids.items():
        if token >= model["vocab_size"]:
            raise BundleError(f"manifest.json: {field} = {token} is outside the vocabulary of {model['vocab_size']}")
    text = model.get("sam3_text_tokens", {})
    for field in ("bos_token_id", "eos_token_id"):
        if field in text and text[field] >= text["vocab_size"]:
            raise BundleError(f"manifest.json: model.sam3_text_tokens.{field} = {text[field]} is outside its "
                              f"vocabulary of {text['vocab_size']}")  # fmt: skip


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def read_manifest(bundle: str | Path) -> dict:
    path = Path(bundle) / MANIFEST_NAME
    try:  # is_dir/is_file raise on EACCES (a folder this user may not read), not return False
        folder, manifest = Path(bundle).is_dir(), path.is_file()
    except OSError as exc:
        raise BundleError(f"bundle {bundle} cannot be read ({exc.strerror or exc}: {exc.filename}); give this user "
                          "read permission on the bundle folder") from None  # fmt: skip
    if not folder:
        raise BundleError(f"bundle {bundle} is not a directory; pass the folder cseg-export wrote")
    if not manifest:
        raise BundleError(f"{bundle} has no {MANIFEST_NAME}: not a bundle, or an export that did not finish")
    manifest = read_bundle_json(path)
    validate_manifest(manifest)
    return manifest


def read_bundle_json(path: Path):
    """A JSON file of a bundle (manifest, recipe, tokenizer config), or BundleError: not UTF-8, not JSON, nested too
    deeply (RecursionError), or holding NaN, Infinity or 1e999 (= inf), which Python's json reads."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_float=_finite, parse_constant=_finite)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise BundleError(f"{path} is not valid JSON ({reason}); the bundle is corrupt, export it again") from None
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc.strerror or exc})") from None
