"""Locally generated checkpoints: published layout, determinism, and loading that refuses broken weights."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cseg.errors import CheckpointError
from cseg.export.loading import load_conceptseg, load_sam3
from cseg.export.models.make_checkpoint import make_checkpoint


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_published_layout(tiny_checkpoint):
    model_dir, sam3_dir = tiny_checkpoint
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["ConceptSegR1ForConditionalGeneration_qwen2p5"]
    assert config["num_of_query"] == 8 and "text_config" not in config  # flat transformers-4.5x layout
    keys = load_file(model_dir / "model.safetensors").keys()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "visual", "lm_head", "learnable_query", "connector", "proj_to_sam"}
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "visual.blocks.0.attn.qkv.weight" in keys
    assert {"learnable_query.param.weight", "connector.pos_embed", "proj_to_sam.2.weight"} <= set(keys)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
                 "preprocessor_config.json", "generation_config.json"):  # fmt: skip
        assert (model_dir / name).is_file(), name
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in sam3_dir.iterdir()}


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint, tmp_path):
    again = make_checkpoint("tiny", seed=0, out=tmp_path / "again")
    other = make_checkpoint("tiny", seed=7, out=tmp_path / "other")
    for original, repeat, changed in zip(tiny_checkpoint, again, other):
        assert _digest(original) == _digest(repeat)
        assert _digest(original)["model.safetensors"] != _digest(changed)["model.safetensors"]


def test_loaded_weights_equal_the_files_bit_for_bit(tiny_checkpoint, tmp_path):
    from cseg.export.models.make_checkpoint import published_key

    model_dir, sam3_dir = tiny_checkpoint
    vlm = load_conceptseg(model_dir, dtype=torch.bfloat16)
    on_disk = load_file(model_dir / "model.safetensors")
    state = vlm.model.state_dict()
    assert len(state) == len(on_disk)
    for name, tensor in state.items():
        assert torch.equal(tensor, on_disk[published_key(name)]), name
    sam3 = load_sam3(sam3_dir)
    sam_disk = load_file(sam3_dir / "model.safetensors")
    assert all(torch.equal(t, sam_disk[n]) for n, t in sam3.model.state_dict().items())
    # the file says transformers' default ViT eps (1e-6); loading gives Meta's (1e-5) to every ViT LayerNorm
    vit_config = json.loads((sam3_dir / "config.json").read_text())["vision_config"]["backbone_config"]
    assert vit_config["layer_norm_eps"] == 1e-6
    vit_norms = [m for m in sam3.model.vision_encoder.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert vit_norms and all(m.eps == 1e-5 for m in vit_norms)
    # and through a save/load cycle of transformers itself
    vlm.model.save_pretrained(tmp_path / "resaved")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"):
        shutil.copy(model_dir / name, tmp_path / "resaved" / name)
    again = load_conceptseg(tmp_path / "resaved", dtype=torch.bfloat16)
    assert all(torch.equal(t, again.model.state_dict()[n]) for n, t in state.items())


def _broken_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_concept_head_tensor_is_refused(tiny_checkpoint, tmp_path):
    broken = _broken_copy(tiny_checkpoint[0], tmp_path / "missing", lambda w: w.pop("connector.pos_embed"))
    with pytest.raises(CheckpointError, match="missing.*connector.pos_embed"):
        load_conceptseg(broken)


def test_misnamed_concept_head_tensor_is_refused(tiny_checkpoint, tmp_path):
    def rename(weights):
        weights["proj_to_sam.3.weight"] = weights.pop("proj_to_sam.2.weight")

    broken = _broken_copy(tiny_checkpoint[0], tmp_path / "misnamed", rename)
    with pytest.raises(CheckpointError) as info:
        load_conceptseg(broken)
    assert "proj_to_sam.2.weight" in str(info.value) and "proj_to_sam.3.weight" in str(info.value)


def test_config_without_num_of_query_takes_q_from_the_learned_queries(tiny_checkpoint, tmp_path, caplog):
    noq = tmp_path / "noq"
    shutil.copytree(tiny_checkpoint[0], noq)
    config = json.loads((noq / "config.json").read_text())
    del config["num_of_query"]
    (noq / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="cseg.export.loading"):
        assert load_conceptseg(noq).num_queries == 8  # tiny's Q, not a default
    assert "no num_of_query; using Q=8" in caplog.text and "learnable_query.param.weight" in caplog.text
    # and without the learned queries either, nothing says what Q is: refused, naming both
    _broken_copy(noq, tmp_path / "noq_nohead", lambda w: w.pop("learnable_query.param.weight"))
    with pytest.raises(CheckpointError, match="num_of_query.*learnable_query"):
        load_conceptseg(tmp_path / "noq_nohead")


def test_num_of_query_disagreeing_with_the_weights_is_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "wrongq"
    shutil.copytree(tiny_checkpoint[0], broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_of_query"] = 16
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="learnable_query|pos_embed|shape"):
        load_conceptseg(broken)


def test_missing_sam3_tensor_is_refused(tiny_checkpoint, tmp_path):
    broken = _broken_copy(
        tiny_checkpoint[1], tmp_path / "sam3", lambda w: w.pop("mask_decoder.semantic_projection.weight")
    )
    with pytest.raises(CheckpointError, match="semantic_projection"):
        load_sam3(broken)


@pytest.mark.parametrize("where", ["does/not-exist-here", "/no/such/dir"])
def test_unreachable_checkpoints_give_a_clear_error(where, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a local directory|does not exist"):
        load_conceptseg(where)


def test_directory_without_weights_is_refused(tiny_checkpoint, tmp_path):
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(tiny_checkpoint[0] / "config.json", empty)
    with pytest.raises(CheckpointError, match="no safetensors"):
        load_conceptseg(empty)


@pytest.mark.parametrize("fixture, queries", [("tiny_checkpoint", 8), ("tiny_alt_checkpoint", 5)])
def test_concept_head_gives_q_tokens_of_256(fixture, queries, request):
    vlm = load_conceptseg(request.getfixturevalue(fixture)[0])
    hidden = torch.randn(1, 37, vlm.model.config.text_config.hidden_size)
    assert vlm.num_queries == queries
    assert vlm.model.concept_tokens(hidden).shape == (1, queries, 256)


def test_concept_head_matches_the_research_formula(tiny_checkpoint):
    """Plain-math re-statement of the research connector (softmax attention, quick_gelu, exact GELU)."""
    head = load_conceptseg(tiny_checkpoint[0]).model.concept_head()
    hidden = torch.randn(1, 23, head.connector.pos_embed.shape[-1])
    q = head.learnable_query.param.weight[None] + head.connector.pos_embed
    for block in head.connector.blocks:
        a = block.attn
        heads = a.num_heads
        qq = a.q(block.norm0(q)).unflatten(-1, (heads, -1)).transpose(1, 2)
        k, v = a.kv(block.norm1(hidden)).unflatten(-1, (2, heads, -1)).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(qq @ k.transpose(-1, -2) / qq.shape[-1] ** 0.5, dim=-1)
        q = q + a.proj((weights @ v).transpose(1, 2).flatten(2))
        h = block.mlp.fc1(block.norm2(q))
        q = q + block.mlp.fc2(h * torch.sigmoid(1.702 * h))
    lin1, gelu, lin2 = head.proj_to_sam
    expected = lin2(torch.nn.functional.gelu(lin1(q)))
    torch.testing.assert_close(head(hidden), expected, atol=1e-5, rtol=1e-5)
