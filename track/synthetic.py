"""A synthetic conveyor: seeded, numpy only, no weights. Detections go straight into the tracker (cseg's models are
random-initialised in tests; this exercises tracking and counting, not segmentation).

Parts are random polygons moving right at belt speed (with jitter), in one or more lanes, separated by random gaps
(some touching their neighbour). An optional bar hides each part for about `occluder_frames` frames. The detector is
modelled by its failures: misses, false positives, box jitter, score noise, and a per-frame defect verdict that is
wrong with probability `defect_flip`. Every detection keeps its ground-truth part id (`Detections.origin`, -1 for
a false positive) so a benchmark can score identities and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cseg.errors import InvalidInputError
from cseg.segmentation import Instances, Segmentation
from cseg.track.detections import Detections
from cseg.track.geometry import Line


@dataclass(frozen=True)
class ConveyorSpec:
    ratio: float = 0.5  # displacement per frame / part length
    parts: int = 30
    width: int = 640
    height: int = 240
    part_length: float = 60.0  # along the belt (x)
    part_width: float = 40.0  # across the belt (y)
    lanes: int = 1
    gap: tuple[float, float] = (0.3, 1.5)  # gap to the part ahead, in part lengths (uniform)
    touching: float = 0.1  # probability that a part touches the one ahead (gap 0)
    speed_jitter: float = 0.03  # relative spread of the belt's displacement per frame
    slip: float = 0.02  # per-part position noise, in part lengths (parts shift a little on a belt)
    fps: float = 1.0
    occluder_frames: int = 0  # the bar hides each part for about this many frames (0: no bar)
    occluder_at: float = 0.3  # the bar's center, as a fraction of the width
    miss: float = 0.0
    false_positives: float = 0.0  # mean number per frame
    box_jitter: float = 0.0  # std of each box side, as a fraction of the part's size
    score_noise: float = 0.0
    defective: float = 0.2  # fraction of defective parts
    defect_flip: float = 0.0  # probability one frame's defect verdict is wrong
    line_at: float = 0.5  # the counting line's x, as a fraction of the width
    masks: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.ratio <= 10:
            raise InvalidInputError(f"ratio (displacement per frame / part length) must be in (0, 10], got "
                                    f"{self.ratio}")
        if self.parts < 1 or self.lanes < 1 or self.fps <= 0:
            raise InvalidInputError("parts and lanes must be >= 1 and fps > 0")

    @property
    def speed(self) -> float:
        """Nominal belt speed, pixels per second."""
        return self.ratio * self.part_length * self.fps

    @property
    def noisy(self) -> bool:
        return any((self.miss, self.false_positives, self.box_jitter, self.score_noise, self.defect_flip))


@dataclass(frozen=True)
class SyntheticFrame:
    index: int
    t: float
    detections: Detections
    truth_ids: np.ndarray  # ids of the parts in view (half or more in the image; under the bar too, as MOT ground
    truth_boxes: np.ndarray  # (M, 4) their true boxes                          truth keeps occluded objects)


def _polygon(rng, half_length: float, half_width: float) -> np.ndarray:
    """A star-shaped polygon (6-9 vertices) inside the part's box, centered at 0."""
    count = int(rng.integers(6, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = rng.uniform(0.75, 1.0, count)
    points = np.stack([np.cos(angles) * radii * half_length, np.sin(angles) * radii * half_width], axis=1)
    return points / np.abs(points).max(axis=0) * [half_length, half_width]  # touch the box on every side


def rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool mask of the pixels whose centers are inside `polygon` (even-odd rule, over its bounding box only)."""
    mask = np.zeros((height, width), bool)
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return mask
    xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    inside = np.zeros(xs.shape, bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if ay == by:
            continue
        crosses = (ay > ys) != (by > ys)
        inside ^= crosses & (xs < ax + (ys - ay) * (bx - ax) / (by - ay))
    mask[y0:y1, x0:x1] = inside
    return mask


@dataclass
class Conveyor:
    spec: ConveyorSpec = field(default_factory=ConveyorSpec)

    def __post_init__(self):
        spec, rng = self.spec, np.random.default_rng(self.spec.seed)
        self._rng = rng
        length = spec.part_length
        lane_y = (np.arange(spec.lanes) + 0.5) * spec.height / spec.lanes
        starts, lanes, ahead = np.zeros(spec.parts), np.zeros(spec.parts, int), {}
        for k in range(spec.parts):  # parts start out of view on the left, each lane a queue with random gaps
            lane = k % spec.lanes
            gap = 0.0 if rng.random() < spec.touching else rng.uniform(*spec.gap)
            starts[k] = ahead[lane] - length * (1 + gap) if lane in ahead else -length * (0.5 + rng.uniform(0, 1))
            ahead[lane], lanes[k] = starts[k], lane
        self.lane_y = lane_y[lanes] + rng.normal(0, 0.05 * spec.part_width, spec.parts)
        self.starts = starts
        self.shapes = [_polygon(rng, length / 2, spec.part_width / 2) for _ in range(spec.parts)]
        self.defective = rng.random(spec.parts) < spec.defective
        step = spec.ratio * length
        frames = int(np.ceil((spec.width + length - starts.min()) / step)) + 1
        self.shift = np.concatenate([[0.0], np.cumsum(step * (1 + rng.normal(0, spec.speed_jitter, frames - 1)))])
        self.times = np.arange(frames) / spec.fps
        self.line = Line(spec.line_at * spec.width, 0, spec.line_at * spec.width, spec.height, direction="right")

    @property
    def defective_ids(self) -> set[int]:
        return {int(k) for k in np.flatnonzero(self.defective)}

    def crossing_ids(self) -> set[int]:
        """Parts whose true center crosses the line between the first and the last frame."""
        x = self.spec.line_at * self.spec.width
        return {k for k in range(self.spec.parts) if self.starts[k] < x < self.starts[k] + self.shift[-1]}

    def __len__(self) -> int:
        return len(self.times)

    def __iter__(self):
        for index in range(len(self)):
            yield self.frame(index)

    def _occluded(self, x: np.ndarray) -> np.ndarray:
        spec = self.spec
        if spec.occluder_frames <= 0:
            return np.zeros(x.shape, bool)
        half = spec.occluder_frames * spec.ratio * spec.part_length / 2
        return np.abs(x - spec.occluder_at * spec.width) < half

    def frame(self, index: int) -> SyntheticFrame:
        spec = self.spec
        rng = np.random.default_rng((spec.seed, index))  # frame by frame reproducible, in any order
        length, width, height = spec.part_length, spec.width, spec.height
        x = self.starts + self.shift[index] + rng.normal(0, spec.slip * length, spec.parts)
        y = self.lane_y + rng.normal(0, spec.slip * length, spec.parts)
        boxes = np.stack([x - length / 2, y - spec.part_width / 2, x + length / 2, y + spec.part_width / 2], 1)
        clipped = np.clip(boxes, 0, [width, height, width, height])
        in_view = (clipped[:, 2] - clipped[:, 0]) >= length / 2
        visible = np.flatnonzero(in_view & ~self._occluded(x))
        detected = visible[rng.random(visible.size) >= spec.miss]
        truth = np.flatnonzero(in_view)
        sizes = np.array([length, spec.part_width] * 2)
        det_boxes = clipped[detected] + rng.normal(0, spec.box_jitter, (detected.size, 4)) * sizes
        scores = np.clip(0.9 + rng.normal(0, spec.score_noise, detected.size), 0.05, 1.0)
        flags = self.defective[detected] ^ (rng.random(detected.size) < spec.defect_flip)
        origin = detected.copy()
        fp = rng.poisson(spec.false_positives) if spec.false_positives else 0
        if fp:
            centers = rng.uniform([0, 0], [width, height], (fp, 2))
            half = sizes[:2] / 2 * rng.uniform(0.3, 1.0, (fp, 1))
            det_boxes = np.concatenate([det_boxes, np.concatenate([centers - half, centers + half], 1)])
            scores = np.concatenate([scores, rng.uniform(0.3, 0.8, fp)])
            flags = np.concatenate([flags, rng.random(fp) < spec.defective])
            origin = np.concatenate([origin, -np.ones(fp, int)])
        det_boxes = np.clip(det_boxes, 0, [width, height, width, height])
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2])
        masks = None
        if spec.masks:
            masks = np.zeros((len(det_boxes), height, width), bool)
            for row, part in enumerate(origin):
                if part >= 0:
                    masks[row] = rasterize(self.shapes[part] + [x[part], y[part]], height, width)
                else:
                    x0, y0, x1, y1 = det_boxes[row].astype(int)
                    masks[row, y0:y1, x0:x1] = True
        detections = Detections(det_boxes.astype(np.float32), scores.astype(np.float32), (height, width), masks,
                                flags, origin)  # fmt: skip
        return SyntheticFrame(index, float(self.times[index]), detections, truth, clipped[truth].astype(np.float32))


def to_segmentation(frame: SyntheticFrame) -> Segmentation:
    """A frame's detections as the Segmentation a rule would return (needs spec.masks=True)."""
    detections = frame.detections
    if detections.masks is None:
        raise InvalidInputError("to_segmentation needs masks: make the conveyor with ConveyorSpec(masks=True)")
    instances = Instances(detections.masks, detections.boxes, detections.scores)
    return Segmentation(detections.masks.any(axis=0), instances, 1.0, "rule", "user", answer="part")


@dataclass
class Replay:
    """A monitor run over a conveyor, with what scoring needs: events, each track's true part (its detections'
    majority origin) and, per frame, the tracks a MOT metric scores: every track that was ever confirmed, at its
    detection, or at its predicted box while it coasts through misses and its predicted center is in the frame (its id
    exists from its first detection; confirmation only gates counting)."""

    events: list
    origin: dict[int, int]  # track id -> ground-truth part id (-1: made of false positives)
    outputs: list[tuple[list[int], np.ndarray]]  # per frame: track ids, their boxes
    update_s: list[float]  # seconds per monitor.update

    def counted(self) -> list[int]:
        """True part id of every count event (repeats = double counts, -1 = a false positive counted)."""
        return [self.origin.get(e.track_id, -1) for e in self.events if e.kind == "count"]

    def count_errors(self, conveyor: Conveyor) -> tuple[int, int]:
        """(missed, double): parts that crossed and were not counted; count events beyond one per true part."""
        counted = self.counted()
        truth = conveyor.crossing_ids()
        missed = len(truth - set(counted))
        return missed, len(counted) - len(set(counted) & truth)

    def defect_errors(self, conveyor: Conveyor) -> tuple[int, int]:
        """(defective parts without exactly one defect event, defect events that are not a defective part's first)."""
        flagged = [self.origin.get(e.track_id, -1) for e in self.events if e.kind == "defect"]
        truth = conveyor.defective_ids & {k for k in self.origin.values() if k >= 0}
        wrong = sum(flagged.count(k) != 1 for k in truth)
        return wrong, len(flagged) - len(set(flagged) & truth)


def replay(conveyor: Conveyor, monitor) -> Replay:
    import time
    from collections import Counter, defaultdict

    votes: dict[int, Counter] = defaultdict(Counter)
    events, seen, update_s, confirmed = [], [], [], set()

    def unseen(ended) -> None:
        """Votes for tracks that ended before any frame showed them (the belt tracker's start-up builds tracks again
        from kept frames; one that ended meanwhile is confirmed at the end of the start-up): their history's."""
        for track in ended:
            if track.id not in votes:
                votes[track.id].update(observation.origin for observation in track.history)

    for frame in conveyor:
        start = time.perf_counter()
        events += monitor.update(frame.detections, frame.t)
        update_s.append(time.perf_counter() - start)
        rows = []
        for track in monitor.tracker.tracks:
            if track.confirmed:
                confirmed.add(track.id)
            if track.misses == 0:
                votes[track.id][track.last.origin] += 1
                rows.append((track.id, track.box))
            else:
                box = track.predicted_box(frame.t)
                x, y = (box[:2] + box[2:]) / 2
                if 0 <= x <= conveyor.spec.width and 0 <= y <= conveyor.spec.height:
                    rows.append((track.id, box))
        seen.append(rows)
        unseen(monitor.tracker.ended)
    events += monitor.finish()
    unseen(monitor.tracker.ended)
    origin = {track_id: counter.most_common(1)[0][0] for track_id, counter in votes.items()}
    outputs = []
    for rows in seen:
        kept = [(i, box) for i, box in rows if i in confirmed]
        outputs.append(([i for i, _ in kept], np.array([box for _, box in kept], np.float32).reshape(-1, 4)))
    return Replay(events, origin, outputs, update_s)
