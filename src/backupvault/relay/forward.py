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
from dataclasses import dataclass

import httpx
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
    body: bytes
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
    except (ValueError, UnicodeDecodeError):
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("error"), str)
        and isinstance(value.get("detail"), str)
    ):
        return str(value["error"])
    return None


def _media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


class Forwarder:
    """Sends a node its sealed copy, signed for it, and reads its answer."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        node_urls: Sequence[str],
        max_response_bytes: int,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        self.client = client
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
            async with self.client.stream(
                "POST", f"{node}/v1/client/{op}", content=body, headers=headers
            ) as response:
                data = await self._read_capped(response)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise _Skip from None  # the request never reached the node
        except httpx.TransportError:
            # The node got the request and did not answer in time (or the connection broke
            # mid-way): it may still act on it.
            raise _Unknown from None
        status = response.status_code
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

    async def _read_capped(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _BadAnswer(f"answer larger than {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
