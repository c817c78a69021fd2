"""Loading the two published checkpoints: ConceptSeg-R1 (Qwen2.5-VL + concept head) and SAM 3.

These are the functions users call with the real weights, and the ones the tests call with locally generated
checkpoints. They refuse, with a CheckpointError that names the problem, anything that would otherwise load with
silently random weights: missing or misnamed tensors, wrong shapes, a config without `num_of_query`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase, Sam3Config, Sam3Model
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cseg.errors import CheckpointError
from cseg.engines.footprint import safetensors_shapes
from cseg.export.models.modeling import (
    CONCEPT_HEAD_PREFIXES,
    LEARNABLE_QUERY_WEIGHT,
    ConceptSegR1ForConditionalGeneration,
    num_queries,
)
from cseg.export.models.sam3_layouts import meta_file, transformers_layout

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class ConceptSegCheckpoint:
    model: ConceptSegR1ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: Qwen2VLImageProcessorPil
    generation_config: GenerationConfig
    path: Path

    @property
    def num_queries(self) -> int:
        return num_queries(self.model.config)


@dataclass
class Sam3Checkpoint:
    model: Sam3Model
    tokenizer: PreTrainedTokenizerBase
    path: Path

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.backbone_config.image_size)


def resolve_checkpoint_dir(path_or_id: str | os.PathLike, what: str) -> Path:
    """A local directory as is; a hub id ("org/name") through the Hugging Face cache, where a hub is reachable."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    text = os.fspath(path_or_id)
    if not _HUB_ID.match(text) or path.exists():
        raise CheckpointError(f"{what} directory {text!r} does not exist; pass the folder that holds config.json")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text))
    except Exception as exc:  # any hub failure (offline, 404, auth) means the same thing to the user
        raise CheckpointError(
            f"{what} {text!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}). Download it on a machine with network access "
            f"(huggingface-cli download {text} --local-dir DIR) and pass DIR."
        ) from None


def _require_files(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{what} directory {path} has no config.json")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"{what} directory {path} has no safetensors weights ({' or '.join(_WEIGHT_FILES)})")


def _check_loading_info(info: dict, path: Path, what: str) -> None:
    missing, unexpected = sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", []))
    mismatched = sorted(info.get("mismatched_keys", []))
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing (they would be random): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown weights (misnamed?): {', '.join(unexpected[:8])}")
    if mismatched:
        shapes = [f"{key} is {tuple(found)} in the file, {tuple(expected)} in config.json" for key, found, expected
                  in mismatched[:4]]  # fmt: skip
        problems.append(f"{len(mismatched)} weights with another shape than config.json says: {'; '.join(shapes)}")
    if problems:
        raise CheckpointError(f"{what} checkpoint {path} does not match the architecture: " + "; ".join(problems))


def load_conceptseg(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32) -> ConceptSegCheckpoint:
    """Load ConceptSeg-R1 (Qwen2.5-VL + concept head), its tokenizer, image processor and generation config."""
    path = resolve_checkpoint_dir(model_dir, "ConceptSeg-R1")
    _require_files(path, "ConceptSeg-R1")
    try:
        config = ConceptSegR1ForConditionalGeneration.config_class.from_pretrained(path)
        _infer_num_queries(config, path)
        model, info = ConceptSegR1ForConditionalGeneration.from_pretrained(
            # mismatches are reported (then refused) by _check_loading_info, with names and shapes
            path, config=config, dtype=dtype, output_loading_info=True, attn_implementation="sdpa",
            ignore_mismatched_sizes=True,
        )
    except (ValueError, RuntimeError) as exc:  # config problems, e.g. num_of_query missing (raised by num_queries)
        raise CheckpointError(f"ConceptSeg-R1 checkpoint {path} could not be loaded: {exc}") from None
    _check_loading_info(info, path, "ConceptSeg-R1")
    head_keys = [k for k in model.state_dict() if k.startswith(CONCEPT_HEAD_PREFIXES)]
    if not head_keys:  # cannot happen with this class; guards against a refactor dropping the head silently
        raise CheckpointError(f"ConceptSeg-R1 checkpoint {path}: the concept head was not built")
    model.eval()
    return ConceptSegCheckpoint(
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        generation_config=GenerationConfig.from_pretrained(path),
        path=path,
    )


def _infer_num_queries(config, path: Path) -> None:
    """A config.json without num_of_query: Q from the learned queries' shape, as the research code's newest
    `config.num_of_query or 8` fallback would silently assume 8 (which fails to load other checkpoints)."""
    if getattr(config, "num_of_query", None) is not None:
        return  # stated (a wrong value is refused by num_queries or by the weights' shapes)
    shape = safetensors_shapes(path).get(LEARNABLE_QUERY_WEIGHT)
    if shape is None:
        return  # num_queries names the problem
    config.num_of_query = int(shape[0])
    logger.warning("ConceptSeg-R1 checkpoint %s: config.json has no num_of_query; using Q=%d, the first dimension "
                   "of %s %s", path, config.num_of_query, LEARNABLE_QUERY_WEIGHT, list(shape))  # fmt: skip


# Meta's SAM 3 ViT normalises with LayerNorm(eps=1e-5) (sam3/model/vitdet.py, ViT.__init__: norm_layer
# "LayerNorm" -> partial(nn.LayerNorm, eps=1e-5)); transformers' Sam3ViTConfig defaults to 1e-6 and its converter
# writes Sam3Config's defaults (so the published facebook/sam3 config.json should say 1e-6 too; not seen here).
# Meta's value is the model ConceptSeg-R1 runs, so every SAM 3 loads with it; the difference grows as the ViT's
# activations shrink (random weights: 1.8e-3 x max|logit| in the semantic logits against Meta's own, see README).
META_VIT_LAYER_NORM_EPS = 1e-5


def load_sam3(sam3_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """Load SAM 3 (transformers' Sam3Model reads the published facebook/sam3 weights) and its CLIP tokenizer.

    `sam3_dir` may also be Meta's layout: its sam3.pt, or a folder holding it (cseg.export.models.sam3_layouts).

    attn_implementation="eager" is what the ONNX exporter needs for the detector side (see DESIGN).
    """
    meta = meta_file(sam3_dir)
    if meta is not None:  # Meta's sam3.pt: read through a converted temporary folder
        with transformers_layout(meta) as converted:
            checkpoint = load_sam3(converted, dtype, attn_implementation)
        checkpoint.path = meta.parent  # where its config and tokenizer files lie
        return checkpoint
    path = resolve_checkpoint_dir(sam3_dir, "SAM 3")
    _require_files(path, "SAM 3")
    try:
        config = Sam3Config.from_pretrained(path)
        vit = config.vision_config.backbone_config
        if vit.layer_norm_eps != META_VIT_LAYER_NORM_EPS:
            logger.info("SAM 3 checkpoint %s: ViT layer_norm_eps %g -> %g (Meta's SAM 3)", path, vit.layer_norm_eps,
                        META_VIT_LAYER_NORM_EPS)  # fmt: skip
            vit.layer_norm_eps = META_VIT_LAYER_NORM_EPS
        model, info = Sam3Model.from_pretrained(
            path, config=config, dtype=dtype, output_loading_info=True, attn_implementation=attn_implementation,
            ignore_mismatched_sizes=True,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"SAM 3 checkpoint {path} could not be loaded: {exc}") from None
    _check_loading_info(info, path, "SAM 3")
    model.eval()
    return Sam3Checkpoint(model=model, tokenizer=AutoTokenizer.from_pretrained(path), path=path)
