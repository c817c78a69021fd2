"""Rule reuse for inspection loops: reason once over the demonstrations, then apply the result to every frame with
SAM 3 alone.

A `Rule` keeps what a frame needs from the reasoning: the answer phrase with its SAM 3 text features, the concept
tokens, and the induced rule text for people. Concept tokens and text features are only meaningful to the SAM 3
weights they were made for, so a rule is bound to those weights (the SAM 3 weights id a bundle's manifest records),
not to one bundle: induced on a full bundle of any target or precision, it applies on every bundle exported from
the same SAM 3 weights, rule-only bundles (an 8 GB Jetson per camera) included, and is refused on any other.
It also records its number of concept tokens Q and their dtype, checked against the applying bundle's decoder: a
rule-only bundle takes any Q from 1 to 32 (its decoder's concept axis), a full bundle 1 to its own ConceptSeg-R1's Q.
Rules of format 1 (before portable rules) and rules from bundles without a weights id stay bound to the one bundle
that induced them (a hash of its graph files).
Saved as JSON + npz (no pickle); the JSON records the npz's sha256. Loading checks everything a hand-edited or
hostile file could get wrong before any array reaches a graph.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import cseg
from cseg.bundle.schema import rule_only
from cseg.errors import BundleError, InvalidInputError
from cseg.files import parse_json, read_bytes

RULE_FORMAT = 2  # 2: bound to the SAM 3 weights (sam3_weights, num_queries, concept_dtype); 1: to one bundle
MAX_RULE_BYTES = 4 << 20  # the JSON: the texts of one completion (max_length tokens at most) and its token ids
MAX_ARRAYS_BYTES = 16 << 20  # the npz, uncompressed: [1, Q, 256] and [1, 32, 256] floats are kilobytes
# The arrays and their dtype and rank; their shapes are checked against the bundle's sam3_decoder inputs at apply.
_ARRAYS = {"concept_tokens": ("float32", 3), "text_features": ("float32", 3), "text_mask": ("int64", 2)}
_TEXTS = ("bundle", "question", "answer", "rule", "think", "text", "created")
# The largest finite float16: a GPU target's fp16 engines turn anything beyond it into inf, and no concept head or
# text encoder produces such values (they are LayerNorm'd activations), so a larger one is a corrupt or hostile rule.
FP16_MAX = 65504.0


def rule_path(path) -> Path:
    """The JSON file of a rule: `path` when it ends in .json, else `path` + ".json". save() and load() agree, and the
    arrays take the same name with .npz, so saving "x.txt" cannot overwrite an unrelated "x.npz"."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise InvalidInputError(f"a rule path must be a str or a path, got {type(path).__name__}")
    path = Path(path)
    return path if path.suffix == ".json" else path.with_name(path.name + ".json")


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
    sam3_weights: str | None = None  # the SAM 3 weights id of that bundle; None: bound to that bundle alone
    token_ids: tuple[int, ...] = ()
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    def save(self, path: str | Path) -> Path:
        """Write the rule's JSON (see rule_path) and its arrays beside it as `<name>.npz`; returns the JSON path."""
        path = rule_path(path)
        arrays = path.with_suffix(".npz")
        text, blob = self.to_bytes(arrays.name)
        arrays.write_bytes(blob)
        path.write_bytes(text)
        return path

    def to_bytes(self, arrays_name: str = "rule.npz") -> tuple[bytes, bytes]:
        """The rule's JSON (naming its arrays file `arrays_name`) and its npz: what save() writes and a rule message
        on MQTT carries (cseg.runtime.rule_feed)."""
        _check_arrays(self._arrays(), "rule")
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        meta = {
            "format": RULE_FORMAT,
            "cseg_version": cseg.__version__,
            "created": self.created,
            "bundle": self.bundle,
            "sam3_weights": self.sam3_weights,
            "num_queries": int(self.concept_tokens.shape[1]),
            "concept_dtype": self.concept_tokens.dtype.name,
            "question": self.question,
            "answer": self.answer,
            "rule": self.rule,
            "think": self.think,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "arrays": {"file": arrays_name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()},
        }
        return (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode("utf-8"), buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "Rule":
        """Read a rule written by save() (same path); anything malformed is refused with InvalidInputError."""
        return cls.from_bytes(*rule_files(path), where=f"rule {rule_path(path)}")

    @classmethod
    def from_bytes(cls, text: bytes, blob: bytes, where: str = "rule") -> "Rule":
        """A rule from its JSON and npz bytes (to_bytes, or a rule file's and its arrays'), checked as load() checks
        a file: `where` names the source in the errors."""
        if len(text) > MAX_RULE_BYTES or len(blob) > MAX_ARRAYS_BYTES:
            raise InvalidInputError(f"{where} is larger than the {MAX_RULE_BYTES} + {MAX_ARRAYS_BYTES} bytes allowed")
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{where} is not UTF-8 text: {exc}") from None
        meta = parse_json(decoded, where)
        _check_meta(meta, where)
        if hashlib.sha256(blob).hexdigest() != meta["arrays"]["sha256"]:
            raise InvalidInputError(f"{where}: {meta['arrays']['file']} does not match its sha256 (changed or corrupt)")
        values = _read_arrays(blob, f"{where}: {meta['arrays']['file']}")
        _check_arrays(values, where)
        concept = values["concept_tokens"]
        if meta["format"] >= 2 and [meta["num_queries"], meta["concept_dtype"]] != [concept.shape[1], concept.dtype.name]:
            raise InvalidInputError(f"{where} says {meta['num_queries']} concept tokens of {meta['concept_dtype']}, "
                                    f"its arrays hold {concept.shape[1]} of {concept.dtype}")  # fmt: skip
        return cls(
            question=meta["question"], answer=meta["answer"], rule=meta["rule"], think=meta["think"],
            text=meta["text"], bundle=meta["bundle"], sam3_weights=meta.get("sam3_weights"),
            token_ids=tuple(meta["token_ids"]), created=meta["created"], **values,
        )  # fmt: skip

    def check_bundle(self, manifest: dict) -> None:
        """Refuse (BundleError) a rule made for other SAM 3 weights, or whose arrays this bundle's model cannot take."""
        weights = manifest["source"]["sam3"].get("weights")
        if self.sam3_weights is None:  # a format-1 rule, or one induced on a bundle without a weights id
            if self.bundle != bundle_id(manifest):
                raise BundleError(
                    "this rule is bound to the bundle that induced it (it records no SAM 3 weights id: a rule file "
                    "from before portable rules, or from a bundle exported before them) and this is another bundle; "
                    "induce it again on a full bundle exported by this cseg, whose rules apply on every bundle of the "
                    "same SAM 3 weights: Runtime.induce(demos, question) or cseg induce"
                )
        elif self.sam3_weights != weights:
            have = f"SAM 3 weights {weights[:16]}" if weights else "no SAM 3 weights id (exported before portable rules)"
            raise BundleError(
                f"this rule was induced for SAM 3 weights {self.sam3_weights[:16]}, but this bundle holds {have} "
                f"(from {manifest['source']['sam3']['path']}): its concept tokens mean nothing to other weights. Apply "
                "it on a bundle exported from the same SAM 3 checkpoint, or induce it again on a full bundle of "
                "these weights"
            )
        arrays = self._arrays()
        _check_arrays(arrays, "rule")  # a Rule can also be built by hand
        decoder = manifest["graphs"]["sam3_decoder"]
        declared = {t["name"]: t for t in decoder["inputs"]}
        queries, (low, high) = self.concept_tokens.shape[1], concept_bounds(manifest)
        if not max(low, 1) <= queries <= high:  # a rule has at least one concept token; 0 is the shortcut path
            raise InvalidInputError(
                f"rule: {queries} concept tokens; this bundle's model takes {max(low, 1)} to {high}"
                + (f" (export the rule-only bundle with --queries {queries})" if rule_only(manifest) else
                   " (the Q of its ConceptSeg-R1)")  # fmt: skip
            )
        for name, value in arrays.items():
            if name not in declared:  # an exporter may prune an input the graph does not use; it is not fed then
                continue
            if value.dtype.name != declared[name]["dtype"]:
                raise BundleError(f"rule: {name} is {value.dtype}; this bundle's sam3_decoder takes "
                                  f"{declared[name]['dtype']}")  # fmt: skip
            # the one dynamic axis of these inputs is the number of concept tokens: the rule's Q
            want = [queries if isinstance(d, str) else d for d in declared[name]["shape"]]
            if list(value.shape) != want:
                raise InvalidInputError(f"rule: {name} has shape {list(value.shape)}; this bundle's model takes {want}")

    def _arrays(self) -> dict:
        return {name: getattr(self, name) for name in _ARRAYS}


def rule_files(path) -> tuple[bytes, bytes]:
    """The bytes of a rule file and of its arrays file beside it (Rule.from_bytes checks them)."""
    path = rule_path(path)
    text = read_bytes(path, "rule", MAX_RULE_BYTES)
    try:
        meta = parse_json(text.decode("utf-8"), f"rule {path}")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"rule {path} is not UTF-8 text: {exc}") from None
    _check_meta(meta, f"rule {path}")  # before its arrays file is looked for: a wrong file says so first
    name = meta["arrays"]["file"]
    if Path(name).name != name or name in ("", ".", ".."):  # the arrays live beside the rule, nowhere else
        raise InvalidInputError(f"rule {path}: its arrays file {name!r} must be a file name beside the rule")
    return text, read_bytes(path.parent / name, f"rule {path}: its arrays file", MAX_ARRAYS_BYTES)


def concept_bounds(manifest: dict) -> tuple[int, int]:
    """How many concept tokens the bundle's sam3_decoder takes (its manifest's axis bounds, which TensorRT's profile
    follows): 0..Q on a full bundle, 0..32 (or Q, if more) on a rule-only one, whatever model induces its rules."""
    queries = manifest["model"]["num_queries"]
    low, high = manifest["graphs"]["sam3_decoder"].get("axis_bounds", {}).get("concepts", (0, queries))
    return int(low), int(high)


def _check_meta(meta, where: str) -> None:
    if not isinstance(meta, dict) or type(meta.get("format")) is not int or meta["format"] not in (1, RULE_FORMAT):
        raise InvalidInputError(f"{where} is not a cseg rule file of format 1 or {RULE_FORMAT}")
    for key in _TEXTS:
        if not isinstance(meta.get(key), str):
            raise InvalidInputError(f"{where}: {key!r} is missing or not a string")
    if meta["format"] >= 2:
        weights = meta.get("sam3_weights")
        if not (weights is None or isinstance(weights, str) and re.fullmatch("[0-9a-f]{64}", weights)):
            raise InvalidInputError(f"{where}: 'sam3_weights' must be a sha256 (hex) or null")
        if type(meta.get("num_queries")) is not int or not isinstance(meta.get("concept_dtype"), str):
            raise InvalidInputError(f"{where}: 'num_queries' (integer) or 'concept_dtype' (string) is missing")
    ids = meta.get("token_ids")
    if not isinstance(ids, list) or not all(type(i) is int and i >= 0 for i in ids):
        raise InvalidInputError(f"{where}: 'token_ids' must be a list of non-negative integers")
    arrays = meta.get("arrays")
    if not (isinstance(arrays, dict) and isinstance(arrays.get("file"), str) and isinstance(arrays.get("sha256"), str)):
        raise InvalidInputError(f"{where}: 'arrays' must name its npz file and sha256")


# numpy reads an .npy header with ast.literal_eval, and CPython 3.11's AST construction keeps its recursion depth in
# state shared by the threads (gh-106905): seen here once as "SystemError: AST constructor recursion depth mismatch
# (before=57, after=56)" with 10 RuleFeeds of one process decoding the same MQTT message at once (tests/test_rule_feed
# .py), a good rule reported corrupt. A rule's arrays are a few kB: one decode at a time costs nothing.
_NPY_LOCK = threading.Lock()


def _read_arrays(blob: bytes, where: str) -> dict[str, np.ndarray]:
    """The npz's arrays, after checking the members' declared sizes, dtypes and shapes: np.load allocates what a
    header declares before reading, so a small file could otherwise ask for gigabytes."""
    with _NPY_LOCK:
        return _read_npz(blob, where)


def _read_npz(blob: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = {info.filename: info for info in archive.infolist()}
            expected = sorted(f"{name}.npy" for name in _ARRAYS)
            if sorted(members) != expected:
                raise InvalidInputError(f"{where} holds {sorted(members)}, expected {expected}")
            if sum(info.file_size for info in members.values()) > MAX_ARRAYS_BYTES:
                raise InvalidInputError(f"{where} declares more than {MAX_ARRAYS_BYTES} bytes of arrays")
            values = {}
            for name, (dtype, ndim) in _ARRAYS.items():
                info = members[f"{name}.npy"]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in _NPY_HEADERS:
                        raise InvalidInputError(f"{where}: {name} has npy format {version}, expected 1.0 or 2.0")
                    shape, _, declared = _NPY_HEADERS[version](member)
                    if declared != np.dtype(dtype) or len(shape) != ndim:
                        raise InvalidInputError(
                            f"{where}: {name} is {declared} {list(shape)}, expected {dtype} with {ndim} axes"
                        )
                    if math.prod(shape) * declared.itemsize > info.file_size:
                        raise InvalidInputError(f"{where}: {name} declares {list(shape)}, more than its data holds")
                with archive.open(info) as member:  # read_array reads the header again
                    values[name] = np.lib.format.read_array(member, allow_pickle=False)
            return values
    except InvalidInputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{where} cannot be read as npz: {exc}") from None


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_arrays(values: dict, where: str) -> None:
    """dtype, rank, batch 1, agreeing sizes, finite features within fp16's range, a 0/1 text mask that starts with a
    token."""
    for name, (dtype, ndim) in _ARRAYS.items():
        value = values[name]
        if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim or value.shape[0] != 1:
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
            raise InvalidInputError(f"{where}: {name} is {got}, expected {dtype} with {ndim} axes and batch 1")
    concept, features, mask = (values[name] for name in _ARRAYS)
    if concept.shape[2] != features.shape[2] or mask.shape[1] != features.shape[1]:
        raise InvalidInputError(f"{where}: concept_tokens {list(concept.shape)}, text_features "
                                f"{list(features.shape)} and text_mask {list(mask.shape)} disagree")  # fmt: skip
    for name, value in (("concept_tokens", concept), ("text_features", features)):
        if not np.isfinite(value).all():
            raise InvalidInputError(f"{where}: {name} holds NaN or infinite values")
        largest = float(np.abs(value).max(initial=0.0))
        if largest > FP16_MAX:
            raise InvalidInputError(f"{where}: {name} holds {largest:g}, beyond {FP16_MAX:g} (the largest value "
                                    "the bundle's fp16 engines hold; no concept head produces it): a corrupt rule")
    if mask.size == 0 or mask[0, 0] != 1 or not np.isin(mask, (0, 1)).all():
        raise InvalidInputError(f"{where}: text_mask must hold 0/1 with the first token 1")
