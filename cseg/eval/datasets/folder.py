"""A plain folder: `images/<stem>.<ext>` + `masks/<stem>.png` (non-zero = foreground), prompts from `prompts.json`
({stem: prompt}) or one prompt for all."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from cseg.errors import InvalidInputError
from cseg.eval.datasets.common import Sample, binary_mask, dataset_file, image_size, load_json
from cseg.images import IMAGE_SUFFIXES


def read(root: Path, prompt: str | None = None, **_) -> Iterator[Sample]:
    images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InvalidInputError(f"{root}/images holds no images")
    prompts = load_json(root / "prompts.json") if (root / "prompts.json").is_file() else {}
    if not isinstance(prompts, dict):
        raise InvalidInputError(f"{root / 'prompts.json'} must map image stems to prompts")
    for image in images:
        text = prompts.get(image.stem, prompt)
        if not text:
            raise InvalidInputError(f"no prompt for {image.name}: add it to prompts.json or pass --prompt")
        mask = root / "masks" / f"{image.stem}.png"
        yield Sample(image.stem, str(image), text, lambda m=mask, i=image, s=image.stem: _folder_mask(root, m, i, s),
                     "folder")  # fmt: skip


def _folder_mask(root: Path, mask: Path, image: Path, sample: str):
    size = image_size(dataset_file(root, image, sample, "image"), sample)
    return binary_mask(dataset_file(root, mask, sample, "mask"), size, sample), None
