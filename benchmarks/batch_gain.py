"""Does a batch of frames cost less per frame than one frame, for the graphs `cseg_apply` runs (sam3_vision and
sam3_decoder), on this machine's CPU with ONNX Runtime? The answer decides how `cseg serve` serves a batch
(README, "Serving many cameras: Triton").

A bundle's graphs take a batch of exactly 1, so this exports the two graphs' modules again from a checkpoint with the
batch axis dynamic (the same GraphSpec modules as the bundle's, only axis 0 named), then times one session per graph
at batch 1, 2, 4, 8: per-frame time at batch b vs at batch 1. Needs torch (the main venv). Not part of the tests.

    .venv/bin/python benchmarks/batch_gain.py CHECKPOINT_DIR [--batches 1 2 4 8] [--repeat 5] [--threads 0]

CHECKPOINT_DIR: `cseg make-checkpoint --size tiny|small --out DIR` (its sam3/ folder is read). On `small` (1008 px)
batch 4 took over 13 GB of memory and minutes per run here: --batches 1 2 there.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cseg.export.graph_spec import TensorSpec
from cseg.export.graphs import sam3_decoder, sam3_vision
from cseg.export.loading import load_sam3
from cseg.export.onnx_export import export_graph


def batched(spec, batch: int = 2):
    """`spec` with axis 0 of every input and output a dynamic 'batch' axis, exported from a batch of `batch`
    (the dynamo exporter specialises an axis whose example size is 1)."""

    def axis0(tensor: TensorSpec) -> TensorSpec:
        return dataclasses.replace(tensor, shape=("batch", *tensor.shape[1:]))

    def make_inputs(sizes, generator):
        return {name: value.expand(batch, *value.shape[1:]).contiguous()
                for name, value in spec.make_inputs(sizes, generator).items()}  # fmt: skip

    return dataclasses.replace(spec, inputs=[axis0(t) for t in spec.inputs], outputs=[axis0(t) for t in spec.outputs],
                               make_inputs=make_inputs)  # fmt: skip


def time_batches(path: Path, feed: dict[str, np.ndarray], batches, repeat: int, threads: int):
    """(batch, median ms per frame) of one session on `feed` (batch-1 arrays) tiled to each batch size, yielded as
    each is measured (a 1008 px graph at batch 8 takes minutes and gigabytes: what was measured is printed)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch in batches:
        tiled = {name: np.repeat(feed[name], batch, axis=0) for name in names}
        session.run(None, tiled)  # warm-up: allocations for this shape
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.run(None, tiled)
            runs.append((time.perf_counter() - start) * 1000 / batch)
        yield batch, statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a make-checkpoint folder (its sam3/ is read)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--queries", type=int, default=16, help="concept tokens of the rule (the published Q)")
    args = parser.parse_args()
    sam3_dir = Path(args.checkpoint) / "sam3"
    sam3 = load_sam3(sam3_dir if sam3_dir.is_dir() else args.checkpoint, attn_implementation="eager")
    settings = {"queries": args.queries, "top_k": 20}
    print(f"checkpoint {args.checkpoint}, image {sam3.image_size}px, intra-op threads {args.threads or 'auto'}, "
          f"{args.repeat} runs per batch (median ms per frame)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for module in (sam3_vision, sam3_decoder):
            spec = batched(module.spec(None, sam3, settings))
            path = Path(tmp) / f"{spec.key}.onnx"
            export_graph(spec, path)
            example = spec.make_inputs({**spec.export_sizes, "words": 4, "concepts": args.queries},
                                       torch.Generator().manual_seed(0))  # fmt: skip
            feed = {name: value[:1].numpy() for name, value in example.items()}
            one = None
            for batch, ms in time_batches(path, feed, args.batches, args.repeat, args.threads):
                one = one or ms  # the first batch size is the reference
                print(f"{spec.key:13s} batch {batch}: {ms:9.2f} ms per frame ({one / ms:4.2f}x)", flush=True)


if __name__ == "__main__":
    main()
