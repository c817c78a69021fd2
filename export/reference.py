"""`ReferencePipeline`: ConceptSeg-R1 in PyTorch, as the research inference script computes it.

This is the oracle every exported graph and the runtime are compared with. It follows
src/eval/inference_single_example.py step by step: 600x600 VLM image (a demonstration image with red boxes first),
the research prompt through the checkpoint's chat template, greedy generate() under the checkpoint's generation
config with max_length 2816, the <answer> phrase, a second full forward for the last-layer hidden states of the
completion, the concept head, SAM 3 with text ⊕ geometry ⊕ concept tokens, the semantic logits upsampled bilinearly and
thresholded at 0. The seed Shortcut Router (word count vs presence) decides whether SAM 3 alone suffices.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cseg import pipeline, prompting
from cseg.errors import CheckpointError
from cseg.export.loading import ConceptSegCheckpoint, Sam3Checkpoint, load_conceptseg, load_sam3
from cseg.export.sam3_prompt import sam3_prompt
from cseg.images import Frame, render_demonstrations, vlm_target
from cseg.options import SegmentOptions, check_mask_interpolation
from cseg.pipeline import timed
from cseg.runtime.preprocess import sam3_pixels
from cseg.segmentation import Instances, Segmentation

RESEARCH_MAX_LENGTH = 2048 + 768  # generate(max_length=...) in the research script: prompt + completion tokens
SAM3_TEXT_LENGTH = 32
# SAM 3's own instance threshold (Meta's Sam3Processor confidence_threshold=0.5) on sigmoid(class) * presence;
# instance masks are binarised at sigmoid > 0.5, i.e. logit > 0.
INSTANCE_SCORE_THRESHOLD = 0.5


@dataclass
class Sam3Result:
    """SAM 3's answer for one prompt, at SAM 3's own resolution."""

    semantic_logits: torch.Tensor  # [1, 1, h, w]
    presence_logit: torch.Tensor  # [1, 1]
    pred_logits: torch.Tensor  # [1, N]
    pred_boxes: torch.Tensor  # [1, N, 4] normalised xyxy
    pred_masks: torch.Tensor  # [1, N, h, w] logits

    @property
    def presence(self) -> float:
        return float(torch.sigmoid(self.presence_logit).reshape(()))


@dataclass
class ImageState:
    frame: Frame
    vision: object  # SAM 3 vision features (Sam3VisionEncoderOutput)


@dataclass
class Reasoning(pipeline.Reasoning):
    """The full path's output, plus the tensors parity tests compare."""

    completion_ids: torch.Tensor | None = None  # [1, T] token_ids as a tensor
    hidden_states: torch.Tensor | None = None  # [1, T, H] last-layer, post-norm, from a teacher-forced second forward


class ReferencePipeline:
    """The PyTorch oracle: `segment(image, prompt, demos=None)` with the same signature as the runtime."""

    def __init__(self, vlm: ConceptSegCheckpoint, sam3: Sam3Checkpoint, *, max_length: int = RESEARCH_MAX_LENGTH):
        self.vlm = vlm
        self.sam3 = sam3
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, model_dir, sam3_dir, *, dtype: torch.dtype = torch.float32, **kwargs):
        """Load both checkpoints (local directories, or hub ids where a hub is reachable).

        dtype=torch.bfloat16 reproduces the research numerics; float32 is what exported graphs are compared with.
        """
        return cls(load_conceptseg(model_dir, dtype=dtype), load_sam3(sam3_dir, dtype=dtype), **kwargs)

    # --- the public calls (the flow itself is cseg.pipeline, shared with the runtime) ----------------------------

    @torch.no_grad()
    def segment(self, image, prompt: str, demos=None, *, options: SegmentOptions | None = None,
                **settings) -> Segmentation:  # fmt: skip
        """The runtime's options (cseg.options.SegmentOptions: route, max_new_tokens, bgr, mask_size,
        mask_interpolation, max_length), as `options=` and/or keywords."""
        return pipeline.segment(self, image, prompt, demos, options=options, **settings)

    @torch.no_grad()
    def segment_many(self, image, prompts, demos=None, *, options: SegmentOptions | None = None,
                     **settings) -> list[Segmentation]:  # fmt: skip
        return pipeline.segment_many(self, image, prompts, demos, options=options, **settings)

    # --- the backend protocol (cseg.backend.Backend) ------------------------------------------------------------------

    def image_state(self, frame: Frame, timings: dict) -> ImageState:
        with timed(timings, "sam3_preprocess"):
            pixels = torch.from_numpy(sam3_pixels(frame, self.sam3.image_size)).to(self.sam3.model.dtype)
        with timed(timings, "sam3_vision"):
            return ImageState(frame, self.sam3_vision(pixels))

    def sam3_segment(self, state: ImageState, text: str, concept_tokens, timings: dict) -> Sam3Result:
        with timed(timings, "sam3_text"):
            features, mask = self.sam3_text(text)
        with timed(timings, "sam3_decoder"):
            return self.sam3_decode(state.vision, features, mask, concept_tokens)

    def reason(self, state: ImageState, question: str, demos, max_new_tokens, timings: dict,
               max_length: int | None = None) -> Reasoning:  # fmt: skip
        with timed(timings, "vlm_preprocess"):
            inputs = self.vlm_inputs(state.frame.pil(), question, demos, max_length)
        return self.generate(inputs, max_new_tokens, timings, max_length)

    @staticmethod
    def presence(raw: Sam3Result) -> float:
        return raw.presence

    @staticmethod
    def postprocess(raw: Sam3Result, size: tuple[int, int], interpolation: str = "bilinear"):
        """The research post-processing: logits resized to `size` (bilinear, align_corners=False; or "bicubic" as
        the ReasonSeg evaluation's cv2 INTER_CUBIC, here torch's, a = -0.75 too), then > 0. (mask, Instances)."""
        height, width = size
        mode = check_mask_interpolation(interpolation)
        semantic = F.interpolate(raw.semantic_logits.float(), size=size, mode=mode, align_corners=False)
        scores = (torch.sigmoid(raw.pred_logits.float()) * torch.sigmoid(raw.presence_logit.float()))[0]
        keep = scores > INSTANCE_SCORE_THRESHOLD
        if not keep.any():
            return (semantic[0, 0] > 0).numpy(), Instances.empty(height, width)
        masks = F.interpolate(raw.pred_masks[:, keep].float(), size=size, mode=mode, align_corners=False)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        instances = Instances(
            masks=(masks[0] > 0).numpy(),
            boxes=(raw.pred_boxes[0, keep].float() * scale).numpy().astype(np.float32),
            scores=scores[keep].numpy().astype(np.float32),
        )
        return (semantic[0, 0] > 0).numpy(), instances

    # --- building blocks, also used by export parity checks ---------------------------------------------------

    def sam3_vision(self, pixels: torch.Tensor):
        return self.sam3.model.get_vision_features(pixel_values=pixels)

    def sam3_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        return sam3_text_features(self.sam3, text)

    def sam3_decode(self, vision, text_features, text_mask, concept_tokens=None) -> Sam3Result:
        features, mask = sam3_prompt(self.sam3.model, vision, text_features, text_mask, concept_tokens)
        out = self.sam3.model(
            vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(pooler_output=features), attention_mask=mask
        )
        return Sam3Result(out.semantic_seg, out.presence_logits, out.pred_logits, out.pred_boxes, out.pred_masks)

    def vlm_inputs(self, image, question: str, demos=(), max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids, pixel patches and grids for the VLM, as the research script builds them with the processor."""
        images = [vlm_target(image, demos)]  # a prepared Episode may bring the VLM's own target (research ReasonSeg)
        reference, layout = render_demonstrations(demos) if demos else (None, prompting.Layout())
        if reference is not None:
            images.insert(0, reference)
        problem = prompting.problem_text(question, layout)
        tokenizer, processor = self.vlm.tokenizer, self.vlm.image_processor
        text = tokenizer.apply_chat_template(
            prompting.build_messages(problem, len(images)), tokenize=False, add_generation_prompt=True
        )
        vision = processor(images=images, return_tensors="pt")
        # The user's question sits inside `problem`; it is tokenized with special-token matching off (as the runtime
        # does, prompting.chat_frame) so control tokens typed into it stay plain text.
        before, found, after = text.rpartition(problem)
        if not found:
            raise CheckpointError("the checkpoint's chat template does not render the question text verbatim")
        # What Qwen2_5_VLProcessor does (it cannot be built here: its video half needs torchvision): expand each
        # image placeholder to one token per merged 2x2 patch group.
        pad = "<|image_pad|>"
        pieces = before.split(pad)
        if len(pieces) != len(images) + 1:
            raise CheckpointError(f"the chat template produced {len(pieces) - 1} image slots for {len(images)} images")
        per_image = (vision["image_grid_thw"].prod(-1) // processor.merge_size**2).tolist()
        before = pieces[0] + "".join(pad * n + piece for n, piece in zip(per_image, pieces[1:]))
        ids = [
            *tokenizer(before, add_special_tokens=False).input_ids,
            *tokenizer(problem, add_special_tokens=False, split_special_tokens=True).input_ids,
            *tokenizer(after, add_special_tokens=False).input_ids,
        ]
        input_ids = torch.tensor([ids], dtype=torch.long)
        pipeline.generation_room(input_ids.shape[1], self.max_length, max_length)  # refused before generate() runs
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == self.vlm.model.config.image_token_id).int(),
            "pixel_values": vision["pixel_values"].to(self.vlm.model.dtype),
            "image_grid_thw": vision["image_grid_thw"],
        }

    def generate(self, inputs: dict, max_new_tokens: int | None, timings: dict,
                 max_length: int | None = None) -> Reasoning:  # fmt: skip
        model, tokenizer = self.vlm.model, self.vlm.tokenizer
        prompt_length = inputs["input_ids"].shape[1]
        # The research call: generate(max_length=2816, use_cache=True, do_sample=False) on top of the checkpoint's
        # generation_config.json, whose other settings (repetition_penalty, eos ids) stay in force.
        config = copy.deepcopy(self.vlm.generation_config)
        # max_length bounds prompt + completion; max_new_tokens can only lower it (vlm_inputs left room for one)
        room = pipeline.generation_room(prompt_length, self.max_length, max_length)
        budget = ({"max_new_tokens": min(max_new_tokens, room)} if max_new_tokens
                  else {"max_length": prompt_length + room})  # fmt: skip
        # sampling settings of the checkpoint do nothing under do_sample=False; cleared to keep generate() quiet
        config.update(do_sample=False, use_cache=True, temperature=None, top_p=None, top_k=None, **budget)
        with timed(timings, "generate"):
            full_ids = model.generate(**inputs, generation_config=config)
        completion = full_ids[:, prompt_length:]
        text = tokenizer.batch_decode(completion, skip_special_tokens=True)[0]
        with timed(timings, "hidden_states"):
            hidden = self.completion_hidden_states(inputs, full_ids)
        with timed(timings, "concept_head"):
            concept = model.concept_tokens(hidden)
        return Reasoning(
            text, prompting.parse_completion(text), concept, tuple(completion[0].tolist()), completion, hidden
        )

    def completion_hidden_states(self, inputs: dict, full_ids: torch.Tensor) -> torch.Tensor:
        """The research second forward: last-layer (post-norm) states at every completion position.

        As in the research script, pad-token positions get attention mask 0 (Qwen's pad id is <|endoftext|>).
        """
        prompt_length = inputs["input_ids"].shape[1]
        attention_mask = torch.ones_like(full_ids)
        attention_mask[full_ids == self.vlm.generation_config.pad_token_id] = 0
        token_types = torch.zeros_like(full_ids, dtype=inputs["mm_token_type_ids"].dtype)
        token_types[:, :prompt_length] = inputs["mm_token_type_ids"]
        out = self.vlm.model(
            input_ids=full_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=token_types,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            output_hidden_states=True,
            use_cache=False,
        )
        return out.hidden_states[-1][:, prompt_length:]


def sam3_text_features(sam3: Sam3Checkpoint, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 3 text features [1, 32, 256] and attention mask [1, 32] (1 = token) for a phrase."""
    tokens = sam3.tokenizer(
        [text], padding="max_length", max_length=SAM3_TEXT_LENGTH, truncation=True, return_tensors="pt",
        split_special_tokens=True,  # a phrase is user or generated text: its <|endoftext|> is not the real one
    )
    out = sam3.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return out.pooler_output, tokens.attention_mask


REFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def reference_configurations(root, dtypes) -> dict[str, ReferencePipeline]:
    """The PyTorch reference in each configuration `cseg bench` times it in ("fp32", "bf16"), from a checkpoint
    folder in `cseg make-checkpoint`'s layout (conceptseg-r1/ + sam3/): {"reference-fp32": ..., ...}."""
    from pathlib import Path

    root = Path(root)
    if not (root / "conceptseg-r1").is_dir() or not (root / "sam3").is_dir():
        raise CheckpointError(f"{root} must hold conceptseg-r1/ and sam3/ (cseg make-checkpoint layout)")
    return {f"reference-{name}": ReferencePipeline.from_pretrained(root / "conceptseg-r1", root / "sam3",
                                                                   dtype=REFERENCE_DTYPES[name])
            for name in dtypes}  # fmt: skip
