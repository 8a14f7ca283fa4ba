"""`local up` renews the client configs' account tokens before they run out
(`LocalDeployment.renew_client_tokens`), and leaves alone what it did not issue."""

from __future__ import annotations

import base64
import time
import tomllib
from pathlib import Path

import jwt
import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.deploy.local import (
    AUDIENCE,
    ISSUER,
    TOKEN_TTL,
    LocalDeployment,
)
from backupvault.tokens import (
    TokenVerifier,
    device_key_from_hex,
    device_key_hex,
    fleet_audience,
    generate_device_key,
    generate_operator_key,
    mint_token,
    save_operator_key,
)

DAY = 24 * 3600
FLEET_ID = bytes(range(32))


def _deployment(root: Path) -> tuple[LocalDeployment, Ed25519PrivateKey]:
    operator = generate_operator_key()
    save_operator_key(operator, root / "operator.key", root / "operator.pub")
    return LocalDeployment(root), operator


def _write_config(
    root: Path,
    name: str,
    operator: Ed25519PrivateKey,
    *,
    minted_days_ago: float,
    issuer: str = ISSUER,
) -> dict[str, object]:
    device = generate_device_key()
    issued = time.time() - minted_days_ago * DAY
    config: dict[str, object] = {
        "relay_url": "http://127.0.0.1:1",
        "account": "local-user",
        "token": mint_token(
            operator,
            "local-user",
            issuer=issuer,
            audience=AUDIENCE,
            ttl_seconds=TOKEN_TTL,
            now=issued,
        ),
        "fleet_token": mint_token(
            operator,
            "local-user",
            issuer=issuer,
            audience=fleet_audience(FLEET_ID),
            ttl_seconds=TOKEN_TTL,
            now=issued,
            device_key=device.public_key(),
        ),
        "device_key": device_key_hex(device),
        "fleet_id": FLEET_ID.hex(),
    }
    (root / name).write_bytes(tomli_w.dumps(config).encode())
    return config


def _expiry(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_tokens_close_to_expiry_are_renewed_for_the_same_device(tmp_path: Path) -> None:
    deployment, operator = _deployment(tmp_path)
    before = _write_config(tmp_path, "client.toml", operator, minted_days_ago=25)
    ota = _write_config(tmp_path, "client-ota.toml", operator, minted_days_ago=31)  # expired

    assert deployment.renew_client_tokens() == ["client.toml", "client-ota.toml"]

    for name, old in (("client.toml", before), ("client-ota.toml", ota)):
        after = tomllib.loads((tmp_path / name).read_text())
        assert after["device_key"] == old["device_key"]
        assert {k: v for k, v in after.items() if "token" not in k} == {
            k: v for k, v in old.items() if "token" not in k
        }
        for field in ("token", "fleet_token"):
            assert after[field] != old[field]
            assert _expiry(after[field]) > time.time() + TOKEN_TTL - 60
        # The relay and the nodes take them: signed by the operator key, for the fleet,
        # and the fleet token bound to the device key this config still signs with.
        public = operator.public_key()
        assert TokenVerifier(public, ISSUER, AUDIENCE).verify(after["token"]) == "local-user"
        fleet = TokenVerifier(public, ISSUER, fleet_audience(FLEET_ID))
        assert fleet.verify(after["fleet_token"]) == "local-user"
        device = device_key_from_hex(after["device_key"]).public_key().public_bytes_raw()
        cnf = jwt.decode(after["fleet_token"], options={"verify_signature": False})["cnf"]
        assert base64.urlsafe_b64decode(cnf["jwk"]["x"] + "=") == device


def test_tokens_with_time_left_are_kept(tmp_path: Path) -> None:
    deployment, operator = _deployment(tmp_path)
    _write_config(tmp_path, "client.toml", operator, minted_days_ago=5)  # 25 days left
    text = (tmp_path / "client.toml").read_text()

    assert deployment.renew_client_tokens() == []
    assert (tmp_path / "client.toml").read_text() == text


@pytest.mark.parametrize(
    "damage", ["other issuer", "not a token", "bad device key", "not toml", "not utf-8"]
)
def test_what_the_deployment_did_not_issue_is_left_alone(tmp_path: Path, damage: str) -> None:
    deployment, operator = _deployment(tmp_path)
    path = tmp_path / "client.toml"
    issuer = "someone-else" if damage == "other issuer" else ISSUER
    config = _write_config(tmp_path, "client.toml", operator, minted_days_ago=29, issuer=issuer)
    if damage == "not a token":
        config["token"] = "a token from the user's own issuer"
        path.write_bytes(tomli_w.dumps(config).encode())
    elif damage == "bad device key":
        config["device_key"] = "zz"
        path.write_bytes(tomli_w.dumps(config).encode())
    elif damage == "not toml":
        path.write_text("token = [unclosed")
    elif damage == "not utf-8":  # was an UnicodeDecodeError: `local up` said "a bug"
        path.write_bytes(b"\xff\xfe")
    text = path.read_bytes()

    assert deployment.renew_client_tokens() == []
    assert path.read_bytes() == text


def test_a_client_config_that_is_a_folder_is_left_alone(tmp_path: Path) -> None:
    deployment, _ = _deployment(tmp_path)
    (tmp_path / "client-ota.toml").mkdir()  # was an IsADirectoryError
    assert deployment.renew_client_tokens() == []
