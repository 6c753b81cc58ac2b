"""Two hosts: the server in one network namespace, the devices in another, over a veth link.

The production commands only (`fedpic server start|enroll|run`, `fedpic device keygen|join`):
TLS with a certificate for the address the test assigns, SuperNode authentication, one
device whose key was never enrolled (refused), then 2 rounds with the tiny config. Needs
root and `ip` (network namespaces); skips with the reason otherwise. The namespaces and
every process in them are removed whatever happens.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_toy_dataset, wait_for as _wait
from server.round_log import LOG_FILE, read_rounds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
PORT = 9093
OVERRIDES = ["federation.personal_epochs=1", "federation.eval_every=0", "federation.refit=false",
             "federation.round_timeout=90", "federation.max_images=2", "federation.min_replies=2"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class Hosts:
    """Two namespaces joined by a veth pair: server 10.231.N.1/30, devices 10.231.N.2/30."""

    def __init__(self) -> None:
        tag = os.getpid() % 250
        self.server_ns, self.device_ns = f"fedpic-srv-{os.getpid()}", f"fedpic-dev-{os.getpid()}"
        self.server_ip, self.device_ip = f"10.231.{tag}.1", f"10.231.{tag}.2"
        self.made: list[str] = []

    def make(self) -> None:
        for ns in (self.server_ns, self.device_ns):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        veth = f"fp{os.getpid() % 100000}"
        _ip("link", "add", f"{veth}s", "netns", self.server_ns, "type", "veth", "peer", "name", f"{veth}d",
            "netns", self.device_ns)
        for ns, dev, address in ((self.server_ns, f"{veth}s", self.server_ip),
                                 (self.device_ns, f"{veth}d", self.device_ip)):
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def kill_all(self) -> None:
        """Every process left in our namespaces (SuperLink, SuperNodes, the apps Flower detached)."""
        for ns in self.made:
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def remove(self) -> None:
        self.kill_all()
        for ns in self.made:
            _ip("netns", "del", ns, check=False)
        self.made.clear()


def _can_make_namespaces() -> str:
    """'' when network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"fedpic-probe-{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot make a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def _env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), "FLWR_HOME": str(flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    return env


def _fedpic(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "fedpic", *args]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("two_hosts")
    data = make_toy_dataset(root / "data", users=3, images_per_user=4)
    server_dir, keys = root / "server", root / "keys"
    hosts = Hosts()
    facts: dict = {"hosts": hosts, "server_dir": server_dir}
    logs: list = []

    def spawn(command: list[str], name: str, env: dict) -> subprocess.Popen:
        handle = open(root / f"{name}.log", "wb")  # noqa: SIM115  closed at the end
        logs.append(handle)
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def read_log(name: str) -> str:
        path = root / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    try:
        hosts.make()
        server_env, device_env = _env(root / "server-flwr"), _env(root / "device-flwr")
        spawn(_fedpic(hosts.server_ns, "server", "start", "--dir", str(server_dir), "--address", hosts.server_ip,
                      "--port", str(PORT)), "server", server_env)
        # from the devices' host: the SuperLink's TLS port answers on the veth address
        _wait(lambda: subprocess.run(["ip", "netns", "exec", hosts.device_ns, "bash", "-c",
                                      f"echo > /dev/tcp/{hosts.server_ip}/{PORT}"], capture_output=True).returncode
              == 0, 60, "the SuperLink to listen")
        for name in ("device0", "device1", "intruder"):
            subprocess.run([sys.executable, "-m", "fedpic", "device", "keygen", "--key", str(keys / name)], check=True,
                           env=device_env, capture_output=True, timeout=60)
        for name in ("device0", "device1"):
            enrolled = subprocess.run(_fedpic(hosts.server_ns, "server", "enroll", "--dir", str(server_dir),
                                              str(keys / f"{name}.pub")), env=server_env, capture_output=True,
                                      text=True, timeout=120)
            assert enrolled.returncode == 0, enrolled.stderr
        facts["enrolled"] = json.loads((server_dir / "enrolled.json").read_text())
        ca = server_dir / "pki" / "ca.crt"  # what the server's operator hands to each device
        devices = {}
        for index, (name, user) in enumerate((("device0", "user0"), ("device1", "user1"), ("intruder", "user2"))):
            devices[name] = spawn(_fedpic(hosts.device_ns, "device", "join", "--superlink",
                                          f"{hosts.server_ip}:{PORT}", "--ca", str(ca), "--key", str(keys / name),
                                          "--data", str(data), "--user", user, "--state", str(root / "state" / name),
                                          "--clientappio-port", str(9094 + index)), name, device_env)
        _wait(lambda: devices["intruder"].poll() is not None, 60, "the unenrolled device to be refused")
        facts["intruder_exit"] = devices["intruder"].returncode
        facts["intruder_log"] = read_log("intruder")
        run = subprocess.run(_fedpic(hosts.server_ns, "server", "run", "--dir", str(server_dir), "--config", "tiny",
                                     "--devices", "2", "--rounds", "2", "--timeout", "200",
                                     *[f"--set={o}" for o in OVERRIDES]),
                             env=server_env, capture_output=True, text=True, timeout=260)
        facts["run"] = run
        facts["rounds"] = read_rounds(server_dir / "out" / LOG_FILE) if (server_dir / "out" / LOG_FILE).is_file() \
            else []
        facts["server_log"] = read_log("server")
        facts["device_logs"] = {name: read_log(name) for name in ("device0", "device1")}
    finally:
        hosts.remove()
        for handle in logs:
            handle.close()
    facts["namespaces_after"] = _ip("netns", "list", check=False).stdout
    return facts


def test_the_federation_runs_two_rounds_across_hosts(federation):
    run = federation["run"]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "finished:completed" in run.stdout
    rounds = [r for r in federation["rounds"] if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 2 and r["sampled"] == 2 for r in rounds)


def test_the_server_certificate_names_the_assigned_address_and_auth_is_on(federation):
    from server.pki import certificate_names

    hosts = federation["hosts"]
    assert hosts.server_ip in certificate_names(federation["server_dir"] / "pki" / "server.pem")
    assert "SuperNode authentication is disabled" not in federation["server_log"]
    assert "--insecure" not in federation["server_log"]
    assert set(federation["enrolled"]) == {"device0", "device1"}


def test_an_unenrolled_device_is_refused(federation):
    assert federation["intruder_exit"] != 0
    assert "Failed to activate SuperNode" in federation["intruder_log"]


def test_the_namespaces_are_removed(federation):
    hosts = federation["hosts"]
    assert hosts.server_ns not in federation["namespaces_after"]
    assert hosts.device_ns not in federation["namespaces_after"]
