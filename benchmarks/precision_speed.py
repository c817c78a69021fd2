"""CPU speed of quantized graphs against their fp32 originals, side by side in one run (not part of the tests).

    .venv/bin/python benchmarks/precision_speed.py --fp32 BUNDLE --quantized BUNDLE [BUNDLE ...] [--repeat 5]

For every graph a quantized bundle ships in another precision, runs the fp32 graph and the quantized one alternately
on the same recorded calibration inputs (`cseg calib collect` on the fp32 bundle, done here into a temp folder) and
prints the median time of each, the ratio, and both sizes on disk.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnxruntime as ort

from cseg.bench import median_ms


def _run_time(session, feed, repeat: int) -> float:
    names = {i.name for i in session.get_inputs()}
    used = {k: v for k, v in feed.items() if k in names}
    return median_ms(lambda: session.run(None, used), repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp32", required=True)
    parser.add_argument("--quantized", nargs="+", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--direct", nargs="*", default=[],
                        help="GRAPH:PRECISION quantized here from fp32 without the gate (e.g. vlm_decoder:int4)")
    args = parser.parse_args()

    from cseg.bundle.schema import read_manifest
    from cseg.calib.calibration_set import default_set
    from cseg.calib.collect import collect, feeds
    from cseg.runtime import Runtime

    fp32 = Path(args.fp32)
    base = read_manifest(fp32)
    work = Path(tempfile.mkdtemp())
    collect(Runtime.open(fp32), default_set(work / "set").items[:1], work / "data", progress=False)
    from cseg.calib.quantize import quantize

    candidates = []
    for bundle in map(Path, args.quantized):
        manifest = read_manifest(bundle)
        candidates += [(bundle, key, graph) for key, graph in manifest["graphs"].items() if graph["precision"] != "fp32"]
    for spec in args.direct:
        key, precision = spec.split(":")
        target = work / f"{key}.{precision}.onnx"
        source = base["graphs"][key]
        quantize(fp32 / source["file"], target, precision, feeds(work / "data" / key), source["keep_fp32"])
        candidates.append((work, key, {"file": target.name, "precision": f"{precision} (no gate)",
                                       "bytes": target.stat().st_size}))  # fmt: skip
    for bundle, key, graph in candidates:
        feed = feeds(work / "data" / key)[0]
        sessions = [ort.InferenceSession(str(b / g["file"]), providers=["CPUExecutionProvider"])
                    for b, g in ((fp32, base["graphs"][key]), (bundle, graph))]  # fmt: skip
        reference, quantized = (_run_time(s, feed, args.repeat) for s in sessions)
        print(json.dumps({
            "graph": key, "precision": graph["precision"], "fp32_ms": round(reference, 1),
            "quantized_ms": round(quantized, 1), "speedup": round(reference / quantized, 2),
            "fp32_mb": round(base["graphs"][key]["bytes"] / 1e6, 1), "quantized_mb": round(graph["bytes"] / 1e6, 1),
        }), flush=True)  # fmt: skip

if __name__ == "__main__":
    main()
