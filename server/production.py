"""The production roles: a server folder driving a public SuperLink, and a device joining it.

`fedpic deploy` (server/deploy.py) runs everything on one machine. Here the two sides are
separate commands on separate machines, as in production:

  server   `fedpic server start`: CA + TLS certificate for the names/addresses the devices
           use, `flower-superlink` with SuperNode authentication and a SQLite database in the
           server folder (enrolled keys, runs and the fedpic checkpoint survive a restart);
           `fedpic server enroll KEY.pub`: `flwr supernode register`; `fedpic server run`:
           `flwr run` of this app, `resume=true` continues after the last checkpointed round.
  device   `fedpic device keygen`: an EC P-384 key pair, the public half goes to the server;
           `fedpic device join`: `flower-supernode` with the server's CA certificate, its own
           private key and a node config naming its own data, user id and state folders.

The server folder holds pki/ (ca.crt to hand to devices, ca.key, server.pem/.key), flwr-home/
(the `fedpic-server` connection of the flwr CLI), superlink.db, logs/ and out/ (rounds.jsonl,
checkpoint.pt, model.pt).
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .pki import ServerPki, make_server_pki

CONNECTION = "fedpic-server"
APP_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
DEFAULT_PORT = 9093


class ProductionError(RuntimeError):
    """A Flower command of the server or a device failed."""


def tool(name: str) -> str:
    """A Flower executable next to this Python (the venv's bin), else from PATH."""
    candidate = BIN_DIR / name
    return str(candidate) if candidate.exists() else name


def flower_env(flwr_home: Optional[Path] = None) -> dict[str, str]:
    """Environment for Flower's processes: this venv first on PATH (Flower starts flwr-serverapp /
    flwr-clientapp by name), this app importable, no `uv sync` at run time."""
    env = dict(os.environ)
    paths = [str(APP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({"PATH": os.pathsep.join([str(BIN_DIR), env.get("PATH", "")]), "PYTHONPATH": os.pathsep.join(paths),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"})
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def _toml(value: object) -> str:
    return json.dumps(str(value))


def _local_address(bind: str, port: int) -> str:
    """Where the server's own flwr CLI reaches the SuperLink: loopback unless bound to one address."""
    if bind in ("0.0.0.0", "::", ""):
        return f"127.0.0.1:{port}"
    return f"[{bind}]:{port}" if ipaddress.ip_address(bind).version == 6 else f"{bind}:{port}"


@dataclass(frozen=True)
class ServerFolder:
    """Paths of one server folder (see the module docstring)."""

    root: Path

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def database(self) -> Path:
        return self.root / "superlink.db"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def enrolled(self) -> Path:
        return self.root / "enrolled.json"

    def pki(self) -> ServerPki:
        """The folder's certificates (made by `start`)."""
        pki = ServerPki(self.pki_dir / "ca.crt", self.pki_dir / "server.pem", self.pki_dir / "server.key")
        if not pki.server_cert.is_file():
            raise ProductionError(f"{self.root}: no certificates; run `fedpic server start --dir {self.root}` first")
        return pki

    def prepare(self, names: Sequence[str], addresses: Sequence[str], bind: str, port: int) -> ServerPki:
        """Certificates for the names/addresses and the flwr CLI connection to this SuperLink."""
        for folder in (self.flwr_home, self.out, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        bound = [] if bind in ("0.0.0.0", "::") else [bind]
        pki = make_server_pki(self.pki_dir, names, [*addresses, *bound])
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {_toml(_local_address(bind, port))}\nroot-certificates = {_toml(pki.ca_cert.resolve())}\n",
            encoding="utf-8")
        return pki

    def superlink_command(self, bind: str, port: int) -> list[str]:
        pki = self.pki()
        return [tool("flower-superlink"), "--ssl-ca-certfile", str(pki.ca_cert), "--ssl-certfile",
                str(pki.server_cert), "--ssl-keyfile", str(pki.server_key), "--enable-supernode-auth",
                "--database", str(self.database), "--disable-runtime-dependency-installation",
                "--host", bind, "--port", str(port)]

    # ---- the flwr CLI against this SuperLink -------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        result = subprocess.run([tool("flwr"), *args], env=flower_env(self.flwr_home), cwd=APP_DIR,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            detail = " ".join((result.stdout + result.stderr).split())[-600:]  # one line
            raise ProductionError(f"flwr {' '.join(args[:2])} failed ({result.returncode}): {detail}")
        return result

    def enroll(self, public_key: Path, name: Optional[str] = None) -> int:
        """Register a device's public key with the running SuperLink; returns its node id."""
        public_key = Path(public_key)
        if not public_key.is_file():
            raise FileNotFoundError(f"{public_key}: no such public key file")
        name = name or public_key.name.removesuffix(".pub")
        result = self.flwr("supernode", "register", str(public_key.resolve()), CONNECTION, "--name", name,
                           "--format", "json")
        try:
            node_id = int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError, TypeError):
            raise ProductionError(f"flwr supernode register: unexpected output {result.stdout!r}") from None
        known = json.loads(self.enrolled.read_text()) if self.enrolled.is_file() else {}
        known[name] = {"node-id": node_id, "public-key": public_key.read_text().strip()}
        self.enrolled.write_text(json.dumps(known, indent=1))
        return node_id

    def nodes(self) -> list[dict]:
        return list(json.loads(self.flwr("supernode", "list", CONNECTION, "--format", "json").stdout).get("nodes", []))

    def submit(self, config: str, overrides: Sequence[str], devices: int, resume: bool,
               init_model: Optional[Path] = None) -> int:
        """`flwr run` this app; the ServerApp writes into out/. Returns the run id."""
        from pic_core.config import resolve_config

        values = {"config": str(resolve_config(config).resolve()), "overrides": " ".join(overrides),
                  "out-dir": str(self.out.resolve()), "devices": devices, "resume": resume,
                  "init-model": str(Path(init_model).resolve()) if init_model else ""}
        run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        result = self.flwr("run", str(APP_DIR), CONNECTION, "--run-config", run_config, "--format", "json")
        try:
            return int(json.loads(result.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise ProductionError(f"flwr run: unexpected output {result.stdout!r}") from None

    def wait_run(self, run_id: int, timeout: float, poll: float = 5.0) -> str:
        """Poll until the run finishes; returns its status (e.g. 'finished:completed'). Each poll is a
        `flwr ls` process: not too often, the server's CPU is the ServerApp's."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            result = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
            runs = json.loads(result.stdout).get("runs", [])
            status = str(runs[0].get("status", "")) if runs else ""
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        raise ProductionError(f"run {run_id} not finished after {timeout:.0f}s (status {status!r})")


def node_config(data_dir: Path, user_id: str, state_dir: Path, threads: int = 1,
                crops_file: Optional[Path] = None) -> str:
    """The SuperNode's --node-config: the device's own folders (never taken from the run config)."""
    values = {"data-dir": Path(data_dir).resolve(), "user-id": user_id, "state-dir": Path(state_dir).resolve()}
    if crops_file is not None:
        values["crops-file"] = Path(crops_file).resolve()
    text = " ".join(f"{k}={_toml(v)}" for k, v in values.items())
    return f"{text} threads={int(threads)}"


def supernode_command(superlink: str, ca_cert: Path, private_key: Path, config: str,
                      clientappio_port: int = 9094) -> list[str]:
    """`flower-supernode` over TLS (the server's CA) with the device's key; no --insecure."""
    for path, what in ((ca_cert, "CA certificate"), (private_key, "private key")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such {what} file")
    return [tool("flower-supernode"), "--root-certificates", str(Path(ca_cert).resolve()), "--superlink", superlink,
            "--auth-supernode-private-key", str(Path(private_key).resolve()), "--node-config", config,
            "--host", "127.0.0.1", "--port", str(clientappio_port)]
