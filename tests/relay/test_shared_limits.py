"""Rate limits shared by every relay through a real Redis server (`shared_limits_url`):
one account's burst is one burst whichever relay it goes through, and a relay whose
Redis is gone keeps limiting with its own buckets, never a 500."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from backupvault.errors import InvalidInput
from backupvault.protocol import SealedCopies
from backupvault.relay import limits

from .conftest import StubNode, make_config, unused_port
from .test_limits import _assert_error, _post


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own on loopback (Debian's redis-server; `make setup`)."""
    process, url = _start_redis(unused_port(), tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(10)


def _start_redis(port: int, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is missing: run `make setup`"
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(url) as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return process, url
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)


@pytest.fixture(autouse=True)
def _patient_relays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis's answers get more time than a relay gives them (0.25 s), so a loaded test
    machine does not pass for a slow Redis, which falls back to each relay's own buckets
    by design. A Redis that is gone refuses connections at once either way."""
    monkeypatch.setattr(limits, "REDIS_TIMEOUT", 10.0)


@pytest.fixture
def shared(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def test_one_accounts_burst_is_one_burst_across_relays(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    redis_url: str,
    shared: redis.Redis,
) -> None:
    limits = {"rate_per_minute": 6, "burst": 3, "shared_limits_url": redis_url}
    first, second = (start_relay([stubs[0].url], **limits) for _ in range(2))
    alice, bob = token("alice"), token("bob")
    assert [_post(r, alice).status_code for r in (first, first, second)] == [200] * 3
    limited = _post(second, alice)
    _assert_error(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "10"  # 6 a minute: one every 10 s
    _assert_error(_post(first, alice), 429, "rate_limited")
    assert _post(second, bob).status_code == 200  # buckets are per account
    # Each relay alone would have let alice through three times more.
    alone = start_relay([stubs[0].url], rate_per_minute=6, burst=3)
    assert _post(alone, alice).status_code == 200
    # One hash per bucket in use, gone once it would be full again (3 tokens at 6 a
    # minute: 30 s, and a second).
    ttl = shared.pttl("backupvault:relay:account:alice")
    assert 20_000 < ttl <= 31_000
    assert sorted(shared.keys("backupvault:relay:*")) == [
        b"backupvault:relay:account:alice",
        b"backupvault:relay:account:bob",
    ]


def test_refused_tokens_from_one_address_are_counted_across_relays(
    stubs: list[StubNode], start_relay: Callable[..., str], redis_url: str, shared: redis.Redis
) -> None:
    limits = {"refused_tokens_burst": 2, "refused_tokens_per_minute": 2}
    first, second = (
        start_relay([stubs[0].url], shared_limits_url=redis_url, **limits) for _ in range(2)
    )
    _assert_error(_post(first, "not-a-token"), 401, "invalid_token")
    _assert_error(_post(second, "not-a-token"), 401, "invalid_token")
    _assert_error(_post(first, "not-a-token"), 429, "rate_limited")
    _assert_error(_post(second, "not-a-token"), 429, "rate_limited")


def test_a_relay_whose_redis_is_gone_limits_with_its_own_buckets(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = f"redis://127.0.0.1:{unused_port()}/0"  # nothing listens there
    relay = start_relay([stubs[0].url], rate_per_minute=6, burst=2, shared_limits_url=nowhere)
    alice = token("alice")
    with caplog.at_level(logging.WARNING, logger="backupvault.relay"):
        assert [_post(relay, alice).status_code for _ in range(2)] == [200, 200]
        _assert_error(_post(relay, alice), 429, "rate_limited")
        health = httpx.get(f"{relay}/v1/health", timeout=10)
    assert health.status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "shared rate limits" in r.getMessage()]
    assert len(warnings) == 1  # once, not per request
    assert nowhere in warnings[0] and "its own buckets" in warnings[0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", ""])
def test_a_shared_limits_url_that_is_not_redis_is_refused(stubs: list[StubNode], url: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(InvalidInput, match="shared_limits_url"):
        make_config(Ed25519PrivateKey.generate(), [stubs[0].url], shared_limits_url=url)


def test_a_burst_of_concurrent_requests_keeps_the_shared_limit(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    redis_url: str,
    shared: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s41-B: 250 requests at once emptied redis-py's pool of 100 connections, its
    error was taken for Redis being down, and for 5 s each relay used its own buckets: 9
    of a shared burst of 3 went through. A request now waits for a connection."""
    relays = [
        start_relay([stubs[0].url], rate_per_minute=6, burst=3, shared_limits_url=redis_url)
        for _ in range(2)
    ]
    alice = token("alice")
    body = SealedCopies([b"sealed"]).to_bytes()
    headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {alice}"}

    async def burst() -> list[int]:
        pool = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=pool, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{relays[i % 2]}/v1/vault/laptop/manifest", content=body, headers=headers
                    )
                    for i in range(250)
                )
            )
        return [a.status_code for a in answers]

    with caplog.at_level(logging.WARNING, logger="backupvault.relay"):
        codes = asyncio.run(burst())
    assert sorted(set(codes)) == [200, 429]
    assert codes.count(200) == 3
    assert not [r for r in caplog.records if "shared rate limits" in r.getMessage()]


def test_the_shared_limits_come_back_when_redis_does(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "REDIS_RETRY_AFTER", 0.5)
    port = unused_port()
    url = f"redis://127.0.0.1:{port}/0"
    first, second = (
        start_relay([stubs[0].url], rate_per_minute=6, burst=2, shared_limits_url=url)
        for _ in range(2)
    )
    alice, bob = token("alice"), token("bob")
    # Down: each relay's own bucket of 2.
    assert [_post(r, alice).status_code for r in (first, first, second, second)] == [200] * 4
    process, _ = _start_redis(port, tmp_path)
    try:
        time.sleep(0.6)  # past the time a relay leaves Redis alone after a failure
        assert [_post(r, bob).status_code for r in (first, second)] == [200, 200]
        _assert_error(_post(first, bob), 429, "rate_limited")  # one bucket again
        with redis.Redis.from_url(url) as client:
            assert client.exists("backupvault:relay:account:bob")
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0?password=s3cret-pw", "redis://h:6379/0?password=***"),
        (
            "unix:///run/redis.sock?db=0&password=s3cret-pw",
            "unix:///run/redis.sock?db=0&password=***",
        ),
        ("redis://h/0?Username=u&PASSWORD=s3cret-pw", "redis://h/0?Username=***&PASSWORD=***"),
        ("redis://u:s3cret-pw@h:1/0?password=s3cret-pw", "redis://***@h:1/0?password=***"),
        ("redis://h:6379/0?db=2", "redis://h:6379/0?db=2"),
    ],
)
def test_a_password_in_the_redis_url_s_query_is_masked_too(url: str, shown: str) -> None:
    """redis-py takes a password from the query as well as from the userinfo; the query's
    was written in the clear to the relay's log (review s60)."""
    assert limits.shown_url(url) == shown


def test_a_password_in_the_redis_url_is_never_shown(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    secret = "s3cret-pw"
    nowhere = f"redis://user:{secret}@127.0.0.1:{unused_port()}/0"
    config = make_config(Ed25519PrivateKey.generate(), [stubs[0].url], shared_limits_url=nowhere)
    assert secret not in repr(config)
    with pytest.raises(InvalidInput) as refused:
        make_config(
            Ed25519PrivateKey.generate(), [stubs[0].url], shared_limits_url=f"http://:{secret}@h"
        )
    assert secret not in str(refused.value) and "***@h" in str(refused.value)
    relay = start_relay([stubs[0].url], shared_limits_url=nowhere)
    with caplog.at_level(logging.WARNING, logger="backupvault.relay"):
        assert _post(relay, token("alice")).status_code == 200
    shown = [r.getMessage() for r in caplog.records if "shared rate limits" in r.getMessage()]
    assert shown and all(secret not in m and "***@127.0.0.1" in m for m in shown)
