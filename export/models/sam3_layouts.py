"""SAM 3 weights in Meta's layout (facebookresearch/sam3's sam3.pt) and in transformers' (Sam3Model), both ways.

The names follow transformers' own conversion script (models/sam3/convert_sam3_to_hf.py,
ORIGINAL_TO_CONVERTED_KEY_MAPPING), written here as one table of (Meta, transformers) name pairs so it reads both
ways; the tensors differ in four ways, undone in reverse:
- Meta's fused attention projections (the ViT's `attn.qkv`, nn.MultiheadAttention's `in_proj_weight/bias`) are
  transformers' separate q/k/v projections;
- Meta's ViT position embedding carries a leading CLS position SAM 3 never uses (transformers drops it; written back
  as zeros);
- the CLIP text projection is stored transposed;
- Meta's model has weights transformers' lacks, never used on SAM 3's image path with text or box prompts: the point
  prompt projections of the geometry encoder and the ViT's precomputed rotary tables (`freqs_cis`, rebuilt by Meta's
  model itself at construction). Converting to Meta's layout leaves them out; Meta's loader (strict=False) keeps its
  own. Converting from Meta's layout drops them.

Meta's checkpoint is a torch.save'd {"model": {"detector.<name>": tensor, "tracker.<name>": ...}}; the image model
reads the "detector." part. `tests/meta_oracle.py --dump-layout` writes the names and shapes Meta's model expects
(stored as tests/data/meta_sam3_layout.json), against which the conversion of the full size is tested.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

import torch

from cseg.errors import CheckpointError

META_FILE = "sam3.pt"
META_PREFIX = "detector."

# (Meta, transformers) name prefixes; {i} is a layer index. Names matching no pair are the same in both layouts
# (e.g. geometry_encoder.cls_embed.weight). The first match wins: longer, more specific prefixes come first.
_PAIRS = [
    # vision backbone (ViT) and FPN neck
    ("backbone.vision_backbone.trunk.pos_embed", "vision_encoder.backbone.embeddings.position_embeddings"),
    ("backbone.vision_backbone.trunk.patch_embed.proj.", "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    ("backbone.vision_backbone.trunk.ln_pre.", "vision_encoder.backbone.layer_norm."),
    ("backbone.vision_backbone.trunk.blocks.{i}.norm1.", "vision_encoder.backbone.layers.{i}.layer_norm1."),
    ("backbone.vision_backbone.trunk.blocks.{i}.norm2.", "vision_encoder.backbone.layers.{i}.layer_norm2."),
    ("backbone.vision_backbone.trunk.blocks.{i}.attn.qkv.", "vision_encoder.backbone.layers.{i}.attention.qkv."),
    ("backbone.vision_backbone.trunk.blocks.{i}.attn.proj.", "vision_encoder.backbone.layers.{i}.attention.o_proj."),
    ("backbone.vision_backbone.trunk.blocks.{i}.mlp.", "vision_encoder.backbone.layers.{i}.mlp."),
    ("backbone.vision_backbone.convs.0.dconv_2x2_0.", "vision_encoder.neck.fpn_layers.0.scale_layers.0."),
    ("backbone.vision_backbone.convs.0.dconv_2x2_1.", "vision_encoder.neck.fpn_layers.0.scale_layers.2."),
    ("backbone.vision_backbone.convs.{i}.dconv_2x2.", "vision_encoder.neck.fpn_layers.{i}.scale_layers.0."),
    ("backbone.vision_backbone.convs.{i}.conv_1x1.", "vision_encoder.neck.fpn_layers.{i}.proj1."),
    ("backbone.vision_backbone.convs.{i}.conv_3x3.", "vision_encoder.neck.fpn_layers.{i}.proj2."),
    # text encoder (CLIP) and its 1024 -> 256 resizer
    ("backbone.language_backbone.encoder.token_embedding.", "text_encoder.text_model.embeddings.token_embedding."),
    ("backbone.language_backbone.encoder.positional_embedding", "text_encoder.text_model.embeddings.position_embedding.weight"),
    ("backbone.language_backbone.encoder.ln_final.", "text_encoder.text_model.final_layer_norm."),
    ("backbone.language_backbone.encoder.text_projection", "text_encoder.text_projection.weight"),
    ("backbone.language_backbone.encoder.transformer.resblocks.{i}.attn.", "text_encoder.text_model.encoder.layers.{i}.self_attn."),
    ("backbone.language_backbone.encoder.transformer.resblocks.{i}.ln_1.", "text_encoder.text_model.encoder.layers.{i}.layer_norm1."),
    ("backbone.language_backbone.encoder.transformer.resblocks.{i}.ln_2.", "text_encoder.text_model.encoder.layers.{i}.layer_norm2."),
    ("backbone.language_backbone.encoder.transformer.resblocks.{i}.mlp.c_fc.", "text_encoder.text_model.encoder.layers.{i}.mlp.fc1."),
    ("backbone.language_backbone.encoder.transformer.resblocks.{i}.mlp.c_proj.", "text_encoder.text_model.encoder.layers.{i}.mlp.fc2."),
    ("backbone.language_backbone.resizer.", "text_projection."),
    # geometry encoder
    ("geometry_encoder.encode.{i}.cross_attn_image.out_proj.", "geometry_encoder.layers.{i}.cross_attn.o_proj."),
    ("geometry_encoder.encode.{i}.cross_attn_image.", "geometry_encoder.layers.{i}.cross_attn."),
    ("geometry_encoder.encode.{i}.self_attn.out_proj.", "geometry_encoder.layers.{i}.self_attn.o_proj."),
    ("geometry_encoder.encode.{i}.self_attn.", "geometry_encoder.layers.{i}.self_attn."),
    ("geometry_encoder.encode.{i}.linear1.", "geometry_encoder.layers.{i}.mlp.fc1."),
    ("geometry_encoder.encode.{i}.linear2.", "geometry_encoder.layers.{i}.mlp.fc2."),
    ("geometry_encoder.encode.{i}.norm1.", "geometry_encoder.layers.{i}.layer_norm1."),
    ("geometry_encoder.encode.{i}.norm2.", "geometry_encoder.layers.{i}.layer_norm2."),
    ("geometry_encoder.encode.{i}.norm3.", "geometry_encoder.layers.{i}.layer_norm3."),
    ("geometry_encoder.img_pre_norm.", "geometry_encoder.vision_layer_norm."),
    ("geometry_encoder.norm.", "geometry_encoder.prompt_layer_norm."),
    ("geometry_encoder.encode_norm.", "geometry_encoder.output_layer_norm."),
    # DETR encoder
    ("transformer.encoder.layers.{i}.cross_attn_image.out_proj.", "detr_encoder.layers.{i}.cross_attn.o_proj."),
    ("transformer.encoder.layers.{i}.cross_attn_image.", "detr_encoder.layers.{i}.cross_attn."),
    ("transformer.encoder.layers.{i}.self_attn.out_proj.", "detr_encoder.layers.{i}.self_attn.o_proj."),
    ("transformer.encoder.layers.{i}.self_attn.", "detr_encoder.layers.{i}.self_attn."),
    ("transformer.encoder.layers.{i}.linear1.", "detr_encoder.layers.{i}.mlp.fc1."),
    ("transformer.encoder.layers.{i}.linear2.", "detr_encoder.layers.{i}.mlp.fc2."),
    ("transformer.encoder.layers.{i}.norm1.", "detr_encoder.layers.{i}.layer_norm1."),
    ("transformer.encoder.layers.{i}.norm2.", "detr_encoder.layers.{i}.layer_norm2."),
    ("transformer.encoder.layers.{i}.norm3.", "detr_encoder.layers.{i}.layer_norm3."),
    # DETR decoder
    ("transformer.decoder.presence_token_head.layers.0.", "detr_decoder.presence_head.layer1."),
    ("transformer.decoder.presence_token_head.layers.1.", "detr_decoder.presence_head.layer2."),
    ("transformer.decoder.presence_token_head.layers.2.", "detr_decoder.presence_head.layer3."),
    ("transformer.decoder.presence_token_out_norm.", "detr_decoder.presence_layer_norm."),
    ("transformer.decoder.norm.", "detr_decoder.output_layer_norm."),
    ("transformer.decoder.bbox_embed.layers.0.", "detr_decoder.box_head.layer1."),
    ("transformer.decoder.bbox_embed.layers.1.", "detr_decoder.box_head.layer2."),
    ("transformer.decoder.bbox_embed.layers.2.", "detr_decoder.box_head.layer3."),
    ("transformer.decoder.ref_point_head.layers.0.", "detr_decoder.ref_point_head.layer1."),
    ("transformer.decoder.ref_point_head.layers.1.", "detr_decoder.ref_point_head.layer2."),
    ("transformer.decoder.boxRPB_embed_x.layers.0.", "detr_decoder.box_rpb_embed_x.layer1."),
    ("transformer.decoder.boxRPB_embed_x.layers.1.", "detr_decoder.box_rpb_embed_x.layer2."),
    ("transformer.decoder.boxRPB_embed_y.layers.0.", "detr_decoder.box_rpb_embed_y.layer1."),
    ("transformer.decoder.boxRPB_embed_y.layers.1.", "detr_decoder.box_rpb_embed_y.layer2."),
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "detr_decoder.layers.{i}.self_attn.o_proj."),
    ("transformer.decoder.layers.{i}.self_attn.", "detr_decoder.layers.{i}.self_attn."),
    ("transformer.decoder.layers.{i}.ca_text.out_proj.", "detr_decoder.layers.{i}.text_cross_attn.o_proj."),
    ("transformer.decoder.layers.{i}.ca_text.", "detr_decoder.layers.{i}.text_cross_attn."),
    ("transformer.decoder.layers.{i}.cross_attn.out_proj.", "detr_decoder.layers.{i}.vision_cross_attn.o_proj."),
    ("transformer.decoder.layers.{i}.cross_attn.", "detr_decoder.layers.{i}.vision_cross_attn."),
    ("transformer.decoder.layers.{i}.linear1.", "detr_decoder.layers.{i}.mlp.fc1."),
    ("transformer.decoder.layers.{i}.linear2.", "detr_decoder.layers.{i}.mlp.fc2."),
    ("transformer.decoder.layers.{i}.norm1.", "detr_decoder.layers.{i}.vision_cross_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.catext_norm.", "detr_decoder.layers.{i}.text_cross_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.norm2.", "detr_decoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.norm3.", "detr_decoder.layers.{i}.mlp_layer_norm."),
    ("transformer.decoder.", "detr_decoder."),  # query_embed, reference_points, presence_token
    # scoring and mask head
    ("dot_prod_scoring.prompt_mlp.layers.0.", "dot_product_scoring.text_mlp.layer1."),
    ("dot_prod_scoring.prompt_mlp.layers.1.", "dot_product_scoring.text_mlp.layer2."),
    ("dot_prod_scoring.prompt_mlp.out_norm.", "dot_product_scoring.text_mlp_out_norm."),
    ("dot_prod_scoring.prompt_proj.", "dot_product_scoring.text_proj."),
    ("dot_prod_scoring.hs_proj.", "dot_product_scoring.query_proj."),
    ("segmentation_head.pixel_decoder.", "mask_decoder.pixel_decoder."),
    ("segmentation_head.mask_predictor.mask_embed.layers.", "mask_decoder.mask_embedder.layers."),
    ("segmentation_head.instance_seg_head.", "mask_decoder.instance_projection."),
    ("segmentation_head.semantic_seg_head.", "mask_decoder.semantic_projection."),
    ("segmentation_head.cross_attend_prompt.out_proj.", "mask_decoder.prompt_cross_attn.o_proj."),
    ("segmentation_head.cross_attend_prompt.", "mask_decoder.prompt_cross_attn."),
    ("segmentation_head.cross_attn_norm.", "mask_decoder.prompt_cross_attn_norm."),
]  # fmt: skip


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)"))


_TO_TRANSFORMERS = [(_compile(meta), hf) for meta, hf in _PAIRS]
_TO_META = [(_compile(hf), meta) for meta, hf in _PAIRS]
# Meta's weights with no transformers counterpart (see the module docstring)
_META_ONLY = re.compile(r"^geometry_encoder\.points_|\.attn\.freqs_cis$")
_POS_EMBED = "vision_encoder.backbone.embeddings.position_embeddings"
_TEXT_PROJECTION = "text_encoder.text_projection.weight"
_QKV = ("q_proj", "k_proj", "v_proj")


def _rename(name: str, rules) -> str:
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            return template.replace("{i}", match.groupdict().get("i") or "") + name[match.end() :]
    return name


def to_transformers(meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's image-model weights (names without "detector.") -> Sam3Model's state dict."""
    out = {}
    for meta_name, tensor in meta.items():
        if _META_ONLY.search(meta_name):
            continue
        name = _rename(meta_name, _TO_TRANSFORMERS)
        base, _, leaf = name.rpartition(".")
        if base.endswith(".attention.qkv"):  # the ViT's fused projection
            names = [f"{base[: -len('qkv')]}{part}.{leaf}" for part in _QKV]
        elif leaf.startswith("in_proj_"):  # nn.MultiheadAttention's
            names = [f"{base}.{part}.{leaf[len('in_proj_'):]}" for part in _QKV]
        else:
            names = None
        if names:
            out.update(zip(names, torch.chunk(tensor, 3, dim=0)))
        elif name == _POS_EMBED:
            out[name] = tensor[:, 1:]  # Meta's leading CLS position
        elif name == _TEXT_PROJECTION:
            out[name] = tensor.T
        else:
            out[name] = tensor
    return out


def to_meta(transformers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sam3Model's state dict -> Meta's image-model weights (names without "detector.")."""
    out = {}
    for name, tensor in transformers.items():
        base, _, leaf = name.rpartition(".")
        if base.endswith((".k_proj", ".v_proj")):
            continue  # fused with its q_proj
        if base.endswith(".q_proj"):
            module = base[: -len(".q_proj")]
            tensor = torch.cat([transformers[f"{module}.{part}.{leaf}"] for part in _QKV], dim=0)
            name = f"{module}.qkv.{leaf}" if module.endswith(".attention") else f"{module}.in_proj_{leaf}"
        elif name == _POS_EMBED:
            tensor = torch.cat([torch.zeros_like(tensor[:, :1]), tensor], dim=1)
        elif name == _TEXT_PROJECTION:
            tensor = tensor.T
        out[_rename(name, _TO_META)] = tensor
    return out


# --- files ------------------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def write_meta(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Sam3Model's state dict written as Meta's sam3.pt ({"model": {"detector.<name>": tensor}})."""
    weights = {META_PREFIX + name: tensor.contiguous() for name, tensor in to_meta(state).items()}
    torch.save({"model": weights}, path)


def read_meta(path: str | Path) -> dict[str, torch.Tensor]:
    """Meta's sam3.pt (the image model's "detector." part) as Sam3Model's state dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unpickling failure means the same thing: not a SAM 3 checkpoint
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds no state dict")
    detector = {k[len(META_PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(META_PREFIX)}
    if not detector:
        raise CheckpointError(f"{path} has no '{META_PREFIX}*' weights: not Meta's SAM 3 checkpoint layout")
    return {name: tensor.contiguous() for name, tensor in to_transformers(detector).items()}


def meta_file(path: str | Path) -> Path | None:
    """The Meta-layout checkpoint `path` stands for (a .pt file, or a folder with sam3.pt and no safetensors)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        return path
    if path.is_dir() and (path / META_FILE).is_file() and not any(path.glob("*.safetensors")):
        return path / META_FILE
    return None


@contextlib.contextmanager
def transformers_layout(path):
    """`path` as a folder Sam3Model.from_pretrained reads: itself, or Meta's layout converted into a temporary one.

    Meta's checkpoint holds only weights: config.json (Sam3Config's defaults, the published dimensions, where there
    is none) and the CLIP tokenizer files must lie beside it, as in the facebook/sam3 repository.
    """
    checkpoint = meta_file(path)
    if checkpoint is None:
        yield path
        return
    from safetensors.torch import save_file
    from transformers import Sam3Config

    folder = checkpoint.parent
    tokenizer = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer.json" not in tokenizer and not {"vocab.json", "merges.txt"} <= set(tokenizer):
        raise CheckpointError(
            f"Meta's SAM 3 checkpoint {checkpoint} needs SAM 3's CLIP tokenizer beside it (tokenizer.json, or "
            "vocab.json + merges.txt, as the facebook/sam3 repository ships them)"
        )
    with tempfile.TemporaryDirectory(prefix="cseg-sam3-") as tmp:
        converted = Path(tmp)
        config = Sam3Config.from_pretrained(folder) if (folder / "config.json").is_file() else Sam3Config()
        config.save_pretrained(converted)
        for name in tokenizer:
            shutil.copy2(folder / name, converted / name)
        save_file(read_meta(checkpoint), str(converted / "model.safetensors"), metadata={"format": "pt"})
        yield converted
