"""Losses on one image's candidate scores.

fedpic's default: targets z-scored per image (`standardize`) so users and datasets with
different score scales train together (only the order and the relative gaps of one image's
crops matter), and a fidelity rank loss with P = Phi(diff / sqrt(2)) over untied pairs.
The reference (GAIC/PIC, `model.targets: global`, `model.rank_loss: reference`): targets
normalized with one global mean and std (GAICD MOS: 2.95, 0.8), and P = Phi(diff) with
tied pairs kept at target probability 0.5.
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


def reference_rank_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """The reference's fidelity loss: P(i over j) = Phi(s_i - s_j), every ordered pair i != j.

    Ground truth p* = 1 if target_i > target_j, 0 if smaller, 0.5 when tied;
    loss 1 - sqrt(p* p) - sqrt((1 - p*)(1 - p)), averaged over the pairs.
    """
    n = pred.shape[0]
    if n < 2:
        return pred.sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=pred.device)
    diff_pred = (pred[:, None] - pred[None, :])[off]
    diff_true = (target[:, None] - target[None, :])[off]
    p = 0.5 * (1.0 + torch.erf(diff_pred / _SQRT2))
    p_true = (diff_true > 0).to(pred.dtype) + 0.5 * (diff_true == 0).to(pred.dtype)
    return (1.0 - torch.sqrt(p_true * p + eps) - torch.sqrt((1.0 - p_true) * (1.0 - p) + eps)).mean()


def crop_loss(pred: Tensor, target: Tensor, rank_weight: float, smooth_l1_weight: float, *,
              rank_loss: str = "fedpic", targets: str = "image", target_mean: float = 2.95,
              target_std: float = 0.8) -> Tensor:
    """rank_weight * fidelity + smooth_l1_weight * SmoothL1 on the normalized target.

    targets: "image" (per-image z-score) or "global" ((target - target_mean) / target_std);
    rank_loss: "fedpic" (Phi(diff / sqrt 2), ties dropped) or "reference" (Phi(diff), ties at 0.5).
    """
    target = standardize(target) if targets == "image" else (target - target_mean) / target_std
    loss = pred.new_zeros(())
    if rank_weight:
        rank = reference_rank_loss if rank_loss == "reference" else fidelity_rank_loss
        loss = loss + rank_weight * rank(pred, target)
    if smooth_l1_weight:
        loss = loss + smooth_l1_weight * smooth_l1(pred, target)
    return loss


def model_loss_options(config: object) -> dict:
    """crop_loss's keyword options from a ModelConfig (rank_loss, targets, target_mean, target_std)."""
    return {key: getattr(config, key) for key in ("rank_loss", "targets", "target_mean", "target_std")}
