"""The per-frame host path, before and after the native kernels, in one run (medians of --repeat runs).

One 1080p BGR camera frame with 20 instances above the score threshold
(cseg.runtime.host_path_bench.host_path_inputs):
- before: the numpy/PIL code that served requests until wave 2 (frame -> PIL -> RGB, PIL bilinear resize +
  normalise; numpy bilinear upsampling to a float image, then the threshold: tests/oracles.py)
- after: the native CPU module (cseg.runtime.native), and the CUDA kernels where a GPU is.

    .venv/bin/python benchmarks/host_path.py --repeat 20 --json host_path.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import resize_bilinear  # noqa: E402  the pre-wave-2 postprocess, kept as the tests' oracle

from cseg import bench  # noqa: E402
from cseg.images import load_frame, vlm_image  # noqa: E402
from cseg.runtime import host_path_bench  # noqa: E402
from cseg.runtime.vlm_inputs import image_patches  # noqa: E402

SIZE = 1008
# Qwen2.5-VL's published image processor settings (preprocessor_config.json)
QWEN_PREP = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056,
             "rescale_factor": 1 / 255, "mean": [0.48145466, 0.4578275, 0.40821073],
             "std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip


def vlm_host_prep(frame) -> dict[str, float]:
    """What stays in Python on the full path: the BGR frame as an RGB PIL image, the 600x600 bicubic square and the
    Qwen patch layout (once per image; the full path's VLM costs seconds on a device)."""
    pil = load_frame(frame, bgr=True).pil()
    square = vlm_image(pil)
    return {"to_pil_ms": bench.median_ms(lambda: load_frame(frame, bgr=True).pil(), 5),
            "vlm_square_ms": bench.median_ms(lambda: vlm_image(pil), 5),
            "patches_ms": bench.median_ms(lambda: image_patches(square, QWEN_PREP), 5)}  # fmt: skip


def numpy_before(frame, semantic, instances) -> dict[str, float]:
    """The pre-wave-2 path, stage by stage as the issue measured it."""
    scores, boxes, masks = instances
    height, width = host_path_bench.HOST_FRAME

    def load_image():  # numpy BGR -> PIL RGB, as load_image did
        return Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))

    pil = load_image()

    def sam3_pixels():  # PIL bilinear, scale, normalise, NCHW
        resized = np.asarray(pil.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        return ((resized - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()

    def instance_masks():
        keep = scores[0] > 0.5
        return resize_bilinear(masks[0, keep], height, width) > 0, boxes[0, keep] * [width, height, width, height]

    return {
        "load_image_ms": bench.median_ms(load_image, 5),
        "sam3_pixels_ms": bench.median_ms(sam3_pixels, 5),
        "semantic_ms": bench.median_ms(lambda: resize_bilinear(semantic[0, 0], height, width) > 0, 5),
        "instances_ms": bench.median_ms(instance_masks, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    frame, semantic, instances = host_path_bench.host_path_inputs()
    before = numpy_before(frame, semantic, instances)
    after = host_path_bench.host_path(args.repeat, SIZE)
    vlm = vlm_host_prep(frame)
    cpu = after["cpu"]
    preprocess_before = before["load_image_ms"] + before["sam3_pixels_ms"]
    print(f"before (numpy/PIL): frame->PIL {before['load_image_ms']:.1f} ms + sam3_pixels {before['sam3_pixels_ms']:.1f}"
          f" ms, semantic mask {before['semantic_ms']:.1f} ms, 20 instance masks {before['instances_ms']:.1f} ms")
    print(host_path_bench.host_path_table(after))
    print(f"speed-up: preprocess {preprocess_before / cpu['preprocess_ms']:.1f}x, semantic "
          f"{before['semantic_ms'] / cpu['semantic_ms']:.1f}x, instances {before['instances_ms'] / cpu['instances_ms']:.1f}x")
    print(f"full path only, in Python: frame->PIL {vlm['to_pil_ms']:.1f} ms, 600x600 bicubic {vlm['vlm_square_ms']:.1f} ms,"
          f" Qwen patches {vlm['patches_ms']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "after": after, "vlm_host_prep": vlm}, indent=1))


if __name__ == "__main__":
    main()
