"""`fedpic demo`: synthetic population -> federated simulation -> report, in one go."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common_options, config_from_args
from .data import IMAGES, USERS


def _cmd_demo(args: argparse.Namespace) -> int:
    from pic_core.data.synthetic import PopulationSpec, split_counts
    from simulations.demo import run_demo

    config = config_from_args(args)
    if args.candidates == "free":
        config.model.candidates = "free"  # the model then crops over the free set too
    prior, train, test = split_counts(args.images_per_user)
    spec = PopulationSpec(users=args.users, prior=prior, train=train, test=test, seed=config.seed,
                          candidates=args.candidates)
    report = run_demo(config, args.out, spec)
    print(f"report: {report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """demo."""
    p = subparsers.add_parser("demo", help="synthetic population -> federated simulation -> report, in one go")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--users", type=int, default=USERS, help="simulated users (default %(default)s)")
    p.add_argument("--images-per-user", type=int, default=IMAGES, help="photos per user (default %(default)s)")
    p.add_argument("--candidates", choices=("grid", "free"), default="grid",
                   help="candidate crops the users score and the model crops over: grid (GAIC anchors, default) "
                        "or free (smaller and off-centre crops, any taste; docs/cropping.md)")
    add_common_options(p, default_config="demo")
    p.set_defaults(func=_cmd_demo)
