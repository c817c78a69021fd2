"""The PyTorch baseline a TensorRT build must beat: SAM 3 (transformers' Sam3Model) on a CUDA GPU, eager vs CUDA-graph
replay of its decoder side (not part of the tests; needs a CUDA build of torch).

    python benchmarks/sam3_gpu_baseline.py --size full [--dtype float32 bfloat16] [--repeat 20] [--json out.json]

The model is random-init at the published dimensions (cseg's `full` size, 840M parameters): speed does not depend on
the weights. Measured: the image encoder (sam3_vision's module) eager; the detector (sam3_decoder's module: DETR
encoder + decoder, scoring, mask head, top-K) eager and replayed from a torch.cuda.CUDAGraph, on the full path
(Q concept tokens) and the shortcut path (0); the replayed outputs are compared with eager ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import traceback

import torch
from transformers import Sam3Model

from cseg.export.graphs.sam3_decoder import Detector
from cseg.export.graphs.sam3_text import TEXT_LENGTH
from cseg.export.graphs.sam3_vision import FPN_LEVELS, VisionEncoder
from cseg.export.models.checkpoint_sizes import SIZES
from cseg.export.models.make_checkpoint import sam3_config

CLIP_VOCAB, CLIP_BOS, CLIP_EOS = 49408, 49406, 49407


def _median_ms(run, repeat: int) -> float:
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@contextlib.contextmanager
def _capturable(grid: tuple[int, int]):
    """Make transformers' Sam3 detector capturable without changing what it computes:
    - small constants built with torch.tensor(list, device=cuda) inside forward (spatial shapes, box scales) are a
      copy from pageable memory, which capture refuses: they are made from pinned memory (kept alive with the graph);
    - the DETR decoder's coordinate grid takes its height/width from a CUDA tensor (torch.arange on it reads it back
      to the host): it gets them as the Python ints `grid` (the detector's feature map) instead."""
    from transformers.models.sam3.modeling_sam3 import Sam3DetrDecoder

    original_tensor, original_coords, keep = torch.tensor, Sam3DetrDecoder._get_coords, []

    def tensor(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda" and not isinstance(data, torch.Tensor):
            host = original_tensor(data, *args, **kwargs).pin_memory()
            keep.append(host)
            return host.to(device, non_blocking=True)
        return original_tensor(data, *args, device=device, **kwargs)

    def coords(self, height, width, dtype, device):
        height, width = grid
        return (torch.arange(0, height, device=device, dtype=dtype) / height,
                torch.arange(0, width, device=device, dtype=dtype) / width)  # fmt: skip

    torch.tensor, Sam3DetrDecoder._get_coords = tensor, coords
    try:
        yield keep
    finally:
        torch.tensor, Sam3DetrDecoder._get_coords = original_tensor, original_coords


def _grid(inputs: dict) -> tuple[int, int]:
    return tuple(inputs[f"fpn_{FPN_LEVELS - 1}"].shape[-2:])  # the level the DETR encoder/decoder attend to


def _first_sync(module, inputs: dict) -> list[str]:
    """Where `module` synchronises with the host (what breaks a capture): the innermost frames of torch's sync check."""
    from transformers.utils import import_utils

    capturing = import_utils.is_cuda_stream_capturing
    import_utils.is_cuda_stream_capturing = lambda: True  # take the branches transformers takes under capture
    torch.cuda.set_sync_debug_mode("error")
    try:
        with _capturable(_grid(inputs)):
            module(**inputs)
    except RuntimeError as exc:
        frames = traceback.extract_tb(exc.__traceback__)[-4:]
        return [f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.line}" for frame in frames]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        import_utils.is_cuda_stream_capturing = capturing
    return []


def _graphed(module, inputs: dict):
    """(replay, outputs) of `module(**inputs)` captured once into a CUDA graph on static input buffers."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            module(**inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with _capturable(_grid(inputs)) as constants, torch.cuda.graph(graph):
        outputs = module(**inputs)
    graph.constants = constants
    return graph.replay, outputs


def measure(size: str, dtype: torch.dtype, repeat: int, queries: int, compile_full: bool = False) -> dict:
    config = sam3_config(SIZES[size]["sam3"], CLIP_VOCAB, CLIP_BOS, CLIP_EOS)
    torch.manual_seed(0)
    # built on the CPU: CUDA random numbers after an earlier capture trip torch's RNG checks
    model = Sam3Model(config).eval().to("cuda", dtype)
    parameters = sum(p.numel() for p in model.parameters())
    side = config.vision_config.backbone_config.image_size
    result = {"size": size, "dtype": str(dtype).removeprefix("torch."), "parameters": parameters, "image_side": side}
    with torch.inference_mode():
        vision = VisionEncoder(model.vision_encoder).eval()
        pixels = (torch.rand(1, 3, side, side) * 2 - 1).to("cuda", dtype)
        result["vision_eager_ms"] = _median_ms(lambda: vision(pixels), repeat)
        fpn = vision(pixels)
        detector = Detector(model, top_k=20).eval()
        mask = torch.zeros(1, TEXT_LENGTH, dtype=torch.int64)
        mask[0, :4] = 1
        generator = torch.Generator().manual_seed(0)
        routes = {
            route: {
                **{f"fpn_{i}": level for i, level in enumerate(fpn)},
                "text_features": torch.randn(1, TEXT_LENGTH, 256, generator=generator).to("cuda", dtype),
                "text_mask": mask.to("cuda"),
                "concept_tokens": torch.randn(1, count, 256, generator=generator).to("cuda", dtype),
            }
            for route, count in (("full", queries), ("shortcut", 0))
        }
        for route, inputs in routes.items():
            eager_ms = _median_ms(lambda: detector(**inputs), repeat)
            eager = detector(**inputs)
            try:
                replay, outputs = _graphed(detector, inputs)
            except RuntimeError as exc:  # work that cannot be captured: report it and where it syncs, keep eager numbers
                result[f"decoder_{route}"] = {"eager_ms": eager_ms, "capture_failed": str(exc)[:300],
                                              "synchronises_at": _first_sync(detector, inputs)}  # fmt: skip
                continue
            replay_ms = _median_ms(replay, repeat)
            replay()
            torch.cuda.synchronize()
            difference = max((a.float() - b.float()).abs().max().item() for a, b in zip(eager, outputs))
            result[f"decoder_{route}"] = {
                "eager_ms": eager_ms, "replay_ms": replay_ms, "speedup": eager_ms / replay_ms,
                "max_abs_difference": difference,
            }  # fmt: skip
        if compile_full:
            inputs = routes["full"]
            began = time.perf_counter()
            compiled = torch.compile(detector, mode="reduce-overhead")
            for _ in range(3):
                compiled(**inputs)
            torch.cuda.synchronize()
            result["decoder_full"]["compile_s"] = time.perf_counter() - began
            result["decoder_full"]["compiled_reduce_overhead_ms"] = _median_ms(lambda: compiled(**inputs), repeat)
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--queries", type=int, default=16, help="concept tokens on the full path")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(mode='reduce-overhead') on the full path (inductor + CUDA graphs)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    for name in args.dtype:
        try:
            run = measure(args.size, getattr(torch, name), args.repeat, args.queries, args.compile)
        except Exception as exc:  # one precision failing must not hide the other's numbers
            run = {"dtype": name, "error": f"{type(exc).__name__}: {exc}"[:1000]}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    results["seconds"] = time.perf_counter() - started
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
