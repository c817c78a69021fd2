"""Checking an exported graph against its PyTorch module before it is written into a bundle.

Order (optimum's): output names, then shapes, then values. Inputs are fresh (other seeds than the trace) and use
other sizes for every dynamic axis, so a shape baked in at trace time fails here, not in the field.
A value passes when max |onnx - torch| <= tolerance * max(1, max |torch|): the tolerance is relative to the
output's scale, per output (GraphSpec.tolerances).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from cseg.errors import OutputNameError, OutputShapeError, ParityError
from cseg.export.graph_spec import GraphSpec
from cseg.export.onnx_export import example_args, flop_counter, sizes_key

VALIDATION_SEED = 1000


def check_parity(spec: GraphSpec, onnx_path, flops: dict[str, int] | None = None) -> dict[str, dict]:
    """Per output: worst max_abs and mean_abs over the validation inputs, with the tolerance applied. `flops`, when
    given, receives the FLOPs of each reference forward by its sizes (sizes_key): the manifest's count reuses them."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected_names = [t.name for t in spec.outputs]
    got_names = [o.name for o in session.get_outputs()]
    if got_names != expected_names:
        raise OutputNameError(f"{spec.key}: the exported graph has outputs {got_names}, the spec {expected_names}")
    accepted = {i.name for i in session.get_inputs()}  # the torchscript exporter prunes unused inputs
    report = {name: {"max_abs": 0.0, "mean_abs": 0.0, "scale": 0.0} for name in expected_names}
    for case, sizes in enumerate(spec.validation_sizes):
        args = example_args(spec, sizes, VALIDATION_SEED + case)
        with flop_counter(spec.module) if flops is not None else torch.no_grad() as counter:
            reference = spec.module(*args)
        if flops is not None:
            flops[sizes_key(sizes)] = counter.get_total_flops()
        reference = [reference] if isinstance(reference, torch.Tensor) else list(reference)
        feed = {t.name: a.numpy() for t, a in zip(spec.inputs, args) if t.name in accepted}
        outputs = session.run(expected_names, feed)
        for name, want, got in zip(expected_names, reference, outputs):
            want = want.float().numpy() if want.is_floating_point() else want.numpy()
            if got.shape != want.shape:
                raise OutputShapeError(
                    f"{spec.key}.{name}: shape {got.shape} from ONNX Runtime, {want.shape} from PyTorch (sizes {sizes})"
                )
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            entry = report[name]
            entry["max_abs"] = max(entry["max_abs"], float(diff.max()) if diff.size else 0.0)
            entry["mean_abs"] = max(entry["mean_abs"], float(diff.mean()) if diff.size else 0.0)
            entry["scale"] = max(entry["scale"], float(np.abs(want).max()) if want.size else 0.0)
    for name, entry in report.items():
        entry["tolerance"] = spec.tolerance(name) * max(1.0, entry["scale"])
        if entry["max_abs"] > entry["tolerance"]:
            raise ParityError(
                f"{spec.key}.{name}: ONNX Runtime differs from PyTorch by max {entry['max_abs']:.3g} "
                f"(mean {entry['mean_abs']:.3g}), allowed {entry['tolerance']:.3g} "
                f"({spec.tolerance(name):g} x scale {entry['scale']:.3g})"
            )
    return report
