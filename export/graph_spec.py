"""The declarative description of one exported sub-graph, shared by the exporter, the parity check and the manifest.

Each sub-graph lives in its own small module under export/graphs/ and returns a GraphSpec: the wrapper module, the
named inputs and outputs with their dynamic axes, how to make example inputs for any axis sizes, the exporter and
opset, per-output tolerances, and the layers that must stay fp32 when a lower precision is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Max-abs error allowed, as a fraction of the output's scale (max |reference|, at least 1): fp32 export vs PyTorch.
DEFAULT_FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, bool
    shape: tuple[int | str, ...]  # a string is a named dynamic axis

    def as_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Ranking:
    """Outputs whose rows (axis 1) come sorted by a score output, best first: a top-K selection inside the graph.

    Rows whose scores tie within the scores' tolerance have no defined order (ONNX Runtime and PyTorch may sort them
    either way), so the parity check matches such rows before comparing them (export/parity.py). `every_row` is the
    same forward with every candidate ranked, not only the best K: a row that ties with the K-th can take its place.
    """

    scores: str  # the sorted score output, [batch, K]
    rows: tuple[str, ...]  # every output whose axis 1 follows the scores' order, the scores included
    every_row: torch.nn.Module  # the parity check's reference forward: the same outputs, all candidates in order

    def as_json(self) -> dict:
        return {"scores": self.scores, "rows": list(self.rows),
                "ties": "rows whose scores differ by at most twice the scores' allowed error are matched by content"}


@dataclass
class GraphSpec:
    key: str
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # axis sizes -> example inputs by name; called with the export sizes and again with other sizes for validation
    make_inputs: Callable[[dict[str, int], torch.Generator], dict[str, torch.Tensor]]
    export_sizes: dict[str, int]
    validation_sizes: list[dict[str, int]]
    exporter: str = "dynamo"  # or "torchscript"
    opset: int = 18
    tolerances: dict[str, float] = field(default_factory=lambda: {"": DEFAULT_FP32_TOLERANCE})
    keep_fp32: tuple[str, ...] = ()  # name patterns of layers that stay fp32 in fp16/int8 builds
    axis_bounds: dict[str, tuple[int, int]] = field(default_factory=dict)  # min/max per dynamic axis
    notes: str = ""
    translations: dict = field(default_factory=dict)  # custom operator -> its ONNX form (the dynamo exporter's table)
    manifest: dict = field(default_factory=dict)  # what the runtime must know beyond inputs and outputs
    ranking: Ranking | None = None  # top-K outputs, compared up to the order of tied rows

    @property
    def reference(self) -> torch.nn.Module:
        """The forward the parity check compares against: every ranked row where outputs are a top-K."""
        return self.ranking.every_row if self.ranking is not None else self.module

    def tolerance(self, output: str) -> float:
        return self.tolerances.get(output, self.tolerances[""])

    def manifest_entry(self) -> dict:
        return {
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
            "exporter": self.exporter,
            "opset": self.opset,
            "tolerances": dict(self.tolerances),
            "keep_fp32": list(self.keep_fp32),
            "axis_bounds": {k: list(v) for k, v in self.axis_bounds.items()},
            "notes": self.notes,
            **({"ranking": self.ranking.as_json()} if self.ranking is not None else {}),
            **self.manifest,
        }
