"""The per-frame host path, measured (`cseg bench` prints it; benchmarks/host_path.py sets it against the numpy/PIL
code it replaced): SAM 3 preprocessing of a 1080p BGR camera frame and its masks at 1080p, on the native CPU module
(cseg.runtime.native) and, where a GPU is, on the CUDA kernels and as one captured frame graph. It lives with the
runtime because it drives the runtime's own kernels and CUDA internals; cseg.bench only times and reports."""

from __future__ import annotations

import numpy as np

from cseg.bench import median_ms
from cseg.images import SAM3_MEAN, SAM3_STD, load_frame
from cseg.runtime import native, postprocess
from cseg.runtime.cuda.graphs import why_unavailable
from cseg.runtime.preprocess import sam3_pixels

HOST_FRAME = (1080, 1920)  # one 1080p BGR camera frame ...
HOST_INSTANCES = 20  # ... with this many instances above the score threshold (SAM 3's 288x288 mask logits)


def host_path_inputs(seed: int = 0, mask_side: int = 288):
    """A 1080p BGR frame, semantic logits [1, 1, s, s] and HOST_INSTANCES instance logits with scores above 0.5."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*HOST_FRAME, 3), dtype=np.uint8)
    semantic = rng.standard_normal((1, 1, mask_side, mask_side)).astype(np.float32)
    masks = rng.standard_normal((1, HOST_INSTANCES, mask_side, mask_side)).astype(np.float32)
    scores = np.linspace(0.99, 0.6, HOST_INSTANCES, dtype=np.float32)[None]
    boxes = np.tile(np.array([0.1, 0.2, 0.5, 0.6], np.float32), (1, HOST_INSTANCES, 1))
    return frame, semantic, (scores, boxes, masks)


def host_path(repeat: int = 20, size: int = 1008) -> dict:
    """Median ms of the per-frame host path on the native CPU module: SAM 3 preprocessing of a 1080p BGR frame, its
    semantic mask and HOST_INSTANCES instance masks at 1080p; and on the CUDA kernels where a GPU is."""
    frame, semantic, instances = host_path_inputs()
    out = {"frame": list(HOST_FRAME), "instances": HOST_INSTANCES, "cpu_threads": native.thread_count(), "cpu": {
        "preprocess_ms": median_ms(lambda: sam3_pixels(load_frame(frame, bgr=True), size), repeat),
        "semantic_ms": median_ms(lambda: postprocess.semantic_mask(semantic, HOST_FRAME), repeat),
        "instances_ms": median_ms(lambda: postprocess.instances(*instances, HOST_FRAME, 0.5), repeat),
    }}  # fmt: skip
    out["cuda"] = _cuda_host_path(frame, semantic, instances, size, repeat)
    return out


def _cuda_host_path(frame, semantic, instances, size: int, repeat: int) -> dict:
    """Device time (launch to synchronise) of the kernels on data already on the GPU, and the host time of one
    replay of the captured frame graph (copy in, preprocess, masks)."""
    reason = why_unavailable()
    if reason:
        return {"skipped": reason}
    # cuda-python and the fatbin are loaded only where a GPU is
    from cseg.runtime.cuda.buffers import DeviceArray
    from cseg.runtime.cuda.graphs import CapturedWork, Stream
    from cseg.runtime.cuda.kernels import kernels

    loaded, stream = kernels(), Stream()
    height, width = HOST_FRAME
    scores, _, masks = instances
    logits = np.concatenate([semantic[0], masks[0]])  # the semantic mask and the instances, one launch
    device = {"frame": DeviceArray(frame.shape, np.uint8), "pixels": DeviceArray((1, 3, size, size), np.float32),
              "logits": DeviceArray(logits.shape, np.float32), "scores": DeviceArray((len(logits),), np.float32),
              "masks": DeviceArray((len(logits), height, width), np.uint8)}  # fmt: skip
    device["logits"].upload(logits, stream)
    device["scores"].upload(np.concatenate([[1.0], scores[0]]).astype(np.float32), stream)
    device["frame"].host[...] = frame

    def preprocess(s):
        loaded.preprocess(s, device["frame"].pointer, height, width, (width * 3, 3, 1), True,
                          device["pixels"].pointer, size, [SAM3_MEAN] * 3, [SAM3_STD] * 3)  # fmt: skip

    def masks_(s, bicubic=False):
        loaded.upsample_threshold(s, device["logits"].pointer, len(logits), *logits.shape[1:], device["masks"].pointer,
                                  height, width, device["scores"].pointer, 0.5, bicubic)  # fmt: skip

    def frame_graph(s):
        device["frame"].push(s)
        preprocess(s)
        masks_(s)

    def synchronised(enqueue):
        return lambda: (enqueue(stream), stream.synchronize())

    try:
        result = {"preprocess_ms": median_ms(synchronised(preprocess), repeat),
                  "masks_ms": median_ms(synchronised(masks_), repeat),
                  "masks_bicubic_ms": median_ms(synchronised(lambda s: masks_(s, bicubic=True)), repeat)}  # fmt: skip
        work = CapturedWork(stream, frame_graph)
        result["frame_graph_ms"] = median_ms(lambda: (work.launch(), stream.synchronize()), repeat)
        result["frame_graph_launch_host_us"] = median_ms(work.launch, repeat) * 1000
        stream.synchronize()
        result["captured"] = work.captured
        work.close()
    finally:
        for array in device.values():
            array.close()
        stream.close()
    return result


def host_path_table(summary: dict) -> str:
    cpu = summary["cpu"]
    lines = [f"host path, {summary['frame'][0]}p BGR frame, {summary['instances']} instances (native CPU, "
             f"{summary['cpu_threads']} threads): preprocess {cpu['preprocess_ms']:.1f} ms, semantic mask "
             f"{cpu['semantic_ms']:.1f} ms, instance masks {cpu['instances_ms']:.1f} ms"]  # fmt: skip
    cuda = summary["cuda"]
    if "skipped" in cuda:
        lines.append(f"host path on CUDA: not measured ({cuda['skipped']})")
    else:
        lines.append(f"host path on CUDA: preprocess {cuda['preprocess_ms']:.3f} ms, masks {cuda['masks_ms']:.3f} ms "
                     f"(bicubic {cuda['masks_bicubic_ms']:.3f} ms), captured frame graph {cuda['frame_graph_ms']:.3f} ms "
                     f"({cuda['frame_graph_launch_host_us']:.0f} us of host time per replay)")  # fmt: skip
    return "\n".join(lines)
