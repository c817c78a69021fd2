"""The text side of ConceptSeg-R1: prompt template, answer parsing and the seed Shortcut Router rule.

Shared by the PyTorch reference and the runtime, so both build the same prompt byte for byte and take the same
routing decision. The template itself is data (`templates/conceptseg_r1.json`), copied byte-exact from the
research code.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from cseg.errors import InvalidInputError

# Longer questions than this are refused before tokenization: the research generation budget is 2816 tokens for
# prompt + completion, and an image costs 441 of them.
MAX_PROMPT_CHARS = 2000


@lru_cache(maxsize=1)
def template() -> dict:
    """The research prompt template (question text, its variants, system prompt, chat template)."""
    text = resources.files("cseg").joinpath("templates/conceptseg_r1.json").read_text(encoding="utf-8")
    return json.loads(text)


def check_prompt(prompt) -> str:
    """The user's question, validated: a string of at most MAX_PROMPT_CHARS characters, valid Unicode, with at least
    one visible character."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInputError(
            f"prompt has {len(prompt)} characters, more than the {MAX_PROMPT_CHARS} allowed: "
            "ConceptSeg-R1 expects a short question or concept"
        )
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates (e.g. from surrogateescape): no tokenizer takes them
        raise InvalidInputError(f"prompt is not valid Unicode text: {exc.reason} at position {exc.start}") from None
    if not any(unicodedata.category(c)[0] not in "ZC" for c in prompt):  # only spaces, controls, zero-width marks
        raise InvalidInputError("prompt is empty: pass the concept or question to segment, e.g. 'scratch on the lid'")
    return prompt


def build_question(question: str, n_references: int = 0, boxes_drawn: bool = True) -> str:
    """The user-turn text of the research inference script for `question` (build_prompt_data)."""
    t = template()
    if n_references == 0:
        variant = t["no_reference"]
    else:
        variant = t["reference_with_boxes"] if boxes_drawn else t["reference_without_boxes"]
    return t["question"].format(
        question=question,
        ref_bboxes=variant["ref_bboxes"],
        check_prompt=t["check_prompt"],
        check_answer=variant["check_answer"],
    )


@dataclass(frozen=True)
class Layout:
    """What the VLM is shown besides the target, which decides the question text (see `problem_text`).

    template: "inference" (src/eval/inference_single_example.py: no reference, or one reference image),
    "cot" (the benchmark episodes of src/open-r1-multimodal/src/open_r1/mydataset.py::build_meta_reference: a
    reference image, mosaic or single, with boxes listed and the top-left one withheld for the self-check),
    "reasonseg_cot" (src/eval/evaluate_reasonseg.py: no reference image).
    """

    template: str = "inference"
    n_references: int = 0
    boxes_drawn: bool = True  # inference template, one reference: whether its boxes were drawn
    listed: list | None = field(default=None)  # cot: the boxes listed in the prompt; None = no boxes and no check


def problem_text(question: str, layout: Layout) -> str:
    """The user-turn text for `question` as the research code builds it for `layout`."""
    t = template()
    if layout.template == "inference":
        return build_question(question, layout.n_references, layout.boxes_drawn)
    if layout.template == "reasonseg_cot":
        return t["reasonseg_cot"].format(question=question)
    episode = t["episode"]
    if layout.listed is None:  # build_meta_reference: one reference image, or MIG references without ref_box
        return t["cot"].format(ref_bboxes="", question=question, check_prompt="", check_answer=episode["check_answer"])
    return t["cot"].format(  # the boxes as Python prints the list, as the research f-string does
        ref_bboxes=episode["ref_bboxes"].format(boxes=layout.listed), question=question,
        check_prompt=episode["check_prompt"], check_answer=episode["check_answer"] + episode["check_tag"],
    )  # fmt: skip


def build_messages(problem: str, n_images: int) -> list[dict]:
    """Chat messages as the research `build_prompt` makes them: system text, then images, then the question."""
    return [
        {"role": "system", "content": [{"type": "text", "text": template()["system"]}]},
        {
            "role": "user",
            "content": [*({"type": "image", "text": None} for _ in range(n_images)), {"type": "text", "text": problem}],
        },
    ]


@dataclass(frozen=True)
class ParsedAnswer:
    answer: str
    rule: str
    think: str
    bbox: tuple[int, int, int, int] | None


# The research code extracts the answer with re.search(r'<answer>(.*?)</answer>') without DOTALL: an answer that
# spans lines is not found and becomes "". Kept as is: it decides which text SAM 3 sees.
_ANSWER = re.compile(r"<answer>(.*?)</answer>")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_RULE = re.compile(r"<rule>(.*?)</rule>", re.DOTALL)
# Integer-only, last occurrence, as the research reward and visualisation parse it.
_BBOX = re.compile(r"<bbox>\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\s*</bbox>")


def parse_completion(text: str) -> ParsedAnswer:
    """Split a generated completion into its tags; a missing tag gives "" (or None for the box)."""

    def first(pattern: re.Pattern) -> str:
        match = pattern.search(text)
        return match.group(1).strip() if match else ""

    boxes = _BBOX.findall(text)
    bbox = tuple(int(v) for v in boxes[-1]) if boxes else None
    return ParsedAnswer(answer=first(_ANSWER), rule=first(_RULE), think=first(_THINK), bbox=bbox)


def shortcut_limit(question: str) -> float:
    """The seed router's presence threshold: 0.1 * 2**(words - 1), words counted with str.split()."""
    return 0.1 * 2 ** (len(question.split()) - 1)


def shortcut_worth_trying(question: str) -> bool:
    """The seed router tries SAM 3 alone only when the threshold is below 1, i.e. for questions of 1-4 words."""
    return shortcut_limit(question) < 1


def shortcut_accepts(question: str, presence: float) -> bool:
    """Seed rule (inference_single_example.py): keep SAM 3's own mask when presence > threshold (a tie reasons)."""
    return shortcut_worth_trying(question) and presence > shortcut_limit(question)


def chat_frame(n_images: int) -> tuple[str, str]:
    """The chat text before and after the user turn's problem text (see render_chat).

    Tokenizers split text at special tokens before anything else, and the problem sits between two of them
    (`<|vision_end|>` and `<|im_end|>` whenever there is an image), so the three parts can be encoded one by one with
    the same ids as the whole text: the template's parts with special-token matching on, the problem (it holds the
    user's question) with it off, so typed control tokens stay plain text.
    """
    images = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
    return f"<|im_start|>system\n{template()['system']}<|im_end|>\n<|im_start|>user\n{images}", (
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def render_chat(problem: str, n_images: int) -> str:
    """What the checkpoint's Qwen2.5-VL chat template renders for build_messages(problem, n_images) with the
    generation prompt, without a template engine (the runtime has no transformers). Tests compare it with
    apply_chat_template on the shipped template."""
    before, after = chat_frame(n_images)
    return before + problem + after
