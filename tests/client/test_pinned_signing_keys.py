"""Node signing keys a client pins (client.toml, or `FleetKeys` built from them) must be
points of the prime-order subgroup, as the deployment record's already are
(`crypto.ed25519.check_public_key`): under a small-order key OpenSSL verifies the forged
signature (R = identity, S = 0) for every message, so that node's share acknowledgements
would prove nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.config import ClientConfig, MalformedField
from backupvault.client.threshold import FleetKeys
from backupvault.crypto.seal import NodePrivateKey
from backupvault.errors import InvalidInput
from backupvault.tokens import device_key_hex

IDENTITY = bytes([1]) + bytes(31)
ORDER_EIGHT = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def _real_keys(count: int) -> list[bytes]:
    return [Ed25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(count)]


@pytest.mark.parametrize("bad", [IDENTITY, ORDER_EIGHT], ids=["identity", "order-8"])
def test_fleet_keys_refuse_a_small_order_signing_key(bad: bytes) -> None:
    keys = _real_keys(3)
    keys[1] = bad
    with pytest.raises(InvalidInput, match="prime-order subgroup"):
        FleetKeys(tuple(keys), 2, 0)
    assert FleetKeys(tuple(_real_keys(3)), 2, 0).threshold == 2


def _pinned_config(signing_keys: list[bytes]) -> dict[str, Any]:
    return {
        "relay_url": "http://127.0.0.1:7100",
        "account": "alice",
        "token": "relay-token",
        "fleet_token": "fleet-token",
        "device_key": device_key_hex(Ed25519PrivateKey.generate()),
        "fleet_id": "f1ee70",
        "node_public_keys": [
            NodePrivateKey.generate().public_key().to_bytes().hex() for _ in signing_keys
        ],
        "node_signing_keys": [key.hex() for key in signing_keys],
        "epoch": 0,
    }


def test_a_pinned_config_with_a_small_order_signing_key_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    keys = _real_keys(3)
    assert ClientConfig.parse(path, _pinned_config(keys)).node_signing_keys == tuple(keys)
    keys[2] = IDENTITY
    with pytest.raises(MalformedField, match="prime-order subgroup") as caught:
        ClientConfig.parse(path, _pinned_config(keys))
    assert caught.value.field == "node_signing_keys"


def test_an_earlier_epochs_small_order_signing_key_is_refused(tmp_path: Path) -> None:
    data = _pinned_config(_real_keys(3))
    data["epoch"] = 1
    old = _pinned_config([*_real_keys(2), ORDER_EIGHT])
    data["previous_fleets"] = [
        {
            "epoch": 0,
            "node_public_keys": old["node_public_keys"],
            "node_signing_keys": old["node_signing_keys"],
        }
    ]
    with pytest.raises(MalformedField, match="prime-order subgroup") as caught:
        ClientConfig.parse(tmp_path / "client.toml", data)
    assert caught.value.field == "previous_fleets"


@pytest.mark.parametrize(("threshold", "nodes"), [(1, 3), (2, 5), (2, 4), (1, 2)])
def test_fleet_keys_refuse_a_threshold_that_is_no_majority(threshold: int, nodes: int) -> None:
    """The client trusts a manifest t nodes return byte for byte and counts t verified
    partials: with 2t ≤ N, t hostile nodes are a minority and could make a manifest of
    their own agreed (and two manifests could both reach t). An SDK caller's FleetKeys took
    any 1 ≤ t ≤ N; the record and the pinned config always gave a majority."""
    with pytest.raises(InvalidInput, match="majority"):
        FleetKeys(tuple(_real_keys(nodes)), threshold, 0)
    assert FleetKeys(tuple(_real_keys(nodes)), nodes // 2 + 1, 0).threshold == nodes // 2 + 1
