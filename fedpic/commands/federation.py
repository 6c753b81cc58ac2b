"""Federation commands: `fedpic simulate` (Flower's simulation engine, one simulated device per
user) and `fedpic deploy` (real Flower processes: TLS SuperLink, authenticated SuperNodes)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import add_common_options, config_from_args

log = logging.getLogger("fedpic")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import make_plan, run

    overrides = list(args.overrides or [])
    if args.rounds is not None:
        overrides.append(f"federation.rounds={args.rounds}")
    if args.population is not None:
        overrides.append(f"federation.population={args.population}")
    if args.ray_address is not None:
        overrides.append(f"federation.ray_address={args.ray_address}")
    if args.secure_aggregation:
        overrides.append("federation.secure_aggregation=true")
    args.overrides = overrides
    plan = make_plan(config_from_args(args), args.data, args.out, args.init, args.resume)
    results = run(plan, evaluate=not args.skip_eval)
    _print_privacy(results)
    return 0


def _print_privacy(results: Path) -> None:
    """ε of a DP run on stdout: a DP result without its ε is not a statement."""
    import json

    spent = (json.loads(results.read_text()).get("privacy") if results.exists() else None) or None
    if spent:
        print(f"DP-FedAvg: epsilon {spent['epsilon']:.3f} at delta {spent['delta']:.3g} (noise multiplier "
              f"{spent['noise_multiplier']:g}, q {spent['sampling_rate']:.3f}, {spent['rounds']} rounds)")


def _cmd_deploy(args: argparse.Namespace) -> int:
    from pic_core.data import DataError
    from pic_core.data.dataset import Dataset
    from server.deploy import Deployment, DeploymentSettings, Ports
    from server.round_log import LOG_FILE, read_rounds

    users = Dataset(args.data).user_ids
    if not 1 <= args.devices <= len(users):
        raise DataError(f"{args.data}: --devices {args.devices}, the dataset has {len(users)} users")
    overrides = list(args.overrides or [])
    if args.rounds is not None:
        overrides.append(f"federation.rounds={args.rounds}")
    settings = DeploymentSettings(out_dir=args.out, data_dir=args.data, users=users[:args.devices],
                                  config=args.config, overrides=overrides, ports=Ports(args.port),
                                  init_model=args.init, threads=args.threads)
    with Deployment(settings) as deployment:
        deployment.start()
        log.info("SuperLink on 127.0.0.1:%d (TLS, SuperNode auth); %d SuperNodes; logs in %s", args.port,
                 args.devices, deployment.logs)
        run_id = deployment.submit(resume=args.resume)
        status = deployment.wait_run(run_id, args.timeout)
        rounds = read_rounds(deployment.server_out / LOG_FILE)
    print(f"run {run_id}: {status}")
    for record in rounds:
        print(f"round {record['round']}: accepted {record.get('accepted', '-')} of {record.get('sampled', '-')} "
              f"sampled, {record.get('replies', '-')} replies")
    return 0 if status == "finished:completed" else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """simulate, deploy."""
    p = subparsers.add_parser("simulate", help="federated prior training with Flower's simulation engine "
                                               "(one simulated device per user)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory (images/, generic.csv, users/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.pt, rounds.jsonl, results.json)")
    p.add_argument("--init", type=Path, help="start from this model file (default: pre stage on generic.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--rounds", type=int, help="override federation.rounds")
    p.add_argument("--population", type=int, help="override federation.population (first N users take part)")
    p.add_argument("--skip-eval", action="store_true", help="no population evaluation after training")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="Flower's SecAgg+: the server sees only the masked sum (federation.secure_aggregation)")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="run the simulated devices on this existing Ray cluster (the head's address from "
                        "`ray start --head`; default: a fresh local Ray on this machine)")
    add_common_options(p)
    p.set_defaults(func=_cmd_simulate)

    p = subparsers.add_parser("deploy", help="run the federation on real Flower processes: TLS SuperLink, "
                                             "authenticated SuperNodes (loopback only)",
                              description="One SuperNode per user (the first --devices users of the dataset), all "
                                          "on 127.0.0.1. The output folder keeps pki/, flwr-home/, logs/, server/ "
                                          "(rounds.jsonl, checkpoint.pt, model.pt) and devices/<user>/. Run it "
                                          "again with --resume: same CA, keys and SuperLink database; next round.")
    p.add_argument("--data", type=Path, required=True, help="dataset directory; one device per user")
    p.add_argument("--out", type=Path, required=True, help="deployment folder (keys, logs, server output)")
    p.add_argument("--devices", type=int, default=2, help="number of SuperNodes (first N users)")
    p.add_argument("--config", default="demo", help="fedpic YAML config: a file or a shipped name (default demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override sent to the ServerApp (repeatable)")
    p.add_argument("--rounds", type=int, help="override federation.rounds")
    p.add_argument("--init", type=Path, help="model file to start from (from `fedpic pretrain`)")
    p.add_argument("--resume", action="store_true", help="continue from the server checkpoint in --out")
    p.add_argument("--port", type=int, default=39200, help="SuperLink port on 127.0.0.1 (SuperNodes: +10+i)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per device")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run to finish")
    p.set_defaults(func=_cmd_deploy)
