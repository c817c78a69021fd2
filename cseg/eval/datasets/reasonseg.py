"""ReasonSeg / LISA: `<stem>.jpg` + `<stem>.json` with `text` (question or list) and `shapes` (polygons labelled
"target"; any other label is an ignored region). One sample per question (protocol "research": the first only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from cseg import images
from cseg.errors import InvalidInputError
from cseg.eval.datasets.common import Sample, broken, check_protocol, dataset_file, image_size, load_json
from cseg.images import IMAGE_SUFFIXES
from cseg.prompting import Layout


def read(root: Path, protocol: str = "default", **_) -> Iterator[Sample]:
    check_protocol(protocol)
    annotations = sorted(root.glob("*.json"))
    if not annotations:
        raise InvalidInputError(f"{root} holds no ReasonSeg annotation (.json beside each image)")
    for annotation in annotations:
        image = next((annotation.with_suffix(s) for s in IMAGE_SUFFIXES if annotation.with_suffix(s).is_file()), None)
        try:
            dataset_file(root, annotation, annotation.stem, "annotation")
            meta = load_json(annotation)
            texts = meta.get("text") if isinstance(meta, dict) else None
            texts = [texts] if isinstance(texts, str) else texts
            if image is None or not texts or not isinstance(texts, list):
                raise InvalidInputError(f"{annotation}: needs an image with the same name and a non-empty 'text'")
            dataset_file(root, image, annotation.stem, "image")
        except InvalidInputError as exc:
            yield broken(annotation.stem, "reasonseg", exc)
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
    meta = load_json(annotation)
    width, height = image_size(image, sample)
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
