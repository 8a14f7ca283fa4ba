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
count) a request is answered `503 busy` too and its connection closed; beyond
`max_connections_per_address` from one address a new connection is answered `503
too_many_connections` and closed; the kernel queues at most `backlog` connections not
yet accepted.

Nor may a client hold a connection or a request slot by sending slowly: a connection
must bring a whole request head (request line and headers) within `HEAD_SECONDS` of
opening, or of the end of its previous response, else it is closed (uvicorn alone waits
for a head for ever, so idle connections could fill `max_connections`); a body must
arrive within `BODY_SECONDS` (`read_body`). Nor a large head: at most `MAX_HEAD_BYTES`
and `MAX_HEADERS` fields (`431 head_too_large`). Nor by reading slowly: once an answer's
bytes pile up unread (past the transport's high-water mark), the client must take some
within `SEND_SECONDS`, else the connection is dropped with what it had not taken
(uvicorn alone waits for room to write without limit, holding the request's slot, and
the connection with the answers buffered for it)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import signal
import socket
import threading
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.ratelimit import address_key

log = logging.getLogger("backupvault.serving")

#: The signals that stop a service (SIGTERM: a service manager's stop; SIGINT: Ctrl-C).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: How long requests under way may take to finish after a stop signal.
GRACEFUL_SECONDS = 5
#: How long after a stop signal the process may take to exit, shutdown included.
STOP_SECONDS = 30.0
#: How long a connection may take to send a request's head (line and headers).
HEAD_SECONDS = 10.0
#: How long a request may take to send its body, once its head is in.
BODY_SECONDS = 10.0
#: How long writing to a client may stall (its answers unread) before it is dropped.
SEND_SECONDS = 10.0
#: The largest request head (request line and headers) a service reads, and the most
#: header fields in it. uvicorn alone reads a head of any size within HEAD_SECONDS, and
#: keeps each header field as Python objects some 25 times the size of a short field on
#: the wire: one connection sending `a:b` lines fast made the process grow by gigabytes.
#: The largest honest head is the relay's: a token of at most 4096 characters.
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
#: Requests one connection may have waiting (HTTP/1.1 pipelining) behind the one being
#: served. uvicorn queues every head it parses, and reads on after each answer though
#: some still wait: one read (up to 256 KiB) queued some 14,000 heads, and a client that
#: read its answers made a service grow by gigabytes, before any token check (review
#: s48). Past it the rest is dropped unread and the connection closes once the waiting
#: ones are answered, so a connection holds at most this many heads waiting, and of
#: their bodies what the reads between answers bring (256 KiB a read). No honest client
#: pipelines (httpx, the SDK and the relay send a request once the last is done).
MAX_PIPELINED = 16
#: How long a connection refused for its head is read (and the bytes dropped) before it
#: closes, so that the refusal reaches a client still sending.
REFUSED_LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class ServerLimits:
    """How much a service takes at once (docs/operations.md, "Limits")."""

    #: Requests under way at once; beyond it `503 busy`, with a reason and Retry-After.
    max_requests: int = 256
    #: Open connections, idle keep-alive ones included; beyond it uvicorn's own 503.
    max_connections: int = 1024
    #: Connections the kernel holds before they are accepted (listen(2)'s backlog).
    backlog: int = 128
    #: Open connections from one client address (an IPv6 client: its /64); beyond it a
    #: new one is answered `503 too_many_connections` and closed. None: no such bound
    #: (a node, to which one relay opens a pool of connections).
    max_connections_per_address: int | None = None

    def __post_init__(self) -> None:
        names = ["max_requests", "max_connections", "backlog"]
        if self.max_connections_per_address is not None:
            names.append("max_connections_per_address")
        for name in names:
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
            await _busy(send, f"this server has {self.limit} requests under way, its limit")
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _busy(send: Send, why: str, *, close: bool = False) -> None:
    """`503 busy` with a reason and Retry-After; `close`: the connection closes after it."""
    body = json.dumps({"error": "busy", "detail": f"{why}; try again shortly"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to a request on a connection past `max_connections` (the connection then
    closes, as uvicorn closes it)."""
    await _busy(send, "this server has as many connections open as it takes", close=True)


class _HeadDeadline(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 connection, which must bring each request's head within
    `HEAD_SECONDS`: from the connection's opening, then from the end of each response.
    While a request is served the clock is stopped (the service bounds its own work).
    A head begun and not finished is answered `408 slow_request`; a connection that sent
    nothing is closed without a word, as uvicorn closes an idle keep-alive one (a client
    that sends its next request just then must not read a 408 as its answer)."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_begun = False
    #: Bytes received since the last head was complete, outside a request's body.
    _head_bytes = 0
    _in_body = False
    #: Bytes received within a request's body since the last read that carried body
    #: bytes: chunk framing, chunk extensions, trailer fields. The parser joins the
    #: pieces of a trailer field as a head's, so they are bounded as a head is.
    _unbodied_bytes = 0
    _body_in_read = False
    #: The request line's target and header fields of the head being parsed, in bytes:
    #: a head and its body in one read are parsed before `_head_bytes` is checked, and
    #: the head's completion resets that count, so a head up to a read's size passed.
    _field_bytes = 0
    _head_too_large = False
    _too_many_waiting = False
    _discarding = False
    _send_timer: asyncio.TimerHandle | None = None
    #: Open connections one address may hold (None: any number), and how many each holds:
    #: one server's, set on the subclass `server_config` makes for it.
    max_per_address: ClassVar[int | None] = None
    open_per_address: ClassVar[Counter[str]] = Counter()
    #: The address this connection is counted under, once it is.
    _address: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_per_address is not None:
            address = address_key(self.client[0] if self.client else "")
            if self.open_per_address[address] >= self.max_per_address:
                # One address holding every connection the service takes would leave
                # none for anyone else (uvicorn answers 503 past max_connections). Closed
                # at once, not after a linger as a refused head is: an address opening
                # connections without pause must not hold more slots that way. A client
                # that has already sent its request may see a reset instead of the answer.
                self._answer_and_close(
                    b"503 Service Unavailable",
                    "too_many_connections",
                    f"this address has {self.max_per_address} connections open, the most"
                    " one address may; reuse them, or close some and try again",
                )
                self.transport.close()
                return
            self.open_per_address[address] += 1
            self._address = address
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self.open_per_address[self._address] -= 1
            if not self.open_per_address[self._address]:
                del self.open_per_address[self._address]
            self._address = None
        self._stop_head_clock()
        self._stop_send_clock()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(SEND_SECONDS, self._send_too_slow)

    def resume_writing(self) -> None:
        self._stop_send_clock()
        super().resume_writing()

    def _stop_send_clock(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_too_slow(self) -> None:
        """The client took nothing for SEND_SECONDS: drop the connection and what is
        buffered for it (`close` would wait for the buffer to drain, which it never
        does). uvicorn then ends the request under way, freeing its slot."""
        self._send_timer = None
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # after a 431: read and dropped until the connection closes
        self._head_begun = True
        if not self._in_body:
            self._head_bytes += len(data)
        was_in_body, self._body_in_read = self._in_body, False
        super().data_received(data)
        if was_in_body and self._in_body and not self.transport.is_closing():
            self._unbodied_bytes = 0 if self._body_in_read else self._unbodied_bytes + len(data)
            if self._unbodied_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        # Checked once the parser has had the bytes: a body that came with its head in
        # one read is not the head's (`on_headers_complete` started counting afresh).
        if (
            not (self._in_body or self._discarding)
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse_head()

    def on_url(self, url: bytes) -> None:
        self._count_field(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Within one read (up to 256 KiB) the parser makes every field before the byte
        # count above is checked: the number of fields, and their bytes, are bounded as
        # they come.
        if len(self.headers) >= MAX_HEADERS:
            self._head_too_large = True
            raise ValueError("too many header fields")  # the parser stops: a 400 below
        self._count_field(len(name) + len(value))
        super().on_header(name, value)

    def _count_field(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise ValueError("request head too large")  # the parser stops: a 431 below

    def send_400_response(self, msg: str) -> None:
        if self._too_many_waiting and self.cycle is not None:
            # The waiting requests are answered, in order (no refusal can go out ahead of
            # them), and the connection closes after the last one ("connection: close");
            # whatever comes meanwhile is read and dropped.
            self._discarding = True
            self.cycle.keep_alive = False
            return
        if self._head_too_large:
            self._refuse_head()
            return
        # What the parser refused (uvicorn's own answer is bare text): the same JSON as
        # every other refusal, unless the application's answer to this request has begun
        # (bad chunk framing in a body) and another would garble it. The connection
        # closes: where the next request would begin is unknown.
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self._answer_and_close(
                b"400 Bad Request",
                "bad_request",
                "the request is not valid HTTP/1.1 (its request line, a header, its length"
                " or its chunked framing); nothing was done: send a well-formed request",
            )
        self.transport.close()

    def on_headers_complete(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            self._too_many_waiting = True
            raise ValueError("too many pipelined requests")  # the parser stops: dropped below
        self._stop_head_clock()
        self._head_bytes = 0
        self._field_bytes = 0
        self._unbodied_bytes = 0
        self._in_body = True
        limit = self.limit_concurrency
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        # Past max_connections uvicorn answers bare text ("Service Unavailable"): the
        # request goes instead to an answer with a reason, as every other refusal's.
        app, self.app, self.limit_concurrency = self.app, _too_many_connections, None
        try:
            super().on_headers_complete()
        finally:
            self.app, self.limit_concurrency = app, limit

    def on_body(self, body: bytes) -> None:
        self._body_in_read = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        # A chunked body's trailer fields were counted as a head's: not the next one's.
        self._field_bytes = 0
        super().on_message_complete()

    def _refuse_head(self) -> None:
        """`431 head_too_large` (unless the application has begun its answer to the
        request whose body this is: its 401, say), and the connection closed."""
        self._stop_head_clock()
        answered = self._in_body and self.cycle is not None and self.cycle.response_started
        if not answered:
            self._answer_and_close(
                b"431 Request Header Fields Too Large",
                "head_too_large",
                f"a request's line and headers, and its chunks' framing and trailer fields,"
                f" are at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} fields",
            )
        # The client may still be sending its head: closing at once, with its bytes
        # unread, would reset the connection and could lose the answer on its way. So
        # the answer and an end of stream go out, the rest is read and dropped, and the
        # connection closes a moment later.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_LINGER_SECONDS, self.transport.close)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head_clock()

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        self._head_begun = False
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_too_slow)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served (a pipelined head waits its turn)
        if self._head_begun:
            self._answer_and_close(
                b"408 Request Timeout",
                "slow_request",
                f"send a request's line and headers within {HEAD_SECONDS:g} s",
            )
        self.transport.close()

    def _answer_and_close(self, status: bytes, code: str, detail: str) -> None:
        """Write an error answer (`{"error", "detail"}`, as every service's) straight on
        the connection, for a request that never reached the application; it says the
        connection closes."""
        body = json.dumps({"error": code, "detail": detail}).encode()
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, len(body), body)
        )


#: The error code of each status Starlette raises for a request no route takes.
_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}
_ROUTING_DETAILS = {
    404: "no such path on this service",
    405: "this path does not take that method; see the Allow header",
}


async def routing_error(request: Request, exc: Exception) -> JSONResponse:
    """The answer to a request no route takes (Starlette's HTTPException: an unknown path,
    another method), as every other error of a service: `{"error", "detail"}` JSON rather
    than Starlette's bare text. Register it as the app's HTTPException handler."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {
            "error": _ROUTING_CODES.get(exc.status_code, "bad_request"),
            "detail": _ROUTING_DETAILS.get(exc.status_code, "the request was refused"),
        },
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body; None as soon as it grows past `limit` bytes (the rest is never
    read). TimeoutError when it has not all come within `BODY_SECONDS`, or the connection
    closed before it did: the caller answers
    `slow_body_response()`, so a client that sends slowly holds a request slot that long
    at most."""
    chunks = bytearray()
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.stream():
                chunks += chunk
                if len(chunks) > limit:
                    return None
    except ClientDisconnect:
        # Gone before its whole body came (or cut off for sending what no body is): the
        # same outcome as a body too slow, and the answer reaches no one.
        raise TimeoutError("the client left before sending its whole body") from None
    return bytes(chunks)


def slow_body_response() -> JSONResponse:
    """The answer to a body `read_body` gave up on. The connection closes after it: the
    rest of that body may still be on its way."""
    return JSONResponse(
        {"error": "slow_body", "detail": f"send the request's body within {BODY_SECONDS:g} s"},
        status_code=408,
        headers={"connection": "close"},
    )


class _BoundedServer(uvicorn.Server):
    #: The first stop signal it was given, if any.
    stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
        # A C thread of its own: it fires even if the event loop or a lock is stuck.
        faulthandler.dump_traceback_later(STOP_SECONDS, exit=True)
        super().handle_exit(sig, frame)


def server_config(app: Any, limits: ServerLimits, **config: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` within `limits` (uvicorn.Config's keyword
    arguments in `config`)."""
    # A class per server: its count of connections per address is that server's own.
    protocol = type(
        "_BoundedConnection",
        (_HeadDeadline,),
        {"max_per_address": limits.max_connections_per_address, "open_per_address": Counter()},
    )
    return uvicorn.Config(
        RequestLimit(app, limits.max_requests),
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        limit_concurrency=limits.max_connections,
        backlog=limits.backlog,
        http=protocol,
        ws="none",  # no service speaks WebSocket: no upgrade, whatever is installed
        **config,
    )


def run_until_stopped(app: Any, limits: ServerLimits | None = None, **config: Any) -> None:
    """Serve `app` (uvicorn.Config's keyword arguments) until a stop signal, taking at
    most what `limits` allows at once (default: `ServerLimits()`)."""
    server = _BoundedServer(server_config(app, limits or ServerLimits(), **config))
    host, port = config.get("host", "127.0.0.1"), config.get("port", 8000)
    check_can_listen(host, port)
    with _stop_signals_end_serving(server):
        server.run()
    if server.stopped_by is not None:
        log.info("stopped by %s", signal.Signals(server.stopped_by).name)


@contextlib.contextmanager
def _stop_signals_end_serving(server: _BoundedServer) -> Iterator[None]:
    """SIGTERM or SIGINT, from before uvicorn listens for them to after it has shut down,
    stops the service, which then returns. uvicorn raises the signal again once it has
    shut down, to die by it; the command line's handler turned that into "interrupted",
    status 130, and a service manager's `stop` into a failed unit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # no signals here
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        if not server.should_exit:  # not yet under way: the same stop uvicorn's gives
            server.handle_exit(signum, frame)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_can_listen(host: str, port: int, setting: str = "") -> None:
    """Bind `host:port` as uvicorn will (SO_REUSEADDR, every address it resolves to) and let
    go: a port another process holds is named, with what to do, before anything starts.
    `setting`: where the address is configured, when not `--listen` or `listen`."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as err:
        ephemeral = ephemeral_ports()
        # Nothing may listen there at all: an outgoing connection holds the port as its
        # own local one, for as long as it lasts (and a while after, in TIME_WAIT).
        held = (
            f"; {port} is in this machine's ephemeral range ({ephemeral.start}-"
            f"{ephemeral.stop - 1}), from which outgoing connections take their local port,"
            " so one may hold it: choose a port outside that range"
            if ephemeral is not None and port in ephemeral
            else ""
        )
        raise BackupVaultError(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            hint="another process may listen there (a service already running?): stop it, or"
            f" give another port ({setting or '--listen HOST:PORT, or `listen` in the config'});"
            f" the host must be an address of this machine{held}",
        ) from None


def ephemeral_ports() -> range | None:
    """The kernel's ephemeral port range (Linux), from which outgoing connections take
    their local port; None where it cannot be read."""
    try:
        first, last = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(first), int(last) + 1)
    except (OSError, ValueError):
        return None


def listen_address(config: Path, given: str | None, default: str) -> tuple[str, int]:
    """(host, port) to serve on: `given` (--listen), else the config file's `listen`, else
    `default`. A bad one is a clear error, not a traceback."""
    address = given
    if address is None:
        try:
            address = tomllib.loads(config.read_text()).get("listen", default)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise InvalidInput(f"cannot read {config}: {err}") from None
    host, port = split_host_port(str(address))
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidInput(
            f"the listen address {str(address)!r} is not host:port with a port from 1 to"
            f" 65535 (for example {default})"
        )
    return host or "127.0.0.1", int(port)


def split_host_port(address: str) -> tuple[str, str]:
    """`host:port` as (host, port), an IPv6 host's brackets taken off (`[::1]:8600`, as
    URLs and peer addresses write it): the socket wants the bare address, and a host left
    in brackets was "Name or service not known", with a hint that the port was taken."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def content_length_over(declared: str, limit: int) -> bool:
    """Whether a Content-Length of ASCII digits says more than `limit` bytes. By its digits
    first: httptools passes on any number of leading zeros, and `int()` refuses a string
    of over 4300 digits (a ValueError, so a 5xx, for a valid header)."""
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit
