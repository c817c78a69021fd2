"""Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelIds.png`; one
sample per image and each of the 19 evaluation classes (prompt = class name), void pixels ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from cseg.errors import InvalidInputError
from cseg.eval.datasets.common import Sample, dataset_file, image_size, read_image

# Cityscapes' 19 evaluation classes: labelId -> name.
CITYSCAPES_CLASSES = {
    7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole", 19: "traffic light",
    20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car",
    27: "truck", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle",
}  # fmt: skip



def read(root: Path, split: str | None = None, **_) -> Iterator[Sample]:
    split = split or "val"
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise InvalidInputError(f"{root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png: no images found")
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        labels = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        for label_id, name in CITYSCAPES_CLASSES.items():
            sample_id = f"{stem}/{name}"
            read = lambda l=labels, c=label_id, i=image, s=sample_id: _label_mask(root, l, c, i, s)  # noqa: E731
            yield Sample(sample_id, str(image), name, read, name)


def _label_mask(root: Path, labels: Path, label_id: int, image: Path, sample: str):
    ids = read_image(dataset_file(root, labels, sample, "label image"), sample, "label image", np.asarray)
    if ids.shape[::-1] != image_size(dataset_file(root, image, sample, "image"), sample):
        raise InvalidInputError(f"sample {sample}: labels are {ids.shape[1]}x{ids.shape[0]}, image differs")
    return ids == label_id, ~np.isin(ids, list(CITYSCAPES_CLASSES))
