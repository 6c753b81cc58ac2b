"""`fedpic simulate --ray-address`: the federation on an existing Ray cluster, and a clean log.

The test starts its own Ray head bound to 127.0.0.1 (`ray start --head --block` in a new
process group), runs a 1-round federation against it in a subprocess, and stops only that
head. A wrong address fails at once with a one-line error, before any training.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SETTINGS = ["--set", "pre.epochs=1", "--set", "federation.population=2", "--set", "federation.fraction=1.0",
            "--set", "federation.eval_every=0", "--set", "federation.personal_epochs=1",
            "--set", "finetune.epochs=2", "--set", "progress=true"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started (the head and its daemons), SIGKILL if needed."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def fedpic(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedpic", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_unreachable_ray_address_fails_fast_before_training(tmp_path):
    data = make_toy_dataset(tmp_path / "data", users=2, images_per_user=6)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = fedpic("simulate", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "out"),
                    "--ray-address", f"127.0.0.1:{free_port()}", env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "no Ray head answers" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "pre.pt").exists()  # it failed before the pre stage, not after it
    bad = fedpic("simulate", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--ray-address", "ray://somewhere", env=env, timeout=300)
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_federation_runs_on_an_existing_ray_head_with_a_clean_log(tmp_path):
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        pytest.skip("the `ray` command is not installed")
    data = make_toy_dataset(tmp_path / "data", users=2, images_per_user=6)
    port = free_port()
    # this head's own session folder (every driver that joins it logs there); short: Ray's sockets live in it
    temp_dir = Path(tempfile.mkdtemp(prefix="fedpic-ray-", dir="/tmp"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    head_log = tmp_path / "head.log"
    with head_log.open("w") as sink:
        head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                                 str(port), "--num-cpus", "2", "--include-dashboard", "false",
                                 "--temp-dir", str(temp_dir), "--disable-usage-stats"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (temp_dir.is_dir() and "Ray runtime started" in head_log.read_text()):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"could not start a Ray head on 127.0.0.1:{port}: {head_log.read_text()[-500:]}")
            time.sleep(0.5)
        result = fedpic("simulate", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "out"),
                        "--rounds", "1", "--ray-address", f"127.0.0.1:{port}", *SETTINGS, env=env, timeout=540)
        drivers = list(temp_dir.glob("session_*/logs/python-core-driver-*"))
    finally:
        stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert drivers, "the simulation did not join the test's Ray head"
    assert (tmp_path / "out" / "model.pt").is_file() and (tmp_path / "out" / "results.json").is_file()
    # a log a person can read: no colour codes, no deprecation notices, no bars from inside devices
    assert "\x1b[" not in log
    assert "DEPRECATED" not in log and "FutureWarning" not in log
    assert "ClientAppActor" not in log and "personalize:" not in log
    assert "round 1/1" in log
