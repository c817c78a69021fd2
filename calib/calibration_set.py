"""Calibration data as data: a folder with `calib.jsonl`, one line per sample.

    {"image": "images/line_0001.png", "prompt": "scratch on the lid", "demos": [["demo.png", [[x1, y1, x2, y2]]]],
     "mask": "masks/line_0001.png"}      (demos and mask optional; the mask is the ground truth, for the router,
                                          of its image's size)

Paths are relative to the folder and must stay inside it (no `..`, absolute paths or symlinks out).
`default_set(dir)` writes one from photographs that install with scikit-image (for tests and the demo); point `--calib DIR` at your own factory images for real deployments. The set's sha256
(over calib.jsonl and every file it names) goes into the bundle manifest, so a quantized bundle says what it was
calibrated on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cseg.errors import InvalidInputError
from cseg.files import inside, parse_json, read_text, regular_file
from cseg.images import image_size

INDEX = "calib.jsonl"
MAX_INDEX_BYTES = 64 << 20  # calib.jsonl: thousands of short lines at most
# (photograph, prompt): short prompts take the shortcut path, longer ones reason; both routes get calibrated.
DEFAULT_SAMPLES = [
    ("astronaut", "the astronaut's helmet"), ("coffee", "cup"), ("chelsea", "the cat lying on the floor"),
    ("rocket", "rocket"), ("motorcycle_left", "the motorcycle parked outside"), ("ihc", "stained cells"),
    ("retina", "blood vessels"), ("coffee", "the spoon on the saucer"),
]  # fmt: skip


@dataclass
class CalibrationItem:
    image: Path
    prompt: str
    demos: list = field(default_factory=list)
    mask: Path | None = None  # ground truth, when the set has it (the router's labels then use it)


@dataclass
class CalibrationSet:
    root: Path
    items: list[CalibrationItem]

    def sha256(self) -> str:
        digest = hashlib.sha256((self.root / INDEX).read_bytes())
        files = sorted({item.image for item in self.items} | {Path(d[0]) for item in self.items for d in item.demos})
        for path in files:
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def split(self, held_out: float = 0.25) -> tuple[list[CalibrationItem], list[CalibrationItem]]:
        """Calibration items and held-out items (the last quarter by default) for the accuracy gate."""
        count = max(1, round(len(self.items) * held_out)) if len(self.items) > 1 else 0
        return self.items[: len(self.items) - count], self.items[len(self.items) - count :]


@contextlib.contextmanager
def chosen(root: str | Path | None):
    """The calibration set in `root`, or (root None) the default photographs in a temporary folder removed on exit."""
    if root:
        yield load(root)
        return
    with tempfile.TemporaryDirectory(prefix="cseg-calib-") as folder:
        yield default_set(folder)


def load(root: str | Path) -> CalibrationSet:
    root = Path(root)
    index = root / INDEX
    if not index.is_file():
        raise InvalidInputError(f"calibration folder {root} has no {INDEX} (one JSON object per line)")
    items = []
    for number, line in enumerate(read_text(index, "calibration index", MAX_INDEX_BYTES).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index} line {number}"
        entry = parse_json(line, where)
        try:
            demos = [(str(_file(root, d[0], f"{where}: demo image")), d[1]) for d in entry.get("demos", [])]
            mask = _file(root, entry["mask"], f"{where}: mask") if entry.get("mask") else None
            item = CalibrationItem(_file(root, entry["image"], f"{where}: image"), entry["prompt"], demos, mask)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise InvalidInputError(f"{where} is not a calibration entry ({type(exc).__name__}: {exc})") from None
        if mask is not None:
            _check_mask(item, where)
        items.append(item)
    if not items:
        raise InvalidInputError(f"{index} lists no samples")
    return CalibrationSet(root, items)


def _file(root: Path, relative, what: str) -> Path:
    """A regular file inside the calibration folder (the set's sha256 reads every file it names: a FIFO would hang)."""
    return regular_file(inside(root, relative, what), what)


def _check_mask(item: CalibrationItem, where: str) -> None:
    """A ground-truth mask has its image's size (from both headers, before any work): the format has no resizing, and
    one resized to fit would label the router with a mask of some other picture."""
    image, mask = image_size(item.image, f"{where}: image"), image_size(item.mask, f"{where}: mask")
    if image != mask:
        raise InvalidInputError(f"{where}: the mask {item.mask} is {mask[0]}x{mask[1]} but its image {item.image} is "
                                f"{image[0]}x{image[1]} (width x height); a ground-truth mask must have its image's "
                                "size")  # fmt: skip


def default_set(root: str | Path) -> CalibrationSet:
    """Write the default calibration set (scikit-image photographs) into `root` and load it."""
    from cseg import samples

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, prompt in DEFAULT_SAMPLES:
        path = root / "images" / f"{name}.png"
        if not path.is_file():
            with Image.open(samples.resolve(f"sample:{name}")) as photo:
                photo.convert("RGB").save(path)
        lines.append(json.dumps({"image": f"images/{name}.png", "prompt": prompt}))
    (root / INDEX).write_text("\n".join(lines) + "\n")
    return load(root)
