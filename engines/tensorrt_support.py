"""A static check of a GPU target's graphs against the ONNX operators its TensorRT versions document.

TensorRT cannot run on the workstation, so a graph TensorRT's ONNX parser cannot import would otherwise be found only
by `cseg build` on the device. This reads the final ONNX (after fp16/QDQ/int4 conversion, what trtexec parses) and
compares its operators (with domains), data types and opset with onnx-tensorrt's published operator matrix, kept as
data in onnx_tensorrt_support.json (its "comment" names the source). It is not a TensorRT parse: the matrix's
per-attribute restrictions (Resize modes, `axes` that must be constants, ...) are not checked.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import onnx

from cseg.errors import ExportError

SOURCE = "onnx/onnx-tensorrt docs/operators.md"
# The matrix each TensorRT version a target names is checked against. 10.16: the newest matrix published is 10.15's,
# and TensorRT adds operators from release to release, so what 10.15 documents 10.16 parses. 10.x (a workstation
# with whatever TensorRT 10 pip installs): the 10.3 matrix, the smaller one, so the graphs parse on 10.3 and later.
TABLE_FOR_VERSION = {"10.3": "10.3", "10.16": "10.15", "10.x": "10.3"}
_ONNX_DOMAINS = ("", "ai.onnx")


@functools.cache
def _table(name: str) -> dict:
    return json.loads(Path(__file__).with_name("onnx_tensorrt_support.json").read_text())["tables"][name]


def check_graph(model: onnx.ModelProto, version: str) -> dict:
    """What `model` uses, and what of it the matrix for TensorRT `version` does not list (an empty list: all of it)."""
    return _judge(_usage(model), version)


def _usage(model: onnx.ModelProto) -> tuple[int, set, set]:
    """The opset, the (domain, operator, data type) of every node, and every tensor data type of `model`.

    An operator's data type is that of its first input (its first output when it has none): for most rows the tensor
    the matrix's "Supported Types" column describes (for DequantizeLinear the quantized input, for Cast the source).
    """
    # the dtypes of intermediate tensors, inferred afresh: converters (float16, QDQ) can leave value_info behind that
    # no longer matches the tensors, and ONNX's inference refuses a conflict even in its non-strict mode
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    opset = max((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), default=0)
    used, dtypes = set(), set()
    _collect(model.graph, functions, used, dtypes, {})
    return opset, used, dtypes


def _judge(usage: tuple[int, set, set], version: str) -> dict:
    opset, used, dtypes = usage
    table = _table(TABLE_FOR_VERSION[version])
    unsupported = []
    for domain, op, dtype in sorted(used, key=lambda u: (u[0], u[1], u[2] or "")):
        if domain not in _ONNX_DOMAINS:
            entry = f"{domain}:{op} (no TensorRT importer for domain {domain}; it would need a plugin)"
        elif table["ops"].get(op) is None:
            entry = f"{op} ({'not in the matrix' if op not in table['ops'] else 'marked unsupported'})"
        elif dtype is not None and dtype not in table["ops"][op] + table["widened"].get(op, {}).get("dtypes", []):
            entry = f"{op} on {dtype} (listed for {', '.join(table['ops'][op])})"
        else:
            continue
        if entry not in unsupported:
            unsupported.append(entry)
    unsupported += [f"data type {d}" for d in sorted(dtypes - set(table["dtypes"]))]
    if opset < table["opsets"][0]:
        unsupported.append(f"opset {opset} (the matrix starts at {table['opsets'][0]})")
    # an opset above the matrix's range is recorded, not refused: the parser imports by operator name and refuses
    # only opsets below 7 (ModelImporter.cpp), and INT4 DequantizeLinear, which the matrix lists, needs opset 21
    return {"opset": opset, "ops": len({(d, o) for d, o, _ in used}), "dtypes": sorted(dtypes),
            "unsupported": unsupported}  # fmt: skip


def _collect(graph: onnx.GraphProto, functions: dict, used: set, dtypes: set, outer: dict) -> None:
    """(domain, op, dtype) of every node of `graph`, its subgraphs (If/Loop/Scan bodies) and the local functions it
    calls (the parser inlines those), and every tensor data type."""
    types = dict(outer)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in graph.initializer})
    dtypes.update(onnx.TensorProto.DataType.Name(t) for t in types.values() if t)
    for node in graph.node:
        if (node.domain, node.op_type) in functions:
            _collect(onnx.helper.make_graph(functions[node.domain, node.op_type].node, "f", [], []), functions, used,
                     dtypes, {})  # fmt: skip
            continue
        first = next((name for name in [*node.input, *node.output] if name), None)
        dtype = onnx.TensorProto.DataType.Name(types[first]) if types.get(first) else None
        used.add((node.domain, node.op_type, dtype))
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                _collect(sub, functions, used, dtypes, types)


def check_bundle(staging: Path, manifest: dict, versions, allow: bool, report) -> dict:
    """The manifest's `tensorrt_support` section for the converted graphs in `staging`. Graphs that use what one of
    `versions` does not support are an ExportError naming each graph, what it uses and the version (with `allow`:
    a warning, and recorded)."""
    graphs, problems = {}, []
    for key, entry in manifest["graphs"].items():
        model = onnx.load(str(staging / entry["file"]), load_external_data=False)  # weights are not needed
        usage = _usage(model)
        results = {version: _judge(usage, version) for version in versions}
        first = next(iter(results.values()))
        graphs[key] = {"opset": first["opset"], "ops": first["ops"], "dtypes": first["dtypes"],
                       "unsupported": {version: r["unsupported"] for version, r in results.items()}}  # fmt: skip
        problems += [f"graph {key} ({entry['precision']}) on TensorRT {version}: {'; '.join(r['unsupported'])}"
                     for version, r in results.items() if r["unsupported"]]  # fmt: skip
    if problems:
        message = (f"the converted graphs use what the target's TensorRT does not support according to {SOURCE}: "
                   + " | ".join(problems) + ". `cseg build` would fail on the device.")  # fmt: skip
        if not allow:
            raise ExportError(message + " Export another --precision for this target (or --target cpu); "
                              "--allow-unsupported-ops exports anyway (a plugin of your own, or a TensorRT that "
                              "supports it: the check reads the published matrix, it does not run TensorRT).")
        report(f"WARNING: {message} Exporting anyway (--allow-unsupported-ops).")
    return {"source": SOURCE, "versions": {v: TABLE_FOR_VERSION[v] for v in versions}, "graphs": graphs}
