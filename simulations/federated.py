"""A federated simulation of the prior stage on one machine, with Flower's simulation engine.

Each user of a dataset folder becomes one simulated device (Ray actor slots set by
`federation.cpus_per_device`), or, in a device-pool run (large populations, server/sampling.py),
a few simulated nodes play the users the server samples each round; the ServerApp and
ClientApp are the same objects `flwr run .` loads, with the run config bound here. Output folder:

  pre.pt         the pre-stage model the federation starts from (when trained here)
  rounds.jsonl   one line per round (server/round_log.py; format in docs/formats.md)
  checkpoint.pt  SHARED weights + round + strategy state, for --resume
  model.pt       the final model: a normal fedpic model file
  devices/<u>/   each simulated device's own disk: personal.pt (d_u), taps cache
  results.json   the population evaluation of model.pt (simulations/evaluation.py: every row on the
                 same users, the accuracy-against-N curve, paired gains) and run facts
"""
from __future__ import annotations

import copy
import json
import logging
from contextlib import contextmanager
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from flwr.clientapp.typing import Mod
from flwr.common.logger import update_console_handler
from flwr.supercore.telemetry import EventType
from flwr.simulation.run_simulation import _run_simulation

from client.app import make_client_app
from client.pool import pool_node_defaults
from client.state_store import STATE_FILE, PersonalStateStore
from pic_core.checkpoint import load_model, save_model
from pic_core.config import Config, ConfigError, to_dict
from pic_core.data import DataError
from pic_core.data.dataset import Dataset
from pic_core.data.records import UserData
from pic_core.model import CropScorer
from pic_core.privacy import privacy_spent
from pic_core.samples import SampleCache
from pic_core.runtime import configure_runtime
from server.app import make_server_app
from server.checkpoint import CHECKPOINT_FILE
from server.loop import MODEL_FILE
from server.round_log import LOG_FILE, read_rounds
from server.sampling import pool_nodes, use_device_pool

from .baselines import load_users, train_generic
from .evaluation import (ROW_LABELS, BackboneCaches, Evaluation, evaluate_rows, objective_only, per_user_row,
                         pre_rows, shared_rows)
from .experiment import RESULTS_FILE, population_info, results_payload
from .experiment import write_results as write_payload
from .gallery import GALLERY_FILE, GalleryRecorder, plan_gallery, user_families

log = logging.getLogger("fedpic.simulate")

PRE_FILE = "pre.pt"
DEVICES_DIR = "devices"
LOOPBACK = "127.0.0.1"
HOLDOUT_SUFFIX = "-new-devices"
FEDERATED_METHODS = {
    **{m: ROW_LABELS[m] for m in ("federated", "federated-generic", "federated-du", "federated-compact",
                                      "federated-stored")},
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
    """Ray's settings. Without `federation.ray_address`: a fresh local Ray bound to loopback with all
    cores (never a cluster left over from an earlier `ray start`); with it: that cluster's resources.
    `cpus_per_device` CPUs per simulated device, a GPU share when this machine has one."""
    per_device = config.federation.cpus_per_device
    address = config.federation.ray_address
    if address:
        # the cluster's workers were started without this run's quiet settings: their output stays in
        # the cluster's own logs (`ray logs`, session_latest/logs on each node), not in this run's log
        init_args = {"address": check_ray_address(address), "log_to_driver": False}
        use_gpu = config.device in ("auto", "cuda")  # the cluster's nodes may have GPUs this one lacks
        share = 0.0
    else:
        cpus = os.cpu_count() or 1
        use_gpu = torch.cuda.is_available() and config.device in ("auto", "cuda")
        init_args = {"address": "local", "num_cpus": cpus, "num_gpus": 1 if use_gpu else 0,
                     "_node_ip_address": LOOPBACK}
        share = 1.0 / max(1, int(cpus // per_device)) if use_gpu else 0.0
    init_args["logging_level"] = "WARNING"
    return {"init_args": init_args, "client_resources": {"num_cpus": per_device, "num_gpus": share}}


def check_ray_address(address: str, timeout: float = 5.0) -> str:
    """HOST:PORT of a Ray head (its GCS port, 6379 unless `ray start --port` said otherwise), checked to
    answer within `timeout` seconds, so a wrong address fails now instead of hanging the first round."""
    host, sep, port = address.strip().rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit():
        raise ConfigError(f"federation.ray_address {address!r}: expected HOST:PORT of a Ray head "
                          "(the address `ray start --head` prints)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"federation.ray_address {address}: no Ray head answers there ({err}); start one with "
                          f"`ray start --head --port {port}` or drop --ray-address for a local simulation") from None
    return f"{host}:{port}"


QUIET_ENV = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray's FutureWarning tip about GPU env vars
             "FLWR_LOG_LEVEL": "ERROR"}  # inside the device actors: no per-actor shutdown warnings
"""Environment the simulation's Ray processes start with (set only while the simulation runs)."""


@contextmanager
def quiet_simulation_logs() -> Iterator[None]:
    """One readable log: Flower's INFO chatter off (fedpic logs each round), no colour codes when
    stderr is not a terminal (Flower's handler and Ray's relayed-output prefixes), no Ray hints."""
    colour = sys.stderr.isatty()
    update_console_handler(level=logging.WARNING, colored=colour)
    logging.getLogger("flwr").propagate = False  # Flower prints its own log lines; no second copy
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state database set-up chatter
    env = dict(QUIET_ENV, **({} if colour else {"RAY_COLOR_PREFIX": "0"}))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update({key: value for key, value in env.items() if saved[key] is None})
    try:
        yield
    finally:
        update_console_handler(level=logging.INFO, colored=True)  # Flower's defaults again
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def device_pool_nodes(plan: SimulationPlan) -> int:
    """Simulated nodes of a device-pool run (federation.device_pool; 0: one node per user).
    Why a pool: server/sampling.py."""
    if not use_device_pool(plan.config.federation.device_pool, len(plan.users)):
        return 0
    return pool_nodes(plan.config.federation, len(plan.users))


def bound_run_config(plan: SimulationPlan) -> dict:
    """The run config both apps see (what [tool.flwr.app.config] + --run-config give `flwr run`)."""
    pool = device_pool_nodes(plan)
    return {"config-json": json.dumps(to_dict(plan.config)), "out-dir": str(plan.out_dir),
            "init-model": str(plan.init_model or ""), "resume": plan.resume, "devices": pool or len(plan.users),
            "pool-population": len(plan.users) if pool else 0,
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
    backend = backend_config(plan.config)
    pool = device_pool_nodes(plan)
    # a pool node's own config enables it (client/pool.py): the run config cannot
    node = pool_node_defaults(plan.data_dir, plan.out_dir / DEVICES_DIR, len(plan.users)) if pool else None
    start = time.perf_counter()
    # The engine under Flower 1.41's deprecated `run_simulation` wrapper (which only adds the deprecation
    # warning and a telemetry event); `flwr run` is its replacement, but it cannot take app objects.
    with quiet_simulation_logs():
        _run_simulation(num_supernodes=pool or len(plan.users), exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=make_client_app(bound, client_mods, node), server_app=make_server_app(bound),
                        backend_name="ray", backend_config=backend)
    seconds = time.perf_counter() - start
    rounds = read_rounds(plan.out_dir / LOG_FILE)
    last = max((int(r["round"]) for r in rounds), default=-1)
    if last < plan.config.federation.rounds:
        raise RuntimeError(f"the simulation ended after round {last} of {plan.config.federation.rounds}; "
                           "see the Flower log above")
    return seconds


def stored_state_model(model: CropScorer, folder: Path) -> Callable[[UserData, int], CropScorer]:
    """build(user, N) for the `federated-stored` row: the model with the personal.pt the user's device
    keeps in folder/<user>/ (d_u = 0 when it never trained); N plays no part."""
    def build(user: UserData, _shots: int) -> CropScorer:
        scorer = copy.deepcopy(model)
        PersonalStateStore(folder / user.user_id, user.user_id).load(scorer)
        return scorer.eval()
    return build


def evaluate_population(plan: SimulationPlan, users: Sequence[str], suffix: str = "") -> Evaluation:
    """The rows of simulations/evaluation.py on model.pt, the same users for every row:
    `federated-generic` (d_u = 0), `federated` (few-shot personalized), `federated-du` (d_u alone),
    `federated-compact` (d_u + the objective readout's offsets),
    `federated-stored` (each device's personal.pt), and when the run started from a pre-stage model
    `generic`, `pre-finetune`, `pre-finetune-du`. The main N is finetune.shots; the population (not
    held-out users) also gets the accuracy-against-N curve. `suffix` tells held-out users' rows apart."""
    config = plan.config
    device = configure_runtime(config)
    model, _ = load_model(plan.out_dir / MODEL_FILE, device)
    dataset = Dataset(plan.data_dir)
    data = [dataset.user(uid) for uid in users]
    shots = config.finetune.shots
    caches = BackboneCaches(config, SampleCache(model.config.short_side), device)
    du = config.evaluation.du_only
    recorder = GalleryRecorder(plan_gallery(data, plan.data_dir), plan.data_dir, device) if not suffix else None
    rows = []
    if plan.init_model is not None:
        start, meta = load_model(plan.init_model, device)
        if meta.get("stage") == "pre":
            rows += pre_rows(start, config, caches(start), device, du=du)
            if recorder is not None:
                recorder.add_generic(objective_only(start))
    federated = caches(model)
    rows += shared_rows(model, "federated", config, federated, device, du=du)
    rows.append(per_user_row("federated-stored", stored_state_model(model, plan.out_dir / DEVICES_DIR), config,
                             federated, device, per_shot=False))

    def hook_for(method: str, n: int):
        return recorder if method == "federated" and n == shots else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stored state fitted before the last round: expected, measured here
        evaluation = evaluate_rows(rows, data, config, [shots], curve=not suffix, suffix=suffix,
                                   sample="holdout" if suffix else "population", hook_for=hook_for)
    stored = sum((plan.out_dir / DEVICES_DIR / u / STATE_FILE).is_file() for u in users)
    evaluation.evaluated["samples"]["holdout" if suffix else "population"]["stored_states"] = stored
    if recorder is not None:
        recorder.write(plan.out_dir / GALLERY_FILE, "federated", shots, user_families(plan.data_dir))
    return evaluation


def communication_summary(rounds: Sequence[dict]) -> dict:
    """Bytes a device uploads per round (mean over training rounds) against the full fp32 model."""
    uploads = [r["upload_bytes_mean"] for r in rounds if r.get("upload_bytes_mean")]
    model_bytes = next((r["model_bytes_fp32"] for r in rounds if r.get("model_bytes_fp32")), None)
    mean_upload = sum(uploads) / len(uploads) if uploads else None
    return {"upload_bytes_per_device_round": mean_upload, "model_bytes_fp32": model_bytes,
            "upload_fraction_of_fp32_model": (mean_upload / model_bytes) if mean_upload and model_bytes else None,
            "download_bytes_per_device_round": next((r["download_bytes"] for r in rounds if r.get("download_bytes")),
                                                    None)}


def privacy_summary(config: Config, rounds: Sequence[dict]) -> Optional[dict]:
    """ε at δ = 1/devices that the DP-FedAvg rounds spent (pic_core/privacy.py); None without DP."""
    fed = config.federation
    trained = [r for r in rounds if int(r.get("round", 0)) > 0 and r.get("sampled")]
    if fed.dp_clipping_norm is None or not trained:
        return None
    spent = privacy_spent(fed.dp_clipping_norm, fed.dp_noise_multiplier, max(int(r["sampled"]) for r in trained),
                          int(trained[0]["population"]), len(trained))
    return spent.as_dict() if spent else None


def write_results(plan: SimulationPlan, timing: dict, evaluation: Optional[Evaluation] = None) -> Path:
    """results.json in the "fedpic-results" format (docs/formats.md) with the federated run's facts."""
    rounds = read_rounds(plan.out_dir / LOG_FILE)
    evaluation = evaluation or Evaluation(main_shots=plan.config.finetune.shots)
    results = evaluation.results
    extra = {**evaluation.extra(),
        "shots": [plan.config.finetune.shots], "users": len(plan.users), "population_users": plan.users,
        "holdout_users": plan.holdout, "population": population_info(plan.data_dir),
        "rounds_completed": max((int(r["round"]) for r in rounds), default=0),
        "strategy": plan.config.federation.strategy, "timing": timing,
        "device_pool_nodes": device_pool_nodes(plan),  # 0: one simulated node per user
        "communication": communication_summary(rounds),
        "privacy": privacy_summary(plan.config, rounds),
        "files": {"model": MODEL_FILE, "rounds_log": LOG_FILE, "checkpoint": CHECKPOINT_FILE,
                  "init_model": str(plan.init_model) if plan.init_model else None},
    }
    payload = results_payload(results, kind="federated", data_dir=plan.data_dir, config=plan.config, extra=extra)
    payload["methods"].update({m: FEDERATED_METHODS.get(m, m) for m in payload["methods"] if m in FEDERATED_METHODS})
    return write_payload(plan.out_dir / RESULTS_FILE, payload)
