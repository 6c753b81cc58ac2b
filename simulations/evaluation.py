"""Every method row on the same users by one protocol: what `fedpic baselines`, `fedpic simulate`,
the report and benchmarks/quality.py + fed.py compute, so their numbers agree.

Row ids (written into results files; labels in ROW_LABELS):

  generic            the pre model's objective score, the same crops for everyone
  pre-finetune       the pre model personalized by exactly the same few-shot path as PIC
                     (config.finetune): no prior, no federation. The honest baseline.
  pre-finetune-du    the same with the personal state = d_u alone (finetune.head_lr = 0)
  prior              the centralized prior with d_u = 0   (federated-generic: the federated one)
  centralized        the centralized prior personalized from N shots   (federated: the federated one)
  centralized-du     the same with d_u alone   (federated-du)
  centralized-compact  the same with the compact personal state: d_u + the objective readout's
                     offsets (finetune.offsets compact; 209 floats at the demo widths)   (federated-compact)
  federated-stored   the final federated model with the personal.pt each device keeps
  local, oracle      from scratch on N shots / the user's own scores (`fedpic baselines` only)

Each row is scored on every user at the main N (`main_shots`); the accuracy-against-N curve adds
the other N of `evaluation.shots` on a sample of `evaluation.curve_users` users. Gains are paired
per-user differences against `pre-finetune` and `generic` at the same N on the users both scored.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional, Sequence

import torch

from client.features import TapSampleCache, backbone_fingerprint
from pic_core.config import Config, ConfigError
from pic_core.data.records import UserData
from pic_core.model import CropScorer
from pic_core.protocol import PopulationResult, evaluate_users, oracle_result, paired_gain, restrict
from pic_core.samples import SampleCache

log = logging.getLogger("fedpic.evaluation")

GAIN_KEY = "acc1_5"
GAIN_BASES = ("pre-finetune", "generic")
"""The methods every other row's paired gain is measured against."""

ROW_LABELS = {
    "generic": "generic (pre stage, objective only)",
    "pre-finetune": "pre model + the same few-shot personalization (no prior, no federation)",
    "pre-finetune-du": "pre model + few-shot d_u alone (no head offsets)",
    "prior": "population prior (d_u = 0)",
    "local": "local-only (from scratch on N shots)",
    "centralized": "centralized PIC (pre -> prior -> finetune)",
    "centralized-du": "centralized PIC, personal state d_u alone (no head offsets)",
    "centralized-compact": "centralized PIC, compact personal state (d_u + objective readout)",
    "federated-generic": "federated prior (d_u = 0)",
    "federated": "federated PIC (prior trained with Flower, then finetune)",
    "federated-du": "federated PIC, personal state d_u alone (no head offsets)",
    "federated-compact": "federated PIC, compact personal state (d_u + objective readout)",
    "federated-stored": "federated model with the personal state each device stores",
    "oracle": "oracle (the user's own scores)",
}
"""Row ids and what they are (reports and results files)."""

SHORT_LABELS = {
    "generic": "generic", "pre-finetune": "pre + few-shot", "pre-finetune-du": "pre + few-shot d_u",
    "prior": "central prior (d_u=0)", "local": "local-only", "centralized": "centralized PIC",
    "centralized-du": "centralized PIC, d_u only", "centralized-compact": "centralized PIC, compact state",
    "federated-generic": "federated prior (d_u=0)", "federated": "federated PIC", "federated-du": "federated PIC, d_u only",
    "federated-compact": "federated PIC, compact state",
    "federated-stored": "federated, stored state", "oracle": "oracle",
}
"""Legend names for plots."""

PersonalHook = Callable[[UserData, CropScorer], None]
HookFor = Callable[[str, int], Optional[PersonalHook]]


def row_label(method: str) -> str:
    base, suffix = _split_suffix(method)
    return ROW_LABELS.get(base, base) + (f" ({suffix.lstrip('-').replace('-', ' ')})" if suffix else "")


def short_label(method: str) -> str:
    base, suffix = _split_suffix(method)
    return SHORT_LABELS.get(base, base) + (f" [{suffix.lstrip('-').replace('-', ' ')}]" if suffix else "")


def _split_suffix(method: str) -> tuple[str, str]:
    """('federated', '-new-devices') for 'federated-new-devices': the longest known row id prefix."""
    for base in sorted(ROW_LABELS, key=len, reverse=True):
        if method == base or method.startswith(base + "-") and method[len(base):] not in ("-du", "-compact", "-generic"):
            return base, method[len(base):]
    return method, ""


def du_only(config: Config) -> Config:
    """The same few-shot path with the personal state = d_u alone: the crop-head offsets stay at 0."""
    return replace(config, finetune=replace(config.finetune, head_lr=0.0))


COMPACT_HEAD_LR = 1.0e-2
"""Adam lr of the compact offsets (measured on the seed-0 federated prior, 12 rounds: 3e-3 0.542,
1e-2 0.580 acc1_5; the readout alone at 3e-2 0.570; benchmarks/RESULTS.md)."""


def compact_state(config: Config) -> Config:
    """The same few-shot path with the compact personal state: d_u plus offsets on the objective
    readout and the BatchNorm before it (model.COMPACT_OFFSETS), a few hundred floats instead of
    the crop head's 1.1 M."""
    return replace(config, finetune=replace(config.finetune, offsets="compact", head_lr=COMPACT_HEAD_LR))


@dataclass
class Row:
    """One method: how it scores a list of users at N shots (with an optional per-user hook)."""

    method: str
    score: Callable[[Sequence[UserData], int, Optional[PersonalHook]], PopulationResult]
    per_shot: bool = True  # False: N does not change its figures (scored once, filed under every N)


class BackboneCaches:
    """Evaluation samples per distinct backbone, carrying its taps (float32, exact).

    Every row runs the backbone over the same test and shot images, and the pre model, its
    objective-only copy and a federated model trained with freeze_backbone share one backbone:
    keyed by backbone_fingerprint, each image is decoded and encoded once per backbone instead of
    once per row and user (the demo's evaluation: 182 s -> 122 s, benchmarks/RESULTS.md). Fine-tuning
    every weight (finetune.mode full) trains the backbone, so it gets `images` instead.
    """

    def __init__(self, config: Config, images: SampleCache, device: Optional[torch.device] = None):
        self.config = config
        self.images = images
        self.device = device
        self._caches: dict[str, TapSampleCache] = {}

    def __call__(self, model: CropScorer) -> SampleCache:
        if self.config.finetune.mode != "fast":
            return self.images
        key = backbone_fingerprint(model)
        if key not in self._caches:
            self._caches[key] = TapSampleCache(model, None, self.device, dtype=torch.float32)
        return self._caches[key]


def fixed_row(method: str, model: CropScorer, config: Config, cache: SampleCache,
              device: Optional[torch.device] = None) -> Row:
    """The model as it is, d_u = 0 (the generic or the population-prior score)."""
    return Row(method, lambda users, n, hook: evaluate_users(model, users, config, n, method=method, cache=cache,
                                                             personalize=False, device=device, on_user=hook),
               per_shot=False)


def personalized_row(method: str, model: CropScorer, config: Config, cache: SampleCache,
                     device: Optional[torch.device] = None) -> Row:
    """The model personalized per user from N shots by config.finetune (the protocol's path)."""
    return Row(method, lambda users, n, hook: evaluate_users(model, users, config, n, method=method, cache=cache,
                                                             device=device, on_user=hook))


def per_user_row(method: str, build: Callable[[UserData, int], CropScorer], config: Config, cache: SampleCache,
                 device: Optional[torch.device] = None, per_shot: bool = True) -> Row:
    """A scorer built for each user by `build(user, N)` (local-only, a device's stored state)."""
    def score(users: Sequence[UserData], n: int, hook: Optional[PersonalHook]) -> PopulationResult:
        reference = CropScorer(config.model)  # only carries the config into evaluate_users
        return evaluate_users(reference, users, config, n, method=method, cache=cache, device=device,
                              model_for_user=lambda user: build(user, n), on_user=hook)
    return Row(method, score, per_shot=per_shot)


def oracle_row() -> Row:
    return Row("oracle", lambda users, n, hook: oracle_result(users, n), per_shot=False)


def objective_only(model: CropScorer) -> CropScorer:
    """A copy that scores with the objective head alone: e_0 = 0 and d_u = 0 cancel the subjective term."""
    generic = copy.deepcopy(model)
    with torch.no_grad():
        generic.prior_embedding.zero_()
    generic.personal.reset()
    return generic.eval()


def pre_rows(pre_model: CropScorer, config: Config, cache: SampleCache, device: Optional[torch.device] = None,
             du: bool = True, methods: Optional[Sequence[str]] = None) -> list[Row]:
    """generic, pre-finetune (and pre-finetune-du) from the pre-stage model."""
    rows = [fixed_row("generic", objective_only(pre_model), config, cache, device),
            personalized_row("pre-finetune", pre_model, config, cache, device)]
    if du:
        rows.append(personalized_row("pre-finetune-du", pre_model, du_only(config), cache, device))
    return [r for r in rows if methods is None or r.method in methods]


def shared_rows(model: CropScorer, kind: str, config: Config, cache: SampleCache,
                device: Optional[torch.device] = None, du: bool = True,
                methods: Optional[Sequence[str]] = None) -> list[Row]:
    """The d_u = 0 row, the personalized row (and its small-state twins: d_u alone, compact) of a
    shared prior model; kind 'centralized' (ids prior, centralized, centralized-du,
    centralized-compact) or 'federated'."""
    if kind not in ("centralized", "federated"):
        raise ValueError(f"kind must be centralized or federated, got {kind!r}")
    fixed = "prior" if kind == "centralized" else "federated-generic"
    rows = [fixed_row(fixed, model, config, cache, device), personalized_row(kind, model, config, cache, device)]
    if du:
        rows.append(personalized_row(f"{kind}-du", model, du_only(config), cache, device))
        if model.personal.offsets is not None:
            rows.append(personalized_row(f"{kind}-compact", model, compact_state(config), cache, device))
    return [r for r in rows if methods is None or r.method in methods]


def curve_sample(users: Sequence[UserData], count: int) -> list[UserData]:
    """`count` users evenly spaced over the sorted ids (all when count is 0 or >= the population);
    synthetic families are assigned round-robin, so the sample keeps them mixed."""
    ordered = sorted(users, key=lambda u: u.user_id)
    if count <= 0 or count >= len(ordered):
        return ordered
    return [ordered[(i * len(ordered)) // count] for i in range(count)]


def check_settings(config: Config) -> None:
    """ConfigError naming the field for unusable evaluation settings."""
    shots = config.evaluation.shots
    if any(n < 1 for n in shots):
        raise ConfigError(f"evaluation.shots: every N must be >= 1, got {shots}")
    if config.evaluation.curve_users < 0:
        raise ConfigError(f"evaluation.curve_users: must be >= 0, got {config.evaluation.curve_users}")


@dataclass
class Evaluation:
    """The rows' results plus what a results file records about them."""

    results: list[PopulationResult] = field(default_factory=list)
    main_shots: int = 0
    evaluated: dict = field(default_factory=lambda: {"samples": {}, "rows": {}})
    gains: dict = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def extra(self) -> dict:
        """The results-file fields: main_shots, evaluated, gains."""
        return {"main_shots": self.main_shots, "evaluated": self.evaluated, "gains": self.gains}

    def merge(self, other: "Evaluation") -> "Evaluation":
        """Another evaluation's rows added (e.g. devices never seen in training)."""
        self.results += other.results
        self.evaluated["samples"].update(other.evaluated["samples"])
        self.evaluated["rows"].update(other.evaluated["rows"])
        for base, entries in other.gains.items():
            self.gains.setdefault(base, {}).update(entries)
        self.timing.update(other.timing)
        return self


def evaluate_rows(rows: Sequence[Row], users: Sequence[UserData], config: Config, main_shots: Sequence[int], *,
                  curve: bool = True, suffix: str = "", sample: str = "population",
                  hook_for: Optional[HookFor] = None) -> Evaluation:
    """Every row on every user at each of `main_shots`, then (curve) at the other N of
    evaluation.shots on the curve sample; gains against pre-finetune and generic (paired).

    `suffix` is appended to every method id (held-out users' rows), `sample` names the users in
    `evaluated`; `hook_for(method, N)` may return an on_user hook (saving states, galleries).
    """
    check_settings(config)
    main = [int(n) for n in main_shots]
    if not main or any(n < 1 for n in main):
        raise ValueError(f"shots must be positive integers, got {list(main_shots)}")
    users = list(users)
    chosen = curve_sample(users, config.evaluation.curve_users) if curve else []
    curve_shots = [n for n in dict.fromkeys(config.evaluation.shots) if n not in main] if chosen else []
    out = Evaluation(main_shots=main[0] if config.finetune.shots not in main else config.finetune.shots)
    out.evaluated["samples"][sample] = {"users": [u.user_id for u in users]}
    if chosen:
        out.evaluated["samples"][f"{sample}-curve"] = {"users": [u.user_id for u in chosen],
                                                      "shots": sorted(set(config.evaluation.shots) | set(main))}
    once: dict[str, PopulationResult] = {}
    plan = [(n, users, sample) for n in main] + [(n, chosen, f"{sample}-curve") for n in curve_shots]
    for n, group, group_name in sorted(plan, key=lambda p: p[0]):
        for row in rows:
            method = row.method + suffix
            start = time.perf_counter()
            hook = hook_for(row.method, n) if hook_for is not None else None
            if row.per_shot:
                result = row.score(group, n, hook)
            else:
                if row.method not in once:
                    once[row.method] = row.score(users, n, hook)
                result = restrict(once[row.method], [u.user_id for u in group])
                result.shots = n
            result.method = method
            seconds = time.perf_counter() - start
            out.timing[f"{method}_n{n}_seconds"] = seconds
            out.results.append(result)
            out.evaluated["rows"][f"{method}@{n}"] = group_name
            stats = result.summary((GAIN_KEY,)).get(GAIN_KEY, {})
            log.info("N=%-2d %-26s %s %.3f +- %.3f (%d users, %s, %.1fs)", n, method, GAIN_KEY,
                     stats.get("mean", float("nan")), stats.get("ci95", float("nan")), stats.get("users", 0),
                     group_name, seconds)
    out.gains = paired_gains(out.results, suffix)
    return out


def paired_gains(results: Sequence[PopulationResult], suffix: str = "", key: str = GAIN_KEY) -> dict:
    """{base: {"method@N": paired_gain}} for each base of GAIN_BASES present at that N."""
    by_key = {(r.method, r.shots): r for r in results}
    out: dict[str, dict] = {}
    for base_id in GAIN_BASES:
        base_method = base_id + suffix
        for (method, n), result in by_key.items():
            base = by_key.get((base_method, n))
            if base is None or method == base_method or method.startswith("oracle"):
                continue
            gain = paired_gain(result, base, key)
            if gain is not None:
                out.setdefault(base_method, {})[f"{method}@{n}"] = gain
    return out


def gain(gains: Mapping, method: str, base: str, shots: int) -> Optional[dict]:
    """One entry of a results file's `gains` (None when not measured)."""
    return (gains.get(base) or {}).get(f"{method}@{shots}")


def paired_target(gains: Mapping, method: str, base: str, shots: int, threshold: float,
                  ci_above_zero: bool = False) -> dict:
    """A benchmark target on a paired gain: (method - base) at N >= threshold, and with
    ci_above_zero the 95% CI's lower bound above 0 too. `met` is False when not measured."""
    entry = gain(gains, method, base, shots)
    value = None if entry is None else entry["mean"]
    low = None if entry is None else entry.get("low")
    met = value is not None and value >= threshold - 1e-12
    if ci_above_zero:
        met = met and low is not None and low > 0
    text = f"{method} - {base} {GAIN_KEY} at N = {shots} >= {threshold:+.2f} (paired over users"
    return {"description": text + (", 95% CI above 0)" if ci_above_zero else ")"), "value": value,
            "ci95": None if entry is None else entry["ci95"], "low": low,
            "high": None if entry is None else entry.get("high"), "users": None if entry is None else entry["users"],
            "threshold": threshold, "met": bool(met),
            "shortfall": None if value is None else max(0.0, threshold - value)}
