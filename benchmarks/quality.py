"""Quality benchmark: every centralized baseline on the demo population, with the targets checked.

    python benchmarks/quality.py                       # --config quality, runs/bench/population
    python benchmarks/quality.py --config my.yaml --set finetune.lr=0.1 --out runs/bench/q2.json

Generates the demo population (40 users, default counts, seed 0) when --data does not exist,
runs generic / prior (d_u = 0) / local-only / centralized PIC / oracle for N = 5 and 10
(simulations.experiment.run_centralized, run folder --run-dir), and writes --out
(default runs/bench/quality.json): per method and N the population summary (mean, 95% CI,
users), paired gains over generic, and the targets, computed from the numbers:

  centralized acc1_5 >= generic acc1_5 + 0.15 at N = 5
  centralized acc1_5 >= local-only acc1_5 + 0.10 at N = 5
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
from simulations.report import build_report, paired_gain  # noqa: E402

TARGET_SHOTS = 5
MIN_USERS = 40
TARGETS = {  # name: (method, base method, minimum gain in acc1_5 at N = TARGET_SHOTS)
    "centralized_vs_generic": ("centralized", "generic", 0.15),
    "centralized_vs_local": ("centralized", "local", 0.10),
}


def check_targets(results: dict[tuple[str, int], PopulationResult], users: int) -> dict:
    """Each target's measured value, threshold and whether it is met (False when a method is missing)."""
    out = {}
    for name, (method, base, threshold) in TARGETS.items():
        better, worse = results.get((method, TARGET_SHOTS)), results.get((base, TARGET_SHOTS))
        value = None
        if better and worse:
            value = (better.summary(("acc1_5",))["acc1_5"]["mean"] - worse.summary(("acc1_5",))["acc1_5"]["mean"])
        out[name] = {"description": f"{method} acc1_5 - {base} acc1_5 at N = {TARGET_SHOTS} >= {threshold:.2f}",
                     "value": value, "threshold": threshold, "met": value is not None and value >= threshold,
                     "shortfall": None if value is None else max(0.0, threshold - value)}
    out["population_size"] = {"description": f"users evaluated >= {MIN_USERS}", "value": users,
                              "threshold": MIN_USERS, "met": users >= MIN_USERS}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quality",
                        help="YAML config (default: the shipped quality config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set finetune.epochs=20")
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "bench" / "population",
                        help="dataset folder; the demo population is generated here when absent")
    parser.add_argument("--users", type=int, default=40, help="users when generating the population")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench" / "quality_run",
                        help="run folder for models, results.json, gallery.json, report.md")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "quality.json")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--local-epochs", type=int, default=LocalOnlySettings.epochs)
    parser.add_argument("--local-lr", type=float, default=LocalOnlySettings.lr)
    parser.add_argument("--no-report", action="store_true", help="skip report.md in the run folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    config = load_config(args.config, overrides=parse_overrides(args.overrides))
    if not args.data.exists():
        logging.getLogger("fedpic.bench").info("generating the demo population in %s", args.data)
        generate(PopulationSpec(users=args.users, seed=0), args.data, workers=min(2, os.cpu_count() or 1),
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
    report = {"benchmark": "quality", "command": " ".join([Path(sys.argv[0]).name] + list(argv or sys.argv[1:])),
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
        print(f"target {name}: {target['value']} (needs {target['threshold']}) -> {'met' if target['met'] else 'MISSED'}")
    print(f"wrote {args.out} in {seconds:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
