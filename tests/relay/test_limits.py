"""Rate limits, size limits, bad input and unknown routes: 4xx with a reason, never a 500."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.testclient import TestClient

from backupvault import serving
from backupvault.protocol import COPY_BUDGET, SealedCopies
from backupvault.ratelimit import client_address_key
from backupvault.relay import RateLimiter, create_app, mint_token

from .conftest import AUDIENCE, ISSUER, LiveServer, StubNode, make_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _post(
    relay: str,
    token: str,
    body: bytes = b"sealed",
    path: str = "/v1/vault/laptop/manifest",
    content_type: str = "application/octet-stream",
) -> httpx.Response:
    """POST `body` as the one sealed copy for a one-node relay (empty: nothing at all)."""
    return httpx.post(
        f"{relay}{path}",
        content=SealedCopies([body]).to_bytes() if body else b"",
        headers={
            "Content-Type": content_type,
            "Authorization": f"Bearer {token}",
        },
        timeout=10,
    )


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]


def test_429_with_retry_after_after_the_burst_then_refills(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    clock = FakeClock()
    relay = start_relay([stubs[0].url], clock=clock, rate_per_minute=6, burst=3)
    alice, bob = token("alice"), token("bob")
    for _ in range(3):
        assert _post(relay, alice).status_code == 200
    limited = _post(relay, alice)
    _assert_error(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "10"  # 6 per minute: one every 10 s
    assert _post(relay, bob).status_code == 200  # buckets are per account
    clock.now += 10
    assert _post(relay, alice).status_code == 200
    _assert_error(_post(relay, alice), 429, "rate_limited")
    assert len(stubs[0].seen) == 5


def test_rate_limiter_bounds_memory_by_dropping_full_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_accounts=10)
    for i in range(10):
        assert limiter.acquire(f"a{i}") is None
    clock.now += 5  # every bucket has refilled
    assert limiter.acquire("new") is None
    assert len(limiter) == 1
    assert limiter.acquire("new") is None
    wait = limiter.acquire("new")
    assert wait == pytest.approx(1.0)


def test_rate_limiter_stays_bounded_when_no_bucket_has_refilled() -> None:
    """Keys made up faster than buckets refill (addresses, for the witness route): the
    table grew past `max_accounts` without end, as pruning only drops full buckets."""
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_accounts=10)
    for i in range(1000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 10
    # The newest keys keep their state: a key just drained stays limited.
    key = "10.0.3.231"
    assert limiter.acquire(key) is None
    assert limiter.acquire(key) is not None


def test_rate_limiter_scans_its_table_rarely_when_no_bucket_has_refilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full table of drained buckets (addresses each sending a few requests, faster than
    they refill) made every new key scan the whole table for full buckets, find none and
    drop one: 50 000 buckets walked per request of a new address, on the event loop. The
    oldest are now dropped in a batch, so a scan comes once per many new keys."""
    scans = 0
    prune = RateLimiter._prune

    def counted(self: RateLimiter, now: float) -> None:
        nonlocal scans
        scans += 1
        prune(self, now)

    monkeypatch.setattr(RateLimiter, "_prune", counted)
    limiter = RateLimiter(1.0, 2, clock=FakeClock(), max_accounts=1000)
    for i in range(6000):
        assert limiter.acquire(f"2001:db8:{i:x}::/64") is None
        assert len(limiter) <= 1000
    assert scans <= 5000 // 100
    # The newest keys keep their state: a key just drained stays limited.
    key = "2001:db8:176f::/64"
    assert limiter.acquire(key) is None
    assert limiter.acquire(key) is not None


def test_too_large_is_413_declared_or_streamed(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url], max_body_bytes=COPY_BUDGET)  # the least it takes
    overhead = len(SealedCopies([b""]).to_bytes())  # the client's copies list, one node
    assert _post(relay, token(), b"x" * (COPY_BUDGET - overhead)).status_code == 200
    _assert_error(_post(relay, token(), b"x" * (COPY_BUDGET + 1 - overhead)), 413, "too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"y" * (COPY_BUDGET // 3)

    # No Content-Length: chunked transfer, cut off while streaming.
    response = httpx.post(
        f"{relay}/v1/vault/laptop/manifest",
        content=chunks(),
        headers={"Content-Type": "application/octet-stream", "Authorization": f"Bearer {token()}"},
    )
    _assert_error(response, 413, "too_large")
    assert len(stubs[0].seen) == 1


def test_a_body_that_never_ends_gets_408_and_frees_its_slot(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: any account holder sends a request head and then its body a byte now and
    then. Each such request held one of the relay's request slots (and its forward
    slots' neighbour) for as long as the connection stayed open."""
    monkeypatch.setattr(serving, "BODY_SECONDS", 0.3)
    relay = start_relay([stubs[0].url])
    host, port = relay.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(
            b"POST /v1/vault/laptop/manifest HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
            b"Authorization: Bearer " + token().encode() + b"\r\n\r\nab"
        )
        slow.settimeout(5)
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"] == "slow_body"
    assert stubs[0].seen == []
    assert _post(relay, token()).status_code == 200


def test_bad_input_gets_a_reason(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url])
    t = token()
    _assert_error(_post(relay, t, path="/v1/vault/laptop/steal-key"), 404, "unknown_operation")
    _assert_error(_post(relay, t, path="/v1/vault/" + "e" * 65 + "/manifest"), 400, "bad_entry")
    _assert_error(_post(relay, t, path="/v1/vault/a%20b/manifest"), 400, "bad_entry")
    _assert_error(_post(relay, t, path="/v1/vault/a%0A/manifest"), 400, "bad_entry")
    _assert_error(_post(relay, t, b""), 400, "empty_body")
    _assert_error(_post(relay, t, content_type="application/json"), 415, "unsupported_media_type")
    _assert_error(_post(relay, t, path="/v1/nothing"), 404, "not_found")
    _assert_error(_post(relay, t, path="/v1/vault/laptop"), 404, "not_found")
    wrong_method = httpx.get(f"{relay}/v1/vault/laptop/manifest")
    _assert_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["Allow"] == "POST"
    _assert_error(httpx.delete(f"{relay}/v1/health"), 405, "method_not_allowed")
    assert stubs[0].seen == []


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Starlette answered a path with a trailing slash with a 307 to the same path on the
    host the client's Host header names, before any token check: a redirect to anywhere
    (poisoning a cache in front of the relay), and an answer outside the relay's
    `{"error", "detail"}` contract."""
    relay = start_relay([stubs[0].url])
    evil = {"Host": "evil.example"}
    for path in ("/v1/health/", "/openapi.json/"):
        answer = httpx.get(f"{relay}{path}", headers=evil)
        _assert_error(answer, 404, "not_found")
        assert "location" not in answer.headers
    answer = httpx.post(
        f"{relay}/v1/vault/laptop/manifest/",
        content=SealedCopies([b"sealed"]).to_bytes(),
        headers={"Authorization": f"Bearer {token()}", **evil},
    )
    _assert_error(answer, 404, "not_found")
    assert "location" not in answer.headers
    assert stubs[0].seen == []


def test_concurrency_cap_answers_503_relay_busy(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    stubs[0].mode = "hang"
    relay = start_relay([stubs[0].url], max_concurrent_forwards=1, request_timeout=1.0)
    first: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: first.append(_post(relay, token())))
    worker.start()
    deadline = time.monotonic() + 5
    while not stubs[0].seen and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = _post(relay, token("bob"))
    _assert_error(busy, 503, "relay_busy")
    assert busy.headers["Retry-After"].isdigit()
    worker.join()
    _assert_error(first[0], 503, "fleet_unavailable")  # the one node took it, timed out


class _Exploding(aiohttp.BaseConnector):
    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal failure mentioning SECRET-PAYLOAD")


def test_an_unexpected_exception_is_a_logged_502_without_details(
    operator_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture, token: Callable[..., str]
) -> None:
    config = make_config(operator_key, ["http://127.0.0.1:9"])
    server = LiveServer(create_app(config, connector=_Exploding))
    try:
        with caplog.at_level("DEBUG"):
            response = _post(server.url, token(), b"payload")
    finally:
        server.stop()
    _assert_error(response, 502, "relay_error")
    assert "SECRET-PAYLOAD" not in response.text
    assert "SECRET-PAYLOAD" not in caplog.text
    assert "exception=RuntimeError" in caplog.text


def test_a_content_length_with_thousands_of_leading_zeros_is_read_by_its_value(
    operator_key: Ed25519PrivateKey, token: Callable[..., str]
) -> None:
    """uvicorn's default parser (httptools) passes such a header on, and `int()` refuses
    strings of over 4300 digits: it was a 502 relay_error. Its value is what counts."""
    body = b"\x0f not a SealedCopies message"
    app = create_app(make_config(operator_key, ["http://127.0.0.1:9"]))
    with TestClient(app) as client:
        for declared, status, code in [
            ("0" * 5000 + str(len(body)), 400, "bad_sealed_copies"),
            ("0" * 5000 + "9" * 30, 413, "too_large"),
        ]:
            response = client.post(
                "/v1/vault/laptop/manifest",
                content=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": declared,
                    "Authorization": f"Bearer {token()}",
                },
            )
            _assert_error(response, status, code)


def _from(host: str) -> Request:
    return Request({"type": "http", "client": (host, 4711), "headers": []})


def test_an_ipv6_client_is_one_bucket_per_64_and_a_mapped_ipv4_is_its_ipv4() -> None:
    """A host given a /64 would otherwise have 2^64 fresh buckets for the witness route."""
    assert client_address_key(_from("2001:db8:1:2::1")) == client_address_key(
        _from("2001:db8:1:2:ffff:1:2:3")
    )
    assert client_address_key(_from("2001:db8:1:2::1")) != client_address_key(
        _from("2001:db8:1:3::1")
    )
    assert client_address_key(_from("::ffff:192.0.2.7")) == client_address_key(_from("192.0.2.7"))


def test_one_address_sending_refused_tokens_is_held_off_before_any_signature_check(
    operator_key: Ed25519PrivateKey,
    stubs: list[StubNode],
    token: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: forged tokens cost the relay a signature check each, on its event loop,
    and a refused token touched no bucket: one address sending them without pause kept
    the relay's loop busy for every client. An address past its bucket of refused tokens
    is answered 429 before its token is looked at; others go on."""
    clock = FakeClock()
    config = make_config(operator_key, [stubs[0].url])
    assert (config.refused_tokens_burst, config.refused_tokens_per_minute) == (20, 20.0)
    app = create_app(config, clock=clock)
    forged = mint_token(
        Ed25519PrivateKey.generate(), "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=300
    )
    checked: list[str] = []
    verifier = app.state.relay.verifier
    real_check = type(verifier)._check

    def counting_check(self: Any, raw: str, now: float | None) -> Any:
        checked.append(raw)
        return real_check(self, raw, now)

    monkeypatch.setattr(type(verifier), "_check", counting_check)
    body = SealedCopies([b"sealed"]).to_bytes()

    def send(client: TestClient, bearer: str) -> Any:
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/octet-stream"}
        return client.post("/v1/vault/laptop/manifest", content=body, headers=headers)

    # One client per address; the second is not entered: one event loop for the relay.
    honest = TestClient(app, client=("198.51.100.1", 4711))
    with TestClient(app, client=("192.0.2.7", 4711)) as flooder:
        for _ in range(config.refused_tokens_burst):
            _assert_error(send(flooder, forged), 401, "invalid_token")
        assert len(checked) == config.refused_tokens_burst
        held_off = send(flooder, forged)
        _assert_error(held_off, 429, "rate_limited")
        assert "refused tokens from this address" in held_off.json()["detail"]
        assert int(held_off.headers["Retry-After"]) >= 1
        _assert_error(send(flooder, token("alice")), 429, "rate_limited")  # not checked either
        assert len(checked) == config.refused_tokens_burst
        # Another address is still heard (its token checked, here refused on its merits).
        _assert_error(send(honest, forged), 401, "invalid_token")
        assert len(checked) == config.refused_tokens_burst + 1
        clock.now += 60 / config.refused_tokens_per_minute
        assert send(flooder, token("alice")).status_code == 200  # a valid one costs nothing
        _assert_error(send(flooder, forged), 401, "invalid_token")
        _assert_error(send(flooder, forged), 429, "rate_limited")
