"""The aggregation strategy, picked by name from the config: Flower's own classes, configured.

fedavg, fedavgm, fedprox, fedadam, fedmedian, fedtrimmedavg and krum map to flwr.serverapp.strategy;
`federation.dp_clipping_norm` wraps the result in Flower's client-side fixed-clipping DP.
Sampling comes from the federation section (devices per round or a fraction of the
population); `federation.strategy_args` passes the class's own arguments (proximal_mu,
eta, beta_1, tau, beta...), checked against its signature. The server state a strategy
carries between rounds (FedAdam's moments, FedAvgM's momentum) is exported for the checkpoint and restored.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, FedAvgM, \
    FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy

from pic_core.config import ConfigError, FederationConfig
from pic_core.exchange import ARRAYS, CONFIG, NUM_EXAMPLES, is_statistic

class FedAvgMStats(FedAvgM):
    """Flower's FedAvgM with BatchNorm running statistics (and counters) averaged plainly: server
    momentum on them drove running variances negative and the scores to NaN (benchmarks/prior.py)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        plain, _ = FedAvg.aggregate_train(self, server_round, replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or plain is None:
            return arrays, metrics
        # BatchNorm statistics: the plain average, never extrapolated by the server step
        out = ArrayRecord({k: plain[k] if is_statistic(k) else arrays[k] for k in arrays})
        if self.server_opt:
            self.current_arrays = out
        return out, metrics


STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgMStats,  # server lr and momentum on the averaged update (benchmarks/RESULTS.md)
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}

DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "fedprox": {"proximal_mu": 0.01},
    # Flower's eta = 0.1 moves every weight by ~0.1 per round: far too much for this model
    "fedadam": {"eta": 1e-3, "eta_l": 1e-3, "tau": 1e-6},
    "krum": {"num_malicious_nodes": 1},
}
"""fedpic's defaults where Flower's would be a no-op (mu = 0) or unstable; strategy_args win."""

RESERVED = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
            "min_available_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
            "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn")
"""Arguments fedpic sets itself (from the federation section); not allowed in strategy_args."""

STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")
"""Server optimizer state: the FedOpt family's moments (dicts), FedAvgM's momentum (a list)."""


@dataclass(frozen=True)
class Sampling:
    population: int
    train_devices: int
    eval_devices: int

    @property
    def fraction_train(self) -> float:
        return self.train_devices / self.population

    @property
    def fraction_evaluate(self) -> float:
        return self.eval_devices / self.population


def sampling(fed: FederationConfig, population: int) -> Sampling:
    """Devices per training and evaluation round for a population of `population` devices."""
    if population < 1:
        raise ConfigError("federation: no devices connected")

    def count(absolute: int, fraction: float, name: str) -> int:
        if absolute < 0 or not 0.0 < fraction <= 1.0:
            raise ConfigError(f"federation.{name}: devices must be >= 0 and fraction in (0, 1]")
        wanted = absolute if absolute > 0 else max(1, int(round(fraction * population)))
        return min(wanted, population)

    return Sampling(population, count(fed.devices_per_round, fed.fraction, "devices_per_round/fraction"),
                    count(fed.eval_devices, fed.eval_fraction, "eval_devices/eval_fraction"))


def strategy_arguments(fed: FederationConfig) -> dict[str, Any]:
    """fedpic defaults + federation.strategy_args, checked against the Flower class."""
    cls = STRATEGY_CLASSES[fed.strategy]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    args = {**DEFAULT_ARGS.get(fed.strategy, {}), **fed.strategy_args}
    for key in fed.strategy_args:
        if key in RESERVED:
            raise ConfigError(f"federation.strategy_args.{key}: set by fedpic from the federation section "
                              "(devices_per_round, fraction, eval_devices...)")
        if key not in accepted:
            valid = sorted(accepted - set(RESERVED))
            raise ConfigError(f"federation.strategy_args.{key}: not an argument of Flower's {cls.__name__}; "
                              f"valid: {', '.join(valid) or '(none)'}")
    return args


def build_strategy(fed: FederationConfig, plan: Sampling) -> Strategy:
    """The Flower strategy object for this federation."""
    cls = STRATEGY_CLASSES[fed.strategy]
    try:
        strategy = cls(fraction_train=plan.fraction_train, fraction_evaluate=plan.fraction_evaluate,
                       min_train_nodes=plan.train_devices, min_evaluate_nodes=plan.eval_devices,
                       min_available_nodes=max(plan.train_devices, plan.eval_devices),
                       weighted_by_key=NUM_EXAMPLES, arrayrecord_key=ARRAYS, configrecord_key=CONFIG,
                       **strategy_arguments(fed))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"federation.strategy_args: {cls.__name__} refused them ({exc})") from None
    return with_privacy(strategy, fed, plan)


def with_privacy(strategy: Strategy, fed: FederationConfig, plan: Sampling) -> Strategy:
    """Flower's client-side fixed-clipping DP around `strategy` when federation.dp_clipping_norm is set.

    Devices clip their update to the norm the server sends (client/privacy.py clips with Flower's
    compute_clip_model_update); the wrapper adds Gaussian noise of std noise_multiplier * norm /
    sampled devices to the aggregate. The mod compares full weights key by key with what the
    device received, so the fp16 delta encoding and the frozen-backbone subset are refused.
    """
    if fed.secure_aggregation and (fed.strategy != "fedavg" or fed.dp_clipping_norm is not None):
        raise ConfigError("federation.secure_aggregation: runs with strategy fedavg and without DP only "
                          "(SecAgg+ drives Flower's legacy FedAvg; docs/privacy.md)")
    if fed.dp_clipping_norm is None:
        return strategy
    if not fed.dp_clipping_norm > 0 or fed.dp_noise_multiplier < 0:
        raise ConfigError("federation.dp_clipping_norm must be > 0 and dp_noise_multiplier >= 0")
    if fed.fp16 or fed.freeze_backbone:
        raise ConfigError("federation.dp_clipping_norm: client-side clipping needs federation.fp16=false and "
                          "federation.freeze_backbone=false (full weights of every shared key)")
    return DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=fed.dp_noise_multiplier,
                                                      clipping_norm=fed.dp_clipping_norm,
                                                      num_sampled_clients=plan.train_devices)


def strategy_state(strategy: Strategy) -> dict[str, dict[str, np.ndarray]]:
    """The moments a FedOpt-family strategy keeps between rounds ({} for stateless ones)."""
    state = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if isinstance(value, list):  # FedAvgM: one array per key, in the order of the model's arrays
            value = {f"{i:06d}": v for i, v in enumerate(value)}
        if value:
            state[name] = {k: np.array(v, copy=True) for k, v in value.items()}
    return state


def restore_strategy_state(strategy: Strategy, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, value in state.items():
        if name not in STATE_ATTRIBUTES or not hasattr(strategy, name):
            raise ValueError(f"checkpoint has strategy state {name!r} that {type(strategy).__name__} does not keep")
        if name == "momentum_vector":
            setattr(strategy, name, [np.asarray(value[k]) for k in sorted(value)])
        else:
            setattr(strategy, name, {k: np.asarray(v) for k, v in value.items()})
