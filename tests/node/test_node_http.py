"""The node's HTTP face answers bad input with 4xx and a reason, never a 500, and a
request sealed for one account cannot be replayed under another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from backupvault.crypto.seal import FleetPrivateKey, Kem, seal_request
from backupvault.fleet.channel import PeerChannel
from backupvault.hsm.ceremony import make_fleet_secrets
from backupvault.hsm.firmware import VaultFirmware
from backupvault.node.http import create_app
from backupvault.node.service import NodeService
from backupvault.node.store import NodeStore
from backupvault.protocol import ErrorResponse, Op, StatusRequest, StatusResponse, decode_response

SECRETS = make_fleet_secrets(b"fleet", os.urandom, Kem.X25519)
FLEET_KEY = FleetPrivateKey.from_bytes(SECRETS.hpke_private_key).public_key()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[TestClient]:
    identity = X25519PrivateKey.generate()
    service = NodeService(
        0,
        {0: "http://127.0.0.1:1"},  # a fleet of one: ready at once
        VaultFirmware(SECRETS, os.urandom),
        PeerChannel(0, identity.private_bytes_raw(), {0: b"\0" * 32}, SECRETS.fleet_id, os.urandom),
        NodeStore(tmp_path / "store.sqlite", 0, os.urandom(32)),
    )
    with TestClient(create_app(service)) as client:
        yield client


HEADERS = {"x-backupvault-account": "alice", "x-backupvault-entry": "main"}


def test_status_through_the_seal(node: TestClient) -> None:
    sealed, key = seal_request(
        FLEET_KEY, SECRETS.fleet_id, "status", StatusRequest("alice", "main").to_bytes()
    )
    answer = node.post("/v1/client/status", content=sealed, headers=HEADERS)
    assert answer.status_code == 200
    assert isinstance(decode_response(Op.STATUS, key.open(answer.content)), StatusResponse)


def test_request_sealed_for_another_account_is_refused(node: TestClient) -> None:
    body = StatusRequest("mallory", "main").to_bytes()
    sealed, _ = seal_request(FLEET_KEY, SECRETS.fleet_id, "status", body)
    answer = node.post("/v1/client/status", content=sealed, headers=HEADERS)
    assert answer.status_code == 403
    assert answer.json()["error"] == "mismatch"


def test_request_sealed_for_another_op_is_refused(node: TestClient) -> None:
    body = StatusRequest("alice", "main").to_bytes()
    sealed, _ = seal_request(FLEET_KEY, SECRETS.fleet_id, "delete", body)
    answer = node.post("/v1/client/delete", content=sealed, headers=HEADERS)
    assert answer.status_code == 400  # a status body is not a delete request


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/v1/client/nope", HEADERS, b"x", 404),
        ("/v1/client/status", {}, b"x", 400),
        ("/v1/client/status", {**HEADERS, "x-backupvault-account": "a/b"}, b"x", 400),
        ("/v1/client/status", HEADERS, b"", 400),
        ("/v1/client/status", HEADERS, b"\0" * 100, 400),
        ("/v1/client/status", HEADERS, b"\0" * (65 * 1024), 413),
        ("/v1/peer", {}, b"garbage", 400),
    ],
)
def test_bad_input_gets_a_reason(
    node: TestClient, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    answer = node.post(path, content=body, headers=headers)
    assert answer.status_code == status
    assert answer.json()["detail"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from([str(op) for op in Op]), body=st.binary(max_size=2000))
def test_random_sealed_bodies_never_500(node: TestClient, op: str, body: bytes) -> None:
    answer = node.post(f"/v1/client/{op}", content=body, headers=HEADERS)
    assert 400 <= answer.status_code < 500


def test_error_response_is_sealed_not_plain(node: TestClient) -> None:
    # Recovering an entry that does not exist: the reason travels inside the seal.
    from backupvault.crypto import opaque
    from backupvault.protocol import RecoverStartRequest

    _, ke1 = opaque.client_login_start(b"pw")
    body = RecoverStartRequest("alice", "main", ke1.to_bytes()).to_bytes()
    sealed, key = seal_request(FLEET_KEY, SECRETS.fleet_id, "recover-start", body)
    answer = node.post("/v1/client/recover-start", content=sealed, headers=HEADERS)
    assert answer.status_code == 200
    assert b"not_registered" not in answer.content
    error = decode_response(Op.RECOVER_START, key.open(answer.content))
    assert isinstance(error, ErrorResponse) and error.code == "not_registered"
