"""`fedpic crop` and the Cropper: aspect ratios, odd sizes, folders, bad files, EXIF, real photos."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fedpic.cli import main
from pic_core.cropper import Cropper
from pic_core.crop_tool import collect_inputs
from pic_core.data import DataError
from pic_core.data.images import load_image
from pic_core.geometry import parse_aspect

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
ASPECTS = ("16:9", "4:3", "1:1", "4:5", "9:16")
SIZES = [(512, 512), (400, 600), (300, 451), (40, 2000), (1500, 30), (3, 5), (1, 1), (97, 1203)]
"""(height, width): square, landscape, odd, very wide, very tall, tiny, one pixel, ragged panorama."""


@pytest.fixture(scope="module")
def cropper(tiny_model_file) -> Cropper:
    return Cropper.load(tiny_model_file, device="cpu")


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _check_inside(boxes: np.ndarray, height: int, width: int) -> None:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    assert len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@pytest.mark.parametrize("aspect", ASPECTS)
def test_aspect_requests_give_boxes_of_that_ratio_inside_the_image(cropper, aspect):
    ratio = parse_aspect(aspect)
    for height, width in SIZES:
        candidates = cropper.candidates((height, width), ratio)
        _check_inside(candidates, height, width)
        w, h = candidates[:, 2] - candidates[:, 0], candidates[:, 3] - candidates[:, 1]
        assert np.abs(w - ratio * h).max() <= 1.0, (aspect, height, width)
        # generated for the ratio, not filtered: the largest box of that ratio that fits is there
        assert np.isclose(w.max(), min(width, height * ratio), rtol=1e-3)
        crops = cropper.crop(_noise(height, width), aspect=ratio, top_k=3)
        assert [c.rank for c in crops] == list(range(1, len(crops) + 1))
        assert all(crops[i].score >= crops[i + 1].score for i in range(len(crops) - 1))
        for crop in crops:
            x1, y1, x2, y2 = crop.as_dict()["box"]  # rounded as written to the JSON lines
            assert abs((x2 - x1) - ratio * (y2 - y1)) <= 1.0
            _check_inside(np.array([x1, y1, x2, y2]), height, width)


@pytest.mark.parametrize("size", SIZES)
def test_free_crops_on_any_size_stay_inside_the_image(cropper, size):
    height, width = size
    crops = cropper.crop(_noise(height, width), top_k=4)
    assert 1 <= len(crops) <= 4
    _check_inside([c.box for c in crops], height, width)
    _, resized = cropper.prepare(_noise(height, width))
    assert resized[0] % 32 == 0 and resized[1] % 32 == 0 and min(resized) >= 64
    assert max(resized) <= 4 * 64 or min(resized) == 64  # panoramas shrink instead of growing without bound


def test_crop_command_on_real_photographs_in_folders(tiny_model_file, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    cv2.imwrite(str(photos / "astronaut.jpg"), skimage_data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(photos / "cats" / "chelsea.png"), skimage_data.chelsea()[:, :, ::-1])
    cv2.imwrite(str(photos / "camera.bmp"), skimage_data.camera())  # grayscale
    cv2.imwrite(str(photos / "wide.jpg"), _noise(30, 900))
    (photos / "notes.txt").write_text("not a photo")
    (photos / "broken.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    rc = main(["crop", str(photos), "--model", str(tiny_model_file), "--out", str(out), "--top", "2",
               "--config", TINY, "--quiet"])
    assert rc == 1  # the truncated JPEG failed; the rest of the batch went on
    lines = [json.loads(line) for line in (out / "crops.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    by_name = {Path(r["image"]).name: r for r in lines}
    assert "truncated" in by_name["broken.jpg"]["error"] and "broken.jpg" in by_name["broken.jpg"]["error"]
    for name, (height, width) in {"astronaut.jpg": (512, 512), "chelsea.png": (300, 451), "camera.bmp": (512, 512),
                                  "wide.jpg": (30, 900)}.items():
        record = by_name[name]
        assert (record["height"], record["width"]) == (height, width)
        assert len(record["crops"]) == 2
        for crop in record["crops"]:
            _check_inside(np.array(crop["box"]), height, width)
            written = load_image(crop["file"])
            x1, y1, x2, y2 = crop["box"]
            assert abs(written.shape[1] - (x2 - x1)) <= 2 and abs(written.shape[0] - (y2 - y1)) <= 2
    assert Path(by_name["chelsea.png"]["crops"][0]["file"]).parent == out / "photos" / "cats"
    sheet = load_image(out / "sheet_001.png")
    assert sheet.shape[0] > 100 and sheet.shape[1] > 100


def test_crop_command_succeeds_on_a_clean_batch_and_writes_json_lines_to_stdout(tiny_model_file, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), _noise(120, 200))
    rc = main(["crop", str(tmp_path / "a.png"), "--model", str(tiny_model_file), "--out", str(tmp_path / "o"),
               "--aspect", "4:5", "--jsonl", "-", "--no-crops", "--config", TINY, "--quiet"])
    assert rc == 0
    record = json.loads(capsys.readouterr().out.strip())
    x1, y1, x2, y2 = record["crops"][0]["box"]
    assert abs((x2 - x1) - 0.8 * (y2 - y1)) <= 1.0
    assert "file" not in record["crops"][0]
    assert not list((tmp_path / "o").glob("**/*_crop*"))


def test_exif_rotated_photo_gives_boxes_in_displayed_orientation(cropper, tiny_model_file, tmp_path):
    shown = _noise(96, 160, seed=3)  # what the viewer displays: 160 wide, 96 high
    stored = np.rot90(shown, k=1)  # the camera stored it turned; EXIF orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "rotated.png", exif=exif)
    Image.fromarray(shown).save(tmp_path / "upright.png")
    rotated = load_image(tmp_path / "rotated.png")
    assert rotated.shape == shown.shape and np.array_equal(rotated, shown)
    for aspect in (None, 16 / 9, 4 / 5):
        got = cropper.crop(rotated, aspect=aspect, top_k=3)
        want = cropper.crop(load_image(tmp_path / "upright.png"), aspect=aspect, top_k=3)
        assert [c.box for c in got] == [c.box for c in want]
        _check_inside([c.box for c in got], 96, 160)
    out = tmp_path / "out"
    assert main(["crop", str(tmp_path / "rotated.png"), "--model", str(tiny_model_file), "--out",
                 str(out), "--config", TINY, "--quiet"]) == 0
    record = json.loads((out / "crops.jsonl").read_text())
    assert (record["width"], record["height"]) == (160, 96)


def test_collect_inputs_skips_other_files_and_keeps_output_names_apart(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for name in ("a/one.JPG", "a/x/two.webp", "a/readme.md", "a/.hidden/three.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"")
    inputs = collect_inputs([tmp_path / "a", tmp_path / "b.png", tmp_path / "b.png"])
    assert [p.name for p, _ in inputs.photos] == ["one.JPG", "two.webp", "b.png", "b.png"]
    assert inputs.skipped == 1
    names = [str(n) for _, n in inputs.photos]
    assert names == ["a/one", "a/x/two", "b", "b-2"]
    with pytest.raises(DataError, match="nowhere"):
        collect_inputs([tmp_path / "nowhere"])


def test_crop_command_errors_clearly(tiny_model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    assert main(["crop", str(tmp_path / "empty"), "--model", str(tiny_model_file), "--config", TINY]) == 2
    assert "no image files" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "a.png"), _noise(50, 60))
    assert main(["crop", str(tmp_path / "a.png"), "--model", str(tiny_model_file), "--aspect", "16:0",
                 "--config", TINY]) == 2
    assert "aspect ratio" in capsys.readouterr().err
