"""Rule reuse for inspection loops: reason once over the demonstrations, then apply the result to every frame with
SAM 3 alone.

A `Rule` keeps what a frame needs from the reasoning: the answer phrase with its SAM 3 text features, the concept
tokens, and the induced rule text for people. It is bound to the bundle that made it (a hash of the bundle's
files): concept tokens are only meaningful to the SAM 3 weights they were made for.
Saved as JSON + npz (no pickle); the JSON records the npz's sha256.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import cseg
from cseg.errors import BundleError, InvalidInputError

RULE_FORMAT = 1
_ARRAYS = ("concept_tokens", "text_features", "text_mask")


def bundle_id(manifest: dict) -> str:
    """A bundle's identity for rules: the sha256 over its model graphs' files, external weights included, as the
    verified `files` list records them (a router fitted later does not change what concept tokens mean)."""
    files, listing = manifest["files"], ""
    for key, graph in sorted(manifest["graphs"].items()):
        if key != "router":
            for path in (graph["file"], *graph.get("data_files", [])):
                listing += f"{key}:{files[path]}\n"
    return hashlib.sha256(listing.encode()).hexdigest()


@dataclass
class Rule:
    question: str
    answer: str
    rule: str
    think: str
    text: str
    concept_tokens: np.ndarray  # [1, Q, 256] float32
    text_features: np.ndarray  # [1, 32, 256] float32: SAM 3 text encoder on `answer`
    text_mask: np.ndarray  # [1, 32] int64
    bundle: str  # bundle_id() of the bundle that induced it
    token_ids: tuple[int, ...] = ()
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    def save(self, path: str | Path) -> Path:
        """Write `path` (JSON, given a .json suffix if it has none) and the arrays beside it as `<stem>.npz`."""
        path = Path(path)
        path = path if path.suffix == ".json" else path.with_suffix(".json")
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in _ARRAYS})
        arrays = path.with_suffix(".npz")
        arrays.write_bytes(buffer.getvalue())
        meta = {
            "format": RULE_FORMAT,
            "cseg_version": cseg.__version__,
            "created": self.created,
            "bundle": self.bundle,
            "question": self.question,
            "answer": self.answer,
            "rule": self.rule,
            "think": self.think,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "arrays": {"file": arrays.name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()},
        }
        path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Rule":
        path = Path(path)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"rule {path} cannot be read as JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != RULE_FORMAT:
            raise InvalidInputError(f"rule {path} is not a cseg rule file of format {RULE_FORMAT}")
        arrays = path.parent / meta["arrays"]["file"]
        try:
            blob = arrays.read_bytes()
        except OSError:
            raise InvalidInputError(f"rule {path}: its arrays file {arrays.name} is missing") from None
        if hashlib.sha256(blob).hexdigest() != meta["arrays"]["sha256"]:
            raise InvalidInputError(f"rule {path}: {arrays.name} does not match its sha256 (changed or corrupt)")
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            values = {name: data[name] for name in _ARRAYS}
        return cls(
            question=meta["question"], answer=meta["answer"], rule=meta["rule"], think=meta["think"],
            text=meta["text"], bundle=meta["bundle"], token_ids=tuple(meta["token_ids"]), created=meta["created"],
            **values,
        )  # fmt: skip

    def check_bundle(self, manifest: dict) -> None:
        if self.bundle != bundle_id(manifest):
            raise BundleError(
                "this rule was induced with another bundle (its concept tokens belong to other weights or graphs); "
                "induce it again with this bundle: Runtime.induce(demos, question)"
            )
