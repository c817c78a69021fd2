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

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from cseg import images
from cseg.errors import InvalidInputError
from cseg.files import inside, read_json, regular_file
from cseg.images import IMAGE_SUFFIXES
from cseg.prompting import Layout

FORMATS = ("conceptseg", "reasonseg", "cityscapes", "folder")
PROTOCOLS = ("default", "research")
RESEARCH_SEED = 42  # evaluate_conceptseg.py: random.seed(42) before the dataset draws its references
MAX_JSON_BYTES = 256 << 20  # all_meta.json of the whole ConceptSeg-Benchmark is a few MB

# Research code (open_r1/mydataset.py gen_problem_by_dataset): the question asked per benchmark dataset;
# "{cls_name}" datasets ask for the class name itself.
QUESTIONS = {
    "CoSOD3k1024": "Common object segmentation", "fewshot1000": "Common object segmentation",
    "Shadow_detection": "shadow", "transparent1024": "transparent", "COD10K1024": "camouflaged object segmentation",
    "DUTS": "salient object segmentation", "Breast_Tumor": "breast tumor segmentation",
    "isic2018": "skin melanocytic tumor segmentation", "Polyp": "polyp colon segmentation",
    "ESDIDefects": "industrial defect segmentation",
}  # fmt: skip
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
# Cityscapes' 19 evaluation classes: labelId -> name.
CITYSCAPES_CLASSES = {
    7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole", 19: "traffic light",
    20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car",
    27: "truck", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle",
}  # fmt: skip


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


def read(fmt: str, root: str | Path, **options) -> list[Sample]:
    root = Path(root)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise InvalidInputError(f"dataset folder {root} does not exist")
    return list({"conceptseg": _conceptseg, "reasonseg": _reasonseg, "cityscapes": _cityscapes,
                 "folder": _folder}[fmt](root, **options))  # fmt: skip


def _load_json(path: Path):
    return read_json(path, "dataset file", MAX_JSON_BYTES)


def _file(root: Path, relative: str | Path, sample: str, what: str) -> Path:
    """A regular file inside the dataset folder, or this sample's InvalidInputError."""
    relative = str(relative.relative_to(root)) if isinstance(relative, Path) else relative
    return regular_file(inside(root, relative, f"sample {sample}: {what}"), f"sample {sample}: {what}")


def _read_image(path: Path, sample: str, what: str, read):
    """read(the opened PIL image); an unreadable file (or a decompression bomb) is this sample's InvalidInputError."""
    try:
        with Image.open(path) as opened:
            return read(opened)
    except (OSError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"sample {sample}: {what} {path} is not a readable image ({exc})") from None


def _binary_mask(path: Path, size: tuple[int, int] | None, sample: str) -> np.ndarray:
    """Non-zero pixels of a mask image; `size` (width, height) must match when given."""
    mask = _read_image(path, sample, "mask", lambda opened: opened.convert("L"))
    if size is not None and mask.size != size:
        raise InvalidInputError(f"sample {sample}: mask is {mask.size[0]}x{mask.size[1]}, image is {size[0]}x{size[1]}")
    return np.asarray(mask) > 127


def _image_size(path: Path, sample: str) -> tuple[int, int]:
    return _read_image(path, sample, "image", lambda opened: opened.size)


def _mask_box(path: Path, sample: str) -> list[float]:
    mask = _binary_mask(path, None, sample)
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if xs.size else []


def _broken(sample_id: str, dataset: str, error: InvalidInputError, prompt: str = "") -> Sample:
    """A sample that could not be assembled: evaluating it records `error` (one sample, not the whole dataset)."""

    def fail():
        raise error

    return Sample(sample_id, "", prompt, fail, dataset, tier_of(dataset))


# --- conceptseg --------------------------------------------------------------------------------------------------


def _question(item: dict, research: bool) -> str:
    """mydataset.py gen_problem_by_dataset; the research code does not strip the class name's leading space."""
    name = item["dataset_name"]
    if "MIG" in name or name == "MGrounding":
        return item["problem"]
    if name in QUESTIONS:
        return QUESTIONS[name]
    question = item["cls_name"].replace(name, "").replace("_", " ")
    return question if research else question.strip()


def _is_mig(dataset: str) -> bool:
    return "MIG" in dataset or dataset == "MGrounding"


@dataclass(frozen=True)
class ResearchEpisode:
    """The references of one research benchmark episode (mydataset.py build_meta_reference), made into the reference
    image and prompt layout when the sample is evaluated (`build`)."""

    references: tuple[str, ...]
    masks: tuple[str, ...] = ()  # drawn references: their masks, whose boxes are listed
    fractions: tuple | None = None  # MIG: ref_box as the item gives it (fractions of a tile), None when absent
    sample: str = ""

    def build(self) -> images.Episode:
        read = lambda path, mode: _read_image(Path(path), self.sample, "reference", lambda o: o.convert(mode))  # noqa: E731
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


def _conceptseg(root: Path, split: str | None = None, demos: int = 1, seed: int | None = None, protocol: str = "default",
                **_) -> Iterator[Sample]:  # fmt: skip
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    research = protocol == "research"
    split = split or "test"
    meta_path = next((root / n for n in ("all_meta.json", "data.json") if (root / n).is_file()), None)
    if meta_path is None:
        raise InvalidInputError(f"{root} has neither all_meta.json nor data.json (ConceptSeg-Benchmark layout)")
    meta = _load_json(meta_path)
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
                yield _broken(sample_id, str(dataset), exc)


def _item_fields(root: Path, item, sample_id: str, research: bool):
    try:
        paths = [_file(root, p, sample_id, "image") for p in item["img_path"]]
        question = _question(item, research)
        mask_path = _file(root, item["mask_path"], sample_id, "mask")
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
                refs.append((_file(root, chosen["img_path"][0], sample_id, "train image"),
                             _file(root, chosen["mask_path"], sample_id, "train mask")))  # fmt: skip
            except (KeyError, TypeError, IndexError) as exc:
                raise InvalidInputError(f"sample {sample_id}: a train item lacks {exc}") from None
        episode = ResearchEpisode(tuple(str(i) for i, _ in refs), tuple(str(m) for _, m in refs), sample=sample_id)
    return Sample(sample_id, str(paths[-1]), question, lambda: (_binary_mask(mask_path, None, sample_id), None),
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
            box = _mask_box(_file(root, mask, sample_id, "train mask"), sample_id)
            refs.append((str(_file(root, image, sample_id, "train image")), [box] if box else []))
    target = paths[-1]
    return Sample(sample_id, str(target), question, lambda: (_binary_mask(mask_path, None, sample_id), None),
                  dataset, tier_of(dataset), refs, eval_size=(600, 600), group=group_of(dataset))  # fmt: skip


def _first_image(item):
    try:
        return item["img_path"][0]
    except (KeyError, TypeError, IndexError):
        return None  # a broken train item: the sample that draws it as a demonstration reports it


def _fraction_boxes(path: Path, fractions, sample: str) -> list[list[float]]:
    width, height = _image_size(path, sample)
    try:
        boxes = [[b[0] * width, b[1] * height, b[2] * width, b[3] * height] for b in fractions if len(b) == 4]
    except TypeError:
        raise InvalidInputError(f"sample {sample}: ref_box must hold [x1, y1, x2, y2] fractions") from None
    return boxes


# --- reasonseg -----------------------------------------------------------------------------------------------------


def _reasonseg(root: Path, protocol: str = "default", **_) -> Iterator[Sample]:
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    annotations = sorted(root.glob("*.json"))
    if not annotations:
        raise InvalidInputError(f"{root} holds no ReasonSeg annotation (.json beside each image)")
    for annotation in annotations:
        image = next((annotation.with_suffix(s) for s in IMAGE_SUFFIXES if annotation.with_suffix(s).is_file()), None)
        try:
            _file(root, annotation, annotation.stem, "annotation")
            meta = _load_json(annotation)
            texts = meta.get("text") if isinstance(meta, dict) else None
            texts = [texts] if isinstance(texts, str) else texts
            if image is None or not texts or not isinstance(texts, list):
                raise InvalidInputError(f"{annotation}: needs an image with the same name and a non-empty 'text'")
            _file(root, image, annotation.stem, "image")
        except InvalidInputError as exc:
            yield _broken(annotation.stem, "reasonseg", exc)
            continue
        if protocol == "research":  # the published val / test splits ask one question per image: the first
            yield Sample(f"{annotation.stem}#0", str(image), texts[0], lambda a=annotation, i=image: _polygons(a, i, a.stem),
                         "reasonseg", demos=images.Episode(None, Layout("reasonseg_cot")), protocol="research")  # fmt: skip
            continue
        for k, text in enumerate(texts):
            sample_id = f"{annotation.stem}#{k}"
            yield Sample(sample_id, str(image), text, lambda a=annotation, i=image, s=sample_id: _polygons(a, i, s),
                         "reasonseg")  # fmt: skip


def _polygons(annotation: Path, image: Path, sample: str):
    """LISA's get_mask_from_json (reproduced in evaluate_conceptseg.py): "flag" shapes skipped, labels containing
    "ignore" mark ignored pixels and every other label the target, larger polygons drawn first so smaller ones lie
    on top; each polygon filled with its outline on int32-truncated vertices (cv2.fillPoly + polylines there, PIL's
    polygon with outline here)."""
    meta = _load_json(annotation)
    width, height = _image_size(image, sample)
    shapes = meta.get("shapes", []) if isinstance(meta, dict) else None
    if not isinstance(shapes, list) or not all(isinstance(shape, dict) for shape in shapes):
        raise InvalidInputError(f"sample {sample}: 'shapes' must be a list of objects")
    polygons = []
    for shape in shapes:
        label = str(shape.get("label", ""))
        if label.lower() == "flag":
            continue
        points = [(int(x), int(y)) for x, y in _points(shape.get("points", []), sample)]  # np.int32 truncates
        alone = Image.new("L", (width, height))
        ImageDraw.Draw(alone).polygon(points, fill=1, outline=1)
        polygons.append((int(np.asarray(alone).sum()), 255 if "ignore" in label.lower() else 1, points))
    labels = Image.new("L", (width, height))
    draw = ImageDraw.Draw(labels)
    for index in np.argsort([area for area, _, _ in polygons])[::-1]:  # the research's order, ties included
        _, value, points = polygons[index]
        draw.polygon(points, fill=value, outline=value)
    labels = np.asarray(labels)
    ignore = labels == 255
    return labels == 1, ignore if ignore.any() else None


def _points(points, sample: str) -> list[tuple[float, float]]:
    try:
        pairs = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        raise InvalidInputError(f"sample {sample}: a polygon point is not an [x, y] pair of numbers") from None
    if not all(math.isfinite(v) for pair in pairs for v in pair):
        raise InvalidInputError(f"sample {sample}: a polygon point is not finite")
    if len(pairs) < 3:
        raise InvalidInputError(f"sample {sample}: a polygon has fewer than 3 points")
    return pairs


# --- cityscapes ------------------------------------------------------------------------------------------------------


def _cityscapes(root: Path, split: str | None = None, **_) -> Iterator[Sample]:
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
    ids = _read_image(_file(root, labels, sample, "label image"), sample, "label image", np.asarray)
    if ids.shape[::-1] != _image_size(_file(root, image, sample, "image"), sample):
        raise InvalidInputError(f"sample {sample}: labels are {ids.shape[1]}x{ids.shape[0]}, image differs")
    return ids == label_id, ~np.isin(ids, list(CITYSCAPES_CLASSES))


# --- folder ----------------------------------------------------------------------------------------------------------


def _folder(root: Path, prompt: str | None = None, **_) -> Iterator[Sample]:
    images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InvalidInputError(f"{root}/images holds no images")
    prompts = _load_json(root / "prompts.json") if (root / "prompts.json").is_file() else {}
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
    size = _image_size(_file(root, image, sample, "image"), sample)
    return _binary_mask(_file(root, mask, sample, "mask"), size, sample), None
