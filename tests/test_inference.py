"""The scoring copy (folded BatchNorms, patch convolution as a matmul) scores like the model."""
import dataclasses

import pytest
import torch
from torch import nn

from pic_core.inference import PatchLinear, scoring_copy
from pic_core.model import CropScorer


def _trained_statistics(model: CropScorer) -> CropScorer:
    """Non-trivial BatchNorm statistics and affine terms, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_lite0"])
def test_scoring_copy_matches_the_model_and_leaves_it_untouched(tiny_config, backbone):
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config.model, backbone=backbone, pretrained=False)
    model = _trained_statistics(CropScorer(config))
    with torch.no_grad():
        model.personal.delta.normal_()
        for offset in model.personal.offset_parameters():  # a user's crop-head offsets, as after the fast path
            offset.copy_(0.1 * torch.randn_like(offset))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(1, 3, 64, 96)
    boxes = torch.tensor([[0, 0, 0, 60, 50], [0, 10, 5, 90, 64], [0, 30, 10, 70, 40]], dtype=torch.float32)
    for personal in (False, True):
        scorer = scoring_copy(model, personal)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in scorer.modules())
        assert isinstance(scorer.objective_trunk[0], PatchLinear)
        with torch.no_grad():
            torch.testing.assert_close(scorer(images, boxes, personal=personal),
                                       model(images, boxes, personal=personal), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model(images, boxes), model(images, boxes, personal=False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
