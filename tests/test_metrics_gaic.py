"""fedpic's Acc/wAcc against an independently written, literal port of GAIC's evaluation loop."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pic_core.metrics import crop_metrics


def _stable_desc(values):
    return sorted(range(len(values)), key=lambda i: -values[i])  # Python's sort is stable


def gaic_loop(pred, gt, k, n):
    """GAIC: rank by gt, take top-K predicted, hit if gt >= N-th best; wAcc on sorted positions."""
    gt_order = _stable_desc(gt)
    pred_order = _stable_desc(pred)
    nth = gt[gt_order[n - 1]]
    acc = 0
    for j in range(k):
        if gt[pred_order[j]] >= nth:
            acc += 1
    positions = sorted(gt_order.index(pred_order[j]) for j in range(k))
    wacc = 0.0
    for j in range(k):
        if positions[j] <= n - 1:
            wacc += math.exp(-(positions[j] - j) / n)
    return acc / k, wacc / k


@pytest.mark.parametrize("tied", [False, True])
def test_matches_gaic_loop(tied):
    rng = np.random.default_rng(3)
    preds, gts = [], []
    for _ in range(40):
        m = int(rng.integers(12, 30))
        if tied:
            preds.append(rng.integers(0, 4, m).astype(float))
            gts.append(rng.integers(0, 5, m).astype(float))
        else:
            preds.append(rng.normal(size=m))
            gts.append(rng.normal(size=m))
    got = crop_metrics(preds, gts)
    for n in (5, 10):
        for k in (1, 2, 3, 4):
            ref = np.array([gaic_loop(list(p), list(g), k, n) for p, g in zip(preds, gts)]).mean(0)
            assert abs(got[f"acc{k}_{n}"] - ref[0]) < 1e-9
            assert abs(got[f"wacc{k}_{n}"] - ref[1]) < 1e-9


def test_sorting_positions_changes_wacc():
    # top-2 predicted crops are gt positions 1 then 0: GAIC sorts them to (0, 1), weight 1 each
    gt = np.arange(12, 0, -1, dtype=float)
    pred = gt.copy()
    pred[[0, 1]] = pred[[1, 0]]
    assert crop_metrics([pred], [gt])["wacc2_5"] == pytest.approx(1.0)


def test_gaic_table_lists_gaic_columns():
    from pic_core.metrics import gaic_table
    rng = np.random.default_rng(0)
    m = crop_metrics([rng.normal(size=20)], [rng.normal(size=20)])
    head, row = gaic_table(m).splitlines()
    assert head.split() == ["Acc1/5", "Acc2/5", "Acc3/5", "Acc4/5", "Acc1/10", "Acc2/10", "Acc3/10",
                            "Acc4/10", "wAcc/5", "wAcc/10", "SRCC", "PCC"]
    assert float(row.split()[0]) == pytest.approx(m["acc1_5"], abs=1e-4)
    with pytest.raises(KeyError, match="srcc"):
        gaic_table({k: v for k, v in m.items() if k != "srcc"})
