"""Attacks and faults closed (issue 14 part 4): each test fails on the code before its fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fedpic.cli import main
from pic_core.checkpoint import CheckpointError, load_model, load_user_state, save_model, save_user_state
from pic_core.cropper import Cropper

TINY = "tiny"


@pytest.fixture(scope="module")
def program(tiny_model_file, tmp_path_factory) -> Path:
    from pic_core.export import export_model

    model, _ = load_model(tiny_model_file)
    out = tmp_path_factory.mktemp("program") / "p.pt2"
    export_model(model, out, personal=False, check=False)
    return out


@pytest.fixture()
def photo(tmp_path) -> Path:
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    return tmp_path / "a.png"


# -- 1. compiled programs only from a named .pt2 with --allow-compiled --

def test_a_pt_file_holding_a_program_is_refused_not_run(program, photo, tmp_path, capsys):
    disguised = tmp_path / "model.pt"
    shutil.copy(program, disguised)
    with pytest.raises(CheckpointError, match="compiled program"):
        Cropper.load(disguised, device="cpu", allow_compiled=True)  # the flag does not make a .pt a program
    assert main(["crop", str(photo), "--model", str(disguised), "--out", str(tmp_path / "o"), "--config", TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pt" in err[0] and "compiled program" in err[0]


def test_a_pt2_program_needs_the_opt_in_flag(program, photo, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["crop", str(photo), "--model", str(program), "--out", str(out), "--config", TINY]) == 2
    assert "--allow-compiled" in capsys.readouterr().err
    assert not (out / "crops.jsonl").exists()
    assert main(["crop", str(photo), "--model", str(program), "--allow-compiled", "--out", str(out),
                 "--config", TINY, "--quiet", "--no-crops"]) == 0
    assert (out / "crops.jsonl").is_file()


# -- 4. model / state files: non-finite values, wrong fingerprint, another model --

def _poisoned_copy(src: Path, dst: Path, key: str, edit) -> Path:
    payload = torch.load(src, weights_only=True)
    edit(payload[key])
    torch.save(payload, dst)
    return dst


def test_a_model_file_with_nan_weights_or_a_wrong_fingerprint_is_exit_2(tiny_model_file, photo, tmp_path, capsys):
    def nan_first(state):
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = torch.full_like(state[name], float("nan"))

    nan = _poisoned_copy(tiny_model_file, tmp_path / "nan.pt", "state_dict", nan_first)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(nan)
    assert main(["crop", str(photo), "--model", str(nan), "--out", str(tmp_path / "o"), "--config", TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan.pt" in err[0]

    def shift_first(state):
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = state[name] + 0.5  # finite, but not the weights the fingerprint names

    altered = _poisoned_copy(tiny_model_file, tmp_path / "altered.pt", "state_dict", shift_first)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_model(altered)


def test_a_state_with_nan_or_fitted_on_another_model_is_an_error(tiny_model_file, photo, tmp_path, capsys):
    model, _ = load_model(tiny_model_file)
    good = save_user_state(tmp_path / "u.pt", model, "u")
    nan = _poisoned_copy(good, tmp_path / "nan_state.pt", "personal",
                         lambda p: p.update({"personal.delta": torch.full_like(p["personal.delta"], float("nan"))}))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_user_state(nan, model)
    assert main(["crop", str(photo), "--model", str(tiny_model_file), "--user-state", str(nan),
                 "--out", str(tmp_path / "o"), "--config", TINY]) == 2
    assert "nan_state.pt" in capsys.readouterr().err
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.1)
    other = save_model(tmp_path / "other.pt", model, stage="test")
    assert main(["crop", str(photo), "--model", str(other), "--user-state", str(good),
                 "--out", str(tmp_path / "o2"), "--config", TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "u.pt" in err[0] and "different shared model" in err[0]


# -- 2. example-count liar, absolute norm bound with 1 or 2 replies --

def _replies(config, model, shifts: list[float], claims: list[float], attackers=None, factor=100.0):
    from flwr.app import Context, Message, RecordDict

    from test_poisoning import _honest_app
    from fed_capture import server_message
    from pic_core.exchange import METRICS, NUM_EXAMPLES
    from simulations.attacks import attack_mod

    mod = attack_mod(attackers or {}, factor=factor)
    replies = []
    for partition, (shift, claim) in enumerate(zip(shifts, claims)):
        context = Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition},
                          state=RecordDict(), run_config={})
        reply: Message = mod(server_message(config, model), context, _honest_app(shift))
        reply.content[METRICS][NUM_EXAMPLES] = claim
        replies.append(reply)
    return replies


def test_a_device_claiming_1e9_examples_weighs_no_more_than_an_honest_one(tiny_config):
    from pic_core.exchange import ARRAYS
    from pic_core.model import CropScorer
    from pic_core.params import shared_state, to_numpy
    from server.screening import screen_replies
    from server.strategy import build_strategy, sampling

    fed = tiny_config.federation
    model = CropScorer(tiny_config.model)
    received = to_numpy(shared_state(model))
    # three honest devices move every weight by +1e-3; the liar by -1e-3 and claims 1e9 examples
    replies = _replies(tiny_config, model, [1e-3, 1e-3, 1e-3, -1e-3], [4, 4, 4, 1e9])
    screening = screen_replies(replies, received, "delta16", fed.max_update_norm, fed.outlier_factor, fed.max_images)
    assert len(screening.accepted) == 4 and screening.counts()["capped_examples"] == 1
    arrays, _ = build_strategy(fed, sampling(fed, 4)).aggregate_train(1, screening.accepted)
    key = next(k for k in arrays if k in received and np.issubdtype(received[k].dtype, np.floating)
               and k in screening.accepted[0].content[ARRAYS])
    moved = float(np.mean(arrays[key].numpy() - received[key]))
    assert moved == pytest.approx(0.5e-3, abs=1e-4)  # (3 x 1e-3 - 1e-3) / 4, not the liar's -1e-3


@pytest.mark.parametrize("honest", [0, 1])
def test_a_huge_update_is_rejected_with_one_or_two_replies_by_default(tiny_config, honest):
    from pic_core.model import CropScorer
    from pic_core.params import shared_state, to_numpy
    from server.screening import screen_replies

    fed = tiny_config.federation
    assert fed.max_update_norm is not None  # the absolute bound is on by default
    model = CropScorer(tiny_config.model)
    received = to_numpy(shared_state(model))
    replies = _replies(tiny_config, model, [1e-3] * (honest + 1), [4] * (honest + 1), attackers={honest: "scale"},
                       factor=1e6)
    screening = screen_replies(replies, received, "delta16", fed.max_update_norm, fed.outlier_factor, fed.max_images)
    assert screening.counts()["rejected_norm"] == 1 and len(screening.accepted) == honest


# -- 3. a device refuses non-finite global weights and never writes a non-finite state --

def test_a_device_refuses_nan_global_weights_and_keeps_its_state(tiny_config, toy_dataset, tmp_path):
    from flwr.app import MessageType

    from flwr.app import Array

    from client.app import handle_train, make_client_app
    from fed_capture import device_context, server_message
    from pic_core.exchange import ARRAYS
    from pic_core.model import CropScorer

    model = CropScorer(tiny_config.model)
    context = device_context(toy_dataset, "user0", tmp_path)
    state = tmp_path / "user0" / "personal.pt"
    assert make_client_app()(server_message(tiny_config, model), context).has_content()  # an honest round 1
    before = state.read_bytes()
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        message = server_message(tiny_config, model, kind, server_round=2)
        key = next(k for k, a in message.content[ARRAYS].items() if a.numpy().dtype.kind == "f")
        poisoned = message.content[ARRAYS][key].numpy().copy()
        poisoned.flat[0] = np.nan
        message.content[ARRAYS][key] = Array(poisoned)
        # the ClientApp raises before touching the disk; Flower's runtime sends it back as the error reply
        with pytest.raises(ValueError, match="non-finite global weights"):
            make_client_app()(message, context)
    with pytest.raises(ValueError, match="non-finite global weights"):
        handle_train(message, context, {})
    assert state.read_bytes() == before  # d_u and its backup (`previous`) untouched
    assert list(state.parent.glob("*.tmp")) == []


def test_a_non_finite_user_state_is_never_written(tiny_config, tmp_path):
    from pic_core.model import CropScorer

    model = CropScorer(tiny_config.model)
    good = save_user_state(tmp_path / "u.pt", model, "u")
    before = good.read_bytes()
    with torch.no_grad():
        model.personal.delta.fill_(float("inf"))
    with pytest.raises(CheckpointError, match="non-finite"):
        save_user_state(good, model, "u")
    assert good.read_bytes() == before


# -- 6. a device's folders come from its own node config --

def test_the_run_config_cannot_choose_a_real_devices_folders(toy_dataset, tmp_path):
    from client.settings import NodeConfigError, node_settings

    hostile = {"data-dir": str(tmp_path / "elsewhere"), "state-dir": str(tmp_path / "theirs")}
    with pytest.raises(NodeConfigError, match="state-dir in the node config:"):
        node_settings({"data-dir": str(toy_dataset), "user-id": "user0"}, hostile)
    with pytest.raises(NodeConfigError, match="data-dir"):
        node_settings({"user-id": "user0", "state-dir": str(tmp_path)}, hostile)
    own = node_settings({"data-dir": str(toy_dataset), "user-id": "user0", "state-dir": str(tmp_path)}, hostile)
    assert own.data_dir == toy_dataset and own.state_dir == tmp_path / "user0"


# -- 5. strategy_args: scalars only; a YAML alias bomb is a fast, clear error --

BOMB = "\n".join(["federation:", "  strategy: fedtrimmedavg", "  strategy_args:", '    a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
                 + [f"    a{i}: &a{i} [*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},"
                    f"*a{i - 1}]" for i in range(1, 9)]) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    import time

    from pic_core.config import ConfigError, load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: line 5 .*aliases"):
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert main(["simulate", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bomb.yaml" in err[0]


@pytest.mark.parametrize("value", ["[1, 2]", "{x: 1}"])
def test_strategy_args_accept_scalars_only(tmp_path, value):
    from pic_core.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"federation:\n  strategy: fedtrimmedavg\n  strategy_args:\n    beta: {value}\n")
    with pytest.raises(ConfigError, match="strategy_args.beta: expected a single value"):
        load_config(path)
    path.write_text("federation:\n  strategy: fedtrimmedavg\n  strategy_args:\n    beta: 0.2\n")
    assert load_config(path).federation.strategy_args == {"beta": 0.2}


# -- 7. crops.jsonl and --json written atomically; killed writers' temp files removed --

def test_an_interrupted_crop_rerun_keeps_the_previous_results(tiny_model_file, tmp_path, monkeypatch):
    from pic_core import crop_tool

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = ["crop", str(photos), "--model", str(tiny_model_file), "--out", str(out), "--config", TINY, "--quiet",
            "--no-crops"]
    assert main(args) == 0
    before = (out / "crops.jsonl").read_text()
    assert len(before.splitlines()) == 3
    real, calls = crop_tool.crop_one, []

    def interrupted(*a, **k):  # the user presses Ctrl-C while the second photo is cropped
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(crop_tool, "crop_one", interrupted)
    assert main(args) == 130  # "fedpic: interrupted"
    assert len(calls) == 2
    assert (out / "crops.jsonl").read_text() == before
    assert not list(out.glob(".crops.jsonl.*"))


def test_temp_files_of_killed_writers_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from pic_core.atomic import atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".r.json.{dead.pid}.abc123.tmp"
    live = tmp_path / f".r.json.{os.getpid()}.def456.tmp"  # a writer still running (this process)
    stale.write_text("half")
    live.write_text("half")
    atomic_write_text(tmp_path / "r.json", "{}\n")
    assert not stale.exists() and live.exists() and (tmp_path / "r.json").read_text() == "{}\n"


def test_batchnorm_statistics_do_not_count_as_movement_but_negative_variances_are_refused():
    """Pretrained-backbone features give head BatchNorms running variances in the hundreds; an
    honest round moves them by as much, which must not trip the weight-norm bound (it rejected
    every demo update before); a negative variance (no data makes one) is refused."""
    from pic_core.exchange import negative_variances, update_norm

    received = {"head.0.weight": np.zeros((4, 4), np.float32), "head.1.running_var": np.full(4, 300.0, np.float32),
                "head.1.running_mean": np.zeros(4, np.float32), "head.1.num_batches_tracked": np.array(7)}
    full = dict(received, **{"head.0.weight": np.full((4, 4), 0.1, np.float32),
                             "head.1.running_var": np.full(4, 900.0, np.float32)})
    assert update_norm(full, received) == pytest.approx(0.4)  # the trained weights only
    assert update_norm(full, received, statistics=True) == pytest.approx(1200.0)
    assert negative_variances(full) == []
    poisoned = dict(full, **{"head.1.running_var": np.array([1.0, -5.0, 1.0, 1.0], np.float32)})
    assert negative_variances(poisoned) == ["head.1.running_var"]
