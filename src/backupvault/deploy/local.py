"""A whole deployment on this machine, for development and the demo: N vault nodes (each
with its own SoftHSM2 token and database) and the relay, all on loopback, started as
background processes. `DIR` holds everything:

    DIR/fleet.toml            public description of the fleet (keys, node URLs)
    DIR/node<i>.toml, DIR/node<i>/   each node's config, token store, sealed secrets, db
    DIR/relay.toml            relay config; DIR/operator.key, operator.pub: token signing
    DIR/client.toml           what a client needs: relay URL, pinned fleet keys, a token
    DIR/processes.json        pids and ports of the running processes
    DIR/logs/                 one log per process
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backupvault.crypto.seal import FleetPrivateKey
from backupvault.errors import BackupVaultError
from backupvault.hsm.ceremony import make_fleet_secrets, seal_for_node
from backupvault.node.config import FleetDescription, FleetNode, write_toml
from backupvault.node.main import TRANSFER
from backupvault.node.softhsm import init_softhsm_token, softhsm_env
from backupvault.relay.auth import (
    generate_operator_key,
    load_operator_private_key,
    mint_token,
    save_operator_key,
)

HOST = "127.0.0.1"
ISSUER = "backupvault-local"
AUDIENCE = "backupvault-relay"
ACCOUNT = "local-user"
TOKEN_TTL = 30 * 24 * 3600


class DeploymentError(BackupVaultError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalDeployment:
    root: Path

    @property
    def processes_file(self) -> Path:
        return self.root / "processes.json"

    def node_config(self, index: int) -> Path:
        return self.root / f"node{index}.toml"

    def node_count(self) -> int:
        return len(FleetDescription.load(self.root / "fleet.toml").nodes)

    # ---- provisioning (once) -----------------------------------------------------------

    def provisioned(self) -> bool:
        return (self.root / "client.toml").exists()

    def provision(self, nodes: int) -> None:
        if nodes < 1 or nodes % 2 == 0:
            raise DeploymentError("a fleet has an odd number of nodes (1, 3, 5, ...)")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        ports = [_free_port() for _ in range(nodes + 1)]
        relay_port, node_ports = ports[0], ports[1:]
        identities: list[bytes] = []
        for index in range(nodes):
            identities.append(self._provision_node(index, node_ports[index]))

        # Key ceremony: shared secrets exist in this process only, and leave it only
        # encrypted to each node's identity key.
        fleet_id = os.urandom(16)
        fleet_secrets = make_fleet_secrets(fleet_id, os.urandom)
        for index, identity in enumerate(identities):
            transfer = seal_for_node(fleet_secrets, index, identity)
            (self.root / f"node{index}" / TRANSFER).write_bytes(transfer)
        fleet = FleetDescription(
            fleet_id=fleet_id,
            guess_limit=10,
            hpke_public_key=FleetPrivateKey.from_bytes(fleet_secrets.hpke_private_key)
            .public_key()
            .to_bytes(),
            opaque_server_public_key=fleet_secrets.server_public_key,
            nodes=tuple(
                FleetNode(i, f"http://{HOST}:{node_ports[i]}", identities[i]) for i in range(nodes)
            ),
        )
        del fleet_secrets
        fleet.save(self.root / "fleet.toml")

        operator = generate_operator_key()
        save_operator_key(operator, self.root / "operator.key", self.root / "operator.pub")
        write_toml(
            self.root / "relay.toml",
            {
                "listen": f"{HOST}:{relay_port}",
                "relay": {
                    "nodes": [n.url for n in fleet.nodes],
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "operator_public_key": "operator.pub",
                },
            },
        )
        self.write_client_config(fleet, f"http://{HOST}:{relay_port}", ACCOUNT)

    def write_client_config(self, fleet: FleetDescription, relay_url: str, account: str) -> None:
        operator = load_operator_private_key(self.root / "operator.key")
        token = mint_token(
            operator, account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=TOKEN_TTL
        )
        path = self.root / "client.toml"
        write_toml(
            path,
            {
                "relay_url": relay_url,
                "account": account,
                "token": token,
                "fleet_id": fleet.fleet_id.hex(),
                "fleet_public_key": fleet.hpke_public_key.hex(),
                "opaque_server_public_key": fleet.opaque_server_public_key.hex(),
            },
        )
        path.chmod(0o600)

    def _provision_node(self, index: int, port: int) -> bytes:
        node_dir = self.root / f"node{index}"
        node_dir.mkdir(exist_ok=True)
        pin_file = node_dir / "token.pin"
        pin = secrets.token_hex(8)
        pin_file.write_text(pin)
        pin_file.chmod(0o600)
        token = init_softhsm_token(node_dir / "hsm", f"backupvault-node-{index}", pin, pin + "so")
        assert token.softhsm2_conf is not None
        write_toml(
            self.node_config(index),
            {
                "node": {
                    "index": index,
                    "listen": f"{HOST}:{port}",
                    "data_dir": f"node{index}",
                    "fleet_file": "fleet.toml",
                },
                "token": {
                    "module": str(token.module_path),
                    "label": token.token_label,
                    "pin_file": f"node{index}/token.pin",
                    "softhsm2_conf": str(token.softhsm2_conf.relative_to(self.root.resolve())),
                },
            },
        )
        out = self._backupvault(["node", "init", "--config", str(self.node_config(index))], index)
        return bytes.fromhex(json.loads(out)["identity_public_key"])

    def _node_env(self, index: int) -> dict[str, str]:
        return softhsm_env(self.root / f"node{index}" / "hsm" / "softhsm2.conf")

    def _backupvault(self, args: list[str], node: int) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "backupvault", "--json", *args],
            env=self._node_env(node),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DeploymentError(f"`backupvault {' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    # ---- processes ---------------------------------------------------------------------

    def _processes(self) -> dict[str, dict[str, Any]]:
        if not self.processes_file.exists():
            return {}
        data: dict[str, dict[str, Any]] = json.loads(self.processes_file.read_text())
        return data

    def _save_processes(self, processes: dict[str, dict[str, Any]]) -> None:
        self.processes_file.write_text(json.dumps(processes, indent=2))

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> int:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "backupvault", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return process.pid

    def start_node(self, index: int) -> None:
        processes = self._processes()
        if _alive(processes.get(f"node{index}", {}).get("pid")):
            return
        pid = self._spawn(
            f"node{index}",
            ["node", "serve", "--config", str(self.node_config(index))],
            self._node_env(index),
        )
        processes[f"node{index}"] = {"pid": pid}
        self._save_processes(processes)

    def start_relay(self) -> None:
        processes = self._processes()
        if _alive(processes.get("relay", {}).get("pid")):
            return
        pid = self._spawn(
            "relay", ["relay", "serve", "--config", str(self.root / "relay.toml")], dict(os.environ)
        )
        processes["relay"] = {"pid": pid}
        self._save_processes(processes)

    def stop_process(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        processes = self._processes()
        pid = processes.pop(name, {}).get("pid")
        if _alive(pid):
            assert pid is not None
            os.kill(pid, sig)
            _wait_gone(pid)
        self._save_processes(processes)

    def up(self, nodes: int = 5, timeout: float = 60.0) -> None:
        if not self.provisioned():
            self.provision(nodes)
        for index in range(self.node_count()):
            self.start_node(index)
        self.start_relay()
        self.wait_ready(timeout)

    def down(self) -> None:
        for name in list(self._processes()):
            self.stop_process(name)
        self.processes_file.unlink(missing_ok=True)

    def wait_ready(self, timeout: float = 60.0, nodes: list[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        wanted = range(self.node_count()) if nodes is None else nodes
        fleet = FleetDescription.load(self.root / "fleet.toml")
        while time.monotonic() < deadline:
            status = self.status()
            relay_up = status["relay"]["healthy"]
            nodes_ready = all(status[f"node{i}"]["healthy"] for i in wanted)
            if relay_up and nodes_ready:
                return
            time.sleep(0.2)
        logs = self.root / "logs"
        raise DeploymentError(
            f"the local deployment did not become ready in {timeout:.0f} s",
            hint=f"see the logs in {logs} ({len(fleet.nodes)} nodes + relay)",
        )

    def status(self) -> dict[str, dict[str, Any]]:
        processes = self._processes()
        fleet = FleetDescription.load(self.root / "fleet.toml")
        report: dict[str, dict[str, Any]] = {}
        for node in fleet.nodes:
            name = f"node{node.index}"
            pid = processes.get(name, {}).get("pid")
            report[name] = {
                "pid": pid,
                "running": _alive(pid),
                "url": node.url,
                "healthy": _healthy(f"{node.url}/v1/health", ready=True),
            }
        relay_url = self.relay_url()
        pid = processes.get("relay", {}).get("pid")
        report["relay"] = {
            "pid": pid,
            "running": _alive(pid),
            "url": relay_url,
            "healthy": _healthy(f"{relay_url}/v1/health", ready=False),
        }
        return report

    def inspect(self, index: int, account: str, entry: str) -> dict[str, Any]:
        """A node's on-disk view of one entry (runs `node inspect` with its token)."""
        args = ["node", "inspect", "--config", str(self.node_config(index))]
        out = self._backupvault([*args, "--account", account, "--entry", entry], index)
        data: dict[str, Any] = json.loads(out)
        return data

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Each running node's counters (evaluations, commits, refusals)."""
        report: dict[str, dict[str, Any]] = {}
        for node in FleetDescription.load(self.root / "fleet.toml").nodes:
            try:
                report[f"node{node.index}"] = httpx.get(f"{node.url}/v1/metrics", timeout=2).json()
            except httpx.HTTPError:
                continue
        return report

    def relay_url(self) -> str:
        import tomllib

        data = tomllib.loads((self.root / "client.toml").read_text())
        return str(data["relay_url"])


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie child (ours, not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_child = False
        with contextlib.suppress(ChildProcessError):
            with_child = os.waitpid(pid, os.WNOHANG) != (0, 0)
        if with_child or not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _healthy(url: str, ready: bool) -> bool:
    try:
        answer = httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    return bool(answer.json().get("ready")) if ready else True
