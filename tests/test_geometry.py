import numpy as np
import pytest

from pic_core.geometry import (aspect_anchors, box_aspect, box_iou, filter_by_aspect, grid_anchors, parse_aspect,
                               resized_size, to_original, to_resized, validate_boxes)


@pytest.mark.parametrize("width,count", [(256, 90), (352, 87), (384, 83), (448, 72), (512, 38)])
def test_anchor_counts_match_reference(width, count):
    assert len(grid_anchors(256, width)) == count
    assert len(grid_anchors(width, 256)) == count  # portrait: same count by symmetry


def test_anchors_lie_on_bin_centres_inside_the_image():
    boxes = grid_anchors(256, 384)
    step_x, step_y = 384 / 12, 256 / 12
    for x1, y1, x2, y2 in boxes:
        for value, step in ((x1, step_x), (y1, step_y), (x2, step_x), (y2, step_y)):
            index = value / step - 0.5
            assert abs(index - round(index)) < 1e-4
        assert 0 <= x1 < x2 <= 384 and 0 <= y1 < y2 <= 256
        assert 0.5 < (y2 - y1) / (x2 - x1) < 2.0
        assert (x2 - x1) * (y2 - y1) > 0.4999 * 256 * 384 * (144 - 1) / 144 * 0  # positive area
    area_bins = ((boxes[:, 2] - boxes[:, 0]) / step_x) * ((boxes[:, 3] - boxes[:, 1]) / step_y)
    assert (area_bins > 0.4999 * 144).all()


@pytest.mark.parametrize("size,expected", [((480, 640), (256, 352)), ((1000, 3000), (256, 768)),
                                           ((3000, 1000), (768, 256)), ((10, 10), (256, 256)),
                                           ((256, 384), (256, 384))])
def test_resized_size_rounds_each_side_to_32(size, expected):
    assert resized_size(*size) == expected


def test_resized_size_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        resized_size(0, 10)


def test_box_maps_round_trip():
    boxes = np.array([[10, 20, 300, 200], [0, 0, 640, 480]], np.float32)
    there = to_resized(boxes, (480, 640), (256, 352))
    np.testing.assert_allclose(there[1], [0, 0, 352, 256], atol=1e-4)
    np.testing.assert_allclose(to_original(there, (256, 352), (480, 640)), boxes, atol=1e-3)


@pytest.mark.parametrize("text,value", [("16:9", 16 / 9), ("4/5", 0.8), ("1.5", 1.5), ("free", None), (None, None)])
def test_parse_aspect(text, value):
    assert parse_aspect(text) == (pytest.approx(value) if value else None)


@pytest.mark.parametrize("text", ["16:0", "a:b", "-1", "0"])
def test_parse_aspect_rejects_nonsense(text):
    with pytest.raises(ValueError, match="aspect"):
        parse_aspect(text)


@pytest.mark.parametrize("aspect", [16 / 9, 4 / 3, 1.0, 0.8, 9 / 16])
@pytest.mark.parametrize("size", [(480, 640), (1000, 300), (50, 2000)])
def test_aspect_anchors_have_exact_ratio_and_stay_inside(aspect, size):
    boxes = aspect_anchors(size[0], size[1], aspect)
    assert len(boxes) > 0
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    np.testing.assert_allclose(widths / heights, aspect, rtol=0, atol=aspect * 2 / heights.min() + 1e-3)
    assert (boxes[:, :2] >= -1e-3).all() and (boxes[:, 2] <= size[1] + 1e-3).all()
    assert (boxes[:, 3] <= size[0] + 1e-3).all()


def test_filter_by_aspect_keeps_only_close_ratios():
    boxes = np.array([[0, 0, 160, 90], [0, 0, 100, 100], [0, 0, 170, 90]], np.float32)
    kept = filter_by_aspect(boxes, 16 / 9, tolerance=0.1)
    assert list(kept) == [0, 2]
    assert box_aspect(boxes[:1])[0] == pytest.approx(16 / 9)


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0])


def test_validate_boxes_names_each_problem():
    problems = validate_boxes(np.array([[0, 0, 10, 10], [5, 5, 4, 9], [0, 0, 500, 10], [np.nan, 0, 1, 1]]),
                              (100, 100))
    assert len(problems) == 3
    assert problems[0].startswith("box 1") and "x2 > x1" in problems[0]
    assert problems[1].startswith("box 2") and "outside" in problems[1]
    assert problems[2].startswith("box 3") and "non-finite" in problems[2]
