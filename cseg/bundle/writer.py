"""The manifest writer: what manifest.json says about a bundle, assembled from the checkpoints the exporter loaded and
the graphs it wrote, then hashed, validated and written last (cseg.export.bundle calls it; cseg.bundle.schema is
the contract it must satisfy, cseg.bundle.report and the runtime are its readers).

The loaded checkpoints are read by attribute only (`.path`, `.model.config`, `.image_processor`, ...), so this module
imports neither torch nor anything of the exporter: what a field means is decided here, next to its schema.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

import cseg
from cseg.bundle.schema import (BUNDLE_FORMAT, FORMAT_VERSION, MANIFEST_NAME, RULE_ONLY, file_sha256, hash_files,
                                validate_manifest)  # fmt: skip
from cseg.images import SAM3_MEAN, SAM3_STD, VLM_SIDE
from cseg.prompting import template

SOURCE_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json")
VLM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json")
SAM3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def graph_entry(key: str, files: list[Path], seconds: float, flops: dict, fused: dict | None, spec: dict) -> dict:
    """A graph as exported: its file (+ external data), hash, size, export time, FLOPs, fused attention, and the
    GraphSpec's own entry (inputs, outputs, sizes)."""
    return {
        "file": f"graphs/{key}.onnx",
        "sha256": file_sha256(files[0]),
        "data_files": [f"graphs/{f.name}" for f in files[1:]],
        "backend": "onnxruntime",  # what was exported; a GPU target's graphs go to TensorRT once converted
        "precision": "fp32",  # what was exported; quantization changes it per graph
        "bytes": sum(f.stat().st_size for f in files),
        "export_seconds": round(seconds, 2),
        "flops": flops,
        **({"fused_attention": fused} if fused else {}),
        **spec,
    }


def new_manifest(sam3, *, full: bool, target: str, precision: str, session: dict, sam3_source: dict, weights: str,
                 queries: int, top_k: int, instance_score_threshold: float, graphs: dict, parity: dict) -> dict:
    """What every bundle's manifest holds (a rule-only bundle's whole manifest, before its files are hashed)."""
    sam3_queries = sam3.model.config.detr_decoder_config.num_queries
    return {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "cseg_version": cseg.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "contents": "full" if full else RULE_ONLY,
        "target": target,
        "precision": precision,
        "session": session,
        "source": {"sam3": {**sam3_source, "weights": weights}},
        "model": {"num_queries": queries, "top_k": min(top_k, sam3_queries), "sam3_queries": sam3_queries},
        "preprocessing": {"sam3": {"size": sam3.image_size, "mean": SAM3_MEAN, "std": SAM3_STD,
                                   "resample": "bilinear, antialiased, rounded to uint8 (torchvision v2 Resize)"}},
        "postprocess": {
            "mask_logit_threshold": 0.0,
            "upsample": "bilinear, align_corners=False, to the input image size",
            "instance_score_threshold": instance_score_threshold,
            "instance_mask_logit_threshold": 0.0,
        },
        "tokenizers": {},
        "graphs": graphs,
        "parity": {k: {o: {m: v[m] for m in ("max_abs", "mean_abs", "tolerance", "scale")} for o, v in p.items()}
                   for k, p in parity.items()},  # fmt: skip
    }


def add_reasoner(manifest: dict, staging: Path, vlm, sam3, grid, *, max_length: int, text_length: int) -> None:
    """What a full bundle holds beyond a rule-only one: the VLM's and SAM 3's tokenizers and settings."""
    manifest["source"]["conceptseg"] = source(vlm.path)
    manifest["model"] = {**_model_section(vlm, text_length), **manifest["model"], "sam3_text_tokens": _sam3_text(sam3)}
    manifest["preprocessing"]["vlm"] = _vlm_preprocessing(vlm, grid)
    manifest["prompt"] = template()
    manifest["generation"] = _generation(vlm, max_length)
    manifest["router"] = {"kind": "heuristic", "max_words": 4, "limit": "0.1 * 2 ** (words - 1)",
                          "accept": "presence > limit"}  # fmt: skip
    manifest["tokenizers"] = {
        "vlm": _copy_files(vlm.path, VLM_TOKENIZER_FILES, staging / "tokenizers" / "vlm"),
        "sam3": _copy_files(sam3.path, SAM3_TOKENIZER_FILES, staging / "tokenizers" / "sam3"),
    }


def seal(staging: Path, manifest: dict) -> dict:
    """The hashes of every file now in `staging`, and the schema check; returns the manifest."""
    manifest["files"] = hash_files(staging)
    validate_manifest(manifest)
    return manifest


def write(staging: Path, manifest: dict) -> None:
    """manifest.json, written last: a staging folder that an interruption leaves behind never opens as a bundle. It
    appears whole (written beside, then renamed): a manifest.json that exists is a complete one."""
    partial = staging / f".{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(partial, staging / MANIFEST_NAME)


def source(path: Path, patterns=SOURCE_FILES) -> dict:
    """A checkpoint folder as the manifest records it: its path, each file's sha256, and one hash over them all."""
    files = {}
    for pattern in patterns:
        for f in sorted(path.glob(pattern)):
            files[f.name] = file_sha256(f)
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
    return {"path": str(path.resolve()), "sha256": combined, "files": files}


def _copy_files(source: Path, names, destination: Path) -> dict:
    destination.mkdir(parents=True, exist_ok=True)
    copied = {}
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)
            copied[name] = str((destination / name).relative_to(destination.parent.parent))
    return copied


def _model_section(vlm, text_length: int) -> dict:
    config = vlm.model.config
    text, vision = config.text_config, config.vision_config
    return {
        "hidden_size": text.hidden_size,
        "num_layers": text.num_hidden_layers,
        "num_kv_heads": text.num_key_value_heads,
        "head_dim": text.hidden_size // text.num_attention_heads,
        "vocab_size": text.vocab_size,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "mrope_section": list(text.rope_parameters["mrope_section"]),
        "vision": {
            "patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "window_size": vision.window_size,
            "tokens_per_second": vision.tokens_per_second,
            "out_hidden_size": vision.out_hidden_size,
        },
        "sam3_text_length": text_length,
    }


def _sam3_text(sam3) -> dict:
    """What SAM 3's text encoder graph takes from its tokenizer: ids below its embedding's rows, a phrase framed by
    the start and end tokens it was trained with. The runtime checks the bundle's tokenizer against it (a swapped
    tokenizer with rewritten hashes passes the sha256 check, not this one)."""
    return {
        "vocab_size": sam3.model.config.text_config.vocab_size,
        "bos_token_id": sam3.tokenizer.bos_token_id,
        "eos_token_id": sam3.tokenizer.eos_token_id,
    }


def _vlm_preprocessing(vlm, grid) -> dict:
    processor = vlm.image_processor
    return {
        "square_side": VLM_SIDE,
        "square_resample": "bicubic",
        "grid_thw": grid,
        "resized": [grid[1] * processor.patch_size, grid[2] * processor.patch_size],
        "resample": "bicubic",
        "min_pixels": processor.size["shortest_edge"],
        "max_pixels": processor.size["longest_edge"],
        "rescale_factor": processor.rescale_factor,
        "mean": list(processor.image_mean),
        "std": list(processor.image_std),
        "patch_size": processor.patch_size,
        "temporal_patch_size": processor.temporal_patch_size,
        "merge_size": processor.merge_size,
    }


def _generation(vlm, max_length: int) -> dict:
    config = vlm.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    return {
        "max_length": max_length,
        "greedy": True,
        "repetition_penalty": config.repetition_penalty or 1.0,
        "eos_token_ids": eos,
        "pad_token_id": config.pad_token_id,
        "im_end_token_id": vlm.tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
