"""Prompt template (byte-exact to the research code), answer parsing, and the seed Shortcut Router rule."""

import hashlib

import pytest

from cseg import prompting
from cseg.errors import InvalidInputError

# Typed from src/eval/inference_single_example.py (question_template + build_prompt_data, no reference image).
RESEARCH_NO_REFERENCE = (
    '\nYour task is to locate the object matching "red apple" in the Target Image.\n'
    "Data provided:\n"
    "1. Reference Image : N/A.\n"
    "2. Target Image: The image to locate.\n"
    "Think through the reasoning process in your mind\uff0c induce the visual rule , apply this rule to locate the "
    "corresponding object in the Target Image.\n"
    "Finally,  provide the bounding box  and a 1-2 word  noun phrase for the object in the target image. \n"
    "Output strictly in the following format: <think>[Your step-by-step analysis and reasoning]</think>  "
    "<rule>Visual rule</rule> <bbox>[x3, y3, x4, y4]</bbox> <answer>concise noun phrase for target object</answer>\n"
    "     "
)


def test_question_is_byte_identical_to_the_research_template():
    built = prompting.build_question("red apple")
    assert built == RESEARCH_NO_REFERENCE
    assert hashlib.sha256(built.encode()).hexdigest() == hashlib.sha256(RESEARCH_NO_REFERENCE.encode()).hexdigest()
    assert "\uff0c" in built  # the full-width comma after "mind"


def test_reference_variants_follow_build_prompt_data():
    with_boxes = prompting.build_question("scratch", n_references=1, boxes_drawn=True)
    assert "1. Reference Image : Bounding boxes at red-marked boxs.\n" in with_boxes
    assert "</think>  <rule>Visual rule of the reference targets in the reference image</rule> <bbox>" in with_boxes
    # The research script's f-string with bbox=None, reproduced on purpose.
    without = prompting.build_question("scratch", n_references=1, boxes_drawn=False)
    assert "1. Reference Image : Bounding boxes at None.\n" in without


def test_messages_put_images_before_the_question_with_the_research_system_prompt():
    messages = prompting.build_messages("Q", 2)
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant. "}]}
    assert [c["type"] for c in messages[1]["content"]] == ["image", "image", "text"]


def test_chat_template_renders_the_qwen_layout(reference):
    text = reference.vlm.tokenizer.apply_chat_template(
        prompting.build_messages("Q?", 1), tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant. <|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "text, answer, rule, think, bbox",
    [
        ("<think>a</think> <rule>r</rule> <bbox>[1, 2, 3, 4]</bbox> <answer>red apple</answer>", "red apple", "r", "a",
         (1, 2, 3, 4)),
        ("no tags at all", "", "", "", None),
        ("<answer>   spaced   out  </answer>", "spaced   out", "", "", None),
        ("<answer>two\nlines</answer>", "", "", "", None),  # the research regex has no DOTALL
        ("<think>line one\nline two</think><answer>x</answer><answer>y</answer>", "x", "", "line one\nline two", None),
        ("<bbox>[1.5, 2, 3, 4]</bbox>", "", "", "", None),  # integers only, as the research parser
        ("<bbox>[1,2,3,4]</bbox> then <bbox>[5, 6, 7, 8]</bbox>", "", "", "", (5, 6, 7, 8)),
        ("<answer>unterminated", "", "", "", None),
    ],
)  # fmt: skip
def test_parse_completion(text, answer, rule, think, bbox):
    parsed = prompting.parse_completion(text)
    assert (parsed.answer, parsed.rule, parsed.think, parsed.bbox) == (answer, rule, think, bbox)


@pytest.mark.parametrize("words, limit", [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6)])
def test_router_limit_doubles_per_word(words, limit):
    question = " ".join(["w"] * words)
    assert prompting.shortcut_limit(question) == pytest.approx(limit)
    assert prompting.shortcut_worth_trying(question) == (words <= 4)
    if words <= 4:
        assert prompting.shortcut_accepts(question, limit + 1e-6)
        assert not prompting.shortcut_accepts(question, limit)  # a tie goes to reasoning, as in the script
        assert not prompting.shortcut_accepts(question, limit - 1e-6)
    else:
        assert not prompting.shortcut_accepts(question, 1.0)


def test_router_counts_words_with_str_split():
    assert prompting.shortcut_limit("  two\twords \n") == pytest.approx(0.2)


@pytest.mark.parametrize("bad", [None, 3, "", "   \n", "x" * (prompting.MAX_PROMPT_CHARS + 1),
                                 "\u200b\u200d\ufeff", "bolt \ud800"])  # zero-width only; a lone surrogate (TypeError)
def test_bad_prompts_are_refused(bad):
    with pytest.raises(InvalidInputError):
        prompting.check_prompt(bad)


# Typed from src/open-r1-multimodal/src/open_r1/constants.py question_template_registry["cot"], formatted as
# mydataset.py build_meta_reference does for a 4-reference episode (boxes of tiles 2-4 listed; tile 1's withheld).
RESEARCH_EPISODE = (
    '\nYour task is to locate the object matching " cat" in the Target Image.\n'
    "Data provided:\n"
    "1. Reference Image : Bounding boxes at [[310, 5, 580, 290], [12, 301, 150, 420], [305, 333, 599, 599]].\n"
    "2. Target Image: The image to locate.\n"
    "Think through the reasoning process in your mind\uff0c induce the visual rule and check it by locating the missed "
    "bounding box in the top-left region in  the reference image, apply this rule to locate the corresponding object "
    "in the Target Image.\n"
    "Finally,  provide the bounding box  and a 1-2 word  noun phrase for the object in the target image. \n"
    "Output strictly in the following format: <think>[Your step-by-step analysis and reasoning]</think>  "
    "<rule>Visual rule of the reference targets</rule><check>[x1, y1, x2, y2]</check> <bbox>[x3, y3, x4, y4]</bbox> "
    "<answer>concise noun phrase for target object</answer>\n"
    "     "
)
# The same template for one reference (or MIG references without ref_box): no boxes, no check.
RESEARCH_ONE_REFERENCE = RESEARCH_EPISODE.replace(
    " : Bounding boxes at [[310, 5, 580, 290], [12, 301, 150, 420], [305, 333, 599, 599]].", " ."
).replace("rule and check it by locating the missed bounding box in the top-left region in", "rule  in").replace(
    "</rule><check>[x1, y1, x2, y2]</check>", "</rule>"
)
# constants.py question_template_registry["reasonseg_cot"] (evaluate_reasonseg.py).
RESEARCH_REASONSEG = (
    '\nYour task is to locate the object matching "what protects the head?" in the Target Image.\n'
    "Data provided:\n"
    "1. Reference Image: N/A.\n"
    "2. Target Image: The image to locate.\n"
    "Think through the reasoning process in your mind\uff0c induce the visual rule, apply this rule to locate the "
    "corresponding object in the Target Image.\n"
    "Finally,  provide the bounding box  and a 1-2 word  noun phrase for the object in the target image. \n"
    "Output strictly in the following format: <think>[Your step-by-step analysis and reasoning]</think>  "
    "<rule>Visual rule </rule> <bbox>[x3, y3, x4, y4]</bbox> <answer>concise noun phrase for target object</answer>\n"
    " "
)


def test_episode_questions_are_byte_identical_to_the_research_templates():
    listed = [[310, 5, 580, 290], [12, 301, 150, 420], [305, 333, 599, 599]]
    assert prompting.problem_text(" cat", prompting.Layout("cot", 4, listed=listed)) == RESEARCH_EPISODE
    assert prompting.problem_text(" cat", prompting.Layout("cot", 1)) == RESEARCH_ONE_REFERENCE
    assert "1. Reference Image .\n" in RESEARCH_ONE_REFERENCE and "induce the visual rule  in  the" in RESEARCH_ONE_REFERENCE
    reasonseg = prompting.problem_text("what protects the head?", prompting.Layout("reasonseg_cot"))
    assert reasonseg == RESEARCH_REASONSEG
    assert prompting.problem_text("red apple", prompting.Layout()) == RESEARCH_NO_REFERENCE  # the inference script's
