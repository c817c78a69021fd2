"""Meta's own SAM 3 (the `sam3` package, what ConceptSeg-R1 runs) as a second oracle, on the CPU.

Runs in its own virtual environment (`make meta-oracle` builds .venv-meta: torch 2.14 + torchvision + sam3 0.1.4 +
open_clip_torch for the CLIP BPE file), never in cseg's: it imports nothing from cseg.

    .venv-meta/bin/python tests/meta_oracle.py --checkpoint sam3.pt --image img.png --prompt "a cat" --out meta.npz

`--checkpoint` is a Meta-layout SAM 3 checkpoint (Meta's published sam3.pt, or `cseg make-checkpoint --meta-sam3`'s
sam3/sam3.pt, the same random weights as the transformers-layout files beside it). The image goes through Meta's
Sam3Processor.set_image (torchvision v2 uint8 antialiased resize, mean = std = 0.5) and each prompt through
set_text_prompt's path: the text plus the dummy (empty) geometric prompt, `forward_grounding`. Written per prompt i:
input_ids_i [1, 32] (Meta's CLIP BPE tokens, 0 = padding), text_features_i [1, 32, 256], semantic_logits_i
[1, 1, h, w], presence_logit_i [1, 1], pred_logits_i [1, N], pred_boxes_i [1, N, 4] (normalised xyxy,
transformers' convention), pred_masks_i [1, N, h, w]; plus pixel_values [1, 3, S, S] (Meta's preprocessing)
and missing_keys (names of the model's weights the checkpoint did not hold; the caller requires it empty).

Meta's code assumes a GPU in two places: tensors created with device="cuda" (e.g. PositionEmbeddingSine's cache) and
pin_memory() in the geometry encoder. A torch function mode redirects both to the CPU; site-packages stay untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode


class CpuOnly(TorchFunctionMode):
    """Every device="cuda" becomes the CPU; pin_memory() is a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.pin_memory:
            return args[0]
        device = kwargs.get("device")
        if device is not None and str(device).startswith("cuda"):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def bpe_path() -> str:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        sys.exit(f"open_clip_torch does not ship {path.name}; pass --bpe")
    return str(path)


def build(bpe: str | None):
    from sam3.model_builder import build_sam3_image_model

    return build_sam3_image_model(bpe_path=bpe or bpe_path(), device="cpu", checkpoint_path=None, load_from_HF=False)


def dump_layout(out: str, bpe: str | None) -> None:
    """The names and shapes of Meta's image model's weights, as its checkpoint stores them ("detector." prefix)."""
    layout = {f"detector.{k}": list(v.shape) for k, v in build(bpe).state_dict().items()}
    Path(out).write_text(json.dumps(layout, indent=0) + "\n")


def run(checkpoint: str, image_path: str, prompts: list[str], out: str, bpe: str | None) -> None:
    from PIL import Image
    from sam3.model.box_ops import box_cxcywh_to_xyxy
    from sam3.model.sam3_image_processor import Sam3Processor

    start = time.perf_counter()
    model = build(bpe)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)  # no second copy in memory
    state = state.get("model", state)
    weights = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    del state, weights  # the model holds its own copy
    model.eval()
    print(f"built and loaded in {time.perf_counter() - start:.1f} s; {len(missing)} missing, "
          f"{len(unexpected)} unexpected weights", flush=True)  # fmt: skip
    processor = Sam3Processor(model, device="cpu")
    image = Image.open(image_path).convert("RGB")
    result = {"missing_keys": np.array(sorted(missing), dtype=str),
              "unexpected_keys": np.array(sorted(unexpected), dtype=str)}  # fmt: skip
    with torch.inference_mode():
        from torchvision.transforms import v2

        result["pixel_values"] = processor.transform(v2.functional.to_image(image)).unsqueeze(0).numpy()
        image_state = processor.set_image(image)
        for i, prompt in enumerate(prompts):
            start = time.perf_counter()
            text = model.backbone.forward_text([prompt], device="cpu")
            image_state["backbone_out"].update(text)
            # Meta's CLIP BPE tokenization (cseg's stand-in tokenizer gives other ids), and what the text encoder made
            result[f"input_ids_{i}"] = model.backbone.language_backbone.tokenizer([prompt], context_length=32).numpy()
            result[f"text_features_{i}"] = text["language_features"].transpose(0, 1).float().numpy()
            raw = model.forward_grounding(
                backbone_out=image_state["backbone_out"], find_input=processor.find_stage,
                geometric_prompt=model._get_dummy_prompt(), find_target=None,
            )  # fmt: skip
            result[f"semantic_logits_{i}"] = raw["semantic_seg"].float().numpy()
            result[f"presence_logit_{i}"] = raw["presence_logit_dec"].float().reshape(1, 1).numpy()
            result[f"pred_logits_{i}"] = raw["pred_logits"].float().squeeze(-1).numpy()
            result[f"pred_boxes_{i}"] = box_cxcywh_to_xyxy(raw["pred_boxes"]).float().numpy()
            result[f"pred_masks_{i}"] = raw["pred_masks"].float().numpy()
            print(f"prompt {prompt!r}: {time.perf_counter() - start:.1f} s", flush=True)
    np.savez_compressed(out, prompts=np.array(prompts, dtype=str), **result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="Meta-layout SAM 3 checkpoint (sam3.pt)")
    parser.add_argument("--image")
    parser.add_argument("--prompt", action="append", help="a text prompt (repeatable)")
    parser.add_argument("--out", required=True, help="the .npz to write (the .json with --dump-layout)")
    parser.add_argument("--bpe", help="CLIP BPE vocabulary (default: open_clip_torch's copy)")
    parser.add_argument("--dump-layout", action="store_true", help="write the weights' names and shapes instead")
    args = parser.parse_args()
    if not args.dump_layout and not (args.checkpoint and args.image and args.prompt):
        parser.error("--checkpoint, --image and --prompt are required (unless --dump-layout)")
    torch.set_grad_enabled(False)
    with CpuOnly():
        if args.dump_layout:
            dump_layout(args.out, args.bpe)
        else:
            run(args.checkpoint, args.image, args.prompt, args.out, args.bpe)


if __name__ == "__main__":
    main()
