"""The paper's metrics: hand-computed cases, and pysodmetrics where it implements the same metric (to 1e-6)."""

import numpy as np
import pytest

from cseg.eval import metrics

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


# --- research mode: src/eval/metrics.py (cal_wfm, cal_sm) on the int32 masks evaluate_conceptseg.py passes -------


def _kernel_centre() -> float:
    """fspecial('gaussian', 7, 5) at its centre, from the formula: 1 / sum(exp(-(x^2 + y^2) / 50))."""
    return 1 / sum(np.exp(-(x * x + y * y) / 50) for x in range(-3, 4) for y in range(-3, 4))


def test_research_weighted_f_truncates_the_smoothed_error():
    gt = np.ones((10, 10), bool)  # no background: every weight is 1
    pred = gt.copy()
    pred[5, 5] = False  # one missed pixel: error 1 there, 0 elsewhere
    # float: the smoothed error at the miss is the kernel centre, below 1, so it replaces the error there
    recall = 1 - _kernel_centre() / 100
    precision = (100 - _kernel_centre()) / (100 - _kernel_centre() + metrics.EPS)
    expected = 2 * recall * precision / (recall + precision + metrics.EPS)
    assert metrics.weighted_f_measure(pred, gt) == pytest.approx(expected, abs=1e-12)
    # int32: the smoothed error truncates to 0 < 1, so the miss costs nothing: R = 1, TP = 100, eps 1e-6
    precision = 100 / (100 + 1e-6)
    assert metrics.weighted_f_measure(pred, gt, mode="research") == pytest.approx(2 * precision / (1e-6 + 1 + precision),
                                                                                abs=1e-12)  # fmt: skip


def _research_s(pred: np.ndarray, gt: np.ndarray) -> float:
    """The research S-measure written out from its definition: object term with population std and eps 1e-8,
    region term as area-weighted SSIM of the 4 quadrants around the rounded centroid (+1), variances ddof 0,
    covariance over N - 1, eps 1e-8, no clamp."""
    p, g = pred.astype(float), gt.astype(float)

    def similarity(values):
        return 2 * values.mean() / (values.mean() ** 2 + 1 + values.std() + 1e-8)

    share = g.mean()
    objects = share * similarity(p[gt]) + (1 - share) * similarity(1 - p[~gt])
    rows, cols = np.nonzero(gt)
    cy, cx = int(round(rows.mean())) + 1, int(round(cols.mean())) + 1
    regions = 0.0
    for r in (slice(0, cy), slice(cy, None)):
        for c in (slice(0, cx), slice(cx, None)):
            x, y = p[r, c], g[r, c]
            n = x.size
            cov = ((x - x.mean()) * (y - y.mean())).sum() / (n - 1)
            a = 4 * x.mean() * y.mean() * cov
            b = (x.mean() ** 2 + y.mean() ** 2) * (x.var() + y.var())
            regions += n / g.size * (a / (b + 1e-8) if a != 0 else float(b == 0))
    return 0.5 * objects + 0.5 * regions


def test_research_s_measure_uses_population_statistics():
    gt = np.zeros((8, 8), bool)
    gt[:, :4] = True
    pred = np.zeros((8, 8), bool)
    pred[:4, :4] = True  # half of the object found
    pred[6, 6] = True  # and one false pixel
    research = metrics.s_measure(pred, gt, mode="research")
    assert research == pytest.approx(_research_s(pred, gt), abs=1e-7)  # float32 ground truth in the script's SSIM
    assert abs(research - metrics.s_measure(pred, gt)) > 1e-4  # ddof 1 / eps differ in the toolkit definition


def test_research_s_measure_keeps_the_scripts_nan_for_an_empty_quadrant():
    gt = np.zeros((6, 6), bool)
    gt[:, 5] = True  # the object on the last column: centroid column 5, + 1 = 6 leaves the right quadrants empty
    assert np.isnan(metrics.s_measure(gt, gt, mode="research"))
    assert 0 <= metrics.s_measure(gt, gt) <= 1
