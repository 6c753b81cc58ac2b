"""The federated round loop: sample, train, screen, aggregate, evaluate, log, checkpoint.

Flower's Strategy.start() runs all rounds in one call and keeps nothing on disk, so the
loop is driven here with the strategy's own configure/aggregate methods: that is what
makes per-round checkpoints, resume and update screening possible while the aggregation
itself stays Flower's. Round 0 is the initial model's federated evaluation (learning
curves start there); rounds 1..federation.rounds train.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from pic_core.checkpoint import CheckpointError, load_model, save_model
from pic_core.config import Config, ConfigError, to_dict
from pic_core.exchange import ARRAYS, CONFIG, FEDPIC_CONFIG, METRICS, NUM_EXAMPLES, REFIT_MESSAGE, conform, \
    encoding_for, payload_bytes, upload_keys
from pic_core.model import CropScorer
from pic_core.params import from_numpy, load_shared, shared_state, to_numpy
from pic_core.privacy import privacy_spent
from pic_core.runtime import set_seed

from .checkpoint import CHECKPOINT_FILE, ServerState, load_server_state, save_server_state
from .round_log import LOG_FILE, RoundLog
from .sampling import DevicePool, RegistrationOrderGrid, in_node_order
from .screening import screen_replies
from .secagg import secure_round
from .strategy import Sampling, build_strategy, restore_strategy_state, sampling, strategy_state

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


@dataclass
class ServerSettings:
    config: Config
    out_dir: Path
    init_model: Optional[Path] = None  # model file from `fedpic pretrain` (None: fresh weights)
    resume: bool = False
    devices: int = 0  # expected population; 0: count the devices that connect
    pool_population: int = 0  # device-pool simulation: users the pool nodes play (0: one node per device)


def initial_model(settings: ServerSettings) -> CropScorer:
    """The starting point: the --init model file (its architecture wins) or seeded fresh weights."""
    if settings.init_model:
        model, _ = load_model(settings.init_model)
        return model
    set_seed(settings.config.seed)
    model = settings.config.model
    imagenet = model.pretrained and (model.backbone == "efficientnet_lite0" or model.backbone_weights)
    if settings.config.federation.freeze_backbone and not imagenet:
        log.warning("freeze_backbone without an --init model: the backbone stays at its random weights")
    return CropScorer(settings.config.model).eval()


def connected_devices(grid: Grid, expected: int, settle: float = 2.0, timeout: float = 600.0) -> int:
    """Wait for the expected number of devices, or (expected 0) until the count stops changing."""
    start = time.monotonic()
    last, since = -1, time.monotonic()
    while time.monotonic() - start < timeout:
        count = len(list(grid.get_node_ids()))
        if expected > 0 and count >= expected:
            return expected
        if expected <= 0 and count > 0 and count == last and time.monotonic() - since >= settle:
            return count
        if count != last:
            last, since = count, time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"only {last} devices connected after {timeout:.0f}s (expected {expected or 'some'})")


def _check_resumable(state: ServerState, config: Config, path: Path) -> None:
    saved_model = state.config.get("model")
    if saved_model is not None and saved_model != to_dict(config.model):
        raise CheckpointError(f"{path}: the checkpoint's model section differs from this run's config")
    if state.strategy != config.federation.strategy:
        raise CheckpointError(f"{path}: checkpoint of strategy {state.strategy!r}, this run uses "
                              f"{config.federation.strategy!r}")


def _valid_variances(arrays: dict[str, np.ndarray], floor: float = 1e-3) -> dict[str, np.ndarray]:
    """BatchNorm running variances at least `floor`: DP noise on the aggregate (Flower's wrapper noises
    every key) makes some negative, and the model NaN. Post-processing: the DP guarantee is unchanged."""
    return {k: (np.maximum(v, floor).astype(v.dtype) if k.endswith("running_var") else v) for k, v in arrays.items()}


def _evaluation_due(config: Config, server_round: int) -> bool:
    every = config.federation.eval_every
    return every > 0 and (server_round % every == 0 or server_round == config.federation.rounds)


class Federation:
    """One server run (fresh or resumed) of the federated prior stage."""

    def __init__(self, grid: Grid, settings: ServerSettings):
        self.grid = RegistrationOrderGrid(grid)  # seeded sampling picks the same devices in every run
        self.out_dir = Path(settings.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model = initial_model(settings)
        self.config = replace(settings.config, model=replace(self.model.config, backbone_weights=None))
        self.fed = self.config.federation
        self.reference = to_numpy(shared_state(self.model))
        self.arrays = dict(self.reference)
        self.checkpoint_path = self.out_dir / CHECKPOINT_FILE
        self.round_log = RoundLog(self.out_dir / LOG_FILE)
        self.start_round = 1
        self.resumed_from: Optional[int] = None
        restored: dict = {}
        if settings.resume:
            state = load_server_state(self.checkpoint_path)
            _check_resumable(state, self.config, self.checkpoint_path)
            self.arrays = conform(state.arrays, self.reference)
            self.start_round = state.round + 1
            self.resumed_from = state.round
            restored = state.strategy_state
        elif self.checkpoint_path.exists():
            raise CheckpointError(f"{self.checkpoint_path} exists: pass --resume to continue that run, or use "
                                  "another output folder")
        connected = connected_devices(grid, settings.devices)
        self.nodes = connected
        self.pool = DevicePool(settings.pool_population) if settings.pool_population > 0 else None
        if self.pool and self.fed.secure_aggregation:
            raise ConfigError("federation.secure_aggregation: not with the device pool (each SecAgg+ party must "
                              "be one device); set federation.device_pool=false")
        self.plan: Sampling = sampling(self.fed, self.pool.population if self.pool else connected)
        self.strategy: Strategy = build_strategy(self.fed, self.pool.node_plan(self.plan, connected)
                                                 if self.pool else self.plan)
        restore_strategy_state(self.strategy, restored)
        self.config_json = json.dumps(to_dict(self.config))
        self.encoding = encoding_for(self.fed.fp16)
        self.uploaded = set(upload_keys(self.reference, self.fed.freeze_backbone))
        self.model_bytes_fp32 = int(sum(np.asarray(v).size * 4 for v in self.reference.values()))

    def _config_record(self) -> ConfigRecord:
        return ConfigRecord({FEDPIC_CONFIG: self.config_json})

    def _pooled(self, messages: list[Message], seed: int) -> tuple[list[Message], Optional[list[int]]]:
        """Device pool: each message names the user (population index) its node plays."""
        return self.pool.assign(messages, seed) if self.pool else (messages, None)

    def _send(self, messages: list[Message]) -> list[Message]:
        return list(self.grid.send_and_receive(messages, timeout=self.fed.round_timeout)) if messages else []

    def evaluate(self, server_round: int) -> tuple[Optional[dict], int, float]:
        """Federated evaluation of the current model: (weighted metrics, devices, seconds)."""
        start = time.perf_counter()
        seed = self.config.seed * 1_000_003 + server_round + 500_009
        if self.pool is None:
            random.seed(seed)  # Flower samples with `random`
            replies = self._send(list(self.strategy.configure_evaluate(
                server_round, self._array_record(), self._config_record(), self.grid)))
        else:  # more users than pool nodes: waves, each wave's nodes play the wave's users
            replies, arrays, config = [], self._array_record(), self._config_record()  # one copy for every wave
            for wave, users in enumerate(self.pool.waves(self.pool.users(self.plan.eval_devices, seed), self.nodes)):
                random.seed(seed + wave)
                messages = list(self.strategy.configure_evaluate(server_round, arrays, config, self.grid))[:len(users)]
                replies += self._send(self.pool.name(messages, users))
        ok = in_node_order([r for r in replies if not r.has_error()], self.grid.get_node_ids())
        metrics = self.strategy.aggregate_evaluate(server_round, ok) if ok else None
        return (dict(metrics) if metrics is not None else None), len(ok), time.perf_counter() - start

    def refit(self) -> dict:
        """Every connected device refits its personal state on the current (final) model.

        Sent to all devices, not a sample: each keeps its best personalized model. Returns the
        log fields: devices asked, replies, the mean refit seconds and the images used.
        """
        start = time.perf_counter()
        nodes = sorted(self.grid.get_node_ids())
        messages = [Message(RecordDict({ARRAYS: self._array_record(), CONFIG: self._config_record()}),
                            dst_node_id=node, message_type=REFIT_MESSAGE) for node in nodes]
        replies = [r for r in self._send(messages) if not r.has_error()]
        if len(replies) < len(messages):
            log.warning("refit: %d of %d devices did not refit", len(messages) - len(replies), len(messages))
        seconds = [float(r.content[METRICS].get("refit-seconds", 0.0)) for r in replies]
        images = [int(r.content[METRICS].get(NUM_EXAMPLES, 0)) for r in replies]
        return {"devices": len(messages), "replies": len(replies), "images": int(sum(images)),
                "device_seconds_mean": float(np.mean(seconds)) if seconds else None,
                "seconds": time.perf_counter() - start}

    def _array_record(self) -> ArrayRecord:
        return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in self.arrays.items()})

    def secure_train(self, server_round: int) -> dict:
        """One training round through SecAgg+ (server/secagg.py): only the masked sum is seen,
        so there is no per-update screening and no per-device upload size."""
        start = time.perf_counter()
        random.seed(self.config.seed * 1_000_003 + server_round)
        received = self.arrays
        floats = [k for k in sorted(self.uploaded) if np.issubdtype(np.asarray(received[k]).dtype, np.floating)]
        mean = secure_round(self.grid, server_round, received, floats, self.config_json, self.fed,
                            self.plan.train_devices, self.plan.population)
        if mean is None:
            log.warning("round %d: SecAgg+ halted (too few devices); the model is unchanged", server_round)
        else:
            self.arrays = {k: (np.asarray(v + mean[k], dtype=np.asarray(v).dtype) if k in mean else v)
                           for k, v in received.items()}
        return {"sampled": self.plan.train_devices, "secure_aggregation": True, "aggregated": mean is not None,
                "train": {}, "train_seconds": time.perf_counter() - start,
                "download_bytes": payload_bytes(received)}

    def train(self, server_round: int) -> dict:
        """One training round; returns its log fields."""
        if self.fed.secure_aggregation:
            return self.secure_train(server_round)
        start = time.perf_counter()
        seed = self.config.seed * 1_000_003 + server_round
        random.seed(seed)  # Flower samples devices with `random`
        messages, pool_users = self._pooled(list(self.strategy.configure_train(
            server_round, self._array_record(), self._config_record(), self.grid)), seed)
        received = self.arrays
        replies = self._send(messages)
        if len(replies) < len(messages):  # devices that crashed or vanished: the round goes on without them
            log.warning("round %d: %d of %d sampled devices sent no reply within %.0fs", server_round,
                        len(messages) - len(replies), len(messages), self.fed.round_timeout)
        screening = screen_replies(replies, received, self.encoding, self.fed.max_update_norm,
                                   self.fed.outlier_factor, self.fed.max_images)
        aggregated, train_metrics = False, {}
        if len(screening.accepted) >= max(1, self.fed.min_replies):
            accepted = in_node_order(screening.accepted, self.grid.get_node_ids())
            new_arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
            if new_arrays is not None:
                merged = _valid_variances(conform({k: a.numpy() for k, a in new_arrays.items()}, self.reference))
                # keys no device sends (a frozen backbone) stay bit-identical: averaging equal arrays
                # is not exact in floating point, and devices key their cached taps on these bits
                self.arrays = {k: merged[k] if k in self.uploaded else received[k] for k in received}
                aggregated = True
            train_metrics = dict(metrics or {})
        else:
            log.warning("round %d: %d valid updates (min_replies %d); the model is unchanged", server_round,
                        len(screening.accepted), self.fed.min_replies)
        uploads = screening.upload_bytes
        return {
            "sampled": len(messages), "replies": len(replies), "missing": len(messages) - len(replies),
            **screening.counts(), "aggregated": aggregated,
            "train": train_metrics, "train_seconds": time.perf_counter() - start,
            "upload_bytes_mean": float(np.mean(uploads)) if uploads else None,
            "upload_bytes_max": int(max(uploads)) if uploads else None,
            "download_bytes": payload_bytes(received),
            "update_norm_median": float(np.median(screening.norms)) if screening.norms else None,
            "update_norm_max": float(max(screening.norms)) if screening.norms else None,
            **({"pool_users": pool_users} if pool_users is not None else {}),
            **self._privacy(server_round),
        }

    def _privacy(self, server_round: int) -> dict:
        """DP runs: ε spent after rounds 1..server_round at δ = 1/devices (pic_core/privacy.py)."""
        spent = privacy_spent(self.fed.dp_clipping_norm, self.fed.dp_noise_multiplier, self.plan.train_devices,
                              self.plan.population, server_round)
        if spent is None:
            return {}
        log.info("round %d: DP-FedAvg has spent epsilon %.3f at delta %.2g", server_round, spent.epsilon, spent.delta)
        return {"dp_epsilon": spent.epsilon, "dp_delta": spent.delta}

    def _record(self, server_round: int, fields: dict) -> dict:
        return {"round": server_round, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "strategy": self.fed.strategy,
                "population": self.plan.population, "model_bytes_fp32": self.model_bytes_fp32,
                "encoding": self.encoding, "device_pool": self.pool is not None, **fields}

    def save(self, server_round: int) -> None:
        load_shared(self.model, from_numpy(self.arrays))
        save_model(self.out_dir / MODEL_FILE, self.model, to_dict(self.config), "prior",
                   {"federated": {"round": server_round, "strategy": self.fed.strategy,
                                  "population": self.plan.population}})
        save_server_state(self.checkpoint_path, ServerState(server_round, self.arrays, self.fed.strategy,
                                                            strategy_state(self.strategy), to_dict(self.config)))

    def run(self) -> int:
        """All remaining rounds; returns the last completed round."""
        if self.resumed_from is None:
            self.round_log.truncate_after(-1)
            if self.fed.eval_every > 0:
                metrics, devices, seconds = self.evaluate(0)
                self.round_log.append(self._record(0, {"evaluate": metrics, "eval_devices": devices,
                                                       "eval_seconds": seconds}))
            self.save(0)
        else:
            self.round_log.truncate_after(self.resumed_from)
            log.info("resuming after round %d of %d", self.resumed_from, self.fed.rounds)
        last = self.start_round - 1
        bar = tqdm(total=self.fed.rounds, initial=last, desc="rounds", unit="round", disable=not self.config.progress)
        with bar, logging_redirect_tqdm():
            last = self._rounds(bar)
        return last

    def _rounds(self, bar: tqdm) -> int:
        """Rounds start_round..rounds, one step of `bar` each; returns the last completed round."""
        last = self.start_round - 1
        for server_round in range(self.start_round, self.fed.rounds + 1):
            fields = self.train(server_round)
            fields.update({"evaluate": None, "eval_devices": 0, "eval_seconds": 0.0})
            if server_round == self.fed.rounds and self.fed.refit:
                if self.pool is None:  # before the last evaluation: its `stored` is the refit state
                    fields["refit"] = self.refit()
                else:  # a pool node plays a user only for a message naming it; no population-wide refit
                    log.info("refit skipped: device-pool simulation (each user refits when it next trains)")
            if _evaluation_due(self.config, server_round):
                metrics, devices, seconds = self.evaluate(server_round)
                fields.update({"evaluate": metrics, "eval_devices": devices, "eval_seconds": seconds})
            self.round_log.append(self._record(server_round, fields))
            self.save(server_round)
            last = server_round
            loss = fields["train"].get("loss-shared")
            log.info("round %d/%d: %s/%d updates accepted, train loss %s", server_round, self.fed.rounds,
                     fields.get("accepted", "masked"), fields["sampled"], "n/a" if loss is None else f"{loss:.4f}")
            bar.update()
        return last


def run_federation(grid: Grid, settings: ServerSettings) -> int:
    """Run (or resume) the federation to `federation.rounds`; the model file is in out_dir."""
    if settings.config.federation.rounds < 1:
        raise ConfigError("federation.rounds: must be >= 1")
    return Federation(grid, settings).run()
