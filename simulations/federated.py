"""A federated simulation of the prior stage on one machine, with Flower's simulation engine.

Each user of a dataset folder becomes one simulated device (Ray actor slots set by
`federation.cpus_per_device`); the ServerApp and ClientApp are the same objects `flwr run .`
loads, with the run config bound here. Output folder:

  pre.pt         the pre-stage model the federation starts from (when trained here)
  rounds.jsonl   one line per round (server/round_log.py; format in docs/formats.md)
  checkpoint.pt  SHARED weights + round + strategy state, for --resume
  model.pt       the final model: a normal fedpic model file
  devices/<u>/   each simulated device's own disk: personal.pt (d_u), taps cache
  results.json   the population evaluation of model.pt (evaluation protocol) and run facts
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation

from client.app import make_client_app
from pic_core.checkpoint import load_model, save_model
from pic_core.config import Config, to_dict
from pic_core.data import DataError
from pic_core.data.dataset import Dataset
from pic_core.protocol import PopulationResult, evaluate_users
from pic_core.samples import SampleCache
from pic_core.runtime import configure_runtime
from server.app import make_server_app
from server.checkpoint import CHECKPOINT_FILE
from server.loop import MODEL_FILE
from server.round_log import LOG_FILE, read_rounds

from .baselines import evaluate_generic, load_users, objective_only, train_generic
from .experiment import RESULTS_FILE, population_info, results_payload
from .experiment import write_results as write_payload
from .gallery import GALLERY_FILE, GalleryRecorder, plan_gallery, user_families

log = logging.getLogger("fedpic.simulate")

PRE_FILE = "pre.pt"
DEVICES_DIR = "devices"
HOLDOUT_SUFFIX = "-new-devices"
FEDERATED_METHODS = {
    "federated": "federated PIC (prior trained with Flower, then finetune)",
    "federated-generic": "federated prior (d_u = 0)",
    "federated-new-devices": "federated PIC on devices never seen in training",
    "federated-generic-new-devices": "federated prior (d_u = 0) on devices never seen in training",
    "generic-new-devices": "generic (pre stage) on devices never seen in training",
}
"""Method ids of a federated results file (the report labels the others from baselines.METHODS)."""


@dataclass
class SimulationPlan:
    config: Config
    data_dir: Path
    out_dir: Path
    users: list[str]  # the federated population, one simulated device each
    holdout: list[str]  # users of the dataset outside the population: devices never seen in training
    init_model: Optional[Path] = None
    resume: bool = False


def split_population(dataset: Dataset, population: Optional[int]) -> tuple[list[str], list[str]]:
    """(federated users, held-out users): the first `population` sorted user ids take part."""
    users = dataset.user_ids
    if not users:
        raise DataError(f"{dataset.root}: no users/*.csv: nothing to simulate")
    if population is not None and not 1 <= population <= len(users):
        raise DataError(f"{dataset.root}: federation.population {population}, the dataset has {len(users)} users")
    count = population or len(users)
    return users[:count], users[count:]


def pretrain_model(plan: SimulationPlan) -> Path:
    """Stage pre on the dataset's generic scores (the server's own data), written to out/pre.pt."""
    config = plan.config
    device = configure_runtime(config)
    dataset = Dataset(plan.data_dir)
    model, train_log = train_generic(dataset, load_users(dataset), config, SampleCache(config.model.short_side),
                                     device)
    path = plan.out_dir / PRE_FILE
    save_model(path, model, to_dict(config), "pre", {"train": train_log.as_dict()})
    log.info("pre: %d epochs in %.1fs -> %s", len(train_log.epoch_losses), train_log.seconds, path)
    return path


def backend_config(config: Config) -> dict:
    """Ray resources: all cores, `cpus_per_device` per simulated device, a GPU share when present."""
    cpus = os.cpu_count() or 1
    per_device = config.federation.cpus_per_device
    concurrent = max(1, int(cpus // per_device))
    use_gpu = torch.cuda.is_available() and config.device in ("auto", "cuda")
    return {"init_args": {"num_cpus": cpus, "num_gpus": 1 if use_gpu else 0, "logging_level": "WARNING"},
            "client_resources": {"num_cpus": per_device, "num_gpus": (1.0 / concurrent) if use_gpu else 0.0}}


def bound_run_config(plan: SimulationPlan) -> dict:
    """The run config both apps see (what [tool.flwr.app.config] + --run-config give `flwr run`)."""
    return {"config-json": json.dumps(to_dict(plan.config)), "out-dir": str(plan.out_dir),
            "init-model": str(plan.init_model or ""), "resume": plan.resume, "devices": len(plan.users),
            "data-dir": str(plan.data_dir), "state-dir": str(plan.out_dir / DEVICES_DIR),
            "device": plan.config.device, "threads": plan.config.federation.threads_per_device}


def check_out_dir(plan: SimulationPlan) -> None:
    """A fresh run needs a folder without another run's checkpoint or device states."""
    if plan.resume:
        if not (plan.out_dir / CHECKPOINT_FILE).is_file():
            raise DataError(f"{plan.out_dir}: no {CHECKPOINT_FILE} to resume from")
        return
    for name in (CHECKPOINT_FILE, DEVICES_DIR):
        if (plan.out_dir / name).exists():
            raise DataError(f"{plan.out_dir / name} exists (an earlier run): pass --resume, or use a new --out")


def run_federated(plan: SimulationPlan, client_mods: Sequence[Mod] = ()) -> float:
    """The Flower simulation of all rounds; returns its wall-clock seconds."""
    bound = bound_run_config(plan)
    logging.getLogger("flwr").propagate = False  # Flower prints its own log lines; no second copy
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state database set-up chatter
    start = time.perf_counter()
    run_simulation(server_app=make_server_app(bound), client_app=make_client_app(bound, client_mods),
                   num_supernodes=len(plan.users), backend_config=backend_config(plan.config))
    seconds = time.perf_counter() - start
    rounds = read_rounds(plan.out_dir / LOG_FILE)
    last = max((int(r["round"]) for r in rounds), default=-1)
    if last < plan.config.federation.rounds:
        raise RuntimeError(f"the simulation ended after round {last} of {plan.config.federation.rounds}; "
                           "see the Flower log above")
    return seconds


def evaluate_population(plan: SimulationPlan, users: Sequence[str], suffix: str = "") -> list[PopulationResult]:
    """The evaluation protocol on model.pt, per user: `federated-generic` (d_u = 0) and `federated`
    (few-shot personalized), plus `generic` (the pre model's objective score) when the run started
    from a pre-stage model. `suffix` tells held-out users' rows apart."""
    config = plan.config
    device = configure_runtime(config)
    model, _ = load_model(plan.out_dir / MODEL_FILE, device)
    dataset = Dataset(plan.data_dir)
    data = [dataset.user(uid) for uid in users]
    shots = config.finetune.shots
    cache = SampleCache(model.config.short_side)
    results = []
    recorder = GalleryRecorder(plan_gallery(data, plan.data_dir), plan.data_dir, device) if not suffix else None
    if plan.init_model is not None:
        start, meta = load_model(plan.init_model, device)
        if meta.get("stage") == "pre":
            generic = evaluate_generic(start, data, config, shots, cache, device)
            generic.method = f"generic{suffix}"
            results.append(generic)
            if recorder is not None:
                recorder.add_generic(objective_only(start))
    results.append(evaluate_users(model, data, config, shots, method=f"federated-generic{suffix}", cache=cache,
                                  personalize=False, device=device))
    results.append(evaluate_users(model, data, config, shots, method=f"federated{suffix}", cache=cache,
                                  device=device, on_user=recorder))
    if recorder is not None:
        recorder.write(plan.out_dir / GALLERY_FILE, "federated", shots, user_families(plan.data_dir))
    return results


def communication_summary(rounds: Sequence[dict]) -> dict:
    """Bytes a device uploads per round (mean over training rounds) against the full fp32 model."""
    uploads = [r["upload_bytes_mean"] for r in rounds if r.get("upload_bytes_mean")]
    model_bytes = next((r["model_bytes_fp32"] for r in rounds if r.get("model_bytes_fp32")), None)
    mean_upload = sum(uploads) / len(uploads) if uploads else None
    return {"upload_bytes_per_device_round": mean_upload, "model_bytes_fp32": model_bytes,
            "upload_fraction_of_fp32_model": (mean_upload / model_bytes) if mean_upload and model_bytes else None,
            "download_bytes_per_device_round": next((r["download_bytes"] for r in rounds if r.get("download_bytes")),
                                                    None)}


def write_results(plan: SimulationPlan, timing: dict, results: Sequence[PopulationResult]) -> Path:
    """results.json in the "fedpic-results" format (docs/formats.md) with the federated run's facts."""
    rounds = read_rounds(plan.out_dir / LOG_FILE)
    extra = {
        "shots": [plan.config.finetune.shots], "users": len(plan.users), "population_users": plan.users,
        "holdout_users": plan.holdout, "population": population_info(plan.data_dir),
        "rounds_completed": max((int(r["round"]) for r in rounds), default=0),
        "strategy": plan.config.federation.strategy, "timing": timing,
        "communication": communication_summary(rounds),
        "files": {"model": MODEL_FILE, "rounds_log": LOG_FILE, "checkpoint": CHECKPOINT_FILE,
                  "init_model": str(plan.init_model) if plan.init_model else None},
    }
    payload = results_payload(results, kind="federated", data_dir=plan.data_dir, config=plan.config, extra=extra)
    payload["methods"].update({m: FEDERATED_METHODS.get(m, m) for m in payload["methods"] if m in FEDERATED_METHODS})
    return write_payload(plan.out_dir / RESULTS_FILE, payload)
