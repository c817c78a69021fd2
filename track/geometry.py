"""Line, zone and direction: the image-space geometry the counter and the belt tracker share.

All coordinates are pixels of the frame (x right, y down). A direction is where parts move on the image: a name
("right", "left", "down", "up") or a non-zero (dx, dy) vector; anything else is refused here, once, with a message
that names it, instead of silently counting nothing.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from cseg.errors import InvalidInputError

DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def unit_direction(direction, what: str = "direction") -> np.ndarray:
    """A unit float64 vector from a name in DIRECTIONS or a non-zero (dx, dy)."""
    if isinstance(direction, str):
        if direction not in DIRECTIONS:
            raise InvalidInputError(f"{what} {direction!r} is not a direction: use one of {sorted(DIRECTIONS)} or "
                                    "(dx, dy)")
        return np.array(DIRECTIONS[direction])
    try:
        values = tuple(direction)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(_is_number(v) for v in values) or math.hypot(*values) == 0:
        raise InvalidInputError(
            f"{what} {direction!r} is not a direction: use one of {sorted(DIRECTIONS)} or a non-zero (dx, dy)"
        )
    vector = np.array(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    return paired_ious(a[:, None], b[None, :])


def paired_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes (..., 4) paired by broadcasting: (n, 4) with (n, 4) -> (n,) for n chosen pairs, where box_ious
    would compute every pair."""
    low = np.maximum(a[..., :2], b[..., :2])
    high = np.minimum(a[..., 2:], b[..., 2:])
    overlap = np.maximum(high - low, 0.0)  # np.clip and np.prod: the same values, more overhead on small arrays
    inter = overlap[..., 0] * overlap[..., 1]
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def _points(values, count: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.size != 2 * count or not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} must be {count} points (x, y) of finite pixel coordinates, got {values!r}")
    return array.reshape(count, 2)


@dataclass(frozen=True)
class Line:
    """A counting line from (x1, y1) to (x2, y2); `direction` is the way a part must cross it to be counted.

    The line's normal is oriented along `direction`: signed distance < 0 is before the line, > 0 past it. A direction
    parallel to the line crosses nothing and is refused."""

    x1: float
    y1: float
    x2: float
    y2: float
    direction: object = "right"

    def __post_init__(self):
        start, end = _points((self.x1, self.y1, self.x2, self.y2), 2, "a line")
        length = float(np.linalg.norm(end - start))
        if length == 0:
            raise InvalidInputError(f"the line ({self.x1}, {self.y1}) -> ({self.x2}, {self.y2}) has zero length")
        along = (end - start) / length
        normal = np.array([-along[1], along[0]])
        moving = unit_direction(self.direction, "the line's direction")
        if abs(float(normal @ moving)) < 1e-6:
            raise InvalidInputError(
                f"direction {self.direction!r} is parallel to the line ({self.x1}, {self.y1}) -> ({self.x2}, "
                f"{self.y2}): no part moving that way ever crosses it"
            )
        normal = normal if normal @ moving > 0 else -normal
        object.__setattr__(self, "_start", start)
        object.__setattr__(self, "_along", along)
        object.__setattr__(self, "_normal", normal)
        for name, value in (("_x0", start[0]), ("_y0", start[1]), ("_nx", normal[0]), ("_ny", normal[1])):
            object.__setattr__(self, name, float(value))  # plain floats for `distance`
        object.__setattr__(self, "length", length)

    @classmethod
    def parse(cls, text: str, direction="right") -> "Line":
        """From "x1,y1,x2,y2" (the CLI's --line)."""
        try:
            values = [float(v) for v in str(text).split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise InvalidInputError(f"--line must be x1,y1,x2,y2 in pixels, got {text!r}")
        return cls(*values, direction=direction)

    @property
    def normal(self) -> np.ndarray:
        return self._normal

    def signed_distance(self, points) -> np.ndarray:
        """Distance of each (x, y) to the line's infinite extension, > 0 past it in the counted direction."""
        return (np.asarray(points, dtype=np.float64) - self._start) @ self._normal

    def distance(self, point) -> float:
        """signed_distance of one (x, y), in plain floats (the per-observation hot path of counter and judge)."""
        return (point[0] - self._x0) * self._nx + (point[1] - self._y0) * self._ny

    def along(self, points) -> np.ndarray:
        """Position of each point's projection along the segment: 0 at (x1, y1), `length` at (x2, y2)."""
        return (np.asarray(points, dtype=np.float64) - self._start) @ self._along

    def within(self, point, margin: float = 0.0) -> bool:
        """Whether `point` projects onto the segment (give or take `margin` pixels at the ends)."""
        t = float(self.along(point))
        return -margin <= t <= self.length + margin

    def to_json(self) -> dict:
        return {"line": [self.x1, self.y1, self.x2, self.y2], "normal": [round(float(v), 6) for v in self._normal]}


@dataclass(frozen=True)
class Zone:
    """A polygon zone (at least 3 points, non-zero area); a part is in it when its anchor is inside."""

    points: tuple

    def __post_init__(self):
        count = len(self.points) if hasattr(self.points, "__len__") else 0
        polygon = _points(self.points, max(count, 3), "a zone") if count >= 3 else None
        if polygon is None:
            raise InvalidInputError(f"a zone needs at least 3 points (x, y), got {self.points!r}")
        x, y = polygon[:, 0], polygon[:, 1]
        if abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1))) / 2 == 0:
            raise InvalidInputError(f"the zone {self.points!r} has zero area")
        object.__setattr__(self, "_polygon", polygon)

    def contains(self, point) -> bool:
        """Even-odd rule: a ray to +x crosses the boundary an odd number of times."""
        px, py = float(point[0]), float(point[1])
        inside = False
        polygon = self._polygon
        for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
            if (ay > py) != (by > py) and px < ax + (py - ay) * (bx - ax) / (by - ay):
                inside = not inside
        return inside
