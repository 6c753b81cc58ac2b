"""The federation in Flower's real simulation engine (Ray): tiny model, 3 devices, 2 rounds.

One simulation (module fixture) is checked from several sides; a second run is killed
mid-way and resumed. Every reply a ClientApp sends in the first run is captured by a
client mod (tests/fed_capture.py) and inspected.
"""
from __future__ import annotations
import json

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_toy_dataset
from fed_capture import CAPTURE_ENV, STATES_ENV, capture_mod, read_captures
from fedpic.cli import main as fedpic_main
from pic_core.checkpoint import load_model, load_user_state
from pic_core.config import load_config
from pic_core.exchange import ARRAYS, METRICS, NUM_EXAMPLES, upload_keys
from pic_core.params import is_backbone_tap, shared_keys, shared_state
from server.checkpoint import load_server_state
from server.round_log import read_rounds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny"
OVERRIDES = {"pre.epochs": 1, "federation.rounds": 2, "federation.population": 3, "federation.fraction": 1.0,
             "federation.eval_every": 1, "federation.personal_epochs": 2, "federation.cpus_per_device": 1.0}


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    """4 toy users, the first 3 federated for 2 rounds (one held out), every reply captured."""
    from simulations.federated import SimulationPlan, split_population
    from simulations.simulate import run
    from pic_core.data.dataset import Dataset

    root = tmp_path_factory.mktemp("fed")
    data = make_toy_dataset(root / "data", users=4)
    config = load_config(TINY, overrides=dict(OVERRIDES))
    users, holdout = split_population(Dataset(data), config.federation.population)
    plan = SimulationPlan(config=config, data_dir=data, out_dir=root / "out", users=users, holdout=holdout)
    # RAY_ADDRESS names a dead cluster: a local simulation must start its own Ray, never join that one
    os.environ.update({CAPTURE_ENV: str(root / "captured"), STATES_ENV: str(root / "out" / "devices"),
                       "RAY_ADDRESS": "127.0.0.1:9"})
    try:
        results = run(plan, evaluate=True, client_mods=[capture_mod])
    finally:
        for name in (CAPTURE_ENV, STATES_ENV, "RAY_ADDRESS"):
            os.environ.pop(name, None)
    return {"root": root, "data": data, "out": root / "out", "plan": plan, "results": results,
            "captured": read_captures(root / "captured")}


def test_simulation_completes_and_the_global_model_changes(fed_run):
    out = fed_run["out"]
    rounds = read_rounds(out / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        assert record["sampled"] == 3 and record["accepted"] == 3 and record["aggregated"]
        assert record["rejected_nonfinite"] == record["rejected_norm"] == record["rejected_malformed"] == 0
        assert record["evaluate"]["personalized-acc1_5"] is not None and record["eval_devices"] == 3
        assert record["upload_bytes_mean"] < 0.5 * record["model_bytes_fp32"]  # fp16 heads only
    pre, _ = load_model(out / "pre.pt")
    final, meta = load_model(out / "model.pt")  # a normal fedpic model file
    assert meta["stage"] == "prior" and meta["extra"]["federated"]["round"] == 2
    before, after = shared_state(pre), shared_state(final)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and not any(is_backbone_tap(k) for k in moved)  # heads trained, frozen backbone untouched
    assert rounds[1]["train"]["loss-shared"] > 0


def test_results_are_fedpic_results_that_the_report_renders(fed_run):
    from simulations.experiment import read_results
    from simulations.report import build_report

    payload, results = read_results(fed_run["results"])
    assert payload["kind"] == "federated" and payload["rounds_completed"] == 2
    rows = ("generic", "pre-finetune", "pre-finetune-du", "federated-generic", "federated", "federated-du",
            "federated-compact", "federated-stored")
    main_shots = payload["main_shots"]
    assert {(r.method, len(r.per_user)) for r in results if r.shots == main_shots} == {
        *((m, 3) for m in rows), *((f"{m}-new-devices", 1) for m in rows)}
    # the accuracy-against-N curve: tiny's evaluation.shots [1, 2] on 2 of the 3 federated users
    curve = payload["evaluated"]["samples"]["population-curve"]
    assert curve["shots"] == [1, 2, main_shots] and len(curve["users"]) == 2
    assert {(r.method, r.shots, len(r.per_user)) for r in results if r.shots != main_shots} == {
        (m, n, 2) for m in rows for n in (1, 2)}
    assert payload["evaluated"]["samples"]["population"]["stored_states"] == 3
    gain = payload["gains"]["pre-finetune"][f"federated@{main_shots}"]
    assert gain["users"] == 3 and payload["gains"]["generic-new-devices"][f"federated-new-devices@{main_shots}"]
    assert 0 < payload["communication"]["upload_fraction_of_fp32_model"] < 0.5
    text = build_report(fed_run["out"]).read_text()
    (shots,) = payload["shots"]
    assert f"| federated | {shots} |" in text and f"| federated-generic | {shots} |" in text
    assert f"| federated | {shots} | pre-finetune |" in text  # the paired gain over the honest baseline
    assert (fed_run["out"] / "figures" / "gain_vs_shots.png").is_file()
    assert "## Learning curves (`rounds.jsonl`, 3 rounds)" in text
    gallery = json.loads((fed_run["out"] / "gallery.json").read_text())
    assert gallery["method"] == "federated" and gallery["sheets"]
    tiles = gallery["sheets"][0]["tiles"]
    assert tiles[0]["label"] == "generic" and {t.get("user") for t in tiles[1:]} <= {"user0", "user1", "user2"}
    assert "## Crop galleries" in text


def test_personal_state_persists_between_rounds_on_each_device(fed_run):
    states = sorted((fed_run["out"] / "devices").glob("*/personal.pt"))
    assert [p.parent.name for p in states] == fed_run["plan"].users
    for path in states:
        payload = torch.load(path, weights_only=True)
        assert payload["extra"]["rounds"] == [1, 2]
        assert float(payload["personal"]["personal.delta"].abs().sum()) > 0
        # Adam kept counting across rounds: round 2 continued round 1's d_u optimizer
        steps_per_round = 2 * 6  # personal_epochs x prior images
        assert float(payload["extra"]["optimizer"]["state"][0]["step"]) == 2 * steps_per_round
        assert list(path.parent.glob("taps-*.pt"))  # frozen backbone: outputs cached on the device


def test_no_personal_key_d_u_or_image_tensor_leaves_a_device(fed_run):
    captured = fed_run["captured"]
    final, _ = load_model(fed_run["out"] / "model.pt")
    shapes = {k: tuple(v.shape) for k, v in final.state_dict().items()}
    allowed = set(upload_keys(shared_keys(final), freeze_backbone=True))
    deltas = [d for c in captured for d in c["deltas_on_disk"].values()]
    # 2 training rounds, 3 evaluation rounds (0, 1, 2), the refit after the last round; 3 devices
    assert len(captured) == 3 * 2 + 3 * 3 + 3
    assert sum(c["type"] == "query.refit" for c in captured) == 3
    assert deltas and all(np.abs(d).sum() > 0 for d in deltas[-3:])
    for reply in captured:
        assert not reply["error"] and not reply["configs"]
        names = [ARRAYS, METRICS] if reply["type"] == "train" else [METRICS]
        assert reply["record_names"] == names
        for record in reply["arrays"].values():
            assert set(record) == allowed
            for key, value in record.items():
                assert value.shape == shapes[key] and value.dtype == np.float16 or value.dtype == np.int64
                for delta in deltas:
                    assert delta.astype(np.float16).tobytes() not in value.tobytes()
                    assert delta.astype(np.float32).tobytes() not in value.tobytes()
        (metrics,) = reply["metrics"].values()
        assert metrics[NUM_EXAMPLES] in (6, 3, 9)  # prior, test, prior + train (refit)
        for value in metrics.values():
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert not any(np.isclose(value, delta).any() for delta in deltas if value != 0)


def test_a_new_device_personalizes_from_the_final_model_without_the_server(fed_run, tmp_path, capsys):
    (newcomer,) = fed_run["plan"].holdout
    model = fed_run["out"] / "model.pt"
    state = tmp_path / f"{newcomer}.pt"
    assert fedpic_main(["personalize", "--model", str(model), "--data", str(fed_run["data"]), "--user", newcomer,
                        "--out", str(state), "--config", str(TINY), "--quiet"]) == 0
    loaded, _ = load_model(model)
    meta = load_user_state(state, loaded)
    assert meta["user_id"] == newcomer and float(loaded.personal.delta.detach().abs().sum()) > 0
    assert fedpic_main(["evaluate", "--model", str(model), "--user-state", str(state), "--data",
                        str(fed_run["data"]), "--user", newcomer, "--config", str(TINY), "--quiet"]) == 0
    assert '"personalized": true' in capsys.readouterr().out


def _checkpoint_round(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["round"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def test_resume_after_killing_the_server_mid_run_continues_from_the_last_round(fed_run, tmp_path):
    """A run killed (SIGKILL, whole process group) after round 1 resumes at round 2 and ends
    with the model the uninterrupted run of the fixture produced."""
    from simulations.federated import SimulationPlan
    from simulations.simulate import run

    out = tmp_path / "out"
    pre = fed_run["out"] / "pre.pt"
    sets = [arg for key, value in OVERRIDES.items() if key != "federation.rounds" for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "fedpic", "simulate", "--config", str(TINY), "--data", str(fed_run["data"]),
               "--out", str(out), "--init", str(pre), "--rounds", "50", "--skip-eval", "--quiet", *sets]
    env = dict(os.environ, PYTHONPATH=str(ROOT), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while _checkpoint_round(out / "checkpoint.pt") < 1:
                assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint of round 1 in 300 s"
                time.sleep(0.1)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the server and its Ray workers, mid-run
            process.wait()
    stopped_at = _checkpoint_round(out / "checkpoint.pt")
    assert 1 <= stopped_at < 50
    at_stop = load_server_state(out / "checkpoint.pt").arrays
    config = load_config(TINY, overrides=dict(OVERRIDES, **{"federation.rounds": stopped_at + 1}))
    plan = SimulationPlan(config=config, data_dir=fed_run["data"], out_dir=out, users=fed_run["plan"].users,
                          holdout=[], init_model=pre, resume=True)
    run(plan, evaluate=False)
    rounds = [r["round"] for r in read_rounds(out / "rounds.jsonl")]
    assert rounds == list(range(stopped_at + 2))  # each round once, none lost, none repeated
    assert _checkpoint_round(out / "checkpoint.pt") == stopped_at + 1
    states = [torch.load(p, weights_only=True) for p in sorted((out / "devices").glob("*/personal.pt"))]
    assert all(s["extra"]["rounds"] == list(range(1, stopped_at + 2)) for s in states)
    if stopped_at == 1:  # the same two rounds as the uninterrupted fixture run
        resumed, _ = load_model(out / "model.pt")
        reference, _ = load_model(fed_run["out"] / "model.pt")
        ref, got = shared_state(reference), shared_state(resumed)
        moved = [k for k in at_stop if ref[k].is_floating_point() and not np.array_equal(at_stop[k], ref[k].numpy())]
        assert moved  # round 2 changed the model, so the comparison below can fail
        # Adam turns float rounding noise (thread scheduling, a killed device's cache) into steps
        # of up to lr, so bit equality is not promised; a skipped, repeated or mis-started round 2
        # (device state not rolled back) lands as far from the reference as round 1 itself
        distance = sum(float((got[k] - ref[k]).norm() ** 2) for k in moved) ** 0.5
        round_two = sum(float(np.linalg.norm(at_stop[k] - ref[k].numpy()) ** 2) for k in moved) ** 0.5
        assert distance < 0.1 * round_two, (distance, round_two)
