"""Running a service (node, relay, witness) under uvicorn until it is told to stop.

A service stops within a bound: SIGTERM or SIGINT lets requests under way finish for
`GRACEFUL_SECONDS`, then cancels them, and a process still alive `STOP_SECONDS` after
the signal prints every thread's stack (what held it) to stderr and exits with status 1.
uvicorn alone waits for open requests and the application's shutdown without limit: a
node once outlived SIGTERM for twelve minutes, which holds up a restart or a deploy.

A service also takes a bounded amount at once (`ServerLimits`): without limits uvicorn
accepts every connection and starts every request, so whoever opens thousands of either
exhausts the process (memory, file descriptors, the event loop) for everyone. Beyond
`max_requests` under way a request is answered `503 busy` with a reason and Retry-After
before the application sees it; beyond `max_connections` open (idle keep-alive ones
count) uvicorn itself answers 503 "Service Unavailable" and closes the connection; the
kernel queues at most `backlog` connections not yet accepted."""

from __future__ import annotations

import faulthandler
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from backupvault.errors import InvalidInput

#: How long requests under way may take to finish after a stop signal.
GRACEFUL_SECONDS = 5
#: How long after a stop signal the process may take to exit, shutdown included.
STOP_SECONDS = 30.0


@dataclass(frozen=True)
class ServerLimits:
    """How much a service takes at once (docs/operations.md, "Limits")."""

    #: Requests under way at once; beyond it `503 busy`, with a reason and Retry-After.
    max_requests: int = 256
    #: Open connections, idle keep-alive ones included; beyond it uvicorn's own 503.
    max_connections: int = 1024
    #: Connections the kernel holds before they are accepted (listen(2)'s backlog).
    backlog: int = 128

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_connections", "backlog"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if self.max_requests >= self.max_connections:
            # uvicorn counts requests against its limit too: ours must bite first, so a
            # client learns why it was turned away.
            raise ValueError("max_requests must be less than max_connections")


class RequestLimit:
    """ASGI middleware: at most `limit` HTTP requests under way; the next gets 503 busy
    at once (its body unread) instead of a place in an unbounded crowd."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _busy(send, self.limit)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _busy(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": "busy",
            "detail": f"this server has {limit} requests under way, its limit; try again shortly",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BoundedServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A C thread of its own: it fires even if the event loop or a lock is stuck.
        faulthandler.dump_traceback_later(STOP_SECONDS, exit=True)
        super().handle_exit(sig, frame)


def server_config(app: Any, limits: ServerLimits, **config: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` within `limits` (uvicorn.Config's keyword
    arguments in `config`)."""
    return uvicorn.Config(
        RequestLimit(app, limits.max_requests),
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        limit_concurrency=limits.max_connections,
        backlog=limits.backlog,
        **config,
    )


def run_until_stopped(app: Any, limits: ServerLimits | None = None, **config: Any) -> None:
    """Serve `app` (uvicorn.Config's keyword arguments) until a stop signal, taking at
    most what `limits` allows at once (default: `ServerLimits()`)."""
    server = _BoundedServer(server_config(app, limits or ServerLimits(), **config))
    server.run()


def listen_address(config: Path, given: str | None, default: str) -> tuple[str, int]:
    """(host, port) to serve on: `given` (--listen), else the config file's `listen`, else
    `default`. A bad one is a clear error, not a traceback."""
    address = given
    if address is None:
        try:
            address = tomllib.loads(config.read_text()).get("listen", default)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise InvalidInput(f"cannot read {config}: {err}") from None
    host, _, port = str(address).rpartition(":")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidInput(
            f"the listen address {str(address)!r} is not host:port with a port from 1 to"
            f" 65535 (for example {default})"
        )
    return host or "127.0.0.1", int(port)


def content_length_over(declared: str, limit: int) -> bool:
    """Whether a Content-Length of ASCII digits says more than `limit` bytes. By its digits
    first: httptools passes on any number of leading zeros, and `int()` refuses a string
    of over 4300 digits (a ValueError, so a 5xx, for a valid header)."""
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit
