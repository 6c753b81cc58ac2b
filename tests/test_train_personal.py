"""The fast personalization path: which PERSONAL parameters it fits, and that the crop-head
offsets let it fit a user's ranking that d_u alone cannot."""

import pytest
import torch

from pic_core.config import Config, FinetuneConfig, ModelConfig
from pic_core.geometry import grid_anchors
from pic_core.losses import crop_loss
from pic_core.model import CropScorer
from pic_core.params import shared_state
from pic_core.samples import Sample, boxes_with_batch
from pic_core.train import cached_head_inputs, finetune, train_personal

TINY = ModelConfig(backbone="mobilenet_v2", width=0.35, channels=4, align_size=5, short_side=64, hidden=16, feature_dim=8, embed_dim=4,
                   context_dim=8, dropout=0.0)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    """Three images whose target prefers small crops low in the frame (a made-up user taste)."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(3):
        boxes = boxes_with_batch(grid_anchors(64, 96))
        area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        scores = boxes[:, 4] / 64 - area / area.max() + 0.1 * torch.randn(len(boxes), generator=generator)
        out.append(Sample(f"img{i}", torch.randn(3, 64, 96, generator=generator), boxes, scores, (64, 96)))
    return out


def _model() -> CropScorer:
    torch.manual_seed(0)
    return CropScorer(TINY).eval()


def _loss(model: CropScorer, samples: list[Sample]) -> float:
    with torch.no_grad():
        return sum(float(crop_loss(model(s.image[None], s.boxes), s.scores, 1.0, 0.0)) for s in samples)


def _fit(samples: list[Sample], head_lr: float) -> CropScorer:
    model = _model()
    train_personal(model, samples, epochs=15, lr=5e-2, rank_weight=1.0, smooth_l1_weight=0.0, head_lr=head_lr)
    return model


def test_offsets_fit_what_d_u_alone_cannot_and_shared_weights_stay(samples):
    before = _loss(_model(), samples)
    delta_only, with_offsets = _fit(samples, 0.0), _fit(samples, 1e-2)
    assert all(torch.count_nonzero(p) == 0 for p in delta_only.personal.offset_parameters())  # federated rounds
    assert any(torch.count_nonzero(p) > 0 for p in with_offsets.personal.offset_parameters())
    assert _loss(with_offsets, samples) < _loss(delta_only, samples) < before
    for key, value in shared_state(_model()).items():  # the fast path never moves a shared weight
        torch.testing.assert_close(shared_state(with_offsets)[key], value)


def test_cached_inputs_give_the_same_fit_as_computing_them(samples):
    given = _model()
    train_personal(given, samples, epochs=3, lr=5e-2, rank_weight=1.0, smooth_l1_weight=0.0, head_lr=1e-2,
                   head_inputs=cached_head_inputs(given, samples))
    computed = _model()
    train_personal(computed, samples, epochs=3, lr=5e-2, rank_weight=1.0, smooth_l1_weight=0.0, head_lr=1e-2)
    for a, b in zip(given.personal.parameters(), computed.personal.parameters()):
        torch.testing.assert_close(a, b)


class _Cache:
    def __init__(self, samples: list[Sample]):
        self._samples = samples

    def samples(self, _sets):
        return self._samples


def test_full_finetune_leaves_offsets_at_zero(samples):
    model = _model()
    config = Config(model=TINY, progress=False, finetune=FinetuneConfig(mode="full", epochs=1))
    finetune(model, [], config, _Cache(samples))
    assert all(torch.count_nonzero(p) == 0 for p in model.personal.offset_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(shared_state(model).values(), shared_state(_model()).values()))


def test_d_u_readout_coordinates_learn_only_when_d_u_is_fitted_alone_and_asked_to(samples):
    """model.preference_readout: d_u's readout part moves in a d_u-alone fit with readout=True (the
    few-shot path), stays at 0 in a federated round's fit (readout=False) and beside the offsets,
    which already cover the objective readout."""
    from dataclasses import replace

    config = replace(TINY, preference_readout=0.5)
    embed = TINY.embed_dim
    moved = {}
    for name, head_lr, readout in [("alone", 0.0, True), ("round", 0.0, False), ("offsets", 1e-2, True)]:
        torch.manual_seed(0)
        model = CropScorer(config).eval()
        train_personal(model, samples, epochs=5, lr=5e-2, rank_weight=1.0, smooth_l1_weight=0.0, head_lr=head_lr,
                       readout=readout)
        delta = model.personal.delta.detach()
        assert float(delta[:embed].abs().sum()) > 0
        moved[name] = float(delta[embed:].abs().sum())
    assert moved["alone"] > 0 and moved["round"] == 0 and moved["offsets"] == 0
    torch.manual_seed(0)
    model = CropScorer(config).eval()
    before = _loss(model, samples)
    train_personal(model, samples, epochs=15, lr=5e-2, rank_weight=1.0, smooth_l1_weight=0.0, readout=True)
    assert _loss(model, samples) < before
