"""A real deployment: TLS SuperLink with SuperNode authentication, SuperNodes, `flwr run`; faults.

One scenario on real Flower processes (loopback only), checked from several sides to keep the
suite short on two cores:
  1. 3 registered devices + 1 device whose key was never registered (must be refused);
  2. run 1 (2 rounds): device 2 is killed while it trains in round 1 -> the round completes
     with the other two after federation.round_timeout, the missing reply is counted; device 2
     then rejoins with the same key and state folder;
  3. the server (SuperLink + ServerApp) is killed during round 2 and restarted on the same
     database; `--resume` continues after the last checkpointed round: rounds 1..2 each once. (The final
     refit is off here to keep the suite short; tests/test_prior_episodic.py covers it.)
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import make_toy_dataset, wait_for as _wait
from pic_core.checkpoint import load_model
from server.deploy import Deployment, DeploymentSettings, Ports
from server.pki import make_device_key
from server.round_log import LOG_FILE, read_rounds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
ROUND_TIMEOUT = 60  # honest rounds take ~40 s on 2 busy cores (process start-up dominates)
OVERRIDES = ["federation.rounds=2", "federation.personal_epochs=1", "federation.eval_every=0", "federation.refit=false",
             f"federation.round_timeout={ROUND_TIMEOUT}", "federation.max_images=2", "federation.min_replies=2"]


def _rounds(deployment: Deployment) -> list[dict]:
    path = deployment.server_out / LOG_FILE
    return read_rounds(path) if path.is_file() else []


def _log(deployment: Deployment, name: str) -> str:
    path = deployment.logs / name
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    data = make_toy_dataset(root / "data", users=3, images_per_user=4)
    settings = DeploymentSettings(out_dir=root / "out", data_dir=data, users=["user0", "user1", "user2"],
                                  config="tiny", overrides=OVERRIDES, ports=Ports(39310))
    facts: dict = {}
    deployment = Deployment(settings)
    try:
        deployment.start()
        facts["registered"] = deployment.registered_nodes()
        # an intruder: a SuperNode with a well-formed key the SuperLink never registered
        intruder_key = make_device_key(deployment.out / "pki" / "unregistered", "intruder")
        intruder = deployment.devices[0].__class__(index=9, user_id="user0", key=intruder_key)
        deployment.start_supernode(intruder)
        facts["intruder_exit"] = _wait(lambda: intruder.process.poll() is not None or None, 60,
                                       "the unregistered SuperNode to be refused")
        facts["intruder_log"] = _log(deployment, "supernode9.log")

        deployment.submit()
        victim = deployment.devices[2]
        # device 2 is killed while it trains in round 1 (its ClientApp has received the message)
        _wait(lambda: "receiving: train message" in _log(deployment, "supernode2.log").lower(), 180,
              "device 2 to receive its round-1 training message")
        deployment.kill_supernode(victim)
        facts["killed_at"] = time.monotonic()
        _wait(lambda: len(_rounds(deployment)) >= 1, ROUND_TIMEOUT + 120, "round 1 to complete")
        facts["round1_done"] = time.monotonic()
        facts["rejoin_attempts"] = deployment.rejoin(victim)  # same key, same state folder
        # the server is killed during round 2 and restarted on the same SuperLink database
        time.sleep(3)  # round 2 is under way
        facts["rounds_before_crash"] = [r["round"] for r in _rounds(deployment)]
        deployment.kill_superlink()
        deployment.start_superlink()
        resumed = deployment.submit(resume=True)
        facts["status"] = deployment.wait_run(resumed, 400)
        facts["rounds"] = _rounds(deployment)
        facts["server_log"] = _log(deployment, "superlink.log")
    finally:
        deployment.stop()
    facts["deployment"] = deployment
    return facts


def test_devices_are_registered_by_key(scenario):
    assert len(scenario["registered"]) == 3
    # "online" once a SuperNode has connected with its key: registered either way
    assert {n["status"] for n in scenario["registered"]} <= {"registered", "online"}
    deployment = scenario["deployment"]
    config = (deployment.flwr_home / "config.toml").read_text()
    assert "local-deployment" in config and "127.0.0.1" in config and "ca.crt" in config


def test_an_unregistered_supernode_is_refused(scenario):
    assert scenario["intruder_exit"] != 0
    assert "Failed to activate SuperNode" in scenario["intruder_log"]
    # it never took part: no round sampled more than the 3 registered devices
    assert all(r["sampled"] <= 3 for r in scenario["rounds"] if r["round"] > 0)


def test_a_device_killed_mid_round_does_not_stop_the_round(scenario):
    first = next(r for r in scenario["rounds"] if r["round"] == 1)
    # Flower answers for the dead node with an error reply (counted as a failure) or, when it cannot
    # tell, nothing arrives before round_timeout (counted as missing): either way the round goes on
    assert first["sampled"] == 3 and first["missing"] + first["failures"] == 1
    assert first["accepted"] == 2 and first["aggregated"]


def test_the_restarted_server_resumes_without_losing_or_repeating_rounds(scenario):
    assert scenario["status"] == "finished:completed"
    rounds = [r["round"] for r in scenario["rounds"] if r["round"] > 0]
    assert rounds == [1, 2]
    assert [r for r in scenario["rounds_before_crash"] if r > 0] == [1]  # killed during round 2, which the resumed run redoes
    # the device that rejoined takes part again after the restart
    assert next(r for r in scenario["rounds"] if r["round"] == 2)["accepted"] == 3
    load_model(scenario["deployment"].server_out / "model.pt")  # the final model is a readable fedpic file


def test_traffic_is_tls_only_on_loopback(scenario):
    log = scenario["server_log"]
    assert "https://127.0.0.1:39310" in log
    assert "SuperNode authentication is disabled" not in log
