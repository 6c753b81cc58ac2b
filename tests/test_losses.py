import math

import torch

from pic_core.losses import crop_loss, fidelity_rank_loss, standardize


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_fidelity_loss_hand_computed():
    pred = torch.tensor([2.0, 1.0, 0.0])
    target = torch.tensor([3.0, 1.0, 2.0])
    # untied pairs oriented so the first is better in the target: (0,1), (0,2), (2,1)
    expected = sum(1 - math.sqrt(_phi(d / math.sqrt(2))) for d in (2.0 - 1.0, 2.0 - 0.0, 0.0 - 1.0)) / 3
    assert abs(fidelity_rank_loss(pred, target).item() - expected) < 1e-6


def test_fidelity_loss_prefers_correct_order_and_ignores_ties():
    target = torch.tensor([1.0, 2.0, 3.0])
    right = fidelity_rank_loss(torch.tensor([0.0, 1.0, 2.0]), target)
    wrong = fidelity_rank_loss(torch.tensor([2.0, 1.0, 0.0]), target)
    assert right < wrong
    tied = torch.tensor([1.0, 1.0])
    assert fidelity_rank_loss(torch.tensor([5.0, -5.0], requires_grad=True), tied).item() == 0.0


def test_standardize_is_scale_free_and_safe_on_constants():
    x = torch.tensor([1.0, 2.0, 4.0])
    torch.testing.assert_close(standardize(x), standardize(10 * x + 3))
    assert torch.equal(standardize(torch.ones(4)), torch.zeros(4))


def test_crop_loss_weights_combine():
    pred = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 2.0])
    both = crop_loss(pred, target, 0.8, 1.0)
    rank = crop_loss(pred, target, 0.8, 0.0)
    l1 = crop_loss(pred, target, 0.0, 1.0)
    torch.testing.assert_close(both, rank + l1)
    both.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
