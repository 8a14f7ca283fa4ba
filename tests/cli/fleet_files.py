"""A fleet.toml with fresh keys for every node, as `node init` and `fleet ceremony` would
leave it (and `fleet deploy`, given an epoch), for the operator commands' tests."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.crypto.seal import NodePublicKey
from backupvault.node.config import FleetDescription, FleetNode


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
