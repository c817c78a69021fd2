"""ConceptSeg-Benchmark: `all_meta.json` (or `data.json`) = {split: {class: [item, ...]}}, items with `img_path`
(list; the target last, references before it for MIG items), `mask_path`, `dataset_name`, `cls_name`, optional
`problem`, `ref_box` (fractions). Questions and tiers follow the research code's tables; protocol "research" draws the
research evaluation's reference episodes (mydataset.py), "default" one demonstration per sample from the train split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from cseg import images
from cseg.errors import InvalidInputError
from cseg.eval.datasets.common import (Sample, binary_mask, broken, check_protocol, dataset_file, group_of, image_size,
                                       load_json, mask_box, read_image, tier_of)  # fmt: skip
from cseg.prompting import Layout

RESEARCH_SEED = 42  # evaluate_conceptseg.py: random.seed(42) before the dataset draws its references

# Research code (open_r1/mydataset.py gen_problem_by_dataset): the question asked per benchmark dataset;
# "{cls_name}" datasets ask for the class name itself.
QUESTIONS = {
    "CoSOD3k1024": "Common object segmentation", "fewshot1000": "Common object segmentation",
    "Shadow_detection": "shadow", "transparent1024": "transparent", "COD10K1024": "camouflaged object segmentation",
    "DUTS": "salient object segmentation", "Breast_Tumor": "breast tumor segmentation",
    "isic2018": "skin melanocytic tumor segmentation", "Polyp": "polyp colon segmentation",
    "ESDIDefects": "industrial defect segmentation",
}  # fmt: skip


def _question(item: dict, research: bool) -> str:
    """mydataset.py gen_problem_by_dataset; the research code does not strip the class name's leading space."""
    name = item["dataset_name"]
    if "MIG" in name or name == "MGrounding":
        return item["problem"]
    if name in QUESTIONS:
        return QUESTIONS[name]
    question = item["cls_name"].replace(name, "").replace("_", " ")
    return question if research else question.strip()


@dataclass(frozen=True)
class ResearchEpisode:
    """The references of one research benchmark episode (mydataset.py build_meta_reference), made into the reference
    image and prompt layout when the sample is evaluated (`build`)."""

    references: tuple[str, ...]
    masks: tuple[str, ...] = ()  # drawn references: their masks, whose boxes are listed
    fractions: tuple | None = None  # MIG: ref_box as the item gives it (fractions of a tile), None when absent
    sample: str = ""

    def build(self) -> images.Episode:
        read = lambda path, mode: read_image(Path(path), self.sample, "reference", lambda o: o.convert(mode))  # noqa: E731
        if len(self.references) == 1:  # a 2-image episode: the reference alone at the VLM size, no boxes, no check
            reference = read(self.references[0], "RGB").resize((images.VLM_SIDE,) * 2, Image.Resampling.BILINEAR)
            return images.Episode(reference, Layout("cot", 1))
        canvas = images.mosaic([images.tile(read(path, "RGB")) for path in self.references])
        if self.fractions is not None:  # gen_ref_mig: scaled by the tile side, no tile offset
            boxes = [[b[0] * images.TILE_SIDE, b[1] * images.TILE_SIDE, b[2] * images.TILE_SIDE,
                      b[3] * images.TILE_SIDE] for b in self.fractions]  # fmt: skip
        else:  # gen_ref_nomig: each mask at tile size, its box offset into the mosaic
            boxes = []
            for i, path in enumerate(self.masks):
                box = research_box(np.asarray(images.tile(read(path, "L"))))
                x, y = images.tile_offset(i)
                boxes.append([box[0] + x, box[1] + y, box[2] + x, box[3] + y] if box else box)
        if not boxes:
            return images.Episode(canvas, Layout("cot", len(self.references)))
        images.draw_boxes(canvas, boxes[1:])  # boxes[0], the top-left one, is withheld for the model's check
        return images.Episode(canvas, Layout("cot", len(self.references), listed=boxes[1:]))


def research_box(mask: np.ndarray) -> list[int]:
    """mask2box_point.py process_mask: [x1, y1, x2, y2] of the non-zero pixels, edges inclusive; [] when none."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if xs.size else []


def read(root: Path, split: str | None = None, demos: int = 1, seed: int | None = None, protocol: str = "default",
         **_) -> Iterator[Sample]:  # fmt: skip
    check_protocol(protocol)
    research = protocol == "research"
    split = split or "test"
    meta_path = next((root / n for n in ("all_meta.json", "data.json") if (root / n).is_file()), None)
    if meta_path is None:
        raise InvalidInputError(f"{root} has neither all_meta.json nor data.json (ConceptSeg-Benchmark layout)")
    meta = load_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get(split), dict):
        found = ", ".join(meta) if isinstance(meta, dict) else type(meta).__name__
        raise InvalidInputError(f"{meta_path} has no split {split!r}; it has {found}")
    train_split = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    seed = (RESEARCH_SEED if research else 0) if seed is None else seed
    rng = random.Random(seed)
    runs: dict[str, random.Random] = {}  # research: one run per dataset, each drawing from its own seeded start
    for cls_name, items in meta[split].items():
        train = train_split.get(cls_name) if isinstance(train_split.get(cls_name), list) else []
        for index, item in enumerate(items if isinstance(items, list) else []):
            dataset = item.get("dataset_name", "?") if isinstance(item, dict) else "?"
            sample_id = f"{dataset}/{cls_name}/{index}"
            try:
                if research:
                    draws = runs.setdefault(str(dataset), random.Random(seed))
                    yield _research_sample(root, item, train, sample_id, draws)
                else:
                    yield _conceptseg_sample(root, item, train, sample_id, demos, rng)
            except InvalidInputError as exc:
                yield broken(sample_id, str(dataset), exc)


def _item_fields(root: Path, item, sample_id: str, research: bool):
    try:
        paths = [dataset_file(root, p, sample_id, "image") for p in item["img_path"]]
        question = _question(item, research)
        mask_path = dataset_file(root, item["mask_path"], sample_id, "mask")
        dataset = item["dataset_name"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"sample {sample_id}: the item lacks {exc}") from None
    if not paths:
        raise InvalidInputError(f"sample {sample_id}: img_path is empty")
    return paths, question, mask_path, dataset


def _research_sample(root: Path, item, train: list, sample_id: str, draws: random.Random) -> Sample:
    """mydataset.py get_cd_data + build_meta_reference: a single-image item gets 4 references drawn with replacement
    from its class's train split (1 when the class has exactly 2 train items), redrawn while a draw is the target."""
    paths, question, mask_path, dataset = _item_fields(root, item, sample_id, True)
    if len(paths) > 1:  # MIG: the item's own references; its ref_box lists the boxes
        fractions = item.get("ref_box")
        try:
            fractions = None if fractions is None else tuple(tuple(float(v) for v in box) for box in fractions)
        except (TypeError, ValueError):
            raise InvalidInputError(f"sample {sample_id}: ref_box must hold [x1, y1, x2, y2] fractions") from None
        episode = ResearchEpisode(tuple(map(str, paths[:-1])), fractions=fractions, sample=sample_id)
    else:
        if not any(_first_image(t) != item["img_path"][0] for t in train):
            raise InvalidInputError(f"sample {sample_id}: the train split has no other item of class "
                                    f"{item.get('cls_name')!r} to draw references from")  # fmt: skip
        refs = []
        for _ in range(1 if len(train) == 2 else 4):
            chosen = draws.choice(train)
            while _first_image(chosen) == item["img_path"][0]:
                chosen = draws.choice(train)
            try:
                refs.append((dataset_file(root, chosen["img_path"][0], sample_id, "train image"),
                             dataset_file(root, chosen["mask_path"], sample_id, "train mask")))  # fmt: skip
            except (KeyError, TypeError, IndexError) as exc:
                raise InvalidInputError(f"sample {sample_id}: a train item lacks {exc}") from None
        episode = ResearchEpisode(tuple(str(i) for i, _ in refs), tuple(str(m) for _, m in refs), sample=sample_id)
    return Sample(sample_id, str(paths[-1]), question, lambda: (binary_mask(mask_path, None, sample_id), None),
                  dataset, tier_of(dataset), episode, eval_size=(600, 600), protocol="research",
                  group=group_of(dataset))  # fmt: skip


def _conceptseg_sample(root: Path, item, train: list, sample_id: str, demos: int, rng: random.Random) -> Sample:
    paths, question, mask_path, dataset = _item_fields(root, item, sample_id, False)
    if len(paths) > 1:  # MIG: the references come with the item, boxes as fractions of the image
        fractions = item.get("ref_box") or []
        refs = [(str(p), _fraction_boxes(p, fractions[i:i + 1], sample_id)) for i, p in enumerate(paths[:-1])]
    else:
        candidates = [t for t in train if _first_image(t) != item["img_path"][0]]
        refs = []
        for chosen in rng.sample(candidates, min(demos, len(candidates))):
            try:
                image, mask = chosen["img_path"][0], chosen["mask_path"]
            except (KeyError, TypeError, IndexError) as exc:
                raise InvalidInputError(f"sample {sample_id}: a train item lacks {exc}") from None
            box = mask_box(dataset_file(root, mask, sample_id, "train mask"), sample_id)
            refs.append((str(dataset_file(root, image, sample_id, "train image")), [box] if box else []))
    target = paths[-1]
    return Sample(sample_id, str(target), question, lambda: (binary_mask(mask_path, None, sample_id), None),
                  dataset, tier_of(dataset), refs, eval_size=(600, 600), group=group_of(dataset))  # fmt: skip


def _first_image(item):
    try:
        return item["img_path"][0]
    except (KeyError, TypeError, IndexError):
        return None  # a broken train item: the sample that draws it as a demonstration reports it


def _fraction_boxes(path: Path, fractions, sample: str) -> list[list[float]]:
    width, height = image_size(path, sample)
    try:
        boxes = [[b[0] * width, b[1] * height, b[2] * width, b[3] * height] for b in fractions if len(b) == 4]
    except TypeError:
        raise InvalidInputError(f"sample {sample}: ref_box must hold [x1, y1, x2, y2] fractions") from None
    return boxes

