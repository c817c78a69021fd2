"""Deployment targets as data: which backend serves a bundle and with which precision policy.

Only `cpu` (ONNX Runtime) is exportable today; the GPU targets of the design (orin-*, ada, hopper) are added with
their TensorRT builds. A precision policy maps graphs to the precision they are quantized to; graphs it does not name
stay fp32 (the concept head and SAM 3's decoder, until measured safe). A graph that misses its accuracy gate falls
back along FALLBACK.
"""

from __future__ import annotations

from cseg.errors import InvalidInputError

FALLBACK = {"int4": "int8", "int8": "fp32", "fp8": "fp32"}

TARGETS: dict[str, dict] = {
    "cpu": {
        "backend": "onnxruntime",
        "precisions": ["fp32", "int8", "int4", "fp8", "auto"],
        "default_precision": "fp32",
        "policies": {
            "fp32": {},
            "int8": {"vlm_vision": "int8", "vlm_decoder": "int8", "sam3_vision": "int8", "sam3_text": "int8"},
            "int4": {"vlm_decoder": "int4"},  # weight-only: the LLM is what does not fit; ViTs stay fp32
            # simulated on the CPU (accuracy only), for checking an Ada/Hopper FP8 policy before building on the GPU
            "fp8": {"vlm_vision": "fp8", "vlm_decoder": "fp8", "sam3_vision": "fp8", "sam3_text": "fp8"},
            "auto": {"vlm_vision": "int8", "vlm_decoder": "int4", "sam3_vision": "int8", "sam3_text": "int8"},
        },
        # ONNX Runtime session options for this target (the runtime may override them)
        "session": {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 0, "enable_mem_pattern": True},
    },
}


def resolve(target: str, precision: str | None) -> tuple[dict, str]:
    """The target's profile and the precision to use, or InvalidInputError listing the valid choices."""
    if target not in TARGETS:
        raise InvalidInputError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    profile = TARGETS[target]
    precision = precision or profile["default_precision"]
    if precision not in profile["precisions"]:
        raise InvalidInputError(
            f"precision {precision!r} is not available for target {target!r}; valid: {', '.join(profile['precisions'])}"
        )
    return profile, precision
