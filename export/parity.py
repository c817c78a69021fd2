"""Checking an exported graph against its PyTorch module before it is written into a bundle.

Order (optimum's): output names, then shapes, then values. Inputs are fresh (other seeds than the trace) and use
other sizes for every dynamic axis, so a shape baked in at trace time fails here, not in the field.
A value passes when max |onnx - torch| <= tolerance * max(1, max |torch|): the tolerance is relative to the
output's scale, per output (GraphSpec.tolerances).

Top-K outputs (GraphSpec.ranking) are compared up to the order of tied rows. Two rows whose scores differ by less
than the two sides' rounding may come out in either order: on a tiny SAM 3 (seed 6161) instances 7 and 8 scored
0.25731248 and 0.25731245 in PyTorch, ONNX Runtime sorted them the other way, and a positional comparison saw their
boxes differ by 0.009 (masks by 0.23) in a correct graph. So the reference ranks every candidate row, its rows are
grouped where consecutive scores differ by at most twice the scores' allowed error (closer ones may swap, farther
ones cannot while both sides are within tolerance), and inside each group the exported rows are matched to reference
rows by content (linear_sum_assignment on the worst per-output difference over scores, boxes and masks together);
a group that reaches the K-th row also offers the reference's rows past K that tie with it. Then every output is
compared at its stated tolerance as before. The check stays sharp: a row can only be matched to a reference row
whose score ties with it, and it must then match that row in every ranked output at once.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from scipy.optimize import linear_sum_assignment

from cseg.errors import OutputNameError, OutputShapeError, ParityError
from cseg.export.graph_spec import GraphSpec
from cseg.export.onnx_export import example_args, flop_counter, sizes_key

VALIDATION_SEED = 1000
TIE_FACTOR = 2.0  # scores closer than this many allowed errors may be ordered either way by a correct graph


def check_parity(spec: GraphSpec, onnx_path, flops: dict[str, int] | None = None) -> dict[str, dict]:
    """Per output: worst max_abs and mean_abs over the validation inputs, with the tolerance applied. `flops`, when
    given, receives the FLOPs of each reference forward by its sizes (sizes_key): the manifest's count reuses them.
    Ranked outputs also report `reordered`: the most rows matched off their position in one validation case."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected_names = [t.name for t in spec.outputs]
    got_names = [o.name for o in session.get_outputs()]
    if got_names != expected_names:
        raise OutputNameError(f"{spec.key}: the exported graph has outputs {got_names}, the spec {expected_names}")
    accepted = {i.name for i in session.get_inputs()}  # the torchscript exporter prunes unused inputs
    report = {name: {"max_abs": 0.0, "mean_abs": 0.0, "scale": 0.0} for name in expected_names}
    ranked = spec.ranking.rows if spec.ranking is not None else ()
    for case, sizes in enumerate(spec.validation_sizes):
        args = example_args(spec, sizes, VALIDATION_SEED + case)
        with flop_counter(spec.reference) if flops is not None else torch.no_grad() as counter:
            reference = spec.reference(*args)
        if flops is not None:
            flops[sizes_key(sizes)] = counter.get_total_flops()
        reference = [reference] if isinstance(reference, torch.Tensor) else list(reference)
        want = {n: w.float().numpy() if w.is_floating_point() else w.numpy() for n, w in zip(expected_names, reference)}
        feed = {t.name: a.numpy() for t, a in zip(spec.inputs, args) if t.name in accepted}
        got = dict(zip(expected_names, session.run(expected_names, feed)))
        for t in spec.outputs:
            shape = want[t.name].shape
            if t.name in ranked and len(shape) > 1 and isinstance(t.shape[1], int):
                shape = (shape[0], min(t.shape[1], shape[1]), *shape[2:])  # the reference ranks every candidate
            if got[t.name].shape != shape:
                raise OutputShapeError(f"{spec.key}.{t.name}: shape {got[t.name].shape} from ONNX Runtime, {shape} "
                                       f"from PyTorch (sizes {sizes})")  # fmt: skip
        if ranked:
            allowed = {n: spec.tolerance(n) * max(1.0, _scale(want[n])) for n in ranked}
            index = match_ranked_rows(want, got, spec.ranking.scores, ranked, allowed)
            for name in ranked:
                want[name] = np.stack([want[name][b, index[b]] for b in range(len(index))])
                moved = int((index != np.arange(index.shape[1])).sum())
                report[name]["reordered"] = max(report[name].get("reordered", 0), moved)
        for name in expected_names:
            diff = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64))
            entry = report[name]
            entry["max_abs"] = max(entry["max_abs"], float(diff.max()) if diff.size else 0.0)
            entry["mean_abs"] = max(entry["mean_abs"], float(diff.mean()) if diff.size else 0.0)
            entry["scale"] = max(entry["scale"], _scale(want[name]))
    failures = []
    for name, entry in report.items():
        entry["tolerance"] = spec.tolerance(name) * max(1.0, entry["scale"])
        if entry["max_abs"] > entry["tolerance"]:
            failures.append(
                f"{spec.key}.{name}: ONNX Runtime differs from PyTorch by max {entry['max_abs']:.3g} "
                f"(mean {entry['mean_abs']:.3g}), allowed {entry['tolerance']:.3g} "
                f"({spec.tolerance(name):g} x scale {entry['scale']:.3g})"
                + (f" after matching {entry['reordered']} tied rows" if entry.get("reordered") else "")
            )
    if failures:  # every failing output, so that a broken graph shows all it breaks
        raise ParityError("; ".join(failures))
    return report


def _scale(array: np.ndarray) -> float:
    return float(np.abs(array).max()) if array.size else 0.0


def tie_groups(scores: np.ndarray, tie: float) -> list[range]:
    """Consecutive runs of a best-first score vector where each score is within `tie` of the one before it."""
    groups, start = [], 0
    for i in range(1, len(scores) + 1):
        if i == len(scores) or abs(float(scores[i - 1]) - float(scores[i])) > tie:
            groups.append(range(start, i))
            start = i
    return groups


def match_ranked_rows(want: dict, got: dict, scores: str, rows, allowed: dict[str, float]) -> np.ndarray:
    """For each batch item b and exported row k, the reference row index[b, k] it is compared with.

    `want` holds the reference's ranked outputs with every candidate row (best first, N rows), `got` the exported
    graph's K <= N rows; `allowed` the max-abs error allowed per output. Rows pair positionally except inside groups
    of tied reference scores (within TIE_FACTOR x the scores' allowed error), where exported rows are assigned to
    the group's reference rows by minimal total cost, a pair's cost being its worst difference over `rows` in units
    of each output's allowed error. The pairs are then compared at the tolerances by the caller: matching never
    passes a row, it only decides which reference row it must equal."""
    tie = TIE_FACTOR * allowed[scores]
    batch, count = got[scores].shape[:2]
    index = np.tile(np.arange(count), (batch, 1))
    for b in range(batch):
        for group in tie_groups(want[scores][b], tie):
            if group.start >= count:
                break
            exported = np.arange(group.start, min(group.stop, count))
            if len(group) == 1:
                continue
            candidates = np.arange(group.start, group.stop)
            cost = np.zeros((len(exported), len(candidates)))
            for name in rows:
                theirs = want[name][b, candidates].reshape(len(candidates), -1).astype(np.float64)
                unit = max(allowed[name], np.finfo(np.float64).tiny)
                for i, row in enumerate(exported):  # one row at a time: masks are large
                    mine = got[name][b, row].reshape(1, -1).astype(np.float64)
                    if mine.size:
                        cost[i] = np.maximum(cost[i], np.abs(mine - theirs).max(axis=1) / unit)
            chosen, partner = linear_sum_assignment(cost)
            index[b, exported[chosen]] = candidates[partner]
    return index
