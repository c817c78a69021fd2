"""Small stand-in tokenizers with the real special tokens, for locally generated checkpoints.

The real Qwen2 and CLIP vocabularies cannot be downloaded here. These byte-level BPE tokenizers have the same
special tokens, pre-tokenization rules and file formats, so the loading code, chat template and runtime tokenization
run unchanged; only the vocabulary and merges differ (built deterministically from a small built-in corpus).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from cseg.prompting import template

# Qwen2.5-VL's added tokens, in their published order (ids 151643.. in the real vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
QWEN_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CLIP_SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]
CLIP_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_WORDS = """
person bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign parking meter bench
bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard
sports ball kite baseball bat glove skateboard surfboard tennis racket bottle wine glass cup fork knife spoon bowl
banana apple sandwich orange broccoli carrot hot dog pizza donut cake chair couch potted plant bed dining table toilet
tv laptop mouse remote keyboard cell phone microwave oven toaster sink refrigerator book clock vase scissors teddy
hair drier toothbrush scratch dent crack rust stain hole burr chip missing screw bolt weld seam defect anomaly lid
label connector cable pin solder joint wafer die tablet capsule leather fabric wood tile metal surface part camera
shadow transparent camouflaged salient object polyp lesion tumor skin road sidewalk building wall fence pole rider
vegetation terrain sky the a an of in on with left right top bottom red blue green small large segment find what which
""".split()


def _corpus() -> list[str]:
    t = template()
    return [t["question"], t["system"], " ".join(_WORDS)] * 4 + [
        "<think>The object is the one on the left.</think> <rule>Visual rule</rule> <bbox>[12, 34, 560, 598]</bbox> "
        "<answer>red apple</answer>"
    ]


def _prefix_bpe(pre_tokenizer, end_of_word_suffix: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges that build every corpus word from its prefixes, in first-seen order.

    Built by hand instead of with BpeTrainer, whose tie-breaking between equally frequent pairs is not deterministic
    (two runs gave different tokenizer.json files): a checkpoint must be the same bytes for the same seed.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = alphabet + ([a + end_of_word_suffix for a in alphabet] if end_of_word_suffix else [])
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    merges: list[tuple[str, str]] = []
    for text in _corpus():
        for word, _ in pre_tokenizer.pre_tokenize_str(text):
            pieces = list(word)
            if end_of_word_suffix:
                pieces[-1] += end_of_word_suffix
            current = pieces[0]
            for piece in pieces[1:]:
                if current + piece not in vocab:
                    vocab[current + piece] = len(vocab)
                    merges.append((current, piece))
                current += piece
    return vocab, merges


def qwen_tokenizer() -> Tokenizer:
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _prefix_bpe(pre_tokenizer, None)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return tok


def clip_tokenizer(context_length: int = 32) -> Tokenizer:
    """CLIP-style: lower-cased, '</w>' word ends, <|startoftext|> ... <|endoftext|>, padded to the context length."""
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PRETOKENIZE), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    vocab, merges = _prefix_bpe(pre_tokenizer, "</w>")
    # CLIP puts its two special tokens at the end of the vocabulary.
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({CLIP_SPECIAL_TOKENS[0]: bos, CLIP_SPECIAL_TOKENS[1]: eos})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
    tok.add_special_tokens(CLIP_SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[(CLIP_SPECIAL_TOKENS[0], bos), (CLIP_SPECIAL_TOKENS[1], eos)]
    )
    tok.enable_truncation(context_length)
    tok.enable_padding(pad_id=eos, pad_token=CLIP_SPECIAL_TOKENS[1], length=context_length)
    return tok
