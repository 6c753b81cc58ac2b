"""Losses on one image's candidate scores.

Targets are z-scored per image (`standardize`) so users and datasets with different score
scales train together: only the order and the relative gaps of one image's crops matter.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_SQRT2 = math.sqrt(2.0)


def standardize(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-image z-score (a constant vector becomes zeros)."""
    centred = scores - scores.mean()
    std = centred.pow(2).mean().sqrt()
    return centred / (std + eps) if std > eps else centred


def smooth_l1(pred: Tensor, target: Tensor) -> Tensor:
    """SmoothL1 between predicted and (standardized) target scores."""
    return F.smooth_l1_loss(pred, target)


def fidelity_rank_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Pairwise fidelity loss with P(i better than j) = Phi((s_i - s_j) / sqrt(2)).

    Ground truth per pair: 1 when target_i > target_j, 0 when smaller; pairs tied in the
    target are left out. Fidelity: 1 - sqrt(p* p) - sqrt((1 - p*)(1 - p)), averaged.
    """
    diff_pred = pred[:, None] - pred[None, :]
    diff_true = target[:, None] - target[None, :]
    mask = diff_true > 0  # each unordered untied pair once, oriented so that p* = 1
    if not mask.any():
        return pred.sum() * 0.0
    p = 0.5 * (1.0 + torch.erf(diff_pred[mask] / _SQRT2 / _SQRT2))
    return (1.0 - torch.sqrt(p + eps)).mean()


def crop_loss(pred: Tensor, target: Tensor, rank_weight: float, smooth_l1_weight: float) -> Tensor:
    """rank_weight * fidelity + smooth_l1_weight * SmoothL1, on a standardized target."""
    target = standardize(target)
    loss = pred.new_zeros(())
    if rank_weight:
        loss = loss + rank_weight * fidelity_rank_loss(pred, target)
    if smooth_l1_weight:
        loss = loss + smooth_l1_weight * smooth_l1(pred, target)
    return loss
