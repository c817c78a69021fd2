"""What every dataset reader shares: the Sample it yields, the tiers and Table 1 columns a dataset belongs to, and
the readers of a sample's files (each confined to the dataset folder; a problem is that sample's InvalidInputError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cseg.errors import InvalidInputError
from cseg.files import inside, read_json, regular_file

PROTOCOLS = ("default", "research")
MAX_JSON_BYTES = 256 << 20  # all_meta.json of the whole ConceptSeg-Benchmark is a few MB

# Research eval_conceptseg.sh: tiers of the benchmark datasets.
TIERS = {
    "CI": ("rare", "ultra_rare", "coco2014_Artifact", "coco2014_Living"),
    "CD": ("DUTS", "isic2018", "Breast_Tumor", "ESDIDefects", "COD10K1024", "Polyp", "transparent1024",
           "Shadow_detection"),
    "CR": ("MIG",),  # every MIG-Bench / MGrounding dataset
}  # fmt: skip
# The paper's Table 1 columns, as the project page's table names them (ntu-ai4x.github.io/ConceptSeg-R1, its
# source ConceptSeg-R1/index.html): CI: Diverse Classes, CD: Camouflage, CD: Saliency, CD: Med. Lesion,
# CR: Consistency, CR: Difference. The page does not list the datasets under each column; the CI and CD ones follow
# from the dataset names. Datasets with no column there (transparent1024, Shadow_detection, ESDIDefects) get none.
GROUPS = {
    "CI: Diverse Classes": ("rare", "ultra_rare", "coco2014_Artifact", "coco2014_Living"),
    "CD: Camouflage": ("COD10K1024",), "CD: Saliency": ("DUTS",),
    "CD: Med. Lesion": ("isic2018", "Breast_Tumor", "Polyp"),
}  # fmt: skip
# The CR columns split the MIG-Bench / MGrounding items by the task their dataset name gives (MIG-Bench's
# common-object and difference tasks); other CR items have no column.
CR_GROUPS = {"CR: Consistency": ("common", "consisten"), "CR: Difference": ("diff",)}


@dataclass
class Sample:
    id: str
    image: str
    prompt: str
    load_mask: Callable[[], tuple[np.ndarray, np.ndarray | None]]  # -> (ground truth bool, ignored bool or None)
    dataset: str
    tier: str = ""
    demos: list = field(default_factory=list)  # (image path, [[x1, y1, x2, y2], ...]) pairs
    eval_size: tuple[int, int] | None = None  # (height, width) both masks are compared at; None = the image's
    protocol: str = ""  # "research" when the sample follows the research evaluation scripts (see PROTOCOLS)
    group: str = ""  # the paper's Table 1 column the dataset belongs to (GROUPS), "" when none


def tier_of(dataset: str) -> str:
    for tier, names in TIERS.items():
        if dataset in names or (tier == "CR" and ("MIG" in dataset or dataset == "MGrounding")):
            return tier
    return ""


def group_of(dataset: str) -> str:
    if tier_of(dataset) == "CR":
        name = dataset.lower()
        return next((group for group, words in CR_GROUPS.items() if any(w in name for w in words)), "")
    return next((group for group, names in GROUPS.items() if dataset in names), "")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def load_json(path: Path):
    return read_json(path, "dataset file", MAX_JSON_BYTES)


def dataset_file(root: Path, relative: str | Path, sample: str, what: str) -> Path:
    """A regular file inside the dataset folder, or this sample's InvalidInputError."""
    relative = str(relative.relative_to(root)) if isinstance(relative, Path) else relative
    return regular_file(inside(root, relative, f"sample {sample}: {what}"), f"sample {sample}: {what}")


def read_image(path: Path, sample: str, what: str, read):
    """read(the opened PIL image); an unreadable file (or a decompression bomb) is this sample's InvalidInputError."""
    try:
        with Image.open(path) as opened:
            return read(opened)
    except (OSError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"sample {sample}: {what} {path} is not a readable image ({exc})") from None


def binary_mask(path: Path, size: tuple[int, int] | None, sample: str) -> np.ndarray:
    """Non-zero pixels of a mask image; `size` (width, height) must match when given."""
    mask = read_image(path, sample, "mask", lambda opened: opened.convert("L"))
    if size is not None and mask.size != size:
        raise InvalidInputError(f"sample {sample}: mask is {mask.size[0]}x{mask.size[1]}, image is {size[0]}x{size[1]}")
    return np.asarray(mask) > 127


def image_size(path: Path, sample: str) -> tuple[int, int]:
    return read_image(path, sample, "image", lambda opened: opened.size)


def mask_box(path: Path, sample: str) -> list[float]:
    mask = binary_mask(path, None, sample)
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if xs.size else []


def broken(sample_id: str, dataset: str, error: InvalidInputError, prompt: str = "") -> Sample:
    """A sample that could not be assembled: evaluating it records `error` (one sample, not the whole dataset)."""

    def fail():
        raise error

    return Sample(sample_id, "", prompt, fail, dataset, tier_of(dataset))
