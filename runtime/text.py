"""Tokenization in the runtime, with the `tokenizers` library on the bundle's tokenizer files (no transformers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from cseg import prompting
from cseg.bundle.schema import read_bundle_json
from cseg.errors import BundleError

IMAGE_PAD = "<|image_pad|>"


def _load(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception type for malformed files
        raise BundleError(f"tokenizer {path} cannot be read ({exc}); the bundle is corrupt, export it again") from None


class ChatTokenizer:
    """The VLM tokenizer: prompt text with image placeholders expanded, and decoding of the completion."""

    def __init__(self, path: Path):
        self.tokenizer = _load(path)  # the template's text: its control tokens are meant
        # The user's text: special tokens typed into it stay plain text (no injected turns or image slots). A second
        # tokenizer rather than toggling the flag per call, because requests run on several threads.
        self.plain = _load(path)
        self.plain.encode_special_tokens = True
        for tokenizer in (self.tokenizer, self.plain):
            tokenizer.no_padding()
            tokenizer.no_truncation()

    def encode_prompt(self, problem: str, tokens_per_image: list[int],
                      question: str = "") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Token ids of the chat prompt for `problem` (prompting.render_chat, image placeholders expanded) and the
        indices of the tokens of `question` (its first occurrence in `problem`)."""
        before, after = prompting.chat_frame(len(tokens_per_image))
        pieces = before.split(IMAGE_PAD)
        before = pieces[0] + "".join(IMAGE_PAD * n + piece for n, piece in zip(tokens_per_image, pieces[1:]))
        head = self.tokenizer.encode(before, add_special_tokens=False).ids
        body = self.plain.encode(problem, add_special_tokens=False)
        tail = self.tokenizer.encode(after, add_special_tokens=False).ids
        start = problem.find(question) if question else -1
        end = start + len(question)
        spans = np.array(body.offsets).reshape(-1, 2)
        inside = np.nonzero((spans[:, 1] > start) & (spans[:, 0] < end))[0] if start >= 0 else np.zeros(0, int)
        return np.array([head + body.ids + tail], dtype=np.int64), inside + len(head)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=True)


class Sam3Tokenizer:
    """SAM 3's CLIP tokenizer: every phrase becomes exactly `length` ids plus the attention mask (1 = token)."""

    def __init__(self, path: Path, config_path: Path | None, length: int):
        self.tokenizer = _load(path)
        config = read_bundle_json(config_path) if config_path else {}
        if not isinstance(config, dict):
            raise BundleError(f"SAM 3 tokenizer config {config_path} is not a JSON object")
        pad = config.get("pad_token") or "<|endoftext|>"
        pad_id = self.tokenizer.token_to_id(pad)
        if pad_id is None:
            raise BundleError(f"SAM 3 tokenizer {path} has no pad token {pad!r}")
        self.tokenizer.enable_truncation(length)
        self.tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token=pad)
        # Phrases are user text (the question) or generated text: <|startoftext|>/<|endoftext|> in them stay plain
        # text; the post-processor still adds the real ones around the phrase.
        self.tokenizer.encode_special_tokens = True

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.tokenizer.encode(text)
        return np.array([encoding.ids], np.int64), np.array([encoding.attention_mask], np.int64)
