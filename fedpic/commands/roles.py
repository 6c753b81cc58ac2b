"""Production roles: `fedpic server start|enroll|nodes|run` and `fedpic device keygen|join`.

The server and each device run on their own machines; see docs/deployment.md and
server/production.py. `start` and `join` replace this process with the Flower daemon (exec),
so a service manager's signals reach Flower directly.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger("fedpic")


def _one_line_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A failed Flower command (ProductionError) is reported like bad input: one line, exit 2."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from server.production import ProductionError

        try:
            return func(args)
        except ProductionError as exc:
            if getattr(args, "verbose", False):
                raise
            print(f"fedpic {args.command} {args.action}: error: {exc}", file=sys.stderr)
            return 2
    return wrapper


def _server_start(args: argparse.Namespace) -> int:
    from server.production import ServerFolder, flower_env

    folder = ServerFolder(args.dir)
    if not args.name and not args.address:
        log.warning("no --name/--address: the certificate covers loopback only; devices on other machines "
                    "will refuse it")
    pki = folder.prepare(args.name, args.address, args.bind, args.port)
    command = folder.superlink_command(args.bind, args.port)
    print(f"SuperLink on {args.bind}:{args.port} (TLS, SuperNode authentication, database {folder.database}); "
          f"give devices {pki.ca_cert.resolve()}", flush=True)
    os.execve(command[0], command, flower_env(folder.flwr_home))
    return 0  # not reached


def _server_enroll(args: argparse.Namespace) -> int:
    from server.production import ServerFolder

    node_id = ServerFolder(args.dir).enroll(args.public_key, args.name)
    print(f"enrolled {args.public_key}: node id {node_id}")
    return 0


def _server_nodes(args: argparse.Namespace) -> int:
    from server.production import ServerFolder

    for node in ServerFolder(args.dir).nodes():
        print(f"{node.get('node-id', node.get('node_id', '?'))}\t{node.get('status', '')}\t{node.get('name', '')}")
    return 0


def _server_run(args: argparse.Namespace) -> int:
    from server.production import ServerFolder
    from server.round_log import LOG_FILE, read_rounds

    folder = ServerFolder(args.dir)
    folder.pki()
    overrides = list(args.overrides or [])
    if args.rounds is not None:
        overrides.append(f"federation.rounds={args.rounds}")
    if args.secure_aggregation:
        overrides.append("federation.secure_aggregation=true")
    run_id = folder.submit(args.config, overrides, args.devices, args.resume, args.init)
    log.info("run %d submitted; waiting (flwr log %d %s, FLWR_HOME=%s)", run_id, run_id, "fedpic-server",
             folder.flwr_home)
    status = folder.wait_run(run_id, args.timeout)
    print(f"run {run_id}: {status}")
    for record in read_rounds(folder.out / LOG_FILE):
        print(f"round {record['round']}: accepted {record.get('accepted', '-')} of {record.get('sampled', '-')} "
              f"sampled, {record.get('replies', '-')} replies")
    return 0 if status == "finished:completed" else 1


def _device_keygen(args: argparse.Namespace) -> int:
    from server.pki import device_key_at

    existed = Path(args.key).is_file()
    key = device_key_at(args.key)
    print(f"{'kept existing' if existed else 'wrote'} {key.private_key} (private, 0600); "
          f"send {key.public_key} to the server for `fedpic server enroll`")
    return 0


def _device_join(args: argparse.Namespace) -> int:
    from pic_core.data import DataError
    from server.production import flower_env, node_config, supernode_command

    if not Path(args.data).is_dir():
        raise DataError(f"{args.data}: no such data folder")
    if args.crops is not None and not Path(args.crops).is_file():
        raise DataError(f"{args.crops}: no such crops file")
    Path(args.state).mkdir(parents=True, exist_ok=True)
    config = node_config(args.data, args.user, args.state, args.threads, args.crops)
    command = supernode_command(args.superlink, args.ca, args.key, config, args.clientappio_port)
    print(f"joining {args.superlink} as {args.user} (TLS with {args.ca}, key {args.key})", flush=True)
    os.execve(command[0], command, flower_env())
    return 0  # not reached


def register(subparsers: argparse._SubParsersAction) -> None:
    """server, device."""
    server = subparsers.add_parser("server", help="the federation server on its own machine: TLS SuperLink with "
                                                  "SuperNode authentication (see docs/deployment.md)")
    sub = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("start", help="certificates for --name/--address, then run flower-superlink (foreground)")
    p.add_argument("--dir", type=Path, required=True, help="server folder (pki/, superlink.db, out/, logs/)")
    p.add_argument("--name", action="append", default=[], help="host name devices use (repeatable)")
    p.add_argument("--address", action="append", default=[], help="IP address devices use (repeatable)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=9093, help="HTTPS port of the SuperLink (default 9093)")
    p.set_defaults(func=_one_line_errors(_server_start))
    p = sub.add_parser("enroll", help="register a device's public key (from `fedpic device keygen`)")
    p.add_argument("public_key", type=Path, help="the device's .pub file")
    p.add_argument("--dir", type=Path, required=True, help="server folder of a running `fedpic server start`")
    p.add_argument("--name", help="name for the device (default: the file name)")
    p.set_defaults(func=_one_line_errors(_server_enroll))
    p = sub.add_parser("nodes", help="list the enrolled devices and their status")
    p.add_argument("--dir", type=Path, required=True, help="server folder")
    p.set_defaults(func=_one_line_errors(_server_nodes))
    p = sub.add_parser("run", help="run the federation on the enrolled devices and wait for it")
    p.add_argument("--dir", type=Path, required=True, help="server folder of a running `fedpic server start`")
    p.add_argument("--devices", type=int, default=0, help="devices to wait for (0: until the count settles)")
    p.add_argument("--rounds", type=int, help="override federation.rounds")
    p.add_argument("--init", type=Path, help="model file to start from (from `fedpic pretrain`)")
    p.add_argument("--resume", action="store_true", help="continue after the last checkpointed round in out/")
    p.add_argument("--timeout", type=float, default=86400.0, help="seconds to wait for the run")
    p.add_argument("--config", default="demo", help="fedpic YAML config: a file or a shipped name (default demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override sent to the ServerApp (repeatable)")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="Flower's SecAgg+: the server sees only the masked sum (needs strategy fedavg)")
    p.set_defaults(func=_one_line_errors(_server_run))

    device = subparsers.add_parser("device", help="a device on its own machine: key pair, join a server")
    sub = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("keygen", help="an EC P-384 key pair (KEY and KEY.pub); kept when present")
    p.add_argument("--key", type=Path, required=True, help="private key file to write (public: KEY.pub)")
    p.set_defaults(func=_one_line_errors(_device_keygen))
    p = sub.add_parser("join", help="run flower-supernode against the server (foreground)")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the server's address and port")
    p.add_argument("--ca", type=Path, required=True, help="the server's ca.crt")
    p.add_argument("--key", type=Path, required=True, help="this device's private key (enrolled on the server)")
    p.add_argument("--data", type=Path, required=True, help="this device's data folder")
    p.add_argument("--user", required=True, help="this device's user id")
    p.add_argument("--state", type=Path, required=True, help="folder for this device's personal state")
    p.add_argument("--crops", type=Path, help="the user's own crops (CSV or JSON lines; default: "
                                              "DATA/crops/USER.csv or .jsonl when present)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--clientappio-port", type=int, default=9094, help="local port between SuperNode and ClientApp")
    p.set_defaults(func=_one_line_errors(_device_join))
