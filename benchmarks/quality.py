"""Quality benchmark: every centralized row on one population, with the issue-13 targets checked.

    python benchmarks/quality.py                       # --config quality, runs/bench/population (seed 0)
    python benchmarks/quality.py --population-seed 1   # a second population: runs/bench/population_seed1
    python benchmarks/quality.py --config my.yaml --set finetune.lr=0.1 --out runs/bench/q2.json

Generates the population (--users users, default counts, seed --population-seed) when --data does
not exist, runs the rows of simulations/evaluation.py (generic, pre-finetune, pre-finetune-du, prior,
local-only, centralized, centralized-du, centralized-compact, oracle) at N = --shots on every user and the other N of
evaluation.shots on the curve sample (simulations.experiment.run_centralized, run folder --run-dir),
and writes --out: per method and N the population summary (mean, 95% CI, users), the paired gains
over pre-finetune and generic, and the targets with met / missed, computed from the numbers:

  centralized - pre-finetune   >= +0.08 acc1_5 at N = 5, paired 95% CI above 0   (issue 13)
  centralized-du - pre-finetune >= 0 at N = 5 (d_u alone against pre-finetune with head offsets)
  centralized-compact - pre-finetune >= 0 at N = 5 (d_u + objective readout, 209 floats, likewise)
  centralized - generic        >= +0.15 at N = 5;  centralized - local-only >= +0.10 at N = 5
  at least 40 users evaluated
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pic_core.config import load_config, parse_overrides, to_dict  # noqa: E402
from pic_core.data.synthetic import PopulationSpec, generate  # noqa: E402
from pic_core.protocol import PopulationResult, json_safe  # noqa: E402
from simulations.baselines import METHODS, LocalOnlySettings  # noqa: E402
from simulations.experiment import RESULTS_FILE, read_results, run_centralized, write_results  # noqa: E402
from simulations.evaluation import paired_gains, paired_target  # noqa: E402
from simulations.report import build_report, paired_gain  # noqa: E402

TARGET_SHOTS = 5
MIN_USERS = 40
TARGETS = {  # name: (method, base method, minimum paired gain in acc1_5 at N = TARGET_SHOTS, CI above 0)
    "centralized_vs_pre_finetune": ("centralized", "pre-finetune", 0.08, True),
    "centralized_du_vs_pre_finetune": ("centralized-du", "pre-finetune", 0.0, False),
    "centralized_compact_vs_pre_finetune": ("centralized-compact", "pre-finetune", 0.0, False),
    "centralized_vs_generic": ("centralized", "generic", 0.15, False),
    "centralized_vs_local": ("centralized", "local", 0.10, False),
}


def check_targets(results: dict[tuple[str, int], PopulationResult], users: int) -> dict:
    """Each target's measured paired gain, threshold and whether it is met (False when a row is missing)."""
    gains = paired_gains(list(results.values()))
    for (method, n), result in results.items():  # gains over local-only too (not a GAIN_BASES row)
        base = results.get(("local", n))
        if base is not None and method != "local" and (entry := paired_gain(result, base)) is not None:
            gains.setdefault("local", {})[f"{method}@{n}"] = entry
    out = {name: paired_target(gains, method, base, TARGET_SHOTS, threshold, ci)
           for name, (method, base, threshold, ci) in TARGETS.items()}
    out["population_size"] = {"description": f"users evaluated >= {MIN_USERS}", "value": users,
                              "threshold": MIN_USERS, "met": users >= MIN_USERS}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quality",
                        help="YAML config (default: the shipped quality config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set finetune.epochs=20")
    parser.add_argument("--population-seed", type=int, default=0,
                        help="seed of the generated population (default 0, the demo population); another seed "
                             "gives another population (other tastes, images and, with --users, family sizes)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder; generated here when absent (default runs/bench/population, "
                             "runs/bench/population_seed<S> for another seed)")
    parser.add_argument("--users", type=int, default=40, help="users when generating the population")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder for models, results.json, gallery.json, report.md "
                             "(default runs/bench/quality_run[_seed<S>])")
    parser.add_argument("--out", type=Path, default=None,
                        help="benchmark JSON (default runs/bench/quality[_seed<S>].json)")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--local-epochs", type=int, default=LocalOnlySettings.epochs)
    parser.add_argument("--local-lr", type=float, default=LocalOnlySettings.lr)
    parser.add_argument("--no-report", action="store_true", help="skip report.md in the run folder")
    args = parser.parse_args(argv)
    tag = "" if args.population_seed == 0 else f"_seed{args.population_seed}"
    bench = ROOT / "runs" / "bench"
    args.data = args.data or bench / f"population{tag}"
    args.run_dir = args.run_dir or bench / f"quality_run{tag}"
    args.out = args.out or bench / f"quality{tag}.json"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config = load_config(args.config, overrides=parse_overrides(args.overrides))
    if not args.data.exists():
        logging.getLogger("fedpic.bench").info("generating the population (seed %d) in %s", args.population_seed,
                                               args.data)
        generate(PopulationSpec(users=args.users, seed=args.population_seed), args.data, workers=min(2, os.cpu_count() or 1),
                 progress=config.progress)

    start = time.perf_counter()
    run_centralized(args.data, config, args.run_dir, shots=args.shots,
                    local=LocalOnlySettings(args.local_epochs, args.local_lr), methods=args.methods)
    seconds = time.perf_counter() - start
    payload, results = read_results(args.run_dir / RESULTS_FILE)
    by_key = {(r.method, r.shots): r for r in results}
    targets = check_targets(by_key, payload["users"])
    payload["targets"] = targets
    write_results(args.run_dir / RESULTS_FILE, json_safe(payload))

    summary = {f"{r.method}@{r.shots}": r.summary() for r in results}
    gains = {}
    for (method, n), result in by_key.items():
        base = by_key.get(("generic", n))
        if base is not None and method != "generic":
            gains[f"{method}@{n}"] = paired_gain(result, base)
    report = {"population_seed": args.population_seed, "main_shots": payload.get("main_shots"),
              "evaluated": payload.get("evaluated"), "gains": payload.get("gains"),"benchmark": "quality", "command": " ".join([Path(sys.argv[0]).name] + list(argv or sys.argv[1:])),
              "config_path": str(args.config), "config": to_dict(config), "data": str(args.data),
              "run_dir": str(args.run_dir), "users": payload["users"], "shots": args.shots,
              "local_only": payload.get("local_only"), "summary": summary, "gains_over_generic_acc1_5": gains,
              "targets": targets, "all_targets_met": all(t["met"] for t in targets.values()),
              "seconds": round(seconds, 1), "timing": payload.get("timing"),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.is_available()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    if not args.no_report:
        build_report(args.run_dir)
    for key, stats in summary.items():
        acc = stats.get("acc1_5", {})
        print(f"{key:>16}: acc1_5 {acc.get('mean', float('nan')):.3f} +- {acc.get('ci95', float('nan')):.3f}")
    for name, target in targets.items():
        value = target["value"]
        shown = f"{value:+.3f}" if isinstance(value, float) else str(value)
        ci = f" +- {target['ci95']:.3f}" if isinstance(target.get("ci95"), float) else ""
        print(f"target {name}: {shown}{ci} (needs {target['threshold']}) -> {'met' if target['met'] else 'MISSED'}")
    print(f"wrote {args.out} in {seconds:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
