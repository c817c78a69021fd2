"""SAM 3 weights in Meta's layout and transformers', both ways (cseg.export.models.sam3_layouts)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cseg.bundle.schema import BUNDLE_FORMAT
from cseg.errors import BundleError, CheckpointError
from cseg.export.bundle import export_bundle
from cseg.export.loading import load_sam3
from cseg.export.models import sam3_layouts
from cseg.export.models.make_checkpoint import make_checkpoint

# Written by Meta's own model: `.venv-meta/bin/python tests/meta_oracle.py --dump-layout --out ...` (sam3 0.1.4)
META_LAYOUT = Path(__file__).parent / "data" / "meta_sam3_layout.json"


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory):
    return make_checkpoint("tiny", seed=0, out=tmp_path_factory.mktemp("meta"), meta_sam3=True)[1]


def test_tiny_round_trip_keeps_every_name_shape_and_value(meta_checkpoint):
    state = load_file(meta_checkpoint / "model.safetensors")
    meta = torch.load(meta_checkpoint / sam3_layouts.META_FILE, weights_only=True)["model"]
    assert all(name.startswith("detector.") for name in meta)
    assert len(meta) < len(state)  # q/k/v fused
    back = sam3_layouts.read_meta(meta_checkpoint / sam3_layouts.META_FILE)
    assert sorted(back) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_full_size_names_and_shapes_are_metas_own():
    """Our full-size Sam3Model converted to Meta's layout is exactly what Meta's image model holds, less the weights
    transformers has no counterpart for (point prompt projections, rotary tables)."""
    from cseg.export.models.checkpoint_sizes import SIZES
    from cseg.export.models.make_checkpoint import _sam3_meta

    model, _ = _sam3_meta(SIZES["full"]["sam3"])  # meta device: shapes only
    ours = {name: list(t.shape) for name, t in sam3_layouts.to_meta(model.state_dict()).items()}
    want = {name[len("detector."):]: shape for name, shape in json.loads(META_LAYOUT.read_text()).items()}
    meta_only = {name for name in want if sam3_layouts._META_ONLY.search(name)}
    assert {n.rsplit(".", 1)[0] for n in meta_only} == {
        *(f"backbone.vision_backbone.trunk.blocks.{i}.attn" for i in range(32)),
        *(f"geometry_encoder.points_{p}_project" for p in ("direct", "pool", "pos_enc")),
    }
    assert ours == {name: shape for name, shape in want.items() if name not in meta_only}
    # and back: Meta's names and shapes give transformers' own
    meta = {name: torch.empty(shape, device="meta") for name, shape in want.items()}
    assert {n: list(t.shape) for n, t in sam3_layouts.to_transformers(meta).items()} == {
        n: list(t.shape) for n, t in model.state_dict().items()
    }


def test_load_sam3_reads_metas_file_as_the_same_model(meta_checkpoint):
    via_meta = load_sam3(meta_checkpoint / sam3_layouts.META_FILE)
    via_transformers = load_sam3(meta_checkpoint)  # the folder has safetensors: transformers' layout wins
    assert via_meta.path == meta_checkpoint
    theirs = via_transformers.model.state_dict()
    assert all(torch.equal(t, theirs[n]) for n, t in via_meta.model.state_dict().items())


def test_meta_file_without_tokenizer_or_detector_weights_is_refused(meta_checkpoint, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "sam3.pt").write_bytes((meta_checkpoint / "sam3.pt").read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_sam3(lonely)
    torch.save({"model": {"tracker.x": torch.zeros(1)}}, tmp_path / "tracker_only.pt")
    with pytest.raises(CheckpointError, match="detector"):
        sam3_layouts.read_meta(tmp_path / "tracker_only.pt")


def test_export_reads_metas_file_through_a_temporary_transformers_folder(meta_checkpoint):
    """What cseg-export does with --sam3 .../sam3.pt before anything else (export_bundle)."""
    with sam3_layouts.transformers_layout(meta_checkpoint / sam3_layouts.META_FILE) as folder:
        assert folder != meta_checkpoint
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).read_bytes() == (meta_checkpoint / name).read_bytes(), name
        converted, original = load_file(folder / "model.safetensors"), load_file(meta_checkpoint / "model.safetensors")
        assert sorted(converted) == sorted(original)
        assert all(torch.equal(converted[n], t) for n, t in original.items())
    assert not folder.exists()
    with sam3_layouts.transformers_layout(meta_checkpoint) as same:  # transformers' layout: used as it is
        assert same == meta_checkpoint


def test_a_bundle_folder_holding_metas_file_is_not_exported_over(meta_checkpoint, tmp_path):
    """The destination check sees the user's sam3.pt, not the temporary folder it is converted into."""
    folder = tmp_path / "bundle"
    shutil.copytree(meta_checkpoint, folder)
    (folder / "manifest.json").write_text(json.dumps({"format": BUNDLE_FORMAT}))
    with pytest.raises(BundleError, match="holds the checkpoint"):
        export_bundle(None, folder / sam3_layouts.META_FILE, folder, force=True, progress=False)
    assert (folder / sam3_layouts.META_FILE).is_file()


def test_a_bundle_from_metas_file_names_that_file_as_its_source(meta_checkpoint, tmp_path):
    """The manifest (and a refused rule's message) name the user's sam3.pt, not the temporary folder of the export."""
    from cseg.bundle.schema import file_sha256, read_manifest
    from cseg.export.bundle import sam3_weights_id

    bundle = export_bundle(None, meta_checkpoint / sam3_layouts.META_FILE, tmp_path / "bundle", progress=False,
                           report=lambda line: None)  # fmt: skip
    source = read_manifest(bundle)["source"]["sam3"]
    assert source["path"] == str(meta_checkpoint.resolve()) and source["layout"] == "meta"
    assert source["files"] == {name: file_sha256(meta_checkpoint / name) for name in ("config.json", "sam3.pt")}
    assert source["weights"] == sam3_weights_id(load_sam3(meta_checkpoint).model)  # the same weights, either layout
