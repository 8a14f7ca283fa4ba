"""Reading an HTTP answer from a server this process does not trust (the relay, a witness,
a node asked for its measurement): at most `limit` bytes of body, the whole answer
(connecting, sending, headers and body) within `deadline` seconds of the request.

httpx's `get` reads the whole body before the caller sees any of it, and its timeouts
are per read: a hostile server (or whoever is on the network) could send a body without
end, which takes the device's memory, or trickle its headers or body a byte at a time
(or send `100 Continue` heads without end), which never times out. Every client-side
request to such a server goes through `read_answer`, on a client made by
`untrusted_client`, so each kind of answer has its bound in one place (the caller's
`limit`) and one way to be refused.

The deadline reaches into the headers through the client's network streams: httpx reads
headers without a hook between reads, so `untrusted_client`'s transport cuts every socket
read and write short at the deadline `read_answer` set for the request it is sending.

The body is asked for uncompressed (`Accept-Encoding: identity`) and one that comes
compressed anyway is refused: a few KiB of gzip can expand to many MiB in one read, past
any limit counted after decoding.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from backupvault.errors import BackupVaultError, InvalidInput

#: How long one whole answer may take from its request, headers and body included. Far
#: more than any honest answer needs (the largest, a fleet bundle, is about 1 MiB; the
#: relay answers a vault request within its per-node timeouts, 12 s by default); an answer
#: still arriving after that is treated as a timeout (httpx.ReadTimeout), as a silent
#: server is.
ANSWER_SECONDS = 60.0

#: What a server answers when it, or a proxy in front of it, is down or restarting: an
#: outage, like no answer at all, never a refusal to trust what it serves.
SERVER_DOWN = frozenset({502, 503, 504})

#: When the answer `read_answer` is reading in this thread must be complete
#: (time.monotonic()), or None outside it. A context variable, not an argument: httpx's
#: sync client reads the socket in the caller's thread, through layers that pass only
#: their own per-read timeouts down.
_deadline: ContextVar[float | None] = ContextVar("answer_deadline", default=None)

#: Headers that describe the body as it came over the wire: the rebuilt response holds the
#: body as read, so they would make httpx decode or measure it again.
_WIRE_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})

#: The environment variables httpx takes a proxy (either case), and CA certificates, from.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


class AnswerRefused(BackupVaultError):
    """An answer that was not read to its end: larger than its limit, or compressed though
    it was asked for uncompressed. Nothing of it was used; callers re-raise it as their own
    kind of refusal (`.message` says what was wrong)."""


def read_answer(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    limit: int,
    what: str,
    deadline: float | None = None,
    **request: Any,
) -> httpx.Response:
    """`method url` sent through `http` (`request` as for `httpx.Client.stream`), and its
    answer with the whole body read: at most `limit` bytes, all within `deadline` seconds
    (default ANSWER_SECONDS) of the request. Larger: AnswerRefused naming `what`, having
    read at most one chunk past `limit`. Slower: httpx.ReadTimeout (or ConnectTimeout,
    WriteTimeout), like any other timeout. On a client from `untrusted_client` the
    deadline holds to within one socket read; on any other the headers are bounded only
    by the client's own per-read timeout."""
    seconds = ANSWER_SECONDS if deadline is None else deadline
    headers = httpx.Headers(request.pop("headers", None))
    headers["Accept-Encoding"] = "identity"
    started = time.monotonic()
    with _until(started + seconds), http.stream(method, url, headers=headers, **request) as answer:
        encoding = answer.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise AnswerRefused(
                f"{what} came compressed ({encoding[:40]}) though it was asked for"
                " uncompressed; nothing of it was used",
                hint="whatever is between this device and the server (a proxy) must not"
                " compress its answers",
            )
        body = bytearray()
        # Decoded, but uncompressed (checked above): each chunk is as large as it came.
        for chunk in answer.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_large(what, limit)
            if time.monotonic() - started >= seconds:
                raise httpx.ReadTimeout(
                    f"{what} did not arrive within {seconds:g} s", request=answer.request
                )
        # As the bytes came: decoded values are re-encoded as ASCII, so one byte >= 0x80
        # (obs-text, legal in HTTP/1.1) raised UnicodeEncodeError past every caller.
        kept = [(k, v) for k, v in answer.headers.raw if k.lower() not in _WIRE_HEADERS]
        return httpx.Response(
            answer.status_code, headers=kept, content=bytes(body), request=answer.request
        )


def untrusted_client(timeout: httpx.Timeout | float, *, trust_env: bool = True) -> httpx.Client:
    """An httpx client for `read_answer` whose connecting, sending and reading all stop at
    the deadline of the answer being read (outside `read_answer` it is a plain client).
    With `trust_env`, what the environment sets that httpx cannot use (a SOCKS proxy
    without the socksio package, a socks4:// one, an SSL_CERT_FILE that is not a file of
    certificates) is InvalidInput naming its variable, not the ImportError, ValueError or
    OSError httpx raised (each said "this is a bug in backupvault")."""
    try:
        http = httpx.Client(timeout=timeout, trust_env=trust_env)
    except (ImportError, ValueError, OSError) as err:
        refused = _environment_refused(err) if trust_env else None
        if refused is None:
            raise
        raise refused from None
    # httpx takes no network backend: each of its transports (the direct one, and one per
    # proxy from the environment) keeps the one its pool connects with. Checked by
    # tests/test_http_answers.py, which fails if that ever moves.
    for transport in [http._transport, *http._mounts.values()]:
        if isinstance(transport, httpx.HTTPTransport):
            pool = transport._pool
            pool._network_backend = _DeadlineBackend(pool._network_backend)
    return http


@contextmanager
def _until(deadline: float) -> Iterator[None]:
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """`timeout` cut to the time left before the current answer's deadline; `late` raised
    once it has passed (a socket timeout of 0 would mean "do not wait", not "too late")."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late("the answer did not arrive before its deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits no longer than the deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Connections made within the deadline, each a `_DeadlineStream`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _environment_refused(err: ImportError | ValueError | OSError) -> InvalidInput | None:
    """Why the settings of the environment that `err` came from cannot be used, naming
    their variables, never their values (a proxy's may hold a password); None if no such
    variable is set. Nothing is sent without the proxy or certificates the user set."""
    variables: tuple[str, ...]
    if isinstance(err, OSError):
        variables, what = _CA_VARIABLES, "CA certificates"
        why = f"they cannot be read ({err.strerror or err})"
        hint = "point it at a readable PEM file (or folder) of certificates, or unset it"
    else:
        variables, what = _PROXY_VARIABLES, "proxy"
        why = (
            "it is a SOCKS proxy, which needs the socksio package (not installed)"
            if isinstance(err, ImportError)
            else "its scheme is none of http, https, socks5 and socks5h"
        )
        hint = (
            "install socksio (pip install 'httpx[socks]') for a socks5:// proxy, give an"
            " http:// one, or unset the variable"
        )
    names = sorted(k for k, v in os.environ.items() if k.upper() in variables and v)
    if not names:
        return None
    return InvalidInput(
        f"the {what} this environment sets ({', '.join(names)}) cannot be used: {why};"
        " nothing was sent",
        hint=hint,
    )


def _too_large(what: str, limit: int) -> AnswerRefused:
    return AnswerRefused(
        f"{what} is larger than {limit} bytes; nothing of it was used",
        hint="no honest server sends that much: the server, or whoever is between it and"
        " this device, is misbehaving",
    )
