"""Tracing one GraphSpec to an ONNX file with the exporter its spec names."""

from __future__ import annotations

import contextlib
import logging
import inspect
import io
import warnings
from pathlib import Path

import torch

from cseg.errors import ExportError
from cseg.export import graph_cache
from cseg.export.graph_spec import GraphSpec

# The exporter logs a warning per torchvision operator it cannot register; cseg exports none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# ONNX files hold at most 2 GB; above this many parameter bytes the weights go to an external .data file.
EXTERNAL_DATA_BYTES = 1_500_000_000
EXPORT_SEED = 0


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def example_args(spec: GraphSpec, sizes: dict[str, int], seed: int) -> tuple[torch.Tensor, ...]:
    inputs = spec.make_inputs(sizes, torch.Generator().manual_seed(seed))
    return tuple(inputs[t.name] for t in spec.inputs)


def sizes_key(sizes: dict[str, int]) -> str:
    return ",".join(f"{axis}={size}" for axis, size in sorted(sizes.items()))


@contextlib.contextmanager
def flop_counter(module: torch.nn.Module):
    """PyTorch's FlopCounterMode around a no-grad call of `module` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    # the counter's module tracker hooks autograd on outputs that require grad, and fails on a module that returns a
    # parameter (the concept head's learnable queries): count with gradients off on the parameters
    trainable = [p for p in module.parameters() if p.requires_grad]
    try:
        for parameter in trainable:
            parameter.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def count_flops(spec: GraphSpec, counted: dict[str, int]) -> dict:
    """FLOPs of one call at the export sizes, which `cseg bench` sets against the measured time and machine peak.
    `counted`: what the parity check's forwards counted per validation size (check_parity); a forward of its own
    runs only when none was at the export sizes (the full-size SAM 3 image encoder's costs a minute or two here)."""
    count = counted.get(sizes_key(spec.export_sizes))
    if count is None:
        with flop_counter(spec.module) as counter:
            spec.module(*example_args(spec, spec.export_sizes, EXPORT_SEED))
        count = counter.get_total_flops()
    return {"count": int(count), "sizes": dict(spec.export_sizes)}


def _named_positional_count(module: torch.nn.Module) -> int:
    parameters = inspect.signature(module.forward).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def export_graph(spec: GraphSpec, path: Path, cached: list | None = None) -> list[Path]:
    """Export `spec` to `path`; returns the files written (the graph, plus external data when large). With
    CSEG_EXPORT_CACHE set, a graph traced before from the same module is copied instead (export/graph_cache.py) and
    its key appended to `cached` (what the exporter reports)."""
    args = example_args(spec, spec.export_sizes, EXPORT_SEED)
    key = graph_cache.entry_key(spec, args, path.name) if graph_cache.folder() is not None else None
    files = graph_cache.fetch(key, path) if key is not None else None
    if files is not None:
        if cached is not None:
            cached.append(spec.key)
        return files
    files = _trace(spec, path, args)
    if key is not None:
        graph_cache.store(key, files)
    return files


def _trace(spec: GraphSpec, path: Path, args: tuple) -> list[Path]:
    input_names = [t.name for t in spec.inputs]
    output_names = [t.name for t in spec.outputs]
    large = parameter_bytes(spec.module) > EXTERNAL_DATA_BYTES
    try:
        # the exporters' chatter goes to a buffer: failures raise with their cause, and parity is checked afterwards
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if spec.exporter == "dynamo":
                dynamic = [{i: torch.export.Dim.AUTO for i, d in enumerate(t.shape) if isinstance(d, str)}
                           for t in spec.inputs]  # fmt: skip
                named = _named_positional_count(spec.module)
                if len(dynamic) > named:  # forward(*args): torch.export wants the tail as one nested tuple
                    dynamic = dynamic[:named] + [tuple(dynamic[named:])]
                torch.onnx.export(
                    spec.module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
                    dynamic_shapes=tuple(dynamic), opset_version=spec.opset, external_data=large, verbose=False,
                    custom_translation_table=spec.translations or None,
                )  # fmt: skip
            elif spec.exporter == "torchscript":
                axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                        for t in spec.inputs + spec.outputs}  # fmt: skip
                torch.onnx.export(
                    spec.module, args, str(path), dynamo=False, input_names=input_names, output_names=output_names,
                    dynamic_axes={k: v for k, v in axes.items() if v}, opset_version=spec.opset,
                )  # fmt: skip
            else:
                raise ExportError(f"{spec.key}: unknown exporter {spec.exporter!r}")
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many types; the user needs the graph name and the cause
        raise ExportError(f"exporting {spec.key} with the {spec.exporter} exporter failed: {exc}") from exc
    data = Path(str(path) + ".data")
    return [path, data] if data.exists() else [path]
