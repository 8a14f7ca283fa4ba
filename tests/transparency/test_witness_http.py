"""The witness over HTTP: the happy path, an auditor's walk, and bad input never a 500."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from tests.stalled_body import post_stalled_body

from backupvault import serving
from backupvault.transparency import merkle
from backupvault.transparency.bundle import FleetBundle, WitnessReceipt, verify_bundle
from backupvault.transparency.note import Verifier, open_checkpoint
from backupvault.transparency.record import OperatorSignedRecord, sign_record
from backupvault.transparency.witness_http import (
    WITNESS_BURST,
    WITNESS_RATE_PER_MINUTE,
    create_app,
)

from .conftest import FLEET_ID, WITNESS_NAME, WitnessFactory, make_record


@pytest.fixture
def client(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> Iterator[TestClient]:
    witness = make_witness()
    for epoch in (1, 2, 3):
        witness.submit(sign_record(make_record(epoch=epoch), operator_key).to_bytes())
    with TestClient(create_app(witness), raise_server_exceptions=False) as test_client:
        yield test_client


def _b64(items: list[str]) -> list[bytes]:
    return [base64.b64decode(item) for item in items]


def test_submit_and_audit(client: TestClient, operator_key: Ed25519PrivateKey) -> None:
    about = client.get("/v1/witness").json()
    verifier = Verifier.from_vkey(about["vkey"])
    assert about["name"] == WITNESS_NAME
    before = open_checkpoint(client.get("/v1/checkpoint").text, verifier)
    assert before.size == 3

    signed = sign_record(make_record(epoch=4), operator_key)
    answer = client.post("/v1/submit", content=signed.to_bytes())
    assert answer.status_code == 200, answer.text
    receipt = WitnessReceipt.from_bytes(answer.content)
    bundle = FleetBundle.from_receipt(signed, receipt)

    def fetch(old: int, new: int) -> list[bytes]:
        got = client.get("/v1/consistency", params={"old": old, "new": new})
        return _b64(got.json()["proof"])

    verified = verify_bundle(
        bundle, operator_key.public_key(), verifier.public_key, WITNESS_NAME, before, fetch
    )
    assert verified.record.epoch == 4

    # an auditor: every leaf, recomputed root, inclusion of each
    after = open_checkpoint(client.get("/v1/checkpoint").text, verifier)
    page = client.get("/v1/leaves", params={"start": 0, "end": after.size}).json()
    leaves = _b64(page["leaves"])
    assert page["end"] == 4 and merkle.root(leaves) == after.root_hash
    epochs = [OperatorSignedRecord.from_bytes(leaf).deployment().epoch for leaf in leaves]
    assert epochs == [1, 2, 3, 4]
    incl = client.get("/v1/inclusion", params={"index": 2, "size": 4}).json()
    merkle.verify_inclusion(
        base64.b64decode(incl["leaf_hash"]), 2, 4, _b64(incl["proof"]), after.root_hash
    )
    # by the leaf's hash, as a client asks every witness about an older epoch's record
    wanted = merkle.leaf_hash(leaves[1])
    found = client.get("/v1/inclusion", params={"leaf_hash": wanted.hex(), "size": 4}).json()
    assert found["index"] == 1 and base64.b64decode(found["leaf_hash"]) == wanted
    merkle.verify_inclusion(wanted, 1, 4, _b64(found["proof"]), after.root_hash)
    for unknown, size in ((bytes(32), 4), (merkle.leaf_hash(leaves[3]), 3)):  # none; later
        answer = client.get("/v1/inclusion", params={"leaf_hash": unknown.hex(), "size": size})
        assert answer.status_code == 404 and answer.json()["error"] == "not_logged"


REFUSALS = [
    ("stale", 409, "stale_epoch"),
    ("mallory", 403, "unknown_operator_key"),
    ("unknown_fleet", 403, "unknown_fleet"),
    ("forged", 403, "bad_operator_signature"),
    ("junk", 400, "malformed"),
]


@pytest.mark.parametrize(("case", "status", "code"), REFUSALS)
def test_submit_refusals(
    client: TestClient, operator_key: Ed25519PrivateKey, case: str, status: int, code: str
) -> None:
    good = sign_record(make_record(epoch=9), operator_key)
    body = {
        "stale": sign_record(make_record(epoch=2, time=1), operator_key).to_bytes(),
        "mallory": sign_record(make_record(epoch=9), Ed25519PrivateKey.generate()).to_bytes(),
        "unknown_fleet": sign_record(make_record(fleet_id=b"zz"), operator_key).to_bytes(),
        "forged": OperatorSignedRecord(
            make_record(epoch=9, guess_limit=99).to_bytes(),
            good.operator_public_key,
            good.signature,
        ).to_bytes(),
        "junk": b"\x52\x00\x00",
    }[case]
    answer = client.post("/v1/submit", content=body)
    assert answer.status_code == status
    assert answer.json()["error"] == code and answer.json()["detail"]


def test_a_withdrawn_retirement_is_refused_with_its_reason(
    client: TestClient, operator_key: Ed25519PrivateKey
) -> None:
    retiring = sign_record(make_record(epoch=20, retired_below=10), operator_key)
    assert client.post("/v1/submit", content=retiring.to_bytes()).status_code == 200
    withdrawn = sign_record(make_record(epoch=21, retired_below=5), operator_key)
    answer = client.post("/v1/submit", content=withdrawn.to_bytes())
    assert answer.status_code == 403
    assert answer.json()["error"] == "retirement_withdrawn"
    assert "retired its epochs below 10" in answer.json()["detail"]


def test_too_large(client: TestClient) -> None:
    answer = client.post("/v1/submit", content=b"\x00" * ((1 << 20) + 1))
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"


BAD_QUERIES = [
    "/v1/consistency",
    "/v1/consistency?old=1",
    "/v1/consistency?old=-1&new=2",
    "/v1/consistency?old=1&new=9",
    "/v1/consistency?old=3&new=2",
    "/v1/consistency?old=%2B1&new=2",
    "/v1/consistency?old=1.0&new=2",
    "/v1/consistency?old=99999999999999999999&new=2",
    "/v1/inclusion?index=3&size=3",
    "/v1/inclusion?index=0&size=0",
    "/v1/inclusion?index=0&size=4",
    "/v1/inclusion?index=x&size=1",
    "/v1/inclusion?leaf_hash=00&size=1",
    "/v1/inclusion?leaf_hash=" + "A" * 64 + "&size=1",
    "/v1/inclusion?leaf_hash=" + "0" * 64 + "&size=9",
    "/v1/inclusion?leaf_hash=" + "0" * 64,
    "/v1/leaves?start=5&end=9",
    "/v1/leaves?start=2&end=1",
    "/v1/leaves?start=&end=",
    "/v1/leaves?start=1",
]


@pytest.mark.parametrize("url", BAD_QUERIES)
def test_bad_queries_are_4xx_json(client: TestClient, url: str) -> None:
    answer = client.get(url)
    assert answer.status_code == 400, (url, answer.text)
    assert answer.json()["error"] in ("bad_query", "bad_range")


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/v1/submit"), ("POST", "/v1/checkpoint"), ("GET", "/nope"), ("DELETE", "/v1/leaves")],
)
def test_unknown_routes_are_json(client: TestClient, method: str, url: str) -> None:
    answer = client.request(method, url)
    assert answer.status_code in (404, 405) and "error" in answer.json()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"\x52" + b),
    ),
    path=st.sampled_from(["/v1/consistency", "/v1/inclusion", "/v1/leaves"]),
    params=st.dictionaries(
        st.sampled_from(["old", "new", "index", "size", "start", "end"]),
        st.one_of(st.integers(-5, 10).map(str), st.text(max_size=25)),
        max_size=4,
    ),
)
def test_random_input_never_500(
    client: TestClient, body: bytes, path: str, params: dict[str, str]
) -> None:
    answer = client.post("/v1/submit", content=body)
    assert answer.status_code < 500 and answer.status_code != 200
    assert answer.json()["error"]
    answer = client.get(path, params=params)
    assert answer.status_code < 500, (path, params, answer.text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _real_witness(
    tmp_path: Path, operator_key: Ed25519PrivateKey, witness_key: Ed25519PrivateKey, extra: str = ""
) -> Iterator[str]:
    """A witness served by `serve` in a process of its own (as `witness serve` runs it),
    with `extra` lines in its witness.toml; yields its URL once it answers."""
    (tmp_path / "w.key").write_bytes(
        witness_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_hex = operator_key.public_key().public_bytes_raw().hex()
    (tmp_path / "witness.toml").write_text(
        f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\n{extra}'
        f'[[fleets]]\nfleet_id = "{FLEET_ID.hex()}"\noperator_key = "{public_hex}"\n'
    )
    port = _free_port()
    code = (
        "from backupvault.transparency.witness import WitnessConfig\n"
        "from backupvault.transparency.witness_http import serve\n"
        f"serve(WitnessConfig.load({str(tmp_path / 'witness.toml')!r}), '127.0.0.1', {port})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/v1/witness", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the witness did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_runs_a_real_witness(tmp_path: Path, operator_key: Ed25519PrivateKey) -> None:
    key = Ed25519PrivateKey.generate()
    with _real_witness(tmp_path, operator_key, key) as url:
        about = httpx.get(f"{url}/v1/witness", timeout=1).json()
        verifier = Verifier.from_vkey(about["vkey"])
        signed = sign_record(make_record(), operator_key)
        answer = httpx.post(f"{url}/v1/submit", content=signed.to_bytes(), timeout=5)
        assert answer.status_code == 200
        bundle = FleetBundle.from_receipt(signed, WitnessReceipt.from_bytes(answer.content))
        verify_bundle(bundle, operator_key.public_key(), key.public_key(), WITNESS_NAME, None)
        assert open_checkpoint(httpx.get(f"{url}/v1/checkpoint").text, verifier).size == 1
    assert (tmp_path / "witness.sqlite").exists()


def _statuses(url: str, forwarded_for: list[str]) -> list[int]:
    with httpx.Client(timeout=5) as http:
        return [
            http.get(f"{url}/v1/witness", headers={"X-Forwarded-For": name}).status_code
            for name in forwarded_for
        ]


def test_a_real_witness_buckets_the_connection_s_address_not_x_forwarded_for(
    tmp_path: Path, operator_key: Ed25519PrivateKey
) -> None:
    """Attack: uvicorn believes X-Forwarded-For from 127.0.0.1 unless told not to, and the
    witness, which has no TLS of its own, is meant to sit behind a TLS proxy on its host.
    Through a proxy that passed the client's header on, each request named a bucket of its
    own (no limit at all), or a relay's address in `unlimited_addresses` (exempt). Unless
    witness.toml names its proxy in `trusted_proxies`, the connection's address counts."""
    relay = 'unlimited_addresses = ["10.0.0.5"]\n'
    with _real_witness(tmp_path, operator_key, Ed25519PrivateKey.generate(), relay) as url:
        made_up = _statuses(url, [f"192.0.2.{i}" for i in range(WITNESS_BURST)])
        as_the_relay = _statuses(url, ["10.0.0.5"] * WITNESS_BURST)
    assert set(made_up + as_the_relay) <= {200, 429}
    # One bucket, 127.0.0.1's: its burst goes, then 429, also for the relay's address.
    assert 429 in as_the_relay, made_up + as_the_relay


def test_a_proxy_in_trusted_proxies_names_each_client_s_bucket(
    tmp_path: Path, operator_key: Ed25519PrivateKey
) -> None:
    """A TLS proxy that says who its clients are (X-Forwarded-For) gives each its bucket."""
    proxy = 'trusted_proxies = ["127.0.0.0/8"]\n'
    with _real_witness(tmp_path, operator_key, Ed25519PrivateKey.generate(), proxy) as url:
        each_their_own = _statuses(url, [f"192.0.2.{i}" for i in range(WITNESS_BURST * 2)])
        one_client = _statuses(url, ["198.51.100.7"] * WITNESS_BURST * 2)
    assert each_their_own == [200] * WITNESS_BURST * 2
    assert 429 in one_client


@pytest.mark.parametrize(
    ("declared", "status"),
    [
        # a valid header (httptools passes leading zeros) that int() refused: a 500
        ("0" * 4400 + "3", 400),
        ("9" * 5000, 413),
        ("1" + "0" * 30, 413),
        ("-3", 400),
        ("3 ", 400),
    ],
)
def test_content_length_games_are_4xx(client: TestClient, declared: str, status: int) -> None:
    headers = {"content-length": declared}
    answer = client.post("/v1/submit", content=b"\x52\x00\x00", headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]


def test_a_body_that_never_ends_is_cut_off(
    make_witness: WitnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: 256 POST /v1/submit that send a few bytes and then nothing held every
    request slot for as long as the connections stayed open, so nobody got a fleet head
    (clients fail closed without one). The body now has a deadline."""
    monkeypatch.setattr(serving, "BODY_SECONDS", 0.2)
    app = create_app(make_witness())
    status, body = post_stalled_body(app, "/v1/submit", {}, b"\x52", 100)
    assert status == 408 and b"slow_body" in body


def _from(app: Any, host: str) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, client=(host, 4711))


def test_one_address_gets_a_bucket_then_429_with_retry_after(
    make_witness: WitnessFactory,
) -> None:
    """Attack: anyone may ask the witness, and a head is signed per request: one address
    asking without pause kept it signing and hashing without bound. Each address now has
    a bucket; beyond it, 429 with a reason and when to come back, before any work."""
    now = [0.0]
    app = create_app(make_witness(), clock=lambda: now[0])
    flooder, other = _from(app, "192.0.2.7"), _from(app, "198.51.100.1")
    answers = [flooder.get("/v1/checkpoint") for _ in range(WITNESS_BURST)]
    assert [a.status_code for a in answers] == [200] * WITNESS_BURST
    refused = flooder.get("/v1/consistency", params={"old": 0, "new": 0})
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limited"
    assert "address" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert flooder.post("/v1/submit", content=b"\x52").status_code == 429
    # Another address (a v6 host's other addresses are the same /64's bucket) is not held up.
    assert other.get("/v1/checkpoint").status_code == 200
    assert _from(app, "2001:db8::1").get("/v1/witness").status_code == 200
    # The bucket refills at its rate.
    now[0] += 60 / WITNESS_RATE_PER_MINUTE
    assert flooder.get("/v1/checkpoint").status_code == 200
    assert flooder.get("/v1/checkpoint").status_code == 429


def test_a_relay_named_in_the_config_is_not_limited_per_address(
    make_witness: WitnessFactory,
) -> None:
    """The relay passes on its clients' consistency requests (bucketed per client there):
    limited here as one address, every client behind it would be refused together."""
    app = create_app(make_witness(), unlimited=(ipaddress.ip_network("10.0.0.0/24"),))
    relay, stranger = _from(app, "10.0.0.5"), _from(app, "10.0.1.5")
    for _ in range(WITNESS_BURST * 2):
        assert relay.get("/v1/checkpoint").status_code == 200
    for _ in range(WITNESS_BURST):
        assert stranger.get("/v1/checkpoint").status_code == 200
    assert stranger.get("/v1/checkpoint").status_code == 429
