"""Track ids and the counting line drawn on a frame (for `cseg watch --track --out`): one small function that
composes with cseg.overlay, as supervision's annotators do, instead of a loop that draws everything itself."""

from __future__ import annotations

from PIL import Image, ImageDraw

from cseg.track.geometry import Line, Zone
from cseg.track.tracker import Track

LINE_COLOR = (255, 64, 64)
CONFIRMED_COLOR = (64, 255, 64)
TENTATIVE_COLOR = (160, 160, 160)  # unconfirmed: drawn, but never labelled as a part


def draw_tracks(image: Image.Image, tracks: list[Track], line: Line | Zone | None = None,
                counts: dict | None = None) -> Image.Image:  # fmt: skip
    """A copy of `image` with each observed track's box and id (#id; unconfirmed ones grey, unlabelled), the line
    (with an arrow along the counted direction) or the zone, and the counts in the top-left corner."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    if isinstance(line, Line):
        draw.line([(line.x1, line.y1), (line.x2, line.y2)], fill=LINE_COLOR, width=2)
        mid_x, mid_y = (line.x1 + line.x2) / 2, (line.y1 + line.y2) / 2
        tip = (mid_x + 20 * line.normal[0], mid_y + 20 * line.normal[1])
        draw.line([(mid_x, mid_y), tip], fill=LINE_COLOR, width=2)
        draw.ellipse([tip[0] - 3, tip[1] - 3, tip[0] + 3, tip[1] + 3], fill=LINE_COLOR)
    elif isinstance(line, Zone):
        draw.polygon([tuple(map(float, p)) for p in line.points], outline=LINE_COLOR, width=2)
    for track in tracks:
        if track.misses:
            continue
        color = CONFIRMED_COLOR if track.confirmed else TENTATIVE_COLOR
        draw.rectangle([float(v) for v in track.box], outline=color, width=2)
        if track.confirmed:
            draw.text((float(track.box[0]) + 3, float(track.box[1]) + 2), f"#{track.id}", fill=color)
    if counts:
        text = "  ".join(f"{key} {value}" for key, value in counts.items() if key in ("parts", "defects", "reversed"))
        draw.text((4, 4), text, fill=(255, 255, 255))
    return canvas
