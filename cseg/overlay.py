"""Pictures of results: the mask tinted over the image, instance boxes, and a caption (route, answer, presence)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cseg.segmentation import Segmentation

MASK_COLOR = np.array([30, 144, 255], dtype=np.float32)  # dodger blue: visible on skin, sky and metal alike
MASK_ALPHA = 0.5
BOX_COLOR = (255, 200, 0)
CAPTION_HEIGHT = 22


def overlay(image: Image.Image, result: Segmentation, prompt: str) -> Image.Image:
    """The input image with the semantic mask tinted, instance boxes drawn and a one-line caption below."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    tinted = np.where(result.mask[..., None], pixels * (1 - MASK_ALPHA) + MASK_COLOR * MASK_ALPHA, pixels)
    canvas = Image.new("RGB", (image.width, image.height + CAPTION_HEIGHT), (0, 0, 0))
    canvas.paste(Image.fromarray(tinted.round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for box, score in zip(result.instances.boxes, result.instances.scores):
        draw.rectangle([float(v) for v in box], outline=BOX_COLOR, width=2)
        draw.text((float(box[0]) + 3, float(box[1]) + 2), f"{score:.2f}", fill=BOX_COLOR)
    said = f" -> '{result.answer}'" if result.route == "full" else ""
    caption = f"'{prompt}'{said} | {result.route} | presence {result.presence:.2f} | {result.area} px"
    draw.text((4, image.height + 5), caption, fill=(255, 255, 255))
    return canvas
