"""The relay's rate limits, in this process or shared by every relay through Redis.

DESIGN.md keeps relays stateless with their limits shared in Redis: with k relays in front
of one fleet and buckets in each process, every limit was k times what relay.toml says
(review s40-R1). With `shared_limits_url` set, each bucket is one Redis hash that a Lua
script refills and takes from atomically, timed by the Redis server's own clock (relays'
clocks may differ), and that expires once it would be full again, so Redis holds only the
buckets in use. While Redis cannot be reached, each relay applies its own buckets (the
process's, as without Redis) and says so in its log, at most once a minute: a limit
bounds load, not guesses (the fleet's counter does that), so an outage of Redis must not
stop the service. A relay with no Redis URL uses only its own buckets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from backupvault.ratelimit import RateLimiter

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("backupvault.relay")

#: Every key the relay writes to Redis starts with this.
KEY_PREFIX = "backupvault:relay:"
#: How long a relay waits for Redis before it answers from its own bucket, and how long it
#: then leaves Redis alone before trying again (a Redis that hangs must not hold every
#: request for the timeout).
REDIS_TIMEOUT = 0.25
REDIS_RETRY_AFTER = 5.0
WARN_EVERY = 60.0
#: Redis connections a relay opens at most; a request waits for one to be free (a burst of
#: requests queues here rather than running out of connections, which redis-py raises as
#: an error that was taken for Redis being down: review s41-B). Not for a limited time: a
#: wait that gave up used the relay's own bucket, and a loaded machine let a shared burst
#: through k times. The queue is bounded by the requests a relay takes at once (2,048 or
#: twice `max_concurrent_forwards`, relay/app.py, `serving.RequestLimit`), which a Redis
#: answering just under the timeout keeps waiting seconds (review s41-C: 8 s at most with
#: 2,048 at once and answers of 0.24 s); one that stops answering is found by the timeout
#: above, and the requests queued behind it then use their own buckets at once.
REDIS_CONNECTIONS = 64

# KEYS[1]: the bucket. ARGV: rate (tokens a second), burst, 1 to take a token or 0 to
# only look. Answers -1 when a request may go ahead, or the seconds to wait as a string.
_TOKEN_BUCKET = """
redis.replicate_commands()  -- writes after TIME (Redis 5 and 6 ask for it; 7 always does)
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, take = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if held[1] then
  tokens = math.min(burst, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * rate)
end
if tokens >= 1 then
  if take then
    tokens = tokens - 1
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
  end
  return -1
end
return tostring((1 - tokens) / rate)
"""


class Limiter(Protocol):
    """A token bucket per key (an account, or a client's address)."""

    async def acquire(self, key: str) -> float | None:
        """None when the request may go ahead (a token taken), else seconds to wait."""
        ...

    async def waiting(self, key: str) -> float | None:
        """As `acquire`, taking nothing (a check before work only refusals pay for)."""
        ...


class ProcessLimiter:
    """The buckets of this process alone."""

    def __init__(self, buckets: RateLimiter) -> None:
        self.buckets = buckets

    async def acquire(self, key: str) -> float | None:
        return self.buckets.acquire(key)

    async def waiting(self, key: str) -> float | None:
        return self.buckets.waiting(key)


class SharedLimits:
    """One Redis server's buckets for every limit of a relay (`limiter` makes each)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.url = url
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            max_connections=REDIS_CONNECTIONS,
        )
        self.script = self.client.register_script(_TOKEN_BUCKET)
        self.slots = asyncio.Semaphore(REDIS_CONNECTIONS)
        self.down_until = -math.inf
        self.warned_at = -math.inf

    def limiter(self, name: str, buckets: RateLimiter) -> SharedLimiter:
        return SharedLimiter(self, name, buckets)

    def unavailable(self, error: Exception) -> None:
        now = time.monotonic()
        self.down_until = now + REDIS_RETRY_AFTER
        if now - self.warned_at >= WARN_EVERY:
            self.warned_at = now
            log.warning(
                "shared rate limits unavailable (Redis at %s: %s): this relay applies its own"
                " buckets until it answers again",
                shown_url(self.url),
                type(error).__name__,
            )

    async def close(self) -> None:
        await self.client.aclose()


class SharedLimiter:
    """A limit whose buckets live in Redis (`limits`), or in `buckets` while it is down."""

    def __init__(self, limits: SharedLimits, name: str, buckets: RateLimiter) -> None:
        self.limits = limits
        self.prefix = f"{KEY_PREFIX}{name}:"
        self.buckets = buckets

    async def acquire(self, key: str) -> float | None:
        shared = await self._ask(key, take=True)
        return self.buckets.acquire(key) if shared is False else shared

    async def waiting(self, key: str) -> float | None:
        shared = await self._ask(key, take=False)
        return self.buckets.waiting(key) if shared is False else shared

    async def _ask(self, key: str, *, take: bool) -> float | bool | None:
        """Redis's answer, or False when it cannot give one."""
        limits = self.limits
        if time.monotonic() < limits.down_until:
            return False
        rate, burst = self.buckets.rate, self.buckets.burst
        async with limits.slots:
            if time.monotonic() < limits.down_until:  # found down while this one waited
                return False
            try:
                answer = await limits.script(
                    keys=[self.prefix + key], args=[repr(rate), burst, 1 if take else 0]
                )
            except Exception as error:
                # Whatever Redis or its client raises (refused, timed out, a reply not this
                # script's), this relay's own buckets answer: a limit never makes a 500.
                limits.unavailable(error)
                return False
        if answer == -1:
            return None
        try:
            wait = float(answer)
        except (TypeError, ValueError):
            return False  # not this script's answer (another program's key?): our own
        return wait if math.isfinite(wait) and wait >= 0 else False


def shown_url(url: str) -> str:
    """`url` with any user name and password masked, for logs and errors: the userinfo's,
    and the query's `password` and `username`, which redis-py reads too
    (`unix:///path.sock?db=0&password=…` is its docs' form for a socket)."""
    parts = urlsplit(url)
    shown = url
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
        shown = urlunsplit(parts._replace(netloc=netloc))
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(k, "***" if k.lower() in _URL_SECRETS else v) for k, v in query]
        # Replaced in the text: urlunsplit would drop the empty netloc of `unix:///…`.
        shown = shown.replace(f"?{parts.query}", f"?{urlencode(masked, safe='*')}", 1)
    return shown


_URL_SECRETS = frozenset({"password", "username"})
