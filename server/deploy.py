"""A real Flower deployment on this machine: TLS SuperLink, authenticated SuperNodes, `flwr run`.

Unlike `fedpic simulate` (one process, Ray), every part is its own Flower process, the way
devices and a server meet in production, bound to loopback addresses only:

  flower-superlink  TLS (CA + certificate from server/pki.py), --enable-supernode-auth,
                    registered devices kept in a SQLite file so a restarted SuperLink knows them
  flwr supernode register <key.pub> local-deployment      one per device (Flower >= 1.20 flow;
                    the old --auth-list-public-keys is refused by Flower 1.41)
  flower-supernode  one per device, with its private key and its node config
                    (data-dir, user-id, state-dir): a device names its own data
  flwr run <app> local-deployment --run-config ...        the ServerApp/ClientApp of pyproject.toml

Flower's CLI reads its connections from $FLWR_HOME/config.toml; the deployment writes its own
FLWR_HOME inside the output folder with a `local-deployment` connection (address of the
Control API + the CA certificate), so nothing in the user's ~/.flwr changes.
Process groups are used so that killing a device or the server also kills the ClientApp /
ServerApp subprocesses Flower starts: that is what the fault tests do.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Self, Sequence

from pic_core.config import resolve_config

from .pki import DeviceKey, ServerPki, make_device_key, make_server_pki

log = logging.getLogger("fedpic.deploy")

CONNECTION = "local-deployment"
APP_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


class DeployError(RuntimeError):
    """A Flower process of the deployment failed to start, register or finish."""


def _tool(name: str) -> str:
    """A Flower executable next to this Python (the venv's bin), else from PATH."""
    candidate = BIN_DIR / name
    return str(candidate) if candidate.exists() else name


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, process: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if process is not None and process.poll() is not None:
            raise DeployError(f"process {process.args[0]} exited with {process.returncode} before port {port} opened")
        time.sleep(0.2)
    raise DeployError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f}s")


@dataclass(frozen=True)
class Ports:
    """Loopback ports. Flower 1.41 serves the SuperLink's Control, Fleet and runtime APIs over one
    HTTPS port (--host/--port); each SuperNode has its own ClientAppIo port."""

    base: int = 39200

    @property
    def link(self) -> int:
        return self.base

    def supernode(self, index: int) -> int:
        return self.base + 10 + index


@dataclass
class Device:
    """One SuperNode: its user, key and process."""

    index: int
    user_id: str
    key: DeviceKey
    process: Optional[subprocess.Popen] = None
    node_id: Optional[int] = None


@dataclass
class DeploymentSettings:
    out_dir: Path
    data_dir: Path
    users: list[str]  # one SuperNode per user
    config: Path | str  # fedpic YAML config (a file or a shipped name), read by the ServerApp
    overrides: list[str] = field(default_factory=list)  # "federation.rounds=2" ...
    ports: Ports = field(default_factory=Ports)
    init_model: Optional[Path] = None
    threads: int = 1  # torch threads per device


def _toml_str(value: str) -> str:
    return json.dumps(str(value))


class Deployment:
    """Start, drive and stop the processes of one local deployment (see the module docstring)."""

    def __init__(self, settings: DeploymentSettings):
        self.settings = settings
        self.out = Path(settings.out_dir).resolve()
        self.flwr_home = self.out / "flwr-home"
        self.logs = self.out / "logs"
        self.server_out = self.out / "server"
        self.state_dir = self.out / "devices"
        self.pki: Optional[ServerPki] = None
        self.superlink: Optional[subprocess.Popen] = None
        self.devices: list[Device] = []
        self._log_handles: list = []

    # ---- set-up -------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(APP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        # Flower starts flower-superexec / flwr-serverapp / flwr-clientapp by name: same venv first
        env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
        env.update({"FLWR_HOME": str(self.flwr_home), "PYTHONPATH": os.pathsep.join(paths),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"})
        return env

    def prepare(self) -> None:
        """Certificates, one key per device, and the `local-deployment` connection for the flwr CLI."""
        for folder in (self.flwr_home, self.logs, self.server_out, self.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.pki = make_server_pki(self.out / "pki")
        self.devices = [Device(i, user, make_device_key(self.out / "pki" / "devices", f"device{i}"))
                        for i, user in enumerate(self.settings.users)]
        ports = self.settings.ports
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\naddress = {_toml_str(f'{LOOPBACK}:{ports.link}')}\n"
            f"root-certificates = {_toml_str(self.pki.ca_cert)}\n", encoding="utf-8")

    def _spawn(self, command: Sequence[str], log_name: str) -> subprocess.Popen:
        handle = open(self.logs / log_name, "ab")  # noqa: SIM115  open while the process runs; close() shuts it
        self._log_handles.append(handle)
        handle.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        handle.flush()
        # own process group: a kill takes the ServerApp/ClientApp subprocesses with it
        return subprocess.Popen(list(command), stdout=handle, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.out, start_new_session=True)

    def _flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        result = subprocess.run([_tool("flwr"), *args], env=self.env, cwd=APP_DIR, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise DeployError(f"flwr {' '.join(args)} failed ({result.returncode}): "
                              f"{(result.stdout + result.stderr).strip()[-2000:]}")
        return result

    # ---- SuperLink ----------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60.0) -> None:
        assert self.pki is not None, "prepare() first"
        ports = self.settings.ports
        self.superlink = self._spawn([
            _tool("flower-superlink"), "--ssl-ca-certfile", str(self.pki.ca_cert),
            "--ssl-certfile", str(self.pki.server_cert), "--ssl-keyfile", str(self.pki.server_key),
            "--enable-supernode-auth", "--database", str(self.out / "superlink.db"),
            "--disable-runtime-dependency-installation",
            "--host", LOOPBACK, "--port", str(ports.link)], "superlink.log")
        wait_for_port(ports.link, timeout, self.superlink)

    def register(self, device: Device) -> int:
        """Register the device's public key with the SuperLink; returns its node id."""
        result = self._flwr("supernode", "register", str(device.key.public_key), CONNECTION,
                            "--name", device.key.name, "--format", "json")
        try:
            device.node_id = int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError, TypeError):
            raise DeployError(f"flwr supernode register: unexpected output {result.stdout!r}") from None
        return device.node_id

    def registered_nodes(self) -> list[dict]:
        result = self._flwr("supernode", "list", CONNECTION, "--format", "json")
        return list(json.loads(result.stdout).get("nodes", []))

    # ---- SuperNodes ---------------------------------------------------------------------------
    def start_supernode(self, device: Device, key: Optional[DeviceKey] = None) -> subprocess.Popen:
        """Start the device's SuperNode (`key` overrides its identity: an unregistered device)."""
        assert self.pki is not None, "prepare() first"
        key = key or device.key
        node_config = (f"data-dir={_toml_str(self.settings.data_dir.resolve())} user-id={_toml_str(device.user_id)} "
                       f"state-dir={_toml_str(self.state_dir)} threads={self.settings.threads}")
        device.process = self._spawn([
            _tool("flower-supernode"), "--root-certificates", str(self.pki.ca_cert),
            "--superlink", f"{LOOPBACK}:{self.settings.ports.link}", "--auth-supernode-private-key",
            str(key.private_key), "--node-config", node_config, "--host", LOOPBACK,
            "--port", str(self.settings.ports.supernode(device.index))], f"supernode{device.index}.log")
        return device.process

    def rejoin(self, device: Device, timeout: float = 180.0, settle: float = 10.0) -> int:
        """Restart a device's SuperNode until the SuperLink accepts it again; returns the attempts.

        A device that crashed is still "online" for the SuperLink until its heartbeat expires,
        and Flower refuses to activate the same key twice (the SuperNode exits with code 305),
        so a rejoining device retries until it stays up for `settle` seconds.
        """
        deadline = time.monotonic() + timeout
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            process = self.start_supernode(device)
            try:
                process.wait(timeout=settle)
            except subprocess.TimeoutExpired:
                return attempts
            time.sleep(3.0)
        raise DeployError(f"device {device.key.name} could not rejoin within {timeout:.0f}s; see "
                          f"{self.logs / f'supernode{device.index}.log'}")

    def kill_supernode(self, device: Device, sig: int = signal.SIGKILL) -> None:
        """Kill the device's SuperNode and its ClientApp (a crashed or unplugged device)."""
        if device.process is not None and device.process.poll() is None:
            os.killpg(device.process.pid, sig)
            device.process.wait(timeout=30)

    def kill_superlink(self, sig: int = signal.SIGKILL) -> None:
        """Kill the SuperLink and the ServerApp it runs (a crashed server)."""
        if self.superlink is not None and self.superlink.poll() is None:
            os.killpg(self.superlink.pid, sig)
            self.superlink.wait(timeout=30)
        self._kill_strays(("flwr-serverapp", "flower-superexec --root-certificates"))

    def _kill_strays(self, markers: Sequence[str]) -> None:
        """Flower's SuperExec detaches the apps into their own sessions; find ours by FLWR_HOME."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            mine = f"FLWR_HOME={self.flwr_home}".encode() in environ.split(b"\0")
            if mine and any(marker in cmdline for marker in markers) and int(proc.name) != os.getpid():
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ---- runs ---------------------------------------------------------------------------------
    def run_config(self, resume: bool = False) -> str:
        settings = self.settings
        values = {"config": str(resolve_config(settings.config).resolve()), "overrides": " ".join(settings.overrides),
                  "out-dir": str(self.server_out), "state-dir": str(self.state_dir),
                  "data-dir": str(settings.data_dir.resolve()), "devices": len(self.devices),
                  "init-model": str(Path(settings.init_model).resolve()) if settings.init_model else "",
                  "resume": resume}
        return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())

    def submit(self, resume: bool = False) -> int:
        """`flwr run` the app against the SuperLink; returns the run id."""
        result = self._flwr("run", str(APP_DIR), CONNECTION, "--run-config", self.run_config(resume),
                            "--format", "json")
        try:
            return int(json.loads(result.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise DeployError(f"flwr run: unexpected output {result.stdout!r}") from None

    def run_status(self, run_id: int) -> str:
        result = self._flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        runs = json.loads(result.stdout).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def wait_run(self, run_id: int, timeout: float, poll: float = 5.0) -> str:
        """Block until the run finishes; returns its final status (e.g. 'finished:completed').
        Each poll starts a `flwr ls` process (about a second of CPU), so not more often than `poll`."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        raise DeployError(f"run {run_id} not finished after {timeout:.0f}s (status {status!r}); "
                          f"logs in {self.logs}")

    @property
    def registry(self) -> Path:
        """device name -> node id of the keys this SuperLink database has registered."""
        return self.out / "registered.json"

    def register_all(self) -> None:
        """Register every device not yet in the SuperLink's database (kept across restarts)."""
        known = json.loads(self.registry.read_text()) if self.registry.is_file() else {}
        for device in self.devices:
            if device.key.name in known:
                device.node_id = int(known[device.key.name])
                continue
            known[device.key.name] = self.register(device)
            self.registry.write_text(json.dumps(known, indent=1))

    def start(self) -> None:
        """Everything up to a federation ready to run: certificates, SuperLink, keys, SuperNodes."""
        self.prepare()
        self.start_superlink()
        self.register_all()
        for device in self.devices:
            self.start_supernode(device)

    def stop(self) -> None:
        for device in self.devices:
            self.kill_supernode(device, signal.SIGTERM)
        self.kill_superlink(signal.SIGTERM)
        self._kill_strays(("flwr-serverapp", "flwr-clientapp", "flower-superexec", "flower-supernode"))
        for handle in self._log_handles:
            handle.close()
        self._log_handles.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
