"""Forwarding a sealed copy to one fleet node (the fan-out sends copy i to node i,
relay/fanout.py).

The node-facing contract:

    POST {node}/v1/client/{op}
    X-Backupvault-Account: <account from the token>
    X-Backupvault-Entry: <entry from the path>
    X-Backupvault-Node, -Time, -Nonce, -Signature: the relay's signature (backupvault.hop)
    Content-Type: application/octet-stream
    <the client's copy for this node, byte for byte>

Node URLs are listed by node index (the signature names the index). The client's body
holds the request sealed once to each node (`protocol.SealedCopies`); node i gets only
copy i, which only it can open. No other client header is passed on. A node's answer is
passed on when it is a 200 with an octet-stream body, or a 4xx or a 503
`fleet_unavailable` with a JSON `{"error", "detail"}` body. A node that cannot be reached
(connect error), or answers 503 with another error, did not act (`_Skip`); one that took
the request and gave no answer in time may have acted (`_Unknown`); anything else is
outside the contract (`_BadAnswer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.hop import sign_headers

ACCOUNT_HEADER = "X-Backupvault-Account"
ENTRY_HEADER = "X-Backupvault-Entry"

#: 4xx statuses with a meaning between client and relay only (token refused, rate limited);
#: a node sending one is answering outside the contract.
_RESERVED = frozenset({401, 407, 429})


@dataclass(frozen=True)
class NodeAnswer:
    """A node's answer as the relay passes it on."""

    status: int
    body: bytes = field(repr=False)  # a sealed response: never printed
    media_type: str


class _BadAnswer(Exception):
    """A node answered something outside the contract."""


class _Unknown(Exception):
    """The node may or may not have acted on the request."""


class _Skip(Exception):
    """This node cannot answer now; try another."""


def _json_error_code(body: bytes) -> str | None:
    """The `error` of a `{"error": str, "detail": str}` body, or None if it is not one."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: nested too deep
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("error"), str)
        and isinstance(value.get("detail"), str)
    ):
        return str(value["error"])
    return None


def _media_type(response: aiohttp.ClientResponse) -> str:
    value: str = response.headers.get("Content-Type", "")
    return value.split(";", 1)[0].strip().lower()


#: Idle connections to a node are closed after this long: before the node's own HTTP
#: server closes them (uvicorn: 5 s), so a request never goes out on a connection the
#: node is closing at that moment (its answer could not be told from a lost one).
KEEPALIVE_SECONDS = 3.0


def node_session(
    request_timeout: float,
    connect_timeout: float,
    max_connections: int,
    connector: aiohttp.BaseConnector | None = None,
) -> aiohttp.ClientSession:
    """The relay's one HTTP client to the nodes (and its witness), made in the running
    event loop. aiohttp rather than httpx here: forwarding is the relay's hot path, and
    httpx's async client spent about 0.9 ms of CPU per request against aiohttp's 0.1 ms
    (a 1.5 KB POST on loopback), five requests per fan-out, one after another on the
    relay's one thread. `connect_timeout` covers waiting for a pooled connection and
    connecting; `request_timeout` the rest of the exchange, the whole answer included: a
    node sending its answer a byte at a time, each read within a per-read timeout, would
    hold the request without end. So the whole exchange ends within `connect_timeout +
    request_timeout`. No cookies are kept, nothing is decompressed, no proxy is taken
    from the environment."""
    return aiohttp.ClientSession(
        connector=connector
        or aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_SECONDS),
        timeout=aiohttp.ClientTimeout(
            total=connect_timeout + request_timeout,
            connect=connect_timeout,
            sock_read=request_timeout,
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


class Forwarder:
    """Sends a node its sealed copy, signed for it, and reads its answer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        node_urls: Sequence[str],
        max_response_bytes: int,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        self.session = session
        self.node_urls = tuple(node_urls)
        self._index = {url: i for i, url in enumerate(self.node_urls)}
        self._signing_key = signing_key
        self.max_response_bytes = max_response_bytes

    async def _one(self, node: str, op: str, account: str, entry: str, body: bytes) -> NodeAnswer:
        headers = {
            ACCOUNT_HEADER: account,
            ENTRY_HEADER: entry,
            "Content-Type": "application/octet-stream",
            **sign_headers(self._signing_key, self._index[node], op, account, entry, body),
        }
        try:
            async with self.session.post(
                f"{node}/v1/client/{op}", data=body, headers=headers, allow_redirects=False
            ) as response:
                data = await self._read_capped(response)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise _Skip from None  # the request never reached the node
        except (TimeoutError, aiohttp.ClientError):
            # The node got the request and did not answer in time (or the connection broke
            # mid-way): it may still act on it.
            raise _Unknown from None
        status = response.status
        media = _media_type(response)
        if status == 200:
            if media != "application/octet-stream":
                raise _BadAnswer("a 200 answer must be application/octet-stream")
            return NodeAnswer(200, data, "application/octet-stream")
        code = _json_error_code(data) if media == "application/json" else None
        if status == 503:
            if code == "fleet_unavailable":
                return NodeAnswer(503, data, "application/json")
            raise _Skip
        if 400 <= status < 500 and status not in _RESERVED and code is not None:
            return NodeAnswer(status, data, "application/json")
        if 400 <= status < 500 and code is not None:
            # These statuses mean something specific between client and relay (and carry
            # headers the relay would have to invent); a node has no business sending them.
            raise _BadAnswer(f"status {status} is not part of the node contract")
        raise _BadAnswer(f"status {status} ({media or 'no content type'})")

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        data = await read_capped(response, self.max_response_bytes)
        if data is None:
            raise _BadAnswer(f"answer larger than {self.max_response_bytes} bytes")
        return data


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it grows past `limit` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
