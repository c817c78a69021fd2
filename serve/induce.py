"""`cseg_induce` on the server: demonstrations + question -> a rule the server keeps and `cseg_apply` serves by id.

The tensors are cseg.serve.contract's (cseg_induce). The rule joins the server's rule table (the dict cseg_apply reads)
and, when the server has a --rules folder, is saved there first (so it survives a restart: `cseg serve --rules` loads
the folder at start). A rule id that exists already is replaced by the new rule, with its new version; cseg_apply
answers every request with the version it applied.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np

from cseg.errors import CsegError, InvalidInputError
from cseg.serve import contract

log = logging.getLogger("cseg.serve")
RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a file name in the rules folder, never a path
INDUCE_OPTIONS = ("max_new_tokens", "rule_id")


def check_rule_id(rule_id) -> str:
    if not isinstance(rule_id, str) or not RULE_ID.fullmatch(rule_id) or rule_id.endswith((".json", ".npz")):
        raise InvalidInputError(f"rule_id must be 1 to 128 letters, digits, '.', '_' or '-' (starting with a "
                                "letter or digit, no .json/.npz ending): it names the rule's files, "
                                f"got {rule_id!r}")  # fmt: skip
    return rule_id


class Inducer:
    """The per-request work of cseg_induce on one Runtime; adds each rule to `rules` ({id: (Rule, version)}, the
    table cseg_apply reads), saving it into `folder` first when there is one."""

    def __init__(self, runtime, rules: dict, folder=None):
        self.runtime, self.rules = runtime, rules
        self.folder = None if folder is None else Path(folder)
        self._lock = threading.Lock()  # one writer of the folder and the table at a time

    def induce(self, requests) -> list[dict]:
        return [self._answer(request) for request in requests]

    def _answer(self, request) -> dict:
        try:
            return self._induce(request)
        except CsegError as exc:
            return contract.placeholder_outputs(contract.error_payload(exc), contract.INDUCE_OUTPUTS, batched=False)
        except Exception as exc:  # a bug must not take the model down for the other requests: log it, answer it
            log.exception("induce request failed")
            error = contract.error_payload(CsegError(f"server error: {exc!r}"))
            return contract.placeholder_outputs(error, contract.INDUCE_OUTPUTS, batched=False)

    def _induce(self, request) -> dict:
        from cseg.serve.server import _json, _text

        options = _json(request["options"][0], "options")
        if not isinstance(options, dict) or not set(options) <= set(INDUCE_OPTIONS):
            raise InvalidInputError(f"induce options must be a JSON object with keys among {INDUCE_OPTIONS}")
        rule_id = options.get("rule_id")
        if rule_id is not None:
            check_rule_id(rule_id)
        question = _text(request["question"][0], "question", contract.MAX_PROMPT_BYTES)
        image = request["image"]
        if image.ndim != 3:
            raise InvalidInputError(f"image must be one HxWx3 uint8 image, got shape {image.shape}")
        demos = decode_demos(request["demo_images"], request["demo_sizes"], request["demo_boxes"],
                             request["demo_box_index"])  # fmt: skip
        rule = self.runtime.induce(demos, question, image=image, max_new_tokens=options.get("max_new_tokens"))
        if rule_id is None:
            from cseg.track.events import rule_identity

            rule_id = rule_identity(rule)[0]
        version, files = self._keep(rule_id, rule)
        return {
            "rule_id": np.array([rule_id.encode()], dtype=object),
            "rule_version": np.array([version.encode()], dtype=object),
            "rule_files": np.array(files, dtype=object),
            "error": np.array([b""], dtype=object),
        }

    def _keep(self, rule_id: str, rule) -> tuple[str, list[bytes]]:
        """Save the rule (into the folder, or a scratch one), add it to the table; its version and files' bytes."""
        from cseg.serve.server import rule_version

        with self._lock, tempfile.TemporaryDirectory(prefix="cseg-rule-") as scratch:
            written = rule.save(Path(scratch) / f"{rule_id}.json")
            files = [written.read_bytes(), written.with_suffix(".npz").read_bytes()]
            version = rule_version(written)
            if self.folder is not None:
                # the arrays first, then the JSON, each by rename: a reader (a restarting server) never sees a JSON
                # whose arrays are missing; the JSON records the arrays' sha256, so a mixed pair is refused on load
                for source in (written.with_suffix(".npz"), written):
                    staged = self.folder / f".{source.name}.tmp"
                    staged.write_bytes(source.read_bytes())
                    os.replace(staged, self.folder / source.name)
            self.rules[rule_id] = (rule, version)
        log.info("induced rule %s version %s (answer %r)", rule_id, version, rule.answer)
        return version, files


def decode_demos(images, sizes, boxes, owners) -> list:
    """The contract's demonstration tensors -> [(HxWx3 uint8 array, [[x1, y1, x2, y2], ...]), ...] for
    Runtime.induce (which checks the images and boxes as for a local call)."""
    count = len(images)
    if not 1 <= count <= contract.MAX_DEMOS:
        raise InvalidInputError(f"induce takes 1 to {contract.MAX_DEMOS} demonstrations, got {count}")
    if sizes.shape != (count, 2) or boxes.ndim != 2 or boxes.shape[1:] != (4,) or owners.shape != boxes.shape[:1]:
        raise InvalidInputError(f"demo_sizes must be [{count}, 2] and demo_boxes [B, 4] with demo_box_index [B], got "
                                f"{list(sizes.shape)}, {list(boxes.shape)}, {list(owners.shape)}")  # fmt: skip
    if not np.isin(owners, np.arange(-1, count)).all():
        raise InvalidInputError(f"demo_box_index must name a demonstration (0 to {count - 1}) or be -1 (padding)")
    demos = []
    for k, (blob, (height, width)) in enumerate(zip(images, sizes.tolist())):
        blob = bytes(blob)
        if not (height > 0 and width > 0) or len(blob) != height * width * 3:
            raise InvalidInputError(f"demo_images[{k}] has {len(blob)} bytes, not the {height}x{width}x3 of its size")
        pixels = np.frombuffer(blob, np.uint8).reshape(height, width, 3)
        demos.append((pixels, boxes[owners == k].astype(np.float64).tolist()))
    return demos


def bind(triton, inducer: Inducer, tensors, watch=lambda infer: infer) -> None:
    """Bind cseg_induce on a PyTriton `triton`: not batched (a generation per request; demonstrations differ in
    shape, so Triton could not group them anyway). `tensors(specs)` -> PyTriton Tensors, as for the other models;
    `watch(infer)` wraps the infer function (the server's idle tracking)."""
    from pytriton.model_config import ModelConfig

    triton.bind(model_name=contract.INDUCE, infer_func=watch(inducer.induce),
                inputs=tensors(contract.INPUTS[contract.INDUCE]),
                outputs=tensors(contract.INDUCE_OUTPUTS), config=ModelConfig(batching=False), strict=True)  # fmt: skip
