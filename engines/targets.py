"""Deployment targets as data: the hardware, the backend, the precision policies and the shape profiles of each.

`cpu` is served by ONNX Runtime from the exported graphs. The GPU targets are served by TensorRT engines that
`cseg build` makes on the device itself (plans are bound to the GPU and TensorRT version that built them);
`cseg-export --target X` writes their per-target ONNX (fp16-converted, QDQ where the policy quantizes) and the recipe.

A policy maps every graph to the precision it ships in; a graph a CPU policy does not name stays fp32, one a GPU
policy does not name gets the target's `base_precision` (fp16). A graph that misses its accuracy gate falls back
along the target's `fallback` chain. Memory figures are the module's, in GB (10^9 bytes); on a Jetson the CPU and
the GPU share them, so `reserved_gb` (OS, desktop-less JetPack, the user's own process) is not available to cseg.
"""

from __future__ import annotations

from cseg.errors import InvalidInputError

GRAPH_ORDER = ("vlm_vision", "vlm_decoder", "concept_head", "sam3_vision", "sam3_text", "sam3_decoder")
CPU_FALLBACK = {"int4": "int8", "int8": "fp32", "fp8": "fp32"}
GPU_FALLBACK = {"int4": "int8", "int8": "fp16", "fp8": "fp16", "fp16": "fp32"}

# The shapes an engine is built for. images: VLM images per request (the target, plus one rendering of the
# demonstrations); prompt_tokens: the prefill (question, template, image tokens); total_tokens: prompt + generated,
# the KV cache's static length (the decode step's shapes, captured once as a CUDA graph).
DEFAULT_SHAPES = {"images": {"min": 1, "opt": 1, "max": 2}, "prompt_tokens": {"min": 1, "opt": 640, "max": 2048},
                  "total_tokens": 2816}  # fmt: skip


def _all(precision: str, **overrides: str) -> dict[str, str]:
    return {key: overrides.get(key, precision) for key in GRAPH_ORDER}


_ORIN_POLICIES = {
    "fp16": _all("fp16"),
    "int8": _all("fp16", vlm_vision="int8", vlm_decoder="int8", sam3_vision="int8", sam3_text="int8"),
    # weight-only INT4 for the LLM (what does not fit), INT8 QDQ for the ViTs, fp16 elsewhere
    "int4": _all("fp16", vlm_vision="int8", vlm_decoder="int4", sam3_vision="int8", sam3_text="int8"),
}
_WORKSTATION_POLICIES = {
    "fp16": _all("fp16"),
    "int8": _ORIN_POLICIES["int8"],
    "fp8": _all("fp16", vlm_vision="fp8", vlm_decoder="fp8", sam3_vision="fp8", sam3_text="fp8"),
    "int4": _ORIN_POLICIES["int4"],
}


def _orin(name: str, memory_gb: float, variants: list[float], bandwidth: float, reserved: float,
          workspace_mb: int) -> dict:  # fmt: skip
    return {
        "backend": "tensorrt",
        "device": {"name": name, "arch": "sm_87", "compute_capability": [8, 7], "memory_gb": memory_gb,
                   "memory_variants_gb": variants, "shared_memory": True, "bandwidth_gb_s": bandwidth,
                   "fp8": False},  # fmt: skip
        "tensorrt_versions": {"10.3": "JetPack 6.x", "10.16": "JetPack 7.2"},
        "precisions": [*_ORIN_POLICIES, "auto"],
        "default_precision": "auto",
        "base_precision": "fp16",
        "fallback": GPU_FALLBACK,
        "policies": _ORIN_POLICIES,
        "reserved_gb": reserved,
        "workspace_mb": workspace_mb,
        "shapes": DEFAULT_SHAPES,
    }


def _workstation(name: str, arch: str, capability: list[int], memory_gb: float, variants: list[float],
                 bandwidth: float) -> dict:  # fmt: skip
    return {
        "backend": "tensorrt",
        "device": {"name": name, "arch": arch, "compute_capability": capability, "memory_gb": memory_gb,
                   "memory_variants_gb": variants, "shared_memory": False, "bandwidth_gb_s": bandwidth,
                   "fp8": True},  # fmt: skip
        "tensorrt_versions": {"10.x": "TensorRT 10 (pip install tensorrt, or NVIDIA's packages)"},
        "precisions": [*_WORKSTATION_POLICIES, "auto"],
        "default_precision": "auto",
        "base_precision": "fp16",
        "fallback": GPU_FALLBACK,
        "policies": _WORKSTATION_POLICIES,
        "reserved_gb": 1.0,
        "workspace_mb": 4096,
        "shapes": DEFAULT_SHAPES,
    }


TARGETS: dict[str, dict] = {
    "cpu": {
        "backend": "onnxruntime",
        "precisions": ["fp32", "int8", "int4", "fp8", "auto"],
        "default_precision": "fp32",
        "base_precision": "fp32",
        "fallback": CPU_FALLBACK,
        "policies": {
            "fp32": {},
            "int8": {"vlm_vision": "int8", "vlm_decoder": "int8", "sam3_vision": "int8", "sam3_text": "int8"},
            "int4": {"vlm_decoder": "int4"},  # weight-only: the LLM is what does not fit; ViTs stay fp32
            # simulated on the CPU (accuracy only), for checking an Ada/Hopper FP8 policy before building on the GPU
            "fp8": {"vlm_vision": "fp8", "vlm_decoder": "fp8", "sam3_vision": "fp8", "sam3_text": "fp8"},
            "auto": {"vlm_vision": "int8", "vlm_decoder": "int4", "sam3_vision": "int8", "sam3_text": "int8"},
        },
        # graphs whose attention blocks run as ORT's fused CPU attention (export/fused_attention.py): those measured
        # faster with it on `small` (README, Measured here: vlm_vision in every run; sam3_decoder 1.12-1.17x on an
        # idle machine, one earlier run 0.82x; sam3_vision 0.96-1.08x stays decomposed); GPU targets keep standard
        # ONNX for TensorRT
        "fused_attention": ("vlm_vision", "sam3_decoder"),
        # vlm_decoder's KV cache: heads-major and updated in place by ORT's GroupQueryAttention (no per-token
        # transpose, concat or expand of the cache; export/group_query_attention.py); GPU targets: sequence-major
        "kv_cache": "shared",
        # ONNX Runtime session options for this target (the runtime may override them)
        "session": {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 0, "enable_mem_pattern": True},
    },
    "orin-agx": _orin("Jetson AGX Orin", 64, [32, 64], 204.8, reserved=4.0, workspace_mb=2048),
    "orin-nx": _orin("Jetson Orin NX", 16, [8, 16], 102.4, reserved=2.0, workspace_mb=1024),
    "orin-nano": _orin("Jetson Orin Nano", 8, [4, 8], 102.0, reserved=1.5, workspace_mb=512),
    "ada": _workstation("Ada workstation (e.g. RTX 6000 Ada)", "sm_89", [8, 9], 48, [16, 20, 24, 32, 48], 960),
    "hopper": _workstation("Hopper (H100/H200)", "sm_90", [9, 0], 80, [80, 94, 141], 3350),
}
ALIASES = {"orin": "orin-agx"}
# `auto` on a GPU target: the best-accuracy policy whose estimated footprint fits the device (see footprint.py)
AUTO_ORDER = {"tensorrt": ["fp16", "int8", "int4"], "onnxruntime": []}


def canonical(target: str) -> str:
    return ALIASES.get(target, target)


def resolve(target: str, precision: str | None) -> tuple[dict, str]:
    """The target's profile and the precision to use, or InvalidInputError listing the valid choices.

    For a GPU target `auto` is returned as is: it becomes a policy once the footprint is known (footprint.choose).
    """
    name = canonical(target)
    if name not in TARGETS:
        raise InvalidInputError(f"unknown target {target!r}; valid targets: {', '.join([*TARGETS, *ALIASES])}")
    profile = TARGETS[name]
    precision = precision or profile["default_precision"]
    if precision not in profile["precisions"]:
        raise InvalidInputError(
            f"precision {precision!r} is not available for target {name!r}; valid: {', '.join(profile['precisions'])}"
            + ("" if profile["backend"] != "tensorrt" or profile["device"]["fp8"] or precision != "fp8"
               else f" ({profile['device']['arch']} has no FP8 tensor cores)")  # fmt: skip
        )
    return profile, precision


def with_memory(profile: dict, memory_gb: float | None) -> dict:
    """The profile for a module with `memory_gb` (e.g. the 32 GB AGX Orin); refuses sizes the target is not sold in."""
    if memory_gb is None or profile["backend"] != "tensorrt":
        return profile
    variants = profile["device"]["memory_variants_gb"]
    if memory_gb not in variants:
        raise InvalidInputError(
            f"{profile['device']['name']} comes with {', '.join(f'{v:g}' for v in variants)} GB, not {memory_gb:g} GB"
        )
    return {**profile, "device": {**profile["device"], "memory_gb": memory_gb}}
