"""`fedpic personalize --crops`: reading a user's own crops and learning from them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fedpic.cli import main
from pic_core.cropper import Cropper
from pic_core.data import DataError
from pic_core.data.images import load_image
from pic_core.geometry import box_iou
from pic_core.user_crops import group_by_photo, preference_scores, read_user_crops

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
SIZES = [(192, 256), (256, 192), (200, 300), (240, 240), (180, 320)]


def _user_box(height: int, width: int) -> list[float]:
    """This user always keeps the upper-left part of a photo."""
    return [round(0.02 * width, 1), round(0.03 * height, 1), round(0.62 * width, 1), round(0.68 * height, 1)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crops")
    (root / "pics").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,x1,y1,x2,y2", "# my crops from the photo editor"]
    for i, (height, width) in enumerate(SIZES):
        cv2.imwrite(str(root / "pics" / f"p{i}.png"), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        rows.append(f"pics/p{i}.png," + ",".join(map(str, _user_box(height, width))))
    (root / "crops.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_and_json_lines_read_the_same_crops(photos, tmp_path):
    from_csv = read_user_crops(photos / "crops.csv")
    lines = [f'{{"image": "{c.image}", "box": {c.box.tolist()}}}' for c in from_csv]
    (tmp_path / "crops.jsonl").write_text("\n".join(lines) + "\n")
    from_json = read_user_crops(tmp_path / "crops.jsonl")
    assert [c.image for c in from_json] == [c.image for c in from_csv]
    assert np.array_equal(np.stack([c.box for c in from_json]), np.stack([c.box for c in from_csv]))
    assert from_csv[0].image == photos / "pics" / "p0.png"  # relative to the crops file
    assert from_csv[0].source.endswith("crops.csv:3")


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3\n", r"a\.csv:2: expected 5 columns"),
    ("a.csv", "a.jpg,1,2,x,4\n", r"a\.csv:1: box coordinates must be numbers"),
    ("a.csv", "a.jpg,10,2,5,40\n", r"a\.csv:1: box needs x2 > x1"),
    ("a.csv", ",1,2,5,40\n", r"a\.csv:1: empty image name"),
    ("a.csv", "a.jpg,1,2,nan,40\n", r"a\.csv:1: box has a non-finite"),
    ("a.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, 4]}\n{"image": "b.jpg"\n', r"a\.jsonl:2: not valid JSON"),
    ("a.jsonl", '{"image": "a.jpg", "bbox": [1, 2, 3, 4]}\n', r"a\.jsonl:1: expected"),
    ("a.jsonl", '{"image": "a.jpg", "box": [1, 2, 3]}\n', r"a\.jsonl:1: a box needs 4 numbers"),
    ("a.csv", "# nothing here\n", r"a\.csv: no crops found"),
])
def test_bad_crops_files_name_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_user_crops(tmp_path / name)


def test_preferences_follow_overlap_with_the_users_crop(tmp_path):
    user = np.array([[10.0, 10.0, 110.0, 60.0], [200.0, 0.0, 260.0, 40.0]])
    candidates = np.array([[10, 10, 110, 60], [20, 10, 120, 60], [60, 30, 160, 80], [200, 0, 260, 40],
                           [300, 300, 320, 320]], dtype=np.float32)
    scores = preference_scores(candidates, user)
    assert scores[0] == pytest.approx(1.0) and scores[3] == pytest.approx(1.0)  # either crop counts
    assert scores[0] > scores[1] > scores[2] > scores[4] == 0.0
    (tmp_path / "c.csv").write_text("a.jpg,1,1,5,5\nb.jpg,1,1,5,5\na.jpg,2,2,6,6\n")
    grouped = group_by_photo(read_user_crops(tmp_path / "c.csv"))
    assert [len(p.boxes) for p in grouped] == [2, 1] and grouped[0].sources[1].endswith("c.csv:3")


def test_a_box_outside_the_photo_names_the_line_and_size(tiny_model_file, photos, tmp_path, capsys):
    (tmp_path / "c.csv").write_text(f"{photos / 'pics' / 'p0.png'},0,0,400,100\n")
    rc = main(["personalize", "--model", str(tiny_model_file), "--crops", str(tmp_path / "c.csv"), "--out",
               str(tmp_path / "u.pt"), "--config", TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "c.csv:1" in err and "256x192" in err
    assert not (tmp_path / "u.pt").exists()


def _top1_iou(cropper: Cropper, photos: Path) -> float:
    values = []
    for crop in read_user_crops(photos / "crops.csv"):
        # the model's own ranking, as personalize reports it (the subject rule is tests/test_subjects.py's)
        best = cropper.crop(load_image(crop.image), top_k=1, keep_subjects=False)[0].box
        values.append(box_iou(np.array(best)[None], crop.box[None])[0, 0])
    return float(np.mean(values))


def test_crops_round_trip_through_personalize(tiny_model_file, photos, tmp_path):
    state = tmp_path / "me.pt"
    # 20 epochs suit the random tiny model (the default 10 is measured on trained models)
    assert main(["personalize", "--model", str(tiny_model_file), "--crops", str(photos / "crops.csv"), "--out",
                 str(state), "--config", TINY, "--quiet", "--epochs", "20"]) == 0
    payload = torch.load(state, weights_only=True)
    assert payload["user_id"] == "crops" and payload["extra"]["photos"] == len(SIZES)
    generic = _top1_iou(Cropper.load(tiny_model_file, device="cpu"), photos)
    personal = _top1_iou(Cropper.load(tiny_model_file, state, device="cpu"), photos)
    assert personal > generic + 0.05, (generic, personal)
    assert payload["extra"]["top1_iou_personal"] == pytest.approx(personal, abs=1e-3)
    assert main(["personalize", "--model", str(tiny_model_file), "--out", str(state), "--config", TINY]) == 2
