"""A whole deployment on this machine, for development and the demo: N vault nodes (each
with its own SoftHSM2 token and database), two witnesses and the relay, all on loopback,
started as background processes (Python in isolated mode, `-I`, as node measurements
require). `DIR` holds everything:

    DIR/fleet.toml            public description of the fleet (keys, node URLs, epoch,
                              measurement)
    DIR/deployment.bin        its deployment record, signed with operator.key
    DIR/bundle.bin            the record + the first witness's cosignature and inclusion
                              proof (the second witness logs the same record)
    DIR/node<i>.toml, DIR/node<i>/   each node's config; its data folder (sealed keys, db)
    DIR/node<i>-token/        each node's SoftHSM2 token, outside its data folder (a copy
                              of the data folder restored later is then a rollback the
                              token's counter shows; deployments made before this keep
                              theirs at DIR/node<i>/hsm/, as their node<i>.toml says)
    DIR/node<i>.pin           each node's token PIN (mode 0600), outside its data folder
    DIR/epoch<E>/             the same for epoch E >= 2 after `local rotate`
    DIR/witness/, DIR/witness2/  each witness: witness.toml, its own key, its SQLite log
                              and the log's head file
    DIR/relay.toml            relay config; DIR/operator.key, operator.pub: the operator's
                              key (signs account tokens and, here, deployment records)
    DIR/relay-signing.key     the relay's key: signs every request it forwards to a node
                              (fleet.toml lists its public half)
    DIR/client.toml           a client with pinned fleet keys (relay URL, keys, tokens)
    DIR/client-ota.toml       a client that takes fleet keys over the air (operator and
                              both witnesses' keys; state in client-ota-state.json)
    DIR/processes.json        pid and start time of each running process (a pid reused
                              by another process after a reboot is not this one)
    DIR/logs/                 one log per process

Process names: `node<i>` (epoch 1), `e<E>-node<i>` (later epochs), `witness`,
`witness2`, `relay`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.deploy.metrics import MetricsUnavailable, node_metrics
from backupvault.deploy.records import (
    BUNDLE_FILE,
    save_bundle,
    sign_deployment,
    submit,
    write_deployment,
)
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import private_folder, replace_file, try_lock, write_new_file
from backupvault.node.config import FleetDescription, FleetNode, write_toml
from backupvault.node.softhsm import init_softhsm_token, softhsm_env
from backupvault.protocol import fleet_size_refused
from backupvault.tokens import (
    device_key_from_hex,
    device_key_hex,
    fleet_audience,
    generate_device_key,
    generate_operator_key,
    load_operator_private_key,
    mint_token,
    private_key_pem,
    save_operator_key,
)
from backupvault.transparency import Signer, Verifier
from backupvault.transparency.record import raw_public_key

HOST = "127.0.0.1"
ISSUER = "backupvault-local"
AUDIENCE = "backupvault-relay"
ACCOUNT = "local-user"
TOKEN_TTL = 30 * 24 * 3600
#: `local up` renews the client configs' tokens when fewer seconds than this are left, so
#: a deployment started again every few weeks never lets its clients' tokens run out.
TOKEN_RENEW_BEFORE = 10 * 24 * 3600
CLIENT_CONFIGS = ("client.toml", "client-ota.toml")
TOKEN_FIELDS = ("token", "fleet_token")
#: process (and folder) name -> witness name; the first one's cosignature is in bundles
WITNESSES = {"witness": "witness.local/backupvault", "witness2": "witness2.local/backupvault"}
WITNESS_NAME = WITNESSES["witness"]
RELAY_KEY = "relay-signing.key"
#: Held by the `local` command that starts, stops or changes the deployment's processes.
LOCK_FILE = "local.lock"
#: The names a provisioning makes in DIR (logs/ aside): what an unfinished one leaves.
_PROVISIONED = re.compile(
    r"operator\.(key|pub)|relay-signing\.key|fleet\.toml|deployment(\.pending)?\.bin|bundle\.bin"
    r"|relay\.toml|client(-ota)?\.toml|processes\.json|witness2?|node\d+(\.pin|\.toml|-token)?"
)


class DeploymentError(BackupVaultError):
    pass


#: Where local services listen by default: below Linux's ephemeral range (32768-60999),
#: so that no outgoing connection (the nodes' peer streams dial often while peers start)
#: takes a chosen port as its source port before the service binds it.
DEFAULT_PORTS = range(20000, 32768)

#: Names a narrower range, "FIRST-LAST", for processes that set up deployments side by
#: side (each pytest worker takes its own, tests/conftest.py): a port is checked free
#: well before its service binds it, so two such processes sharing one range could both
#: hand it out.
PORTS_ENV = "BACKUPVAULT_PORTS"


def local_ports() -> Sequence[int]:
    """Where local services listen: `PORTS_ENV`'s range, or `DEFAULT_PORTS`."""
    setting = os.environ.get(PORTS_ENV)
    if not setting:
        return DEFAULT_PORTS
    first, _, last = setting.partition("-")
    try:
        ports = range(int(first), int(last) + 1)
    except ValueError:
        ports = range(0)
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise DeploymentError(
            f"{PORTS_ENV}={setting!r}: give a range of ports as FIRST-LAST, "
            "within 1024-65535 (for example 20000-32767)"
        )
    return ports


#: Ports this process has handed out. A port is free when checked but is bound only later,
#: by the process it was chosen for, so without this memory two services set up together
#: (a soak's ~40 link proxies, nodes and relay) could be handed the same port.
_handed_out: set[int] = set()
_handing_out = threading.Lock()


def free_port() -> int:
    """A loopback port nothing listens on and this process has not handed out before."""
    ports = local_ports()
    with _handing_out:
        for _ in range(1000):
            port = random.choice(ports)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((HOST, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise DeploymentError(f"no free loopback port between {min(ports)} and {max(ports)}")


#: relay.toml's [relay] keys `_write_relay_config` writes itself; a rotation or a retirement
#: keeps the others (limits and the like) as they were.
_RELAY_MANAGED = frozenset(
    {
        "nodes",
        "bundle_file",
        "witness_url",
        "previous_fleets",
        "issuer",
        "audience",
        "signing_key",
        "operator_public_key",
    }
)

# A rotation's older node set keeps the record of the code that made it (a new record for
# it would have to be a newer epoch, and so the current one): no `local upgrade` moves it.
ROTATED_UPGRADE_HINT = (
    "an upgrade cannot give a rotation's older node sets a record for other code, so this"
    " deployment runs only on the version that made it: reinstall the version you rotated"
    " it with to reach the keys it holds. To move to a new version, restore your backups"
    " with that one first (or keep the code `backupvault vault recovery-code` prints, which"
    " opens them without a vault), then `local up --dir NEW` and back up there: a new"
    " deployment holds none of this one's keys. Or, once every key has moved to the newest"
    " node set (a recovery moves it), `local retire` retires the older sets with a record"
    " for the version installed now; a key still on an older set then needs its recovery"
    " code"
)


@dataclass
class LocalDeployment:
    root: Path
    # The lock `_exclusive` holds, and how deeply (`upgrade` runs `up` under its own).
    _lock_fd: int | None = field(default=None, init=False, repr=False, compare=False)
    _lock_depth: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def processes_file(self) -> Path:
        return self.root / "processes.json"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the deployment's lock while the block starts or stops its processes: two
        `local up` at once each started every node and the relay, the second copy of each
        failed to listen, and both commands failed, leaving a process neither recorded."""
        if self._lock_depth:
            self._lock_depth += 1
        else:
            fd = try_lock(self.lock_file)
            if fd is None:
                holder = self.lock_file.read_text(errors="replace").strip() or "unknown"
                raise DeploymentError(
                    f"another `backupvault local` command (pid {holder}) is starting,"
                    f" stopping or changing the local deployment in {self.root}",
                    hint="wait for it to finish (or stop it: Ctrl-C in its terminal), then"
                    " run this command again",
                )
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd, self._lock_depth = fd, 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if not self._lock_depth and self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    # ---- epochs: epoch 1 lives in DIR, epoch E >= 2 in DIR/epoch<E> ----------------------

    def fleet_dir(self, epoch: int | None = None) -> Path:
        epoch = self.current_epoch() if epoch is None else epoch
        return self.root if epoch == 1 else self.root / f"epoch{epoch}"

    def epochs(self) -> list[int]:
        """Every node set this deployment runs (oldest first), each by the epoch it began
        at; a set the current record retires (`local retire`) is left out: nothing starts
        or routes it again."""
        sets, retired = self._sets()
        return [e for e in sets if e >= retired]

    def _sets(self) -> tuple[list[int], int]:
        """Every node set ever made here, retired or not (oldest first), and the first
        epoch the current record does not retire."""
        later = [
            int(p.name.removeprefix("epoch"))
            for p in self.root.glob("epoch*")
            if p.name.removeprefix("epoch").isascii()
            and p.name.removeprefix("epoch").isdigit()
            and (p / "fleet.toml").exists()
        ]
        sets = [1, *sorted(later)]
        current = self.fleet_dir(sets[-1]) / "fleet.toml"
        retired = FleetDescription.load(current).retired_below if current.exists() else 0
        return sets, retired

    def current_epoch(self) -> int:
        return self.epochs()[-1]

    def fleet(self, epoch: int | None = None) -> FleetDescription:
        return FleetDescription.load(self.fleet_dir(epoch) / "fleet.toml")

    @staticmethod
    def node_name(index: int, epoch: int) -> str:
        return f"node{index}" if epoch == 1 else f"e{epoch}-node{index}"

    def node_config(self, index: int, epoch: int | None = None) -> Path:
        return self.fleet_dir(epoch) / f"node{index}.toml"

    def node_count(self, epoch: int | None = None) -> int:
        return len(self.fleet(epoch).nodes)

    def witness_dir(self, which: str = "witness") -> Path:
        return self.root / which

    def witness_url(self, which: str = "witness") -> str:
        data = tomllib.loads((self.witness_dir(which) / "witness.toml").read_text())
        return f"http://{data['listen']}"

    def witnesses(self) -> list[str]:
        """The witnesses provisioned here (a deployment made before the second one has one)."""
        return [w for w in WITNESSES if (self.witness_dir(w) / "witness.toml").exists()]

    # ---- provisioning (once) -----------------------------------------------------------

    def provisioned(self) -> bool:
        return (self.root / "client.toml").exists()

    def provision(self, nodes: int) -> None:
        if refused := fleet_size_refused(nodes):
            raise DeploymentError(refused)
        local_ports()  # a bad BACKUPVAULT_PORTS stops it before anything is written
        private_folder(self.root)  # it holds keys, PINs and the client configs
        if not self.provisioned():
            self._clear_unfinished_provisioning()
        (self.root / "logs").mkdir(exist_ok=True)
        relay_port = free_port()

        operator = generate_operator_key()
        save_operator_key(operator, self.root / "operator.key", self.root / "operator.pub")
        write_new_file(self.root / RELAY_KEY, private_key_pem(generate_operator_key()))
        fleet_id = os.urandom(16)
        for which in WITNESSES:
            self._provision_witness(which, free_port(), fleet_id)
            self.start_witness(which)  # starts while the nodes are provisioned

        fleet = self._provision_fleet(self.root, 1, fleet_id, nodes)
        bundle_file = self._deploy_and_log(self.root / "fleet.toml", 1)
        self._write_relay_config(relay_port, fleet, bundle_file, [])
        relay_url = f"http://{HOST}:{relay_port}"
        self.write_client_config(self.fleet(1), relay_url, ACCOUNT)  # as deployed: its epoch
        self.write_ota_client_config(fleet, relay_url, ACCOUNT)

    def _clear_unfinished_provisioning(self) -> None:
        """Remove what a provisioning that did not finish (Ctrl-C, a kill) left, after
        stopping the processes it started: nobody used those keys (clients use
        client.toml, written last), and the next one makes them anew; before, it refused
        with "operator.key already exists". Only the files a provisioning makes go; its
        logs stay."""
        for name in list(self._processes()):
            self.stop_process(name)
        for path in self.root.iterdir():
            if not _PROVISIONED.fullmatch(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _provision_fleet(
        self, fleet_dir: Path, epoch: int, fleet_id: bytes, nodes: int
    ) -> FleetDescription:
        """Tokens and keys for `nodes` new nodes in `fleet_dir` (each node makes its own
        and prints only their public halves), and the fleet.toml listing them for
        `fleet_id`: no secret is made outside a node."""
        fleet_dir.mkdir(parents=True, exist_ok=True)
        node_ports = [free_port() for _ in range(nodes)]
        peer_ports = [free_port() for _ in range(nodes)]
        # Each node's token and `node init` (a process of its own) run side by side.
        with ThreadPoolExecutor(max_workers=nodes) as pool:
            public_keys = list(
                pool.map(
                    lambda index: self._provision_node(
                        fleet_dir, epoch, index, node_ports[index], peer_ports[index]
                    ),
                    range(nodes),
                )
            )
        nodes_described = tuple(
            FleetNode(
                i,
                f"http://{HOST}:{node_ports[i]}",
                bytes.fromhex(keys["identity_public_key"]),
                bytes.fromhex(keys["hpke_public_key"]),
                bytes.fromhex(keys["signing_public_key"]),
                f"{HOST}:{peer_ports[i]}",
            )
            for i, keys in enumerate(public_keys)
        )
        fleet = FleetDescription(
            fleet_id=fleet_id,
            guess_limit=10,
            nodes=nodes_described,
            relay_public_keys=(raw_public_key(self.relay_key()),),
            account_issuer=ISSUER,
            account_issuer_public_key=raw_public_key(self._operator_key()),
        )
        fleet.save(fleet_dir / "fleet.toml")
        return fleet

    def _operator_key(self) -> Ed25519PrivateKey:
        return load_operator_private_key(self.root / "operator.key")

    def relay_key(self) -> Ed25519PrivateKey:
        """The local relay's signing key: also what reads the nodes' metrics."""
        return load_operator_private_key(self.root / RELAY_KEY)

    def _deploy_and_log(
        self, fleet_file: Path, epoch: int, retired_below: int | None = None
    ) -> Path:
        """`fleet deploy` for this fleet file: measure, sign (the local operator key also
        signs deployment records), have every local witness log it, then write the record
        and fleet.toml and save the bundle (with the first witness's receipt). Nothing is
        written before the witnesses logged it: fleet.toml's `retired_below`, written
        first, had the older sets taken for retired by a retirement no witness logged."""
        signed, fleet = sign_deployment(
            fleet_file, self._operator_key(), epoch=epoch, retired_below=retired_below
        )
        bundles = []
        for which in self.witnesses():
            self._wait_witness(which)
            # Checked with the witness's own key, as `fleet deploy --witness-key` does.
            witness = Verifier.from_vkey(self.witness_vkey(which))
            bundles.append(submit(self.witness_url(which), signed, witness=witness))
        write_deployment(fleet_file, signed, fleet)
        return save_bundle(fleet_file, bundles[0])

    def _provision_witness(self, which: str, port: int, fleet_id: bytes) -> None:
        """The witness's own key and config; it vouches for this fleet id signed by the
        local operator key (a real witness is run by someone else)."""
        folder = self.witness_dir(which)
        folder.mkdir(exist_ok=True)
        key = Ed25519PrivateKey.generate()
        write_new_file(folder / "witness.key", private_key_pem(key))
        write_toml(
            folder / "witness.toml",
            {
                "name": WITNESSES[which],
                "listen": f"{HOST}:{port}",
                "key_file": "witness.key",
                "database": "witness.sqlite",
                "pin_first_seen": False,
                # The local relay passes on its clients' requests from this address.
                "unlimited_addresses": [HOST],
                "fleets": [{"fleet_id": fleet_id.hex(), "operator_key": "../operator.pub"}],
            },
        )

    def witness_vkey(self, which: str = "witness") -> str:
        key = serialization.load_pem_private_key(
            (self.witness_dir(which) / "witness.key").read_bytes(), password=None
        )
        assert isinstance(key, Ed25519PrivateKey)
        return Signer(WITNESSES[which], key).verifier.vkey()

    def _write_relay_config(
        self,
        port: int,
        fleet: FleetDescription,
        bundle_file: Path,
        previous: list[tuple[FleetDescription, Path]],
        extra: dict[str, Any] | None = None,
    ) -> None:
        relay: dict[str, Any] = {
            "nodes": [n.url for n in fleet.nodes],
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "operator_public_key": "operator.pub",
            "signing_key": RELAY_KEY,
            "bundle_file": str(bundle_file.relative_to(self.root)),
            "witness_url": self.witness_url(),
            **(extra or {}),
        }
        if previous:
            relay["previous_fleets"] = [
                {"nodes": [n.url for n in f.nodes], "bundle_file": str(b.relative_to(self.root))}
                for f, b in previous
            ]
        write_toml(self.root / "relay.toml", {"listen": f"{HOST}:{port}", "relay": relay})

    def _rewrite_relay_config(
        self,
        fleet: FleetDescription,
        bundle_file: Path,
        previous: list[tuple[FleetDescription, Path]],
    ) -> None:
        """relay.toml for another node set or bundle (a rotation, a retirement), on the
        same port and with the settings the operator added kept as they were."""
        relay_toml = tomllib.loads((self.root / "relay.toml").read_text())
        kept = {k: v for k, v in relay_toml["relay"].items() if k not in _RELAY_MANAGED}
        port = int(str(relay_toml["listen"]).rpartition(":")[2])
        self._write_relay_config(port, fleet, bundle_file, previous, kept)

    def write_client_config(self, fleet: FleetDescription, relay_url: str, account: str) -> None:
        """The pinned client: `fleet`'s keys, and those of the older epochs the relay still
        routes (a rotation's), from which a recovery moves the entry to `fleet`. Without
        them a rotation left this config with an empty vault ("make a backup, which
        registers one"), the key out of its reach on the old epoch."""
        config: dict[str, Any] = {
            "relay_url": relay_url,
            "account": account,
            "token": self._token(account),
            **self._fleet_credentials(account, fleet.fleet_id),
            "fleet_id": fleet.fleet_id.hex(),
            "node_public_keys": [n.hpke_public_key.hex() for n in fleet.nodes],
            "node_signing_keys": [n.signing_public_key.hex() for n in fleet.nodes],
            "epoch": fleet.epoch or 0,
        }
        older = [self.fleet(e) for e in self.epochs()]
        older = [f for f in older if f.epoch is not None and f.epoch < (fleet.epoch or 0)]
        if older:
            config["previous_fleets"] = [
                {
                    "epoch": f.epoch,
                    "node_public_keys": [n.hpke_public_key.hex() for n in f.nodes],
                    "node_signing_keys": [n.signing_public_key.hex() for n in f.nodes],
                }
                for f in sorted(older, key=lambda f: f.epoch or 0, reverse=True)
            ]
        replace_file(self.root / "client.toml", tomli_w.dumps(config).encode())

    def write_ota_client_config(
        self, fleet: FleetDescription, relay_url: str, account: str
    ) -> None:
        """A client that ships with the operator and witness keys only (no fleet keys)."""
        operator = self._operator_key().public_key()
        config = {
            "trust": "ota",
            "relay_url": relay_url,
            "account": account,
            "token": self._token(account),
            **self._fleet_credentials(account, fleet.fleet_id),
            "fleet_id": fleet.fleet_id.hex(),
            "operator_public_key": operator.public_bytes_raw().hex(),
            "witness_public_key": self.witness_vkey(),
            "witness_name": WITNESS_NAME,
            "witness_url": self.witness_url(),
            "witnesses": [
                {"public_key": self.witness_vkey(w), "url": self.witness_url(w)}
                for w in self.witnesses()[1:]
            ],
            "state_file": "client-ota-state.json",
        }
        replace_file(self.root / "client-ota.toml", tomli_w.dumps(config).encode())

    def _token(self, account: str) -> str:
        return mint_token(
            self._operator_key(), account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=TOKEN_TTL
        )

    def renew_client_tokens(self, now: float | None = None) -> list[str]:
        """Mint new account tokens into the client configs whose tokens expire within
        `TOKEN_RENEW_BEFORE` (or have expired), keeping each config's device key, so the
        fleet token stays bound to the key that device signs with. A token this deployment
        did not issue (another issuer or account, or not a token) is left as it is: the
        user put it there. Returns the names of the configs renewed."""
        now = time.time() if now is None else now
        renewed = []
        for name in CLIENT_CONFIGS:
            path = self.root / name
            if not path.exists():
                continue
            try:
                config = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue  # the client says what is wrong with it when it is used
            account, fleet_id = config.get("account"), config.get("fleet_id")
            if not isinstance(account, str) or not isinstance(fleet_id, str):
                continue
            expiries = [_own_token_expiry(config.get(f), account) for f in TOKEN_FIELDS]
            if None in expiries or min(e or 0.0 for e in expiries) > now + TOKEN_RENEW_BEFORE:
                continue
            try:
                device = device_key_from_hex(str(config.get("device_key")))
                fleet = bytes.fromhex(fleet_id)
            except (InvalidInput, ValueError):
                continue
            config["token"] = self._token(account)
            config["fleet_token"] = self._fleet_token(account, fleet, device)
            replace_file(path, tomli_w.dumps(config).encode())
            renewed.append(name)
        return renewed

    def _fleet_credentials(self, account: str, fleet_id: bytes) -> dict[str, str]:
        """A new device key for this client config, and the account's token for the nodes
        (only ever sent inside the seal) bound to it."""
        device = generate_device_key()
        token = self._fleet_token(account, fleet_id, device)
        return {"fleet_token": token, "device_key": device_key_hex(device)}

    def _fleet_token(self, account: str, fleet_id: bytes, device: Ed25519PrivateKey) -> str:
        return mint_token(
            self._operator_key(),
            account,
            issuer=ISSUER,
            audience=fleet_audience(fleet_id),
            ttl_seconds=TOKEN_TTL,
            device_key=device.public_key(),
        )

    def _provision_node(
        self, fleet_dir: Path, epoch: int, index: int, port: int, peer_port: int
    ) -> dict[str, str]:
        node_dir = fleet_dir / f"node{index}"
        node_dir.mkdir(exist_ok=True)
        pin = secrets.token_hex(8)
        # The PIN stays out of the node's data folder, so that copying or backing up that
        # folder (which holds the token store) does not hand it out (node/config.py).
        write_new_file(fleet_dir / f"node{index}.pin", pin.encode(), 0o600)
        label = "backupvault-node-" + (str(index) if epoch == 1 else f"e{epoch}-{index}")
        # The SO PIN is random and kept nowhere: a local token is never re-initialised
        # (a rotation makes new ones), and no PIN here can be derived from another.
        # The token stays out of the data folder too, as docs/operations.md asks of a real
        # node ("Backing up node state"): a data folder restored from a copy must not bring
        # the token's counter back with it, or the node cannot see the rollback.
        token_dir = fleet_dir / f"node{index}-token"
        token = init_softhsm_token(token_dir, label, pin, secrets.token_hex(16))
        assert token.softhsm2_conf is not None
        config = fleet_dir / f"node{index}.toml"
        write_toml(
            config,
            {
                "node": {
                    "index": index,
                    "listen": f"{HOST}:{port}",
                    "peer_listen": f"{HOST}:{peer_port}",
                    "data_dir": f"node{index}",
                    "fleet_file": "fleet.toml",
                },
                "token": {
                    "module": str(token.module_path),
                    "label": token.token_label,
                    "pin_file": f"node{index}.pin",
                    "softhsm2_conf": str(token.softhsm2_conf.relative_to(fleet_dir.resolve())),
                },
            },
        )
        out = self._backupvault(["node", "init", "--config", str(config)], index, epoch)
        keys: dict[str, str] = json.loads(out)
        return keys

    def _node_env(self, index: int, epoch: int | None = None) -> dict[str, str]:
        fleet_dir = self.fleet_dir(epoch)
        config = tomllib.loads((fleet_dir / f"node{index}.toml").read_text(encoding="utf-8"))
        return softhsm_env(fleet_dir / str(config["token"]["softhsm2_conf"]))

    def _backupvault(self, args: list[str], node: int, epoch: int | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-I", "-m", "backupvault", "--json", *args],
            env=self._node_env(node, epoch),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DeploymentError(f"`backupvault {' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    # ---- rotation ------------------------------------------------------------------------

    def rotate(self, nodes: int | None = None, timeout: float = 60.0) -> int:
        """A new epoch of the same fleet id: new nodes (new tokens, their own keys, ports), a
        new deployment record logged by the witness. The relay then
        serves the new bundle and routes the new epoch by default, and keeps routing the
        older epochs at /v1/epochs/<E>/... so that OTA clients can migrate their entries.
        Returns the new epoch."""
        with self._exclusive():
            return self._rotate(nodes, timeout)

    def _rotate(self, nodes: int | None, timeout: float) -> int:
        sets = self.epochs()
        if len(sets) > 1 and self.fleet(sets[-1]).epoch is None:
            # A rotation whose deploy failed (a witness down or refusing): some witness may
            # have logged its record already, and would refuse another of the epoch (new
            # node keys), so the nodes it made are deployed again, not made anew (review s61).
            epoch, old = sets[-1], self.fleet(sets[-2])
            fleet = self.fleet(epoch)
            if nodes not in (None, len(fleet.nodes)):
                raise DeploymentError(
                    f"a rotation to epoch {epoch} with {len(fleet.nodes)} nodes was started"
                    " and not finished",
                    hint="run `local rotate` without --nodes to finish it first",
                )
            for which in self.witnesses():
                self.start_witness(which)
        else:
            old = self.fleet()
            if old.epoch is None:
                raise DeploymentError(
                    "the current fleet was never deployed (no epoch in fleet.toml)"
                )
            epoch = old.epoch + 1
            fleet_dir = self.root / f"epoch{epoch}"
            if fleet_dir.exists():  # its provisioning stopped before fleet.toml: none logged it
                raise DeploymentError(
                    f"{fleet_dir} exists: a rotation to epoch {epoch} was started before",
                    hint=f"remove {fleet_dir} and run `local rotate` again",
                )
            for which in self.witnesses():
                self.start_witness(which)
            fleet = self._provision_fleet(fleet_dir, epoch, old.fleet_id, nodes or len(old.nodes))
        bundle = self._deploy_and_log(
            self.fleet_dir(epoch) / "fleet.toml", epoch, old.retired_below
        )
        # Older bundles keep their first receipt: a client checks that their checkpoint is
        # a prefix of the newest one it saw.
        previous = [
            (self.fleet(e), self.fleet_dir(e) / BUNDLE_FILE) for e in reversed(self.epochs()[:-1])
        ]
        self._rewrite_relay_config(fleet, bundle, previous)
        # Pinned clients need new keys (that is what pinning means), and the old ones to
        # move their entry from; OTA ones need neither.
        self.write_client_config(self.fleet(epoch), self.relay_url(), ACCOUNT)
        for index in range(len(fleet.nodes)):
            self.start_node(index, epoch)
        self.stop_process("relay")
        self.start_relay()
        self.wait_ready(timeout)
        return epoch

    def upgrade(self, timeout: float = 60.0) -> tuple[int, bool]:
        """A new deployment record for the code installed now (an upgrade: new code, same
        nodes and keys, epoch + 1), logged by the witnesses; then the nodes and the relay
        restart on it, and the pinned client config names the new epoch. Entries stay
        where they are: nothing is migrated. Returns the epoch and whether it is new:
        when the current record already names this code, nothing is done (a new epoch
        would change nothing but make every client take a new record; review s40-R2)."""
        with self._exclusive():
            return self._upgrade(timeout)

    def _upgrade(self, timeout: float) -> tuple[int, bool]:
        if len(self.epochs()) > 1:
            raise DeploymentError(
                "this deployment still runs older epochs (a rotation's); an upgrade re-deploys"
                " one node set",
                hint=ROTATED_UPGRADE_HINT,
            )
        fleet = self.fleet()
        if fleet.epoch is None:
            raise DeploymentError("the current fleet was never deployed (no epoch in fleet.toml)")
        if fleet.measurement == fleet.measure():
            return fleet.epoch, False
        for index in range(len(fleet.nodes)):
            self.stop_process(self.node_name(index, 1))
        self.stop_process("relay")
        for which in self.witnesses():
            self.start_witness(which)
        epoch = fleet.epoch + 1
        bundle = self._deploy_and_log(self.fleet_dir() / "fleet.toml", epoch)
        relay_toml = tomllib.loads((self.root / "relay.toml").read_text())
        relay = relay_toml["relay"]
        assert relay["bundle_file"] == str(bundle.relative_to(self.root)), relay["bundle_file"]
        self.write_client_config(self.fleet(), self.relay_url(), ACCOUNT)
        self.up(len(fleet.nodes), timeout)
        return epoch, True

    def retire(self, timeout: float = 60.0, force: bool = False) -> tuple[int, int]:
        """Retire every node set older than the current one (a rotation's, once entries
        have moved): a new record for the current nodes (epoch + 1) that retires the
        epochs below the current set's first, logged by the witnesses; the older nodes
        stopped, the relay no longer routing them, the pinned client config without
        them. Refused, with nothing changed, while a node of an older set still holds a
        live key, unless `force`. Returns the new epoch and the first epoch not retired."""
        with self._exclusive():
            return self._retire(timeout, force)

    def _retire(self, timeout: float, force: bool) -> tuple[int, int]:
        sets = self.epochs()
        if len(sets) < 2 and self._wipe_retired():
            # A retirement cut short after its record was logged: finished now.
            fleet = self.fleet()
            return fleet.epoch or 0, fleet.retired_below
        if len(sets) < 2:
            raise DeploymentError(
                "nothing to retire: this deployment runs one node set",
                hint="`local rotate` makes a new one; retire the old one once entries moved",
            )
        first, fleet = sets[-1], self.fleet()
        if fleet.epoch is None:
            raise DeploymentError("the current fleet was never deployed (no epoch in fleet.toml)")
        # The retired nodes' tokens and stores are deleted below: a key still there would
        # then open only with its recovery code (review s40-R2, a key lost that way).
        held = [] if force else self.keys_held(sets[:-1])
        if held:
            named = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise DeploymentError(
                f"not retired: the older node sets still hold {len(held)} live"
                f" key{'s' if len(held) != 1 else ''} ({named}); retiring deletes them, and"
                " each would then open only with its recovery code; nothing was changed",
                hint="a recovery with the password moves a key to the current fleet: run"
                " `backupvault vault status` and `backupvault backup list` on each device"
                " that uses one, then `local retire` again (or `local retire --force` to"
                " retire anyway)",
            )
        for epoch in sets:
            for index in range(self.node_count(epoch)):
                self.stop_process(self.node_name(index, epoch))
        self.stop_process("relay")
        for which in self.witnesses():
            self.start_witness(which)
        epoch = fleet.epoch + 1
        bundle = self._deploy_and_log(self.fleet_dir() / "fleet.toml", epoch, first)
        self._rewrite_relay_config(self.fleet(), bundle, [])
        self.write_client_config(self.fleet(), self.relay_url(), ACCOUNT)
        self._wipe_retired()
        self._up(len(fleet.nodes), timeout)
        return epoch, first

    def keys_held(self, sets: list[int]) -> list[str]:
        """The entries ("account/entry") one of these node sets can still open: held live
        with a share by at least a threshold of its nodes (a majority), by `node inspect`
        on each node's store (running or not). Fewer holders open nothing (a node behind
        on a delete, say), so they do not hold a retirement back."""
        held: set[str] = set()
        for first in sets:
            nodes = self.node_count(first)
            holders: dict[str, int] = {}
            for index in range(nodes):
                config = str(self.node_config(index, first))
                out = self._backupvault(["node", "inspect", "--config", config], index, first)
                for entry in json.loads(out)["entries"]:
                    if entry.get("status") == "live" and entry.get("holds_share"):
                        name = f"{entry['account']}/{entry['entry']}"
                        holders[name] = holders.get(name, 0) + 1
            held |= {name for name, count in holders.items() if count >= nodes // 2 + 1}
        return sorted(held)

    def _wipe_retired(self) -> bool:
        """Delete what made each retired set's nodes: tokens (their sealing keys), PINs,
        stores and configs (docs/operations.md, "Retiring an older epoch", step 3). Their
        shares still evaluate the OPRF for the entries that never moved, so t of them
        with a copy of such an entry's manifest would give offline guesses at its
        password; no client asks them again, so they serve no one. Only once the record
        that retires them is logged (fleet.toml says so only then); whether anything was
        left to delete (a retirement cut short, which `local retire` finishes)."""
        sets, retired = self._sets()
        found = False
        for epoch in (e for e in sets if e < retired):
            fleet_dir = self.fleet_dir(epoch)
            for index in range(len(self.fleet(epoch).nodes)):
                # The token first: without its sealing key the store's rows cannot be opened.
                made = [f"node{index}-token", f"node{index}", f"node{index}.pin"]
                for path in (fleet_dir / name for name in [*made, f"node{index}.toml"]):
                    if not path.exists() and not path.is_symlink():
                        continue
                    found = True
                    try:
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path)
                        else:
                            path.unlink()
                    except OSError as err:
                        raise DeploymentError(
                            f"could not delete {path} of retired epoch {epoch}: {err.strerror}",
                            hint="delete it by hand (it holds a retired node's keys or"
                            " store), then run `local retire` again",
                        ) from None
        return found

    # ---- processes ---------------------------------------------------------------------

    def _recorded(self) -> dict[str, dict[str, Any]]:
        """Every process processes.json names by a pid that can be one (a positive whole
        number: -1 would signal every process of the user), running or not."""
        try:
            data = json.loads(self.processes_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as err:
            raise self._damaged(str(err)) from None
        if not isinstance(data, dict):
            raise self._damaged("not a JSON object")
        return {
            name: info
            for name, info in data.items()
            if isinstance(info, dict) and type(info.get("pid")) is int and info["pid"] > 0
        }

    def _processes(self) -> dict[str, dict[str, Any]]:
        """The processes this deployment started that still have their pid: an entry whose
        pid now belongs to another process (reused after a reboot or a crash) is left out,
        so that nothing here ever signals a process it did not start, or takes one for a
        node."""
        return {
            name: info
            for name, info in self._recorded().items()
            if _same_process(info["pid"], info.get("started"))
        }

    def _damaged(self, why: str) -> DeploymentError:
        return DeploymentError(
            f"{self.processes_file} is not a list of this deployment's processes ({why})",
            hint=f"stop its processes by hand (those whose command line names {self.root}),"
            " then delete the file and run the command again",
        )

    def _save_processes(self, processes: dict[str, dict[str, Any]]) -> None:
        replace_file(self.processes_file, json.dumps(processes, indent=2).encode(), mode=0o644)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> int:
        (self.root / "logs").mkdir(exist_ok=True)
        log = (self.root / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-I", "-m", "backupvault", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return process.pid

    def _running_pid(self, name: str) -> int | None:
        """The pid of `name`, if the process `local up` started under it still runs."""
        pid = self._processes().get(name, {}).get("pid")
        return pid if _alive(pid) else None

    def _record(self, name: str, pid: int) -> None:
        """Note that `name` now runs as `pid`; the other entries are kept as they are (one
        that exited still shows in `status`, not running, with its pid)."""
        processes = self._recorded()
        processes[name] = self._entry(pid)
        self._save_processes(processes)

    @staticmethod
    def _entry(pid: int) -> dict[str, Any]:
        """What processes.json keeps of a process: its pid, and when it started, which
        tells it from a later process given the same pid."""
        return {"pid": pid, "started": _start_time(pid)}

    def start_node(self, index: int, epoch: int | None = None) -> None:
        epoch = self.current_epoch() if epoch is None else epoch
        name = self.node_name(index, epoch)
        if self._running_pid(name) is not None:
            return
        pid = self._spawn(
            name,
            ["node", "serve", "--config", str(self.node_config(index, epoch))],
            self._node_env(index, epoch),
        )
        self._record(name, pid)

    def start_witness(self, which: str = "witness") -> None:
        if self._running_pid(which) is not None:
            return
        config = self.witness_dir(which) / "witness.toml"
        pid = self._spawn(which, ["witness", "serve", "--config", str(config)], dict(os.environ))
        self._record(which, pid)

    def _wait_witness(self, which: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _healthy(f"{self.witness_url(which)}/v1/witness", ready=False):
                return
            time.sleep(0.05)
        raise DeploymentError(
            f"the witness {which} did not start in {timeout:.0f} s",
            hint=f"see {self.root / 'logs' / f'{which}.log'}",
        )

    def start_relay(self) -> None:
        if self._running_pid("relay") is not None:
            return
        pid = self._spawn(
            "relay", ["relay", "serve", "--config", str(self.root / "relay.toml")], dict(os.environ)
        )
        self._record("relay", pid)

    def signal_process(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to a running process and return at once (it stays listed, so
        `stop_process` still reaps it)."""
        pid = self._running_pid(name)
        if pid is not None:
            os.kill(pid, sig)

    def stop_process(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        pid = self._running_pid(name)
        if pid is not None:
            os.kill(pid, sig)
            if not _wait_gone(pid):
                # Kept in processes.json: forgotten, it would hold its port unknown to
                # every later command, and the next start of `name` would fail to listen.
                raise DeploymentError(
                    f"{name} (pid {pid}) is still running after SIGKILL: it may be stuck"
                    " in the kernel (a disk or device that does not answer)",
                    hint=f"find out what holds it (cat /proc/{pid}/stack, as root), then run"
                    " the command again once it has exited",
                )
        processes = self._recorded()
        processes.pop(name, None)
        self._save_processes(processes)

    def up(self, nodes: int = 5, timeout: float = 60.0) -> None:
        """Start every process (provisioning the first time). If the deployment does not
        come up, what this call started is stopped again: a failed `up` leaves no witness
        or relay running that the user did not ask to keep."""
        if not self.provisioned():
            local_ports()  # a bad BACKUPVAULT_PORTS stops it before anything is written
        private_folder(self.root)  # before anything in it is read or started
        with self._exclusive():
            self._up(nodes, timeout)

    def _up(self, nodes: int, timeout: float) -> None:
        before = set(self.running())
        try:
            if not self.provisioned():
                self.provision(nodes)
            for which in self.witnesses():
                self.start_witness(which)
            for epoch in self.epochs():
                for index in range(self.node_count(epoch)):
                    self.start_node(index, epoch)
            self.start_relay()
            self.wait_ready(timeout)
        except BaseException as failed:
            for name in set(self.running()) - before:
                # One stuck process stays recorded; the others still stop, and the
                # failure that stopped the start is what the user sees.
                with contextlib.suppress(DeploymentError):
                    self.stop_process(name)
            if isinstance(failed, DeploymentError) and "refuses to join fleet" in failed.message:
                if len(self.epochs()) > 1:  # `local upgrade` refuses it: not that way out
                    raise DeploymentError(
                        failed.message,
                        hint="this local deployment was rotated, and its records were made"
                        f" by another version of backupvault; {ROTATED_UPGRADE_HINT}",
                    ) from failed
                raise DeploymentError(
                    failed.message,
                    hint="this local deployment's record was made by another version of"
                    f" backupvault: `backupvault local upgrade --dir {self.root}` deploys a"
                    " record for the version installed now (your keys and backups stay)",
                ) from failed
            raise

    def running(self) -> list[str]:
        """The names of this deployment's processes that are alive."""
        return [name for name, info in self._processes().items() if _alive(info.get("pid"))]

    def all_running(self) -> bool:
        """Whether every process of every epoch (nodes, witness, relay) is alive."""
        wanted = {"relay", *self.witnesses()} | {
            self.node_name(i, e) for e in self.epochs() for i in range(self.node_count(e))
        }
        return wanted <= set(self.running())

    def down(self) -> list[str]:
        """Stops every process; returns the names of those that were running."""
        if not (self.lock_file.exists() or self.processes_file.exists()):
            return []  # nothing was ever started there (and no lock file is left behind)
        with self._exclusive():
            stopped = self.running()
            stuck: list[DeploymentError] = []
            for name in list(self._processes()):
                try:
                    self.stop_process(name)
                except DeploymentError as err:  # the rest still stop
                    stuck.append(err)
            if stuck:
                raise stuck[0]  # processes.json keeps what still runs
            self.processes_file.unlink(missing_ok=True)
            return stopped

    def wait_ready(self, timeout: float = 60.0, nodes: list[int] | None = None) -> None:
        """Until the relay, the witness and the nodes (of every epoch; or `nodes` of the
        current one) answer."""
        deadline = time.monotonic() + timeout
        current = self.current_epoch()
        wanted = None if nodes is None else {self.node_name(i, current) for i in nodes}
        late: list[str] = []
        while time.monotonic() < deadline:
            status = {
                name: info
                for name, info in self.status().items()
                if wanted is None or name in wanted or name == "relay" or name in WITNESSES
            }
            if all(info["healthy"] for info in status.values()):
                return
            # A process that has exited will not become ready: say why now, not at the
            # deadline (its log's last lines hold its error).
            exited = [name for name, info in status.items() if info["pid"] and not info["running"]]
            if exited:
                why = self.last_words(exited[0])
                raise DeploymentError(
                    f"{', '.join(exited)} exited before becoming ready: {why}",
                    hint=f"see {self.root / 'logs' / f'{exited[0]}.log'}",
                )
            late = [name for name, info in status.items() if not info["healthy"]]
            time.sleep(0.2)
        logs = self.root / "logs"
        raise DeploymentError(
            f"the local deployment did not become ready in {timeout:g} s"
            + (f" (not ready: {', '.join(late)})" if late else ""),
            hint=f"see {', '.join(str(logs / f'{name}.log') for name in late[:3])}"
            if late
            else f"see the logs in {logs} (one per node, the witness and the relay)",
        )

    def last_words(self, name: str) -> str:
        """The last lines a process logged (its error and hint), in one line."""
        try:
            lines = (self.root / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " / ".join(line.strip() for line in lines[-2:] if line.strip()) or "no log"

    def status(self) -> dict[str, dict[str, Any]]:
        """Each process of the deployment: the pid it was started with (None if never),
        whether that process still runs, its URL and whether it answers (only while it
        runs: what holds the port after it exited is not it). A process that exited shows
        its pid, not running: `wait_ready` says so at once, with its log."""
        recorded = self._recorded()
        ours = self._processes()
        listening = _listening_sockets()

        def started(name: str) -> dict[str, Any]:
            pid = recorded.get(name, {}).get("pid")
            return {"pid": pid, "running": name in ours and _alive(pid)}

        def answers(process: dict[str, Any], url: str, ready: bool) -> bool:
            # Only the process `local up` started counts: whatever else holds its port
            # (another program, another deployment's node) is not it, whether it has
            # exited or has not failed to listen yet.
            if not process["running"]:
                return False
            port = urlsplit(url).port
            owned = (
                listening is None
                or port is None
                or bool(listening.get(port, set()) & _socket_inodes(process["pid"]))
            )
            return owned and _healthy(url, ready)

        report: dict[str, dict[str, Any]] = {}
        for epoch in self.epochs():
            fleet = self.fleet(epoch)
            for node in fleet.nodes:
                name = self.node_name(node.index, epoch)
                process = started(name)
                report[name] = {
                    **process,
                    "url": node.url,
                    # The record's epoch (an upgrade's is past the node set's folder).
                    "epoch": fleet.epoch or epoch,
                    "healthy": answers(process, f"{node.url}/v1/health", ready=True),
                }
        for which in self.witnesses():
            url = self.witness_url(which)
            process = started(which)
            report[which] = {
                **process,
                "url": url,
                "healthy": answers(process, f"{url}/v1/witness", ready=False),
            }
        relay_url = self.relay_url()
        process = started("relay")
        report["relay"] = {
            **process,
            "url": relay_url,
            "healthy": answers(process, f"{relay_url}/v1/health", ready=False),
        }
        return report

    def inspect(
        self, index: int, account: str, entry: str, epoch: int | None = None
    ) -> dict[str, Any]:
        """A node's on-disk view of one entry (runs `node inspect` with its token)."""
        args = ["node", "inspect", "--config", str(self.node_config(index, epoch))]
        out = self._backupvault([*args, "--account", account, "--entry", entry], index, epoch)
        data: dict[str, Any] = json.loads(out)
        return data

    def metrics(self, epoch: int | None = None) -> dict[str, dict[str, Any]]:
        """Each running node's counters (evaluations, commits, refusals)."""
        report: dict[str, dict[str, Any]] = {}
        key = self.relay_key()
        for node in self.fleet(epoch).nodes:
            with contextlib.suppress(MetricsUnavailable):  # a node not running
                report[f"node{node.index}"] = node_metrics(key, node.url, node.index, timeout=2)
        return report

    def relay_url(self) -> str:
        data = tomllib.loads((self.root / "client.toml").read_text())
        return str(data["relay_url"])


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot: field 22 of /proc/<pid>/stat);
    None without /proc or without such a process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _command_line(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return None


def _same_process(pid: object, started: object) -> bool:
    """Whether `pid` (from processes.json) is still the process `local up` started: a
    positive pid that started when recorded (`started`); a file of an older version
    records no start, and then it must at least be a backupvault process. Without /proc
    (not Linux) the pid is taken as it is."""
    if type(pid) is not int or pid <= 0:
        return False
    if not os.path.isdir("/proc/self"):
        return True
    if type(started) is int:
        return _start_time(pid) == started
    command = _command_line(pid)
    return command is not None and b"\0backupvault\0" in command


def _listening_sockets() -> dict[int, set[int]] | None:
    """Port -> inodes of the TCP sockets listening on it (Linux: /proc/net/tcp and tcp6);
    None where they cannot be read, and then a port's owner is not checked."""
    found: dict[int, set[int]] = {}
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows, None)  # the header
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        port = int(fields[1].rpartition(":")[2], 16)
                        found.setdefault(port, set()).add(int(fields[9]))
    except (OSError, ValueError, IndexError):
        return None
    return found


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open (none if it cannot be read)."""
    inodes = set()
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in descriptors:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target.endswith("]"):
                inodes.add(int(target[8:-1]))
    return inodes


def _alive(pid: int | None) -> bool:
    if type(pid) is not int or pid <= 0:  # 0 and -1 would signal a group, or everyone
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


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Until the process has exited: `timeout` seconds for its own shutdown, then SIGKILL
    and as long again for that to take; whether it is gone. Returning while it still runs
    let a node killed on a loaded machine answer the next start's health poll for its
    successor."""
    if _exited(pid, time.monotonic() + timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _exited(pid, time.monotonic() + timeout)


def _exited(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with_child = False
        with contextlib.suppress(ChildProcessError):
            with_child = os.waitpid(pid, os.WNOHANG) != (0, 0)
        if with_child or not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _healthy(url: str, ready: bool) -> bool:
    try:
        answer = httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    if not ready:
        return True
    try:
        body = answer.json()
    except ValueError:  # not a node: another program holds the port
        return False
    return isinstance(body, dict) and body.get("ready") is True


def _own_token_expiry(token: object, account: str) -> float | None:
    """When a token this deployment minted for `account` expires; None for anything else.
    Read without checking the signature: the worst a forged claim here can do is have
    `local up` mint a fresh token from the operator key, which it may do anyway."""
    if not isinstance(token, str):
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, RecursionError):
        return None
    expiry = claims.get("exp")
    if claims.get("iss") != ISSUER or claims.get("sub") != account:
        return None
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        return None
    return float(expiry)
