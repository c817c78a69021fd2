"""Segmentation metrics of the ConceptSeg-R1 paper, on binary masks (numpy + scipy.ndimage).

Definitions:
- gIoU / cIoU (ReasonSeg, LISA's evaluation): per sample I / (U + 1e-5), counted as 1 when both masks are empty;
  gIoU is their mean, cIoU = sum(I) / sum(U) over the dataset.
- mIoU as the seed evaluates it: per sample (IoU_foreground + IoU_background) / 2, each (I + 1e-5) / (U + 1e-5).
- Dice (2 I + 1e-5) / (|P| + |G| + 1e-5); MAE mean |P - G|; BER 1 - (TPR + TNR) / 2.
- S-measure (Fan et al., ICCV 2017, alpha = 0.5), adaptive E-measure (Fan et al., IJCAI 2018, threshold
  min(2 mean(P), 1)), weighted F-measure (Margolin et al., CVPR 2014, beta = 1, 7x7 Gaussian of sigma 5), with
  the conventions of the MATLAB originals that pysodmetrics also follows (tests compare with it to 1e-6).

Two modes (`MODES`): "toolkit" is the above; "research" reproduces the numbers of the research evaluation script
(src/eval/evaluate_conceptseg.py calling src/eval/metrics.py's cal_wfm / cal_sm on the int32 masks it makes):
- F^w on int32 masks: the error map is int32, so scipy's `convolve` returns the Gaussian-smoothed error as int32
  (truncated: 0 unless every pixel of the 7x7 window errs), which keeps more of the foreground errors un-smoothed
  than the float definition; eps 1e-6.
- S-measure with population standard deviations and variances (ddof 0; the covariance still divides by N - 1),
  eps 1e-8, no clamp at 0, and a quadrant left empty by the centroid (object on the last row or column) gives NaN
  as the script's numpy does.
Every other metric is the same in both modes (the script's MAE, Dice, IoU_f/IoU_b, BER are the definitions above;
it reports no E-measure, so "Em" stays the toolkit's).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EPS = np.spacing(1)
MODES = ("toolkit", "research")
RESEARCH_EPS_WFM = 1e-6  # cal_wfm.eps
RESEARCH_EPS_SM = 1e-8  # cal_sm's constants
METRIC_KEYS = ("gIoU", "cIoU", "mIoU", "wFm", "Sm", "Em", "MAE", "Dice", "BER")


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be 2-D masks of one size")
    return pred, gt


def intersection_union(pred, gt) -> tuple[int, int]:
    pred, gt = _check(pred, gt)
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def iou(pred, gt) -> float:
    """Plain IoU of two masks, 1 when both are empty (agreement between two predictions, not a paper metric)."""
    intersection, union = intersection_union(pred, gt)
    return 1.0 if union == 0 else intersection / union


def giou_sample(pred, gt) -> float:
    intersection, union = intersection_union(pred, gt)
    return 1.0 if union == 0 else intersection / (union + 1e-5)


def miou_seed(pred, gt, smooth: float = 1e-5) -> float:
    pred, gt = _check(pred, gt)
    foreground = (np.logical_and(pred, gt).sum() + smooth) / (np.logical_or(pred, gt).sum() + smooth)
    background = (np.logical_and(~pred, ~gt).sum() + smooth) / (np.logical_or(~pred, ~gt).sum() + smooth)
    return float(foreground + background) / 2


def dice(pred, gt, smooth: float = 1e-5) -> float:
    pred, gt = _check(pred, gt)
    return float((2 * np.logical_and(pred, gt).sum() + smooth) / (pred.sum() + gt.sum() + smooth))


def mae(pred, gt) -> float:
    pred, gt = _check(pred, gt)
    return float(np.mean(pred != gt))


def ber(pred, gt) -> float:
    pred, gt = _check(pred, gt)
    positives, negatives = gt.sum(), (~gt).sum()
    tpr = np.logical_and(pred, gt).sum() / (positives + 1e-8)
    tnr = np.logical_and(~pred, ~gt).sum() / (negatives + 1e-8)
    return float(1 - (tpr + tnr) / 2)


# --- S-measure --------------------------------------------------------------------------------------------------


def _object_similarity(values: np.ndarray, research: bool) -> float:
    mean = values.mean()
    if research:  # cal_sm.s_object: np.std (ddof 0), eps 1e-8
        return 2 * mean / (mean**2 + 1 + values.std() + RESEARCH_EPS_SM)
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + spread + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray, research: bool) -> float:
    n = pred.size
    mx, my = pred.mean(), gt.mean()
    if research:  # cal_sm.ssim: np.var (ddof 0), covariance over N - 1, eps 1e-8
        vx, vy, eps = pred.var(), gt.var(), RESEARCH_EPS_SM
        cov = ((pred - mx) * (gt - my)).sum() / (n - 1)
    else:
        vx = ((pred - mx) ** 2).sum() / (n - 1 + EPS)
        vy = ((gt - my) ** 2).sum() / (n - 1 + EPS)
        cov, eps = ((pred - mx) * (gt - my)).sum() / (n - 1 + EPS), EPS
    alpha = 4 * mx * my * cov
    beta = (mx**2 + my**2) * (vx + vy)
    if alpha != 0:
        return alpha / (beta + eps)
    return 1.0 if beta == 0 else 0.0


def s_measure(pred, gt, alpha: float = 0.5, mode: str = "toolkit") -> float:
    pred, gt = _check(pred, gt)
    research = mode == "research"
    p = pred.astype(np.int32 if research else np.float64)  # the script's int32 prediction
    share = gt.mean()
    if share == 0:
        return float(1 - p.mean())
    if share == 1:
        return float(p.mean())
    objects = share * _object_similarity(p[gt], research) + (1 - share) * _object_similarity(1 - p[~gt], research)
    height, width = gt.shape
    # quadrants around the foreground centroid; +1 as MATLAB's 1:X includes X
    cy, cx = (int(v) + 1 for v in np.argwhere(gt).mean(axis=0).round())
    g = gt.astype(np.float32 if research else np.float64)  # cal_sm.ssim: np.float32(gt)
    regions = 0.0
    for rows, cols in ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, width)),
                       (slice(cy, height), slice(0, cx)), (slice(cy, height), slice(cx, width))):  # fmt: skip
        part = p[rows, cols]
        if research:  # an empty quadrant's SSIM is NaN there (numpy's mean of nothing), weighted by 0
            with np.errstate(invalid="ignore", divide="ignore"):
                regions += part.size / gt.size * _ssim(part, g[rows, cols], True) if part.size else float("nan")
        elif part.size:
            regions += part.size / gt.size * _ssim(part, g[rows, cols], False)
    score = alpha * objects + (1 - alpha) * regions
    return float(score if research else max(0.0, score))


# --- E-measure (adaptive threshold) -----------------------------------------------------------------------------


def e_measure(pred, gt) -> float:
    pred, gt = _check(pred, gt)
    p = pred.astype(np.float64)
    foreground = p >= min(2 * p.mean(), 1.0)
    if not gt.any():
        enhanced = 1.0 - foreground
    elif gt.all():
        enhanced = foreground.astype(np.float64)
    else:
        f = foreground - foreground.mean()
        g = gt - gt.mean()
        alignment = 2 * f * g / (f * f + g * g + EPS)
        enhanced = (alignment + 1) ** 2 / 4
    return float(enhanced.sum() / (gt.size - 1 + EPS))


# --- weighted F-measure -----------------------------------------------------------------------------------------


def _gaussian_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB's fspecial('gaussian', size, sigma)."""
    half = (size - 1) / 2
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred, gt, beta: float = 1.0, mode: str = "toolkit") -> float:
    pred, gt = _check(pred, gt)
    if not gt.any():
        return 0.0
    research = mode == "research"
    eps = RESEARCH_EPS_WFM if research else EPS
    p = pred.astype(np.int32 if research else np.float64)  # research: an int32 error map, convolved as int32
    distance, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    error = np.abs(p - gt)
    # background errors are read at their nearest foreground pixel (dependency at the object's edge)
    spread = error[nearest[0], nearest[1]]
    smoothed = ndimage.convolve(spread, _gaussian_kernel(), mode="constant", cval=0)  # output dtype = input's
    error = np.where(gt & (smoothed < error), smoothed, error)
    weighted = error * np.where(gt, 1.0, 2 - np.exp(np.log(0.5) / 5 * distance))
    true_positive = gt.sum() - weighted[gt].sum()
    false_positive = weighted[~gt].sum()
    recall = 1 - weighted[gt].mean()
    precision = true_positive / (true_positive + false_positive + eps)
    return float((1 + beta) * recall * precision / (recall + beta * precision + eps))


# --- per-sample scores and their summary -------------------------------------------------------------------------


def score_sample(pred, gt, mode: str = "toolkit") -> dict[str, float]:
    """Every metric of one prediction (`mode`: see MODES), plus the intersection and union cIoU sums."""
    intersection, union = intersection_union(pred, gt)
    return {
        "gIoU": giou_sample(pred, gt), "mIoU": miou_seed(pred, gt), "wFm": weighted_f_measure(pred, gt, mode=mode),
        "Sm": s_measure(pred, gt, mode=mode), "Em": e_measure(pred, gt), "MAE": mae(pred, gt), "Dice": dice(pred, gt),
        "BER": ber(pred, gt), "intersection": intersection, "union": union,
    }  # fmt: skip


def summarize(samples: list[dict]) -> dict[str, float]:
    """Dataset-level metrics: means of the per-sample ones, and cIoU from the summed intersections and unions."""
    if not samples:
        return {key: float("nan") for key in METRIC_KEYS} | {"count": 0}
    out = {key: float(np.mean([s[key] for s in samples])) for key in METRIC_KEYS if key != "cIoU"}
    out["cIoU"] = sum(s["intersection"] for s in samples) / (sum(s["union"] for s in samples) + 1e-10)
    out["count"] = len(samples)
    return {key: out[key] for key in (*METRIC_KEYS, "count")}
