"""`fedpic simulate`: the federated prior stage over a synthetic (or any) population, end to end.

    fedpic simulate --config configs/demo.yaml --data runs/demo/data --out runs/demo/federated
    fedpic simulate ... --resume          # continue a stopped run from its last checkpoint

Steps: pre stage on generic.csv (unless --init gives a model file), Flower simulation of
`federation.rounds` rounds with one device per user, then the evaluation protocol on the
final model (generic and few-shot personalized, per user, mean with 95% CI).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from typing import TYPE_CHECKING, Sequence

from pic_core.cli import add_common_options, config_from_args
from pic_core.data.dataset import Dataset

if TYPE_CHECKING:  # .federated imports Flower: loaded when the command runs, not for every `fedpic`
    from .federated import SimulationPlan

log = logging.getLogger("fedpic.simulate")


def plan_from_args(args: argparse.Namespace) -> "SimulationPlan":
    from .federated import PRE_FILE, SimulationPlan, split_population

    overrides = list(args.overrides or [])
    if args.rounds is not None:
        overrides.append(f"federation.rounds={args.rounds}")
    if args.population is not None:
        overrides.append(f"federation.population={args.population}")
    args.overrides = overrides
    config = config_from_args(args)
    users, holdout = split_population(Dataset(args.data), config.federation.population)
    init = args.init
    if init is None and args.resume and (args.out / PRE_FILE).is_file():
        init = args.out / PRE_FILE
    return SimulationPlan(config=config, data_dir=args.data, out_dir=args.out, users=users, holdout=holdout,
                          init_model=init, resume=args.resume)


def run(plan: "SimulationPlan", evaluate: bool = True, client_mods: Sequence = ()) -> Path:
    """Pretrain (when needed), simulate, evaluate; returns the results.json path."""
    from .federated import check_out_dir, evaluate_population, pretrain_model, run_federated, write_results

    check_out_dir(plan)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    timing = {}
    if plan.init_model is None and plan.config.pre.epochs > 0:
        start = time.perf_counter()
        plan.init_model = pretrain_model(plan)
        timing["pretrain_seconds"] = time.perf_counter() - start
    log.info("federation: %d devices (%d held out), %d rounds of %s", len(plan.users), len(plan.holdout),
             plan.config.federation.rounds, plan.config.federation.strategy)
    timing["federated_seconds"] = run_federated(plan, client_mods)
    evaluation = holdout = None
    if evaluate:
        start = time.perf_counter()
        evaluation = evaluate_population(plan, plan.users)
        if plan.holdout:
            holdout = evaluate_population(plan, plan.holdout)
        timing["evaluate_seconds"] = time.perf_counter() - start
    path = write_results(plan, timing, evaluation, holdout)
    if evaluation:
        for name in ("generic", "personalized"):
            stats = evaluation[name]["summary"].get("acc1_5", {})
            print(f"federated {name:>12}: acc1_5 {stats.get('mean', float('nan')):.3f} "
                  f"+- {stats.get('ci95', float('nan')):.3f} over {stats.get('users', 0)} users")
    log.info("wrote %s", path)
    return path


def _cmd_simulate(args: argparse.Namespace) -> int:
    run(plan_from_args(args), evaluate=not args.skip_eval)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("simulate", help="federated prior training with Flower's simulation engine "
                                               "(one simulated device per user)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory (images/, generic.csv, users/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.pt, rounds.jsonl, results.json)")
    p.add_argument("--init", type=Path, help="start from this model file (default: pre stage on generic.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--rounds", type=int, help="override federation.rounds")
    p.add_argument("--population", type=int, help="override federation.population (first N users take part)")
    p.add_argument("--skip-eval", action="store_true", help="no population evaluation after training")
    add_common_options(p)
    p.set_defaults(func=_cmd_simulate)
