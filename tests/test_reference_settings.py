"""The reference (GAIC/PIC) settings of configs/paper.yaml: 320-channel taps and GAIC's fusion,
the reference rank loss with ties, GAIC's global target normalization."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from pic_core.backbone import MultiScaleBackbone
from pic_core.config import load_config
from pic_core.losses import crop_loss, fidelity_rank_loss, reference_rank_loss
from pic_core.model import CropScorer


def literal_reference_loss(pred: list[float], target: list[float]) -> float:
    """The reference loss written out pair by pair (every ordered pair i != j)."""
    total, pairs = 0.0, 0
    for i in range(len(pred)):
        for j in range(len(pred)):
            if i == j:
                continue
            p = 0.5 * (1.0 + math.erf((pred[i] - pred[j]) / math.sqrt(2.0)))  # Phi(s_i - s_j)
            t = 1.0 if target[i] > target[j] else 0.0 if target[i] < target[j] else 0.5
            total += 1.0 - math.sqrt(t * p) - math.sqrt((1.0 - t) * (1.0 - p))
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("seed", range(4))
def test_reference_rank_loss_matches_the_pairwise_formula_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(12, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (12,), generator=gen).double()  # many ties, as 0..4 votes have
    got = float(reference_rank_loss(pred, target, eps=0.0))
    assert got == pytest.approx(literal_reference_loss(pred.tolist(), target.tolist()), abs=1e-9)


def test_ties_pull_scores_together_only_in_the_reference_loss():
    target = torch.tensor([1.0, 1.0, 0.0])
    apart = torch.tensor([2.0, 0.0, -3.0], requires_grad=True)
    reference_rank_loss(apart, target).backward()
    assert apart.grad[0] > 0 > apart.grad[1]  # the tied pair is pushed together
    apart.grad = None
    fidelity_rank_loss(apart, target).backward()
    assert apart.grad[0] <= 0  # fedpic's default ignores the tie: crop 0 is only pushed above crop 2


def test_global_targets_use_gaic_mos_statistics():
    pred, target = torch.tensor([0.1, -0.3, 0.5]), torch.tensor([3.75, 2.15, 2.95])
    got = crop_loss(pred, target, 0.0, 1.0, targets="global")
    want = nn.functional.smooth_l1_loss(pred, (target - 2.95) / 0.8)
    assert float(got) == pytest.approx(float(want))
    per_image = crop_loss(pred, target, 0.0, 1.0)
    assert float(per_image) != pytest.approx(float(want))


def test_gaic_fusion_taps_320_channels_and_weights_f5_by_half():
    torch.manual_seed(0)
    backbone = MultiScaleBackbone(1.0, 8, kind="mobilenet_v2", pretrained=False, fusion="gaic").eval()
    assert backbone.tap_channels == (32, 96, 320)  # GAIC's DimRed takes 448 channels
    default = MultiScaleBackbone(1.0, 8, kind="mobilenet_v2", pretrained=False).eval()
    assert default.tap_channels == (32, 96, 1280)
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        f3, f4, f5 = backbone.taps(image)
        fused = backbone.fused_taps(image)
    assert f5.shape[1] == 320 and fused.shape == (1, 448, 6, 8)
    want = torch.cat([nn.UpsamplingBilinear2d(scale_factor=0.5)(f3), f4, 0.5 * nn.UpsamplingBilinear2d(scale_factor=2.0)(f5)], 1)
    assert torch.allclose(fused, want, atol=1e-6)
    with pytest.raises(ValueError, match="needs model.backbone: mobilenet_v2"):
        MultiScaleBackbone(1.0, 8, kind="efficientnet_lite0", pretrained=False, fusion="gaic")


def test_paper_config_holds_the_reference_settings_and_builds():
    config = load_config("paper")
    model = config.model
    assert (model.backbone, model.fusion, model.rank_loss, model.targets) == ("mobilenet_v2", "gaic", "reference",
                                                                              "global")
    assert (model.target_mean, model.target_std, model.align_size, model.channels) == (2.95, 0.8, 9, 8)
    scorer = CropScorer(dataclasses.replace(model, pretrained=False)).eval()
    assert scorer.backbone.tap_channels == (32, 96, 320)


def test_gaic_augmentation_mirrors_boxes_with_the_image_and_keeps_crop_score_pairs():
    from pic_core.augment import gaic_augment
    from pic_core.samples import Sample, boxes_with_batch

    boxes = np.array([[0, 0, 32, 64], [8, 4, 40, 60], [16, 0, 64, 32], [0, 32, 96, 64], [40, 8, 90, 50]], np.float32)
    image = torch.randn(3, 64, 96)
    sample = Sample("x", image, boxes_with_batch(boxes), torch.arange(5, dtype=torch.float32), (64, 96))
    mirrored_seen = plain_seen = False
    for seed in range(12):
        out = gaic_augment(sample, np.random.default_rng(seed), max_crops=3)
        assert out.boxes.shape == (3, 5) and out.image.shape == image.shape
        assert torch.all(out.image.reshape(-1) <= image.max() * 2 + 10)  # renormalized back, not 0..255
        for box, score in zip(out.boxes[:, 1:].numpy(), out.scores.long().tolist()):
            original = boxes[score]
            if np.allclose(box, original):
                plain_seen = True
            else:  # mirrored: x1' = W - x2, x2' = W - x1, y unchanged
                assert np.allclose(box, [96 - original[2], original[1], 96 - original[0], original[3]])
                mirrored_seen = True
    assert mirrored_seen and plain_seen
    assert gaic_augment(sample, np.random.default_rng(0), max_crops=0).boxes.shape == (5, 5)


def test_pretrain_with_the_paper_training_settings_runs(toy_dataset, tiny_config):
    from pic_core.data import Dataset
    from pic_core.samples import SampleCache
    from pic_core.train import pretrain

    config = dataclasses.replace(
        tiny_config, pre=dataclasses.replace(tiny_config.pre, epochs=2, augment=True, crops_per_step=8),
        model=dataclasses.replace(tiny_config.model, rank_loss="reference", targets="global", pretrained=False))
    model = CropScorer(config.model)
    log = pretrain(model, Dataset(toy_dataset).generic()[:4], dataclasses.replace(config, pre=dataclasses.replace(
        config.pre, rank_weight=1.0)), SampleCache(config.model.short_side))
    assert len(log.epoch_losses) == 2 and all(math.isfinite(v) for v in log.epoch_losses)
