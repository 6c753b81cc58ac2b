"""CropScorer: objective crop quality plus a user's preference, for any list of candidates.

score_k = s_obj(h_k) + <g(h_k, context, geometry_k), e_u>  (+ personal_head(g_k))
e_u = e_0 + d_u: e_0 is the population prior (shared), d_u the user's offset (personal,
kept on the device). d_u = 0 is the generic model. With `preference_readout` r > 0,
g_k = [preference(h_k, ...), r * h_k]: the embedding also re-weighs the objective head's crop
feature, a linear taste over what the objective model sees (d_u then has embed_dim +
feature_dim floats; pic_core.train decides where that part learns). With `personal_offsets`, the crop head
after the align step (objective head and g) also carries a personal weight offset (zero for
the generic model): few-shot fine-tuning of that head on cached aligned features matches
fine-tuning every weight, at a fraction of the cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .backbone import MultiScaleBackbone
from .config import OFFSET_SCOPES, ModelConfig
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


@dataclass
class HeadInputs:
    """What the crop head reads for each candidate: the fast path caches these (one backbone pass)."""

    aligned: Tensor  # (K, 2C, A, A) RoI + RoD features
    context: Tensor  # (K, context_dim) the image context of each candidate
    geometry: Tensor  # (K, GEOMETRY_DIM)
    batch_index: Tensor  # (K,)

    def detach(self) -> "HeadInputs":
        return HeadInputs(self.aligned.detach(), self.context.detach(), self.geometry.detach(), self.batch_index)


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


HEAD_MODULES = ("objective_trunk", "objective_out", "preference")  # after the align step
# The compact personal state's offsets: the objective readout (64 + 1) and the BatchNorm affine
# before it (2 x 64): with d_u (16) 209 floats, a user-specific linear taste over the crop features.
COMPACT_OFFSETS = ("objective_out.", "objective_trunk.4.")


def offset_key(name: str) -> str:
    """A shared parameter name as a ParameterDict key (no dots)."""
    return name.replace(".", "__")


class PersonalState(nn.Module):
    """The only parameters that never leave a device: d_u, an optional tiny head, and optional
    offsets on the crop head's shared weights (`offsets[key]` is added to that weight)."""

    def __init__(self, embed_dim: int, with_head: bool, head_weights: Optional[dict[str, Tensor]] = None):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(embed_dim))
        self.head = nn.Linear(embed_dim, 1) if with_head else None
        self.offsets = None
        if head_weights is not None:
            self.offsets = nn.ParameterDict({offset_key(k): nn.Parameter(torch.zeros_like(v))
                                             for k, v in head_weights.items()})
        self.reset()

    def reset(self) -> None:
        """Back to the generic model (d_u = 0, head off, offsets 0)."""
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()

    def offset_parameters(self, scope: str = "all") -> list[nn.Parameter]:
        """The offsets a fit may change: `all`, or `compact` (COMPACT_OFFSETS only)."""
        if self.offsets is None:
            return []
        if scope == "all":
            return list(self.offsets.values())
        if scope != "compact":
            raise ValueError(f"offset scope must be one of {OFFSET_SCOPES}, got {scope!r}")
        prefixes = tuple(offset_key(p) for p in COMPACT_OFFSETS)
        return [p for k, p in self.offsets.items() if k.startswith(prefixes)]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """d_u and the personal head: everything but the offsets."""
        offsets = {id(p) for p in self.offset_parameters()}
        return [p for p in self.parameters() if id(p) not in offsets]


class CropScorer(nn.Module):
    def __init__(self, config: ModelConfig, load_pretrained: bool = True):
        """load_pretrained=False skips the ImageNet weights (the caller loads trained weights next)."""
        super().__init__()
        self.config = config
        c, a, e = config.channels, config.align_size, config.embed_dim
        self.backbone = MultiScaleBackbone(config.width, c, config.backbone_weights, kind=config.backbone,
                                           pretrained=config.pretrained and load_pretrained, fusion=config.fusion)
        self.attention = DualAttention(sum(self.backbone.tap_channels), config.context_dim)
        self.objective_trunk = nn.Sequential(
            nn.Conv2d(2 * c, config.hidden, kernel_size=a), nn.BatchNorm2d(config.hidden), nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, config.feature_dim, kernel_size=1), nn.BatchNorm2d(config.feature_dim),
            nn.ReLU(inplace=True), nn.Flatten(), nn.Dropout(config.dropout))
        self.objective_out = nn.Linear(config.feature_dim, 1)
        self.preference = nn.Sequential(
            nn.Linear(config.feature_dim + config.context_dim + GEOMETRY_DIM, config.preference_hidden),
            nn.ReLU(inplace=True), nn.Linear(config.preference_hidden, e))
        readout = torch.zeros(self.preference_dim - e)  # the readout part of e_0 starts at 0
        self.prior_embedding = nn.Parameter(torch.cat([torch.randn(e) / e ** 0.5, readout]))
        head_weights = None
        if config.personal_offsets:
            head_weights = {f"{m}.{n}": p for m in HEAD_MODULES for n, p in getattr(self, m).named_parameters()}
        self.personal = PersonalState(self.preference_dim, config.personal_head, head_weights)

    @property
    def preference_dim(self) -> int:
        """Width of e_0, d_u and g_k: embed_dim, plus feature_dim with `preference_readout`."""
        return self.config.embed_dim + (self.config.feature_dim if self.config.preference_readout > 0 else 0)

    # -- stages of a forward pass, exposed so the fast paths can cache between them --
    def encode(self, images: Tensor) -> ImageEncoding:
        return self.encode_taps(self.backbone.fused_taps(images), tuple(images.shape[-2:]))

    def encode_taps(self, fused: Tensor, image_size: tuple[int, int]) -> ImageEncoding:
        """The rest of encode() from the backbone's fused taps (cached when the backbone is frozen)."""
        return ImageEncoding(self.backbone.reduce(fused), self.attention(fused), tuple(image_size))

    def head_inputs(self, encoding: ImageEncoding, boxes: Tensor) -> HeadInputs:
        aligned = roi_rod_align(encoding.feature_map, boxes, 1.0 / 16, self.config.align_size)
        batch = boxes[:, 0].long()
        return HeadInputs(aligned, encoding.context[batch], box_geometry(boxes, encoding.image_size), batch)

    def _head_module(self, name: str, x: Tensor, personal: bool) -> Tensor:
        """One crop-head module, with the user's weight offsets added when `personal`."""
        module = getattr(self, name)
        offsets = self.personal.offsets
        if not personal or offsets is None:
            return module(x)
        weights = {n: p + offsets[offset_key(f"{name}.{n}")] for n, p in module.named_parameters()}
        return functional_call(module, weights, (x,), strict=False)

    @torch.no_grad()
    def drop_offsets(self, apply: bool) -> None:
        """For a scoring-only copy: add the user's head offsets into the weights (`apply`) or not
        (the generic model), then drop them, so scoring runs the plain modules."""
        offsets = self.personal.offsets
        if offsets is None:
            return
        if apply:
            for name in HEAD_MODULES:
                for n, p in getattr(self, name).named_parameters():
                    p.add_(offsets[offset_key(f"{name}.{n}")])
        self.personal.offsets = None

    def head_features(self, inputs: HeadInputs, personal: bool = True) -> CropFeatures:
        """The crop head on aligned features (objective score, h_k, g_k)."""
        hidden = self._head_module("objective_trunk", inputs.aligned, personal)
        objective = self._head_module("objective_out", hidden, personal).squeeze(1)
        joined = torch.cat([hidden, inputs.context, inputs.geometry], dim=1)
        preference = self._head_module("preference", joined, personal)
        if self.config.preference_readout > 0:
            preference = torch.cat([preference, self.config.preference_readout * hidden], dim=1)
        return CropFeatures(objective, preference, inputs.batch_index, hidden)

    def crop_features(self, encoding: ImageEncoding, boxes: Tensor, personal: bool = True) -> CropFeatures:
        return self.head_features(self.head_inputs(encoding, boxes), personal)

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
        return self.combine(self.crop_features(self.encode(images), boxes, personal), delta, personal, subjective)
