"""A device killed while it writes its personal state leaves a readable state file.

A child process rewrites the state file in a loop through the device's own store
(client/state_store.py -> atomic temp file + fsync + rename); it is SIGKILLed at several
moments, and after each kill the file must load and carry a round the child had written.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.state_store import PersonalStateStore
from pic_core.config import load_config
from pic_core.model import CropScorer

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys, torch
from pathlib import Path
from client.state_store import PersonalStateStore
from pic_core.config import load_config
from pic_core.model import CropScorer
torch.set_num_threads(1)
model = CropScorer(load_config(sys.argv[2]).model)
store = PersonalStateStore(Path(sys.argv[1]), "user0")
rounds = []
while True:
    rounds.append(len(rounds) + 1)
    with torch.no_grad():
        model.personal.delta.add_(0.01)
    store.save(model, rounds, {"step": len(rounds), "pad": torch.zeros(200_000)})  # a few MB per write
    print(len(rounds), flush=True)
"""


@pytest.mark.timeout(120)
def test_state_survives_kills_during_writes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = load_config("tiny")
    model = CropScorer(config.model)
    store = PersonalStateStore(tmp_path, "user0")
    for delay in (0.05, 0.13, 0.29):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "tiny"],
                                 env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "1"  # at least one complete write
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        extra = store.load(model)  # raises on a torn file
        assert extra["rounds"] and extra["rounds"] == list(range(1, len(extra["rounds"]) + 1))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "personal.pt"]
    assert all(name.endswith(".tmp") for name in leftovers)  # only an unfinished temp file may remain
