"""The federated prior stage over a synthetic (or any) population, end to end (`fedpic simulate`).

    fedpic simulate --config demo --data runs/demo/population --out runs/demo/federated
    fedpic simulate ... --resume          # continue a stopped run from its last checkpoint

Steps: pre stage on generic.csv (unless --init gives a model file), Flower simulation of
`federation.rounds` rounds with one device per user, then the evaluation protocol on the
final model (generic and few-shot personalized, per user, mean with 95% CI).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from pic_core.config import Config
from pic_core.data.dataset import Dataset

from .federated import (HOLDOUT_SUFFIX, PRE_FILE, SimulationPlan, check_out_dir, check_ray_address,
                        evaluate_population, pretrain_model, run_federated, split_population, write_results)

log = logging.getLogger("fedpic.simulate")


def make_plan(config: Config, data_dir: Path, out_dir: Path, init_model: Optional[Path] = None,
              resume: bool = False) -> SimulationPlan:
    """The population split and start model of a run (a resumed run reuses its own out/pre.pt)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    users, holdout = split_population(Dataset(data_dir), config.federation.population)
    if init_model is None and resume and (out_dir / PRE_FILE).is_file():
        init_model = out_dir / PRE_FILE
    return SimulationPlan(config=config, data_dir=data_dir, out_dir=out_dir, users=users, holdout=holdout,
                          init_model=Path(init_model) if init_model else None, resume=resume)


def run(plan: SimulationPlan, evaluate: bool = True, client_mods: Sequence = ()) -> Path:
    """Pretrain (when needed), simulate, evaluate; returns the results.json path."""
    check_out_dir(plan)
    if plan.config.federation.ray_address:
        check_ray_address(plan.config.federation.ray_address)  # fail before the pre stage, not after
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    timing = {}
    if plan.init_model is None and plan.config.pre.epochs > 0:
        start = time.perf_counter()
        plan.init_model = pretrain_model(plan)
        timing["pretrain_seconds"] = time.perf_counter() - start
    log.info("federation: %d devices (%d held out), %d rounds of %s", len(plan.users), len(plan.holdout),
             plan.config.federation.rounds, plan.config.federation.strategy)
    timing["federated_seconds"] = run_federated(plan, client_mods)
    evaluation = None
    if evaluate:
        start = time.perf_counter()
        evaluation = evaluate_population(plan, plan.users)
        if plan.holdout:
            evaluation.merge(evaluate_population(plan, plan.holdout, HOLDOUT_SUFFIX))
        timing["evaluate_seconds"] = time.perf_counter() - start
    path = write_results(plan, timing, evaluation)
    main = plan.config.finetune.shots
    for result in (evaluation.results if evaluation else []):
        stats = result.summary(("acc1_5",)).get("acc1_5", {})
        if result.shots == main:
            print(f"{result.method:>30}: acc1_5 {stats.get('mean', float('nan')):.3f} "
                  f"+- {stats.get('ci95', float('nan')):.3f} over {stats.get('users', 0)} users (N = {main})")
    for base, entries in (evaluation.gains if evaluation else {}).items():
        for key, stats in entries.items():
            if key.endswith(f"@{main}") and stats.get("ci95") is not None and _printed_gain(key.split("@")[0], base):
                print(f"{key.split('@')[0] + ' - ' + base:>40}: {stats['mean']:+.3f} +- {stats['ci95']:.3f} "
                      f"paired over {stats['users']} users")
    log.info("wrote %s", path)
    return path


def _printed_gain(method: str, base: str) -> bool:
    """The gains the log prints (results.json and the report hold them all): every personalized
    row over pre-finetune, and the federated rows over generic (issue 13's targets)."""
    if base == "generic":
        return method in ("federated", "federated" + HOLDOUT_SUFFIX)
    return "generic" not in method


def run_simulation(config: Config, data_dir: Path, out_dir: Path, *, init_model: Optional[Path] = None,
                   resume: bool = False, evaluate: bool = True) -> Path:
    """`fedpic simulate` as a function (what `fedpic demo` chains): returns the results.json path."""
    return run(make_plan(config, data_dir, out_dir, init_model, resume), evaluate=evaluate)
