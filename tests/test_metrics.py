"""The paper's metrics: hand-computed cases, and pysodmetrics where it implements the same metric (to 1e-6)."""

import numpy as np
import pytest

from cseg import metrics

PRED = np.array([[1, 0], [0, 0]], bool)
GT = np.array([[1, 1], [0, 0]], bool)


def test_hand_computed_two_by_two():
    assert metrics.giou_sample(PRED, GT) == pytest.approx(1 / 2, abs=1e-5)
    assert metrics.miou_seed(PRED, GT) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-5)  # fg 1/2, bg 2/3
    assert metrics.dice(PRED, GT) == pytest.approx(2 / 3, abs=1e-5)
    assert metrics.mae(PRED, GT) == 0.25
    assert metrics.ber(PRED, GT) == pytest.approx(0.25)  # TPR 1/2, TNR 1
    assert metrics.intersection_union(PRED, GT) == (1, 2)


def test_empty_and_perfect_masks():
    empty = np.zeros((4, 4), bool)
    assert metrics.giou_sample(empty, empty) == 1.0  # ReasonSeg: no object, none predicted
    assert metrics.miou_seed(empty, empty) == 1.0 and metrics.dice(empty, empty) == 1.0
    assert metrics.weighted_f_measure(PRED, np.zeros((2, 2), bool)) == 0.0
    assert metrics.s_measure(PRED, np.zeros((2, 2), bool)) == pytest.approx(1 - 0.25)  # 1 - mean(pred), no object
    full = np.ones((4, 4), bool)
    assert metrics.e_measure(full, full) == pytest.approx(16 / 15)  # sum of ones / (N - 1), as the original
    shape = np.zeros((12, 12), bool)
    shape[3:9, 2:7] = True
    assert metrics.s_measure(shape, shape) == pytest.approx(1.0, abs=1e-6)
    assert metrics.weighted_f_measure(shape, shape) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ber(shape, shape) == pytest.approx(0.0, abs=1e-6)


def test_summary_pools_intersections_for_ciou():
    samples = [metrics.score_sample(PRED, GT), metrics.score_sample(GT, GT)]
    summary = metrics.summarize(samples)
    assert summary["cIoU"] == pytest.approx((1 + 2) / (2 + 2))
    assert summary["gIoU"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-5) and summary["count"] == 2
    assert set(metrics.METRIC_KEYS) <= set(summary)


def _cases():
    from skimage import data, filters

    rng = np.random.default_rng(0)
    for trial in range(16):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        gt, pred = rng.random((h, w)) > rng.random(), rng.random((h, w)) > rng.random()
        yield f"random-{trial}", pred, gt
    for name in ("camera", "coins", "moon"):
        image = getattr(data, name)()[::4, ::4]
        level = filters.threshold_otsu(image)
        yield f"{name}-photo", image > level * 0.85, image > level
    gt = np.zeros((30, 40), bool)
    gt[5:20, 10:30] = True
    yield "no-object", np.zeros_like(gt), np.zeros_like(gt)
    yield "all-object", np.ones_like(gt), np.ones_like(gt)
    yield "missed", np.zeros_like(gt), gt


@pytest.mark.parametrize("name, ours, theirs, key", [
    ("Sm", metrics.s_measure, "Smeasure", ("sm",)),
    ("Em", metrics.e_measure, "Emeasure", ("em", "adp")),
    ("wFm", metrics.weighted_f_measure, "WeightedFmeasure", ("wfm",)),
    ("MAE", metrics.mae, "MAE", ("mae",)),
])  # fmt: skip
def test_against_pysodmetrics(name, ours, theirs, key):
    import py_sod_metrics as sod  # a test dependency (pyproject [test])
    for case, pred, gt in _cases():
        metric = getattr(sod, theirs)()
        metric.step(pred.astype(np.float64), gt, normalize=False)
        want = metric.get_results()
        for k in key:
            want = want[k]
        assert ours(pred, gt) == pytest.approx(float(want), abs=1e-6), case


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one size"):
        metrics.dice(np.zeros((2, 3)), np.zeros((3, 2)))
