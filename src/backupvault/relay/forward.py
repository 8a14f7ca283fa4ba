"""Forwarding a sealed request to a fleet node, retrying on another node when one is down.

The node-facing contract:

    POST {node}/v1/client/{op}
    X-Backupvault-Account: <account from the token>
    X-Backupvault-Entry: <entry from the path>
    X-Backupvault-Node, -Time, -Nonce, -Signature: the relay's signature (backupvault.hop)
    Content-Type: application/octet-stream
    <the client's copy for this node, byte for byte>

Node URLs are listed by node index (the signature names the index). The client's body
holds the request sealed once to each node (`protocol.SealedCopies`); node i gets only
copy i, which only it can open. No other client header is passed on. The answer is
handed back unchanged when it is a 200 with an octet-stream body or a 4xx with a JSON
`{"error", "detail"}` body, with the index of the node that gave it. A node that cannot be
reached (connect error, timeout) or answers 503 with any error other than
`fleet_unavailable` is skipped and the next node is tried (each node once per request);
a 503 `fleet_unavailable` (the node cannot reach a majority) is handed back as is, since
every other node would say the same. Anything else from a node is a bad answer (502).

Which node first: the leader, as the nodes name it in `X-Backupvault-Leader` on their
answers (a node that takes a change forwards it to the leader, one more hop; the leader
takes it at once), while it has fewer than LEADER_MAX_IN_FLIGHT requests from this relay
in flight; otherwise the round-robin start, which spreads the firmware's work. Then the
others in turn; nodes with a request waiting over 2 s after them, nodes that recently
failed last. The header only orders the nodes; nothing a node accepts depends on who
asked it. A node that failed is passed over for a while (10 s after a request it may
have acted on, 1 s after a refusal) and then until its `/v1/health` says ready: a killed
node that is restarting, or one whose answers are withheld, gets no new requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.hop import LEADER_HEADER, sign_headers

ACCOUNT_HEADER = "X-Backupvault-Account"
ENTRY_HEADER = "X-Backupvault-Entry"

#: 4xx statuses with a meaning between client and relay only (token refused, rate limited);
#: a node sending one is answering outside the contract.
_RESERVED = frozenset({401, 407, 429})


@dataclass(frozen=True)
class NodeAnswer:
    """What the relay sends back to the client, and which node (if any) produced it."""

    status: int
    body: bytes
    media_type: str
    node: str | None
    #: Nodes tried and skipped before the answer (down, timed out, not ready).
    skipped: int = 0
    #: The index of the node that answered (None: no node did).
    index: int | None = None


class _BadAnswer(Exception):
    """A node answered something outside the contract."""


#: The leader is asked first while it has fewer requests than this in flight from this
#: relay; beyond, requests spread round-robin. Every request a node takes costs it the
#: firmware's work (opening, OPRF, OPAQUE); sending them all to one node makes that node
#: the fleet's bottleneck (measured: 16 clients, 35.5 -> 23.3 guesses/s; docs/performance.md).
LEADER_MAX_IN_FLIGHT = 2
#: A node with a request waiting longer than this gets new requests after the others
#: (a stall shows here seconds before the request's timeout does).
STALLED_AFTER = 2.0
#: A node that took a request and gave no answer (timed out, or the connection broke) is
#: passed over at least this long: it may act on requests and never answer them.
SUSPECT_SECONDS = 10.0
#: A node that could not be reached or said it is not ready: at least this long.
UNREACHABLE_SECONDS = 1.0
#: After that, its `/v1/health` is asked this often, and it gets requests again only once
#: it answers ready (a killed node, restarted and catching up, would fail them all).
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 1.0


class _Unknown(Exception):
    """The node may or may not have acted on the request."""


class _Skip(Exception):
    """This node cannot answer now; try another."""


def _error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


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
    """Sends sealed requests to the fleet, trying each node at most once per request."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        node_urls: Sequence[str],
        max_response_bytes: int,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.node_urls = tuple(node_urls)
        self._index = {url: i for i, url in enumerate(self.node_urls)}
        self._signing_key = signing_key
        self.max_response_bytes = max_response_bytes
        self._next = itertools.count()
        self._clock = clock
        # Nodes passed over: at least until when (then until a health probe says ready).
        self._suspect_until: dict[str, float] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        # Requests in flight per node: an id for each, and when it was sent.
        self._in_flight: dict[str, dict[int, float]] = {}
        self._request_ids = itertools.count()
        # The leader as the last answering node named it (None: not known yet).
        self._leader: str | None = None

    def order(self) -> list[str]:
        """The leader first, then the others from a round-robin start: skips nobody. Nodes
        that recently failed go last, so a stalled node (which may act on a request and
        never answer, costing the user a guess) gets new requests only when no healthy
        node is left."""
        start = next(self._next) % len(self.node_urls)
        rotated = [*self.node_urls[start:], *self.node_urls[:start]]
        leader = self._leader
        if leader is not None and len(self._in_flight.get(leader, ())) < LEADER_MAX_IN_FLIGHT:
            rotated.remove(leader)
            rotated.insert(0, leader)
        now = self._clock()
        return sorted(rotated, key=lambda node: self._standing(node, now))

    def _standing(self, node: str, now: float) -> int:
        """0: healthy; 1: a request has waited at it longer than STALLED_AFTER (a stalled
        or overloaded node gets new requests after the others, but is not failed); 2:
        passed over (it failed)."""
        if node in self._suspect_until:
            return 2
        started = self._in_flight.get(node)
        return 1 if started and now - min(started.values()) > STALLED_AFTER else 0

    def _learn_leader(self, response: httpx.Response) -> None:
        """Remember the leader a node's answer names; ignore anything not a node index."""
        named = response.headers.get(LEADER_HEADER, "")
        if named.isascii() and named.isdigit() and len(named) <= 3:
            index = int(named)
            if index < len(self.node_urls):
                self._leader = self.node_urls[index]

    def _suspect(self, node: str, seconds: float) -> None:
        """Pass `node` over for at least `seconds`, then until its health says ready."""
        until = self._clock() + seconds
        self._suspect_until[node] = max(until, self._suspect_until.get(node, until))
        if node not in self._probes:
            probe = asyncio.get_running_loop().create_task(self._probe_until_ready(node))
            self._probes[node] = probe
            probe.add_done_callback(lambda _: self._probes.pop(node, None))

    async def _probe_until_ready(self, node: str) -> None:
        while True:
            wait = self._suspect_until.get(node, 0.0) - self._clock()
            await asyncio.sleep(max(PROBE_EVERY, wait))
            if self._clock() >= self._suspect_until.get(node, 0.0) and await self._ready(node):
                self._suspect_until.pop(node, None)
                return

    async def _ready(self, node: str) -> bool:
        try:
            response = await self.client.get(f"{node}/v1/health", timeout=PROBE_TIMEOUT)
            return response.status_code == 200 and response.json().get("ready") is True
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async def aclose(self) -> None:
        """Stop the health probes (the relay is shutting down)."""
        probes = list(self._probes.values())
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)

    async def forward(
        self, op: str, account: str, entry: str, copies: Sequence[bytes]
    ) -> NodeAnswer:
        """`copies[i]`: the request sealed to node i (one per node, by index)."""
        if len(copies) != len(self.node_urls):
            raise ValueError("one sealed copy per node")
        skipped = 0
        for node in self.order():
            index = self._index[node]
            try:
                answer = await self._one(node, op, account, entry, copies[index])
            except _Skip:
                self._suspect(node, UNREACHABLE_SECONDS)
                skipped += 1
                continue
            except _Unknown:
                self._suspect(node, SUSPECT_SECONDS)
                return NodeAnswer(
                    503,
                    _error_body(
                        "node_timeout",
                        "a vault node took too long to answer; it may have counted the "
                        "request; try again",
                    ),
                    "application/json",
                    node,
                    skipped,
                    index,
                )
            except _BadAnswer as err:
                return NodeAnswer(
                    502,
                    _error_body("bad_node_answer", f"a vault node answered wrongly: {err}"),
                    "application/json",
                    node,
                    skipped,
                    index,
                )
            return NodeAnswer(answer.status, answer.body, answer.media_type, node, skipped, index)
        return NodeAnswer(
            503,
            _error_body(
                "fleet_unavailable",
                f"none of the {len(self.node_urls)} vault nodes could answer; try again later",
            ),
            "application/json",
            None,
            skipped,
        )

    async def _one(self, node: str, op: str, account: str, entry: str, body: bytes) -> NodeAnswer:
        headers = {
            ACCOUNT_HEADER: account,
            ENTRY_HEADER: entry,
            "Content-Type": "application/octet-stream",
            **sign_headers(self._signing_key, self._index[node], op, account, entry, body),
        }
        request = next(self._request_ids)
        self._in_flight.setdefault(node, {})[request] = self._clock()
        try:
            async with self.client.stream(
                "POST", f"{node}/v1/client/{op}", content=body, headers=headers
            ) as response:
                data = await self._read_capped(response)
                self._learn_leader(response)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            # The request never reached the node: another node may take it.
            raise _Skip from None
        except httpx.TransportError:
            # The node got the request and did not answer in time (or the connection broke
            # mid-way): it may still act on it. Sending it to another node could charge a
            # guess twice and leave the client's KE3 stale, so the client decides instead.
            raise _Unknown from None
        finally:
            del self._in_flight[node][request]
        status = response.status_code
        media = _media_type(response)
        if status == 200:
            if media != "application/octet-stream":
                raise _BadAnswer("a 200 answer must be application/octet-stream")
            return NodeAnswer(200, data, "application/octet-stream", node)
        code = _json_error_code(data) if media == "application/json" else None
        if status == 503:
            if code == "fleet_unavailable":
                return NodeAnswer(503, data, "application/json", node)
            raise _Skip
        if 400 <= status < 500 and status not in _RESERVED and code is not None:
            return NodeAnswer(status, data, "application/json", node)
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
