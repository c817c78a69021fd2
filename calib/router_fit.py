"""`cseg calib fit-router`: fit the learned Shortcut Router on calibration runs and install it into a bundle.

Every calibration sample is served both ways. It is labelled "shortcut suffices" when the shortcut mask is as good as
the full path's within a margin: measured against the ground truth where the sample has one (IoU(shortcut, GT) >=
IoU(full, GT) - margin), else against the full path's own mask (IoU(shortcut, full) >= 1 - margin). A class-balanced
logistic regression (scikit-learn) on standardised features is fitted on the calibration split; the operating
threshold is chosen on the held-out split for the user's budget (an IoU loss ceiling, or a skip-rate floor). The
seed heuristic is scored on the same held-out samples, next to it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cseg import prompting
from cseg.bundle.schema import file_sha256, read_manifest
from cseg.errors import InvalidInputError
from cseg.eval.metrics import iou
from cseg.images import load_frame, load_image
from cseg.runtime.router import FEATURES, features

ROUTER_FILE = "graphs/router.onnx"


@dataclass
class Observation:
    question: str
    features: np.ndarray  # [F]
    presence: float
    iou_shortcut: float  # against the reference (ground truth, or the full path's mask)
    iou_full: float
    shortcut_ms: float
    full_ms: float


def gather(runtime, items, max_new_tokens: int | None = None, progress=None) -> list[Observation]:
    """Serve every item both ways and keep what fitting needs."""
    observations = []
    for item in items:
        image = load_frame(str(item.image))
        size, timings = (image.height, image.width), {}
        started = time.perf_counter()
        state = runtime.image_state(image, timings)
        shortcut = runtime.sam3_segment(state, item.prompt, None, timings)
        short_mask, _ = runtime.postprocess(shortcut, size)
        shortcut_ms = (time.perf_counter() - started) * 1000
        presence = runtime.presence(shortcut)
        pending = runtime.prefill(state, item.prompt, item.demos, max_new_tokens, timings)
        row = features(pending.prefilled.hidden_states, pending.question_tokens, presence, shortcut.scores, item.prompt)
        reasoning = runtime.reason(state, item.prompt, item.demos, max_new_tokens, timings, pending=pending)
        full = runtime.sam3_segment(state, reasoning.parsed.answer, reasoning.concept_tokens, timings)
        full_mask, _ = runtime.postprocess(full, size)
        full_ms = (time.perf_counter() - started) * 1000
        if item.mask is not None:
            truth = load_image(str(item.mask)).convert("L").resize((size[1], size[0]))
            truth = np.asarray(truth) > 127
            ious = (iou(short_mask, truth), iou(full_mask, truth))
        else:
            ious = (iou(short_mask, full_mask), 1.0)
        observations.append(Observation(item.prompt, row[0], presence, *ious, shortcut_ms, full_ms))
        if progress:
            progress()
    return observations


def labels(observations: list[Observation], margin: float) -> np.ndarray:
    return np.array([o.iou_shortcut >= o.iou_full - margin for o in observations], dtype=int)


@dataclass
class FittedRouter:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1 / (1 + np.exp(-z))

    def onnx(self) -> onnx.ModelProto:
        """features [1, F] -> p_shortcut [1, 1]: standardise, linear, sigmoid."""
        f = self.weights.size
        inits = [numpy_helper.from_array(a.astype(np.float32), name) for a, name in (
            (self.mean[None], "mean"), (self.scale[None], "scale"), (self.weights[:, None], "weights"),
            (np.array([[self.bias]]), "bias"))]  # fmt: skip
        nodes = [
            helper.make_node("Sub", ["features", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["standard"]),
            helper.make_node("MatMul", ["standard", "weights"], ["linear"]),
            helper.make_node("Add", ["linear", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_shortcut"]),
        ]
        graph = helper.make_graph(nodes, "router", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, f])],
                                  [helper.make_tensor_value_info("p_shortcut", TensorProto.FLOAT, [1, 1])], inits)  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def fit(x: np.ndarray, y: np.ndarray, regularisation: float = 1.0) -> FittedRouter:
    """Class-balanced logistic regression on standardised features (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        kind = "suffices" if y.size and y[0] else "never suffices"
        raise InvalidInputError(
            f"every calibration sample says the shortcut {kind}: a router fitted on one class would be degenerate. "
            "Add samples of both kinds (or change --iou-margin)"
        )
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(class_weight="balanced", C=regularisation, max_iter=5000).fit((x - scaler.mean_) / scale, y)
    return FittedRouter(scaler.mean_, scale, model.coef_[0], float(model.intercept_[0]))


def choose_threshold(scores: np.ndarray, observations: list[Observation], max_iou_loss: float | None = None,
                     min_skip_rate: float | None = None) -> dict:  # fmt: skip
    """Threshold on p(shortcut) meeting the budget on these (held-out) samples, with the numbers it gives."""
    if (max_iou_loss is None) == (min_skip_rate is None):
        raise InvalidInputError("give exactly one budget: --max-iou-loss or --min-skip-rate")
    candidates = sorted(set(scores.tolist()) | {1.0 + 1e-6})
    results = [evaluate_decisions(scores >= t, observations) | {"threshold": float(t)} for t in candidates]
    if max_iou_loss is not None:
        feasible = [r for r in results if r["iou_loss"] <= max_iou_loss]
        return max(feasible, key=lambda r: (r["skip_rate"], -r["threshold"]))
    feasible = [r for r in results if r["skip_rate"] >= min_skip_rate] or [results[0]]
    return min(feasible, key=lambda r: (r["iou_loss"], -r["threshold"]))


def evaluate_decisions(skip: np.ndarray, observations: list[Observation], truth: np.ndarray | None = None) -> dict:
    chosen = np.where(skip, [o.iou_shortcut for o in observations], [o.iou_full for o in observations])
    full = np.array([o.iou_full for o in observations])
    saved = np.where(skip, [o.full_ms - o.shortcut_ms for o in observations], 0.0)
    out = {"skip_rate": float(skip.mean()), "iou_loss": float((full - chosen).mean()),
           "latency_saved_ms": float(saved.mean())}  # fmt: skip
    if truth is not None:
        out["accuracy"] = float((skip == truth.astype(bool)).mean())
    return out


def install(bundle: str | Path, router: FittedRouter, settings: dict) -> None:
    """Write graphs/router.onnx and the manifest's router section into `bundle` (manifest replaced atomically)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    path = bundle / ROUTER_FILE
    onnx.save(router.onnx(), str(path))
    width = router.weights.size
    manifest["graphs"]["router"] = {
        "file": ROUTER_FILE, "sha256": file_sha256(path), "backend": "onnxruntime", "precision": "fp32",
        "inputs": [{"name": "features", "dtype": "float32", "shape": [1, width]}],
        "outputs": [{"name": "p_shortcut", "dtype": "float32", "shape": [1, 1]}], "tolerances": {"": 1e-5},
    }  # fmt: skip
    manifest["router"] = {"kind": "learned", "features": list(FEATURES), "feature_width": width, **settings}
    manifest["files"][ROUTER_FILE] = manifest["graphs"]["router"]["sha256"]
    staging = bundle / "manifest.json.partial"
    staging.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(staging, bundle / "manifest.json")


def heuristic_decisions(observations: list[Observation]) -> np.ndarray:
    return np.array([prompting.shortcut_accepts(o.question, o.presence) for o in observations])


def fit_and_install(runtime, calibration, bundle: str | Path, *, budget: dict, iou_margin: float,
                    max_new_tokens: int | None = None, progress=None) -> dict:  # fmt: skip
    """The whole of `cseg calib fit-router`: serve every calibration sample both ways, fit on the calibration split,
    choose the threshold for `budget` ({"max_iou_loss": x} or {"min_skip_rate": x}) on the held-out split, install
    the router in `bundle`, and return the held-out numbers of the learned router and of the seed heuristic."""
    train, held = calibration.split()
    if not held:
        raise InvalidInputError("the calibration set needs at least 2 samples to fit and check a router")
    fitted_on = gather(runtime, train, max_new_tokens, progress)
    checked_on = gather(runtime, held, max_new_tokens, progress)
    router = fit(np.stack([o.features for o in fitted_on]), labels(fitted_on, iou_margin))
    scores = router.scores(np.stack([o.features for o in checked_on]))
    truth = labels(checked_on, iou_margin)
    chosen = choose_threshold(scores, checked_on, budget.get("max_iou_loss"), budget.get("min_skip_rate"))
    held_out = {"learned": evaluate_decisions(scores >= chosen["threshold"], checked_on, truth),
                "heuristic": evaluate_decisions(heuristic_decisions(checked_on), checked_on, truth)}  # fmt: skip
    install(bundle, router, {
        "threshold": chosen["threshold"], "iou_margin": iou_margin, "budget": budget,
        "calibration": {"sha256": calibration.sha256(), "fitted_on": len(fitted_on), "held_out": len(checked_on)},
        "held_out": held_out,
        "note": "on random-init checkpoints the labels are meaningless; the numbers show the machinery works",
    })  # fmt: skip
    return {"threshold": chosen["threshold"], **held_out}
