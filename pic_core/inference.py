"""A scoring-only copy of a CropScorer: the same numbers with fewer passes over memory.

Training keeps BatchNorm as separate layers; for scoring (eval mode, frozen statistics) each
BatchNorm folds into the convolution before it, and the objective head's first convolution,
whose kernel covers the whole A x A aligned patch, runs as one matrix product. Used by
`Cropper` (and therefore by `fedpic crop` and `fedpic export`); never for training.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .model import CropScorer


class PatchLinear(nn.Module):
    """A convolution whose kernel equals its input's spatial size, as flatten + linear."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.kernel_size = tuple(conv.kernel_size)
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.kernel_size:
            raise ValueError(f"PatchLinear expects {self.kernel_size} patches, got {tuple(x.shape[-2:])}")
        return F.linear(x.flatten(1), self.weight, self.bias)[:, :, None, None]


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every Conv2d -> BatchNorm2d pair inside Sequentials (in place); returns how many.

    The BatchNorm becomes an Identity, so indices (and code that reads them) stay valid.
    """
    folded = 0
    for child in module.children():
        if isinstance(child, nn.Sequential):
            items = list(child)
            for i in range(len(items) - 1):
                conv, norm = items[i], items[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                    child[i] = fuse_conv_bn_eval(conv, norm)
                    child[i + 1] = nn.Identity()
                    folded += 1
        folded += fold_batch_norms(child)
    return folded


def scoring_copy(model: CropScorer, personal: bool = True) -> CropScorer:
    """A deep copy in eval mode with BatchNorms folded and the patch convolution as a matmul.

    The user's crop-head offsets are added into the copy's weights first (`personal`) or left
    out (the generic model), so the folding sees the weights that actually score.
    """
    scorer = copy.deepcopy(model).eval()
    scorer.drop_offsets(apply=personal)
    with torch.no_grad():
        fold_batch_norms(scorer)
        first = scorer.objective_trunk[0]
        if isinstance(first, nn.Conv2d) and tuple(first.kernel_size) == (scorer.config.align_size,) * 2:
            scorer.objective_trunk[0] = PatchLinear(first)
    for parameter in scorer.parameters():
        parameter.requires_grad_(False)
    return scorer


MIN_INPUT_SIDE = 64
"""Smallest network input side: the stride-32 map must be at least 2x2 (and export assumes it)."""


class ScoringModule(nn.Module):
    """image (1, 3, H, W) normalized, boxes (K, 4) in input pixels -> scores (K,).

    The one graph both the eager backend and `fedpic export` run, so the exported program
    and the eager model compute the same thing. The user's d_u is part of the module.
    """

    def __init__(self, model: CropScorer, personal: bool):
        super().__init__()
        self.model = scoring_copy(model, personal)  # BatchNorms folded: same scores, less work per photo
        self.personal = personal

    def forward(self, image: Tensor, boxes: Tensor) -> Tensor:
        with_batch = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        return self.model(image, with_batch, personal=self.personal)


Backend = Callable[[Tensor, Tensor], Tensor]
"""(image (1, 3, H, W), boxes (K, 4) in input pixels) -> scores (K,)."""
