"""Multi-scale backbone features fused at stride 16: EfficientNet-Lite0 (default) or MobileNetV2.

Taps at strides 8, 16 and 32: the stride-8 map is average-pooled x2 and the stride-32 map
upsampled x2, all three are concatenated at stride 16 and a 1x1 conv reduces them to C
channels. Both networks expose a torchvision-style `features` Sequential that is split by index
into stage3/stage4/stage5 (the names params.BACKBONE_TAP_PREFIXES freezes), so the rest of
the model does not care which one it runs. Nothing is ever downloaded: Lite0's ImageNet
weights ship in a pip package, MobileNetV2's come from a local file (see docs/models.md).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .efficientnet_lite import TAP_SPLITS as LITE0_SPLITS
from .efficientnet_lite import EfficientNetLite0, load_lite0_weights

log = logging.getLogger(__name__)

BACKBONES = ("efficientnet_lite0", "mobilenet_v2")
DEFAULT_BACKBONE = "efficientnet_lite0"
LEGACY_BACKBONE = "mobilenet_v2"
"""What a model file without a `backbone` field was built with (every file before Lite0)."""

TAP_SPLITS = (7, 14)
"""MobileNetV2: features[:7] ends at stride 8, features[7:14] at stride 16, features[14:] at stride 32."""
GAIC_STAGE5_END = 18
"""MobileNetV2: features[14:18] ends at the 320-channel block GAIC taps; features[18] is the 320->1280 conv."""
FUSIONS = ("fedpic", "gaic")

SPLITS = {"mobilenet_v2": TAP_SPLITS, "efficientnet_lite0": LITE0_SPLITS}


def build_classifier(kind: str, width: float) -> nn.Module:
    """The ImageNet classifier network whose `features` the taps split."""
    if kind == "efficientnet_lite0":
        return EfficientNetLite0(width)
    if kind == "mobilenet_v2":
        # imported here: torchvision.models pulls in torch._dynamo (~2 s), paid by every
        # device process when the default Lite0 backbone does not need it
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(weights=None, width_mult=width)
    raise ValueError(f"unknown backbone {kind!r}; choose one of {', '.join(BACKBONES)}")


class MultiScaleBackbone(nn.Module):
    """`kind` at width multiplier `width` -> (N, channels, H/16, W/16).

    pretrained: start from ImageNet weights: Lite0 from `weights` or else its pip package;
    MobileNetV2 from `weights` (a local file) when given, else random init.
    """

    def __init__(self, width: float = 1.0, channels: int = 8, weights: Optional[Union[str, Path]] = None,
                 kind: str = "mobilenet_v2", pretrained: bool = True, fusion: str = "fedpic"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if fusion == "gaic" and kind != "mobilenet_v2":
            raise ValueError("fusion 'gaic' (GAIC's 320-channel taps) needs model.backbone: mobilenet_v2")
        self.fusion = fusion
        net = build_classifier(kind, width)
        if pretrained:
            if kind == "efficientnet_lite0":
                load_lite0_weights(net, weights)
            elif weights:
                load_mobilenet_weights(net, weights)
        self.kind = kind
        layers = net.features
        first, second = SPLITS[kind]
        self.stage3 = layers[:first]
        self.stage4 = layers[first:second]
        self.stage5 = layers[second:GAIC_STAGE5_END] if fusion == "gaic" else layers[second:]
        self.eval()  # a train-mode probe would move the pretrained BatchNorm statistics towards a black image
        with torch.no_grad():
            c3, c4, c5 = self.taps(torch.zeros(1, 3, 64, 64))
        self.train()
        self.tap_channels = (c3.shape[1], c4.shape[1], c5.shape[1])
        self.reduce = nn.Conv2d(sum(self.tap_channels), channels, kernel_size=1)
        self.out_channels = channels

    def taps(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The maps at strides 8, 16 and 32."""
        f3 = self.stage3(images)
        f4 = self.stage4(f3)
        return f3, f4, self.stage5(f4)

    def fused_taps(self, images: Tensor) -> Tensor:
        """All three taps at stride 16, concatenated (sum(tap_channels) channels)."""
        f3, f4, f5 = self.taps(images)
        if self.fusion == "gaic":  # GAIC: bilinear (align_corners=True) both ways, f5 weighted 0.5
            f3 = F.interpolate(f3, size=f4.shape[-2:], mode="bilinear", align_corners=True)
            f5 = 0.5 * F.interpolate(f5, size=f4.shape[-2:], mode="bilinear", align_corners=True)
            return torch.cat([f3, f4, f5], dim=1)
        f3 = F.avg_pool2d(f3, kernel_size=2, stride=2)
        f5 = F.interpolate(f5, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f3, f4, f5], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.reduce(self.fused_taps(images))


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path}: no such file (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle/zip
        raise ValueError(f"backbone weights {path}: not a readable torch state_dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone weights {path}: not a state_dict ({type(state).__name__})")  # noqa: TRY004 (a bad file, like the others)
    return {k.removeprefix("module."): v for k, v in state.items()}


_REFERENCE_BLOCK = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(.+)")
_REFERENCE_EXPAND1 = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
"""Reference layout, first block (no expansion): dw conv, bn, relu, pw conv, bn."""
_REFERENCE_EXPAND6 = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
"""Reference layout, other blocks: pw conv, bn, relu, dw conv, bn, relu, pw conv, bn."""


def is_reference_layout(state: dict) -> bool:
    """GAIC/PIC's MobileNetV2 (tonylins/d-li14 code, file mobilenetv2_1.0-0c6065bc.pth): flat
    `features.N.conv.K` blocks, the last 1x1 conv as top-level `conv.*`, `classifier.weight`."""
    return any(k.startswith("conv.") for k in state) or "features.1.conv.3.weight" in state


def reference_to_torchvision(state: dict) -> dict:
    """Rename a GAIC/PIC reference-layout MobileNetV2 state_dict to torchvision's keys."""
    last = 1 + max(int(m.group(1)) for k in state if (m := _REFERENCE_BLOCK.fullmatch(k)))
    out = {}
    for key, value in state.items():
        match = _REFERENCE_BLOCK.fullmatch(key)
        if match:
            block, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
            table = _REFERENCE_EXPAND1 if block == 1 else _REFERENCE_EXPAND6
            if index not in table:
                raise ValueError(f"unexpected key {key} in a reference-layout MobileNetV2")
            out[f"features.{block}.conv.{table[index]}.{rest}"] = value
        elif key.startswith("conv."):
            out[f"features.{last}." + key.removeprefix("conv.")] = value
        elif key.startswith("classifier."):
            out["classifier.1." + key.removeprefix("classifier.")] = value
        else:
            out[key] = value  # features.0.* (stem) has the same keys in both layouts
    return out


def load_mobilenet_weights(net: nn.Module, path: Union[str, Path]) -> None:
    """Load an ImageNet MobileNetV2 state_dict in torchvision's layout or GAIC/PIC's reference layout."""
    path = Path(path)
    state = _read_state(path)
    layout = "torchvision"
    if is_reference_layout(state):
        state, layout = reference_to_torchvision(state), "GAIC/PIC reference"
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if features:  # the ImageNet classifier too, when the file has it (shapes must match)
        features.update({k: v for k, v in state.items() if k.startswith("classifier.")})
    if not features:
        raise ValueError(f"backbone weights {path}: no 'features.*' keys; expected a MobileNetV2 state_dict "
                         "(torchvision or GAIC/PIC layout)")
    own = net.state_dict()
    mismatched = [k for k, v in features.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"backbone weights {path}: shapes do not match this width multiplier "
                         f"(first: {mismatched[0]} {tuple(features[mismatched[0]].shape)} vs "
                         f"{tuple(own[mismatched[0]].shape)})")
    missing, unexpected = net.load_state_dict(features, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    unexpected = [k for k in unexpected if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"backbone weights {path}: missing {missing[:3]} unexpected {unexpected[:3]}")
    log.info("loaded MobileNetV2 weights (%s layout) from %s", layout, path)
