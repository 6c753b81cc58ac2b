"""Metrics on cases worked out by hand (expected values are written out, not recomputed)."""
import math

import numpy as np
import pytest

from pic_core.metrics import (average_ranks, competition_ranks, crop_metrics, iou, mean_ci, pearson, predicted_order,
                              spearman, top1_iou)

E = math.exp

# Case A: 6 candidates, no ties. Predicted order 1, 2, 4, 5 (3, 0); gt ranks of those 2, 3, 5, 6.
# gt top-5 = gt >= 1 = candidates 0..4, so the 4th pick (candidate 5) misses.
A_GT = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
A_PRED = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3])
# Case B: 12 candidates with ties. gt sorted: 9 9 8 7 7 7 6 5 4 4 4 3 -> 5th best 7, 10th best 4.
# Competition ranks: 1 1 3 4 4 4 7 8 9 9 9 12. Predictions tie at 5 (candidates 5, 9) and at 0:
# order 11 (r=12), 5 (r=4), 9 (r=9), 0 (r=1).
B_GT = np.array([9, 9, 8, 7, 7, 7, 6, 5, 4, 4, 4, 3], dtype=float)
B_PRED = np.array([0, 0, 0, 0, 0, 5, 0, 0, 0, 5, 0, 9], dtype=float)

A_EXPECTED = {
    "acc1_5": 1.0, "acc2_5": 1.0, "acc3_5": 1.0, "acc4_5": 0.75,
    "wacc1_5": E(-0.2), "wacc2_5": E(-0.2), "wacc3_5": (2 * E(-0.2) + E(-0.4)) / 3,
    "wacc4_5": (2 * E(-0.2) + E(-0.4)) / 4,
}
B_EXPECTED = {
    # N=5: pick 2 (gt 7, boundary tie) and pick 4 (gt 9) hit; pick 3 (gt 4) misses
    "acc1_5": 0.0, "acc2_5": 0.5, "acc3_5": 1 / 3, "acc4_5": 0.5,
    # wAcc (GAIC): 0-based gt positions of the picks are 11, 5, 9, 0, sorted before weighting
    "wacc1_5": 0.0, "wacc2_5": 0.0, "wacc3_5": 0.0, "wacc4_5": 1 / 4,
    # N=10: pick 3 (gt 4 = 10th best) now hits too
    "acc1_10": 0.0, "acc2_10": 0.5, "acc3_10": 2 / 3, "acc4_10": 0.75,
    "wacc1_10": 0.0, "wacc2_10": E(-0.5) / 2, "wacc3_10": (E(-0.5) + E(-0.8)) / 3,
    "wacc4_10": (1 + E(-0.4) + E(-0.7)) / 4,
}


def test_case_a_accuracies_and_correlations():
    m = crop_metrics([A_PRED], [A_GT])
    for key, value in A_EXPECTED.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m["acc_5"] == pytest.approx(3.75 / 4)
    assert m["wacc_5"] == pytest.approx(sum(A_EXPECTED[f"wacc{k}_5"] for k in (1, 2, 3, 4)) / 4)
    # 6 candidates cannot be scored at N=10 (every crop would be in the top 10)
    assert m["images_n10"] == 0 and math.isnan(m["acc1_10"]) and math.isnan(m["wacc_10"])
    # pred ranks 1 6 5 2 4 3 vs gt ranks 6 5 4 3 2 1: sum d^2 = 36 -> 1 - 6*36/(6*35) = -1/35
    assert m["srcc"] == pytest.approx(-1 / 35, abs=1e-12)
    # centred pred -.4 .4 .3 -.3 .2 -.2, centred gt 2.5 1.5 .5 -.5 -1.5 -2.5
    assert m["pcc"] == pytest.approx(0.1 / math.sqrt(0.58 * 17.5), abs=1e-12)
    assert m["images"] == 1 and m["images_n5"] == 1 and m["images_corr"] == 1


def test_case_b_ties_at_the_boundary_and_in_predictions():
    m = crop_metrics([B_PRED], [B_GT])
    for key, value in B_EXPECTED.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m["acc_5"] == pytest.approx(1 / 3)
    assert m["acc_10"] == pytest.approx((0 + 0.5 + 2 / 3 + 0.75) / 4)


def test_means_over_images():
    m = crop_metrics([A_PRED, B_PRED], [A_GT, B_GT])
    assert m["images"] == 2
    assert m["acc4_5"] == pytest.approx((0.75 + 0.5) / 2)
    assert m["wacc3_5"] == pytest.approx((A_EXPECTED["wacc3_5"] + B_EXPECTED["wacc3_5"]) / 2)
    assert m["acc3_10"] == pytest.approx(2 / 3)  # only case B has more than 10 candidates


def test_prediction_ties_go_to_the_lower_index_on_long_lists():
    # 40 candidates, predictions tied in two blocks; the top-4 must be 20, 21, 22, 23, which the
    # ground truth ranks 1..4 (so every pick hits with weight exp(0) = 1).
    pred = np.r_[np.zeros(20), np.ones(20)]
    gt = -np.arange(40.0)
    gt[20:24] = [100, 99, 98, 97]
    assert predicted_order(pred)[:4].tolist() == [20, 21, 22, 23]
    m = crop_metrics([pred], [gt])
    assert m["acc4_5"] == 1.0 and m["wacc4_5"] == pytest.approx(1.0) and m["wacc4_10"] == pytest.approx(1.0)


def test_tie_helpers():
    assert competition_ranks(B_GT).tolist() == [1, 1, 3, 4, 4, 4, 7, 8, 9, 9, 9, 12]
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_spearman_with_ties_by_hand():
    # pred ranks 1 2.5 2.5 4, gt ranks 1 2 3 4: 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    m = crop_metrics([np.array([1.0, 2, 2, 3])], [np.array([1.0, 2, 3, 4])])
    assert m["srcc"] == pytest.approx(math.sqrt(0.9))
    assert m["images_n5"] == 0 and math.isnan(m["acc_5"])


def test_constant_image_left_out_of_correlations():
    m = crop_metrics([A_PRED, np.ones(6)], [A_GT, A_GT])
    assert m["images_corr"] == 1
    assert m["srcc"] == pytest.approx(-1 / 35)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    only_constant = crop_metrics([np.ones(6)], [A_GT])
    assert only_constant["images_corr"] == 0 and math.isnan(only_constant["srcc"])


def test_spearman_matches_scipy_on_random_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.integers(0, 4, 15).astype(float), rng.normal(size=15)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
        assert pearson(b, a) == pytest.approx(stats.pearsonr(b, a)[0], abs=1e-12)


@pytest.mark.parametrize("preds, gts, match", [
    ([np.zeros(3)], [], "1 prediction arrays but 0"),
    ([], [], "no images"),
    ([np.zeros(3), np.zeros(4)], [np.zeros(3), np.zeros(5)], "image 1: 4 predictions but 5"),
    ([np.array([0.0, np.nan])], [np.zeros(2)], "image 0: non-finite prediction score at candidate 1"),
    ([np.zeros(2)], [np.array([np.inf, 0.0])], "image 0: non-finite ground-truth score at candidate 0"),
    ([np.zeros((2, 2))], [np.zeros((2, 2))], "image 0: scores must be 1-D"),
    ([np.zeros(0)], [np.zeros(0)], "image 0: no candidates"),
])
def test_input_validation(preds, gts, match):
    with pytest.raises(ValueError, match=match):
        crop_metrics(preds, gts)


def test_iou_and_top1_iou():
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 5, 10], [20, 20, 30, 30]], dtype=float)
    assert top1_iou([1.0, 2.0, 0.0], boxes, [0, 0, 10, 10]) == pytest.approx(0.5)
    assert top1_iou([2.0, 2.0, 0.0], boxes, [0, 0, 10, 10]) == pytest.approx(1.0)  # tie -> lower index
    several = np.array([[20, 20, 30, 30], [0, 0, 5, 10]])
    assert top1_iou([0.0, 1.0, 0.0], boxes, several) == pytest.approx(1.0)  # best of the gt boxes
    with pytest.raises(ValueError, match="one box"):
        top1_iou([1.0, 2.0], boxes, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="ground-truth box"):
        top1_iou([1.0, 2.0, 3.0], boxes, [0, 0, 1])


@pytest.mark.parametrize("n, critical", [(2, 12.706), (3, 4.303), (5, 2.776), (10, 2.262), (30, 2.045)])
def test_mean_ci_uses_the_t_table(n, critical):
    # two-sided 95 % critical values (df = n - 1) from a printed t table; the values 0, 1, 0, 1...
    values = [float(i % 2) for i in range(n)]
    sem = np.std(values, ddof=1) / math.sqrt(n)
    assert mean_ci(values)[1] == pytest.approx(critical * sem, abs=6e-4 * sem)


def test_mean_ci():
    # mean 2.5, s = sqrt(5/3), sem = s/2, t(0.975, 3) = 3.182446
    mean, half = mean_ci([1, 2, 3, 4])
    assert mean == 2.5 and half == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, abs=1e-5)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 0.0)
    single = mean_ci([7.0])
    assert single[0] == 7.0 and math.isnan(single[1])
    _, wide = mean_ci([1, 2, 3, 4], confidence=0.99)
    assert wide > half
    for bad, match in (([], "at least one"), ([1.0, np.nan], "non-finite")):
        with pytest.raises(ValueError, match=match):
            mean_ci(bad)
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2], confidence=1.0)
