"""A device learns from the crops its user made: in a federated round and in `personalize --crops --data`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from client.local import device_user, train_round
from client.settings import NodeConfigError, node_settings
from client.state_store import PersonalStateStore
from conftest import make_toy_dataset
from fedpic.cli import main
from pic_core.config import load_config
from pic_core.model import CropScorer
from pic_core.train import cached_head_inputs
from pic_core.user_crops import crop_samples, read_user_crops

SIZES = [(192, 256), (256, 192), (200, 300), (240, 240), (180, 320)]


def _write_crops(data_dir: Path, user: str) -> Path:
    """Five noise photos the user cropped to their upper-left part, in <data>/crops/<user>.csv."""
    (data_dir / "pics").mkdir(parents=True, exist_ok=True)
    (data_dir / "crops").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image,x1,y1,x2,y2"]
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(data_dir / "pics" / f"p{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rows.append(f"../pics/p{i}.png,{0.02 * w:.1f},{0.03 * h:.1f},{0.62 * w:.1f},{0.68 * h:.1f}")
    path = data_dir / "crops" / f"{user}.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _users_box_rank(model: CropScorer, crops, personal: bool) -> float:
    """Mean share of the free candidates the user's own crop outscores (1: it beats them all)."""
    photos = crop_samples(model, crops)
    inputs = cached_head_inputs(model, [p.sample for p in photos])
    with torch.no_grad():
        scores = [model.combine(model.head_features(x, personal=personal), personal=personal).numpy() for x in inputs]
    return float(np.mean([np.mean(s[: p.free] < s[-1]) for s, p in zip(scores, photos)]))  # the user's box is last


def test_device_finds_its_crops_in_its_own_config(tmp_path):
    crops = _write_crops(tmp_path / "data", "me")
    base = {"data-dir": str(tmp_path / "data"), "user-id": "me", "state-dir": str(tmp_path / "state")}
    assert node_settings(base, {}).crops_file == crops  # default <data>/crops/<user>.csv
    other = tmp_path / "elsewhere.jsonl"
    other.write_text('{"image": "a.jpg", "box": [1, 2, 3, 4]}\n')
    assert node_settings({**base, "crops-file": str(other)}, {}).crops_file == other
    # a server's run config never points a device at a file
    assert node_settings({**base, "user-id": "you"}, {"crops-file": str(other)}).crops_file is None
    with pytest.raises(NodeConfigError, match="crops-file .*missing.csv: no such file"):
        node_settings({**base, "crops-file": str(tmp_path / "missing.csv")}, {})


def test_a_federated_round_learns_the_users_own_crops(tmp_path):
    """A user with no scored CSV at all: after each round, the personal state fitted on their crops
    ranks the crop they made above more candidates than the same shared model without it."""
    data = tmp_path / "data"
    crops = read_user_crops(_write_crops(data, "me"))
    config = load_config("tiny")
    torch.manual_seed(0)
    model = CropScorer(config.model).eval()
    settings = node_settings({"data-dir": str(data), "user-id": "me", "state-dir": str(tmp_path / "state")}, {})
    for server_round in (1, 2):
        result = train_round(model, device_user(settings), config, settings, server_round)
        assert result.metrics["own-crops"] == len(SIZES) == result.metrics["images"]
        assert np.isfinite(result.metrics["loss-personal"])
        PersonalStateStore(settings.state_dir, "me").load(model)
        generic, personal = _users_box_rank(model, crops, False), _users_box_rank(model, crops, True)
        assert personal > generic + 0.05, (server_round, generic, personal)


def test_a_round_mixes_scored_sets_and_own_crops(tmp_path):
    data = make_toy_dataset(tmp_path / "data", users=1, images_per_user=4)
    _write_crops(data, "user0")
    config = load_config("tiny", overrides={"federation.personal_epochs": 1})
    model = CropScorer(config.model).eval()
    settings = node_settings({"data-dir": str(data), "user-id": "user0", "state-dir": str(tmp_path / "s")}, {})
    user = device_user(settings)
    result = train_round(model, user, config, settings, 1)
    assert result.metrics["images"] == len(user.split("prior")) + len(SIZES) == 2 + 5
    assert result.metrics["own-crops"] == len(SIZES)


def test_personalize_mixes_crops_with_scored_csv(tiny_model_file, tmp_path):
    data = make_toy_dataset(tmp_path / "data", users=1, images_per_user=4)
    crops = _write_crops(tmp_path / "mine", "me")
    out = tmp_path / "me.pt"
    assert main(["personalize", "--model", str(tiny_model_file), "--crops", str(crops), "--data", str(data),
                 "--user", "user0", "--out", str(out), "--config", "tiny", "--quiet"]) == 0
    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["scored_images"] == 1 and extra["photos"] == len(SIZES)  # toy user0 has 1 'train' set
    assert main(["personalize", "--model", str(tiny_model_file), "--crops", str(crops), "--data", str(data),
                 "--out", str(out), "--config", "tiny"]) == 2  # --user needed to pick the scored user
