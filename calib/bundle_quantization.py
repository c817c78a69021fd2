"""Quantizing an fp32 bundle in the making: calibrate, quantize per the target's policy, gate, fall back, measure.

Called by the exporter on its staging directory after the fp32 graphs passed parity. Every number it produces goes
into the manifest's `quantization` section: per graph the precision asked for and the one shipped, the gate report
(cosine, max/mean abs error vs fp32 on held-out calibration inputs), and end to end against the fp32 pipeline on the
held-out samples (mask IoU, presence delta, generated-token agreement).

On the cpu target a quantized graph must also pay for itself: an int8 graph that ONNX Runtime runs no faster than
the fp32 graph (timed here, interleaved, on the exporting machine) is not shipped, and the manifest says why. int4
is weight-only and exists for memory (the LLM that does not fit), so its speed is recorded but does not decide.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from cseg.bundle.schema import file_sha256
from cseg.calib.calibration_set import CalibrationSet
from cseg.calib.collect import MAX_NEW_TOKENS, collect, feeds, sam3_on_text
from cseg.calib.quantize import MIN_COSINE, compare, passes, quantize, speed
from cseg.eval.metrics import iou
from cseg.runtime import Runtime
from cseg.runtime.onnxruntime.graph import session_options

SPEED_GATED = ("int8",)  # cpu target: shipped only when faster than fp32
TIMED = ("int8", "int4")  # cpu target: speed vs fp32 recorded (fp8 is simulated on the CPU: accuracy only)
SPEED_FEEDS = 4  # held-out inputs per timed pass (spread over the recording: prefill and decode steps alike)

RANDOM_WEIGHTS_NOTE = (
    "measured on the checkpoint this bundle was exported from; on random-init test checkpoints these numbers say "
    "that the machinery works, not how a trained model degrades"
)


def quantize_bundle(staging: Path, manifest: dict, profile: dict, precision: str, calib: CalibrationSet,
                    report: Callable[[str], None], progress: bool = True, keep_slower: bool = False,
                    text=None) -> dict:  # fmt: skip
    """Quantize `staging`'s graphs in place per the target profile's `precision` policy; returns the updated manifest
    (files not yet re-hashed). For a GPU target every graph is converted (fp16 at least) and gated.

    keep_slower: ship a cpu-target int8 graph even where it is slower here (the bundle will serve on another CPU).
    text: for a rule-only bundle (no reasoner, no text encoder), phrase -> SAM 3 text features: calibration and the
    end-to-end check then prompt SAM 3 with each sample's text alone."""
    policy = {key: value for key, value in profile["policies"][precision].items() if key in manifest["graphs"]}
    train, held = calib.split()
    work = Path(tempfile.mkdtemp(prefix=".calib-", dir=staging))
    try:
        report(f"calibrating on {len(train)} samples, gating on {len(held)} held-out samples")
        # the fp32 graphs serve from the manifest in memory: staging gets its manifest.json last, when it is done
        collect(Runtime.from_manifest(staging, manifest), train, work / "train", progress=progress, text=text)
        collect(Runtime.from_manifest(staging, manifest), held, work / "held", progress=progress, text=text)
        quantized = {**manifest, "graphs": {k: dict(v) for k, v in manifest["graphs"].items()}}
        table, replaced = {}, []
        for key, wanted in policy.items():
            entry, row = _quantize_graph(staging, manifest["graphs"][key], key, wanted, work, profile, report,
                                         keep_slower)  # fmt: skip
            quantized["graphs"][key].update(entry)
            table[key] = row
            if entry["precision"] != "fp32":
                replaced.append(staging / manifest["graphs"][key]["file"])
        end_to_end = _end_to_end(staging, manifest, quantized, held, text)
        tokens = f", token agreement {end_to_end['token_agreement']:.3f}" if "token_agreement" in end_to_end else ""
        report(f"  end to end vs fp32 on {len(held)} held-out samples: mask IoU min {end_to_end['mask_iou_min']:.4f}, "
               f"presence |delta| max {end_to_end['presence_delta_max']:.4f}{tokens}")  # fmt: skip
        for path in replaced:  # the fp32 originals of quantized graphs leave the bundle
            path.unlink()
            Path(str(path) + ".data").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    quantized["precision"] = precision
    quantized["quantization"] = {
        "precision": precision,
        "calibration": {"sha256": calib.sha256(), "samples": len(train), "held_out": len(held)},
        "gate": {"min_cosine": MIN_COSINE},
        "graphs": table,
        "end_to_end": end_to_end,
        "note": RANDOM_WEIGHTS_NOTE,
    }
    return quantized


def _quantize_graph(staging: Path, entry: dict, key: str, wanted: str, work: Path, profile: dict,
                    report, keep_slower: bool) -> tuple[dict, dict]:  # fmt: skip
    source = staging / entry["file"]
    calibration, held_out = feeds(work / "train" / key), feeds(work / "held" / key)
    precision, tried, fallback = wanted, [], profile["fallback"]
    while precision != "fp32":
        target = staging / "graphs" / f"{key}.{precision}.onnx"
        info = quantize(source, target, precision, calibration, entry.get("keep_fp32", []),
                        tensorrt=profile["backend"] == "tensorrt")  # fmt: skip
        gate = compare(source, target, held_out)
        worst = min(gate.values(), key=lambda e: e["cosine"])
        tried.append({"precision": precision, "passed": passes(gate, precision), "worst_cosine": worst["cosine"]})
        why = None if tried[-1]["passed"] else (f"misses its gate (min cosine {worst['cosine']:.5f} < "
                                                f"{MIN_COSINE[precision]})")  # fmt: skip
        if not why and profile["backend"] == "onnxruntime" and precision in TIMED:
            timing = speed(source, target, held_out[:: max(1, len(held_out) // SPEED_FEEDS)][:SPEED_FEEDS],
                           session_options(profile.get("session", {})))  # fmt: skip
            tried[-1]["speed"] = timing
            report(f"  {key:<13} {precision:<5} {timing['ms']:.1f} ms vs fp32 {timing['fp32_ms']:.1f} ms "
                   f"({timing['speedup']:.2f}x, interleaved, on this machine)")  # fmt: skip
            if precision in SPEED_GATED and timing["speedup"] <= 1.0 and not keep_slower:
                why = f"is not faster than fp32 on the exporting machine ({timing['speedup']:.2f}x)"
                tried[-1]["rejected"] = why
        if not why:
            report(f"  {key:<13} {precision:<5} gate ok (min cosine {worst['cosine']:.5f} >= {MIN_COSINE[precision]})")
            files = [target] + ([Path(str(target) + ".data")] if Path(str(target) + ".data").exists() else [])
            return (
                {"file": f"graphs/{target.name}", "sha256": file_sha256(target), "precision": precision,
                 "data_files": [f"graphs/{f.name}" for f in files[1:]], "bytes": sum(f.stat().st_size for f in files),
                 "quantization": info, **_io_types(target, entry)},
                {"requested": wanted, "shipped": precision, "gate": gate, "tried": tried, **info},
            )  # fmt: skip
        report(f"  WARNING {key}: {precision} {why}, falling back to {fallback[precision]}")
        target.unlink()
        Path(str(target) + ".data").unlink(missing_ok=True)
        precision = fallback[precision]
    return {"precision": "fp32"}, {"requested": wanted, "shipped": "fp32", "tried": tried}


def _io_types(path: Path, entry: dict) -> dict:
    """The manifest's inputs/outputs with the dtypes the converted graph declares (an fp16 KV cache, say)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dtypes = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.type.tensor_type.elem_type).name
              for t in (*graph.input, *graph.output)}  # fmt: skip
    return {side: [{**t, "dtype": dtypes.get(t["name"], t["dtype"])} for t in entry[side]] for side in ("inputs", "outputs")}


def _end_to_end(staging: Path, fp32: dict, quantized: dict, held, text) -> dict:
    reference = Runtime.from_manifest(staging, fp32)
    candidate = Runtime.from_manifest(staging, quantized)
    ious, presence, agreement = [], [], []
    if text is not None:  # a rule-only bundle: SAM 3 on each sample's text
        for item in held:
            want, got = (sam3_on_text(runtime, item, text) for runtime in (reference, candidate))
            ious.append(iou(want[0], got[0]))
            presence.append(abs(want[1] - got[1]))
        return {"mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
                "presence_delta_max": float(np.max(presence)), "samples": len(held)}  # fmt: skip
    for item in held:
        for route in ("full", "shortcut"):
            want = reference.segment(str(item.image), item.prompt, item.demos or None, route=route,
                                     max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
            got = candidate.segment(str(item.image), item.prompt, item.demos or None, route=route,
                                    max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
            ious.append(iou(want.mask, got.mask))
            presence.append(abs(want.presence - got.presence))
            if route == "full":
                length = max(len(want.token_ids), len(got.token_ids), 1)
                agreement.append(sum(a == b for a, b in zip(want.token_ids, got.token_ids)) / length)
    return {
        "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
        "presence_delta_max": float(np.max(presence)), "token_agreement": float(np.mean(agreement)),
        "samples": len(held),
    }  # fmt: skip
