"""Decomposed attention against ONNX Runtime's fused CPU attention (not part of the tests; README, Measured here).

    .venv/bin/python benchmarks/fused_attention_speed.py blocks [--rounds 5]
    .venv/bin/python benchmarks/fused_attention_speed.py graph BUNDLE KEY [--rounds 5]

blocks: one attention block at the shapes of the `small` graphs, as the exporter writes it (MatMul, scale, mask Add,
Softmax, MatMul), as com.microsoft.MultiHeadAttention after export/fused_attention.py's rewrite, and as the opset-23
Attention op; median ms of interleaved rounds. graph: a fp32 cpu bundle's graph (exported before fusion, or with
the target's list emptied) against the same graph through the rewrite, interleaved, on random inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cseg.export.fused_attention import fuse_attention, fuse_model
from cseg.runtime.vlm_inputs import vision_inputs

# name: batch, heads, queries, keys, head_dim, additive mask shape (None: no mask)
BLOCKS = {
    "sam3_decoder DETR encoder self-attention": (1, 8, 5184, 5184, 32, None),
    "sam3_decoder decoder -> image cross-attention (box bias)": (1, 8, 200, 5184, 32, (1, 8, 200, 5184)),
    "sam3_vision global attention": (1, 8, 5184, 5184, 64, None),
    "sam3_vision 9 windows of 576": (9, 8, 576, 576, 64, None),
    "vlm_vision full attention (image mask)": (1, 10, 1764, 1764, 64, (1, 1, 1764, 1764)),
}


def decomposed(batch, heads, queries, keys, dim, mask) -> onnx.ModelProto:
    nodes = [helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "k_t"], ["scores"]), helper.make_node("Mul", ["scores", "scale"], ["s"])]  # fmt: skip
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [batch, heads, queries, dim]),
              *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, heads, keys, dim]) for n in "kv")]  # fmt: skip
    if mask:
        nodes.append(helper.make_node("Add", ["s", "mask"], ["masked"]))
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(mask)))
    nodes += [helper.make_node("Softmax", [nodes[-1].output[0]], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["out"])]
    graph = helper.make_graph(nodes, "block", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(dim**-0.5, np.float32), "scale")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def attention23(batch, heads, queries, keys, dim, mask) -> onnx.ModelProto:
    names = ["q", "k", "v"] + (["mask"] if mask else [])
    graph = helper.make_graph([helper.make_node("Attention", names, ["out"], scale=dim**-0.5)], "block",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def interleaved(sessions: dict, feed: dict, rounds: int) -> dict[str, float]:
    for session in sessions.values():  # warm-up
        session.run(None, feed)
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def blocks(rounds: int) -> None:
    for name, shape in BLOCKS.items():
        batch, heads, queries, keys, dim, mask = shape
        rng = np.random.default_rng(0)
        feed = {"q": rng.standard_normal((batch, heads, queries, dim), np.float32),
                **{n: rng.standard_normal((batch, heads, keys, dim), np.float32) for n in "kv"}}  # fmt: skip
        if mask:
            feed["mask"] = np.where(rng.random(mask) < 0.1, -1e4, 0).astype(np.float32)
        fused = decomposed(*shape)
        assert fuse_model(fused) == 1
        models = {"decomposed": decomposed(*shape), "MultiHeadAttention": fused}
        if not mask or mask[2] == queries:  # ORT's Attention-23 wants the mask spelled out over the queries
            models["Attention-23"] = attention23(*shape)
        sessions = {k: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                    for k, m in models.items()}  # fmt: skip
        ms = interleaved(sessions, feed, rounds)
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} ms ({ms['decomposed'] / v:.2f}x)" for k, v in ms.items()))


def random_feed(manifest: dict, key: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if key == "vlm_vision":
        grid = manifest["preprocessing"]["vlm"]["grid_thw"]
        feed = vision_inputs([grid], manifest["model"]["vision"])
        width = manifest["graphs"][key]["inputs"][0]["shape"][1]  # pixel_values: [patches, channels * patch volume]
        return {**feed, "pixel_values": rng.standard_normal((int(np.prod(grid)), width), np.float32)}
    feed = {t["name"]: rng.standard_normal([s if isinstance(s, int) else 16 for s in t["shape"]]).astype(np.float32)
            for t in manifest["graphs"][key]["inputs"]}  # fmt: skip
    if "text_mask" in feed:  # five words
        feed["text_mask"] = (np.arange(feed["text_mask"].shape[1]) < 5).astype(np.int64)[None]
    return feed


def graph(bundle: Path, key: str, rounds: int) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    source = bundle / manifest["graphs"][key]["file"]
    fused = source.with_name(f"{source.stem}.fused-attention.onnx")  # beside it: external weights stay reachable
    try:
        fused.write_bytes(source.read_bytes())
        print(f"{key}: {fuse_attention(fused)} attention blocks fused")
        sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in (("decomposed", source), ("fused", fused))}  # fmt: skip
        ms = interleaved(sessions, random_feed(manifest, key), rounds)
    finally:
        fused.unlink(missing_ok=True)
    print(f"{key}: decomposed {ms['decomposed']:.0f} ms, fused {ms['fused']:.0f} ms ({ms['decomposed'] / ms['fused']:.2f}x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["blocks", "graph"])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("key", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "graph":
        graph(args.bundle, args.key, args.rounds)
    else:
        blocks(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
