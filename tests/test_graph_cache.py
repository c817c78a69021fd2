"""The traced-graph cache (CSEG_EXPORT_CACHE, export/graph_cache.py): a hit copies the trace, anything the trace
depends on changes the key, a broken cache costs the trace and nothing else, parity still judges the copy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cseg.export import graph_cache
from cseg.export.graph_spec import GraphSpec, TensorSpec
from cseg.export.onnx_export import export_graph
from cseg.export.parity import check_parity


def toy(module=None, n: int = 4) -> GraphSpec:
    module = module if module is not None else torch.nn.Linear(3, 3)
    return GraphSpec(key="toy", module=module, inputs=[TensorSpec("x", "float32", ("n", 3))],
                     outputs=[TensorSpec("y", "float32", ("n", 3))],
                     make_inputs=lambda sizes, g: {"x": torch.randn(sizes["n"], 3, generator=g)},
                     export_sizes={"n": n}, validation_sizes=[{"n": 6}])  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(graph_cache.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def traces(monkeypatch) -> list:
    """Records each real trace (a cache hit makes none)."""
    from cseg.export import onnx_export

    calls, trace = [], onnx_export._trace
    monkeypatch.setattr(onnx_export, "_trace", lambda spec, path, args: calls.append(spec.key) or trace(spec, path, args))
    return calls


def test_the_second_export_of_the_same_module_copies_the_trace(cache, tmp_path, monkeypatch):
    calls = traces(monkeypatch)
    spec, hits = toy(), []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = export_graph(spec, tmp_path / "a" / "toy.onnx")[0]
    second = export_graph(spec, tmp_path / "b" / "toy.onnx", hits)[0]
    assert calls == ["toy"] and hits == ["toy"]
    assert first.read_bytes() == second.read_bytes()
    assert check_parity(spec, second)["y"]["max_abs"] < 1e-6
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("change", ["weight", "export size", "file name", "module"])
def test_anything_the_trace_depends_on_misses(cache, tmp_path, monkeypatch, change):
    calls = traces(monkeypatch)
    base = torch.nn.Linear(3, 3)
    export_graph(toy(base), tmp_path / "toy.onnx")
    other = torch.nn.Linear(3, 3)
    other.load_state_dict(base.state_dict())
    if change == "weight":
        with torch.no_grad():
            other.weight[0, 0] += 1e-6  # one value, one ulp-sized change
        spec, path = toy(other), tmp_path / "w.onnx"
    elif change == "export size":
        spec, path = toy(other, n=5), tmp_path / "toy5.onnx"
    elif change == "file name":  # an external .data file is referenced by the graph's file name
        spec, path = toy(other), tmp_path / "renamed.onnx"
    else:  # same weights, another layer around them
        spec, path = toy(torch.nn.Sequential(other, torch.nn.ReLU())), tmp_path / "m.onnx"
    if change in ("weight", "module"):
        (tmp_path / "sub").mkdir()
        path = tmp_path / "sub" / "toy.onnx"
    export_graph(spec, path)
    assert calls == ["toy", "toy"]


def test_a_broken_cache_costs_the_trace_not_the_export(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(graph_cache.ENV, str(blocker))
    calls = traces(monkeypatch)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        path = export_graph(toy(), tmp_path / name / "toy.onnx")[0]
        onnx.checker.check_model(str(path))
    assert calls == ["toy", "toy"]


def test_a_stale_entry_is_refused_by_parity(cache, tmp_path, monkeypatch):
    """What the key cannot see (here: an entry overwritten by hand) is caught where a bad trace is: parity."""
    from cseg.errors import ParityError

    spec = toy()
    export_graph(spec, tmp_path / "toy.onnx")
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    model = onnx.load(str(entry / "toy.onnx"))
    for initializer in model.graph.initializer:  # the cached weights drift
        values = onnx.numpy_helper.to_array(initializer) + np.float32(0.01)
        initializer.CopyFrom(onnx.numpy_helper.from_array(values, initializer.name))
    onnx.save(model, str(entry / "toy.onnx"))
    (tmp_path / "again").mkdir()
    copied = export_graph(spec, tmp_path / "again" / "toy.onnx")[0]
    with pytest.raises(ParityError):
        check_parity(spec, copied)


def test_the_exporter_reports_a_cached_trace(tiny_checkpoint, rule_only_bundle, tmp_path):
    """The session's cache (conftest) holds the rule-only graphs since rule_only_bundle: exported again, every graph
    is copied, and the log says so."""
    from cseg.export.bundle import export_bundle

    lines = []
    bundle = export_bundle(None, tiny_checkpoint[1], tmp_path / "again", progress=False, report=lines.append)
    exported = [line for line in lines if "exported in" in line]
    assert len(exported) == 2 and all("(trace cached)" in line for line in exported)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"sam3_vision", "sam3_decoder"}
