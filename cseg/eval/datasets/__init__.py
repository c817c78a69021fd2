"""Readers for the evaluation datasets: each yields `Sample`s (image, ground-truth mask, prompt, demonstrations).

Layouts:
- conceptseg: ConceptSeg-Benchmark. `all_meta.json` (or `data.json`) = {split: {class: [item, ...]}}, items with
  `img_path` (list; the target last, references before it for MIG items), `mask_path`, `dataset_name`, `cls_name`,
  optional `problem`, `ref_box` (fractions). Questions and tiers follow the research code's tables.
- reasonseg: ReasonSeg / LISA. `<stem>.jpg` + `<stem>.json` with `text` (question or list) and `shapes` (polygons
  labelled "target"; any other label is an ignored region). One sample per question.
- cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelIds.png`; one
  sample per image and each of the 19 evaluation classes (prompt = class name), void pixels ignored.
- folder: `images/<stem>.<ext>` + `masks/<stem>.png` (non-zero = foreground), prompts from `prompts.json`
  ({stem: prompt}) or one prompt for all.
A problem with one sample (missing or unreadable image, mask, label or reference, a bad polygon, a path that leaves
the dataset folder) is raised when that sample's mask is read, so an evaluation records it and goes on; a problem
with the dataset itself (no metadata, bad JSON) is raised at once. Every path a sample reads must resolve inside the
dataset folder (no `..`, absolute paths or symlinks out) and be a regular file.
"""

from __future__ import annotations

from pathlib import Path

from cseg.errors import InvalidInputError
from cseg.eval.datasets import cityscapes, conceptseg, folder, reasonseg
from cseg.eval.datasets.common import CR_GROUPS, GROUPS, PROTOCOLS, TIERS, Sample, group_of, tier_of
from cseg.eval.datasets.conceptseg import QUESTIONS, RESEARCH_SEED, ResearchEpisode, research_box

FORMATS = ("conceptseg", "reasonseg", "cityscapes", "folder")
_READERS = {"conceptseg": conceptseg.read, "reasonseg": reasonseg.read, "cityscapes": cityscapes.read,
            "folder": folder.read}  # fmt: skip

__all__ = ["CR_GROUPS", "FORMATS", "GROUPS", "PROTOCOLS", "QUESTIONS", "RESEARCH_SEED", "TIERS", "InvalidInputError",
           "ResearchEpisode", "Sample", "group_of", "read", "research_box", "tier_of"]


def read(fmt: str, root: str | Path, **options) -> list[Sample]:
    root = Path(root)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise InvalidInputError(f"dataset folder {root} does not exist")
    return list(_READERS[fmt](root, **options))
