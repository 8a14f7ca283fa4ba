"""Token buckets per key (an account, or a client's address), in memory, with an
injectable clock: the relay's and the witness's."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Each account may make `burst` requests at once, refilled at `rate_per_second`.

    `acquire` answers None when the request may go ahead, or how many seconds to wait.
    Buckets that have refilled completely carry no information and are dropped when the
    table grows beyond `max_accounts`; if that leaves more than 7/8 of it, the oldest are
    dropped down to 7/8, so memory stays bounded even when the keys are addresses anyone
    can make up (that gives a dropped key a full bucket again: only a key among about
    `max_accounts` busier ones loses its state), and the table is scanned once per
    `max_accounts / 8` new keys at most, not once per new key.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_accounts: int = 100_000,
    ) -> None:
        if not rate_per_second > 0 or not math.isfinite(rate_per_second):
            raise ValueError("rate_per_second must be a positive number")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_accounts < 1:
            raise ValueError("max_accounts must be at least 1")
        self.rate = rate_per_second
        self.burst = burst
        self._clock = clock
        self._max_accounts = max_accounts
        #: How many buckets are kept after a table found full has been pruned.
        self._low_water = max_accounts - max(1, max_accounts // 8)
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, account: str) -> float | None:
        now = self._clock()
        bucket = self._buckets.get(account)
        if bucket is None:
            if len(self._buckets) >= self._max_accounts:
                self._prune(now)
                # When the scan freed little, the oldest go too, down to `_low_water`: so
                # the next scan comes after that many new keys at the earliest (a scan per
                # new key was 50 000 buckets walked per request from a new address).
                while len(self._buckets) > self._low_water:
                    del self._buckets[next(iter(self._buckets))]  # the oldest made
            bucket = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[account] = bucket
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def waiting(self, account: str) -> float | None:
        """How many seconds `account` must wait before `acquire` would let it go ahead, or
        None; takes nothing and makes no bucket (a check before work that only refusals
        are charged for)."""
        bucket = self._buckets.get(account)
        if bucket is None:
            return None
        elapsed = max(0.0, self._clock() - bucket.updated)
        tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            account
            for account, bucket in self._buckets.items()
            if bucket.tokens + max(0.0, now - bucket.updated) * self.rate >= self.burst
        ]
        for account in full:
            del self._buckets[account]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """Whole seconds for a Retry-After header, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def client_address_key(connection: HTTPConnection) -> str:
    """The bucket key of the client's address: an IPv4 address, or an IPv6 /64 (one host
    is commonly given a whole /64, so its addresses are one client)."""
    return address_key(connection.client.host if connection.client is not None else "")


def address_key(host: str) -> str:
    """`client_address_key` of a peer's host as the socket gives it."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a Unix socket): one bucket for all of them
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
