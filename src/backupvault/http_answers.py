"""Reading an HTTP answer from a server this process does not trust (the relay, a witness,
a node asked for its measurement): at most `limit` bytes of body, within `deadline`
seconds of its headers.

httpx's `get` reads the whole body before the caller sees any of it, and its timeouts
are per read: a hostile server (or whoever is on the network) could send a body without
end, which takes the device's memory, or trickle one a byte at a time, which never times
out. Every client-side request to such a server goes through `read_answer`, so each kind
of answer has its bound in one place (the caller's `limit`) and one way to be refused.

The body is asked for uncompressed (`Accept-Encoding: identity`) and one that comes
compressed anyway is refused: a few KiB of gzip can expand to many MiB in one read, past
any limit counted after decoding.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from backupvault.errors import BackupVaultError

#: How long the whole body of one answer may take once its headers arrived. Far more than
#: any honest answer needs (the largest, a fleet bundle, is about 1 MiB); a body still
#: arriving after that is treated as a timeout (httpx.ReadTimeout), as a silent server is.
ANSWER_SECONDS = 60.0

#: Headers that describe the body as it came over the wire: the rebuilt response holds the
#: body as read, so they would make httpx decode or measure it again.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


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
    (default ANSWER_SECONDS) of the headers. Larger: AnswerRefused naming `what`, having
    read at most one chunk past `limit`. Slower: httpx.ReadTimeout, like any other timeout
    (the clock is checked between reads, so by then at most one more read's timeout has
    passed)."""
    seconds = ANSWER_SECONDS if deadline is None else deadline
    headers = httpx.Headers(request.pop("headers", None))
    headers["Accept-Encoding"] = "identity"
    with http.stream(method, url, headers=headers, **request) as answer:
        encoding = answer.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise AnswerRefused(
                f"{what} came compressed ({encoding[:40]}) though it was asked for"
                " uncompressed; nothing of it was used",
                hint="whatever is between this device and the server (a proxy) must not"
                " compress its answers",
            )
        started = time.monotonic()
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
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
        return httpx.Response(
            answer.status_code, headers=kept, content=bytes(body), request=answer.request
        )


def _too_large(what: str, limit: int) -> AnswerRefused:
    return AnswerRefused(
        f"{what} is larger than {limit} bytes; nothing of it was used",
        hint="no honest server sends that much: the server, or whoever is between it and"
        " this device, is misbehaving",
    )
