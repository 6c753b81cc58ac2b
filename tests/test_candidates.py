"""The free candidate set: coverage of drawn crops, sizes, ratios, and where it is used."""
from __future__ import annotations

import numpy as np
import pytest

from pic_core.candidates import FREE_RATIOS, MIN_SIDE, WHOLE_FRAME, candidate_set, free_candidates
from pic_core.config import ModelConfig
from pic_core.cropper import Cropper
from pic_core.geometry import box_aspect, box_iou, grid_anchors
from pic_core.model import CropScorer

SIZES = [(427, 640), (640, 427), (512, 512), (1080, 1920)]


def drawn_crops(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """Crops a person might draw: a quarter of the photo or more, ratio between 2:3 and 16:9, anywhere."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        area = rng.uniform(0.25, 1.0) * height * width
        ratio = float(np.exp(rng.uniform(np.log(2 / 3), np.log(16 / 9))))
        w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
        if w > width or h > height:
            continue
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        out.append([x, y, x + w, y + h])
    return np.asarray(out)


@pytest.mark.parametrize("size", SIZES)
def test_fine_set_covers_drawn_crops(size):
    boxes = free_candidates(*size, "fine")
    assert 1200 <= len(boxes) <= 2300
    best = box_iou(drawn_crops(*size, 600, seed=sum(size)), boxes).max(axis=1)
    assert (best >= 0.8).mean() >= 0.985
    assert best.min() >= 0.75


@pytest.mark.parametrize("size", SIZES)
def test_coarse_set_is_small_and_the_grid_is_not_enough(size):
    coarse = free_candidates(*size, "coarse")
    assert 170 <= len(coarse) <= 300
    drawn = drawn_crops(*size, 300, seed=1)
    grid = grid_anchors(*size)
    # the reason for the free set: tight crops have no grid anchor near them
    tight = drawn[(drawn[:, 2] - drawn[:, 0]) * (drawn[:, 3] - drawn[:, 1]) < 0.35 * size[0] * size[1]]
    assert np.median(box_iou(tight, grid).max(axis=1)) < 0.6
    assert np.median(box_iou(tight, coarse).max(axis=1)) > 0.7


def test_free_set_ratios_sizes_and_positions():
    height, width = 427, 640
    boxes = free_candidates(height, width)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= width + 1e-3) and np.all(boxes[:, 3] <= height + 1e-3)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width)
    assert areas.min() < 0.3 and areas.max() > 0.95
    ratios = box_aspect(boxes)
    for name, value in FREE_RATIOS.items():
        assert np.any(np.abs(ratios / value - 1) < 0.01), name
    assert np.any(np.abs(ratios / (width / height) - 1) < 0.01)  # the photo's own ratio ("free")
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    assert centres.min() < 0.3 * width and centres.max() > 0.7 * width  # off-centre crops
    assert MIN_SIDE == 0.5
    assert np.array_equal(boxes, free_candidates(height, width))  # deterministic


def test_candidate_set_names():
    assert np.allclose(candidate_set(256, 384, "grid", short_side=256), grid_anchors(256, 384))
    with pytest.raises(ValueError, match="unknown candidate set"):
        candidate_set(100, 100, "round")
    with pytest.raises(ValueError, match="density"):
        free_candidates(100, 100, "medium")


def test_cropper_uses_the_set_its_model_names(tiny_config):
    config = ModelConfig(**{**tiny_config.model.__dict__, "candidates": "free"})
    cropper = Cropper.from_model(CropScorer(config), personal=False)
    assert cropper.candidate_set == "free"
    suggested = cropper.candidates((300, 400))
    assert len(suggested) == len(free_candidates(300, 400)) - 1  # all but the uncropped photo
    area = (suggested[:, 2] - suggested[:, 0]) * (suggested[:, 3] - suggested[:, 1])
    assert area.max() < WHOLE_FRAME * 300 * 400
    grid = Cropper.from_model(CropScorer(tiny_config.model), personal=False)
    assert grid.candidate_set == "grid"
    assert len(grid.candidates((300, 400))) < 200


@pytest.mark.parametrize("size", [(512, 512), (427, 640), (300, 451), (1080, 1920)])
def test_suggestions_leave_out_only_the_uncropped_photo(size):
    """Boxes of a standard ratio that fill a photo of nearly that ratio (640x427 is 3:2 to 0.1%)
    are the uncropped photo too; every other box stays a suggestion."""
    height, width = size
    every = free_candidates(height, width)
    suggested = free_candidates(height, width, whole_frame=False)
    area = (every[:, 2] - every[:, 0]) * (every[:, 3] - every[:, 1]) / (height * width)
    assert 1 <= len(every) - len(suggested) <= 2
    assert len(suggested) == int((area < WHOLE_FRAME).sum())
    assert area[area < WHOLE_FRAME].max() < 0.95  # the next box trims something visible
