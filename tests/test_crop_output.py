"""What photographers get: EXIF kept in crops (orientation normalized), readable contact sheets,
the Python API on a file, and synthetic populations over the free candidates."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from pic_core.candidates import free_candidates
from pic_core.config import ModelConfig, load_config
from pic_core.crop_tool import SHEET_LEGEND, SheetWriter, crop_one, thumbnail_with_boxes
from pic_core.cropper import Cropper, CropResult
from pic_core.data.images import load_image
from pic_core.model import CropScorer
from pic_core.visualize import draw_boxes


def _cropper(kind: str = "free") -> Cropper:
    torch.manual_seed(0)
    return Cropper.from_model(CropScorer(ModelConfig(**{**load_config("tiny").model.__dict__, "candidates": kind})),
                              personal=False)


def test_crops_keep_exif_with_orientation_normalized(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)  # stored landscape
    exif = Image.Exif()
    exif[0x010F] = "FedpicCam"  # Make
    exif[0x0112] = 6  # displayed rotated by 90 degrees: portrait 120 wide, 200 tall
    source = tmp_path / "p.jpg"
    Image.fromarray(pixels).save(source, exif=exif.tobytes())
    image = load_image(source)
    assert image.shape[:2] == (200, 120)
    crops, files, _ = crop_one(_cropper(), image, None, 2, tmp_path / "out", source.with_suffix("").relative_to(tmp_path),
                               ".jpg", True, source=source)
    for crop, file in zip(crops, files):
        with Image.open(file) as written:
            tags = written.getexif()
            assert tags.get(0x010F) == "FedpicCam" and tags.get(0x0112) == 1
            x1, y1, x2, y2 = crop.box
            assert abs(written.size[0] - (x2 - x1)) <= 2 and abs(written.size[1] - (y2 - y1)) <= 2
    # a photo without EXIF gets crops without it (and OpenCV writes them)
    plain = tmp_path / "q.png"
    Image.fromarray(pixels).save(plain)
    _, files, _ = crop_one(_cropper(), load_image(plain), 1.0, 1, tmp_path / "out", plain.relative_to(tmp_path), ".png",
                           True, source=plain)
    with Image.open(files[0]) as written:
        assert not len(written.getexif())


def test_labels_do_not_cover_each_other_and_sheets_explain_the_score(tmp_path):
    image = np.full((300, 400, 3), 128, np.uint8)
    same_corner = [[10, 10, 390, 290], [10, 10, 380, 280], [10, 10, 370, 270]]
    drawn = draw_boxes(image, same_corner, ["#1 0.90", "#2 0.80", "#3 0.70"])
    from pic_core.visualize import PALETTE
    for colour in PALETTE[:3]:  # each label's filled colour patch is visible
        assert np.all(drawn == np.array(colour, np.uint8), axis=2).sum() > 200, colour
    crops = [CropResult((10.0, 10.0, 390.0, 290.0), 0.9, 1), CropResult((50.0, 40.0, 300.0, 200.0), 0.5, 2)]
    sheets = SheetWriter(tmp_path, per_sheet=2)
    sheets.add(thumbnail_with_boxes(image, crops), "a.jpg")
    sheets.add(thumbnail_with_boxes(image, crops), "b.jpg")
    assert len(sheets.written) == 1
    sheet = load_image(sheets.written[0])
    assert sheet.shape[0] > 320 + 24 + 20  # the legend line(s) under the tiles
    assert "higher is better" in SHEET_LEGEND and "#rank" in SHEET_LEGEND


def test_python_api_crops_a_file_at_a_ratio_given_as_text(tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path)
    crops = _cropper().crop(path, aspect="4:5", top_k=3)
    assert [c.rank for c in crops] == [1, 2, 3]
    for c in crops:
        x1, y1, x2, y2 = c.box
        assert abs((x2 - x1) / (y2 - y1) - 0.8) < 0.01
    free = _cropper().crop(path, top_k=1)[0]
    assert free.box in {tuple(map(float, b)) for b in free_candidates(240, 320)}
    assert json.dumps(free.as_dict())


def test_synthetic_population_over_free_candidates(tmp_path):
    from pic_core.data.synthetic import PopulationSpec, candidate_boxes, generate
    from pic_core.data.sources import open_dataset

    population = generate(PopulationSpec(users=2, prior=1, train=1, test=1, probe=2, candidates="free"), tmp_path / "d",
                          workers=1, progress=False)
    assert population["candidates"] == "free"
    dataset = open_dataset(tmp_path / "d")
    crop_set = dataset.user(dataset.user_ids[0]).crop_sets[0]
    height, width = load_image(crop_set.image_path).shape[:2]
    assert 170 <= len(crop_set.boxes) <= 300
    assert np.allclose(crop_set.boxes, candidate_boxes(height, width, "free"))
    assert len(candidate_boxes(height, width, "grid")) != len(crop_set.boxes)


def test_crop_command_subjects_option(tiny_model_file, tmp_path):
    from fedpic.cli import main
    from real_photos import load_photo

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(load_photo("astronaut")).save(photo)
    rows = {}
    for mode in ("faces", "off"):
        out = tmp_path / mode
        assert main(["crop", str(photo), "--model", str(tiny_model_file), "--config", "tiny", "--quiet", "--out",
                     str(out), "--aspect", "1:1", "--top", "1", "--no-crops", "--subjects", mode]) == 0
        rows[mode] = json.loads((out / "crops.jsonl").read_text())["crops"][0]
    assert rows["faces"]["box"] != rows["off"]["box"] or "model_score" not in rows["off"]
    x1, y1, x2, y2 = rows["faces"]["box"]
    assert x1 <= 150 and y1 <= 15 and x2 >= 300 and y2 >= 175  # the astronaut's head is whole
