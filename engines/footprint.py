"""Will the bundle fit the device? An estimate of its memory at run time, made before anything is exported.

Read from the checkpoints' safetensors headers (shapes only, no weights loaded, no torch), so a 7B export aimed at
an 8 GB Orin Nano is refused in a second, not after an hour. The estimate:

    weights     per graph: linear/conv weights at the graph's precision (int4 = 4 bits + one fp16 scale per block of
                32), everything else (embeddings, norms, biases) at the target's base precision (fp16). The LLM's
                output head stays fp16 under int8/int4 (the quantizer keeps it out, see export/graphs/vlm_decoder.py)
    kv cache    2 x layers x total_tokens x kv_heads x head_dim x 2 bytes (fp16, allocated once at full length)
    workspace   the execution contexts' device memory (activations and tactic scratch), counted once: the runtime
                gives every context of every engine one shared block (shared_context_memory in
                runtime/tensorrt/engine.py). Estimated by the target's TensorRT workspace limit: an assumption, the
                real size (device_memory_size_v2) is only known once the engines are built
    runtime     CUDA context + TensorRT/cuBLAS/cuDNN kernels: RUNTIME_GB, an assumption, not a measurement
    host        on shared-memory devices (Jetson) the Python process itself: HOST_GB, an assumption too

against the module's memory less what the target reserves for the OS and the user's own process.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from cseg.bundle.schema import RULE_ONLY_GRAPH_KEYS
from cseg.engines.targets import AUTO_ORDER, GRAPH_ORDER
from cseg.errors import CheckpointError, InvalidInputError

RUNTIME_GB = 1.2
HOST_GB = 0.5
WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2 / 32}
_EMBEDDING_WORDS = ("embed_tokens", "embeddings", "pos_embed", "position_embedding", "query_embed",
                    "learnable_query", "cls_embed", "label_embed", "presence_token", "reference_points")  # fmt: skip
_KEPT_AT_BASE = ("lm_head",)  # linear layers the quantizer leaves alone


def safetensors_shapes(directory: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape of every *.safetensors file in `directory`, from the headers alone."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no *.safetensors files")
    shapes = {}
    for path in files:
        with open(path, "rb") as handle:
            # the format: an 8-byte little-endian header length, then the JSON header
            (length,) = struct.unpack("<Q", handle.read(8))
            try:
                header = json.loads(handle.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{path} is not a safetensors file (unreadable header)") from None
        shapes.update({name: entry["shape"] for name, entry in header.items() if name != "__metadata__"})
    return shapes


def _graph_of(name: str, model: str) -> str:
    if model == "conceptseg":
        if name.startswith("visual."):
            return "vlm_vision"
        return "vlm_decoder" if name.startswith(("model.", "lm_head.")) else "concept_head"
    if name.startswith("vision_encoder."):
        return "sam3_vision"
    return "sam3_text" if name.startswith(("text_encoder.", "text_projection.")) else "sam3_decoder"


def inventory(conceptseg: dict[str, list[int]], sam3: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """Parameter counts per graph: `quantizable` (linear/conv weights), `base` (what stays at the base precision)."""
    counts = {key: {"quantizable": 0, "base": 0} for key in GRAPH_ORDER}
    for model, shapes in (("conceptseg", conceptseg), ("sam3", sam3)):
        for name, shape in shapes.items():
            quantizable = (len(shape) >= 2 and not any(w in name for w in _EMBEDDING_WORDS)
                           and not name.startswith(_KEPT_AT_BASE))  # fmt: skip
            counts[_graph_of(name, model)]["quantizable" if quantizable else "base"] += math.prod(shape)
    return counts


def kv_dims(config: dict) -> dict[str, int]:
    """Layers, KV heads and head size of the LLM from the checkpoint's config.json (flat 4.5x or nested 5.x)."""
    text = config.get("text_config", config)
    return {
        "layers": text["num_hidden_layers"],
        "kv_heads": text["num_key_value_heads"],
        "head_dim": text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
    }


def rule_only_inventory(sam3: dict[str, list[int]]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """(inventory, kv_dims) of a rule-only bundle: SAM 3's image encoder and decoder (a rule brings its text
    features, so the text encoder stays out), and no KV cache (no LLM)."""
    counts = inventory({}, sam3)
    return {key: counts[key] for key in RULE_ONLY_GRAPH_KEYS}, {"layers": 0, "kv_heads": 0, "head_dim": 0}


def checkpoint_inventory(model_dir: str | Path, sam3_dir: str | Path) -> tuple[dict, dict]:
    """(inventory, kv_dims) of two local checkpoint directories."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{model_dir} has no config.json")
    return inventory(safetensors_shapes(model_dir), safetensors_shapes(sam3_dir)), kv_dims(json.loads(config.read_text()))


def estimate(counts: dict, kv: dict, profile: dict, policy: dict[str, str]) -> dict:
    """The footprint, in GB, of a bundle shipping `policy` on the target `profile` (see the module docstring)."""
    base = profile["base_precision"]
    weights = {
        key: (parts["quantizable"] * WEIGHT_BYTES[policy.get(key, base)] + parts["base"] * WEIGHT_BYTES[base]) / 1e9
        for key, parts in counts.items()
    }
    kv_gb = 2 * kv["layers"] * profile["shapes"]["total_tokens"] * kv["kv_heads"] * kv["head_dim"] * 2 / 1e9
    device = profile["device"]
    parts = {
        "weights": sum(weights.values()),
        "kv_cache": kv_gb,
        "workspace": profile["workspace_mb"] / 1000,
        "runtime": RUNTIME_GB,
        "host": HOST_GB if device["shared_memory"] else 0.0,
    }
    total = sum(parts.values())
    usable = device["memory_gb"] - profile["reserved_gb"]
    return {
        "graphs_gb": {k: round(v, 3) for k, v in weights.items()},
        "parts_gb": {k: round(v, 3) for k, v in parts.items()},
        "total_gb": round(total, 2),
        "device_gb": device["memory_gb"],
        "usable_gb": usable,
        "fits": total <= usable,
        "assumptions": {"runtime_gb": parts["runtime"], "host_gb": parts["host"]},
    }


def choose(counts: dict, kv: dict, target: str, profile: dict, precision: str, allow_oversize: bool,
           warn) -> tuple[str, dict]:  # fmt: skip
    """The precision to export and its footprint. `auto` takes the most accurate policy that fits. A fixed precision
    that does not fit is refused (or, with allow_oversize, warned about) naming the precision that would fit."""
    candidates = AUTO_ORDER[profile["backend"]]
    tried = {name: estimate(counts, kv, profile, profile["policies"][name]) for name in candidates}
    fitting = [name for name in candidates if tried[name]["fits"]]
    if precision == "auto":
        if fitting:
            return fitting[0], tried[fitting[0]]
        precision = candidates[-1]  # the smallest: refused below
    footprint = tried.get(precision) or estimate(counts, kv, profile, profile["policies"][precision])
    if footprint["fits"]:
        return precision, footprint
    device, smallest = profile["device"], min(tried, key=lambda name: tried[name]["total_gb"])
    message = (
        f"the bundle needs about {footprint['total_gb']:.1f} GB at {precision} ({_parts(footprint)}), but {target} "
        f"({device['name']}, {device['memory_gb']:g} GB) leaves about {footprint['usable_gb']:.1f} GB for it. "
        + (f"--precision {fitting[0]} would fit ({tried[fitting[0]]['total_gb']:.1f} GB)." if fitting else
           f"No precision of this target fits (the smallest, {smallest}, needs {tried[smallest]['total_gb']:.1f} GB): "
           "choose a module with more memory.")
    )  # fmt: skip
    if not allow_oversize:
        raise InvalidInputError(message + " Pass --allow-oversize to export anyway.")
    warn(f"WARNING: {message} Exporting anyway (--allow-oversize).")
    return precision, footprint


def _parts(footprint: dict) -> str:
    graphs = footprint["graphs_gb"]
    largest = max(graphs, key=graphs.get)
    parts = footprint["parts_gb"]
    kv = f", KV cache {parts['kv_cache']:.2f}" if parts["kv_cache"] else ""
    return (f"weights {parts['weights']:.1f} GB of which {largest} {graphs[largest]:.1f}{kv}, workspace "
            f"{parts['workspace']:.1f}, runtime {parts['runtime'] + parts['host']:.1f}")  # fmt: skip


def describe(footprint: dict) -> str:
    return f"estimated footprint {footprint['total_gb']:.1f} GB of {footprint['usable_gb']:.1f} GB usable: {_parts(footprint)}"
