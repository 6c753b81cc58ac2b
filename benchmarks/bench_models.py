"""The demo population and the trained models the benchmarks share (cached under runs/bench/).

A benchmark given no model trains one here: stage prior on every user's `prior` split of
the demo population (pic_core.data.synthetic), d_u per user, shared weights from scratch.
Each trained model is cached under a name derived from its config and the population, so
infer.py and fewshot.py reuse one another's models.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pic_core.checkpoint import save_model
from pic_core.config import Config, load_config, to_dict
from pic_core.data.sources import open_dataset
from pic_core.model import CropScorer
from pic_core.samples import SampleCache
from pic_core.runtime import configure_runtime
from pic_core.train import train_prior

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench"
log = logging.getLogger("fedpic.bench")


def demo_population(path: Optional[Path], users: int = 40, seed: int = 0) -> Path:
    """A dataset folder: `path` when given, else the demo population generated once."""
    if path is not None:
        if not (Path(path) / "users").is_dir():
            raise SystemExit(f"{path}: not a dataset folder (no users/)")
        return Path(path)
    target = RUNS / f"population-{users}u-s{seed}"
    if (target / "population.json").is_file():
        return target
    try:
        from pic_core.data.synthetic import PopulationSpec, generate
    except ImportError as exc:
        raise SystemExit(f"no --data given and the demo population generator is unavailable ({exc})") from None
    generate(PopulationSpec(users=users, seed=seed), target, workers=2, progress=True)
    return target


def bench_config(preset: Optional[str], epochs: int, threads: int, overrides: Optional[dict] = None) -> Config:
    """the shipped config <preset> (None: the built-in defaults) for training, with prior.epochs set."""
    path = preset
    values = {"prior.epochs": epochs, "threads": threads, "device": "cpu", "progress": True}
    return load_config(path, overrides=values | (overrides or {}))


def trained_model(name: str, config: Config, data: Path) -> Path:
    """A prior-stage model for `config` on `data`, trained once and cached."""
    population = data / "population.json"
    training = {k: v for k, v in to_dict(config).items() if k not in ("threads", "progress", "device")}
    key = json.dumps({"config": training, "data": str(data.resolve()),
                      "population": population.read_text() if population.is_file() else ""}, sort_keys=True)
    path = RUNS / "models" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        return path
    device = configure_runtime(config)
    dataset = open_dataset(data)
    users = {uid: dataset.user(uid).split("prior") for uid in dataset.user_ids}
    model = CropScorer(config.model).to(device)
    start = time.perf_counter()
    train_log, _ = train_prior(model, users, config, SampleCache(config.model.short_side), device)
    save_model(path, model, to_dict(config), "prior",
               {"train": train_log.as_dict(), "users": len(users), "data": str(data)})
    log.info("trained %s in %.0fs -> %s", name, time.perf_counter() - start, path)
    return path


def machine() -> dict:
    """What the figures were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average_1_5_15": [round(v, 2) for v in load]}


def main_per_user(payload: dict, method: str, key: str = "acc1_5") -> dict[str, float]:
    """One method's per-user figure from a "fedpic-results" payload, at its main N: every user
    (the accuracy curve's other N are on a sample of evaluation.curve_users only)."""
    row = next(r for r in payload["results"] if r["method"] == method and r["shots"] == payload["main_shots"])
    return {user: float(m[key]) for user, m in row["per_user"].items() if key in m}


def _numpy_scalar(value):
    """json.dumps fallback: numpy scalars (np.bool_, np.float32, ...) as Python values."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_numpy_scalar) + "\n")
    print(f"wrote {path}")
