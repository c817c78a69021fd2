"""Export: every sub-graph against PyTorch, the graphs chained like the reference pipeline, and the bundle contract."""

import json
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from cseg.bundle.schema import GRAPH_KEYS, file_sha256, read_manifest, validate_manifest
from cseg.bundle.verify import verify_files
from cseg.errors import BundleError, InvalidInputError
from cseg.export.graphs.vlm_vision import host_inputs
from cseg.images import load_frame, load_image
from cseg.runtime.preprocess import sam3_pixels


def _close(got, want, tolerance=1e-4):
    want = want.detach().float().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= tolerance * scale


# --- the bundle contract -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_alt_bundle"])
def test_bundle_manifest_is_valid_and_hashes_match(fixture, request):
    bundle = request.getfixturevalue(fixture)
    manifest = read_manifest(bundle)  # validates against the schema
    assert set(manifest["graphs"]) == set(GRAPH_KEYS)
    for key, graph in manifest["graphs"].items():
        assert graph["sha256"] == file_sha256(bundle / graph["file"])
        assert manifest["files"][graph["file"]] == graph["sha256"]
        assert set(manifest["parity"][key]) == {t["name"] for t in graph["outputs"]}
        for name, entry in manifest["parity"][key].items():
            assert entry["max_abs"] <= entry["tolerance"], (key, name)
    verify_files(bundle, manifest)
    assert (bundle / manifest["tokenizers"]["vlm"]["tokenizer.json"]).is_file()
    assert (bundle / manifest["tokenizers"]["sam3"]["tokenizer.json"]).is_file()


def test_no_shape_is_hard_coded_to_one_config(tiny_bundle, tiny_alt_bundle):
    tiny, alt = read_manifest(tiny_bundle), read_manifest(tiny_alt_bundle)
    assert (tiny["model"]["num_queries"], alt["model"]["num_queries"]) == (8, 5)
    assert tiny["model"]["hidden_size"] != alt["model"]["hidden_size"]
    assert tiny["preprocessing"]["sam3"]["size"] != alt["preprocessing"]["sam3"]["size"]
    concept = {t["name"]: t["shape"] for t in alt["graphs"]["concept_head"]["outputs"]}
    assert concept["concept_tokens"] == [1, 5, 256]
    kv = [t for t in alt["graphs"]["vlm_decoder"]["inputs"] if t["name"].startswith("past_")]
    assert len(kv) == 2 * alt["model"]["num_layers"] == 6


def test_tampered_or_incomplete_bundles_are_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    manifest = read_manifest(copy)
    with open(copy / "graphs" / "sam3_text.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="sam3_text.onnx does not match its sha256"):
        verify_files(copy, manifest)
    (copy / "graphs" / "concept_head.onnx").unlink()
    shutil.copy(tiny_bundle / "graphs" / "sam3_text.onnx", copy / "graphs" / "sam3_text.onnx")  # intact again
    with pytest.raises(BundleError, match="concept_head.onnx is missing"):
        verify_files(copy, manifest)
    for broken, message in [({**manifest, "format_version": 99}, "format version 99"),
                            ({k: v for k, v in manifest.items() if k != "graphs"}, "graphs"),
                            ({**manifest, "files": {"a": "nothex"}}, "files/a")]:  # fmt: skip
        with pytest.raises(BundleError, match=message):
            validate_manifest(broken)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path)


# --- graphs chained as the pipeline uses them, against the reference -------------------------------------------


def test_vision_graph_equals_transformers_vision_tower(reference, sessions, photo):
    inputs = reference.vlm_inputs(load_image(photo), "cat", [(load_image(photo), [])])  # two images
    grid = inputs["image_grid_thw"]
    feed = {"pixel_values": inputs["pixel_values"].numpy(), **{k: v.numpy() for k, v in
            host_inputs(grid, reference.vlm.model.config.vision_config).items()}}  # fmt: skip
    (got,) = sessions["vlm_vision"].run(None, feed)
    with torch.no_grad():
        want = reference.vlm.model.model.visual(inputs["pixel_values"], grid_thw=grid).pooler_output
    _close(got, want)


def test_decode_step_hidden_states_equal_the_research_second_forward(reference, sessions, runtime, tiny_bundle, photo):
    """Prefill + one decode step per generated token (the final <|im_end|> included, as one extra step), through the
    runtime's HostDecoder.step: the graph on the cache layout the cpu target ships (shared, updated in place)."""
    manifest = read_manifest(tiny_bundle)
    assert runtime.decoder.layout == manifest["graphs"]["vlm_decoder"]["kv_cache"] == "shared"
    model = reference.vlm.model
    inputs = reference.vlm_inputs(load_image(photo), "helmet")
    completion = reference.generate(inputs, 6, {}).completion_ids
    im_end = manifest["generation"]["im_end_token_id"]
    generated = torch.cat([completion, torch.tensor([[im_end]])], dim=1)  # generation stopping on <|im_end|>
    prompt = inputs["input_ids"]
    full = torch.cat([prompt, generated], dim=1)
    want = reference.completion_hidden_states(inputs, full)

    token_types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(generated, dtype=torch.int32)], dim=1)
    positions, _ = model.model.get_rope_index(full, token_types, inputs["image_grid_thw"])
    attention = (full != manifest["generation"]["pad_token_id"]).to(torch.int64).numpy()  # as the research mask
    grid = inputs["image_grid_thw"]
    vision = {"pixel_values": inputs["pixel_values"].numpy(),
              **{k: v.numpy() for k, v in host_inputs(grid, model.config.vision_config).items()}}  # fmt: skip
    (image_embeds,) = sessions["vlm_vision"].run(None, vision)
    cache = runtime.decoder.new_cache(full.shape[1])
    length = prompt.shape[1]
    runtime.decoder.step(cache, prompt.numpy(), image_embeds, positions[:, :, :length].numpy(), attention[:, :length])
    steps = []
    for i in range(generated.shape[1]):
        at = length + i
        logits, hidden = runtime.decoder.step(cache, generated[:, i : i + 1].numpy(),
                                              np.zeros((1, image_embeds.shape[1]), np.float32),
                                              positions[:, :, at : at + 1].numpy(), attention[:, : at + 1])  # fmt: skip
        steps.append(hidden[:, 0])
        with torch.no_grad():
            _close(logits[:, 0], model.lm_head(want[:, i]))
    assert len(steps) == want.shape[1] == completion.shape[1] + 1
    _close(np.stack(steps, axis=1), want)


def test_sam3_graphs_chain_to_the_reference_result(reference, sessions, tiny_bundle, photo):
    manifest = read_manifest(tiny_bundle)
    pixels = sam3_pixels(load_frame(photo), reference.sam3.image_size)
    fpn = sessions["sam3_vision"].run(None, {"pixel_values": pixels})
    vision = reference.sam3_vision(torch.from_numpy(pixels))
    for got, want in zip(fpn, vision.fpn_hidden_states):
        _close(got, want)

    tokenizer = Tokenizer.from_file(str(tiny_bundle / manifest["tokenizers"]["sam3"]["tokenizer.json"]))
    encoding = tokenizer.encode("red apple")  # what a torch-free runtime does
    ids, mask = np.array([encoding.ids], np.int64), np.array([encoding.attention_mask], np.int64)
    features, want_mask = reference.sam3_text("red apple")
    assert np.array_equal(mask, want_mask.numpy())
    (text,) = sessions["sam3_text"].run(None, {"input_ids": ids, "attention_mask": mask})
    _close(text, features)

    queries = manifest["model"]["num_queries"]
    for concepts in (torch.randn(1, queries, 256), None):  # full path, shortcut path
        feed = {f"fpn_{i}": f for i, f in enumerate(fpn)}
        feed.update(text_features=text, text_mask=mask,
                    concept_tokens=(concepts if concepts is not None else torch.zeros(1, 0, 256)).numpy())  # fmt: skip
        semantic, presence, scores, boxes, masks = sessions["sam3_decoder"].run(None, feed)
        want = reference.sam3_decode(vision, features, want_mask, concepts)
        _close(semantic, want.semantic_logits)
        _close(presence, want.presence_logit)
        top = torch.topk(torch.sigmoid(want.pred_logits) * torch.sigmoid(want.presence_logit), scores.shape[1])
        _close(scores, top.values)
        _close(boxes, want.pred_boxes[:, top.indices[0]])
        assert masks.shape[1] == manifest["model"]["top_k"] == 20


# --- errors from the exporter and the parity check ----------------------------------------------------------------


def _toy_spec(module, outputs=("y",)):
    from cseg.export.graph_spec import GraphSpec, TensorSpec

    return GraphSpec(
        key="toy",
        module=module,
        inputs=[TensorSpec("x", "float32", ("n", 3))],
        outputs=[TensorSpec(o, "float32", ("n", 3)) for o in outputs],
        make_inputs=lambda sizes, g: {"x": torch.randn(sizes["n"], 3, generator=g)},
        export_sizes={"n": 4},
        validation_sizes=[{"n": 6}],
    )


def test_parity_failures_are_typed_and_name_the_output(tmp_path):
    from cseg.errors import OutputNameError, OutputShapeError, ParityError
    from cseg.export.onnx_export import export_graph
    from cseg.export.parity import check_parity

    spec = _toy_spec(torch.nn.Linear(3, 3))
    path = export_graph(spec, tmp_path / "toy.onnx")[0]
    assert check_parity(spec, path)["y"]["max_abs"] < 1e-6
    drifted = torch.nn.Linear(3, 3)
    drifted.load_state_dict(spec.module.state_dict())
    with torch.no_grad():
        drifted.bias += 0.01
    with pytest.raises(ParityError, match=r"toy\.y: .*max 0\.01"):
        check_parity(_toy_spec(drifted), path)
    with pytest.raises(OutputNameError, match="outputs"):
        check_parity(_toy_spec(spec.module, outputs=("z",)), path)

    class Padded(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, x[:1]])

    with pytest.raises(OutputShapeError, match=r"toy\.y: shape"):
        check_parity(_toy_spec(Padded()), path)


def test_flops_come_from_the_parity_forward_at_the_export_sizes(tmp_path):
    from dataclasses import replace

    from cseg.export.onnx_export import count_flops, export_graph
    from cseg.export.parity import check_parity

    spec = _toy_spec(torch.nn.Linear(3, 3))
    path = export_graph(spec, tmp_path / "toy.onnx")[0]
    counted = {}
    check_parity(replace(spec, validation_sizes=[{"n": 6}, {"n": 4}]), path, counted)
    assert counted == {"n=6": 2 * 6 * 3 * 3, "n=4": 2 * 4 * 3 * 3}  # a [n, 3] x [3, 3] matmul: 2 n 3 3
    reused = count_flops(spec, counted)
    assert reused == {"count": 72, "sizes": {"n": 4}} == count_flops(spec, {})  # the same as a forward of its own
    assert count_flops(spec, {"n=4": 5})["count"] == 5  # taken from the parity forward, not recounted
    assert count_flops(spec, {"n=6": 5})["count"] == 72  # no forward at the export sizes: counted here


def test_export_refuses_existing_bundles_and_unknown_targets(tiny_checkpoint, tiny_bundle):
    from cseg.export.bundle import export_bundle

    with pytest.raises(BundleError, match="--force"):
        export_bundle(*tiny_checkpoint, tiny_bundle, progress=False)
    with pytest.raises(InvalidInputError, match="valid targets: cpu, orin-agx"):
        export_bundle(*tiny_checkpoint, tiny_bundle.parent / "x", target="jetson", progress=False)
    with pytest.raises(InvalidInputError, match="valid: fp32"):
        export_bundle(*tiny_checkpoint, tiny_bundle.parent / "x", precision="int3", progress=False)


def test_interrupted_export_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    import cseg.export.bundle as bundle_module

    calls = []

    def interrupt(spec, path, flops=None):
        calls.append(spec.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"y": {"max_abs": 0.0, "mean_abs": 0.0, "tolerance": 1.0, "scale": 1.0}}

    monkeypatch.setattr(bundle_module, "check_parity", interrupt)
    monkeypatch.setattr(bundle_module, "GRAPHS", {k: bundle_module.GRAPHS[k] for k in ("concept_head", "sam3_text")})
    with pytest.raises(KeyboardInterrupt):
        bundle_module.export_bundle(*tiny_checkpoint, tmp_path / "bundle", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor the staging directory


def test_force_replaces_a_bundle_atomically(tiny_checkpoint, tmp_path, monkeypatch):
    import cseg.export.bundle as bundle_module

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "cseg-bundle"}))  # --force replaces only a cseg bundle
    (out / "stale.txt").write_text("old")
    monkeypatch.setattr(bundle_module, "_export_into", lambda staging, *a: ({"fake": True}, None))
    bundle_module.export_bundle(*tiny_checkpoint, out, force=True, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == {"fake": True}
    assert not (out / "stale.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cli_export_and_inspect(tiny_checkpoint, tiny_bundle, tmp_path, capsys):
    from cseg.cli import export_main, main

    assert main(["inspect", str(tiny_bundle)]) == 0
    report = capsys.readouterr().out
    assert "sha256 verified" in report and "sam3_decoder.semantic_logits" in report and "vlm_decoder" in report
    assert export_main(["--model", str(tiny_checkpoint[0]), "--sam3", str(tiny_checkpoint[1]), "--out",
                        str(tiny_bundle)]) == 2  # fmt: skip
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--model", "m", "--sam3", "s", "--out", str(tmp_path / "b"), "--target", "jetson"]) == 2
    assert "valid targets: cpu" in capsys.readouterr().err
