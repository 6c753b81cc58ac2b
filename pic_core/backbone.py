"""Multi-scale MobileNetV2 features fused at stride 16.

Taps at strides 8, 16 and 32 (torchvision's features[:7], [7:14], [14:]); the stride-8 map
is average-pooled x2 and the stride-32 map upsampled x2, all three are concatenated at
stride 16 and a 1x1 conv reduces them to C channels. Weights come from a local file when
one is given, otherwise the network starts from random init; nothing is downloaded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

log = logging.getLogger(__name__)

TAP_SPLITS = (7, 14)
"""features[:7] ends at stride 8, features[7:14] at stride 16, features[14:] at stride 32."""


class MultiScaleBackbone(nn.Module):
    """MobileNetV2 (width multiplier `width`) -> (N, channels, H/16, W/16)."""

    def __init__(self, width: float = 1.0, channels: int = 8, weights: Optional[Union[str, Path]] = None):
        super().__init__()
        net = mobilenet_v2(weights=None, width_mult=width)
        if weights:
            load_mobilenet_weights(net, weights)
        layers = net.features
        self.stage3 = layers[: TAP_SPLITS[0]]
        self.stage4 = layers[TAP_SPLITS[0]: TAP_SPLITS[1]]
        self.stage5 = layers[TAP_SPLITS[1]:]
        with torch.no_grad():
            probe = torch.zeros(1, 3, 64, 64)
            c3 = self.stage3(probe)
            c4 = self.stage4(c3)
            c5 = self.stage5(c4)
        self.tap_channels = (c3.shape[1], c4.shape[1], c5.shape[1])
        self.reduce = nn.Conv2d(sum(self.tap_channels), channels, kernel_size=1)
        self.out_channels = channels

    def fused_taps(self, images: Tensor) -> Tensor:
        """All three taps at stride 16, concatenated (sum(tap_channels) channels)."""
        f3 = self.stage3(images)
        f4 = self.stage4(f3)
        f5 = self.stage5(f4)
        f3 = F.avg_pool2d(f3, kernel_size=2, stride=2)
        f5 = F.interpolate(f5, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f3, f4, f5], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.reduce(self.fused_taps(images))


def load_mobilenet_weights(net: nn.Module, path: Union[str, Path]) -> None:
    """Load a torchvision MobileNetV2 state_dict (the ImageNet file, or any with `features.*` keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path}: no such file (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle/zip
        raise ValueError(f"backbone weights {path}: not a readable torch state_dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"backbone weights {path}: no 'features.*' keys; expected a torchvision MobileNetV2 state_dict")
    own = net.state_dict()
    mismatched = [k for k, v in features.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"backbone weights {path}: shapes do not match this width multiplier "
                         f"(first: {mismatched[0]} {tuple(features[mismatched[0]].shape)} vs "
                         f"{tuple(own[mismatched[0]].shape)})")
    missing, unexpected = net.load_state_dict(features, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing or unexpected:
        raise ValueError(f"backbone weights {path}: missing {missing[:3]} unexpected {unexpected[:3]}")
    log.info("loaded backbone weights from %s", path)
