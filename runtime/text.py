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


def _check_fits(tokenizer: Tokenizer, path: Path, rows: int, field: str) -> None:
    """Every id the tokenizer can produce must index the embedding it feeds: the sha256 check cannot see a tokenizer
    swapped for another model's with the manifest's hashes rewritten, but a vocabulary too large for the graph can
    be seen (ids past the table: an error in the graph, or garbage features)."""
    size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    if size > rows:
        raise BundleError(f"tokenizer {path} has token ids up to {size - 1}, but the embedding it feeds ({field}) has "
                          f"{rows} rows: the bundle's tokenizer and model do not belong together (another model's "
                          "tokenizer?); export the bundle again")  # fmt: skip


class ChatTokenizer:
    """The VLM tokenizer: prompt text with image placeholders expanded, and decoding of the completion."""

    def __init__(self, path: Path):
        self.path = path
        self.tokenizer = _load(path)  # the template's text: its control tokens are meant
        # The user's text: special tokens typed into it stay plain text (no injected turns or image slots). A second
        # tokenizer rather than toggling the flag per call, because requests run on several threads.
        self.plain = _load(path)
        self.plain.encode_special_tokens = True
        for tokenizer in (self.tokenizer, self.plain):
            tokenizer.no_padding()
            tokenizer.no_truncation()

    def check(self, manifest: dict) -> None:
        """The vocabulary fits the decoder's embedding and the special tokens the runtime places or stops at have the
        manifest's ids (BundleError naming the file and the mismatch)."""
        model, generation = manifest["model"], manifest["generation"]
        _check_fits(self.tokenizer, self.path, model["vocab_size"], "model.vocab_size")
        for token, field, expected in (
            (IMAGE_PAD, "model.image_token_id", model["image_token_id"]),
            ("<|im_end|>", "generation.im_end_token_id", generation.get("im_end_token_id")),
            ("<|vision_start|>", "model.vision_start_token_id", model.get("vision_start_token_id")),
            ("<|vision_end|>", "model.vision_end_token_id", model.get("vision_end_token_id")),
        ):  # fmt: skip
            got = self.tokenizer.token_to_id(token)
            if expected is not None and got != expected:
                raise BundleError(f"VLM tokenizer {self.path}: {token} is not {field} {expected} (it is {got}): the "
                                  "bundle's tokenizer and model do not belong together")  # fmt: skip
        stops = {f"generation.eos_token_ids[{i}]": t for i, t in enumerate(generation["eos_token_ids"])}
        stops["generation.pad_token_id"] = generation["pad_token_id"]
        for field, token in stops.items():
            if self.tokenizer.id_to_token(token) is None:
                raise BundleError(f"VLM tokenizer {self.path} has no token of id {token} ({field}): the bundle's "
                                  "tokenizer and model do not belong together")  # fmt: skip

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
        self.path = path
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

    def check(self, manifest: dict) -> None:
        """Against what the export recorded of SAM 3's text encoder (`model.sam3_text_tokens`; bundles from before it
        record nothing): the vocabulary fits its embedding, and a phrase is framed by its start and end tokens."""
        recorded = manifest["model"].get("sam3_text_tokens")
        if recorded is None:
            return
        _check_fits(self.tokenizer, self.path, recorded["vocab_size"], "model.sam3_text_tokens.vocab_size")
        ids, mask = self.encode("a")
        framed = (int(ids[0, 0]), int(ids[0, mask.sum() - 1]))
        expected = (recorded["bos_token_id"], recorded["eos_token_id"])
        if framed != expected:
            raise BundleError(f"SAM 3 tokenizer {self.path} frames a phrase with ids {framed[0]} ... {framed[1]}, but "
                              f"the text encoder was exported for {expected[0]} ... {expected[1]} "
                              "(model.sam3_text_tokens bos/eos_token_id): the bundle's tokenizer and model do not "
                              "belong together (the VLM's tokenizer in SAM 3's place?)")  # fmt: skip

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.tokenizer.encode(text)
        return np.array([encoding.ids], np.int64), np.array([encoding.attention_mask], np.int64)
