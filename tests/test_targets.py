"""GPU targets as data, the memory-fit check, and the engine cache key (no TensorRT, no GPU needed)."""

from __future__ import annotations

import json
import struct

import pytest

from cseg.engines import footprint
from cseg.engines.build import cache_key
from cseg.engines.targets import GRAPH_ORDER, TARGETS, resolve, with_memory
from cseg.errors import InvalidInputError

GPU_TARGETS = [name for name, profile in TARGETS.items() if profile["backend"] == "tensorrt"]


@pytest.mark.parametrize("name", GPU_TARGETS)
def test_gpu_target_rows_are_consistent(name):
    profile = TARGETS[name]
    device = profile["device"]
    assert device["memory_gb"] in device["memory_variants_gb"] and device["bandwidth_gb_s"] > 0
    assert device["arch"] == "sm_{}{}".format(*device["compute_capability"])
    assert profile["default_precision"] in profile["precisions"] and "auto" in profile["precisions"]
    allowed = {"fp16", "int8", "int4"} | ({"fp8"} if device["fp8"] else set())
    for precision, policy in profile["policies"].items():
        assert precision in profile["precisions"]
        assert list(policy) == list(GRAPH_ORDER), "a GPU policy names every graph"
        assert set(policy.values()) <= allowed, (name, precision)
    for start in profile["fallback"]:  # every chain ends at fp32
        chain, seen = start, set()
        while chain != "fp32":
            assert chain not in seen
            seen.add(chain)
            chain = profile["fallback"][chain]
    shapes = profile["shapes"]
    for axis in ("images", "prompt_tokens"):
        assert 1 <= shapes[axis]["min"] <= shapes[axis]["opt"] <= shapes[axis]["max"]
    assert shapes["total_tokens"] > shapes["prompt_tokens"]["max"]
    assert device["memory_gb"] > profile["reserved_gb"] > 0


def test_orin_is_the_agx_and_orin_has_no_fp8():
    profile, precision = resolve("orin", None)
    assert profile is TARGETS["orin-agx"] and precision == "auto"
    with pytest.raises(InvalidInputError, match="sm_87 has no FP8"):
        resolve("orin-nx", "fp8")
    assert resolve("hopper", "fp8")[1] == "fp8"
    with pytest.raises(InvalidInputError, match="valid targets: cpu, orin-agx, orin-nx, orin-nano, ada, hopper, orin"):
        resolve("jetson", None)
    assert with_memory(TARGETS["orin-agx"], 32)["device"]["memory_gb"] == 32
    with pytest.raises(InvalidInputError, match="comes with 8, 16 GB"):
        with_memory(TARGETS["orin-nx"], 12)


@pytest.fixture(scope="module")
def full_size():
    """Inventory and KV sizes of the published dimensions (meta-device models: shapes only)."""
    from cseg.export.models.make_checkpoint import published_shapes

    config, conceptseg, sam3 = published_shapes("full")
    return footprint.inventory(conceptseg, sam3), footprint.kv_dims(config), (config, conceptseg, sam3)


def test_full_size_inventory_matches_the_published_parameter_counts(full_size):
    counts, kv, _ = full_size
    totals = {key: sum(parts.values()) / 1e6 for key, parts in counts.items()}
    assert totals["vlm_vision"] == pytest.approx(676.6, abs=0.1)
    assert totals["vlm_decoder"] == pytest.approx(7070.6 + 545.0, abs=0.2)  # language model + output head
    assert counts["vlm_decoder"]["base"] / 1e6 == pytest.approx(545.0 * 2, abs=0.5)  # embeddings + head stay fp16
    assert totals["concept_head"] == pytest.approx(630.7, abs=0.1)
    assert sum(totals[k] for k in ("sam3_vision", "sam3_text", "sam3_decoder")) == pytest.approx(840.4, abs=0.1)
    assert kv == {"layers": 28, "kv_heads": 4, "head_dim": 128}


def test_a_7b_fp16_bundle_does_not_fit_small_orins_and_the_error_names_what_would(full_size):
    counts, kv, _ = full_size
    nano, nx, agx = TARGETS["orin-nano"], TARGETS["orin-nx"], TARGETS["orin-agx"]
    fp16 = footprint.estimate(counts, kv, nano, nano["policies"]["fp16"])
    assert fp16["graphs_gb"]["vlm_decoder"] == pytest.approx(15.2, abs=0.1) and not fp16["fits"]
    with pytest.raises(InvalidInputError, match=r"No precision of this target fits \(the smallest, int4"):
        footprint.choose(counts, kv, "orin-nano", nano, "fp16", False, print)
    with pytest.raises(InvalidInputError, match="--precision int4 would fit.*--allow-oversize"):
        footprint.choose(counts, kv, "orin-nx", nx, "fp16", False, print)
    warnings = []
    assert footprint.choose(counts, kv, "orin-nx", nx, "fp16", True, warnings.append)[0] == "fp16"
    assert "Exporting anyway" in warnings[0]
    assert footprint.choose(counts, kv, "orin-nx", nx, "auto", False, print)[0] == "int4"
    assert footprint.choose(counts, kv, "orin-agx", agx, "auto", False, print)[0] == "fp16"
    assert footprint.choose(counts, kv, "orin-agx", with_memory(agx, 32), "auto", False, print)[0] == "fp16"
    int4 = footprint.estimate(counts, kv, nx, nx["policies"]["int4"])
    # 7B int4 (+ fp16 embeddings and head), ViTs int8, concept head fp16, KV at 2816 positions
    assert int4["parts_gb"]["kv_cache"] == pytest.approx(2 * 28 * 2816 * 4 * 128 * 2 / 1e9, abs=1e-3)
    assert 10 < int4["total_gb"] < nx["device"]["memory_gb"] - nx["reserved_gb"]


def _header_only_checkpoint(folder, shapes: dict, config: dict | None = None):
    """A checkpoint folder whose safetensors file holds only the header: enough for the fit check, which must not
    read any weights."""
    folder.mkdir(parents=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    (folder / "config.json").write_text(json.dumps(config or {}))
    return folder


def test_cseg_export_refuses_a_7b_fp16_bundle_for_the_orin_nano_before_loading_it(full_size, tmp_path, capsys):
    from cseg.cli import export_main

    config, conceptseg, sam3 = full_size[2]
    model = _header_only_checkpoint(tmp_path / "conceptseg-r1", conceptseg, config)
    sam3_dir = _header_only_checkpoint(tmp_path / "sam3", sam3)
    code = export_main(["--model", str(model), "--sam3", str(sam3_dir), "--target", "orin-nano", "--precision",
                        "fp16", "--out", str(tmp_path / "bundle")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "needs about 21.9 GB at fp16" in error and "orin-nano (Jetson Orin Nano, 8 GB)" in error
    assert not (tmp_path / "bundle").exists()


def test_checkpoint_headers_give_the_same_inventory_as_the_models(tiny_checkpoint):
    from cseg.export.models.make_checkpoint import published_shapes

    _, conceptseg, sam3 = published_shapes("tiny")
    counts, kv = footprint.checkpoint_inventory(*tiny_checkpoint)
    assert counts == footprint.inventory(conceptseg, sam3)
    assert kv == {"layers": 2, "kv_heads": 2, "head_dim": 16}


def test_engine_cache_key_changes_with_everything_a_plan_depends_on():
    graph = {"profiles": [{"name": "default", "shapes": {"x": {"min": [1], "opt": [2], "max": [4]}}}],
             "precision": "fp16", "strongly_typed": True, "workspace_mb": 512}  # fmt: skip
    identity = {"gpu": "Orin", "compute_capability": [8, 7], "sm_count": 16, "memory_gb": 62.8}
    key = cache_key("a" * 64, "10.3.0", identity, graph)
    assert key == cache_key("a" * 64, "10.3.0", dict(identity), json.loads(json.dumps(graph)))
    changed = [
        cache_key("b" * 64, "10.3.0", identity, graph),
        cache_key("a" * 64, "10.16.0", identity, graph),
        cache_key("a" * 64, "10.3.0", {**identity, "gpu": "Orin (nvgpu) 2"}, graph),
        cache_key("a" * 64, "10.3.0", {**identity, "compute_capability": [8, 9]}, graph),
        cache_key("a" * 64, "10.3.0", {**identity, "sm_count": 8, "memory_gb": 15.3}, graph),  # an Orin NX
        cache_key("a" * 64, "10.3.0", identity, {**graph, "workspace_mb": 1024}),
        cache_key("a" * 64, "10.3.0", identity, {**graph, "precision": "int8"}),
        cache_key("a" * 64, "10.3.0", identity, {**graph, "profiles": [
            {"name": "default", "shapes": {"x": {"min": [1], "opt": [2], "max": [8]}}}]}),
    ]  # fmt: skip
    assert len({key, *changed}) == len(changed) + 1


def test_a_rule_only_bundle_of_full_size_sam3_fits_the_orin_nano(full_size):
    """SAM 3's image encoder and decoder alone (no VLM, no text encoder, no KV cache): what an 8 GB Nano per camera
    holds, where the full bundle fits at no precision."""
    counts, kv = footprint.rule_only_inventory(full_size[2][2])
    assert list(counts) == ["sam3_vision", "sam3_decoder"] and kv["layers"] == 0
    assert sum(sum(parts.values()) for parts in counts.values()) / 1e6 == pytest.approx(454.0 + 32.6, abs=0.1)
    nano = TARGETS["orin-nano"]
    fp16, int8 = (footprint.estimate(counts, kv, nano, nano["policies"][p]) for p in ("fp16", "int8"))
    assert fp16["parts_gb"]["kv_cache"] == 0 and fp16["graphs_gb"]["sam3_vision"] == pytest.approx(0.91, abs=0.01)
    assert fp16["total_gb"] == pytest.approx(3.19, abs=0.01) and int8["total_gb"] == pytest.approx(2.73, abs=0.01)
    assert int8["total_gb"] <= 3.0 and fp16["fits"]
    assert footprint.choose(counts, kv, "orin-nano", nano, "auto", False, print)[0] == "fp16"  # the most accurate
    assert "KV cache" not in footprint.describe(fp16)
    assert footprint.choose(*full_size[:2], "orin-nano", nano, "auto", True, [].append)[1]["total_gb"] > 11
