"""Which backend serves each graph of a cpu bundle: ONNX Runtime, or OpenVINO where the exporter measured it faster
and within the accuracy gate (issue 32). Torch-free and OpenVINO-free: `cseg inspect` reads the same plan as
`Runtime.open` (cseg.runtime.openvino serves it).

The manifest's `cpu_backends` section records the choice and the CPU it was made on. A choice is only as good as the
CPU it was measured on: bf16 needs AVX512-BF16 or AMX, so a bf16 choice on a CPU without either is served by ONNX
Runtime (correct, and what that CPU runs fastest as far as anyone measured) with a one-line notice, never refused.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass

OPENVINO_VERSION = "2026.4.1"  # what the choice is measured with (pyproject's [openvino] extra)
# The flags that decide what OpenVINO's CPU plugin can run natively. Recorded with a choice so that a bundle carried
# to another CPU can tell whether the choice still holds.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Per OpenVINO inference precision: the CPU flags of which at least one must be present for the choice to hold.
# f32 runs on any x86-64 CPU OpenVINO supports; bf16 without these is emulated (or refused) and far slower.
REQUIRES_ANY = {"f32": [], "bf16": ["avx512_bf16", "amx_bf16"]}
# vlm_decoder binds its KV cache in place with ONNX Runtime's IO binding (runtime/host/decoder.py): no OpenVINO there
NOT_CHOSEN = {"vlm_decoder": "the decoder's KV cache is bound in place through ONNX Runtime's IO binding"}

log = logging.getLogger("cseg.runtime")


def cpu_identity() -> dict:
    """This CPU's model name and which of FLAGS it has (from /proc/cpuinfo; empty where there is none)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif name.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [flag for flag in FLAGS if flag in flags]}


def openvino_missing() -> str | None:
    """Why OpenVINO cannot serve here (None: it can). Found without importing it (a second of start-up)."""
    if importlib.util.find_spec("openvino") is None:
        return "openvino not installed (pip install 'cseg[openvino]')"
    return None


def openvino_version() -> str | None:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Choice:
    backend: str  # "onnxruntime" or "openvino"
    precision: str | None  # OpenVINO's inference precision ("f32", "bf16"); None on ONNX Runtime
    why: str
    notice: bool = False  # the manifest chose OpenVINO and this machine cannot follow it: worth a line to the user


def plan(manifest: dict, device: str, cpu: dict | None = None, missing: str | None = "unchecked") -> dict[str, Choice]:
    """Per graph served on the CPU, the backend and why. device "cpu" keeps ONNX Runtime for every graph; "auto"
    follows the manifest's choice where OpenVINO is installed and this CPU has what the choice assumed.
    `cpu` and `missing` default to this machine's (tests pass others)."""
    section = manifest.get("cpu_backends")
    chosen = section["graphs"] if section else {}
    cpu = cpu_identity() if cpu is None else cpu
    missing = openvino_missing() if missing == "unchecked" else missing
    out = {}
    for key in manifest["graphs"]:
        entry = chosen.get(key)
        if entry is None:
            why = NOT_CHOSEN.get(key, "no OpenVINO choice in the manifest (exported without --openvino)")
            out[key] = Choice("onnxruntime", None, why)
        elif entry["backend"] != "openvino":
            out[key] = Choice("onnxruntime", None, entry["why"])
        elif device == "cpu":
            out[key] = Choice("onnxruntime", None, "device='cpu' keeps ONNX Runtime (OpenVINO was chosen: "
                                                   "device='auto' serves it)")  # fmt: skip
        elif missing:
            out[key] = Choice("onnxruntime", None, f"{missing}; the manifest chose OpenVINO {entry['precision']}", True)
        elif not _holds(entry, cpu):
            lacks = " or ".join(entry["requires_any"])
            why = f"OpenVINO {entry['precision']} was chosen on {section['cpu']['model']}; this CPU has no {lacks}"
            out[key] = Choice("onnxruntime", None, why, True)
        else:
            out[key] = Choice("openvino", entry["precision"], entry["why"])
    return out


def with_openvino(manifest: dict, precision: str = "f32", why: str = "forced") -> dict:
    """A copy of `manifest` as if the exporter had chosen OpenVINO `precision` for every graph it may serve, on this
    CPU: what `cseg bench --openvino` times as its own column, whatever the bundle's own choice."""
    graphs = {key: {"backend": "openvino", "precision": precision, "requires_any": REQUIRES_ANY[precision], "why": why}
              for key in manifest["graphs"] if key not in NOT_CHOSEN}  # fmt: skip
    section = {"cpu": cpu_identity(), "openvino": openvino_version(), "graphs": graphs}
    return {**manifest, "cpu_backends": section}


def native_precision(cpu: dict | None = None) -> str:
    """The OpenVINO inference precision this CPU runs fastest natively: bf16 with AVX512-BF16 or AMX, else f32."""
    flags = set((cpu_identity() if cpu is None else cpu)["flags"])
    return "bf16" if flags & set(REQUIRES_ANY["bf16"]) else "f32"


def _holds(entry: dict, cpu: dict) -> bool:
    needed = entry.get("requires_any") or []
    return not needed or bool(set(needed) & set(cpu["flags"]))


def notify(choices: dict[str, Choice]) -> None:
    """One line for every graph the manifest gave OpenVINO that falls back to ONNX Runtime here."""
    fallen = {key: choice.why for key, choice in choices.items() if choice.notice}
    if fallen:
        reasons = sorted(set(fallen.values()))
        log.warning("serving %s with ONNX Runtime instead of OpenVINO: %s", ", ".join(fallen), "; ".join(reasons))
