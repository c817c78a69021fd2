"""The learned Shortcut Router: fitting, its ONNX head, the threshold search, refusals, and the loop end to end.

On tiny random-init checkpoints the labels are meaningless: these tests check the machinery.
"""

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from cseg.calib import router_fit
from cseg.calib.router_fit import Observation
from cseg.errors import InvalidInputError


def _synthetic(n=400, f=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 20, f) + rng.uniform(-5, 5, f)
    w = rng.normal(size=f)
    y = (((x - x.mean(0)) / x.std(0)) @ w > 0.3).astype(int)
    return x, y, w


def test_fitting_recovers_a_known_rule():
    x, y, w = _synthetic()
    router = router_fit.fit(x[:300], y[:300])
    predicted = router.scores(x[300:]) >= 0.5
    assert (predicted == y[300:]).mean() >= 0.95
    cosine = router.weights @ w / np.linalg.norm(router.weights) / np.linalg.norm(w)
    assert cosine > 0.9


def test_onnx_head_gives_the_fitted_scores():
    x, y, _ = _synthetic()
    router = router_fit.fit(x, y)
    session = ort.InferenceSession(router.onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"features": row[None].astype(np.float32)})[0][0] for row in x[:50]])
    assert np.abs(got - router.scores(x[:50])).max() <= 1e-5


def _observations(n=60, seed=1):
    rng = np.random.default_rng(seed)
    return [Observation("q", np.zeros(1), 0.5, float(s), float(f), 10.0, 100.0)
            for s, f in zip(rng.uniform(0.3, 1.0, n), rng.uniform(0.8, 1.0, n))]  # fmt: skip


def test_threshold_search_meets_the_budget_on_held_out_samples():
    observations = _observations()
    scores = np.array([o.iou_shortcut for o in observations]) + np.random.default_rng(2).normal(0, 0.05, 60)
    for budget in (0.0, 0.02, 0.1):
        chosen = router_fit.choose_threshold(scores, observations, max_iou_loss=budget)
        assert chosen["iou_loss"] <= budget
        check = router_fit.evaluate_decisions(scores >= chosen["threshold"], observations)
        assert check["iou_loss"] == pytest.approx(chosen["iou_loss"])
    floor = router_fit.choose_threshold(scores, observations, min_skip_rate=0.5)
    assert floor["skip_rate"] >= 0.5 and floor["latency_saved_ms"] > 0
    with pytest.raises(InvalidInputError, match="exactly one budget"):
        router_fit.choose_threshold(scores, observations)


def test_one_class_calibration_sets_are_refused():
    with pytest.raises(InvalidInputError, match="one class would be degenerate"):
        router_fit.fit(np.random.default_rng(0).normal(size=(10, 3)), np.ones(10, int))


def test_the_whole_loop_runs_on_a_tiny_bundle(runtime, tiny_bundle, calibration_folder, tmp_path, photo):
    from cseg.calib.calibration_set import load
    from cseg.runtime import Runtime

    items = load(calibration_folder).items
    observations = router_fit.gather(runtime, items, max_new_tokens=4)
    assert len(observations) == 4 and all(o.features.shape == (runtime.model["hidden_size"] + 5,) for o in observations)
    gaps = sorted(1 - o.iou_shortcut for o in observations)  # random weights: pick a margin that splits the set
    margin = (gaps[1] + gaps[2]) / 2
    y = router_fit.labels(observations, margin)
    fitted = router_fit.fit(np.stack([o.features for o in observations[:3]] + [observations[3].features]), y)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    router_fit.install(bundle, fitted, {"threshold": 0.5, "iou_margin": margin})
    served = Runtime.open(bundle)
    result = served.segment(photo, "the helmet", max_new_tokens=3)
    assert result.route_by == "learned" and 0.0 <= result.route_score <= 1.0 and "router" in result.timings
    expected = "shortcut" if result.route_score >= 0.5 else "full"
    assert result.route == expected
    assert served.segment(photo, "the helmet", route="full", max_new_tokens=3).route_by == "user"
    assert runtime.segment(photo, "the helmet", max_new_tokens=3).route_by == "heuristic"  # no router: the seed rule
