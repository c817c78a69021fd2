"""Slow (not in the default run): SAM 3 at its published size, exported and parity-checked like any graph.

Run with `.venv/bin/python -m pytest -m slow -s tests/test_full_size_export.py`. Writes a random-init full-size
SAM 3 (840M parameters, 3.4 GB) next to a tiny VLM, then exports sam3_vision, sam3_text and sam3_decoder, printing
export time, parity check time, file size and peak resident memory per graph (peak reset before each graph).
"""

import json
import resource
import time

import pytest

pytestmark = pytest.mark.slow


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5" resets VmHWM, the peak resident set size
        handle.write("5")


def _peak_rss_gb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def test_full_size_sam3_exports_with_parity(tmp_path):
    from cseg.export.loading import load_conceptseg, load_sam3
    from cseg.export.models.make_checkpoint import make_checkpoint

    started = time.perf_counter()
    model_dir, sam3_dir = make_checkpoint("tiny", seed=0, out=tmp_path / "ckpt", sam3_size="full")
    written = time.perf_counter() - started
    vlm, sam3 = load_conceptseg(model_dir), load_sam3(sam3_dir, attn_implementation="eager")
    assert sum(p.numel() for p in sam3.model.parameters()) > 800e6
    results = {"checkpoint_write_s": round(written, 1)}
    for key in ("sam3_text", "sam3_decoder", "sam3_vision"):
        results[key] = export_and_check(vlm, sam3, key, tmp_path)
        print(key, json.dumps(results[key]), flush=True)
    print(json.dumps(results, indent=1))


def export_and_check(vlm, sam3, key: str, tmp_path) -> dict:
    """One graph exported and parity-checked as export_bundle does, with its times, size and peak memory; the files
    are deleted after. The default suite runs it on the tiny checkpoint (tests/test_slow_smoke.py)."""
    from cseg.export.graphs import GRAPHS
    from cseg.export.onnx_export import export_graph
    from cseg.export.parity import check_parity

    _reset_peak_rss()
    spec = GRAPHS[key](vlm, sam3, {"top_k": 20, "queries": vlm.num_queries, "vlm_grid": [1, 42, 42]})
    began = time.perf_counter()
    files = export_graph(spec, tmp_path / f"{key}.onnx")
    exported = time.perf_counter() - began
    export_peak = _peak_rss_gb()
    parity = check_parity(spec, files[0])
    result = {
        "export_s": round(exported, 1),
        "parity_s": round(time.perf_counter() - began - exported, 1),
        "mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "files": [f.name for f in files],
        "export_peak_rss_gb": round(export_peak, 2),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "parity": {k: {m: float(f"{v[m]:.3g}") for m in ("max_abs", "tolerance")} for k, v in parity.items()},
    }
    for f in files:
        f.unlink()
    return result


def test_full_size_rule_only_export(tmp_path):
    """A rule-only bundle of the published-size SAM 3 (image encoder + decoder, the weights id): export time and size.
    Prints the time of each step; the graphs are checked for parity like any export."""
    from cseg.bundle.schema import read_manifest
    from cseg.export.bundle import RULE_QUERIES, export_bundle
    from cseg.export.models.make_checkpoint import make_checkpoint

    started = time.perf_counter()
    _, sam3_dir = make_checkpoint("tiny", seed=0, out=tmp_path / "ckpt", sam3_size="full")
    written = time.perf_counter() - started
    lines = []
    began = time.perf_counter()
    _reset_peak_rss()
    bundle = export_bundle(None, sam3_dir, tmp_path / "rule-only", queries=RULE_QUERIES, progress=False,
                           report=lambda line: (lines.append(line), print(line, flush=True)))  # fmt: skip
    exported = time.perf_counter() - began
    results = {"checkpoint_write_s": round(written, 1), "export_s": round(exported, 1), **rule_only_summary(bundle)}
    print(json.dumps(results, indent=1))


def rule_only_summary(bundle) -> dict:
    """What the rule-only test checks and prints of its bundle (also run on the tiny rule-only bundle by the default
    suite, tests/test_slow_smoke.py)."""
    from cseg.bundle.schema import read_manifest

    manifest = read_manifest(bundle)
    assert list(manifest["graphs"]) == ["sam3_vision", "sam3_decoder"] and len(manifest["source"]["sam3"]["weights"]) == 64
    return {
        "graph_export_s": {k: g["export_seconds"] for k, g in manifest["graphs"].items()},
        "bundle_gb": round(sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e9, 2),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
    }
