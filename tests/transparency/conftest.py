"""Shared material for the transparency tests: keys, a valid record, a witness."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.transparency.note import Signer
from backupvault.transparency.record import DeploymentRecord
from backupvault.transparency.witness import Witness, WitnessPolicy
from backupvault.transparency.witness_store import WitnessStore

WITNESS_NAME = "witness.test/backupvault"
FLEET_ID = bytes.fromhex("0123456789abcdef0123456789abcdef")
MEASUREMENT = bytes(range(32))


def hpke_key(i: int, kem: Kem = Kem.X25519) -> bytes:
    """Node i's HPKE public key (fixed, so records are reproducible)."""
    seed = bytes([i + 1]) * (32 if kem is Kem.X25519 else 96)
    return NodePrivateKey(kem, seed).public_key().to_bytes()


def signing_key(i: int) -> bytes:
    """Node i's Ed25519 public key (fixed)."""
    return (
        Ed25519PrivateKey.from_private_bytes(bytes([0x40 + i]) * 32).public_key().public_bytes_raw()
    )


RELAY_KEY = Ed25519PrivateKey.from_private_bytes(b"\xa0" * 32).public_key().public_bytes_raw()
ISSUER_KEY = Ed25519PrivateKey.from_private_bytes(b"\xb0" * 32).public_key().public_bytes_raw()


def node(
    i: int,
    url: str | None = None,
    *,
    identity: bytes | None = None,
    hpke: bytes | None = None,
    signing: bytes | None = None,
) -> tuple[int, bytes, bytes, bytes, str]:
    """A node entry for `make_record`: (index, identity, HPKE, signing key, url)."""
    return (
        i,
        bytes([i + 1]) * 32 if identity is None else identity,
        hpke_key(i) if hpke is None else hpke,
        signing_key(i) if signing is None else signing,
        f"https://node{i}.vault.test:7100" if url is None else url,
    )


def make_record(**changes: Any) -> DeploymentRecord:
    fields: dict[str, Any] = {
        "fleet_id": FLEET_ID,
        "epoch": 1,
        "guess_limit": 10,
        "nodes": [node(i) for i in range(5)],
        "measurement": MEASUREMENT,
        "time": 1_750_000_000,
        "relay_public_keys": [RELAY_KEY],
        "account_issuer": "accounts.test",
        "account_issuer_public_key": ISSUER_KEY,
    }
    fields.update(changes)
    return DeploymentRecord.create(**fields)


@pytest.fixture(scope="session")
def operator_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def witness_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


WitnessFactory = Callable[..., Witness]


@pytest.fixture
def make_witness(
    tmp_path: Path, witness_key: Ed25519PrivateKey, operator_key: Ed25519PrivateKey
) -> Iterator[WitnessFactory]:
    opened: list[WitnessStore] = []

    def factory(
        *, policy: WitnessPolicy | None = None, db: str = "witness.sqlite", **kw: Any
    ) -> Witness:
        from backupvault.transparency.record import raw_public_key

        if policy is None:
            policy = WitnessPolicy(operators={FLEET_ID: raw_public_key(operator_key)}, **kw)
        store = WitnessStore(tmp_path / db, WITNESS_NAME, raw_public_key(witness_key))
        opened.append(store)
        return Witness(Signer(WITNESS_NAME, witness_key), store, policy)

    yield factory
    for store in opened:
        store.close()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
