"""Subjects kept: faces found as heads, the subject rule, and real photos cropped at 1:1, 16:9, 4:5, free."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pic_core.candidates import WHOLE_FRAME
from pic_core.config import ModelConfig, load_config
from pic_core.cropper import Cropper
from pic_core.model import CropScorer
from pic_core.subjects import Subjects, apply_subject_rule, detect_faces, edge_saliency, find_subjects, heads_from_faces
from real_photos import RATIOS, SUBJECTS, load_photo, subject_kept

PEOPLE = ("astronaut", "grace_hopper")


@pytest.fixture(scope="module")
def photos():
    return {name: load_photo(name) for name in SUBJECTS}


@pytest.fixture(scope="module")
def free_cropper():
    torch.manual_seed(0)
    model = CropScorer(ModelConfig(**{**load_config("tiny").model.__dict__, "candidates": "free"}))
    return Cropper.from_model(model, personal=False)


def test_faces_found_on_people_and_not_elsewhere(photos):
    for name, image in photos.items():
        faces = detect_faces(image)
        if name in PEOPLE:
            assert len(faces) >= 1, name
            head = heads_from_faces(faces[:1], image.shape[:2])[0]
            assert subject_kept(head, SUBJECTS[name], 0.7), (name, head)  # the grown face covers the head
        else:
            assert len(faces) == 0, (name, faces)


def test_saliency_box_overlaps_the_subject_without_faces(photos):
    for name in ("chelsea", "coffee", "rocket", "camera"):
        subjects = find_subjects(photos[name])
        assert not len(subjects.heads) and subjects.salient is not None
        x1, y1, x2, y2 = SUBJECTS[name]
        s = subjects.salient
        assert min(s[2], x2) > max(s[0], x1) and min(s[3], y2) > max(s[1], y1), (name, s)


def test_rule_drops_crops_that_cut_a_head():
    boxes = np.array([[0, 0, 100, 100], [0, 40, 100, 100], [20, 0, 100, 80]], dtype=np.float32)
    head = Subjects(heads=np.array([[30, 10, 60, 45]], dtype=np.float32))
    adjusted = apply_subject_rule(boxes, np.array([0.0, 5.0, 1.0]), head)
    assert np.isneginf(adjusted[1])  # cuts the head: out, whatever its score
    assert adjusted.argmax() == 2
    salient = Subjects(salient=np.array([0, 0, 100, 50], dtype=np.float32))
    boxes = np.vstack([boxes, [[0, 0, 90, 90], [10, 10, 100, 100]]])
    adjusted = apply_subject_rule(boxes, np.array([0.0, 0.1, 0.0, 0.2, -0.2]), salient)
    assert adjusted[1] < adjusted[0]  # cutting 80% of the salient region costs more than a small score gain
    assert adjusted.argmax() == 3


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "coffee", "rocket"])
def test_subjects_from_the_network_copy_match_the_full_photo(photos, name):
    """The Cropper hands the detectors its network-size copy (one resize of a large photo instead
    of one per detector): the same heads or salient box, in the photo's own pixels."""
    import cv2

    from pic_core.data.images import network_size

    image = cv2.resize(photos[name], None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)  # a larger photo
    full, shrunk = find_subjects(image), find_subjects(image, shrunk=network_size(image, 256))
    assert len(full.heads) == len(shrunk.heads)
    for a, b in zip(full.heads, shrunk.heads):
        assert _iou(a, b) > 0.85, (a, b)
    assert (full.salient is None) == (shrunk.salient is None)
    if full.salient is not None:
        assert _iou(full.salient, shrunk.salient) > 0.85, (full.salient, shrunk.salient)


def test_partial_sort_quantile_is_numpys():
    from pic_core.subjects import _quantile

    rng = np.random.default_rng(1)
    for size in (1, 2, 7, 64 * 96):
        values = rng.random(size)
        for q in (0.0, 0.5, 0.9, 1.0):
            assert _quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-15)


def test_an_edge_through_the_subject_costs_more_than_one_beside_it():
    """edge_saliency: the mean saliency along a crop's most salient inner edge (an edge on the photo's
    border cuts nothing); the rule ranks the crop whose edge misses the subject first."""
    saliency = np.zeros((40, 60))
    saliency[10:30, 20:40] = 1.0  # the subject, in a 400 x 600 photo: x 200-400, y 100-300
    boxes = np.array([[0, 0, 600, 400],     # the whole photo: no inner edge
                      [0, 150, 600, 400],   # top edge across the subject (y 150)
                      [0, 0, 600, 350],     # bottom edge below the subject
                      [300, 0, 600, 400]])  # left edge through the subject's middle (x 300)
    edges = edge_saliency(boxes, saliency, (400, 600))
    np.testing.assert_allclose(edges, [0.0, 20 / 60, 0.0, 20 / 40])
    rng = np.random.default_rng(0)
    noisy = rng.random((30, 45))
    for x1, y1, x2, y2 in rng.uniform(0, 1, (20, 4)) * [600, 400, 600, 400]:
        box = np.array([[min(x1, x2), min(y1, y2), max(x1, x2) + 20, max(y1, y2) + 20]]).clip(0, [600, 400] * 2)
        c1, r1 = int(round(box[0, 0] * 45 / 600)), int(round(box[0, 1] * 30 / 400))
        c2 = max(c1, min(int(round(box[0, 2] * 45 / 600)) - 1, 44))
        r2 = max(r1, min(int(round(box[0, 3] * 30 / 400)) - 1, 29))
        c1, r1 = min(c1, 44), min(r1, 29)
        sides = [(box[0, 1] > 0.5, noisy[r1, c1:c2 + 1]), (box[0, 3] < 399.5, noisy[r2, c1:c2 + 1]),
                 (box[0, 0] > 0.5, noisy[r1:r2 + 1, c1]), (box[0, 2] < 599.5, noisy[r1:r2 + 1, c2])]
        expected = max([side.mean() for inner, side in sides if inner], default=0.0)
        assert edge_saliency(box, noisy, (400, 600))[0] == pytest.approx(expected)
    # A's top edge runs through the subject (it keeps 90% of the salient mass: no mass penalty), B's
    # edges miss it: a slightly better model score does not buy the cut; without the map, A wins
    boxes = np.array([[0, 120, 600, 400], [0, 0, 600, 350], [0, 0, 600, 400]])
    scores = np.array([0.1, 0.0, -0.5])
    subjects = Subjects(saliency=saliency)
    assert apply_subject_rule(boxes, scores, subjects, (400, 600)).argmax() == 1
    assert apply_subject_rule(boxes, scores, subjects, None).argmax() == 0


def test_top_crop_keeps_the_subject(photos, free_cropper):
    """Even an untrained model keeps most subjects: heads by rule, others by saliency (the trained
    demo model's figure, 22 of 24, is in benchmarks/RESULTS.md)."""
    kept = {(name, ratio): subject_kept(free_cropper.crop(image, aspect=ratio, top_k=1)[0].box, SUBJECTS[name])
            for name, image in photos.items() for ratio in RATIOS}
    for name in PEOPLE:
        for ratio in ("1:1", "4:5", "free"):
            assert kept[name, ratio], (name, ratio)  # heads are a hard rule wherever a head fits
    assert sum(kept.values()) >= 16, [k for k, v in kept.items() if not v]
    for ratio in RATIOS:
        assert sum(kept[name, ratio] for name in SUBJECTS) >= 3, ratio
    without = sum(subject_kept(free_cropper.crop(image, aspect=ratio, top_k=1, keep_subjects=False)[0].box,
                               SUBJECTS[name]) for name, image in photos.items() for ratio in RATIOS)
    assert without < sum(kept.values())  # the rule is what keeps them


def test_free_top_crop_is_a_crop(photos, free_cropper):
    """Without an aspect the suggestions leave out the uncropped photo, so the top crop trims
    something on every photo (the trained model's boxes: 6 distinct of 6, benchmarks/RESULTS.md)."""
    for name, image in photos.items():
        for result in free_cropper.crop(image, top_k=5):
            x1, y1, x2, y2 = result.box
            assert (x2 - x1) * (y2 - y1) < WHOLE_FRAME * image.shape[0] * image.shape[1], (name, result.box)


def test_tight_taste_still_keeps_heads(tmp_path, photos, tiny_config):
    """A user who crops tight on the mouth: the learned taste moves crops, the heads stay whole."""
    from pic_core.user_crops import UserCrop, personalize_from_crops
    from pic_core.visualize import save_rgb

    torch.manual_seed(0)
    model = CropScorer(ModelConfig(**{**tiny_config.model.__dict__, "candidates": "free"}))
    crops = []
    for name in PEOPLE:
        path = save_rgb(tmp_path / f"{name}.png", photos[name])
        x1, y1, x2, y2 = SUBJECTS[name]
        crops.append(UserCrop(path, np.array([x1, (y1 + y2) / 2, x2, y2 + 120.0]), name))
    personalize_from_crops(model, crops, tiny_config)
    cropper = Cropper.from_model(model, personal=True)
    for name in PEOPLE:
        box = cropper.crop(photos[name], top_k=1)[0].box
        assert subject_kept(box, SUBJECTS[name]), (name, box)
        raw = cropper.crop(photos[name], top_k=1, keep_subjects=False)[0].box
        assert raw != box or subject_kept(raw, SUBJECTS[name])


def test_salient_box_joins_the_parts_of_one_object_and_leaves_specks_out():
    """A cup's rim and its handle are two salient regions: both strong ones make the subject box;
    a faint region elsewhere does not."""
    from pic_core.subjects import salient_box

    sal = np.zeros((64, 64), np.float32)
    sal[10:20, 20:45] = 1.0  # the strongest part, 250 cells
    sal[30:40, 24:39] = 0.95  # a second part, 0.57 of the first's mass: joins it
    sal[56:61, 2:8] = 0.9  # a speck, 0.11 of it: left out
    box = salient_box(np.zeros((640, 640, 3), np.uint8), sal=sal)
    np.testing.assert_allclose(box, [200, 100, 450, 400])
