"""The OpenVINO backend for cpu bundles (issue 32): the exporter's per-graph choice, its record in the manifest, and
what Runtime.open serves where the choice cannot hold (another CPU, no openvino)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys

import numpy as np
import pytest

from cseg import cpu_backends
from cseg.bundle.schema import read_manifest, validate_manifest
from cseg.errors import BundleError

pytest.importorskip("openvino")  # the [openvino] extra, which `make install` installs

AVX2_ONLY = {"model": "an AVX2 CPU", "flags": ["avx2"]}
WITH_AMX = {"model": "an AMX Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}
OPENVINO_GRAPHS = ("vlm_vision", "concept_head", "sam3_vision", "sam3_text", "sam3_decoder")


@pytest.fixture(scope="module")
def openvino_bundle(tiny_checkpoint, tmp_path_factory):
    from cseg.export.bundle import export_bundle

    lines = []
    out = export_bundle(*tiny_checkpoint, tmp_path_factory.mktemp("bundles") / "tiny_openvino", progress=False,
                        openvino=True, report=lines.append)  # fmt: skip
    return out, lines


def _choose_all(manifest: dict, precision: str = "f32", cpu: dict | None = None) -> dict:
    """`manifest` as if the exporter had chosen OpenVINO `precision` for every graph it may serve, on `cpu`."""
    manifest = cpu_backends.with_openvino(manifest, precision, "test")
    manifest["cpu_backends"]["cpu"] = cpu or AVX2_ONLY
    assert set(manifest["cpu_backends"]["graphs"]) == set(OPENVINO_GRAPHS)
    validate_manifest(manifest)
    return copy.deepcopy(manifest)


@pytest.fixture(scope="module")
def all_openvino_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a manifest that chose OpenVINO f32 for every graph it may serve (f32 holds on any CPU)."""
    bundle = tmp_path_factory.mktemp("bundles") / "tiny_all_openvino"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "manifest.json").write_text(json.dumps(_choose_all(read_manifest(tiny_bundle))))
    return bundle


def test_choice_on_tiny_graphs_is_gated_timed_and_round_trips(tiny_bundle, tmp_path):
    """The exporter's choice on two tiny graphs fed random inputs (the export itself: the slow test below)."""
    from cseg.export.cpu_choice import choose_backends

    manifest = read_manifest(tiny_bundle)
    rng = np.random.default_rng(0)
    size, hidden = manifest["preprocessing"]["sam3"]["size"], manifest["model"]["hidden_size"]
    feeds = {"sam3_vision": {"pixel_values": rng.standard_normal((1, 3, size, size), dtype=np.float32)},
             "concept_head": {"hidden_states": rng.standard_normal((1, 12, hidden), dtype=np.float32)}}  # fmt: skip
    lines = []
    chosen = choose_backends(tiny_bundle, manifest, feeds, lines.append, rounds=2)
    section = chosen["cpu_backends"]
    _check_choices(section, feeds)
    for key in ("vlm_vision", "sam3_text", "sam3_decoder"):
        assert section["graphs"][key] == {"backend": "onnxruntime", "why": "no inputs were recorded to measure it with"}
    assert len(lines) == len(manifest["graphs"])
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "manifest.json").write_text(json.dumps(chosen))
    assert read_manifest(bundle)["cpu_backends"] == json.loads(json.dumps(section))


def _check_choices(section: dict, keys) -> None:
    assert section["cpu"] == cpu_backends.cpu_identity()
    assert section["openvino"] == cpu_backends.openvino_version()
    assert section["graphs"]["vlm_decoder"] == {"backend": "onnxruntime", "why": cpu_backends.NOT_CHOSEN["vlm_decoder"]}
    for key in keys:
        entry = section["graphs"][key]
        # OpenVINO reads the tiny graph (com.microsoft fused attention included) and agrees with ONNX Runtime within
        # the graph's parity tolerance in f32
        assert entry["gate"]["f32"]["passed"], (key, entry["gate"])
        for name, output in entry["gate"]["f32"]["outputs"].items():
            assert output["max_abs"] <= output["allowed"], (key, name, output)
        faster = min(entry["openvino_ms"].values()) < entry["onnxruntime_ms"]
        assert (entry["backend"] == "openvino") == faster, entry  # the faster of the two, never a slower OpenVINO
        if not {"avx512_bf16", "amx_bf16"} & set(section["cpu"]["flags"]):
            assert list(entry["gate"]) == ["f32"]  # no bf16 units: bf16 is not even tried


@pytest.mark.slow  # a whole tiny export (minutes on a loaded 2-core machine); the test above covers the choice
def test_choice_is_recorded_gated_and_round_trips(openvino_bundle):
    bundle, lines = openvino_bundle
    manifest = read_manifest(bundle)  # validates against the schema with the new section
    section = manifest["cpu_backends"]
    _check_choices(section, OPENVINO_GRAPHS)
    assert any("choosing each graph's CPU backend" in line for line in lines)
    from cseg.bundle.report import describe

    report = describe(bundle)
    assert f"cpu backends  chosen on {section['cpu']['model']}" in report
    for key, entry in section["graphs"].items():
        assert f"  {key:<13} {entry['backend']}" in report


def test_old_bundle_without_choice_stays_valid_and_on_onnxruntime(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert "cpu_backends" not in manifest
    choices = cpu_backends.plan(manifest, "auto")
    assert {c.backend for c in choices.values()} == {"onnxruntime"}
    assert not any(c.notice for c in choices.values())


def test_schema_refuses_a_bad_choice(tiny_bundle):
    manifest = _choose_all(read_manifest(tiny_bundle))
    del manifest["cpu_backends"]["graphs"]["sam3_vision"]["precision"]
    with pytest.raises(BundleError, match="cpu_backends"):
        validate_manifest(manifest)
    manifest = _choose_all(read_manifest(tiny_bundle))
    manifest["cpu_backends"]["graphs"]["no_such_graph"] = {"backend": "onnxruntime", "why": "x"}
    with pytest.raises(BundleError, match="no_such_graph"):
        validate_manifest(manifest)


def test_openvino_serves_the_chosen_graphs_like_onnxruntime(tiny_bundle, photo, monkeypatch):
    from cseg.runtime import Runtime
    from cseg.runtime.openvino.graph import OpenVinoGraph

    monkeypatch.setattr(cpu_backends, "cpu_identity", lambda: AVX2_ONLY)
    manifest = _choose_all(read_manifest(tiny_bundle))
    served = Runtime.from_manifest(tiny_bundle, manifest)
    onnxruntime = Runtime.from_manifest(tiny_bundle, manifest, device="cpu")  # device="cpu" keeps ONNX Runtime
    for key in OPENVINO_GRAPHS:
        assert isinstance(served.graphs[key], OpenVinoGraph), key
        assert not isinstance(onnxruntime.graphs[key], OpenVinoGraph), key
    assert not isinstance(served.graphs["vlm_decoder"], OpenVinoGraph)
    for route in ("shortcut", "full"):
        want = onnxruntime.segment(photo, "astronaut", route=route, max_new_tokens=4)
        got = served.segment(photo, "astronaut", route=route, max_new_tokens=4)
        assert got.token_ids == want.token_ids
        assert abs(got.presence - want.presence) < 1e-4
        assert (got.mask != want.mask).mean() < 1e-3


def test_bf16_choice_on_a_cpu_without_bf16_falls_back_with_one_notice(tiny_bundle, monkeypatch, caplog):
    from cseg.runtime import Runtime
    from cseg.runtime.openvino.graph import OpenVinoGraph

    manifest = _choose_all(read_manifest(tiny_bundle), "bf16", cpu=WITH_AMX)
    monkeypatch.setattr(cpu_backends, "cpu_identity", lambda: AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="cseg.runtime"):
        runtime = Runtime.from_manifest(tiny_bundle, manifest)
    assert not any(isinstance(graph, OpenVinoGraph) for graph in runtime.graphs.values())
    notices = [r.getMessage() for r in caplog.records if r.name == "cseg.runtime"]
    assert len(notices) == 1 and "an AMX Xeon" in notices[0] and "amx_bf16" in notices[0], notices
    assert all(runtime.cpu_choices[key].notice for key in OPENVINO_GRAPHS)
    # and on a CPU that has what the choice assumed, the plan follows it
    on_amx = cpu_backends.plan(manifest, "auto", cpu=WITH_AMX, missing=None)
    assert {on_amx[key].backend for key in OPENVINO_GRAPHS} == {"openvino"}


def test_a_graph_openvino_cannot_load_here_falls_back_with_a_notice(tiny_bundle, monkeypatch, caplog):
    from cseg.runtime import Runtime
    from cseg.runtime.onnxruntime.graph import OrtGraph
    from cseg.runtime.openvino import graph

    def refuse(self, key, path, *args):
        raise BundleError(f"graph {key} ({path.name}) cannot be loaded by OpenVINO: an unknown operator")

    monkeypatch.setattr(graph.OpenVinoGraph, "__init__", refuse)  # as another OpenVINO version might
    with caplog.at_level(logging.WARNING, logger="cseg.runtime"):
        runtime = Runtime.from_manifest(tiny_bundle, _choose_all(read_manifest(tiny_bundle)))
    assert all(isinstance(g, OrtGraph) for g in runtime.graphs.values())
    messages = [r.getMessage() for r in caplog.records if r.name == "cseg.runtime"]
    assert len(messages) == len(OPENVINO_GRAPHS) and all("unknown operator" in m for m in messages), messages


def test_openvino_not_installed_serves_onnxruntime_and_inspect_says_why(all_openvino_bundle, monkeypatch, caplog):
    from cseg.bundle.report import describe
    from cseg.runtime import Runtime
    from cseg.runtime.onnxruntime.graph import OrtGraph

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails, find_spec finds nothing
    with pytest.raises(ImportError):
        import openvino  # noqa: F401
    with caplog.at_level(logging.WARNING, logger="cseg.runtime"):
        runtime = Runtime.open(all_openvino_bundle)
    assert all(isinstance(graph, OrtGraph) for graph in runtime.graphs.values())
    notices = [r.getMessage() for r in caplog.records if r.name == "cseg.runtime"]
    assert len(notices) == 1 and "openvino not installed" in notices[0], notices
    report = describe(all_openvino_bundle)
    assert "openvino not installed" in report
    assert "sam3_vision   onnxruntime" in report


def test_runtime_serves_openvino_graphs_without_torch(all_openvino_bundle):
    from test_runtime import serves_without_torch

    serves_without_torch(all_openvino_bundle, "assert type(rt.graphs['sam3_vision']).__name__ == 'OpenVinoGraph'")


def test_agreement_gate_fails_a_wrong_output():
    from cseg.export.cpu_choice import agreement

    rng = np.random.default_rng(0)
    want = {"y": rng.standard_normal((2, 8)).astype(np.float32)}
    parity = {"y": {"tolerance": 1e-4}}
    entry = {"outputs": [{"name": "y"}]}
    assert agreement(want, {"y": want["y"] + 5e-5}, entry, parity, "f32")["passed"]
    assert not agreement(want, {"y": want["y"] + 1e-3}, entry, parity, "f32")["passed"]
    nan = want["y"].copy()
    nan[0, 0] = np.nan
    assert not agreement(want, {"y": nan}, entry, parity, "f32")["passed"]
    assert not agreement(want, {"y": nan}, entry, parity, "bf16")["passed"]
    assert agreement(want, {"y": want["y"] * 1.01}, entry, parity, "bf16")["passed"]  # cosine 1, bf16's gate


def test_cli_bench_times_onnxruntime_and_openvino_as_columns(tiny_bundle, tmp_path, capsys):
    from cseg.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--bundle", str(tiny_bundle), "--openvino", "--repeat", "1", "--warmup", "0", "--frames",
                 "1", "--max-new-tokens", "2", "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    column = f"openvino-{cpu_backends.native_precision()}"
    for backend in ("runtime", "onnxruntime", column):
        assert f"{backend} / full path" in printed, backend
    assert set(json.loads(out.read_text())["backends"]) == {"runtime", "onnxruntime", column}


def test_openvino_choice_is_refused_for_a_gpu_target(tiny_checkpoint, tmp_path):
    from cseg.errors import InvalidInputError
    from cseg.export.bundle import export_bundle

    with pytest.raises(InvalidInputError, match="cpu bundles"):
        export_bundle(*tiny_checkpoint, tmp_path / "orin", target="orin-nano", openvino=True, progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written
