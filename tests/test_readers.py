"""Readers and writers: good files, every kind of bad file (message names file and line), round
trips, the dataset folder, and a fuzz test that only DataError ever escapes."""
import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pic_core.data import (CropSet, DataError, Dataset, ImageIndex, read_cpc, read_gaicd_dir, read_gaicd_txt,
                           read_json, read_user_csv, write_cpc, write_json, write_user_csv)


def make_image(path: Path, height: int, width: int, orientation: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), 128, np.uint8)
    if orientation == 1:
        Image.fromarray(pixels).save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """images/ with a.jpg (60x80), b.png (50x50) and rot.jpg (stored 40x60, displayed 60x40)."""
    folder = tmp_path / "images"
    make_image(folder / "a.jpg", 60, 80)
    make_image(folder / "b.png", 50, 50)
    make_image(folder / "rot.jpg", 40, 60, orientation=6)
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(where: str, *fragments: str):
    """pytest.raises(DataError) whose message holds `where` (file:line) and the fragments."""
    pattern = re.escape(where) + ".*" + ".*".join(re.escape(f) for f in fragments)
    return pytest.raises(DataError, match=pattern)


# ------------------------------------------------------------------------------------- GAICD

GAICD_GOOD = "10 5 50 60 4.5\n\n0 0 60 80 -2\n5 10 55 70 3.25\n"


def test_gaicd_txt_order_invalid_marker_and_blank_lines(tmp_path, images):
    txt = write(tmp_path / "a.txt", GAICD_GOOD)
    result = read_gaicd_txt(txt, images / "a.jpg")
    assert len(result) == 1
    (crop_set,) = result
    assert crop_set.name == "a.jpg" and crop_set.image_path == images / "a.jpg"
    assert crop_set.boxes.tolist() == [[5, 10, 60, 50], [10, 5, 70, 55]]  # y1 x1 y2 x2 -> x1 y1 x2 y2
    assert crop_set.scores.tolist() == [4.5, 3.25]
    assert result.skipped == {"invalid crop (score -2)": 1}


@pytest.mark.parametrize("text, line, fragments", [
    ("10 5 50 60 4.5\n1 2 3 4\n", 2, ["expected 5 numbers", "got 4 fields"]),
    ("10 5 50 60 4.5\n\n1 abc 30 40 2\n", 3, ["field x1", "'abc' is not a number"]),
    ("1 2 30 40 nan\n", 1, ["field score", "not a finite number"]),
    ("10 5 50 60 4.5\n10 50 50 40 1\n", 2, ["needs x2 > x1"]),
    ("0 0 61.5 80 1\n", 1, ["outside the 80x60 image"]),
])
def test_gaicd_txt_bad_lines(tmp_path, images, text, line, fragments):
    txt = write(tmp_path / "bad.txt", text)
    with raises_at(f"{txt}:{line}:", *fragments):
        read_gaicd_txt(txt, images / "a.jpg")
    if "4.5" in text:  # one good line left: skipping keeps it and counts the bad one
        result = read_gaicd_txt(txt, images / "a.jpg", skip_bad=True)
        assert len(result[0].scores) == 1 and sum(result.skipped.values()) == 1


def test_gaicd_txt_empty_missing_image_and_all_invalid(tmp_path, images):
    empty = write(tmp_path / "empty.txt", "  \n")
    with raises_at(f"{empty}: file is empty"):
        read_gaicd_txt(empty, images / "a.jpg")
    only_invalid = write(tmp_path / "inv.txt", "0 0 10 10 -2\n")
    with raises_at(f"{only_invalid}: no valid crops"):
        read_gaicd_txt(only_invalid, images / "a.jpg")
    good = write(tmp_path / "good.txt", GAICD_GOOD)
    with raises_at(f"{good}: image 'zzz.jpg'", "zzz.jpg: image file not found"):
        read_gaicd_txt(good, images / "zzz.jpg")
    skipped = read_gaicd_txt(good, images / "zzz.jpg", skip_bad=True)
    assert len(skipped) == 0 and skipped.skipped == {"image missing": 1}


def gaicd_tree(root: Path, split: bool) -> Path:
    for sub, stem, size in (("train", "1", (60, 80)), ("train", "2", (50, 50)), ("test", "3", (60, 80))):
        folder = f"{sub}/" if split else ""
        make_image(root / "images" / f"{folder}{stem}.jpg", *size)
        write(root / "annotations" / f"{folder}{stem}.txt", "0 0 40 40 3\n5 5 45 45 -2\n10 10 50 50 2\n")
    return root


def test_gaicd_dir_flat_and_split(tmp_path):
    flat = read_gaicd_dir(gaicd_tree(tmp_path / "flat", split=False))
    assert [c.name for c in flat] == ["1.jpg", "2.jpg", "3.jpg"] and {c.split for c in flat} == {None}
    assert flat.skipped == {"invalid crop (score -2)": 3}
    split = read_gaicd_dir(gaicd_tree(tmp_path / "split", split=True))
    assert [(c.name, c.split) for c in split] == [("test/3.jpg", "test"), ("train/1.jpg", "train"),
                                                  ("train/2.jpg", "train")]
    assert split[0].image_path == tmp_path / "split/images/test/3.jpg"
    assert split[0].boxes.tolist() == [[0, 0, 40, 40], [10, 10, 50, 50]]


def test_gaicd_dir_problems(tmp_path):
    root = gaicd_tree(tmp_path / "g", split=True)
    (root / "images/train/2.jpg").unlink()
    write(root / "annotations/train/1.txt", "0 0 40 40 3\n0 0 40 900 1\n")
    with raises_at(f"{root / 'annotations/train/1.txt'}:2:", "outside"):
        read_gaicd_dir(root)
    result = read_gaicd_dir(root, skip_bad=True)
    assert [c.name for c in result] == ["test/3.jpg", "train/1.jpg"]
    assert result.skipped == {"image missing": 1, "box outside image": 1, "invalid crop (score -2)": 1}
    make_image(root / "images/test/3.png", 10, 10)
    with raises_at(f"{root / 'annotations/test/3.txt'}:", "several images (3.jpg, 3.png)"):
        read_gaicd_dir(root)
    with raises_at(f"{tmp_path}: not a GAICD folder"):
        read_gaicd_dir(tmp_path)
    (tmp_path / "e/images").mkdir(parents=True)
    (tmp_path / "e/annotations").mkdir()
    with raises_at(f"{tmp_path / 'e'}: no annotation files"):
        read_gaicd_dir(tmp_path / "e")


# -------------------------------------------------------------------------------------- JSON

JSON_GOOD = {"a.jpg": {"bbox": [[0, 0, 40, 30], [10.5, 5, 80, 60]], "score": [3.5, 2]},
             "rot.jpg": {"bbox": [[0, 0, 40, 60]], "score": [1.0], "extra": "ignored"}}
CPC_GOOD = {"b.png": {"bboxes": [[0, 0, 50, 50], [5, 5, 45, 45], [0, 10, 50, 40]],
                      "scores": [[1, 2, 3], [3, 2, 0], [2, 2, 3]]}}


def one_per_line(data: dict) -> str:
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()) + "\n}\n"


def test_json_reads_boxes_scores_and_displayed_size(tmp_path, images):
    path = write(tmp_path / "s.json", one_per_line(JSON_GOOD))
    result = read_json(path, images)
    assert [c.name for c in result] == ["a.jpg", "rot.jpg"] and result.skipped == {}
    assert result[0].boxes.tolist() == [[0, 0, 40, 30], [10.5, 5, 80, 60]]
    assert result[0].scores.tolist() == [3.5, 2.0] and result[0].annotator_scores is None
    assert result[1].source == f"{path}:3"  # rot.jpg is 60 high as displayed, so its box fits


def test_cpc_annotator_scores_and_mean(tmp_path, images):
    path = write(tmp_path / "cpc.json", json.dumps(CPC_GOOD, indent=2))
    (crop_set,) = read_cpc(path, images)
    assert crop_set.annotator_scores.shape == (3, 3)
    assert crop_set.scores.tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert crop_set.annotator_scores[:, 0].tolist() == [1, 3, 2]


def entry(name: str, value) -> str:
    return one_per_line({"a.jpg": JSON_GOOD["a.jpg"], name: value})


@pytest.mark.parametrize("text, line, fragments", [
    ('{\n"a.jpg": {"bbox": [[0, 0, 1, 1]],\n "score": [1,]}}', 3, ["invalid JSON"]),
    ("[1, 2]", 1, ["top level must be an object"]),
    (entry("b.png", [1, 2]), 3, ["image 'b.png'", "expected an object with keys 'bbox' and 'score'"]),
    (entry("b.png", {"bbox": [[0, 0, 1, 1]]}), 3, ["expected an object with keys"]),
    (entry("b.png", {"bbox": [[0, 0, 1, 1]], "score": [1, 2]}), 3, ['field "score"', "a list of 1, got 2 items"]),
    (entry("b.png", {"bbox": [[0, 0, 1]], "score": [1]}), 3, ['field "bbox"[0]', "a list of 4"]),
    (entry("b.png", {"bbox": [[0, 0, 1, True]], "score": [1]}), 3, ['"bbox"[0]', "expected a number, got True"]),
    (entry("b.png", {"bbox": [[0, 0, 1, 1]], "score": ["1"]}), 3, ['"score"[0]', "expected a number"]),
    (entry("b.png", {"bbox": [[0, 0, 1, 1]], "score": [float("nan")]}), 3, ['"score"[0]', "not a finite number"]),
    (entry("b.png", {"bbox": [[0, 0, 51.5, 10]], "score": [1]}), 3, ['"bbox"[0]', "outside the 50x50 image"]),
    (entry("zzz.png", {"bbox": [[0, 0, 5, 5]], "score": [1]}), 3, ["image 'zzz.png'", "image file not found"]),
    (entry("../a.jpg", {"bbox": [[0, 0, 5, 5]], "score": [1]}), 3, ["must be a plain path"]),
    (one_per_line(JSON_GOOD).replace('"rot.jpg"', '"a.jpg"'), 3, ["image 'a.jpg' appears twice"]),
])
def test_json_bad_files(tmp_path, images, text, line, fragments):
    path = write(tmp_path / "bad.json", text)
    with raises_at(f"{path}:{line}:", *fragments):
        read_json(path, images)


@pytest.mark.parametrize("value, fragments", [
    ({"bboxes": [[0, 0, 5, 5]], "scores": []}, ["no annotators"]),
    ({"bboxes": [[0, 0, 5, 5]], "scores": [[1], [1, 2]]}, ['field "scores"[1]', "a list of 1, got 2"]),
    ({"bboxes": [[0, 0, 5, 5], [0, 0, 6, 6]], "scores": [[1, 2], [3, None]]}, ['"scores"[1][1]', "got None"]),
    ({"bbox": [[0, 0, 5, 5]], "score": [1]}, ["keys 'bboxes' and 'scores'"]),
])
def test_cpc_bad_entries(tmp_path, images, value, fragments):
    path = write(tmp_path / "bad.json", one_per_line({"b.png": CPC_GOOD["b.png"], "a.jpg": value}))
    with raises_at(f"{path}:3:", *fragments):
        read_cpc(path, images)


def test_json_skip_bad_counts_and_logs(tmp_path, images, caplog):
    data = {"a.jpg": {"bbox": [[0, 0, 40, 30], [0, 0, 999, 10], [0, 0, 1]], "score": [1, 2, 3]},
            "zzz.jpg": {"bbox": [[0, 0, 1, 1]], "score": [1]},
            "b.png": {"bbox": [[0, 0, 10, 10]], "score": ["x"]}}
    path = write(tmp_path / "s.json", one_per_line(data))
    with caplog.at_level(logging.WARNING, logger="pic_core.data"):
        result = read_json(path, images, skip_bad=True)
    assert [c.name for c in result] == ["a.jpg"] and result[0].boxes.tolist() == [[0, 0, 40, 30]]
    assert result.skipped == {"box outside image": 1, "bad bbox": 1, "image missing": 1, "bad score": 1,
                              "image without valid crops": 1}
    assert "skipped 1 x image missing" in caplog.text and str(path) in caplog.text


def test_cpc_skip_bad_drops_the_crop_column(tmp_path, images):
    value = {"bboxes": [[0, 0, 50, 50], [0, 0, 60, 60], [5, 5, 45, 45]], "scores": [[1, 2, 3], [3, 4, 5]]}
    path = write(tmp_path / "c.json", one_per_line({"b.png": value}))
    (crop_set,) = read_cpc(path, images, skip_bad=True)
    assert crop_set.annotator_scores.tolist() == [[1, 3], [3, 5]] and crop_set.scores.tolist() == [2, 4]


def test_json_and_cpc_round_trip(tmp_path, images):
    original = read_json(write(tmp_path / "s.json", one_per_line(JSON_GOOD)), images)
    original[0].scores[0] = np.float32(0.1)  # not exact in binary: must still come back bit-identical
    write_json(tmp_path / "out.json", original)
    again = read_json(tmp_path / "out.json", images)
    for a, b in zip(original, again):
        assert a.name == b.name and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    cpc = read_cpc(write(tmp_path / "c.json", json.dumps(CPC_GOOD)), images)
    write_cpc(tmp_path / "c2.json", cpc)
    back = read_cpc(tmp_path / "c2.json", images)
    assert np.array_equal(back[0].annotator_scores, cpc[0].annotator_scores)
    assert '"scores": [[1, 2, 3], [3, 2, 0], [2, 2, 3]]' in (tmp_path / "c2.json").read_text()
    with pytest.raises(DataError, match="no annotator scores"):
        write_cpc(tmp_path / "x.json", original)
    with pytest.raises(DataError, match="given twice"):
        write_json(tmp_path / "x.json", [original[0], original[0]])
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------- per-user CSV

CSV_GOOD = ('name,bbox,score,split\n'
            'a.jpg,"[0, 0, 40, 30]",3.5,train\n'
            'b.png, "[1.5, 2, 50, 50]", 2,test\n'
            'a.jpg,"[10, 5, 80, 60]",-1.25,train\n'
            'rot.jpg,"[0, 0, 40, 60]",1,prior\n')


def test_user_csv_groups_rows_in_first_appearance_order(tmp_path, images):
    path = write(tmp_path / "u.csv", CSV_GOOD)
    result = read_user_csv(path, images)
    assert [(c.name, c.split) for c in result] == [("a.jpg", "train"), ("b.png", "test"), ("rot.jpg", "prior")]
    assert result[0].boxes.tolist() == [[0, 0, 40, 30], [10, 5, 80, 60]]
    assert result[0].scores.tolist() == [3.5, -1.25] and result[0].source == f"{path}:2"
    assert result[1].boxes.tolist() == [[1.5, 2, 50, 50]]


def test_user_csv_without_split_and_header_only(tmp_path, images):
    path = write(tmp_path / "u.csv", '\ufeffscore,name,bbox\n2,a.jpg,"[0,0,10,10]"\n\n')
    (crop_set,) = read_user_csv(path, images)
    assert crop_set.split is None and crop_set.scores.tolist() == [2.0]
    assert list(read_user_csv(write(tmp_path / "h.csv", "name,bbox,score\n"), images)) == []


HEADER = "name,bbox,score,split\n"
ROW = 'a.jpg,"[0, 0, 40, 30]",3.5,train\n'


@pytest.mark.parametrize("text, line, fragments", [
    ("name,bbox\n" + 'a.jpg,"[0, 0, 4, 3]"\n', 1, ["header must be name,bbox,score[,split]", "missing score"]),
    ("name,bbox,score,note\n", 1, ["unknown note"]),
    ("name,bbox,score,score\n", 1, ["header must be"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40, 30]",3.5\n', 3, ["expected 4 fields", "got 3"]),
    (HEADER + ROW + ',"[0, 0, 40, 30]",3.5,train\n', 3, ["field name is empty"]),
    (HEADER + ROW + 'a.jpg,"0, 0, 40, 30",3.5,train\n', 3, ["field bbox", 'expected "[x1, y1, x2, y2]"']),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40]",3.5,train\n', 3, ["field bbox", "expected"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, x, 30]",3.5,train\n', 3, ["field bbox", "'x' is not a number"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40, 30]",inf,train\n', 3, ["field score", "not a finite number"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40, 30]",,train\n', 3, ["field score", "'' is not a number"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40, 30]",3,val\n', 3, ["field split", "'val' is not one of"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 40, 30]",3,test\n', 3, ["field split", "'test' here but 'train' on line 2"]),
    (HEADER + ROW + 'a.jpg,"[40, 0, 40, 30]",3,train\n', 3, ["field bbox", "needs x2 > x1"]),
    (HEADER + ROW + 'a.jpg,"[0, 0, 82, 30]",3,train\n', 3, ["field bbox", "outside the 80x60 image"]),
    (HEADER + 'rot.jpg,"[0, 0, 60, 40]",3,train\n', 2, ["field bbox", "outside the 40x60 image"]),
    (HEADER + ROW + 'c.jpg,"[0, 0, 4, 3]",3,train\n', 3, ["image 'c.jpg'", "c.jpg: image file not found"]),
    (HEADER + ROW + '/etc/a.jpg,"[0, 0, 4, 3]",3,train\n', 3, ["must be a plain path"]),
    (HEADER + ROW + '"[0, 0, 4, 3]",3,train\n', 3, ["expected 4 fields"]),
])
def test_user_csv_bad_files(tmp_path, images, text, line, fragments):
    path = write(tmp_path / "bad.csv", text)
    with raises_at(f"{path}:{line}:", *fragments):
        read_user_csv(path, images)


def test_user_csv_empty_undecodable_and_missing_files(tmp_path, images):
    empty = write(tmp_path / "empty.csv", "")
    with raises_at(f"{empty}: file is empty"):
        read_user_csv(empty, images)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(HEADER.encode() + ROW.encode() + b"a.jpg,\xff\xfe,1,train\n")
    with raises_at(f"{binary}:3: not valid UTF-8"):
        read_user_csv(binary, images)
    with raises_at(f"{tmp_path / 'none.csv'}: file not found"):
        read_user_csv(tmp_path / "none.csv", images)
    unreadable = tmp_path / "images" / "broken.jpg"
    unreadable.write_bytes(b"not an image")
    path = write(tmp_path / "u.csv", HEADER + 'broken.jpg,"[0, 0, 4, 3]",3,train\n')
    with raises_at(f"{path}:2: image 'broken.jpg'", "not a readable image"):
        read_user_csv(path, images)


def test_user_csv_skip_bad_counts_every_reason(tmp_path, images, caplog):
    text = (HEADER + ROW
            + 'a.jpg,"[0, 0, 99, 30]",3,train\n'  # outside
            + 'a.jpg,"[0, 0, 40, 30]",oops,train\n'  # bad score
            + 'b.png,"[0, 0, 10, 10]",1,train\n'
            + 'b.png,"[0, 0, 10, 10]",1,test\n'  # split mismatch: b.png dropped
            + 'c.jpg,"[0, 0, 10, 10]",1,train\n'  # missing image
            + 'rot.jpg,"[0, 0, 60, 40]",1,train\n')  # outside as displayed: no crops left
    path = write(tmp_path / "u.csv", text)
    with caplog.at_level(logging.WARNING, logger="pic_core.data"):
        result = read_user_csv(path, images, skip_bad=True)
    assert [c.name for c in result] == ["a.jpg"] and len(result[0].scores) == 1
    assert result.skipped == {"box outside image": 2, "bad score": 1, "image split mismatch": 1,
                              "image missing": 1, "image without valid crops": 1}
    assert f"{path}: skipped 2 x box outside image" in caplog.text


def test_user_csv_round_trip_and_atomic_writes(tmp_path, images):
    original = read_user_csv(write(tmp_path / "u.csv", CSV_GOOD), images)
    original[0].scores[1] = np.float32(1 / 3)
    out = tmp_path / "deep" / "out.csv"
    write_user_csv(out, original)
    again = read_user_csv(out, images)
    assert [(c.name, c.split) for c in again] == [(c.name, c.split) for c in original]
    for a, b in zip(original, again):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    no_split = [CropSet(name="b.png", image_path=images / "b.png", boxes=[[0, 0, 1.25, 2]], scores=[7])]
    write_user_csv(out, no_split)
    assert out.read_text() == 'name,bbox,score\nb.png,"[0, 0, 1.25, 2]",7\n'
    mixed = no_split + [CropSet(name="a.jpg", image_path=images / "a.jpg", boxes=[[0, 0, 1, 1]], scores=[1],
                                split="train")]
    with pytest.raises(DataError, match="some crop sets have a split and some do not"):
        write_user_csv(out, mixed)
    with pytest.raises(DataError, match="'val' is not one of"):
        write_user_csv(out, [CropSet(name="b.png", image_path=images, boxes=[[0, 0, 1, 1]], scores=[1], split="val")])
    assert out.read_text() == 'name,bbox,score\nb.png,"[0, 0, 1.25, 2]",7\n'  # failed writes left it alone
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.csv"]  # no temp files left behind


# ------------------------------------------------------------------------------ dataset folder

def test_dataset_folder(tmp_path, images, caplog):
    write(tmp_path / "users" / "u2.csv", CSV_GOOD)
    write(tmp_path / "users" / "u1.csv", HEADER + ROW)
    write(tmp_path / "users" / "notes.txt", "not a user")
    write(tmp_path / "users" / "my user.csv", HEADER)
    ds = Dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pic_core.data"):
        assert ds.user_ids == ["u1", "u2"] and ds.generic() is None
    assert "ignored 1 file(s) whose name is not a user id" in caplog.text and "my user.csv" in caplog.text
    user = ds.user("u2")
    assert user.user_id == "u2" and [c.name for c in user.split("train")] == ["a.jpg"]
    assert [c.name for c in user.split("prior")] == ["rot.jpg"]
    assert [u.user_id for u in ds.users()] == ["u1", "u2"]
    assert ds.image_path("b.png") == images / "b.png"
    write(tmp_path / "generic.csv", 'name,bbox,score\nb.png,"[0, 0, 50, 50]",4\n')
    assert [c.name for c in ds.generic()] == ["b.png"]
    with raises_at(f"{tmp_path / 'users' / 'u9.csv'}: no such user file"):
        ds.user("u9")
    with pytest.raises(DataError, match="invalid user id"):
        ds.user("../u1")
    write(tmp_path / "users" / "u3.csv", HEADER + ROW + 'zz.jpg,"[0, 0, 4, 3]",3,train\n')
    with raises_at(f"{tmp_path / 'users' / 'u3.csv'}:3:", "image file not found"):
        ds.user("u3")
    lenient = Dataset(tmp_path, skip_bad=True)
    assert len(lenient.user("u3").crop_sets) == 1
    assert lenient.skipped == {str(tmp_path / "users" / "u3.csv"): {"image missing": 1}}
    with raises_at(f"{tmp_path / 'nothing'}: dataset folder not found"):
        Dataset(tmp_path / "nothing")
    with raises_at(f"{tmp_path / 'users'}: dataset folder has no images/"):
        Dataset(tmp_path / "users")


def test_image_index_caches_sizes(images):
    index = ImageIndex(images)
    assert index.size("rot.jpg") == (60, 40)
    (images / "rot.jpg").unlink()
    assert index.size("rot.jpg") == (60, 40)  # read once, even after the file went away
    for bad in ("", " a.jpg", "a\\b.jpg", "x/../a.jpg", "/a.jpg", "a\x00.jpg"):
        with pytest.raises(DataError):
            index.path(bad)


# ------------------------------------------------------------------------------------ fuzzing

def mutate(text: str, rng: random.Random) -> str:
    """One random corruption: bytes, characters or whole lines."""
    lines = text.splitlines(keepends=True)
    kind = rng.randrange(7)
    pos = rng.randrange(len(text) + 1)
    junk = rng.choice(['"', ",", "[", "]", "{", "}", ":", "\n", "\x00", "-", "e", "9", "nan", " ", "\\", "\ufffd"])
    if kind == 0:
        return text[:pos] + junk + text[pos:]
    if kind == 1:
        return text[:pos] + text[pos + rng.randrange(1, 6):]
    if kind == 2:
        return text[:pos]
    if kind == 3 and lines:
        i = rng.randrange(len(lines))
        return "".join(lines[:i] + lines[i + 1:])
    if kind == 4 and lines:
        i = rng.randrange(len(lines))
        return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if kind == 5:
        return re.sub(r"\d+(\.\d+)?", lambda m: rng.choice([m.group(0), "-1", "1e9", "0", "x"]), text)
    return "".join(rng.sample(lines, len(lines))) if lines else text


def test_fuzz_only_data_errors_escape(tmp_path, images):
    index = ImageIndex(images)  # shared so the fuzz loop reads each header once
    cases = [
        ("u.csv", CSV_GOOD, lambda p, skip: read_user_csv(p, index, skip_bad=skip)),
        ("s.json", one_per_line(JSON_GOOD), lambda p, skip: read_json(p, index, skip_bad=skip)),
        ("c.json", one_per_line(CPC_GOOD), lambda p, skip: read_cpc(p, index, skip_bad=skip)),
        ("a.txt", GAICD_GOOD, lambda p, skip: read_gaicd_txt(p, images / "a.jpg", skip_bad=skip)),
    ]
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for file_name, text, read in cases:
        path = tmp_path / file_name
        for _ in range(150):
            corrupted = text
            for _ in range(rng.randrange(1, 4)):
                corrupted = mutate(corrupted, rng)
            path.write_bytes(corrupted.encode("utf-8", errors="surrogatepass"))
            for skip in (False, True):
                try:
                    result = read(path, skip)
                except DataError as exc:
                    assert str(path) in str(exc)  # every message names the file
                    outcomes["error"] += 1
                else:
                    outcomes["ok"] += 1
                    for crop_set in result:
                        assert np.all(np.isfinite(crop_set.scores)) and len(crop_set.boxes) == len(crop_set.scores)
    assert outcomes["ok"] > 50 and outcomes["error"] > 50  # the mutations hit both paths
