"""Fused attention for the cpu target: the exported MatMul/Softmax/MatMul blocks become ONNX Runtime's
com.microsoft.MultiHeadAttention: one CPU kernel where the decomposed form writes and re-reads the [batch, heads,
queries, keys] scores between MatMul, Mul, Add, Softmax and MatMul (measured gains: README, Measured here).

One rewrite after export, whatever wrote the block: SAM 3's eager attention (MatMul(q, kᵀ) * scale + mask) and the
exporter's decomposition of scaled_dot_product_attention (MatMul(q * √s, kᵀ * √s) + mask, then the Where(IsNaN)
that zeroes rows whose every key is masked). Matched on 4-D [batch, heads, tokens, head_dim] tensors with the head
count and size known from the exported shapes; q, kᵀ and v are put into MultiHeadAttention's [batch, tokens,
heads * head_dim] layout by Transpose + Reshape (their cost is in the measured times). The additive mask becomes
the op's attention_bias, broadcast over the queries (the op wants them explicit). A row with every key masked at -inf
comes out NaN instead of the decomposed form's 0 (checked): none of the cpu graphs makes one (SAM 3's text mask
keeps its first token, vlm_vision's windows hold at least one patch and every patch attends to its own image).

GPU targets keep standard ONNX for TensorRT; engines/targets.py names the graphs this is applied to (where it was
measured faster) and the manifest records how many blocks each graph got.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_OP = "MultiHeadAttention"
FUSED_DOMAIN = "com.microsoft"


def fuse_attention(path: Path) -> int:
    """Rewrite the attention blocks of the ONNX file at `path` in place; returns how many were fused. External
    weights stay where they are (only the graph's nodes change)."""
    model = onnx.load(str(path), load_external_data=False)
    count = fuse_model(model)
    if count:
        onnx.save(model, str(path))
    return count


def fuse_model(model: onnx.ModelProto) -> int:
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.value_info, *inferred.input, *inferred.output)
              if v.type.tensor_type.HasField("shape")}  # fmt: skip
    constants = _scalars(graph)
    blocks = [b for n in graph.node if n.op_type == "Softmax" if (b := _match(graph, n, constants, shapes))]
    if not blocks:
        return 0
    removed = {id(node) for block in blocks for node in block["nodes"]}
    by_output = {block["out"]: block for block in blocks}
    nodes = []
    for node in graph.node:
        if id(node) not in removed:
            nodes.append(node)
        elif node.output[0] in by_output:  # the block's last MatMul: everything it needs is computed by now
            nodes.extend(_fused(by_output[node.output[0]], len(nodes)))
    del graph.node[:]
    graph.node.extend(nodes)
    used = _used_names(graph)  # drop the scales only the blocks held
    kept = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == FUSED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    return len(blocks)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, in subgraphs (If, Loop) too."""
    used = set()
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                used |= _used_names(sub)
    return used


def _scalars(graph: onnx.GraphProto) -> dict[str, float]:
    """Float constants with one element, by tensor name (the attention scales)."""
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    scalars = {}
    for name, tensor in tensors.items():
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and np.prod(tensor.dims) == 1:
            scalars[name] = float(numpy_helper.to_array(tensor).reshape(()))
    return scalars


def _match(graph: onnx.GraphProto, softmax: onnx.NodeProto, constants: dict[str, float], shapes: dict) -> dict | None:
    """The block around `softmax`, or None when it is not (exactly) scaled dot-product attention."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    nodes = [softmax]
    # after: MatMul(p, v), possibly behind the Where(IsNaN(p), 0, p) of the exporter's SDPA
    after = consumers.get(softmax.output[0], [])
    if len(after) == 2 and {n.op_type for n in after} == {"IsNaN", "Where"}:
        isnan, where = sorted(after, key=lambda n: n.op_type != "IsNaN")
        if where.input[0] != isnan.output[0] or where.input[2] != softmax.output[0] or constants.get(where.input[1]) != 0:
            return None
        nodes += [isnan, where]
        after = consumers.get(where.output[0], [])
    if len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != nodes[-1].output[0]:
        return None
    pv = after[0]
    # before: [Add(mask)] <- [Mul(scale)] <- MatMul([Mul(q, c)], [Mul(kᵀ, c)])
    scores, mask, scale = softmax.input[0], None, 1.0
    node = producer.get(scores)
    if node is not None and node.op_type == "Add":
        chained = [i for i in node.input if _scores(producer, i, constants)]
        if len(chained) != 1:
            return None
        scores = chained[0]
        mask = next(i for i in node.input if i != scores)
        nodes.append(node)
        node = producer[scores]
    if node is not None and node.op_type == "Mul" and any(i in constants for i in node.input):
        scale *= constants[next(i for i in node.input if i in constants)]
        nodes.append(node)
        node = producer.get(next(i for i in node.input if i not in constants))
    if node is None or node.op_type != "MatMul":
        return None
    nodes.append(node)
    operands = []
    for name in node.input:
        factor = producer.get(name)
        if factor is not None and factor.op_type == "Mul" and any(i in constants for i in factor.input):
            if len(consumers[name]) != 1:
                return None
            scale *= constants[next(i for i in factor.input if i in constants)]
            nodes.append(factor)
            name = next(i for i in factor.input if i not in constants)
        operands.append(name)
    q, k_t, v = operands[0], operands[1], pv.input[1]
    q_shape, k_shape, v_shape = shapes.get(q), shapes.get(k_t), shapes.get(v)
    if any(s is None or len(s) != 4 for s in (q_shape, k_shape, v_shape)):
        return None
    heads, head_dim = q_shape[1], q_shape[3]
    if not heads or not head_dim or k_shape[2] not in (head_dim, None) or v_shape[3] not in (head_dim, None):
        return None
    if k_shape[1] not in (heads, None) or v_shape[1] not in (heads, None):  # grouped-query heads: not this op
        return None
    mask_rank = len(shapes.get(mask) or ()) if mask is not None else 0
    if mask is not None and not 1 <= mask_rank <= 4:
        return None
    # every tensor between the MatMuls must be used by the block alone
    inside = {o for n in nodes for o in n.output} - {pv.output[0]}
    members = {id(n) for n in nodes} | {id(pv)}
    if any(id(c) not in members for t in inside for c in consumers.get(t, [])):
        return None
    if any(t in {o.name for o in graph.output} for t in inside):
        return None
    return {"nodes": [*nodes, pv], "q": q, "k_t": k_t, "v": v, "mask": mask, "mask_rank": mask_rank, "scale": scale,
            "heads": heads, "head_dim": head_dim, "out": pv.output[0]}  # fmt: skip


def _scores(producer: dict, name: str, constants: dict[str, float]) -> bool:
    """Whether `name` is MatMul(q, kᵀ), possibly times a constant: the scores side of the mask's Add."""
    node = producer.get(name)
    if node is not None and node.op_type == "Mul" and any(i in constants for i in node.input):
        node = producer.get(next(i for i in node.input if i not in constants))
    return node is not None and node.op_type == "MatMul"


def _fused(block: dict, index: int) -> list[onnx.NodeProto]:
    """MultiHeadAttention on [batch, tokens, heads * head_dim] views of q, k, v; the output back in 4-D."""
    p = f"fused_attention_{index}_"
    heads, head_dim = block["heads"], block["head_dim"]
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [p + name], value=numpy_helper.from_array(np.array(values, np.int64), p + name))
    nodes = [
        const("flat", [0, 0, -1]),
        const("split", [0, 0, heads, head_dim]),
        helper.make_node("Transpose", [block["q"]], [p + "q_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [p + "q_t", p + "flat"], [p + "q"]),
        helper.make_node("Transpose", [block["k_t"]], [p + "k_t"], perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", [p + "k_t", p + "flat"], [p + "k"]),
        helper.make_node("Transpose", [block["v"]], [p + "v_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [p + "v_t", p + "flat"], [p + "v"]),
    ]
    bias = ""
    if block["mask"] is not None:  # [b|1, h|1, q|1, keys] (leading 1s may be left out) -> [b|1, h|1, q, keys]
        mask = block["mask"]
        if block["mask_rank"] < 4:
            nodes.append(const("lead", list(range(4 - block["mask_rank"]))))
            nodes.append(helper.make_node("Unsqueeze", [mask, p + "lead"], [p + "mask"]))
            mask = p + "mask"
        nodes += [
            const("ones", [1]),
            helper.make_node("Shape", [block["q"]], [p + "queries"], start=2, end=3),
            helper.make_node("Concat", [p + "ones", p + "ones", p + "queries", p + "ones"], [p + "bias_shape"], axis=0),
            helper.make_node("Expand", [mask, p + "bias_shape"], [p + "bias"]),
        ]
        bias = p + "bias"
    nodes += [
        helper.make_node(FUSED_OP, [p + "q", p + "k", p + "v", "", "", bias], [p + "out"], domain=FUSED_DOMAIN,
                         name=p + "mha", num_heads=heads, scale=block["scale"]),  # fmt: skip
        helper.make_node("Reshape", [p + "out", p + "split"], [p + "out4"]),
        helper.make_node("Transpose", [p + "out4"], [block["out"]], perm=[0, 2, 1, 3]),
    ]
    return nodes
