"""`cseg make-checkpoint`: seeded random-init checkpoints in the published layouts.

`DIR/conceptseg-r1/` looks like the published ConceptSeg-R1-7B repository (saved with transformers 4.5x: flat
Qwen2.5-VL config.json with `num_of_query`, bf16 safetensors with `model.*`, `visual.*`, `lm_head.*` and the concept
head's `learnable_query.*`, `connector.*`, `proj_to_sam.*` keys, tokenizer, chat template, processor config).
`DIR/sam3/` is what transformers' `Sam3Model.from_pretrained` reads (fp32), plus SAM 3's CLIP tokenizer files; with
`meta_sam3`, also `DIR/sam3/sam3.pt`: the same weights in Meta's layout (what facebookresearch/sam3 loads).

Weights are generated tensor by tensor from shapes taken on the meta device and written shard by shard, so even the
full-size models are written in bounded memory. Each tensor's values depend only on (seed, name): deterministic.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import Qwen2_5_VLConfig, Sam3Config, Sam3Model

from cseg.export.models.checkpoint_sizes import SIZES
from cseg.export.models.modeling import ConceptSegR1ForConditionalGeneration
from cseg.export.models.sam3_layouts import META_FILE, write_meta
from cseg.export.models.stand_in_tokenizers import CLIP_SPECIAL_TOKENS, QWEN_SPECIAL_TOKENS, clip_tokenizer, qwen_tokenizer
from cseg.prompting import template

INIT_STD = 0.02
MAX_SHARD = "2GB"
SAM3_TEXT_CONTEXT = 32
# Qwen2.5-VL-7B-Instruct's generation_config.json; generate() applies it under the research code's do_sample=False.
GENERATION_DEFAULTS = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
# Qwen2.5-VL processor defaults (the research trainer passes max_pixels=360000 itself, inference relies on 600x600).
QWEN_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def make_checkpoint(
    size: str, seed: int, out: str | Path, sam3_size: str | None = None, meta_sam3: bool = False
) -> tuple[Path, Path]:
    """Write `out/conceptseg-r1` and `out/sam3` for `size` ("tiny", "tiny-alt", "small", "full").

    `sam3_size` gives SAM 3 other dimensions than the VLM (e.g. a tiny VLM with a full-size SAM 3); `meta_sam3` adds
    `out/sam3/sam3.pt`, the same SAM 3 weights in Meta's layout.
    """
    for name in (size, sam3_size or size):
        if name not in SIZES:
            raise ValueError(f"unknown size {name!r}; choose one of {sorted(SIZES)}")
    out = Path(out)
    model_dir, sam3_dir = out / "conceptseg-r1", out / "sam3"
    _write_conceptseg(SIZES[size]["qwen"], seed, model_dir)
    _write_sam3(SIZES[sam3_size or size]["sam3"], seed, sam3_dir)
    if meta_sam3:
        write_meta(_read_safetensors(sam3_dir), sam3_dir / META_FILE)
    return model_dir, sam3_dir


# --- ConceptSeg-R1 (Qwen2.5-VL + concept head) -------------------------------------------------------------------


def conceptseg_config(dims: dict, token_ids: dict[str, int], vocab_size: int) -> dict:
    """config.json in the published (transformers 4.5x, flat text fields) layout."""
    vision = dims["vision"]
    return {
        "architectures": ["ConceptSegR1ForConditionalGeneration_qwen2p5"],
        "model_type": "qwen2_5_vl",
        "num_of_query": dims["num_of_query"],
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "max_window_layers": dims["num_hidden_layers"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": dims["mrope_section"]},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": INIT_STD,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|vision_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_config": {
            "depth": vision["depth"],
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "hidden_act": "silu",
            "in_chans": 3,
            "out_hidden_size": dims["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
        },
    }


def published_key(name: str) -> str:
    """transformers 5 parameter name -> the name the transformers 4.5x-saved checkpoint uses."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def published_shapes(size: str) -> tuple[dict, dict[str, list[int]], dict[str, list[int]]]:
    """(conceptseg config.json, conceptseg tensor shapes, SAM 3 tensor shapes) of `size` under the published names,
    from meta-device models: what `make_checkpoint` would write, without writing it (the full size is ~19 GB)."""
    vlm, _, config_dict = _conceptseg_meta(SIZES[size]["qwen"])
    sam3, _ = _sam3_meta(SIZES[size]["sam3"])
    return (
        config_dict,
        {published_key(n): list(t.shape) for n, t in vlm.state_dict().items()},
        {n: list(t.shape) for n, t in sam3.state_dict().items()},
    )


def _conceptseg_meta(dims: dict):
    tok = qwen_tokenizer()
    token_ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = dims["vocab_size"] or _round_up(tok.get_vocab_size(), 64)
    config_dict = conceptseg_config(dims, token_ids, vocab_size)
    with torch.device("meta"):
        model = ConceptSegR1ForConditionalGeneration(Qwen2_5_VLConfig(**config_dict))
    return model, (tok, token_ids), config_dict


def _write_conceptseg(dims: dict, seed: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model, (tok, token_ids), config_dict = _conceptseg_meta(dims)
    _save_random_weights(model, seed, torch.bfloat16, out, rename=published_key, desc="conceptseg-r1 weights")
    (out / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    _write_qwen_tokenizer_files(tok, token_ids, out)


def _write_qwen_tokenizer_files(tok, token_ids: dict[str, int], out: Path) -> None:
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as the published repository ships them
    chat_template = template()["chat_template"]
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for t, i in token_ids.items()
    }  # fmt: skip
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "added_tokens_decoder": added,
            "additional_special_tokens": QWEN_SPECIAL_TOKENS[1:14],
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "errors": "replace",
            "split_special_tokens": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 131072,
            "chat_template": chat_template,
        },
    )
    _write_json(out / "chat_template.json", {"chat_template": chat_template})
    _write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "image_mean": QWEN_IMAGE_MEAN,
            "image_std": QWEN_IMAGE_STD,
            "min_pixels": 3136,
            "max_pixels": 12845056,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
    )
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": token_ids["<|endoftext|>"],
            "pad_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
            **GENERATION_DEFAULTS,
            "transformers_version": "4.51.3",
        },
    )


# --- SAM 3 -----------------------------------------------------------------------------------------------------


def sam3_config(dims: dict, vocab_size: int, bos: int, eos: int) -> Sam3Config:
    vit, text = dims["vit"], dims["text"]
    grid = vit["image_size"] // 14
    return Sam3Config(
        vision_config={
            "backbone_config": {"model_type": "sam3_vit_model", "pretrain_image_size": 336, **vit},
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        text_config={
            "model_type": "clip_text_model",
            "max_position_embeddings": SAM3_TEXT_CONTEXT,
            "projection_dim": 512 if text["hidden_size"] >= 512 else text["hidden_size"],
            "hidden_act": "gelu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
            **{**text, "vocab_size": text["vocab_size"] or vocab_size},
        },
        geometry_encoder_config={"num_layers": dims["geometry_layers"]},
        detr_encoder_config={"num_layers": dims["detr_layers"]},
        detr_decoder_config={"num_layers": dims["detr_layers"]},
    )


def _sam3_meta(dims: dict):
    tok = clip_tokenizer(SAM3_TEXT_CONTEXT)
    bos, eos = (tok.token_to_id(t) for t in CLIP_SPECIAL_TOKENS)
    config = sam3_config(dims, tok.get_vocab_size(), bos, eos)
    with torch.device("meta"):
        model = Sam3Model(config)
    return model, tok


def _write_sam3(dims: dict, seed: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model, tok = _sam3_meta(dims)
    _save_random_weights(model, seed, torch.float32, out, rename=lambda n: n, desc="sam3 weights")
    model.config.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "model_max_length": SAM3_TEXT_CONTEXT,
        },
    )


# --- shared ----------------------------------------------------------------------------------------------------


def _save_random_weights(model: torch.nn.Module, seed: int, dtype: torch.dtype, out: Path, rename, desc: str) -> None:
    shapes = {name: param for name, param in model.state_dict().items()}
    norm_params = {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False)
    }
    meta = {rename(n): torch.empty(p.shape, dtype=dtype, device="meta") for n, p in shapes.items()}
    originals = {rename(n): n for n in shapes}
    split = split_torch_state_dict_into_shards(meta, max_shard_size=MAX_SHARD)
    with tqdm(total=len(meta), desc=desc, unit="tensor", leave=False) as progress:
        for filename, names in split.filename_to_tensors.items():
            shard = {}
            for name in names:
                shard[name] = _random_tensor(originals[name], meta[name].shape, seed, originals[name] in norm_params)
                shard[name] = shard[name].to(dtype)
                progress.update()
            save_file(shard, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        _write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in meta.values())},
             "weight_map": split.tensor_to_filename},
        )  # fmt: skip


def _random_tensor(name: str, shape: torch.Size, seed: int, is_norm: bool) -> torch.Tensor:
    """Values that depend only on (seed, name): norms 1/0, other biases 0, everything else N(0, INIT_STD)."""
    if is_norm:
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.randn(shape, generator=generator) * INIT_STD


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return state


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
