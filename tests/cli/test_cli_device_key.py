"""Fleet tokens bound to a device key, through the console script: an operator makes the
device key, mints a fleet token for it, and a config without one is refused clearly."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import tomli_w
from console import backupvault  # tests/cli/console.py
from test_cli_newcomer import _client_toml

from backupvault.tokens import (
    SeenProofs,
    TokenVerifier,
    device_key_from_hex,
    fleet_audience,
    load_operator_public_key,
    sign_request_proof,
)

FLEET_ID = bytes(range(16))


def test_an_operator_mints_a_fleet_token_bound_to_a_new_device_key(tmp_path: Path) -> None:
    assert backupvault("relay", "keygen", "--out", str(tmp_path)).returncode == 0
    made = backupvault("--json", "relay", "device-key")
    assert made.returncode == 0, made.stderr
    device = json.loads(made.stdout)
    mint = [
        "--json", "relay", "mint-token", "--key", str(tmp_path / "operator.key"),
        "--account", "alice", "--issuer", "iss", "--fleet-id", FLEET_ID.hex(),
    ]  # fmt: skip
    unbound = backupvault(*mint)
    assert unbound.returncode != 0 and "give --device-key" in unbound.stderr
    minted = backupvault(*mint, "--device-key", device["device_public_key"])
    assert minted.returncode == 0, minted.stderr
    token = json.loads(minted.stdout)["token"]
    key = device_key_from_hex(device["device_key"])
    node_key = b"\x00\x20" + bytes(32)  # a node's serialized public key
    proof = sign_request_proof(
        key, fleet_id=FLEET_ID, node_index=3, node_key=node_key, token=token, request=b"r"
    )
    verifier = TokenVerifier(
        load_operator_public_key(tmp_path / "operator.pub"), "iss", fleet_audience(FLEET_ID)
    )
    account = verifier.verify_bound(
        token, proof, request=b"r", fleet_id=FLEET_ID, node_index=3, node_key=node_key,
        seen=SeenProofs(),
        now=verifier.clock(),
    )  # fmt: skip
    assert account == "alice"


def test_a_client_config_without_a_device_key_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    data = tomllib.loads(_client_toml(config).read_text())
    del data["device_key"]
    config.write_text(tomli_w.dumps(data))
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "has no device_key: fleet tokens are now bound to a device key" in done.stderr
    assert "relay device-key" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_device_key_names_the_field(tmp_path: Path) -> None:
    config = _client_toml(tmp_path / "client.toml", device_key="12" * 31)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'device_key' is malformed" in done.stderr
    assert "Traceback" not in done.stderr


def test_mint_token_refuses_a_token_no_relay_or_node_would_take(tmp_path: Path) -> None:
    """An account no vault name can be (exit 1, no hint), an empty or too long fleet id,
    or a small-order device key (which every node refuses as the token's `cnf` key) were
    minted all the same, or refused as no usage error: the operator learned of it only
    when the user's vault commands failed."""
    assert backupvault("relay", "keygen", "--out", str(tmp_path)).returncode == 0
    device = json.loads(backupvault("--json", "relay", "device-key").stdout)["device_public_key"]
    mint = ["relay", "mint-token", "--key", str(tmp_path / "operator.key"), "--issuer", "iss"]
    fleet = ["--account", "alice", "--fleet-id", FLEET_ID.hex(), "--device-key"]
    identity = (bytes([1]) + bytes(31)).hex()
    for bad in [
        ["--account", "alice@example.com", "--audience", "aud"],
        ["--account", "a" * 65, "--audience", "aud"],
        ["--account", "alice", "--fleet-id", "", "--device-key", device],
        ["--account", "alice", "--fleet-id", "ab" * 65, "--device-key", device],
        [*fleet, identity],
    ]:
        done = backupvault(*mint, *bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr
    for good in [["--account", "a" * 64, "--audience", "aud"], [*fleet, device]]:
        assert backupvault(*mint, *good).returncode == 0
