"""Deployment targets as data: which backend serves a bundle and with which precision policy.

Only `cpu` (ONNX Runtime, fp32) is exportable today; the GPU targets of the design (orin-*, ada, hopper) are added
with their TensorRT builds.
"""

from __future__ import annotations

from cseg.errors import InvalidInputError

TARGETS: dict[str, dict] = {
    "cpu": {
        "backend": "onnxruntime",
        "precisions": ["fp32"],
        "default_precision": "fp32",
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
