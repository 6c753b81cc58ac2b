"""The formats researchers actually hold: GAICD with its train/test split (and split lists),
CPC's raw per-image files and flat image_crop.json, PIC's per-user CSV folders. Small files in
each real format; a GAICD pre-training run must never open a test image."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedpic.cli import main
from pic_core.checkpoint import load_model
from pic_core.data import DataError, Dataset, read_cpc, read_cpc_raw, read_gaicd_dir, read_split_list
from pic_core.data.sources import annotated_sets, crop_sets_for_pretrain

TINY = ["--config", "tiny", "--set", "pre.epochs=1"]
# GAICD lines are "y1 x1 y2 x2 score" (rows first); 12 crops so the N = 5/10 accuracies apply
GAICD_LINES = "".join(f"{r} {c} {r + 40} {c + 50} {s}\n" for r, c, s in
                      [(0, 0, 3.1), (2, 4, 2.0), (4, 8, 4.2), (6, 12, 1.5), (8, 16, 2.8), (10, 20, 3.9),
                       (12, 24, 2.2), (14, 28, 3.3), (16, 2, 1.1), (18, 6, 4.8), (1, 10, 2.5), (3, 14, -2)])


def make_image(path: Path, height: int = 60, width: int = 80, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def corrupt(path: Path) -> Path:
    """Not an image at all: any attempt to read its header or pixels fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is a test image nobody may open\n")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def gaicd_release(root: Path, corrupt_test: bool) -> Path:
    """images/{train,test} + annotations/{train,test}, as the GAICD release ships."""
    for split, stems in (("train", ("1", "2", "3")), ("test", ("7", "8"))):
        for i, stem in enumerate(stems):
            image = root / "images" / split / f"{stem}.jpg"
            corrupt(image) if (corrupt_test and split == "test") else make_image(image, seed=i)
            write(root / "annotations" / split / f"{stem}.txt", GAICD_LINES)
    return root


def test_gaicd_pretrain_reads_the_train_split_only_and_evaluate_prints_gaic_table(tmp_path, capsys):
    root = gaicd_release(tmp_path / "GAICD", corrupt_test=True)
    # the test split really is unreadable: reading it fails, naming the image
    with pytest.raises(DataError, match=re.escape("test/7.jpg")):
        read_gaicd_dir(root, split="test")
    with pytest.raises(DataError, match="test/7.jpg"):
        read_gaicd_dir(root)
    train = read_gaicd_dir(root, split="train")
    assert [c.name for c in train] == ["train/1.jpg", "train/2.jpg", "train/3.jpg"]
    assert {c.split for c in train} == {"train"} and len(train[0].scores) == 11  # the -2 crop left out
    # a whole pre-training run through the CLI never opens a test image (it would stop with exit 2)
    assert main(["pretrain", "--data", str(root), "--out", str(tmp_path / "pre.pt"), *TINY]) == 0
    _, meta = load_model(tmp_path / "pre.pt")
    assert meta["extra"]["images"] == 3
    # evaluation uses the test split: with readable test photos, GAIC's table over 2 images
    gaicd_release(root, corrupt_test=False)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "pre.pt"), "--data", str(root), "--gaic-table",
                 "--json", str(tmp_path / "m.json"), "--config", "tiny"]) == 0
    table = capsys.readouterr().out
    assert "Acc1/5" in table and "wAcc/10" in table and "SRCC" in table
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 2 and metrics["images_n10"] == 2 and metrics["split"] == "test"


def test_flat_gaicd_with_a_split_list(tmp_path, capsys):
    root = tmp_path / "flat"
    for i, stem in enumerate(("1", "2", "3", "7")):
        (corrupt if stem == "7" else make_image)(root / "images" / f"{stem}.jpg", *(() if stem == "7" else (60, 80, i)))
        write(root / "annotations" / f"{stem}.txt", GAICD_LINES)
    write(root / "annotations" / "9.txt", GAICD_LINES)  # in no list: left out, counted
    split_list = write(tmp_path / "split.json", json.dumps({"train": ["1.jpg", "train/2.jpg", "3"],
                                                            "test": ["7.jpg"]}, indent=1))
    assert read_split_list(split_list) == {"1": "train", "2": "train", "3": "train", "7": "test"}
    train = read_gaicd_dir(root, split="train", split_list=split_list)
    assert [(c.name, c.split) for c in train] == [("1.jpg", "train"), ("2.jpg", "train"), ("3.jpg", "train")]
    assert train.skipped["image not in the split list"] == 1
    with pytest.raises(DataError, match="7.jpg"):
        read_gaicd_dir(root, split="test", split_list=split_list)
    # without the list the folder knows no split: pretrain warns and uses everything (here: hits 7.jpg)
    with pytest.raises(DataError, match="7.jpg"):
        crop_sets_for_pretrain(root)
    assert len(crop_sets_for_pretrain(root, split_list=split_list)) == 3
    assert main(["pretrain", "--data", str(root), "--split-list", str(split_list),
                 "--out", str(tmp_path / "pre.pt"), *TINY]) == 0
    assert main(["pretrain", "--data", str(root), "--out", str(tmp_path / "pre2.pt"), *TINY,
                 "--set", f"pre.split_list={split_list}"]) == 0
    with pytest.raises(DataError, match=r"no 'test' split"):
        read_gaicd_dir(root, split="test")


@pytest.mark.parametrize("content, fragments", [
    ('{"train": ["1.jpg"], "test": ["1.png"]}', ["field 'test'[0]", "also listed under 'train'"]),
    ('{"train": "1.jpg"}', ["field 'train'", "expected a list"]),
    ('{"train": [1]}', ["field 'train'[0]", "expected an image name"]),
    ('["1.jpg"]', [":1:", "must be an object"]),
    ('{"train": [\n"1.jpg",\n]}', [":3:", "invalid JSON"]),
])
def test_split_list_errors_name_file_and_field(tmp_path, content, fragments):
    path = write(tmp_path / "split.json", content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + ".*".join(re.escape(f) for f in fragments)):
        read_split_list(path)


# --------------------------------------------------------------------------------------- CPC

CPC_BOXES = [[0, 0, 80, 60], [10, 5, 70, 55], [0, 0, 40, 60], [20, 10, 60, 50]]
CPC_WORKERS = [[1, 0, 2, 0], [0, 1, 2, 0], [1, 1, 1, 0]]


def cpc_release(root: Path) -> Path:
    """CPCDataset/: images/ + CollectedAnnotationsRaw/<image>.txt, each a JSON-encoded string."""
    for i, name in enumerate(("p1.jpg", "p2.jpg")):
        make_image(root / "images" / name, seed=i)
        entry = json.dumps({"scores": CPC_WORKERS, "bboxes": CPC_BOXES})
        write(root / "CollectedAnnotationsRaw" / f"{name}.txt", json.dumps(entry))
    return root


def test_cpc_raw_release_files(tmp_path):
    root = cpc_release(tmp_path / "CPCDataset")
    sets = read_cpc_raw(root / "CollectedAnnotationsRaw", root / "images")
    assert [c.name for c in sets] == ["p1.jpg", "p2.jpg"]
    assert sets[0].annotator_scores.shape == (3, 4)
    assert np.allclose(sets[0].scores, np.mean(CPC_WORKERS, axis=0)) and sets[0].boxes.tolist() == CPC_BOXES
    assert [c.name for c in annotated_sets(root, None)] == ["p1.jpg", "p2.jpg"]  # the release root works too
    bad = root / "CollectedAnnotationsRaw" / "p2.jpg.txt"
    write(bad, json.dumps(json.dumps({"scores": [[1, 0, 2]], "bboxes": CPC_BOXES})))
    with pytest.raises(DataError, match=re.escape(f"{bad}:1: image 'p2.jpg': field \"scores\"[0]") + ".*list of 4"):
        read_cpc_raw(root / "CollectedAnnotationsRaw", root / "images")
    write(bad, '"{\\"scores\\": [[1, 0'),
    with pytest.raises(DataError, match=re.escape(f"{bad}:1: invalid JSON")):
        read_cpc_raw(root / "CollectedAnnotationsRaw", root / "images")
    assert [c.name for c in read_cpc_raw(root / "CollectedAnnotationsRaw", root / "images", skip_bad=True)] == [
        "p1.jpg"]


def test_cpc_flat_image_crop_json_and_joint_pretraining(tmp_path):
    cpc = cpc_release(tmp_path / "CPCDataset")
    flat = {"p1.jpg": {"bboxes": CPC_BOXES, "scores": [0.5, 1.5, 2.0, 0.0]},
            "p2.jpg": {"bboxes": CPC_BOXES[:2], "scores": [1.0, 0.25]}}
    path = write(cpc / "image_crop.json", "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}"
                                                             for k, v in flat.items()) + "\n}\n")
    sets = read_cpc(path, cpc / "images")
    assert sets[0].scores.tolist() == [0.5, 1.5, 2.0, 0.0] and sets[0].annotator_scores is None
    assert len(sets[1].boxes) == 2
    bad = dict(flat, p2={"bboxes": CPC_BOXES, "scores": [1.0, 0.25]})
    write(path, "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in bad.items()) + "\n}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:4: image 'p2'") + '.*"scores".*list of 4'):
        read_cpc(path, cpc / "images")
    write(path, json.dumps(flat))
    gaicd = gaicd_release(tmp_path / "GAICD", corrupt_test=True)
    assert len(crop_sets_for_pretrain([gaicd, path])) == 5
    assert main(["pretrain", "--data", str(gaicd), "--data", str(path), "--data", str(cpc),
                 "--out", str(tmp_path / "joint.pt"), *TINY]) == 0
    assert load_model(tmp_path / "joint.pt")[1]["extra"]["images"] == 7


# --------------------------------------------------------------------------------------- PIC

def pic_csv(rows: list[tuple[str, str, float]], index: bool) -> str:
    head = ",name,bbox,score,order_pre,order_final\n" if index else "name,bbox,score,order_pre,order_final\n"
    return head + "".join((f"{i}," if index else "") + f'{name},"{box}",{score},0,0\n'
                          for i, (name, box, score) in enumerate(rows))


def test_convert_pic_folders_to_a_dataset(tmp_path, capsys):
    images = tmp_path / "cpc" / "images"
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        make_image(images / name, seed=i)
    pic = tmp_path / "datasets" / "test" / "10"
    write(pic / "train" / "U1_train.csv", pic_csv([("a.jpg", "[0, 0, 40, 30]", 3), ("a.jpg", "[5, 5, 80, 60]", 0),
                                                   ("b.jpg", "[0, 0, 50, 50]", 1)], index=True))
    write(pic / "val" / "U1_val.csv", pic_csv([("c.jpg", "[10, 10, 70, 50]", 4)], index=False))
    prior = tmp_path / "datasets" / "prior" / "total"
    write(prior / "U2.csv", pic_csv([("a.jpg", "[0, 0, 80, 60]", 2), ("c.jpg", "[0, 0, 30, 30]", 1)], index=False))
    out = tmp_path / "pic10"
    assert main(["convert", "--pic", str(pic), "--prior", str(prior), "--images", str(images),
                 "--out", str(out)]) == 0
    assert "wrote 2 users" in capsys.readouterr().out
    dataset = Dataset(out)
    assert dataset.user_ids == ["U1", "U2"]
    u1 = dataset.user("U1")
    assert [c.name for c in u1.split("train")] == ["a.jpg", "b.jpg"] and [c.name for c in u1.split("test")] == [
        "c.jpg"]
    assert u1.split("train")[0].boxes.tolist() == [[0, 0, 40, 30], [5, 5, 80, 60]]
    assert u1.split("train")[0].scores.tolist() == [3, 0]
    assert [c.split for c in dataset.user("U2").crop_sets] == ["prior", "prior"]
    # malformed input: one line on stderr naming file, line and field; exit 2
    bad = write(pic / "val" / "U1_val.csv", pic_csv([("c.jpg", "[10, 10, 70]", 4)], index=False))
    assert main(["convert", "--pic", str(pic), "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: field bbox" in capsys.readouterr().err
    write(bad, pic_csv([("c.jpg", "[10, 10, 700, 50]", 4)], index=False))
    assert main(["convert", "--pic", str(pic), "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: field bbox" in capsys.readouterr().err
    write(bad, "name,box,score\nc.jpg,1,2\n")
    assert main(["convert", "--pic", str(pic), "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:1: header needs exactly one 'bbox' column" in capsys.readouterr().err
    write(pic / "val" / "oops.csv", pic_csv([], index=False))
    assert main(["convert", "--pic", str(pic), "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    assert "oops.csv: expected a file named <user>_val.csv" in capsys.readouterr().err
