"""Quality cost of DP-FedAvg: acc1_5 of `fedpic simulate` runs against a run without DP.

Reads RUN_DIR/NAME/results.json for each NAME given (the first is the baseline) and prints,
per run, ε at δ = 1/devices, the noise multiplier and the federated method's acc1_5 with the
paired per-user difference to the baseline (same users, same test crops). Writes
runs/bench/privacy.json. The runs themselves are `fedpic simulate` calls (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from bench_models import main_per_user  # benchmarks/, beside this script

METHOD, KEY = "federated", "acc1_5"


def per_user(payload: dict, method: str = METHOD, key: str = KEY) -> dict[str, float]:
    return main_per_user(payload, method, key)


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Mean of a - b over shared users and the half-width of its normal 95% interval."""
    diff = np.array([a[u] - b[u] for u in sorted(set(a) & set(b))])
    half = 1.96 * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("names", nargs="+", help="run folders under RUN_DIR; the first is the baseline")
    args = parser.parse_args()
    payloads = {n: json.loads((args.run_dir / n / "results.json").read_text()) for n in args.names}
    base = per_user(payloads[args.names[0]])
    rows = []
    print(f"| run | ε (δ = 1/devices) | noise multiplier | {KEY} | paired Δ vs {args.names[0]} | federated s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, payload in payloads.items():
        scores = per_user(payload)
        spent = payload.get("privacy") or {}
        delta, half = paired(scores, base)
        rows.append({"run": name, "privacy": spent, KEY: float(np.mean(list(scores.values()))),
                     "paired_delta": delta, "paired_ci95": half,
                     "federated_seconds": payload["timing"].get("federated_seconds")})
        eps = f"{spent['epsilon']:.2f}" if spent else "∞ (no DP)"
        print(f"| {name} | {eps} | {spent.get('noise_multiplier', '-')} | {rows[-1][KEY]:.3f} | "
              f"{delta:+.3f} ± {half:.3f} | {rows[-1]['federated_seconds']:.0f} |")
    out = Path("runs/bench/privacy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
