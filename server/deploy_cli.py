"""`fedpic deploy`: the federated prior stage on real Flower processes (TLS + authenticated devices).

    fedpic deploy --data runs/demo/population --out runs/deploy --devices 3 --config configs/tiny.yaml \\
        --set federation.rounds=2
    fedpic deploy ... --resume       # same folder: same CA, keys, SuperLink database; next round

One SuperNode per user (the first --devices users of the dataset). Everything listens on
127.0.0.1 only. The output folder keeps pki/ (CA, server certificate, device keys),
flwr-home/config.toml (the `local-deployment` connection), logs/, server/ (rounds.jsonl,
checkpoint.pt, model.pt) and devices/<user>/ (each device's personal state).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pic_core.data import DataError
from pic_core.data.dataset import Dataset

log = logging.getLogger("fedpic.deploy")


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import Deployment, DeploymentSettings, Ports
    from .round_log import LOG_FILE, read_rounds

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
    p = subparsers.add_parser("deploy", help="run the federation on real Flower processes: TLS SuperLink, "
                                             "authenticated SuperNodes (loopback only)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory; one device per user")
    p.add_argument("--out", type=Path, required=True, help="deployment folder (keys, logs, server output)")
    p.add_argument("--devices", type=int, default=2, help="number of SuperNodes (first N users)")
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="fedpic YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override sent to the ServerApp (repeatable)")
    p.add_argument("--rounds", type=int, help="override federation.rounds")
    p.add_argument("--init", type=Path, help="model file to start from (from `fedpic pretrain`)")
    p.add_argument("--resume", action="store_true", help="continue from the server checkpoint in --out")
    p.add_argument("--port", type=int, default=39200, help="SuperLink port on 127.0.0.1 (SuperNodes: +10+i)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per device")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run to finish")
    p.set_defaults(func=_cmd_deploy)
