import copy

import pytest
import torch

from pic_core.config import ModelConfig
from pic_core.geometry import grid_anchors
from pic_core.model import HEAD_MODULES, CropScorer, box_geometry, offset_key
from pic_core.params import (is_personal, load_personal, load_shared, personal_keys, personal_state, shared_keys,
                             shared_state)
from pic_core.samples import boxes_with_batch

TINY = ModelConfig(backbone="mobilenet_v2", width=0.35, channels=4, align_size=5, short_side=64, hidden=16, feature_dim=8, embed_dim=4,
                   context_dim=8, dropout=0.0)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return CropScorer(TINY).eval()


def _inputs(height=64, width=96, batch=1):
    images = torch.randn(batch, 3, height, width)
    boxes = torch.cat([boxes_with_batch(grid_anchors(height, width), b) for b in range(batch)])
    return images, boxes


def test_scores_any_number_of_candidates(model):
    images, boxes = _inputs()
    assert model(images, boxes).shape == (len(boxes),)
    assert model(images, boxes[:3]).shape == (3,)
    arbitrary = torch.tensor([[0, 1.0, 2.0, 50.0, 60.0], [0, 30.0, 10.0, 90.0, 40.0]])
    assert torch.isfinite(model(images, arbitrary)).all()


def test_batch_of_images_scores_each_image_independently(model):
    images, boxes = _inputs(batch=2)
    joint = model(images, boxes)
    half = len(boxes) // 2
    alone = model(images[1:], boxes[half:] - torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(joint[half:], alone, atol=1e-5, rtol=1e-5)


def test_zero_delta_is_the_generic_model(model):
    images, boxes = _inputs()
    generic = model(images, boxes, personal=False)
    torch.testing.assert_close(model(images, boxes), generic)  # d_u starts at zero
    with torch.no_grad():
        model.personal.delta.normal_()
    assert not torch.allclose(model(images, boxes), generic)
    torch.testing.assert_close(model(images, boxes, personal=False), generic)


def test_delta_argument_per_image_overrides_stored_delta(model):
    images, boxes = _inputs(batch=2)
    deltas = torch.randn(2, TINY.embed_dim)
    per_image = model(images, boxes, delta=deltas)
    half = len(boxes) // 2
    first = model(images, boxes, delta=deltas[0])
    torch.testing.assert_close(per_image[:half], first[:half])
    assert not torch.allclose(per_image[half:], first[half:])


def test_personal_keys_are_exactly_the_user_offset():
    plain = CropScorer(ModelConfig(**{**TINY.__dict__, "personal_offsets": False}))
    assert personal_keys(plain) == ["personal.delta"]
    headed = CropScorer(ModelConfig(**{**TINY.__dict__, "personal_head": True, "personal_offsets": False}))
    assert set(personal_keys(headed)) == {"personal.delta", "personal.head.weight", "personal.head.bias"}
    model = CropScorer(TINY)
    head = [f"{m}.{n}" for m in HEAD_MODULES for n, _ in getattr(model, m).named_parameters()]
    offsets = {"personal.offsets." + k.replace(".", "__") for k in head}
    assert set(personal_keys(model)) == {"personal.delta"} | offsets
    for key in head:  # the shared weight stays shared; its personal offset is a separate key
        assert key in shared_keys(model)
    assert "prior_embedding" in shared_keys(model)
    assert not any(is_personal(k) for k in shared_state(model))


def test_head_offsets_change_only_the_personal_scores(model):
    images, boxes = _inputs(batch=1)
    personal = copy.deepcopy(model).eval()
    generic_before = personal(images, boxes, personal=False)
    torch.testing.assert_close(personal(images, boxes), generic_before)  # offsets start at 0
    with torch.no_grad():
        for p in personal.personal.offset_parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(personal(images, boxes), generic_before)
    torch.testing.assert_close(personal(images, boxes, personal=False), generic_before)
    personal.personal.reset()
    torch.testing.assert_close(personal(images, boxes), generic_before)


def test_compact_offsets_are_the_objective_readout_and_its_batchnorm(model):
    compact = model.personal.offset_parameters("compact")
    shapes = sorted(tuple(p.shape) for p in compact)
    feature_dim = TINY.feature_dim
    assert shapes == sorted([(1, feature_dim), (1,), (feature_dim,), (feature_dim,)])
    everything = {id(p) for p in model.personal.offset_parameters()}
    assert {id(p) for p in compact} < everything
    with pytest.raises(ValueError, match="offset scope"):
        model.personal.offset_parameters("head")


def test_preference_readout_lets_d_u_reweigh_the_objective_feature():
    """With preference_readout r, d_u's last feature_dim entries act as r x an offset on the
    objective readout's weights; the generic model (d_u = 0) is unchanged by the option."""
    from dataclasses import replace

    torch.manual_seed(0)
    plain = CropScorer(TINY).eval()
    torch.manual_seed(0)
    wide = CropScorer(replace(TINY, preference_readout=0.5)).eval()
    wide.load_state_dict({k: v for k, v in plain.state_dict().items() if "prior_embedding" not in k
                          and not k.startswith("personal.delta")}, strict=False)
    assert wide.preference_dim == TINY.embed_dim + TINY.feature_dim == wide.personal.delta.numel()
    torch.testing.assert_close(wide.prior_embedding[:TINY.embed_dim], plain.prior_embedding)
    images, boxes = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(wide(images, boxes), plain(images, boxes))  # e_0's readout part starts at 0
        taste = torch.randn(TINY.feature_dim)
        wide.personal.delta[TINY.embed_dim:] = taste
        plain.personal.offsets[offset_key("objective_out.weight")] += 0.5 * taste
        torch.testing.assert_close(wide(images, boxes), plain(images, boxes))


def test_shared_and_personal_loads_are_strict(model):
    other = CropScorer(TINY)
    load_shared(other, shared_state(model))
    for key, value in shared_state(model).items():
        torch.testing.assert_close(other.state_dict()[key], value)
    with pytest.raises(KeyError, match="other part"):
        load_shared(other, {**shared_state(model), **personal_state(model)})
    with pytest.raises(KeyError, match="missing"):
        load_shared(other, dict(list(shared_state(model).items())[1:]))
    with pytest.raises(ValueError, match="shape"):
        load_personal(other, {**personal_state(model), "personal.delta": torch.zeros(TINY.embed_dim + 1)})


def test_box_geometry_is_scale_free():
    boxes = torch.tensor([[0, 10.0, 20.0, 110.0, 70.0]])
    small = box_geometry(boxes, (100, 200))
    large = box_geometry(boxes * torch.tensor([1, 2.0, 2.0, 2.0, 2.0]), (200, 400))
    torch.testing.assert_close(small, large)


def test_gradients_reach_backbone_heads_and_embedding():
    torch.manual_seed(0)
    model = CropScorer(TINY).train()
    images, boxes = _inputs()
    model(images, boxes).square().mean().backward()
    for name in ("backbone.reduce.weight", "objective_out.weight", "preference.0.weight", "prior_embedding",
                 "personal.delta", "attention.spatial.weight", "backbone.stage3.0.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_local_backbone_weights_load_and_bad_files_are_refused(tmp_path):
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None, width_mult=TINY.width)
    path = tmp_path / "mbv2.pth"
    torch.save(reference.state_dict(), path)
    model = CropScorer(ModelConfig(**{**TINY.__dict__, "backbone_weights": str(path)}))
    torch.testing.assert_close(model.backbone.stage3[0][0].weight, reference.features[0][0].weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        CropScorer(ModelConfig(**{**TINY.__dict__, "backbone_weights": str(tmp_path / "missing.pth")}))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features"):
        CropScorer(ModelConfig(**{**TINY.__dict__, "backbone_weights": str(tmp_path / "bad.pth")}))
    wide = mobilenet_v2(weights=None, width_mult=1.0)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="width multiplier"):
        CropScorer(ModelConfig(**{**TINY.__dict__, "backbone_weights": str(tmp_path / "wide.pth")}))
