"""The exporter's per-graph choice between ONNX Runtime and OpenVINO for a cpu bundle (issue 32), made on the
exporting machine and recorded in the manifest's `cpu_backends` section with that CPU's identity.

For every graph OpenVINO may serve (fp32 graphs; vlm_decoder stays on ONNX Runtime, cseg.cpu_backends.NOT_CHOSEN):
OpenVINO at each inference precision this CPU runs natively (f32 always; bf16 where it has AVX512-BF16 or AMX) runs
the graph on the inputs the parity check used, and must agree with ONNX Runtime on the same file:
- f32: every output within the graph's parity tolerance (what ONNX Runtime was held to against PyTorch, as recorded
  in the manifest), ranked top-K rows matched up to the order of tied scores as the parity check does;
- bf16: every output's cosine >= BF16_MIN_COSINE (the GPU targets' fp16 gate; bf16 cannot meet fp32 tolerances).
The passing candidates and ONNX Runtime are then timed, interleaved, medians; OpenVINO is chosen only where it is
faster than ONNX Runtime here. So on a CPU without bf16 units the choice is whichever of the two is faster in f32,
which is never slower than today's ONNX Runtime path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cseg.bench.timing import interleaved_ms
from cseg.cpu_backends import NOT_CHOSEN, REQUIRES_ANY, cpu_identity, openvino_missing, openvino_version
from cseg.errors import BundleError
from cseg.export.parity import match_ranked_rows
from cseg.runtime.onnxruntime.graph import OrtGraph, session_options

ROUNDS = 5
BF16_MIN_COSINE = 0.999


def choose_backends(staging: Path, manifest: dict, feeds: dict[str, dict], report: Callable[[str], None],
                    rounds: int = ROUNDS, cpu: dict | None = None) -> dict:  # fmt: skip
    """`manifest` with its `cpu_backends` section: per graph the backend chosen on this CPU and why, with the
    timings and the gate. `feeds`: per graph the inputs to measure with (the exporter's validation inputs)."""
    cpu = cpu_identity() if cpu is None else cpu
    missing = openvino_missing()
    settings = manifest.get("session", {})
    choices = {}
    for key, entry in manifest["graphs"].items():
        choices[key] = _choose(key, staging / entry["file"], entry, manifest["parity"].get(key, {}), feeds.get(key),
                               cpu, missing, settings, rounds)  # fmt: skip
        choice = choices[key]
        timing = "" if "onnxruntime_ms" not in choice else (
            f" (ONNX Runtime {choice['onnxruntime_ms']:.1f} ms, OpenVINO "
            + ", ".join(f"{p} {ms:.1f} ms" for p, ms in choice["openvino_ms"].items()) + ")")  # fmt: skip
        report(f"  {key:<13} {choice['backend']}{' ' + choice['precision'] if 'precision' in choice else ''}: "
               f"{choice['why']}{timing}")  # fmt: skip
    section = {"cpu": cpu, "openvino": openvino_version(), "graphs": choices,
               "measured": f"interleaved, median of {rounds} runs per backend, on the exporting machine"}  # fmt: skip
    return {**manifest, "cpu_backends": section}


def _choose(key: str, path: Path, entry: dict, parity: dict, feed: dict | None, cpu: dict, missing: str | None,
            settings: dict, rounds: int) -> dict:  # fmt: skip
    if key in NOT_CHOSEN:
        return {"backend": "onnxruntime", "why": NOT_CHOSEN[key]}
    if missing:
        return {"backend": "onnxruntime", "why": f"{missing} on the exporting machine"}
    if entry["precision"] != "fp32":
        return {"backend": "onnxruntime", "why": f"a {entry['precision']} graph: ONNX Runtime's quantized kernels "
                                                 "(OpenVINO is tried on fp32 graphs only)"}  # fmt: skip
    if feed is None:
        return {"backend": "onnxruntime", "why": "no inputs were recorded to measure it with"}
    from cseg.runtime.openvino.graph import OpenVinoGraph

    reference = OrtGraph(key, path, entry, session_options(settings), ["CPUExecutionProvider"])
    want = reference.run(feed)
    gate, passing = {}, {}
    for precision, needed in REQUIRES_ANY.items():
        if needed and not set(needed) & set(cpu["flags"]):
            continue  # emulated bf16 is slower than f32 everywhere it was measured: not worth the time
        try:
            graph = OpenVinoGraph(key, path, entry, precision, int(settings.get("intra_op_num_threads", 0)))
            gate[precision] = agreement(want, graph.run(feed), entry, parity, precision)
        except BundleError as exc:
            gate[precision] = {"passed": False, "why": str(exc)[:400]}
            continue
        if gate[precision]["passed"]:
            passing[precision] = graph
    if not passing:
        failed = "; ".join(f"{p}: {g.get('why', 'outside its gate')}" for p, g in gate.items())
        return {"backend": "onnxruntime", "why": f"OpenVINO fails the accuracy gate ({failed})", "gate": gate}
    calls = {"onnxruntime": lambda: reference.run(feed),
             **{p: (lambda g=g: g.run(feed)) for p, g in passing.items()}}  # fmt: skip
    ms = interleaved_ms(calls, rounds)
    best = min(passing, key=ms.__getitem__)
    timings = {"onnxruntime_ms": ms["onnxruntime"], "openvino_ms": {p: ms[p] for p in passing}, "gate": gate}
    ratio = ms["onnxruntime"] / ms[best]
    if ratio <= 1.0:
        why = f"OpenVINO {best} is not faster on the exporting CPU ({ratio:.2f}x)"
        return {"backend": "onnxruntime", "why": why, **timings}
    why = f"OpenVINO {best} is {ratio:.2f}x ONNX Runtime on the exporting CPU, within its gate"
    return {"backend": "openvino", "precision": best, "requires_any": REQUIRES_ANY[best], "why": why, **timings}


def agreement(want: dict, got: dict, entry: dict, parity: dict, precision: str) -> dict:
    """OpenVINO's outputs (`got`) against ONNX Runtime's (`want`) on the same graph and inputs: per output cosine and
    max |difference| (after matching tied top-K rows), and whether `precision`'s gate passes."""
    ranking = entry.get("ranking")
    allowed = {name: parity.get(name, {}).get("tolerance", 0.0) for name in want}
    if ranking is not None:
        # index[b, k]: the ONNX Runtime row that OpenVINO's row k is compared with (rows whose scores tie may swap)
        index = match_ranked_rows(want, got, ranking["scores"], ranking["rows"], allowed)
        want = {**want, **{name: np.stack([want[name][b, index[b]] for b in range(len(index))])
                           for name in ranking["rows"]}}  # fmt: skip
    outputs, passed = {}, True
    for name, reference in want.items():
        a, b = reference.astype(np.float64).ravel(), got[name].astype(np.float64).ravel()
        finite = bool(np.isfinite(b).all() or np.array_equal(np.isfinite(a), np.isfinite(b)))
        diff = np.abs(a - b)
        max_abs = float(np.nanmax(diff, initial=0.0)) if finite else float("inf")
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        cosine = float(a @ b / norm) if norm > 0 and finite else float(finite and np.array_equal(a, b))
        ok = (max_abs <= allowed[name]) if precision == "f32" else cosine >= BF16_MIN_COSINE
        outputs[name] = {"cosine": cosine, "max_abs": max_abs, "allowed": allowed[name]}
        passed = passed and ok and finite
    result = {"passed": passed, "outputs": outputs}
    if not passed:
        worst = min(outputs, key=lambda n: outputs[n]["cosine"]) if precision != "f32" else max(
            outputs, key=lambda n: outputs[n]["max_abs"] / max(outputs[n]["allowed"], 1e-30))  # fmt: skip
        bad = outputs[worst]
        result["why"] = (f"{worst} max |diff| {bad['max_abs']:.3g} > {bad['allowed']:.3g}" if precision == "f32"
                         else f"{worst} cosine {bad['cosine']:.5f} < {BF16_MIN_COSINE}")
    return result
