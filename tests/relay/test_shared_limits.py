"""Rate limits shared by every relay through a real Redis server (`shared_limits_url`):
one account's burst is one burst whichever relay it goes through, and a relay whose
Redis is gone keeps limiting with its own buckets, never a 500."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from backupvault.errors import InvalidInput

from .conftest import StubNode, make_config
from .test_limits import _assert_error, _post


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own on loopback (Debian's redis-server; `make setup`)."""
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is missing: run `make setup`"
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield url
    client.close()
    process.terminate()
    process.wait(10)


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
    nowhere = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
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
