"""Bad input everywhere a user can reach: one clear error naming the file, line or field.

One case per row of the fault table in docs/deployment.md; `--skip-bad` turns bad rows
into counted skips instead.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_toy_dataset
from fedpic.cli import build_parser
from pic_core.checkpoint import CheckpointError, load_model, save_model
from pic_core.config import ConfigError, load_config, to_dict
from pic_core.data import DataError, image_size, load_image, read_user_csv
from pic_core.data.dataset import Dataset
from pic_core.model import CropScorer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("bad") / "data", users=1, images_per_user=4)


def _csv_with(data: Path, tmp: Path, edit) -> Path:
    lines = (data / "users" / "user0.csv").read_text().splitlines()
    path = tmp / "user0.csv"
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def test_truncated_jpeg(data, tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes((data / "images" / "u0_0.jpg").read_bytes()[:600])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(path)


def test_corrupt_png(tmp_path):
    path = tmp_path / "broken.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[60:80] = b"\xff" * 20  # inside the IDAT chunk: its CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="broken.png"):
        load_image(path)


def test_zero_size_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg"):
        image_size(path)


def test_gigantic_image_is_refused_by_the_pixel_limit(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(DataError, match="huge.png") as err:
        image_size(path, max_pixels=1_000_000)
    assert "12000000" in str(err.value).replace(",", "").replace("_", "") or "pixel" in str(err.value)


def test_csv_missing_column(data, tmp_path):
    path = _csv_with(data, tmp_path, lambda lines: [",".join(lines[0].split(",")[:1] + ["bbox", "split"])]
                     + lines[1:])
    with pytest.raises(DataError, match=r"user0.csv.*score"):
        read_user_csv(path, data / "images")


def test_bad_box_names_line_and_field(data, tmp_path):
    path = _csv_with(data, tmp_path, lambda lines: [lines[0], 'u0_0.jpg,"[100, 8, 50, 152]",1.0,prior'] + lines[1:])
    with pytest.raises(DataError, match=r"user0.csv:2:.*bbox"):
        read_user_csv(path, data / "images")


def test_nan_score_names_line_and_field(data, tmp_path):
    path = _csv_with(data, tmp_path, lambda lines: [lines[0], lines[1].rsplit(",", 2)[0] + ",nan,prior"] + lines[2:])
    with pytest.raises(DataError, match=r"user0.csv:2:.*score"):
        read_user_csv(path, data / "images")


def test_skip_bad_counts_instead_of_stopping(data, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(data, root)
    csv = root / "users" / "user0.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[1].rsplit(",", 2)[0] + ",nan,prior", 'u0_0.jpg,"[1, 2]",1,prior']
                             + lines[2:]) + "\n")
    with pytest.raises(DataError):
        Dataset(root).user("user0")
    ds = Dataset(root, skip_bad=True)
    user = ds.user("user0")
    assert sum(len(c.boxes) for c in user.crop_sets) == len(lines) - 2
    assert sum(sum(v.values()) for v in ds.skipped.values()) == 2
    args = build_parser().parse_args(["evaluate", "--data", str(root), "--skip-bad", "--model", "m.pt"])
    assert args.skip_bad


def test_yaml_unknown_key_and_wrong_type(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  widht: 0.5\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml.*widht"):
        load_config(path)
    path.write_text("federation:\n  rounds: many\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml.*rounds"):
        load_config(path)


def test_model_file_from_another_version(tmp_path, tiny_config):
    path = tmp_path / "model.pt"
    save_model(path, CropScorer(tiny_config.model), to_dict(tiny_config), "prior")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model.pt.*version 99"):
        load_model(path)
