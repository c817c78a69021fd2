"""`cseg bench`: stage statistics, the same-run ratio against the reference, the plot."""

import json

from cseg import bench


def test_bench_reports_stages_ratio_and_plot(runtime, reference, photo, tmp_path):
    calls = []

    class Recorded:  # records the order in which the backends run
        def __init__(self, name, backend):
            self.name, self.backend = name, backend

        def segment(self, *args, **kwargs):
            calls.append(self.name)
            return self.backend.segment(*args, **kwargs)

    backends = {"runtime": Recorded("runtime", runtime), "reference-fp32": Recorded("reference-fp32", reference)}
    results = bench.measure(backends, photo, "helmet", repeat=2, warmup=1, max_new_tokens=4)
    # interleaved run by run, the order rotated each round: a slow spell of the machine hits both backends
    assert calls == ["runtime", "reference-fp32"] * 2 + ["reference-fp32", "runtime"] * 2 + ["runtime", "reference-fp32"] * 2
    summary = bench.report(results, bench.frame_loop(backends, [photo, photo], "helmet"))
    full = summary["backends"]["runtime"]["full"]
    assert full["runs"] == 2 and full["decode_tokens_per_s"] > 0 and full["time_to_first_token_ms"] > 0
    assert {"sam3_vision", "vlm_prefill", "vlm_decode", "total"} <= set(full["stages_ms"])
    stats = full["stages_ms"]["total"]
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert set(summary["speedup"]) == {"shortcut", "full"} and summary["peak_rss_mb"] > 0
    full_speed = summary["speedup"]["full"]
    assert full_speed["fastest_reference"] == "reference-fp32"
    ratio = full_speed["references"]["reference-fp32"]
    assert ratio["paired_min"] <= ratio["paired_median"] <= ratio["paired_max"]
    assert set(summary["frames_per_s"]) == {"runtime", "reference-fp32"}
    assert "reference-fp32 / runtime" in bench.table(summary)
    bench.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    json.dumps(summary)  # serialisable as written by --json


def test_cli_bench(tiny_bundle, tmp_path, capsys):
    from cseg.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--bundle", str(tiny_bundle), "--repeat", "1", "--warmup", "0", "--frames", "1",
                 "--max-new-tokens", "2", "--json", str(out), "--plot", str(tmp_path / "bench.png")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "runtime / full path" in printed and "bandwidth bound" in printed
    # the host-path micro-benchmark lives with the runtime (cseg.runtime.host_path_bench); the CLI still prints it
    assert "host path, 1080p BGR frame, 20 instances" in printed and "host path on CUDA" in printed
    summary = json.loads(out.read_text())
    assert summary["backends"]["runtime"]["shortcut"]["runs"] == 1
    line = summary["roofline"]  # the exporter's FLOP counts against the measured machine
    assert line["peaks"]["fp32_gflop_s"] > 0 and line["peaks"]["int8_gop_s"] > 0 and line["peaks"]["bandwidth_gb_s"] > 0
    assert set(line["graphs"]) | set(line["cached"]) == set(bench.ROOFLINE_STAGES)
    for graph in line["graphs"].values():
        assert graph["gflop"] > 0 and 0 < graph["fraction_of_peak"] < 10  # above 1 only for noisy tiny timings
        assert 0 < graph["fraction_of_best"] <= graph["fraction_of_peak"]
    from cseg import cpu_backends

    if cpu_backends.native_precision() == "bf16":  # an AVX512-BF16 / AMX CPU: measured through OpenVINO
        assert line["peaks"]["bf16_gflop_s"] > 0
    else:  # no bf16 peak where bf16 is emulated, and the line says so
        assert line["peaks"]["bf16_gflop_s"] is None and "no native bf16" in printed
    assert 0 < line["decode"]["fraction_of_bound"] and line["decode"]["weight_mb"] > 0
    assert summary["host_path"]["cpu"]["preprocess_ms"] > 0 and summary["host_path"]["instances"] == 20
    assert main(["bench", "--bundle", str(tiny_bundle), "--repeat", "0"]) == 2


def test_each_graph_is_put_against_the_peak_of_its_precision_and_the_best_one():
    """A graph OpenVINO served in bf16 is measured against the bf16 peak, an int8 graph against int8's, and every graph
    against the machine's best precision; an unmeasured peak (None, NaN) is never the best."""
    from cseg.cpu_backends import Choice

    graphs = {key: {"flops": {"count": 1e9}, "precision": "int8" if key == "sam3_decoder" else "fp32"}
              for key in bench.ROOFLINE_STAGES}  # fmt: skip
    manifest = {"graphs": {**graphs, "vlm_decoder": {"bytes": 1e6}}}
    stages = {key: {"median": 10.0} for key in bench.ROOFLINE_STAGES}  # 100 GFLOP/s each
    summary = {"backends": {"runtime": {"full": {"stages_ms": stages, "decode_tokens_per_s": 5.0}}}}
    peaks = {"fp32_gflop_s": 200.0, "int8_gop_s": 1000.0, "bf16_gflop_s": 400.0, "bandwidth_gb_s": 10.0}
    choices = {"vlm_vision": Choice("openvino", "bf16", "faster"), "sam3_text": Choice("openvino", "f32", "faster")}
    line = bench.roofline(summary, manifest, peaks, choices)
    got = {key: (g["precision"], g["fraction_of_peak"], g["fraction_of_best"]) for key, g in line["graphs"].items()}
    assert line["best"] == "int8"
    assert got == {"sam3_vision": ("fp32", 0.5, 0.1), "sam3_text": ("fp32", 0.5, 0.1),
                   "vlm_vision": ("bf16", 0.25, 0.1), "sam3_decoder": ("int8", 0.1, 0.1)}  # fmt: skip
    assert "25.0% of its bf16 peak,  10.0% of the best (int8)" in bench.roofline_table(line)
    line = bench.roofline(summary, manifest, {**peaks, "int8_gop_s": float("nan"), "bf16_gflop_s": None})
    assert line["best"] == "fp32" and line["graphs"]["vlm_vision"]["precision"] == "fp32"


def test_a_graph_the_runtimes_cache_served_is_no_roofline_point(runtime, photo):
    """A repeated phrase is served by the runtime's text cache: timed as "sam3_text_cache", so "sam3_text" is always
    a graph run, and the roofline names the graph instead of dividing its FLOPs by a lookup's microseconds."""
    first = runtime.segment(photo, "a roofline probe", route="shortcut").timings
    again = runtime.segment(photo, "a roofline probe", route="shortcut").timings
    assert first["sam3_text"] > 0 and "sam3_text_cache" not in first
    assert "sam3_text" not in again and again["sam3_text_cache"] == 0.0
    graphs = {key: {"flops": {"count": 1e9}, "precision": "fp32"} for key in bench.ROOFLINE_STAGES}
    manifest = {"graphs": {**graphs, "vlm_decoder": {"bytes": 1e6}}}
    stages = {"sam3_vision": {"median": 10.0}, "sam3_text_cache": {"median": 0.0}}
    summary = {"backends": {"runtime": {"full": {"stages_ms": stages, "decode_tokens_per_s": 5.0}}}}
    line = bench.roofline(summary, manifest, {"fp32_gflop_s": 100.0, "int8_gop_s": 200.0, "bandwidth_gb_s": 10.0})
    assert set(line["graphs"]) == {"sam3_vision"} and line["cached"] == ["sam3_text"]
    assert "sam3_text     served from the runtime's cache" in bench.roofline_table(line)
