"""The node's HTTP face answers bad input with 4xx and a reason, never a 500, and a
request sealed for one account cannot be replayed under another."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.testclient import TestClient
from tests.stalled_body import post_stalled_body

from backupvault import hop as hop_module
from backupvault import serving
from backupvault.codec import Message
from backupvault.crypto.seal import Kem, NodePrivateKey, ResponseKey, seal_request
from backupvault.fleet.channel import PeerChannel
from backupvault.hop import HopVerifier, metrics_headers, sign_headers
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.node.http import MAX_BODY, create_app
from backupvault.node.service import NodeService, StoreStart
from backupvault.node.store import NodeStore
from backupvault.protocol import (
    REMOVED_OPERATIONS,
    RESPONSE_PADDED_SIZE,
    AuthorizedRequest,
    DeleteShareRequest,
    ErrorResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    decode_response,
    is_valid_name,
)
from backupvault.serving import read_body
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token, sign_request_proof

FLEET_ID = b"fleet"
NODE_KEY = NodePrivateKey.generate(Kem.X25519)
ISSUER_KEY = Ed25519PrivateKey.generate()
RELAY_KEY = Ed25519PrivateKey.generate()
ACCOUNTS = TokenVerifier(ISSUER_KEY.public_key(), "issuer", fleet_audience(FLEET_ID))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app(tmp_path)) as client:
        yield client


def _app(tmp_path: Path, started: float = 0.0, store_start: StoreStart | None = None) -> Any:
    """Node 0's app; `started`: when its process started (HopVerifier.not_before)."""
    identity = X25519PrivateKey.generate()
    service = NodeService(
        0,
        {0: ("127.0.0.1", 0)},  # a fleet of one: ready at once; any free peer port
        VaultFirmware(
            FLEET_ID,
            NodeKey(0, NODE_KEY, Ed25519PrivateKey.generate()),
            ACCOUNTS,
            FleetShape(0, 1, 1),
            lambda key: None,
        ),
        PeerChannel(0, identity.private_bytes_raw(), {0: b"\0" * 32}, FLEET_ID, os.urandom),
        NodeStore(tmp_path / "store.sqlite", 0, os.urandom(32)),
        store_start=store_start,
    )
    hop = HopVerifier(0, [RELAY_KEY.public_key().public_bytes_raw()], not_before=started)
    return create_app(service, hop)


def test_a_request_signed_before_the_node_started_is_not_ready_not_refused(
    tmp_path: Path,
) -> None:
    """Its previous process may have taken it (the nonces are gone): the node answers as
    one that is catching up, 503 `node_not_ready`, so the relay asks again, rather than
    401, which the relay takes for a node outside its contract."""
    body = _manifest_request()
    signed_at = float(int(time.time()))  # the relay signs whole seconds
    headers = {
        **HEADERS,
        **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body, signed_at),
    }
    with TestClient(_app(tmp_path, started=signed_at + 0.5)) as client:
        answer = client.post("/v1/client/manifest", content=body, headers=headers)
        assert answer.status_code == 503
        assert answer.json()["error"] == "node_not_ready"
        again = {
            **HEADERS,
            **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body, signed_at + 1),
        }
        assert client.post("/v1/client/manifest", content=body, headers=again).status_code == 200


HEADERS = {"x-backupvault-account": "alice", "x-backupvault-entry": "main"}


DEVICE_KEY = Ed25519PrivateKey.generate()


def fleet_token(account: str = "alice") -> str:
    audience = fleet_audience(FLEET_ID)
    return mint_token(
        ISSUER_KEY,
        account,
        issuer="issuer",
        audience=audience,
        ttl_seconds=60,
        device_key=DEVICE_KEY.public_key(),
    )


def seal(op: str, request: Message, token: str | None = None) -> tuple[bytes, ResponseKey]:
    """A client's sealed request: the fleet token, the request and the device's proof,
    sealed to node 0."""
    token = token or fleet_token()
    payload = request.to_bytes()
    proof = sign_request_proof(
        DEVICE_KEY,
        fleet_id=FLEET_ID,
        node_index=0,
        node_key=NODE_KEY.public_key().to_bytes(),
        token=token,
        request=payload,
    )
    body = AuthorizedRequest(token, payload, proof).to_bytes()
    return seal_request(NODE_KEY.public_key(), FLEET_ID, 0, op, body)


def post(
    node: TestClient, op: str, body: bytes, headers: dict[str, str] = HEADERS, *, sign: bool = True
) -> Any:
    """POST as the relay does: with its signature over this request, for node 0."""
    account = headers.get("x-backupvault-account", "")
    entry = headers.get("x-backupvault-entry", "")
    signed = dict(headers)
    if sign and is_valid_name(account) and is_valid_name(entry):
        signed.update(sign_headers(RELAY_KEY, 0, op, account, entry, body))
    return node.post(f"/v1/client/{op}", content=body, headers=signed)


def test_manifest_through_the_seal(node: TestClient) -> None:
    sealed, key = seal("manifest", ManifestRequest("alice", "main"))
    answer = post(node, "manifest", sealed)
    assert answer.status_code == 200
    assert isinstance(decode_response(Op.MANIFEST, key.open(answer.content)), ManifestResponse)


def test_request_sealed_for_another_account_is_refused(node: TestClient) -> None:
    sealed, _ = seal("manifest", ManifestRequest("mallory", "main"))
    answer = post(node, "manifest", sealed)
    assert answer.status_code == 403
    assert answer.json()["error"] == "mismatch"


def test_request_sealed_for_another_op_is_refused(node: TestClient) -> None:
    sealed, _ = seal("evaluate", ManifestRequest("alice", "main"))
    answer = post(node, "evaluate", sealed)
    assert answer.status_code == 400  # a manifest body is not an evaluate request


@pytest.mark.parametrize("op", sorted(REMOVED_OPERATIONS))
def test_the_removed_single_seed_operations_say_so(node: TestClient, op: str) -> None:
    answer = post(node, op, b"x")
    assert answer.status_code == 410
    assert answer.json()["error"] == "removed_operation"
    assert "single-seed" in answer.json()["detail"]


class _UncheckedManifestRequest(ManifestRequest):
    """What a hostile client could seal: a manifest request its own checks would refuse."""

    def __post_init__(self) -> None:
        pass


def test_non_ascii_sealed_account_is_a_400_not_a_500(node: TestClient) -> None:
    sealed, _ = seal("manifest", _UncheckedManifestRequest("alicé", "main"))
    answer = post(node, "manifest", sealed)
    assert answer.status_code == 400
    assert "1-64 characters" in answer.json()["detail"]


# ---- only a listed relay is heard (the relay → node hop) -----------------------------------


def _manifest_request() -> bytes:
    return seal("manifest", ManifestRequest("alice", "main"))[0]


def test_unsigned_request_is_refused(node: TestClient) -> None:
    answer = post(node, "manifest", _manifest_request(), sign=False)
    assert answer.status_code == 401
    assert answer.json()["error"] == "relay_signature"


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(node: TestClient) -> None:
    """Starlette redirected `/v1/client/manifest/` to the host the Host header names,
    before the relay signature was looked at: a stranger got a 307 where the node's
    contract says 401, and a redirect to anywhere."""
    for method, path in (("POST", "/v1/client/manifest/"), ("GET", "/v1/health/")):
        answer = node.request(
            method, path, headers={"host": "evil.example"}, follow_redirects=False
        )
        assert answer.status_code == 404
        assert "location" not in answer.headers


@pytest.mark.parametrize(
    "forgery",
    [
        "other key",
        "other node",
        "other body",
        "other account",
        "old",
        "future",
        "bad hex",
        "spaced nonce",
        "spaced signature",
    ],
)
def test_forged_or_stale_signatures_are_refused(node: TestClient, forgery: str) -> None:
    body = _manifest_request()
    key, index, signed_body, account, at = RELAY_KEY, 0, body, "alice", time.time()
    if forgery == "other key":
        key = Ed25519PrivateKey.generate()
    if forgery == "other node":
        index = 1
    if forgery == "other body":
        signed_body = body + b"x"
    if forgery == "other account":
        account = "mallory"
    if forgery == "old":
        at -= 120
    if forgery == "future":
        at += 120
    headers = {**HEADERS, **sign_headers(key, index, "manifest", account, "main", signed_body, at)}
    if forgery == "bad hex":
        headers["X-Backupvault-Signature"] = "zz" * 64
    # The right length with spaces: `bytes.fromhex` skips them and gives fewer bytes (a
    # short nonce made the node answer 500, before anyone was authenticated).
    if forgery == "spaced nonce":
        headers["X-Backupvault-Nonce"] = " ".join(["00"] * 11)  # 32 characters, 11 bytes
    if forgery == "spaced signature":
        headers["X-Backupvault-Signature"] = " ".join(["ab"] * 43)  # 128 characters
    answer = node.post("/v1/client/manifest", content=body, headers=headers)
    assert answer.status_code == 401, forgery
    assert answer.json()["detail"]


def test_a_replayed_signed_request_is_refused(node: TestClient) -> None:
    body = _manifest_request()
    headers = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body)}
    assert node.post("/v1/client/manifest", content=body, headers=headers).status_code == 200
    again = node.post("/v1/client/manifest", content=body, headers=headers)
    assert again.status_code == 401
    assert "replay" in again.json()["detail"]


def test_a_hostile_relay_cannot_redirect_cut_or_replay_what_it_forwards(
    node: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay holds a listed key, so it signs whatever it sends: the seal, not the hop,
    must refuse a request pointed at another entry, a copy sealed for another node, a
    truncated copy and a copy sent again (re-signed, with a fresh nonce); and neither the
    node's log nor its answers (which the relay reads) carry the fleet token or the
    sealed bytes."""
    caplog.set_level(logging.DEBUG)
    token = fleet_token()
    answers = []

    def send(body: bytes, entry: str = "main") -> Any:
        answer = post(node, "manifest", body, {**HEADERS, "x-backupvault-entry": entry})
        answers.append(answer.text)
        return answer

    sealed, _ = seal("manifest", ManifestRequest("alice", "main"), token)
    other_entry = send(sealed, entry="other")
    assert other_entry.status_code == 403 and other_entry.json()["error"] == "mismatch"

    payload = AuthorizedRequest(token, ManifestRequest("alice", "main").to_bytes(), b"").to_bytes()
    for_node_1, _ = seal_request(NODE_KEY.public_key(), FLEET_ID, 1, "manifest", payload)
    assert send(for_node_1).status_code == 400

    sealed, _ = seal("manifest", ManifestRequest("alice", "main"), token)
    assert send(sealed[:-1]).status_code == 400
    first = send(sealed)
    assert first.status_code == 200
    replayed = send(sealed)
    assert replayed.status_code == 403 and "used before" in replayed.json()["detail"]

    said = "\n".join([*answers, *(r.getMessage() for r in caplog.records)])
    assert token not in said and token.rsplit(".", 1)[1] not in said
    for secret in (sealed, payload):
        assert secret.hex() not in said and repr(secret)[2:40] not in said


def test_a_relay_without_the_fleet_token_cannot_act(node: TestClient) -> None:
    """A relay (or anyone) that signs correctly but holds only the relay token: the seal
    must carry the account's fleet token, which the relay never sees."""
    relay_token = mint_token(ISSUER_KEY, "alice", issuer="issuer", audience="relay", ttl_seconds=60)
    sealed, _ = seal("manifest", ManifestRequest("alice", "main"), token=relay_token)
    answer = post(node, "manifest", sealed)
    assert answer.status_code == 403
    assert answer.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/v1/client/nope", HEADERS, b"x", 404),
        ("/v1/client/manifest", {}, b"x", 400),
        ("/v1/client/manifest", {**HEADERS, "x-backupvault-account": "a/b"}, b"x", 400),
        ("/v1/client/manifest", HEADERS, b"", 400),
        ("/v1/client/manifest", HEADERS, b"\0" * 100, 400),
        ("/v1/client/manifest", HEADERS, b"\0" * (65 * 1024), 413),
    ],
)
def test_bad_input_gets_a_reason(
    node: TestClient, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    answer = post(node, path.rsplit("/", 1)[1], body, headers)
    assert answer.status_code == status
    assert answer.json()["detail"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from([str(op) for op in Op]), body=st.binary(max_size=2000))
def test_random_sealed_bodies_never_500(node: TestClient, op: str, body: bytes) -> None:
    answer = post(node, op, body)
    assert 400 <= answer.status_code < 500


def test_error_response_is_sealed_and_padded(node: TestClient) -> None:
    # Deleting an entry that does not exist: the reason travels inside the seal, in an
    # answer as long as a success would be. (Answered with no round since review r1: the
    # node holds nothing of it. A round answered `stale_manifest`, from version 0.)
    sealed, key = seal("delete-share", DeleteShareRequest("alice", "main", 1, 1, bytes(64)))
    answer = post(node, "delete-share", sealed)
    assert answer.status_code == 200
    assert b"not_registered" not in answer.content
    assert len(key.open(answer.content)) == RESPONSE_PADDED_SIZE[Op.DELETE_SHARE]
    error = decode_response(Op.DELETE_SHARE, key.open(answer.content))
    assert isinstance(error, ErrorResponse) and error.code == "not_registered"


def test_a_huge_body_is_refused_before_it_is_read(node: TestClient) -> None:
    # Streamed with no length: 413. (The test client sends the whole body before the app
    # reads it, so how much the node reads is checked below, on the reader itself.)
    def endless() -> Iterator[bytes]:
        for _ in range(100):  # 6.4 MB, a hundred times the cap
            yield b"\0" * 65536

    signed = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", b"x")}
    answer = node.post("/v1/client/manifest", content=endless(), headers=signed)
    assert answer.status_code == 413

    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"\0" * 65536, "more_body": received < 100}

    endless_request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    assert asyncio.run(read_body(endless_request, MAX_BODY)) is None
    assert received == 2  # the cap's worth, then one chunk past it: never the rest


def test_a_body_that_never_ends_gets_408_and_frees_its_slot(
    node: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (a relay the fleet lists, or whoever has its key): a signed request whose
    body never comes held one of the node's request slots for as long as it liked."""
    monkeypatch.setattr(serving, "BODY_SECONDS", 0.2)
    signed = sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", b"x" * 100)
    path = "/v1/client/manifest"
    status, body = post_stalled_body(node.app, path, {**HEADERS, **signed}, b"x", 100)
    assert status == 408 and b"slow_body" in body


def test_a_content_length_with_thousands_of_leading_zeros_is_read_by_its_value(
    node: TestClient,
) -> None:
    """uvicorn's default parser (httptools) passes such a header on, before any relay
    signature is checked, and `int()` refuses strings of over 4300 digits: it was a 500."""
    sealed, key = seal("manifest", ManifestRequest("alice", "main"))
    signed = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", sealed)}
    answer = node.post(
        "/v1/client/manifest",
        content=sealed,
        headers={**signed, "content-length": "0" * 5000 + str(len(sealed))},
    )
    assert answer.status_code == 200
    assert isinstance(decode_response(Op.MANIFEST, key.open(answer.content)), ManifestResponse)
    again = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", sealed)}
    huge = node.post(
        "/v1/client/manifest", content=sealed, headers={**again, "content-length": "9" * 5000}
    )
    assert huge.status_code == 413


def _app_reads(app: Any, headers: dict[str, str], body: bytes) -> tuple[int, int]:
    """(status, body chunks the app asked for) of one POST /v1/client/manifest."""
    asked = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/client/manifest",
        "raw_path": b"/v1/client/manifest",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("127.0.0.1", 7100),
        "client": ("127.0.0.1", 50000),
    }
    asyncio.run(app(scope, receive, send))
    return status, asked


@pytest.mark.parametrize(
    "stranger", ["unsigned", "other key", "no digest header", "digest of another body"]
)
def test_a_stranger_is_refused_before_its_body_is_read(node: TestClient, stranger: str) -> None:
    """The relay's signature is over the body's digest, which also travels in a header:
    the node checks it before it reads the body, so whoever is not a listed relay gets
    401 after its headers and never makes the node buffer a body."""
    body = _manifest_request()
    key = Ed25519PrivateKey.generate() if stranger == "other key" else RELAY_KEY
    signed = sign_headers(key, 0, "manifest", "alice", "main", body)
    if stranger == "unsigned":
        signed = {}
    if stranger == "no digest header":
        del signed["X-Backupvault-Body-Sha256"]
    if stranger == "digest of another body":
        signed["X-Backupvault-Body-Sha256"] = "00" * 32
    status, asked = _app_reads(node.app, {**HEADERS, **signed}, body)
    assert (status, asked) == (401, 0)


def test_a_body_other_than_the_signed_one_is_refused_and_spends_no_nonce(
    node: TestClient,
) -> None:
    """A listed relay's headers with another body (a man in the middle swapped it): read,
    found not to match the signed digest, refused; the relay's own request still passes."""
    body = _manifest_request()
    headers = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body)}
    swapped = node.post("/v1/client/manifest", content=body + b"!", headers=headers)
    assert swapped.status_code == 401
    assert "not the one the relay signed" in swapped.json()["detail"]
    assert node.post("/v1/client/manifest", content=body, headers=headers).status_code == 200


def test_health_tells_a_stranger_only_whether_the_node_answers(node: TestClient) -> None:
    """The relay polls it unsigned: it gets `ready`, nothing about the node's disk."""
    assert node.get("/v1/health").json() == {"ready": True}


def test_metrics_answer_a_relay_key_only(node: TestClient) -> None:
    """Counters (evaluations, commits, refusals) tell a stranger the fleet's traffic and
    its troubles: 401 without a fresh signature for this node by a listed relay key."""
    unsigned = node.get("/v1/metrics")
    assert unsigned.status_code == 401
    assert unsigned.json()["error"] == "relay_signature"
    stranger = node.get("/v1/metrics", headers=metrics_headers(Ed25519PrivateKey.generate(), 0))
    assert stranger.status_code == 401
    assert node.get("/v1/metrics", headers=metrics_headers(RELAY_KEY, 1)).status_code == 401
    # A client request's signature does not open the metrics, nor the other way round.
    client = sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", b"")
    assert node.get("/v1/metrics", headers=client).status_code == 401
    signed = metrics_headers(RELAY_KEY, 0)
    answer = node.get("/v1/metrics", headers=signed)
    assert answer.status_code == 200
    data = answer.json()
    assert data["node"] == 0 and "evaluations" in data
    assert set(data["health"]) == {"ready", "intact_start", "store_start", "stopped"}
    assert node.get("/v1/metrics", headers=signed).status_code == 401  # a replay
    as_client = post(node, "metrics", b"", {**HEADERS, **metrics_headers(RELAY_KEY, 0)})
    assert as_client.status_code == 404


@pytest.mark.parametrize(
    ("start", "intact"),
    [
        (StoreStart.FIRST_START, True),
        (StoreStart.INTACT, True),
        (StoreStart.ROLLBACK_DETECTED, False),
        (StoreStart.CATCH_UP_UNFINISHED, False),
    ],
)
def test_metrics_tell_a_first_start_from_an_intact_one_and_from_a_rollback(
    tmp_path: Path, start: StoreStart, intact: bool
) -> None:
    """A new node's empty store lost nothing: `intact_start` said false, as for a
    rolled-back disk; `store_start` now says which it was."""
    with TestClient(_app(tmp_path, store_start=start)) as node:
        health = node.get("/v1/metrics", headers=metrics_headers(RELAY_KEY, 0)).json()["health"]
    assert health["store_start"] == str(start)
    assert health["intact_start"] is intact


def test_a_full_replay_window_is_busy_not_a_bad_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the nonces its replay window may hold, a node refused a listed relay's fresh
    request as `401 relay_signature`: its log blamed the relay's key, and the relay took
    the 401 for a node outside its contract (`bad_node_answer`). It is a wait: 503
    `node_busy` with Retry-After, which the relay counts as a node not reached; nothing
    was spent, so the same signed request is taken once there is room."""
    monkeypatch.setattr(hop_module, "MAX_REMEMBERED", 2)
    with TestClient(_app(tmp_path)) as node:
        for _ in range(2):
            assert post(node, "manifest", b"x").status_code == 400  # read, nonce spent
        body = b"x"
        signed = {**HEADERS, **sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body)}
        busy = node.post("/v1/client/manifest", content=body, headers=signed)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"] == "node_busy"
        assert int(busy.headers["Retry-After"]) >= 1
        metrics = node.get("/v1/metrics", headers=metrics_headers(RELAY_KEY, 0))
        assert metrics.status_code == 503 and metrics.json()["error"] == "node_busy"
