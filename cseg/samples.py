"""Real photographs that install offline with scikit-image, addressable as `sample:NAME` wherever a path is taken."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cseg.errors import InvalidInputError

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "retina", "ihc")
PREFIX = "sample:"


def resolve(path: str) -> str:
    """`sample:coffee` -> the file scikit-image ships; any other string is returned unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX) :]
    if name not in SAMPLES:
        raise InvalidInputError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    try:
        folder = resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise InvalidInputError("sample images need scikit-image: pip install scikit-image") from None
    for suffix in (".png", ".jpg"):
        candidate = Path(str(folder / f"{name}{suffix}"))
        if candidate.is_file():
            return str(candidate)
    raise InvalidInputError(f"scikit-image does not ship {name!r} in this version")
