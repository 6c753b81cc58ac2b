"""CropScorer: objective crop quality plus a user's preference, for any list of candidates.

score_k = s_obj(h_k) + <g(h_k, context, geometry_k), e_u>  (+ personal_head(g_k))
e_u = e_0 + d_u: e_0 is the population prior (shared), d_u the user's offset (personal,
kept on the device). d_u = 0 is the generic model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .backbone import MultiScaleBackbone
from .config import ModelConfig
from .ops import roi_rod_align

GEOMETRY_DIM = 10
PERSONAL_PREFIX = "personal."


@dataclass
class ImageEncoding:
    """What the backbone says about a batch of images: the align map and a context vector."""

    feature_map: Tensor  # (N, C, H/16, W/16)
    context: Tensor  # (N, context_dim)
    image_size: tuple[int, int]  # (H, W) of the network input


@dataclass
class CropFeatures:
    """Per-candidate quantities the user's embedding acts on (cacheable for fast fine-tuning)."""

    objective: Tensor  # (K,) objective score s_obj
    preference: Tensor  # (K, E) g_k
    batch_index: Tensor  # (K,) image of each candidate
    hidden: Tensor  # (K, feature_dim) h_k (the pretext head reads it)

    def detach(self) -> "CropFeatures":
        return CropFeatures(self.objective.detach(), self.preference.detach(), self.batch_index,
                            self.hidden.detach())


def box_geometry(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(K, 5) boxes -> (K, 10) scale-free geometry: corners, centre, size, log aspect, area."""
    height, width = image_size
    x1 = boxes[:, 1] / width
    y1 = boxes[:, 2] / height
    x2 = boxes[:, 3] / width
    y2 = boxes[:, 4] / height
    w = (x2 - x1).clamp(min=1e-4)
    h = (y2 - y1).clamp(min=1e-4)
    aspect = torch.log((w * width) / (h * height))
    return torch.stack([x1, y1, x2, y2, (x1 + x2) / 2, (y1 + y2) / 2, w, h, aspect, w * h], dim=1)


class DualAttention(nn.Module):
    """Channel attention (squeeze-excite) then spatial attention pooling -> one context vector."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels, dim, 1), nn.ReLU(inplace=True))
        self.channel = nn.Sequential(nn.Linear(dim, max(dim // 4, 4)), nn.ReLU(inplace=True),
                                     nn.Linear(max(dim // 4, 4), dim), nn.Sigmoid())
        self.spatial = nn.Conv2d(dim, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        x = x * self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        weights = torch.softmax(self.spatial(x).flatten(2), dim=-1)  # (N, 1, HW)
        return (x.flatten(2) * weights).sum(-1)


class PersonalState(nn.Module):
    """The only parameters that never leave a device: d_u and an optional tiny head."""

    def __init__(self, embed_dim: int, with_head: bool):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(embed_dim))
        self.head = nn.Linear(embed_dim, 1) if with_head else None
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def reset(self) -> None:
        """Back to the generic model (d_u = 0, head off)."""
        with torch.no_grad():
            self.delta.zero_()
            if self.head is not None:
                self.head.weight.zero_()
                self.head.bias.zero_()


class CropScorer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, a, e = config.channels, config.align_size, config.embed_dim
        self.backbone = MultiScaleBackbone(config.width, c, config.backbone_weights)
        self.attention = DualAttention(sum(self.backbone.tap_channels), config.context_dim)
        self.objective_trunk = nn.Sequential(
            nn.Conv2d(2 * c, config.hidden, kernel_size=a), nn.BatchNorm2d(config.hidden), nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, config.feature_dim, kernel_size=1), nn.BatchNorm2d(config.feature_dim),
            nn.ReLU(inplace=True), nn.Flatten(), nn.Dropout(config.dropout))
        self.objective_out = nn.Linear(config.feature_dim, 1)
        self.preference = nn.Sequential(
            nn.Linear(config.feature_dim + config.context_dim + GEOMETRY_DIM, 64), nn.ReLU(inplace=True),
            nn.Linear(64, e))
        self.prior_embedding = nn.Parameter(torch.randn(e) / e ** 0.5)
        self.personal = PersonalState(e, config.personal_head)

    # -- stages of a forward pass, exposed so the fast paths can cache between them --
    def encode(self, images: Tensor) -> ImageEncoding:
        return self.encode_taps(self.backbone.fused_taps(images), tuple(images.shape[-2:]))

    def encode_taps(self, fused: Tensor, image_size: tuple[int, int]) -> ImageEncoding:
        """The rest of encode() from the backbone's fused taps (cached when the backbone is frozen)."""
        return ImageEncoding(self.backbone.reduce(fused), self.attention(fused), tuple(image_size))

    def crop_features(self, encoding: ImageEncoding, boxes: Tensor) -> CropFeatures:
        aligned = roi_rod_align(encoding.feature_map, boxes, 1.0 / 16, self.config.align_size)
        hidden = self.objective_trunk(aligned)
        objective = self.objective_out(hidden).squeeze(1)
        batch = boxes[:, 0].long()
        inputs = torch.cat([hidden, encoding.context[batch], box_geometry(boxes, encoding.image_size)], dim=1)
        return CropFeatures(objective, self.preference(inputs), batch, hidden)

    def user_embedding(self, delta: Optional[Tensor] = None) -> Tensor:
        """e_u = e_0 + d_u; `delta` overrides the stored d_u ((E,) or one row per image)."""
        return self.prior_embedding + (self.personal.delta if delta is None else delta)

    def combine(self, features: CropFeatures, delta: Optional[Tensor] = None, personal: bool = True,
                subjective: bool = True) -> Tensor:
        """Scores from cached crop features.

        personal=False scores with e_0 alone (the generic model); subjective=False returns the
        objective score alone (the pre stage trains only that part).
        """
        if not subjective:
            return features.objective
        if personal:
            embedding = self.user_embedding(delta)
        else:
            embedding = self.prior_embedding
        if embedding.dim() == 2:
            embedding = embedding[features.batch_index]
            subjective = (features.preference * embedding).sum(-1)
        else:
            subjective = features.preference @ embedding
        score = features.objective + subjective
        if personal and self.personal.head is not None:
            score = score + self.personal.head(features.preference).squeeze(1)
        return score

    def forward(self, images: Tensor, boxes: Tensor, delta: Optional[Tensor] = None, personal: bool = True,
                subjective: bool = True) -> Tensor:
        """images (N, 3, H, W) normalized; boxes (K, 5) in input pixels -> scores (K,)."""
        return self.combine(self.crop_features(self.encode(images), boxes), delta, personal, subjective)
