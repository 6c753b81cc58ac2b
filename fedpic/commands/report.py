"""Experiment commands: `fedpic baselines` (the centralized comparison on a dataset) and
`fedpic report` (markdown + plots + crop galleries of a run folder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common_options, config_from_args

METHODS = ("generic", "pre-finetune", "pre-finetune-du", "prior", "local", "centralized", "centralized-du",
           "centralized-compact", "oracle")
"""simulations.baselines.METHODS' ids (a literal here so parsing needs no torch; a test checks they agree)."""
LOCAL_EPOCHS, LOCAL_LR = 30, 1e-3
"""simulations.baselines.LocalOnlySettings' defaults (likewise)."""


def _cmd_baselines(args: argparse.Namespace) -> int:
    from simulations.baselines import LocalOnlySettings
    from simulations.experiment import run_centralized

    config = config_from_args(args)
    payload = run_centralized(args.data, config, args.out, shots=args.shots,
                              local=LocalOnlySettings(args.local_epochs, args.local_lr),
                              methods=args.methods, gallery_users=args.gallery_users)
    for result in payload["results"]:
        stats = result["summary"].get("acc1_5", {})
        print(f"N={result['shots']:<3} {result['method']:>15}: acc1_5 {stats.get('mean', float('nan')):.3f} "
              f"+- {stats.get('ci95') if stats.get('ci95') is not None else float('nan'):.3f} "
              f"over {stats.get('users', 0)} users")
    for name, entries in payload.get("gains", {}).items():
        main = payload.get("main_shots")
        for key, stats in entries.items():
            if key.endswith(f"@{main}") and stats.get("ci95") is not None:
                print(f"N={main:<3} {key.split('@')[0]:>15} - {name}: {stats['mean']:+.3f} +- {stats['ci95']:.3f} "
                      f"(paired over {stats['users']} users)")
    print(f"wrote {Path(args.out) / 'results.json'}; `fedpic report {args.out}` writes the report")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from simulations.report import build_report

    path = build_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """baselines, report."""
    p = subparsers.add_parser("baselines", help="train and evaluate every centralized baseline on a dataset folder")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (images/, generic.csv, users/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: models, results.json, gallery.json")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="few-shot images per user (default 5 10)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="which methods (default: all)")
    p.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS,
                   help=f"local-only: epochs from scratch on the N shots (default {LOCAL_EPOCHS})")
    p.add_argument("--local-lr", type=float, default=LOCAL_LR,
                   help=f"local-only: Adam learning rate (default {LOCAL_LR})")
    p.add_argument("--gallery-users", type=int, default=4, help="users per family in the crop galleries")
    add_common_options(p)
    p.set_defaults(func=_cmd_baselines)

    p = subparsers.add_parser("report", help="markdown report with plots and crop galleries of a run folder")
    p.add_argument("run_dir", type=Path, help="folder with results.json (and/or */results.json, rounds.jsonl)")
    p.set_defaults(func=_cmd_report)
