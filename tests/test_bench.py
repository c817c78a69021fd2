"""`cseg bench`: stage statistics, the same-run ratio against the reference, the plot."""

import json

from cseg import bench


def test_bench_reports_stages_ratio_and_plot(runtime, reference, photo, tmp_path):
    results = {name: bench.measure(backend, name, photo, "helmet", repeat=2, warmup=0, max_new_tokens=4)
               for name, backend in (("runtime", runtime), ("reference", reference))}  # fmt: skip
    summary = bench.report(results, {"runtime": bench.frame_loop(runtime, [photo, photo], "helmet")})
    full = summary["backends"]["runtime"]["full"]
    assert full["runs"] == 2 and full["decode_tokens_per_s"] > 0 and full["time_to_first_token_ms"] > 0
    assert {"sam3_vision", "vlm_prefill", "vlm_decode", "total"} <= set(full["stages_ms"])
    stats = full["stages_ms"]["total"]
    assert stats["median"] <= stats["p90"] <= stats["p99"]
    assert set(summary["reference_over_runtime"]) == {"shortcut", "full"} and summary["peak_rss_mb"] > 0
    assert "reference / runtime" in bench.table(summary)
    bench.plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    json.dumps(summary)  # serialisable as written by --json


def test_cli_bench(tiny_bundle, tmp_path, capsys):
    from cseg.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--bundle", str(tiny_bundle), "--repeat", "1", "--warmup", "0", "--frames", "1",
                 "--max-new-tokens", "2", "--json", str(out)]) == 0  # fmt: skip
    assert "runtime / full path" in capsys.readouterr().out
    assert json.loads(out.read_text())["backends"]["runtime"]["shortcut"]["runs"] == 1
    assert main(["bench", "--bundle", str(tiny_bundle), "--repeat", "0"]) == 2
