"""A fleet.toml with fresh keys for every node, as `node init` and `fleet ceremony` would
leave it (and `fleet deploy`, given an epoch), and `fleet client-config` run on one, for
the operator commands' tests."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.crypto.seal import NodePublicKey
from backupvault.node.config import FleetDescription, FleetNode
from backupvault.tokens import device_key_hex, generate_device_key

#: The account's secrets, given to `fleet client-config` in the environment.
SECRETS = {
    "BACKUPVAULT_RELAY_TOKEN": "relay-token",
    "BACKUPVAULT_FLEET_TOKEN": "fleet-token",
    "BACKUPVAULT_DEVICE_KEY": device_key_hex(generate_device_key()),
}


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def write_fleet_file(
    path: Path, *, fleet_id: bytes | None = None, epoch: int | None = None, nodes: int = 3
) -> FleetDescription:
    """A fleet of `nodes` nodes, each with keys of its own, saved at `path`."""
    members = tuple(
        FleetNode(
            i,
            f"http://127.0.0.1:{9000 + i}",
            _public(Ed25519PrivateKey.generate()),
            NodePublicKey.from_bytes(
                b"\x00\x20" + X25519PrivateKey.generate().public_key().public_bytes_raw()
            ).to_bytes(),
            _public(Ed25519PrivateKey.generate()),
        )
        for i in range(nodes)
    )
    fleet = FleetDescription(
        fleet_id or os.urandom(16), 10, members, (_public(Ed25519PrivateKey.generate()),),
        "iss", _public(Ed25519PrivateKey.generate()),
    )  # fmt: skip
    if epoch is not None:
        fleet = replace(fleet, epoch=epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    fleet.save(path)
    return fleet


def client_config(tmp_path: Path, fleet: Path, *extra: str) -> tuple[int, dict[str, str]]:
    """`fleet client-config --json` for alice from `fleet`, writing tmp_path/client.toml:
    its exit code, and its result (or error) object."""
    from console import backupvault  # tests/cli/console.py: only here, so tests elsewhere
    # (tests/deploy) can import write_fleet_file

    done = backupvault(
        "--json", "fleet", "client-config", "--fleet-file", str(fleet),
        "--relay-url", "http://127.0.0.1:7100", "--account", "alice",
        "--out", str(tmp_path / "client.toml"), *extra,
        env=SECRETS,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout if done.returncode == 0 else done.stderr)
