"""The node process's core loop: the only place where the firmware, the replica, the disk
and the network meet. Everything here is I/O plumbing; decisions live in `hsm` and
`fleet.replica`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from backupvault.codec import Message
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.channel import PeerChannel
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord
from backupvault.fleet.replica import (
    DEFAULT_TIMING,
    Committed,
    Effect,
    Failed,
    Persist,
    Replica,
    Send,
    Timing,
)
from backupvault.hsm.firmware import Reply, Update, VaultFirmware
from backupvault.hsm.state import EntryState
from backupvault.node.store import NodeStore
from backupvault.protocol import (
    ErrorCode,
    ErrorResponse,
    Op,
    RecoverStartResponse,
    pad_response,
)

log = logging.getLogger("backupvault.node")

TICK_SECONDS = 0.01
MAX_IN_FLIGHT_PER_PEER = 32


@dataclass(frozen=True)
class ClientAnswer:
    """What the HTTP layer sends back: a sealed body (200) or a JSON error."""

    status: int
    body: bytes = b""
    error: str = ""
    detail: str = ""


class NodeService:
    def __init__(
        self,
        node: int,
        peer_urls: dict[int, str],
        firmware: VaultFirmware,
        channel: PeerChannel,
        store: NodeStore,
        timing: Timing = DEFAULT_TIMING,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self._peer_urls = peer_urls
        self._firmware = firmware
        self._channel = channel
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self.replica = Replica(node, peer_urls, os.urandom, store.load(), timing)
        self._waiting: dict[bytes, asyncio.Future[Committed | Failed]] = {}
        self._http: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # Counters for operators and tests: OPRF evaluations made here, commits, failures.
        self.metrics = {
            "evaluations": 0,
            "evaluations_repeated": 0,
            "committed": 0,
            "fleet_unavailable": 0,
            "peer_messages_dropped": 0,
        }
        self._in_flight: dict[int, int] = {}

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0, connect=0.5))
        self._execute(self.replica.start(self._clock()))
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self._http:
            await self._http.aclose()
        self._store.close()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._execute(self.replica.tick(self._clock()))

    # ---- client requests ---------------------------------------------------------------

    async def client_request(self, op: Op, account: str, entry: str, sealed: bytes) -> ClientAnswer:
        if not self.replica.ready:
            return ClientAnswer(503, error="node_not_ready", detail="node is catching up")
        try:
            opened = self._firmware.open(op, account, entry, sealed, self._wall_clock())
        except (InvalidInput, AuthenticationFailed) as err:
            return ClientAnswer(400, error="bad_sealed_request", detail=err.message)
        if isinstance(opened, ErrorResponse):
            return ClientAnswer(403, error=opened.code, detail=opened.detail)
        request, response_key = opened
        action = self._firmware.handle(op, request, self._wall_clock())
        if isinstance(action, Reply):
            sealed = response_key.seal(pad_response(op, action.response.to_bytes()))
            return ClientAnswer(200, sealed)
        result = await self._commit(action)
        if isinstance(result, Failed):
            self.metrics["fleet_unavailable"] += 1
            return ClientAnswer(
                503,
                error=str(ErrorCode.FLEET_UNAVAILABLE),
                detail="fewer than a majority of vault nodes answered; nothing was changed "
                "that you were told about; try again later",
            )
        self.metrics["committed"] += 1
        build_reply, charged = result.outcome
        reply = build_reply()
        if isinstance(reply, RecoverStartResponse):
            # A KE2 for a newly charged attempt is a new evaluation; a resent KE1 answered
            # again (or an unknown entry's fake-record KE2) is not.
            self.metrics["evaluations" if charged else "evaluations_repeated"] += 1
        return ClientAnswer(200, response_key.seal(pad_response(op, reply.to_bytes())))

    async def _commit(self, update: Update) -> Committed | Failed:
        op_id = os.urandom(16)
        future: asyncio.Future[Committed | Failed] = asyncio.get_running_loop().create_future()
        self._waiting[op_id] = future

        def change(value: bytes) -> tuple[bytes, tuple[Callable[[], Message], bool]]:
            state = EntryState.from_bytes(value) if value else EntryState()
            new_state, build_reply = update.apply(state)
            charged = new_state.attempt_seq > state.attempt_seq
            return new_state.to_bytes(), (build_reply, charged)

        self._execute(self.replica.propose(op_id, update.key, change, self._clock()))
        try:
            return await future
        finally:
            self._waiting.pop(op_id, None)

    # ---- peers -------------------------------------------------------------------------

    def peer_message(self, envelope: bytes) -> None:
        sender, message = self._channel.open(envelope, PEER_MESSAGES)
        self._execute(self.replica.receive(sender, message, self._clock()))

    def _execute(self, effects: list[Effect]) -> None:
        """Carry out effects in order; all persists of a batch are made durable together
        before anything after them leaves the node."""
        pending: list[AcceptorRecord] = []
        for effect in effects:
            if isinstance(effect, Persist):
                pending.append(effect.record)
                continue
            if pending:
                self._store.save(pending)
                pending = []
            match effect:
                case Send(to, message):
                    self._send(to, message)
                case Committed() | Failed():
                    future = self._waiting.get(effect.op_id)
                    if future is not None and not future.done():
                        future.set_result(effect)
        if pending:
            self._store.save(pending)

    def _send(self, to: int, message: Message) -> None:
        # A slow peer must not pile up unbounded requests (each one costs it work even
        # after we gave up): beyond a few in flight, drop the message. The protocol
        # treats it as lost and retries with backoff.
        if self._in_flight.get(to, 0) >= MAX_IN_FLIGHT_PER_PEER:
            self.metrics["peer_messages_dropped"] += 1
            return
        self._in_flight[to] = self._in_flight.get(to, 0) + 1
        envelope = self._channel.seal(to, message)
        task = asyncio.create_task(self._post(self._peer_urls[to], envelope))
        self._sends.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._sends.discard(task)
            self._in_flight[to] -= 1

        task.add_done_callback(done)

    async def _post(self, url: str, envelope: bytes) -> None:
        assert self._http is not None
        try:
            await self._http.post(f"{url}/v1/peer", content=envelope)
        except httpx.HTTPError as err:
            # A lost message is part of the fault model: the proposer retries.
            log.debug("peer %s unreachable: %s", url, type(err).__name__)
