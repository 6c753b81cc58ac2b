"""The evaluation protocol: personalize each user from N shots, score unseen test images.

Per user: d_u is fitted on the first N images of the user's `train` split (finetune stage,
from the given shared model), then crop_metrics are computed on the user's `test` split,
both with the fitted d_u (personalized) and with d_u = 0 (generic). Population figures are
the mean over users with a 95% t confidence interval. Used by `fedpic evaluate --all-users`,
the baselines, the simulations and the benchmarks, so every number is made the same way.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .config import Config
from .data.records import CropSet, UserData
from .metrics import crop_metrics, mean_ci
from .model import CropScorer
from .samples import SampleCache
from .train import evaluate, finetune

SUMMARY_KEYS = ("acc1_5", "acc_5", "acc1_10", "acc_10", "wacc_5", "wacc_10", "srcc", "pcc")


@dataclass
class PopulationResult:
    """Per-user metrics and their population summary for one method."""

    method: str
    shots: int
    per_user: dict[str, dict] = field(default_factory=dict)

    def summary(self, keys: Sequence[str] = SUMMARY_KEYS) -> dict:
        """{key: {"mean": m, "ci95": half_width, "users": n}} over users with a finite value."""
        out = {}
        for key in keys:
            values = [m[key] for m in self.per_user.values() if key in m and math.isfinite(m[key])]
            if values:
                mean, half = mean_ci(values)
                out[key] = {"mean": float(mean), "ci95": float(half), "users": len(values)}
        return out

    def as_dict(self) -> dict:
        return {"method": self.method, "shots": self.shots, "summary": self.summary(), "per_user": self.per_user}

    def to_json(self) -> dict:
        """as_dict with NaN/inf written as null, so the file is strict JSON."""
        return json_safe(self.as_dict())

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "result") -> "PopulationResult":
        """Read back as_dict / to_json output; the summary is recomputed from per_user (null -> NaN)."""
        if not isinstance(data, Mapping) or not all(k in data for k in RESULT_KEYS):
            raise ValueError(f"{where}: expected an object with keys {', '.join(RESULT_KEYS)}")  # noqa: TRY004
        per_user = data["per_user"]
        if not isinstance(per_user, Mapping):
            raise ValueError(f"{where}.per_user: expected a mapping user -> metrics")  # noqa: TRY004
        try:
            shots = int(data["shots"])
            users = {str(u): {str(k): math.nan if v is None else float(v) for k, v in m.items()}
                     for u, m in per_user.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: malformed shots or per-user metrics ({exc})") from None
        return cls(str(data["method"]), shots, users)


RESULT_KEYS = ("method", "shots", "per_user")
"""The keys that make a JSON object a PopulationResult (what report readers look for)."""


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pretrain_sets(generic: Sequence[CropSet], users: Sequence[UserData]) -> list[CropSet]:
    """Crop sets for the pre stage: `generic` minus every image in some user's test split.

    The test images are the ones the protocol scores, so no stage may train on them.
    """
    test_images = {c.name for user in users for c in user.split("test")}
    return [c for c in generic if c.name not in test_images]


def few_shot_sets(user: UserData, shots: int) -> list[CropSet]:
    """The first `shots` images of the user's train split (all of them when shots <= 0)."""
    sets = user.split("train")
    return sets[:shots] if shots > 0 else sets


def personalize_user(model: CropScorer, user: UserData, shots: int, config: Config, cache: SampleCache,
                     device: Optional[torch.device] = None) -> CropScorer:
    """A copy of `model` fine-tuned for one user (the shared model is left untouched)."""
    personal = copy.deepcopy(model)
    sets = few_shot_sets(user, shots)
    if sets:  # one bar per population (evaluate_users), not one per user
        finetune(personal, sets, replace(config, progress=False), cache, device)
    return personal


def evaluate_users(model: CropScorer, users: Sequence[UserData], config: Config, shots: int, *,
                   method: str = "personalized", cache: Optional[SampleCache] = None, personalize: bool = True,
                   device: Optional[torch.device] = None, progress: Optional[bool] = None,
                   model_for_user: Optional[Callable[[UserData], CropScorer]] = None,
                   on_user: Optional[Callable[[UserData, CropScorer], None]] = None) -> PopulationResult:
    """The protocol over a population. `model_for_user` replaces fine-tuning (e.g. local-only);
    `on_user(user, scorer)` sees each user's scorer after scoring (to keep states or crops)."""
    cache = cache or SampleCache(model.config.short_side)
    result = PopulationResult(method, shots)
    show = config.progress if progress is None else progress
    for user in tqdm(users, desc=f"evaluate {method}", disable=not show, leave=False):
        test = user.split("test")
        if not test:
            continue
        if model_for_user is not None:
            scorer = model_for_user(user)
        elif personalize:
            scorer = personalize_user(model, user, shots, config, cache, device)
        else:
            scorer = model
        result.per_user[user.user_id] = evaluate(scorer, test, cache, personal=personalize or
                                                 model_for_user is not None, device=device)
        if on_user is not None:
            on_user(user, scorer)
    return result


def oracle_result(users: Sequence[UserData], shots: int) -> PopulationResult:
    """The ceiling: each user's own scores ranked by themselves (1.0 on every accuracy)."""
    result = PopulationResult("oracle", shots)
    for user in users:
        test = user.split("test")
        if test:
            scores = [c.scores for c in test]
            result.per_user[user.user_id] = crop_metrics(scores, scores) | {"candidates": int(sum(map(len, scores)))}
    return result


def gains(better: PopulationResult, base: PopulationResult, key: str = "acc1_5") -> dict[str, float]:
    """Per-user difference better - base on `key`, for users present in both."""
    return {u: better.per_user[u][key] - base.per_user[u][key]
            for u in better.per_user if u in base.per_user
            and math.isfinite(better.per_user[u].get(key, math.nan))
            and math.isfinite(base.per_user[u].get(key, math.nan))}


def paired_gain(better: PopulationResult, base: PopulationResult, key: str = "acc1_5") -> Optional[dict]:
    """better - base paired over the users both scored: mean, 95% CI half-width and bounds, and how
    many users gain / tie / lose; None when they share no user."""
    diffs = list(gains(better, base, key).values())
    if not diffs:
        return None
    mean, half = mean_ci(diffs)
    low, high = (mean - half, mean + half) if math.isfinite(half) else (math.nan, math.nan)
    return {"mean": mean, "ci95": half, "low": low, "high": high, "users": len(diffs),
            "better": sum(d > 0 for d in diffs), "same": sum(d == 0 for d in diffs),
            "worse": sum(d < 0 for d in diffs)}


def restrict(result: PopulationResult, users: Sequence[str]) -> PopulationResult:
    """The same result over the given users only (those it scored)."""
    keep = set(users)
    return PopulationResult(result.method, result.shots, {u: m for u, m in result.per_user.items() if u in keep})
