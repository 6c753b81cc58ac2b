"""Crop-ranking metrics (GAIC conventions) and confidence intervals.

Every metric is computed per image and then averaged over images, so a large image
with many candidates weighs no more than a small one. Tie rules are fixed here (and in
docs/formats.md, section Metrics) so that two runs on the same scores always give the same numbers:

* top-K predicted crops: stable sort by descending prediction, ties to the lower index;
* "in the ground-truth top-N": gt score >= the N-th best gt score (boundary ties hit);
* wAcc: 0-based positions in the stable descending gt order, sorted (GAIC's loop);
* SRCC uses average ranks for ties; an image whose predictions or ground truth are
  constant has no correlation and is left out of the srcc/pcc means.

numpy only: scipy is deliberately not a dependency.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .geometry import box_iou

KS = (1, 2, 3, 4)
NS = (5, 10)


def _check_pairs(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated float64 (pred, gt) pairs, or ValueError naming the image index."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction arrays but {len(gts)} ground-truth arrays")
    if len(preds) == 0:
        raise ValueError("no images to evaluate")
    pairs = []
    for i, (p, g) in enumerate(zip(preds, gts)):
        p = np.asarray(p, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if p.ndim != 1 or g.ndim != 1:
            raise ValueError(f"image {i}: scores must be 1-D, got shapes {p.shape} and {g.shape}")
        if len(p) != len(g):
            raise ValueError(f"image {i}: {len(p)} predictions but {len(g)} ground-truth scores")
        if len(p) == 0:
            raise ValueError(f"image {i}: no candidates")
        for what, arr in (("prediction", p), ("ground-truth", g)):
            if not np.all(np.isfinite(arr)):
                bad = int(np.flatnonzero(~np.isfinite(arr))[0])
                raise ValueError(f"image {i}: non-finite {what} score at candidate {bad}: {arr[bad]}")
        pairs.append((p, g))
    return pairs


def predicted_order(pred: np.ndarray) -> np.ndarray:
    """Candidate indices by descending prediction; equal predictions keep index order."""
    return np.argsort(-np.asarray(pred, dtype=np.float64), kind="stable")


def competition_ranks(gt: np.ndarray) -> np.ndarray:
    """1 + number of candidates with a strictly higher score ("1224" ranking)."""
    gt = np.asarray(gt, dtype=np.float64)
    ascending = np.sort(gt)
    return 1 + len(gt) - np.searchsorted(ascending, gt, side="right")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks (ascending) with tied values sharing the mean of their positions."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    # start of each run of equal values, and its length
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    lengths = np.diff(np.r_[starts, len(values)])
    mean_rank = starts + (lengths + 1) / 2.0  # positions starts+1 .. starts+length
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no correlation defined)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0 or len(a) < 2:
        return math.nan
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation = Pearson on average ranks; NaN when either side is constant."""
    return pearson(average_ranks(a), average_ranks(b))


def gt_positions(gt: np.ndarray) -> np.ndarray:
    """0-based position of each candidate in the stable descending ground-truth order (GAIC)."""
    pos = np.empty(len(gt), dtype=np.int64)
    pos[predicted_order(gt)] = np.arange(len(gt))
    return pos


def image_accuracy(pred: np.ndarray, gt: np.ndarray, k: int, n: int) -> tuple[float, float]:
    """(Acc_K/N, wAcc_K/N) of one image exactly as GAIC's loop; the caller ensures len(gt) > n >= k.

    wAcc sorts the ground-truth positions of the top-K crops before weighting (GAIC does).
    """
    top_k = predicted_order(pred)[:k]
    threshold = np.sort(gt)[::-1][n - 1]
    hits = gt[top_k] >= threshold
    positions = np.sort(gt_positions(gt)[top_k])
    j = np.arange(k)
    weights = np.where(positions <= n - 1, np.exp(-(positions - j) / n), 0.0)
    return float(hits.sum()) / k, float(weights.sum()) / k


def crop_metrics(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    """Acc/wAcc (K=1..4, N=5,10, and means over K), SRCC and PCC, averaged over images.

    An image takes part in the N=5 (N=10) accuracies only when it has more than 5 (10)
    candidates; with fewer every crop would be in the top N and the score would be 1 by
    construction. `images_n5` / `images_n10` / `images_corr` count the images behind each
    group of means; a mean over no images is NaN.
    """
    pairs = _check_pairs(preds, gts)
    out: dict[str, float] = {"images": float(len(pairs))}
    for n in NS:
        usable = [(p, g) for p, g in pairs if len(g) > n]
        out[f"images_n{n}"] = float(len(usable))
        for k in KS:
            per_image = np.array([image_accuracy(p, g, k, n) for p, g in usable]).reshape(-1, 2)
            out[f"acc{k}_{n}"] = _mean(per_image[:, 0])
            out[f"wacc{k}_{n}"] = _mean(per_image[:, 1])
        out[f"acc_{n}"] = _mean([out[f"acc{k}_{n}"] for k in KS])
        out[f"wacc_{n}"] = _mean([out[f"wacc{k}_{n}"] for k in KS])
    srcc = np.array([spearman(p, g) for p, g in pairs])
    pcc = np.array([pearson(p, g) for p, g in pairs])
    defined = ~(np.isnan(srcc) | np.isnan(pcc))  # NaN when a side is constant
    out["images_corr"] = float(defined.sum())
    out["srcc"] = _mean(srcc[defined])
    out["pcc"] = _mean(pcc[defined])
    return out


def _mean(values: Sequence[float] | np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    return float(box_iou(np.asarray(box_a), np.asarray(box_b))[0, 0])


def top1_iou(pred_scores: np.ndarray, boxes: np.ndarray, best_gt_boxes: np.ndarray) -> float:
    """IoU of the top-predicted candidate with the best ground-truth crop.

    `best_gt_boxes` is one box (4,) or several (G, 4) (sets such as FLMS give several
    expert crops); with several the best match counts. Tied predictions go to the lower index.
    """
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(scores) or len(scores) == 0:
        raise ValueError(f"need one box (M, 4) per score, got boxes {boxes.shape} for {len(scores)} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("non-finite prediction score")
    gt = np.asarray(best_gt_boxes, dtype=np.float64)
    if gt.size == 0 or gt.size % 4:
        raise ValueError(f"ground-truth box must be (4,) or (G, 4), got shape {gt.shape}")
    best = boxes[predicted_order(scores)[0]]
    return float(box_iou(best, gt.reshape(-1, 4)).max())


# ---------------------------------------------------------------- confidence intervals

def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half width) of the t confidence interval of the mean.

    The half width is NaN for a single value (no spread to estimate from).
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError("mean_ci: non-finite value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, math.nan
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    from scipy import stats  # here: scipy.stats costs ~0.8 s at import, needed only for intervals

    return mean, float(stats.t.ppf(0.5 + confidence / 2.0, arr.size - 1)) * sem


# ---------------------------------------------------------------- GAIC's results table

GAIC_COLUMNS = tuple(f"acc{k}_{n}" for n in NS for k in KS) + ("wacc_5", "wacc_10", "srcc", "pcc")


def gaic_table(metrics: dict[str, float]) -> str:
    """GAIC's results table (Acc1/5..Acc4/10, wAcc, SRCC, PCC) as two aligned text lines."""
    missing = [c for c in GAIC_COLUMNS if c not in metrics]
    if missing:
        raise KeyError(f"metrics lack {', '.join(missing)} (use crop_metrics output)")
    heads = [f"Acc{k}/{n}" for n in NS for k in KS] + ["wAcc/5", "wAcc/10", "SRCC", "PCC"]
    cells = [f"{metrics[c]:.4f}" for c in GAIC_COLUMNS]
    widths = [max(len(h), len(v)) for h, v in zip(heads, cells)]
    return "\n".join(" ".join(x.rjust(w) for x, w in zip(row, widths)) for row in (heads, cells))
