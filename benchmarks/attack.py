"""Benchmark: poisoned updates against update screening and robust aggregation.

10 devices per round (the first 10 users of the population, all sampled every round); in the
attacked arms device 3 sends its update scaled x100 and device 7 sends NaN. Arms:
  clean-fedavg              no attacker (the reference)
  attacked-fedavg-noscreen  FedAvg with the norm screening off (federation.outlier_factor=0,
                            max_update_norm=null); non-finite updates are always rejected, so the
                            x100 update gets in
  attacked-fedavg           FedAvg with fedpic's default screening (absolute bound 50, 10x the median)
  attacked-<robust>         fedmedian / fedtrimmedavg (beta 0.2) / krum, norm screening off:
                            the aggregator alone has to absorb the x100 update
  liar-fedavg               device 3 sends its update sign-flipped and claims 1e9 examples;
                            default FedAvg (claims capped at the round's lower median)
  two-clean-fedavg          2 devices (the first 2 users), no attacker: the 2-reply reference
  two-dropout-fedavg        2 devices, device 1 sends NaN (always rejected): the honest device alone
  two-attacked-fedavg       2 devices, device 1 sends x100: default screening with 2 replies
  two-attacked-fedavg-noscreen  the same with the norm screening off
Every arm starts from the same pre-stage model and is evaluated with the evaluation protocol
(generic and few-shot personalized acc1_5 at the main N over the 10 users, and each arm's drop
against its reference paired over users with a 95% CI). Writes runs/bench/attack.json.

    python benchmarks/attack.py [--data DIR] [--config tiny] [--rounds 3]

Without --data the 40-user demo population is generated once under runs/bench.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import demo_population, main_per_user  # noqa: E402
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from pic_core.config import load_config  # noqa: E402
from pic_core.metrics import mean_ci  # noqa: E402
from pic_core.data.dataset import Dataset  # noqa: E402
from simulations.attacks import attack_mod  # noqa: E402
from simulations.federated import SimulationPlan, pretrain_model, split_population  # noqa: E402
from simulations.simulate import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTACKERS = {3: "scale", 7: "nan"}
NOSCREEN = {"federation.outlier_factor": 0, "federation.max_update_norm": None}
ARMS = {  # name: (strategy, overrides, attackers {partition-id: kind}, devices (None: --devices))
    "clean-fedavg": ("fedavg", {}, {}, None),
    "attacked-fedavg-noscreen": ("fedavg", NOSCREEN, ATTACKERS, None),
    "attacked-fedavg": ("fedavg", {}, ATTACKERS, None),
    "attacked-fedmedian": ("fedmedian", NOSCREEN, ATTACKERS, None),
    "attacked-fedtrimmedavg": ("fedtrimmedavg", {**NOSCREEN, "federation.strategy_args": {"beta": 0.2}},
                               ATTACKERS, None),
    "attacked-krum": ("krum", {**NOSCREEN, "federation.strategy_args": {"num_malicious_nodes": 2}},
                      ATTACKERS, None),
    "liar-fedavg": ("fedavg", {}, {3: "liar"}, None),
    "two-clean-fedavg": ("fedavg", {}, {}, 2),
    "two-dropout-fedavg": ("fedavg", {}, {1: "nan"}, 2),
    "two-attacked-fedavg": ("fedavg", {}, {1: "scale"}, 2),
    "two-attacked-fedavg-noscreen": ("fedavg", NOSCREEN, {1: "scale"}, 2),
}
REFERENCE = {"two-clean-fedavg": None, "two-dropout-fedavg": "two-clean-fedavg", "two-attacked-fedavg": "two-dropout-fedavg",
             "two-attacked-fedavg-noscreen": "two-dropout-fedavg"}
"""Which arm each is compared with (default clean-fedavg). In a 2-reply round the best a defence
can do is to drop the attacker's reply: the reference is the same round with that device's
reply always rejected (NaN), i.e. the honest device alone. None: a reference itself."""
TOLERANCE = 0.02  # acc1_5 points (as a fraction) a robust arm may lose against the clean run


ROWS = {"generic": "federated-generic", "personalized": "federated"}
"""Which row of the run's results.json ("fedpic-results") each figure reads."""


def per_user(results: dict, which: str) -> Optional[dict[str, float]]:
    """acc1_5 per user at the run's main N (every user; the other N of the curve are on a sample of
    evaluation.curve_users only); None for a model that scores every crop NaN (it picks no crop)."""
    return None if results.get("model_broken") else main_per_user(results, ROWS[which])


def acc(results: dict, which: str) -> float:
    """Mean acc1_5 over users at the main N; a destroyed model: 0."""
    values = per_user(results, which)
    return 0.0 if values is None else float(np.mean(list(values.values())))


def paired_drop(reference: dict, arm: dict, which: str) -> Optional[dict]:
    """reference - arm, paired over the users both scored: mean and 95% CI half-width (points as a fraction)."""
    ref, got = per_user(reference, which), per_user(arm, which)
    if ref is None:
        return None
    users = sorted(set(ref) & set(got or ref))
    drops = [ref[u] - (got[u] if got is not None else 0.0) for u in users]
    mean, half = mean_ci(drops)
    return {"mean": mean, "ci95": half, "users": len(users)}


def run_arm(out: Path, config, data: Path, users: list[str], pre: Path, attackers: dict) -> dict:
    """Simulate + evaluate one arm (cached in out/results.json); a destroyed model is recorded as such."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    if out.exists():  # an interrupted earlier attempt
        shutil.rmtree(out)
    plan = SimulationPlan(config=config, data_dir=data, out_dir=out, users=users, holdout=[], init_model=pre)
    start = time.perf_counter()
    try:
        results = json.loads(run(plan, evaluate=True, client_mods=[attack_mod(attackers)] if attackers else [])
                             .read_text())
    except ValueError as exc:  # the evaluation refuses NaN scores: the poisoned model is destroyed
        if "non-finite prediction" not in str(exc):
            raise
        results = {"model_broken": True, "error": str(exc), "timing": {}}
    results["timing"]["arm_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: the demo population, generated once)")
    parser.add_argument("--config", type=Path, default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "attack")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "attack.json")
    args = parser.parse_args()
    args.data = demo_population(args.data)

    base = {"federation.rounds": args.rounds, "federation.population": args.devices, "federation.fraction": 1.0,
            "federation.eval_every": 0, "federation.personal_epochs": 2, "federation.max_images": 8,
            "federation.cpus_per_device": 1.0, "pre.epochs": 1, "progress": False}
    config = load_config(args.config, overrides=dict(base))
    users, holdout = split_population(Dataset(args.data), args.devices)
    args.work.mkdir(parents=True, exist_ok=True)
    pre = args.work / "pre.pt"
    if not pre.is_file():
        plan = SimulationPlan(config=config, data_dir=args.data, out_dir=args.work, users=users, holdout=holdout)
        pretrain_model(plan)
    arms, raw = {}, {}
    for name in args.arms:
        strategy, overrides, attackers, devices = ARMS[name]
        devices = devices or args.devices
        arm_config = load_config(args.config, overrides={**base, "federation.strategy": strategy,
                                                         "federation.population": devices, **overrides})
        out = args.work / name
        results = run_arm(out, arm_config, args.data, users[:devices], pre, attackers)
        raw[name] = results
        rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
        arms[name] = {"strategy": strategy, "overrides": overrides, "attackers": attackers, "devices": devices,
                      "capped_examples": sum(r.get("capped_examples", 0) for r in rounds),
                      "update_norm_max": max((r.get("update_norm_max") or 0.0 for r in rounds), default=None),
                      "model_broken": results.get("model_broken"),
                      "generic_acc1_5": acc(results, "generic"), "personalized_acc1_5": acc(results, "personalized"),
                      "rejected_nonfinite": sum(r.get("rejected_nonfinite", 0) for r in rounds),
                      "rejected_norm": sum(r.get("rejected_norm", 0) for r in rounds),
                      "seconds": results["timing"].get("arm_seconds")}
        print(f"{name:>26}: generic acc1_5 {arms[name]['generic_acc1_5']:.3f}  personalized "
              f"{arms[name]['personalized_acc1_5']:.3f}  rejected nan/norm {arms[name]['rejected_nonfinite']}/"
              f"{arms[name]['rejected_norm']}  capped {arms[name]['capped_examples']}", flush=True)
    for name, arm in arms.items():
        reference = REFERENCE.get(name, "clean-fedavg")
        clean = arms.get(reference)
        if clean:
            for which in ("generic_acc1_5", "personalized_acc1_5"):
                arm[f"{which}_drop"] = clean[which] - arm[which]
                arm[f"{which}_drop_paired"] = paired_drop(raw[reference], raw[name], which.split("_")[0])
            arm["reference"] = reference
            arm["within_tolerance"] = all(arm[f"{w}_drop"] <= TOLERANCE for w in ("generic_acc1_5",
                                                                                  "personalized_acc1_5"))
    for name, arm in arms.items():
        drops = [arm.get(f"{w}_acc1_5_drop_paired") for w in ("generic", "personalized")]
        if all(drops):
            print(f"{name:>26}: vs {arm['reference']}, paired over {drops[0]['users']} users: generic "
                  f"{-drops[0]['mean']:+.3f} +- {drops[0]['ci95']:.3f}, personalized {-drops[1]['mean']:+.3f} "
                  f"+- {drops[1]['ci95']:.3f}")
    payload = {"benchmark": "attack", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "data": str(args.data),
               "config": str(args.config), "devices": args.devices, "rounds": args.rounds,
               "attackers": {str(k): v for k, v in ATTACKERS.items()}, "scale_factor": 100.0,
               "tolerance": TOLERANCE, "arms": arms}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
