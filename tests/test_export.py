"""`fedpic export`: the exported program scores like the eager model and `fedpic crop` runs it."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fedpic.cli import main
from pic_core.checkpoint import load_model, save_user_state
from pic_core.cropper import Cropper, load_exported
from pic_core.exported import ExportError, is_exported_file

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"


@pytest.fixture(scope="module")
def user_state(tiny_model_file, tmp_path_factory) -> Path:
    """A user whose d_u is far from 0, so a program that ignored it would rank differently."""
    model, _ = load_model(tiny_model_file)
    with torch.no_grad():
        model.personal.delta.copy_(torch.linspace(-3, 3, model.config.embed_dim))
    return save_user_state(tmp_path_factory.mktemp("user") / "u.pt", model, "u")


@pytest.fixture(scope="module")
def exported(tiny_model_file, user_state, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "u.pt2"
    assert main(["export", "--model", str(tiny_model_file), "--user-state", str(user_state), "--out", str(out),
                 "--config", TINY, "--quiet"]) == 0
    return out


def test_exported_model_gives_the_same_boxes_as_the_eager_one(tiny_model_file, user_state, exported):
    eager = Cropper.load(tiny_model_file, user_state, device="cpu")
    program = Cropper.load(exported, device="cpu", allow_compiled=True)
    generic = Cropper.load(tiny_model_file, device="cpu")
    rng = np.random.default_rng(1)
    differs_from_generic = False
    for height, width in [(192, 256), (300, 200), (64, 64), (40, 900), (17, 23)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for aspect in (None, 16 / 9):
            want = eager.crop(image, aspect=aspect, top_k=5)
            got = program.crop(image, aspect=aspect, top_k=5)
            assert [c.box for c in got] == [c.box for c in want]
            assert np.allclose([c.score for c in got], [c.score for c in want], atol=1e-5)
            base = generic.crop(image, aspect=aspect, top_k=5)
            differs_from_generic |= not np.allclose([c.score for c in base], [c.score for c in want])
    assert differs_from_generic  # the user's d_u is inside the program


def test_exported_file_is_recognised_and_described(tiny_model_file, exported):
    assert is_exported_file(exported)
    assert not is_exported_file(tiny_model_file)
    cropper = load_exported(exported)
    assert cropper.short_side == 64 and "user u" in cropper.description
    with pytest.raises(ExportError, match="outside what the exported program accepts"):
        cropper.backend(torch.zeros(1, 3, 64, 70), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    with pytest.raises(ValueError, match="user state"):
        Cropper.load(exported, user_state=tiny_model_file, allow_compiled=True)


def test_crop_command_runs_the_exported_model(tiny_model_file, user_state, exported, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(2).integers(0, 256, (150, 220, 3), dtype=np.uint8))
    records = {}
    for name, args in {"eager": ["--model", str(tiny_model_file), "--user-state", str(user_state)],
                       "exported": ["--model", str(exported), "--allow-compiled"]}.items():
        out = tmp_path / name
        assert main(["crop", str(tmp_path / "a.png"), *args, "--out", str(out), "--config", TINY, "--quiet",
                     "--no-crops"]) == 0
        records[name] = json.loads((out / "crops.jsonl").read_text())
    assert [c["box"] for c in records["exported"]["crops"]] == [c["box"] for c in records["eager"]["crops"]]


def test_a_damaged_exported_file_is_a_clear_error(exported, tmp_path, capsys):
    broken = tmp_path / "broken.pt2"
    data = exported.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert not is_exported_file(broken)  # no longer a readable archive
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["crop", str(tmp_path / "a.png"), "--model", str(broken), "--allow-compiled", "--config", TINY]) == 2
    assert "broken.pt2" in capsys.readouterr().err
