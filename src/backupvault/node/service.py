"""The node process's core loop: the only place where the firmware, the replica, the disk
and the network meet. Everything here is I/O plumbing; decisions live in `hsm` and
`fleet.replica`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

from backupvault.codec import Message
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.channel import (
    HELLO_SIZE,
    PeerChannel,
    PeerRateLimit,
    PeerRateLimited,
    SentBeforeStart,
)
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord
from backupvault.fleet.records import Mark
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
from backupvault.hsm.firmware import Reply, VaultFirmware
from backupvault.hsm.shares import Answer, ShareWrite, ThresholdRead, ThresholdUpdate
from backupvault.hsm.state import EntryId, is_entry_key
from backupvault.invariants import BrokenInvariant
from backupvault.node.peers import MAX_FRAME_MESSAGES, PeerLink, PeerListener, split_frame
from backupvault.node.store import NodeStore, StoreCorrupted, StoreRecords, share_record
from backupvault.protocol import (
    COUNT_MESSAGES,
    CountReport,
    CountReportRequest,
    ErrorCode,
    ErrorResponse,
    EvaluateResponse,
    Op,
    pad_response,
)

log = logging.getLogger("backupvault.node")

TICK_SECONDS = 0.01
STORE_CHECK_PAUSE = 0.001  # between buckets of the background check: it yields the CPU
#: Count report requests answered per peer (a token bucket: a burst, then this rate).
#: Each costs a store read and an Ed25519 signature, about 0.2 ms on the 2-core machine:
#: a hostile peer's flood costs at most ~1 % of a core per peer. An honest node asks only
#: after a rollback, once per entry a request touches (at most every COUNT_ASK_INTERVAL),
#: and asks again at the entry's next request if a peer dropped it.
COUNT_REQUESTS_PER_SECOND = 50.0
COUNT_REQUEST_BURST = 100
#: An open count report request for an entry is sent again no sooner than this (a
#: recovery touches its entry several times in a second: manifest, evaluate, resends).
COUNT_ASK_INTERVAL = 1.0
#: A group commit runs on the event loop if one of the node's last `RECENT_WRITES`
#: writes (store + token) took less than this: handing such a write to a thread and back
#: costs more CPU than the write (on the 2-core bench machine, 1.2 ms of a fan-out's
#: 7.6 ms per node; docs/performance.md, "What was changed"). The quickest of several,
#: because a write that waited for a busy CPU says nothing about the disk. A slow disk
#: or token is written in a thread, so the loop keeps serving while it waits.
INLINE_WRITE_SECONDS = 0.002
RECENT_WRITES = 4


class StoreStart(StrEnum):
    """What a start found the store to be, against the token's counter (node.main,
    `store_start`): what operators read in the metrics. Only INTACT takes part at once;
    the others catch up from their peers first."""

    #: No counter in the token and an empty store: a new node, nothing it wrote is lost.
    FIRST_START = "first_start"
    INTACT = "intact"
    #: The store is behind the token (rolled back, wiped, or a crash between the two
    #: writes, which looks the same) or past it by more than one write.
    ROLLBACK_DETECTED = "rollback_detected"
    #: The last start's catch-up did not finish before the node stopped.
    CATCH_UP_UNFINISHED = "catch_up_unfinished"
    #: A store with writes the token never counted (a new token, an upgrade).
    UNCOUNTED_HISTORY = "uncounted_history"

    @property
    def lost_nothing(self) -> bool:
        """Whether the store holds everything the node ever wrote (an empty one on a
        first start does)."""
        return self in (StoreStart.FIRST_START, StoreStart.INTACT)


@dataclass(frozen=True)
class ClientAnswer:
    """What the HTTP layer sends back: a sealed body (200) or a JSON error."""

    status: int
    body: bytes = field(default=b"", repr=False)  # a sealed response: never printed
    error: str = ""
    detail: str = ""


class NodeService:
    def __init__(
        self,
        node: int,
        peer_addresses: dict[int, tuple[str, int]],
        firmware: VaultFirmware,
        channel: PeerChannel,
        store: NodeStore,
        timing: Timing = DEFAULT_TIMING,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        record_counter: Callable[[int], None] | None = None,
        intact: bool = False,
        peer_listen: tuple[str, int] | None = None,
        inline_write_seconds: float = INLINE_WRITE_SECONDS,
        store_start: StoreStart | None = None,
    ) -> None:
        """`peer_addresses`: every node's peer listener (this node's own included);
        `peer_listen`: where this node's listener binds (default: its own address there).
        `record_counter(n)`: record in the token that the store is making its n-th
        write, alongside the write, before anything depending on it leaves. `intact`: the
        store matched the token's counter at start, so the replica takes part at once;
        `store_start`: what the start found, for the metrics (default: from `intact`).
        `inline_write_seconds`: writes quicker than this run on the event loop (0: every
        write in a thread)."""
        self.node = node
        self._peer_addresses = peer_addresses
        self._peer_listen = peer_addresses[node] if peer_listen is None else peer_listen
        self._firmware = firmware
        self._channel = channel
        self._store = store
        # The store keeps the shares left at L named, by the firmware's own test.
        store.at_limit = firmware.shares.at_limit
        # And it counts an account's registrations staged and never committed (the cap
        # per account the firmware keeps: review r1, finding 1).
        firmware.shares.count_staged = store.count_staged
        # And the entries of an account it holds (the cap per account: review r1, finding 4).
        firmware.shares.count_entries = store.count_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._record_counter = record_counter
        self._intact = intact
        self.store_start = store_start or (
            StoreStart.INTACT if intact else StoreStart.ROLLBACK_DETECTED
        )
        # Records are read from the store as needed, never all loaded (docs/fleet.md).
        self.records = StoreRecords(store)
        self.replica = Replica(
            node,
            peer_addresses,
            os.urandom,
            self.records,
            timing,
            check_value=firmware.check_value,
            on_accept=firmware.on_accept,
            announce=firmware.announce,
            check_key=is_entry_key,
            worth_fetching=firmware.worth_fetching,
        )
        if not intact:
            # The store may have been rolled back: its counts are not trusted until t
            # peers' signed count reports or the owner's next verified reset
            # (docs/threshold.md, "Counters and erasure"). Recorded in the store, so a
            # clean restart later does not trust the rows written before either.
            store.distrust_share_rows()
        if store.suspect_through:
            firmware.shares.distrust_stored_counts(store.share_suspect)
        self._waiting: dict[bytes, asyncio.Future[Committed | Failed]] = {}
        self._links: dict[int, PeerLink] = {}
        self.listener: PeerListener | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # group commits
        self._backlog: list[Effect] = []  # effects behind a group commit, in order
        self._committing = False
        # Seconds the last group commits took; the first goes to the thread.
        self._inline_write_seconds = inline_write_seconds
        self._recent_writes: deque[float] = deque(maxlen=RECENT_WRITES)
        # The store failed its check, or the core was about to break one of its own
        # invariants: the node serves nothing and sends nothing (fail-stop).
        self._fatal: Exception | None = None
        self._outbox: dict[int, list[bytes]] = {}
        self._count_requests = PeerRateLimit(COUNT_REQUESTS_PER_SECOND, COUNT_REQUEST_BURST)
        self._asked: dict[bytes, float] = {}  # open count requests' nonces -> last sent
        self._flush_scheduled = False
        # Counters for operators and tests: OPRF evaluations made here, commits, failures.
        self.metrics = {
            "evaluations": 0,
            "committed": 0,
            "fleet_unavailable": 0,
            "peer_messages_dropped": 0,
            "peer_messages_before_start": 0,  # queued by peers while this node was down
            "group_commits": 0,
            "records_persisted": 0,
            "peer_streams_refused": 0,
            "store_checked": 0,  # 1 once every bucket of the store passed its check
            "records_caught_up": 0,  # records merged from peers' catch-up pages, persisted
            "shares_erased": 0,  # this node's shares erased (limit, delete, password change)
            "count_reports_taken": 0,  # peers' signed count reports after a rollback
            "count_reports_ignored": 0,  # late, repeated or to no request: dropped unread
            "count_reports_sent": 0,  # this node's signed reports to its peers
            "count_requests_dropped": 0,  # over a peer's COUNT_REQUESTS_PER_SECOND
            # Evaluations refused as answered here for another B (`ShareKeeper`).
            "attempts_answered_for_another_b": 0,
        }

    @property
    def intact(self) -> bool:
        """Whether this start found the store matching the token's counter."""
        return self._intact

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for peer in self.replica.peers:
            self._links[peer] = PeerLink(
                peer, self._peer_addresses[peer], partial(self._channel.hello, peer), self._dropped
            )
        self._step(lambda: self.replica.start(self._clock(), self._intact))
        # Peers are heard only once the replica has started.
        self.listener = PeerListener(
            self._peer_listen,
            self._channel.open_hello,
            self._peer_stream_frame,
            HELLO_SIZE,
            on_refused=self._peer_stream_refused,
        )
        await self.listener.start()
        # Dialling only once the listener is bound: a start that fails there leaves no
        # task behind, which the process would otherwise wait on at exit (a link whose
        # dial had just connected could swallow its cancellation: it hung, not exited).
        # What the replica's start sent meanwhile waits in each link's queue.
        for link in self._links.values():
            link.start()
        self._ticker = asyncio.create_task(self._tick_forever())
        verifying = asyncio.create_task(self._verify_store())
        self._tasks.add(verifying)
        verifying.add_done_callback(self._tasks.discard)

    async def _verify_store(self) -> None:
        """Check every bucket of the store in the background: each is checked before its
        first use anyway, this finds damage in entries nobody asks for."""
        try:
            await asyncio.to_thread(self._store.verify_all, STORE_CHECK_PAUSE)
        except StoreCorrupted as err:
            self._stop_serving(err)
            return
        self.metrics["store_checked"] = 1
        # Shares left at L before a restart are watched too, not only those read again:
        # the store names them (format 3); a store of an earlier format is scanned once.
        shares = self._firmware.shares
        store = self._store
        try:
            if store.watch_complete:
                # On the loop: the reader connection is its own, and the table is small.
                at_limit = store.watched_keys()
            else:
                at_limit = await asyncio.to_thread(
                    store.share_keys, shares.at_limit, STORE_CHECK_PAUSE
                )
                await asyncio.to_thread(store.complete_watch, at_limit)
        except sqlite3.Error:
            return  # the store is closing; the rows' next reads watch them
        try:
            for key in at_limit:
                shares.watch(key)
        except StoreCorrupted as err:
            self._stop_serving(err)

    def _step(self, step: Callable[[], list[Effect]]) -> None:
        """Run one replica step and carry out its effects. A store row that fails its
        check, or a broken invariant of the core, stops the node (fail-stop): it must not
        answer from a damaged store, nor act on a state its own code got wrong."""
        try:
            effects = step()
        except (StoreCorrupted, AssertionError) as err:
            self._stop_serving(err)
            return
        try:
            self._execute(effects)
        except Exception as err:
            # Carrying out effects fails only by a bug (a Send to a peer this node has no
            # channel to, once): stopped visibly, as for a broken invariant, rather than
            # an error thrown at whichever peer frame or request happened to run the step.
            self._stop_serving(BrokenInvariant(f"carrying out a step's effects raised {err!r}"))
            return
        erased = self._firmware.shares.take_writes()
        if erased:
            self._persist_in_background(erased)

    def _persist_in_background(self, writes: tuple[ShareWrite, ...]) -> None:
        """Rows the firmware changed while this node's acceptor took a value (an erasure
        on a verified owner statement, docs/threshold.md "Catching up"): no answer waits
        for them, so they go through the group commit on their own."""

        async def persist() -> None:
            if await self._persist_rows(writes):
                self._firmware.shares.durable(writes)

        task = asyncio.get_running_loop().create_task(persist())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop_serving(self, err: StoreCorrupted | AssertionError) -> None:
        if isinstance(err, StoreCorrupted):
            log.critical("node store failed its check, node stops serving: %s", err.message)
        else:
            # As TigerBeetle crashes on a failed assertion: a bug in this node's own code
            # (or corrupted memory). Nothing the broken step produced leaves the node.
            log.critical("broken invariant in the vault core, node stops serving: %s", err)
        self._fatal = err
        self._fail_waiting()

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        while self._committing:  # let the write under way finish before closing the store
            await asyncio.sleep(TICK_SECONDS)
        for link in self._links.values():
            await link.stop()
        if self.listener is not None:
            await self.listener.stop()
        self._store.close()

    async def _tick_forever(self) -> None:
        announced = False
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self._step(lambda: self.replica.tick(self._clock()))
                self._expire_shares()
            except Exception as err:
                # Any other error out of a tick is a bug in the core too, and it would end
                # this task: no more timeouts, repairs, catch-up or settling, while the
                # node still said it was serving (a peer's flood of Forwards once did it).
                # Stopped as for a broken invariant, it says so and the relay passes it by.
                self._stop_serving(BrokenInvariant(f"a tick of the replica raised {err!r}"))
                return
            if not announced and self.replica.ready:
                announced = True  # operators (and `local up`) wait for this line
                log.info("node %d ready: caught up with its peers, serving requests", self.node)

    def _expire_shares(self) -> None:
        """Rounds the firmware proposes on its own (a share left at this node's own count
        of L past the grace: docs/threshold.md, "Counters and erasure"), committed in the
        background; their rows are persisted as a request's are."""
        if self._fatal is not None or not self.replica.ready:
            return
        for update in self._firmware.tick(self._clock()):
            task = asyncio.get_running_loop().create_task(self._expire(update))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _expire(self, update: ThresholdUpdate) -> None:
        done = await self._commit(update.key, update.change)
        if isinstance(done, Failed):
            return  # the firmware proposes it again one grace later
        try:
            answer = done.outcome()
        except AssertionError as err:  # a broken invariant of the firmware: fail-stop
            self._stop_serving(err)
            return
        if answer.writes and await self._persist_rows(answer.writes):
            self._firmware.shares.durable(answer.writes)

    # ---- client requests ---------------------------------------------------------------

    async def client_request(self, op: Op, account: str, entry: str, sealed: bytes) -> ClientAnswer:
        try:
            return await self._client_request(op, account, entry, sealed)
        except AssertionError as err:  # a broken invariant of the firmware: fail-stop
            self._stop_serving(err)
            return self._stopped()
        finally:
            self._ask_for_count_reports()

    async def _client_request(
        self, op: Op, account: str, entry: str, sealed: bytes
    ) -> ClientAnswer:
        if self._fatal is not None:
            return self._stopped()
        if not self.replica.ready:
            return ClientAnswer(503, error="node_not_ready", detail="node is catching up")
        try:
            opened = self._firmware.open(op, account, entry, sealed, self._wall_clock())
        except (InvalidInput, AuthenticationFailed) as err:
            return ClientAnswer(400, error="bad_sealed_request", detail=err.message)
        if isinstance(opened, ErrorResponse):
            return ClientAnswer(403, error=opened.code, detail=opened.detail)
        request, response_key = opened
        action = self._firmware.handle(op, request)
        if isinstance(action, Reply):
            sealed = response_key.seal(pad_response(op, action.response.to_bytes()))
            return ClientAnswer(200, sealed)
        answer: Answer
        unheld: Answer | None = None
        fresh = False
        try:
            if isinstance(action, ThresholdRead):
                answer = action.answer(self.replica.held_payload(action.key))
                if answer.repair is not None:
                    # The value held is too old to answer from (a late share's delivery to
                    # a node that missed its commit, a read asking to confirm): a round that
                    # leaves the value as it is brings this node the newest, and its outcome
                    # is the answer. Joined only to a value chosen after it came: a join to
                    # the value held wrote nothing to the nodes that lack it (review s59).
                    action, fresh = answer.repair, True
            else:
                # An entry this node holds nothing of: answered with no round (review r1).
                unheld = action.without_round(self.replica.held_payload(action.key))
        except StoreCorrupted as err:
            self._stop_serving(err)
            return ClientAnswer(503, error="node_not_ready", detail="node store failed")
        if isinstance(action, ThresholdUpdate):
            if unheld is not None:
                answer = unheld
            else:
                # Joinable: the N copies of one request, one per node, make one round.
                done = await self._commit(action.key, action.change, joinable=True, fresh=fresh)
                if isinstance(done, Failed):
                    return self._unavailable()
                self.metrics["committed"] += 1
                answer = done.outcome()
        newly_counted = bool(answer.writes) and isinstance(answer.response, EvaluateResponse)
        self.metrics["attempts_answered_for_another_b"] = (
            self._firmware.shares.answered_for_another_b
        )
        # This node's own rows (its count above all) are durable before the answer
        # that depends on them leaves, also those an earlier request is still writing.
        answer = self._firmware.shares.held_until_durable(action.key, answer)
        if answer.writes:
            if not await self._persist_rows(answer.writes):
                return ClientAnswer(503, error="node_not_ready", detail="node store failed")
            self._firmware.shares.durable(answer.writes)
        if newly_counted:
            self.metrics["evaluations"] += 1  # a newly counted partial evaluation
        return ClientAnswer(200, response_key.seal(pad_response(op, answer.response.to_bytes())))

    @property
    def serving(self) -> bool:
        """Caught up, and not stopped (fail-stop): what `/v1/health` says as "ready", so
        the relay passes a stopped node over instead of sending it requests to refuse."""
        return self.replica.ready and self._fatal is None

    @property
    def stopped_because(self) -> str | None:
        """Why the node stopped serving, for its operator (signed metrics); None if not."""
        if self._fatal is None:
            return None
        if isinstance(self._fatal, StoreCorrupted):
            return f"store failed its check: {self._fatal.message}"
        if isinstance(self._fatal, AssertionError):
            return f"broken invariant: {self._fatal}"
        return f"store write failed: {self._fatal!r}"

    def _stopped(self) -> ClientAnswer:
        why = (
            "its code broke an invariant"
            if isinstance(self._fatal, AssertionError)
            else ("its store failed")
        )
        return ClientAnswer(503, error="node_not_ready", detail=f"node stopped: {why}")

    def _unavailable(self) -> ClientAnswer:
        self.metrics["fleet_unavailable"] += 1
        return ClientAnswer(
            503,
            error=str(ErrorCode.FLEET_UNAVAILABLE),
            detail="fewer than a majority of vault nodes answered; nothing was changed "
            "that you were told about; try again later",
        )

    async def _commit(
        self,
        key: bytes,
        change: Callable[[bytes], tuple[bytes, Any]],
        *,
        joinable: bool = False,
        fresh: bool = False,
    ) -> Committed | Failed:
        op_id = os.urandom(16)
        future: asyncio.Future[Committed | Failed] = asyncio.get_running_loop().create_future()
        self._waiting[op_id] = future
        self._step(
            lambda: self.replica.propose(
                op_id, key, change, self._clock(), joinable=joinable, fresh=fresh
            )
        )
        try:
            return await future
        finally:
            self._waiting.pop(op_id, None)

    async def _persist_rows(self, writes: tuple[ShareWrite, ...]) -> bool:
        """Write this node's own rows through the group commit (the same transaction, the
        same counter and token count as records); True once durable."""
        op_id = os.urandom(16)
        future: asyncio.Future[Committed | Failed] = asyncio.get_running_loop().create_future()
        self._waiting[op_id] = future
        effects: list[Effect] = [Persist(share_record(w.key, w.row), "share") for w in writes]
        self._execute([*effects, Committed(op_id, None)])
        try:
            return isinstance(await future, Committed)
        finally:
            self._waiting.pop(op_id, None)

    # ---- count reports after a rollback (docs/threshold.md, "Counters and erasure") ----

    def _ask_for_count_reports(self) -> None:
        """Send the count report requests the firmware made (for entries whose rolled-back
        rows a request touched) to every peer, each open request at most once per
        COUNT_ASK_INTERVAL (within the peers' rate limit)."""
        if self._fatal is not None:
            return
        now = self._clock()
        self._asked = {n: at for n, at in self._asked.items() if now - at < COUNT_ASK_INTERVAL}
        for request in self._firmware.shares.take_report_requests():
            if request.nonce in self._asked:
                continue
            self._asked[request.nonce] = now
            for peer in self.replica.peers:
                self._send(peer, request)

    def _count_report_message(self, sender: int, message: CountReport | CountReportRequest) -> None:
        """A peer asks for this node's count report, or answers this node's request. A
        node still catching up does not report: its value may be behind. Each request
        costs a store read and a signature, so each peer gets `COUNT_REQUESTS_PER_SECOND`
        (a token bucket, checked before anything else); a report is read only if it
        answers an open request of this node's that its sender has not answered yet."""
        shares = self._firmware.shares
        if isinstance(message, CountReportRequest):
            if not self._count_requests.allow(sender, self._clock()):
                self.metrics["count_requests_dropped"] += 1
                return
            if self.replica.ready:
                key = EntryId.of(message.account, message.entry).to_bytes()
                report = shares.count_report(sender + 1, message, self.replica.held_payload(key))
                if report is not None:
                    self.metrics["count_reports_sent"] += 1
                    self._send(sender, report)
            return
        if message.reporter != sender + 1 or message.requester != shares.index:
            raise AuthenticationFailed(
                f"a count report from node {sender} names share indices {message.reporter}"
                f" (reporter) and {message.requester} (requester)"
            )
        if not shares.wants_report(sender + 1, message):
            # Late (settled already), repeated, or to no request: dropped unread.
            self.metrics["count_reports_ignored"] += 1
            return
        key = EntryId.of(message.account, message.entry).to_bytes()
        writes = shares.take_count_report(sender + 1, message, self.replica.held_payload(key))
        if writes is None:
            self.metrics["count_reports_ignored"] += 1
            return
        self.metrics["count_reports_taken"] += 1
        if writes:
            task = asyncio.get_running_loop().create_task(self._persist_settled(writes))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _persist_settled(self, writes: tuple[ShareWrite, ...]) -> None:
        if await self._persist_rows(writes):
            self._firmware.shares.durable(writes)

    # ---- peers ----------------------------------------------------------------------

    def peer_frame(self, sender: int, frame: bytes) -> int:
        """Take a frame of sealed peer messages that came on a stream `sender` opened
        (docs/fleet.md, "Peer streams"). Returns 1 if one was refused (bad seal, replay,
        another sender, malformed), after which the rest are not opened, else 0; the
        messages before it are processed, but for rate-limited ones, which are dropped. A
        frame that does not split into messages (or holds more than MAX_FRAME_MESSAGES)
        raises InvalidInput."""
        dropped: list[str] = []
        for envelope in split_frame(frame):
            try:
                source, message = self._channel.open(envelope, PEER_MESSAGES + COUNT_MESSAGES)
                if source != sender:
                    raise AuthenticationFailed(
                        f"a message from node {source} on node {sender}'s stream"
                    )
                if isinstance(message, CountReport | CountReportRequest):
                    try:
                        self._count_report_message(sender, message)
                    except (StoreCorrupted, AssertionError) as err:
                        self._stop_serving(err)
                    continue
            except PeerRateLimited as err:
                # Authentic, but asking for costly work too often: dropped, not refused;
                # said once per frame (a frame of them was a line each: 180,000 lines).
                dropped.append(err.message)
                continue
            except SentBeforeStart:
                # Queued by a peer while this node was down: dropped, and the stream kept
                # (closing it would make every peer redial just as this node comes back).
                self.metrics["peer_messages_before_start"] += 1
                continue
            except (InvalidInput, AuthenticationFailed) as err:
                # The rest of the frame is not opened, and the stream closes: an honest
                # peer seals every message it sends, so one refused message shows the
                # stream is not (only) its, and opening a million of them, each logged,
                # held this node's event loop for 20 s (review s39).
                log.warning("refused peer message: %s", err.message)
                self._log_dropped(sender, dropped)
                return 1
            self._step(partial(self.replica.receive, sender, message, self._clock()))
        self._log_dropped(sender, dropped)
        return 0

    @staticmethod
    def _log_dropped(sender: int, dropped: list[str]) -> None:
        if dropped:
            log.warning(
                "dropped %d peer message(s) from node %d: %s", len(dropped), sender, dropped[0]
            )

    def _peer_stream_frame(self, sender: int, frame: bytes) -> bool:
        """A frame from a stream: False (close the stream) if anything in it was refused."""
        try:
            refused = self.peer_frame(sender, frame)
        except InvalidInput as err:
            log.warning("refused peer frame from node %d: %s", sender, err.message)
            refused = 1
        return not refused

    def _peer_stream_refused(self) -> None:
        # Counted where the stream is closed, so a refused hello or an oversize frame is
        # counted as a refused message is (docs/operations.md, "Ports"), each stream once.
        self.metrics["peer_streams_refused"] += 1

    def _dropped(self, count: int) -> None:
        self.metrics["peer_messages_dropped"] += count

    def _execute(self, effects: list[Effect]) -> None:
        """Carry out effects in order. A `Persist` must be durable before anything after it
        leaves the node, so from the first persist on, effects queue behind a group
        commit: every record persisted while a write is under way goes into the next one
        transaction and fsync, made in a thread so the event loop keeps serving. Effects
        stay in FIFO order across calls: nothing overtakes a persist made before it."""
        if self._fatal is not None:
            return
        if not self._backlog and not self._committing:
            effects = self._deliver_until_a_write(effects)
            if not effects:
                return
        self._backlog.extend(effects)
        if not self._committing:
            self._committing = True
            task = asyncio.get_running_loop().create_task(self._group_commit())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _group_commit(self) -> None:
        try:
            while self._backlog and self._fatal is None:
                # Every write before this batch is durable: what precedes its first
                # persist (a leader's Accept, replica._send_accept) leaves now, before it.
                batch, self._backlog = self._backlog, []
                batch = self._deliver_until_a_write(batch)
                # Ready now: every copy it caught up with came before, in this batch or
                # an earlier one, so this write finishes the catch-up on disk.
                caught_up = self.replica.ready
                # The last write of a key in a batch is what it holds after the batch.
                records = {e.record.key: e.record for e in batch if isinstance(e, Persist)}
                if records:
                    # Marks set so far claim records put before them: in this batch
                    # or an earlier one, so they are saved with these or after them.
                    marks = self.records.take_marks()
                    saving = list(records.values())
                    try:
                        if self._quick_writes():
                            self._write(saving, marks, caught_up)
                        else:
                            await asyncio.to_thread(self._write, saving, marks, caught_up)
                    except Exception as err:
                        # Fail-stop: what the replica told itself is durable is not, so
                        # nothing that depends on it may leave. The operator restarts the
                        # node, which then catches up like any restart.
                        log.critical("node store write failed, node stops serving: %r", err)
                        self._fatal = err
                        self._fail_waiting()
                        return
                    self.records.saved(saving)
                    self.metrics["group_commits"] += 1
                    self.metrics["records_persisted"] += len(records)
                    self.metrics["records_caught_up"] += sum(
                        isinstance(e, Persist) and e.kind == "copy" for e in batch
                    )
                    self.metrics["shares_erased"] = self._store.shares_erased
                self._deliver([e for e in batch if not isinstance(e, Persist)])
        except Exception as err:
            # A bug as in `_step`: without this the task would end with the rest of the
            # batch undelivered (requests left waiting) and the node still saying ready.
            self._stop_serving(BrokenInvariant(f"delivering a group commit raised {err!r}"))
        finally:
            self._committing = False

    def _write(
        self, records: list[AcceptorRecord], marks: dict[int, Mark], caught_up: bool
    ) -> None:
        """One group commit (in a thread, or on the loop while writes are quick:
        `INLINE_WRITE_SECONDS`): the store's transaction (+ fsync), then the token
        counting it; both are done before anything in the batch leaves. In this
        order a crash in between leaves the store one ahead of the token, which the next
        start takes as intact (nothing depending on the write left); the other order would
        leave the token ahead, which looks like a rollback and costs a catch-up. The
        token's advance is a fraction of the fsync (docs/fleet.md, "Restarts")."""
        started = time.perf_counter()
        self._store.save(records, marks, caught_up=caught_up)
        if self._record_counter is not None:
            self._record_counter(self._store.counter)
        self._recent_writes.append(time.perf_counter() - started)

    def _quick_writes(self) -> bool:
        """Whether this node's disk and token write quickly enough to write on the loop."""
        return bool(self._recent_writes) and min(self._recent_writes) < self._inline_write_seconds

    def _deliver_until_a_write(self, effects: list[Effect]) -> list[Effect]:
        """Deliver the effects before the first `Persist` (every earlier write is durable)
        and return the rest, from that persist on."""
        first = next((i for i, e in enumerate(effects) if isinstance(e, Persist)), len(effects))
        self._deliver(effects[:first])
        return effects[first:]

    def _fail_waiting(self) -> None:
        for op_id, future in list(self._waiting.items()):
            if not future.done():
                future.set_result(Failed(op_id, "node store failed"))

    def _deliver(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    self._send(to, message)
                case Committed() | Failed():
                    future = self._waiting.get(effect.op_id)
                    if future is not None and not future.done():
                        future.set_result(effect)

    def _send(self, to: int, message: Message) -> None:
        """Queue a message for `to`; everything queued for a peer in one turn of the
        event loop leaves as one frame on its stream."""
        self._outbox.setdefault(to, []).append(self._channel.seal(to, message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        self._flush_scheduled = False
        for to, outbox in self._outbox.items():
            if outbox:
                self._outbox[to] = []
                self._send_frame(to, outbox)

    def _send_frame(self, to: int, envelopes: list[bytes]) -> None:
        for start in range(0, len(envelopes), MAX_FRAME_MESSAGES):
            self._links[to].send(envelopes[start : start + MAX_FRAME_MESSAGES])
