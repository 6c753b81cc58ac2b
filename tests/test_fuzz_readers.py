"""Fuzzing every reader a user can reach with random corruptions of valid files.

Each reader gets a valid file, then hypothesis flips bytes, truncates, inserts junk, or
duplicates/deletes lines. The only acceptable outcomes are a successful read or one of the
documented error types (DataError, ConfigError, CheckpointError: all ValueErrors) whose
message names the file. Anything else (IndexError, struct.error, a Pillow or torch exception
leaking through, a hang) is a bug.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import make_toy_dataset
from pic_core.checkpoint import CheckpointError, load_model, load_user_state, save_model, save_user_state
from pic_core.config import ConfigError, load_config, resolve_config, to_dict
from pic_core.data import DataError, image_size, load_image, read_cpc, read_json, read_user_csv, write_json
from pic_core.data.dataset import Dataset
from pic_core.model import CropScorer
from server.checkpoint import ServerState, load_server_state, save_server_state

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = (DataError, ConfigError, CheckpointError)
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def corruptions(draw, data: bytes) -> bytes:
    """One random corruption of `data` (never the identity for non-empty data... almost)."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "lines", "zero"]))
    if not data:
        return draw(st.binary(max_size=64))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=32)) + data[i:]
    if kind == "zero":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + b"\0" * draw(st.integers(1, 64)) + data[i + 64:]
    lines = data.split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    if draw(st.booleans()):
        lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
    else:
        del lines[i]
    return b"\n".join(lines)


def _check(call, path: Path) -> None:
    try:
        call(path)
    except DOCUMENTED as exc:
        assert path.name in str(exc), f"error does not name the file: {exc}"


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    data = make_toy_dataset(root / "data", users=1, images_per_user=4)
    config = load_config("tiny")
    model = CropScorer(config.model)
    save_model(root / "model.pt", model, to_dict(config), "prior")
    save_user_state(root / "state.pt", model, "user0")
    sets = Dataset(data).user("user0").split("prior") + Dataset(data).user("user0").split("test")
    write_json(root / "sets.json", sets)
    save_server_state(root / "checkpoint.pt", ServerState(1, {"w": np.ones(3, np.float32)}, "fedavg"))
    return {"root": root, "data": data, "config": config, "model": model}


def _fuzz(valid, source: Path, name: str, call, data) -> None:
    target = valid["root"] / "work" / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data.draw(corruptions(source.read_bytes())))
    _check(call, target)


@FUZZ
@given(data=st.data())
def test_user_csv(valid, data):
    _fuzz(valid, valid["data"] / "users" / "user0.csv", "user0.csv",
          lambda p: read_user_csv(p, valid["data"] / "images"), data)


@FUZZ
@given(data=st.data())
def test_user_csv_skip_bad_never_raises_per_row(valid, data):
    """With skip_bad only file-level problems raise; every bad row is counted instead."""
    _fuzz(valid, valid["data"] / "users" / "user0.csv", "user0.csv",
          lambda p: read_user_csv(p, valid["data"] / "images", skip_bad=True), data)


@FUZZ
@given(data=st.data())
def test_json_sets(valid, data):
    _fuzz(valid, valid["root"] / "sets.json", "sets.json", lambda p: read_json(p, valid["data"] / "images"), data)


@FUZZ
@given(data=st.data())
def test_cpc(valid, data):
    _fuzz(valid, valid["root"] / "sets.json", "cpc.json", lambda p: read_cpc(p, valid["data"] / "images"), data)


@FUZZ
@given(data=st.data())
def test_jpeg(valid, data):
    def read(path: Path) -> None:
        image_size(path)
        load_image(path)

    _fuzz(valid, valid["data"] / "images" / "u0_0.jpg", "photo.jpg", read, data)


@FUZZ
@given(data=st.data())
def test_png(valid, data):
    png = valid["root"] / "photo.png"
    if not png.is_file():
        from PIL import Image
        Image.fromarray(load_image(valid["data"] / "images" / "u0_0.jpg")).save(png)
    _fuzz(valid, png, "photo.png", lambda p: load_image(p), data)


@FUZZ
@given(data=st.data())
def test_yaml_config(valid, data):
    _fuzz(valid, resolve_config("tiny"), "tiny.yaml", load_config, data)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_model_and_state_files(valid, data):
    _fuzz(valid, valid["root"] / "model.pt", "model.pt", load_model, data)
    _fuzz(valid, valid["root"] / "state.pt", "state.pt", lambda p: load_user_state(p, valid["model"]), data)
    _fuzz(valid, valid["root"] / "checkpoint.pt", "checkpoint.pt", load_server_state, data)
