"""The node side of the threshold OPRF (docs/threshold.md): key shares, the per-node count,
owner statements, and what an acceptor checks of a threshold entry's value.

Pure, like the rest of the firmware. Consensus (`ThresholdUpdate`) only numbers attempts;
every evaluation, reset and erasure rests on what this node checks itself: its own share
against the manifest's commitments, the value it durably accepted itself (`on_accept`),
and the owner's signatures rebuilt from its own state. What a node keeps for itself
(`NodeShare`) is returned as `ShareWrite`s inside an `Answer`: the shell persists them
before the answer leaves the node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.codec import Message
from backupvault.crypto import owner, threshold
from backupvault.crypto.manifest import Manifest
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.messages import AcceptorRecord, payload_of
from backupvault.hsm.state import (
    DEFAULT_GUESS_LIMIT,
    MAX_GUESS_LIMIT,
    STAGED_KEPT,
    EntryId,
    Evaluation,
    NodeShare,
    StagedShare,
    ThresholdState,
    single_seed_status,
)
from backupvault.invariants import require
from backupvault.protocol import (
    COUNT_NONCE_LEN,
    MAX_ERROR_DETAIL,
    AckKind,
    CommitSharesRequest,
    CountReport,
    CountReportRequest,
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ResetResponse,
    ShareAck,
    count_report_message,
    decode_commit_acks,
    share_ack_message,
)

log = logging.getLogger("backupvault.node")

#: Rows kept in memory besides those not yet durable (least recently used go first).
ROWS_CACHED = 4096
#: Attempts whose accepted H(B) a node remembers per entry: the client asks for the
#: latest one within seconds, older ones only matter to a reset that already travels in
#: the replicated value.
ACCEPTED_KEPT = 16
#: Entries whose accepted attempts a node remembers (`ShareKeeper._accepted`; the least
#: recently accepted go first). An attempt is looked up within seconds of its acceptance
#: (the evaluation it answers, the owner's reset after it), so only entries with an
#: attempt in the last moments matter; forgetting one costs what a restart costs: the node
#: answers "resend" until a round makes it accept the attempt again. Without a bound it
#: kept one entry for every key ever attempted, deleted ones too (review r1, finding 3):
#: some 0.5 to 1 KB each, for good. 20,000 at most: about 10 to 20 MB, and more entries
#: than one node sees attempted within a request's 6 s deadline below 3,000 recoveries/s.
ACCEPTED_KEYS = 20_000
#: The B hash of an evaluation a rolled-back node assumes it made, on its peers' count
#: reports, but cannot know (no SHA-256 output is all zeros): the attempt counts, and
#: is never answered or used to rebuild a reset.
UNKNOWN_B = bytes(32)
#: How long a node keeps its share once its own count for the entry reached L with no
#: owner reset since, before it erases it and proposes the tombstone on its own
#: (`ShareKeeper.tick`; docs/threshold.md, "Counters and erasure"). The owner whose L-th
#: attempt was right sends its reset within seconds (the SDK tries it three times at
#: once); minutes leave room for a slow relay and a partition healing.
EXHAUSTED_GRACE_SECONDS = 300.0
#: Entries of one account whose row on this node keeps staged shares and no share
#: (`NodeShare.staged_only`: staged, never committed here) past which the node stages no
#: new one for that account: it answers `too_many_pending` (review r1, finding 1; before,
#: one account could add a row to every node per request, 60 a minute, for good). A user
#: registers one entry at a time, and a registration's commit makes its staged share the
#: node's share within seconds; one cut off before its commit stays staged until that
#: entry is registered again, which stages on the same row. Reaching 32 takes 32 distinct
#: entry names cut off between stage and commit and never registered again, or 32
#: registrations committed while this node was cut off and not yet caught up (its
#: catch-up or the next manifest read promotes them). Every node's store then holds at
#: most 32 such rows per account, some 2.6 KB each at most (STAGED_KEPT shares and M).
#:
#: Refused rather than making room by dropping the account's oldest staged share: that
#: share's STAGED acknowledgement may already be in a client's hands, and a commit that
#: counts it would then land with fewer than t nodes keeping their share (the key loss
#: of review finding 6, docs/threshold.md "Why stage first"). A refusal changes nothing
#: already promised, and the client says why (docs/threshold.md, "Registration").
STAGED_ENTRIES_PER_ACCOUNT = 32
#: How many of an account's entries the shell's rows keep staged-only (`count_staged`,
#: node/store.py `NodeStore.count_staged`): (account, overlay: entry key -> whether the
#: row handed out and not yet durable is staged-only, standing in for the stored row,
#: the cap) -> count (the stored rows are checked one by one only once the cap is met).
StagedCount = Callable[[str, Mapping[bytes, bool], int], int]
#: Entries of one account this node counts past which it stages no share of an entry it
#: does not count: it answers `too_many_entries` (review r1, finding 4; before, one
#: account could commit a new entry name per request, 60 a minute through its relay
#: bucket, some 1.3 KB on every node each, for good). Counted, for good: each entry the
#: node has held a live value of (every node holds the value of every entry the fleet
#: committed, so staging each entry on other nodes does not escape the count) or a share
#: row of. A delete frees no name (deleting and registering fresh names does not escape
#: it either). Not counted: a promise or a tombstone alone, which one hostile node can
#: make any honest node keep for a made-up name (review s46), so it cannot fill an
#: honest account's count; a live value needs t nodes' acknowledgements. A name counted here
#: (a password change, a staging again, a deleted name registered again) is never
#: refused. An account holds one entry per way into its key (the password, each passkey)
#: and one per other small secret (docs/threshold.md): 256 is far above that. What it
#: bounds, and what a hostile node with the network can still do: docs/threshold.md,
#: "Registration" step 3.
ENTRIES_PER_ACCOUNT = 256
#: For an entry's key: how many entries of its account the shell counts, and whether
#: this one is among them (`count_entries`, node/store.py `NodeStore.count_entries`).
EntryCount = Callable[[bytes], tuple[int, bool]]
#: How often a node runs a no-op round for an entry it holds live with no guess left when
#: it is asked for its manifest (`ShareKeeper.tick`, `_look_again`): at most once per
#: entry in this many seconds of the shell's clock, however often it is asked.
LOOK_AGAIN_SECONDS = 5.0


@dataclass(frozen=True)
class FleetShape:
    """What a node knows of its fleet from its deployment record: the node-set epoch, N,
    t, and L, the per-node limit of evaluations between two owner resets."""

    epoch: int
    nodes: int
    threshold: int
    guess_limit: int = DEFAULT_GUESS_LIMIT

    def __post_init__(self) -> None:
        threshold.check_threshold(self.threshold, self.nodes)
        if not 1 <= self.guess_limit <= MAX_GUESS_LIMIT:
            raise InvalidInput(f"per-node guess limit: 1..{MAX_GUESS_LIMIT}")


@dataclass(frozen=True)
class ShareWrite:
    """Persist this node's own row for `key` (never replicated)."""

    key: bytes
    row: NodeShare


@dataclass(frozen=True)
class Answer:
    """A reply and the rows the shell must persist before the reply leaves the node.

    `repair` (only from a `ThresholdRead`): the read found this node's value of the entry
    too old to answer from; the shell commits `repair` (a round that leaves the value as
    it is, so this node takes the entry's newest value) and answers with that round's
    outcome instead, or `fleet_unavailable` if it does not commit. `response` is then what
    a shell that cannot run the round answers: a transient refusal, asked again later."""

    response: Message
    writes: tuple[ShareWrite, ...] = ()
    repair: ThresholdUpdate | None = None


@dataclass(frozen=True)
class ThresholdUpdate:
    """Commit `apply(current)`'s new value by majority, then build the answer.

    `unheld`, if set: the answer, with no round, when this node holds nothing of the entry
    (`without_round`); it returns None when the node does hold a row of its own for it."""

    key: bytes
    apply: Callable[[ThresholdState], tuple[ThresholdState, Callable[[], Answer]]]
    unheld: Callable[[], Answer | None] | None = None

    def without_round(self, held_payload: bytes) -> Answer | None:
        """The answer at once, with no consensus round and nothing written, when this node
        holds no value of the entry but the empty one (`held_payload`, the value it holds)
        and no row of its own for it; None: propose the change (docs/threshold.md,
        "Entries this node holds nothing of"). Before, every evaluate, reset or delete of a
        made-up entry name ran a round on every node and left a record row on each, for
        good (review r1, finding 2)."""
        if self.unheld is None or not holds_nothing(held_payload):
            return None
        return self.unheld()

    def change(self, payload: bytes) -> tuple[bytes, Callable[[], Answer]]:
        """The replica's change function on a record's payload. A single-seed value (see
        `decode_threshold`) is left as it is and answered so.

        It runs inside the replica, in the middle of a round (`propose`, or a peer's
        Promise): an exception there left the proposal at the head of the entry's queue
        for good, or dropped the rest of a peer's frame. So bad input found only against
        the value (`InvalidInput`, `AuthenticationFailed`) leaves the value as it is and
        is answered `bad_request`, and so is bad input met while building the answer
        after the commit; a broken invariant still stops the node."""
        state = decode_threshold(payload)
        if state is None:
            return payload, lambda: Answer(error(ErrorCode.BAD_REQUEST, SINGLE_SEED_DETAIL))
        try:
            new, build = self.apply(state)
        except (InvalidInput, AuthenticationFailed) as err:
            refused = error(ErrorCode.BAD_REQUEST, err.message)
            return payload, lambda: Answer(refused)
        return new.to_bytes(), partial(_refusing_bad_input, build)


@dataclass(frozen=True)
class ThresholdRead:
    """Answer from the value this node holds for `key` (its latest accepted or caught-up
    copy), without a consensus round: `answer(payload)` on that record's payload. For
    answers the client trusts when t nodes agree byte for byte (docs/threshold.md,
    "Reading the manifest without a round"), and for staging a share, which changes only
    this node's own row (its writes are persisted before the answer leaves)."""

    key: bytes
    read: Callable[[ThresholdState], Answer]

    def answer(self, payload: bytes) -> Answer:
        """`read` on the payload; bad input it meets is answered `bad_request`, as in
        `ThresholdUpdate.change`, rather than raised into the shell (a 500)."""
        state = decode_threshold(payload)
        if state is None:
            return Answer(error(ErrorCode.BAD_REQUEST, SINGLE_SEED_DETAIL))
        return _refusing_bad_input(partial(self.read, state))


def _refusing_bad_input(build: Callable[[], Answer]) -> Answer:
    """`build()`, or a `bad_request` answer carrying no writes if it meets bad input (so
    no row is persisted for it, and no partial leaves)."""
    try:
        return build()
    except (InvalidInput, AuthenticationFailed) as err:
        return Answer(error(ErrorCode.BAD_REQUEST, err.message))


def decode_threshold(payload: bytes) -> ThresholdState | None:
    """A record's payload as an entry (an empty payload is an empty entry). A value of the
    removed single-seed flow that holds no key reads as an empty entry; None for one that
    does, which no node of this version keeps (it refuses to start on a store holding
    one, and its acceptor refuses one) but a catch-up copy from an older node could carry."""
    if not payload:
        return ThresholdState()
    single_seed = single_seed_status(payload)
    if single_seed is not None:
        return None if single_seed == EntryStatus.LIVE else ThresholdState()
    return ThresholdState.from_bytes(payload)


def holds_nothing(payload: bytes) -> bool:
    """Whether a held value says nothing of its entry: none at all, or the empty value of
    version 0 that no attempt, registration or delete ever touched (a round on a made-up
    name, before review r1, wrote that one)."""
    if not payload:
        return True
    try:
        return decode_threshold(payload) == ThresholdState()
    except InvalidInput:
        return False


SINGLE_SEED_DETAIL = (
    "this entry is on the removed single-seed flow; re-register it (recover it with the"
    " previous version, then register again)"
)


def error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(str(code), detail[:MAX_ERROR_DETAIL], remaining)


def _blinded_hash(blinded: bytes) -> bytes:
    return hashlib.sha256(blinded).digest()


class ShareKeeper:
    """One node's threshold logic. `load_row(key)` reads this node's persisted row (or
    None); rows it hands out in `ShareWrite`s are also kept here at once, so the next
    request sees them, and the shell persists them before the answer leaves."""

    def __init__(
        self,
        fleet_id: bytes,
        slot: int,
        shape: FleetShape,
        signing_key: Ed25519PrivateKey,
        load_row: Callable[[bytes], NodeShare | None],
        *,
        peer_signing_keys: Mapping[int, Ed25519PublicKey] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        exhausted_grace: float = EXHAUSTED_GRACE_SECONDS,
        accepted_keys: int = ACCEPTED_KEYS,
        staged_entries_per_account: int = STAGED_ENTRIES_PER_ACCOUNT,
        entries_per_account: int = ENTRIES_PER_ACCOUNT,
    ) -> None:
        """`peer_signing_keys`: every node's signing key by share index, from the
        deployment record, to check their count reports (none: no report is taken).
        `exhausted_grace`: seconds of the shell's clock (`tick`) a share at this node's
        own count of L is kept waiting for the owner's reset. `accepted_keys`: entries
        whose accepted attempts are remembered (`ACCEPTED_KEYS`);
        `staged_entries_per_account`: the cap on an account's staged-only entries
        (`STAGED_ENTRIES_PER_ACCOUNT`), counted by `count_staged` once the shell sets it
        (the node's store; none set, nothing is counted: tools and tests);
        `entries_per_account`: the cap on the entries of an account this node counts
        (`ENTRIES_PER_ACCOUNT`), counted by `count_entries` once the shell sets it."""
        if not 0 <= slot < shape.nodes:
            raise InvalidInput(f"slot {slot} is not in a fleet of {shape.nodes}")
        self.fleet_id = fleet_id
        self.index = slot + 1  # the share index x_i = slot + 1 (docs/threshold.md)
        self.shape = shape
        self._signing_key = signing_key
        self._load_row = load_row
        # Rows handed out in ShareWrites and not yet reported durable (`durable`): never
        # dropped, so no request reads an older count from the store meanwhile. Then a
        # bounded cache of rows read or made durable.
        self._pending: dict[bytes, NodeShare] = {}
        self._cache: OrderedDict[bytes, NodeShare | None] = OrderedDict()
        #: Requests refused because this node answered their attempt for another B: the
        #: fleet numbered one attempt apart, a likely sign of hostile nodes (review s55b;
        #: the node's metric `attempts_answered_for_another_b`).
        self.answered_for_another_b = 0
        # After a detected rollback of this node's store, rows read from it are not
        # trusted to hold the latest count: keys in `_trusted` were written since.
        self._distrusted = False
        self._suspect: Callable[[bytes], bool] = _every_row
        self._trusted: set[bytes] = set()
        # Per distrusted key: the highest attempt number seen since the rollback was
        # detected (`_seen`); a verified reset at or above it makes the row whole again.
        # Not the first one seen: that is the value the node holds, which after a
        # catch-up can be a hostile peer's copy of an old value (the owner's last success
        # and nothing after it), and the same old reset, replayed from it, then made a
        # rolled-back count whole in the window it had spent.
        self._floors: dict[bytes, int] = {}
        # key -> attempt -> (version, H(B)) of the value this node durably accepted, for
        # the ACCEPTED_KEYS entries most recently attempted (least recent first).
        self._accepted: OrderedDict[bytes, OrderedDict[int, tuple[int, bytes]]] = OrderedDict()
        self._accepted_keys = accepted_keys
        self._staged_cap = staged_entries_per_account
        #: Set by the shell: how many of an account's entries its rows keep staged-only.
        self.count_staged: StagedCount | None = None
        self._entries_cap = entries_per_account
        #: Set by the shell: how many entries of an account it counts (`EntryCount`).
        self.count_entries: EntryCount | None = None
        # Erasures made while accepting a value, not yet handed to the shell (`take_writes`).
        self._unsaved: list[ShareWrite] = []
        self._peer_keys = dict(peer_signing_keys or {})
        #: Every node's signing key by share index, this node's own included: the keys a
        #: commit's acknowledgements are checked against.
        self.node_keys = {**self._peer_keys, self.index: signing_key.public_key()}
        self._rng = rng
        # Per distrusted key: the count reports asked for (one nonce per key and
        # version) and those taken so far; `_asking`: requests for the shell to send.
        self._wanted: dict[bytes, _WantedReports] = {}
        self._asking: dict[bytes, CountReportRequest] = {}
        # Per distrusted key: (version, the highest attempt, the lowest window start) that
        # t peers reported, for a share this node takes after the rollback (`_take_share`).
        self._reported: dict[bytes, tuple[int, int, int]] = {}
        # Keys whose row keeps its share at this node's own count of L: when a tick first
        # saw it there (None: no tick yet). `tick` erases it one grace later.
        self._exhausted_grace = exhausted_grace
        self._at_limit: dict[bytes, float | None] = {}
        # Keys of values held live with no guess left that a manifest read asked about
        # (`_look_again`), and when each last had its round (at most one per
        # LOOK_AGAIN_SECONDS).
        self._asked_again: set[bytes] = set()
        self._looked_at: dict[bytes, float] = {}

    # ---- this node's own state --------------------------------------------------------

    def row(self, key: bytes) -> NodeShare | None:
        if key in self._pending:
            return self._pending[key]
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        row = self._load_row(key)
        self._remember(key, row)
        self._watch_limit(key, row)
        return row

    def _watch_limit(self, key: bytes, row: NodeShare | None) -> None:
        """Keep `key` in `_at_limit` while its row keeps a share at this node's own count
        of L (not one assumed on peers' reports, which never erases)."""
        if row is not None and self._erasable_on_count(row):
            self._at_limit.setdefault(key, None)
        else:
            self._at_limit.pop(key, None)

    def _erasable_on_count(self, row: NodeShare) -> bool:
        return kept_at_limit(row, self.shape.guess_limit)

    def at_limit(self, row: NodeShare) -> bool:
        """Whether `row` keeps a share at this node's own count of L (a pure check, for
        the shell's scan of its store after a restart: `watch`)."""
        return self._erasable_on_count(row)

    def watch(self, key: bytes) -> None:
        """The shell found `key`'s stored row at L after a restart: `tick` ends it one grace
        on, as for a row read or written here (the row is read again through this keeper,
        so a copy newer than the scan's wins)."""
        self._watch_limit(key, self.row(key))

    def _remember(self, key: bytes, row: NodeShare | None) -> None:
        self._cache[key] = row
        self._cache.move_to_end(key)
        while len(self._cache) > ROWS_CACHED:
            self._cache.popitem(last=False)

    def durable(self, writes: tuple[ShareWrite, ...]) -> None:
        """The shell made these writes durable: the store answers for them from now on."""
        for write in writes:
            if self._pending.get(write.key) is write.row:
                del self._pending[write.key]
            self._remember(write.key, write.row)

    def held_until_durable(self, key: bytes, answer: Answer) -> Answer:
        """`answer`, carrying this node's row for `key` among its writes while that row is
        handed out but not durable yet, so that the shell holds the answer until the row
        is on disk. An answer built on such a row wrote nothing of its own: a resend of an
        attempt finding the count an earlier copy is still writing, a share held by a
        delivery still being written. It left at once, and a crash before that write
        landed let out a partial whose count the store never held (review s48)."""
        row = self._pending.get(key)
        if row is None or any(write.key == key for write in answer.writes):
            return answer
        return dataclasses.replace(answer, writes=(*answer.writes, ShareWrite(key, row)))

    def distrust_stored_counts(self, suspect: Callable[[bytes], bool] | None = None) -> None:
        """The store may have been rolled back (it did not match the token's counter): a
        row read from it may hold an old, lower count. Such a row is not evaluated until
        t peers' count reports or the owner's next verified reset (or a new registration)
        rewrites it; it is never erased on its count either. `suspect(key)`: whether the
        row may be that old (default: every row)."""
        self._suspect = suspect or _every_row
        self._distrusted = True
        self._trusted = set()
        self._floors = {}
        self._wanted = {}
        self._asking = {}
        self._reported = {}

    def _count_trusted(self, key: bytes, version: int, latest_attempt: int) -> bool:
        if not self._distrusted or key in self._trusted:
            return True
        if not self._suspect(key):
            self._trusted.add(key)  # written since the rollback, on an earlier run
            return True
        self._seen(key, latest_attempt)
        self._want_reports(key, version)
        return False

    def _row_distrusted(self, key: bytes) -> bool:
        """Whether `key`'s row may hold a rolled-back count (`_count_trusted`, without
        asking for reports). Such a row is not rewritten while it keeps its share and stays
        distrusted: the store trusts every row written since the rollback at its next
        clean start (node/store.py `share_suspect`)."""
        if not self._distrusted or key in self._trusted:
            return False
        if not self._suspect(key):
            self._trusted.add(key)
            return False
        return True

    def _seen(self, key: bytes, attempt: int) -> int:
        """Raise the distrusted `key`'s floor to `attempt`, a number seen in a value now;
        the floor."""
        floor = max(self._floors.get(key, attempt), attempt)
        self._floors[key] = floor
        return floor

    # ---- count reports after a rollback (docs/threshold.md, "Counters and erasure") ----

    def _want_reports(self, key: bytes, version: int) -> None:
        """Ask every peer (again) for its count report on `key`: the request is queued
        for `take_report_requests`. One nonce per key and version until the reports are
        taken, so reports to an earlier ask still count and a peer that was down is asked
        again at the next request for the entry."""
        if not self._peer_keys:
            return
        wanted = self._wanted.get(key)
        if wanted is None or wanted.version != version:
            wanted = _WantedReports(version, self._rng(COUNT_NONCE_LEN), {}, set(), {})
            self._wanted[key] = wanted
        entry_id = EntryId.from_bytes(key)
        self._asking[key] = CountReportRequest(
            entry_id.account, entry_id.entry, version, wanted.nonce
        )

    def take_report_requests(self) -> list[CountReportRequest]:
        """The count report requests for the shell to send to every peer (each once)."""
        asking = list(self._asking.values())
        self._asking = {}
        return asking

    def count_report(
        self, requester: int, request: CountReportRequest, held_payload: bytes
    ) -> CountReport | None:
        """This node's signed report for a peer (share index `requester`, as the peer
        channel authenticated it): the highest attempt it holds accepted for the entry's
        version, and the latest owner-signed reset it holds. None when it holds nothing
        for that version (the asker then counts no report from it)."""
        if not 1 <= requester <= self.shape.nodes or requester == self.index:
            raise InvalidInput(f"a count report request from share index {requester}")
        key = EntryId.of(request.account, request.entry).to_bytes()
        state = decode_threshold(held_payload)
        if state is None or state.version != request.version:
            return None
        attempt = state.attempt
        row = self.row(key)
        if row is not None and row.version == state.version:
            attempt = max([attempt, *(e.attempt for e in row.evaluated)])
        unsigned = CountReport(
            request.account,
            request.entry,
            request.version,
            self.index,
            requester,
            attempt,
            state.reset_attempt,
            request.nonce,
            bytes(64),
        )
        signature = self._signing_key.sign(count_report_message(self.fleet_id, unsigned))
        return dataclasses.replace(unsigned, signature=signature)

    def wants_report(self, reporter: int, report: CountReport) -> bool:
        """Whether `report` (from share index `reporter`, as the peer channel authenticated
        it) answers a request of this node's that is still open and this reporter has not
        answered yet: checked before anything costly (a store read, a signature check),
        so a peer's flood of reports to nothing, or again to the same request, costs a
        dictionary look-up each."""
        key = EntryId.of(report.account, report.entry).to_bytes()
        wanted = self._wanted.get(key)
        return (
            wanted is not None
            and reporter not in wanted.heard
            and wanted.version == report.version
            and hmac.compare_digest(wanted.nonce, report.nonce)
        )

    def take_count_report(
        self, reporter: int, report: CountReport, held_payload: bytes
    ) -> tuple[ShareWrite, ...] | None:
        """A peer's report (share index `reporter`, as the peer channel authenticated it).
        A misdirected report (reporter or requester index) raises AuthenticationFailed. A
        report to no open request of this node's (an old nonce, another entry or version,
        one already settled) or from a peer already heard on it is not taken: None,
        without checking its signature. A forged one raises AuthenticationFailed, and that
        peer is not heard again on this request: one signature check per peer and request.
        Otherwise the rows to persist once t distinct peers have reported (usually none
        before)."""
        public = self._peer_keys.get(reporter)
        if public is None or report.reporter != reporter or reporter == self.index:
            raise AuthenticationFailed(f"a count report from share index {reporter}")
        if report.requester != self.index:
            raise AuthenticationFailed(f"a count report for share index {report.requester}")
        if not self.wants_report(reporter, report):
            return None
        key = EntryId.of(report.account, report.entry).to_bytes()
        wanted = self._wanted[key]
        wanted.heard.add(reporter)
        try:
            public.verify(report.signature, count_report_message(self.fleet_id, report))
        except InvalidSignature:
            raise AuthenticationFailed(
                f"a count report whose signature does not verify (share index {reporter})"
            ) from None
        # The first report per peer and request: any report made after the rollback was
        # found covers every attempt this node can have evaluated before it.
        wanted.reports[reporter] = report.attempt
        wanted.resets[reporter] = report.reset_at
        if len(wanted.reports) < self.shape.threshold:
            return ()
        del self._wanted[key]
        self._asking.pop(key, None)
        return self._settle_on_reports(key, wanted, held_payload)

    def _settle_on_reports(
        self, key: bytes, wanted: _WantedReports, held_payload: bytes
    ) -> tuple[ShareWrite, ...]:
        """t peers reported: assume this node evaluated every attempt of the window up to
        the highest one seen anywhere (the count is as high as it can have been), and
        trust the row again. Reports only ever add to the count: no share is erased on
        them, and a count above L leaves the row distrusted until the owner's reset."""
        # Kept for a share this node takes later (`_take_share`): the window it may have
        # answered in before the rollback, on t peers' word rather than the held value's.
        self._reported[key] = (
            wanted.version,
            max(wanted.reports.values()),
            min(wanted.resets.values()),
        )
        row = self.row(key)
        if row is None or row.version != wanted.version or not row.share:
            return ()
        state = decode_threshold(held_payload)
        if (
            state is not None
            and state.status == EntryStatus.LIVE
            and state.version == row.version
            and state.manifest != row.manifest
        ):
            # The row's share is of another M of this version (an orphan, which evaluates
            # nothing): the window is counted when the live M's share is taken instead.
            return ()
        entry_id = EntryId.from_bytes(key)
        same_version = state is not None and state.version == row.version
        if key in self._trusted:
            # The owner's reset already made the row whole (a reset request, `_reset`).
            if state is None or not same_version:
                return ()
            _, writes = self._apply_replicated_reset(
                key, entry_id.account, entry_id.entry, row, state
            )
            return writes
        own = self._floors.get(key, 0)
        if state is not None and same_version:
            # The owner's reset in the held value opens the window, and does no more: that
            # value may be a hostile copy of the owner's old success (nothing after it), so
            # the window still runs up to the highest attempt reported. (A reset request
            # still needs only this node's own sight, `_reset`: a hostile report of a huge
            # attempt must not keep the owner's next success from making the row whole.)
            row = self._replicated_reset(key, entry_id.account, entry_id.entry, row, state) or row
            own = max(own, state.attempt)
        highest = max(own, *wanted.reports.values())
        known = {e.attempt for e in row.evaluated}
        unknown = [Evaluation(a, UNKNOWN_B) for a in _window(row.reset_at, highest, known)]
        if row.count + len(unknown) > self.shape.guess_limit:
            log.warning(
                "count reports put an entry's attempts %d above its last reset at %d: more"
                " than L; the node keeps refusing it until the owner's next reset",
                highest,
                row.reset_at,
            )
            return ()
        evaluated = sorted([*row.evaluated, *unknown], key=lambda e: e.attempt)
        return (self._write(key, row.with_(evaluated=evaluated)),)

    def _reset_restores_trust(self, key: bytes, attempt: int, latest_attempt: int) -> bool:
        return attempt >= self._seen(key, latest_attempt)

    def _write(self, key: bytes, row: NodeShare, *, trusted: bool = True) -> ShareWrite:
        # Checked on every write, also under `python -O`: a row breaking one of these never
        # reaches the disk (at most L + 1 evaluations to look at: cheap).
        require(row.count <= self.shape.guess_limit, "count above L")
        attempts = [e.attempt for e in row.evaluated]
        require(len(set(attempts)) == len(attempts), "two B for one attempt")
        require(all(a > row.reset_at for a in attempts), "an evaluation from before the reset")
        require(not row.share or bool(row.manifest), "a share without its manifest")
        self._pending[key] = row
        self._cache.pop(key, None)
        if trusted:
            self._trusted.add(key)
        self._watch_limit(key, row)
        return ShareWrite(key, row)

    def on_accept(self, key: bytes, payload: bytes) -> None:
        """The replica's hook: this node is durably accepting `payload` for `key` (called
        as the acceptor's record is written, before its Accepted leaves)."""
        try:
            state = decode_threshold(payload)
        except InvalidInput:
            return
        if state is None:
            return
        promoted = self._promotion(key, state)
        if isinstance(promoted, ShareWrite):
            self._unsaved.append(promoted)
        else:
            erased = self._retired_share(key, state) or self._exhausted_share(key, state)
            if erased is not None:
                self._unsaved.append(erased)
        # Not forgotten when the value stops being live: a node that took the next
        # attempt's tombstone before it built its answer to the L-th attempt still answers
        # it (test_a_node_that_took_the_tombstone_before_its_lth_answer_erases_on_the_next_
        # request). Only the bound below forgets (review r1, finding 3).
        if state.status != EntryStatus.LIVE or not state.attempt_hash:
            return
        accepted = self._accepted.setdefault(key, OrderedDict())
        self._accepted.move_to_end(key)
        accepted[state.attempt] = (state.version, state.attempt_hash)
        accepted.move_to_end(state.attempt)
        while len(accepted) > ACCEPTED_KEPT:
            accepted.popitem(last=False)
        while len(self._accepted) > self._accepted_keys:
            self._accepted.popitem(last=False)  # as after a restart: "resend" (docstring)

    def _retired_share(self, key: bytes, state: ThresholdState) -> ShareWrite | None:
        """This node's share, erased, if `state` carries the owner's statement retiring
        its version (the delete of it; a password change from it; or its delete kept by the
        registration after it) and the statement verifies against the manifest this node
        checked its own share against. A node that missed the client's change or delete
        request erases here, on the owner's word, never on the value's alone."""
        row = self.row(key)
        if row is None or not row.share or not row.manifest:
            return None
        held = ThresholdState(status=EntryStatus.LIVE, version=row.version, manifest=row.manifest)
        entry_id = EntryId.from_bytes(key)
        kind: owner.StatementKind | None = None
        if state.version == row.version and state.status == EntryStatus.EMPTY:
            delete = owner.StatementKind.DELETE
            kind = (
                delete
                if _signed(self.fleet_id, entry_id, held, delete, state, row.manifest)
                else None
            )
        elif state.version == row.version + 1:
            kind = _retiring_statement(self.fleet_id, entry_id, held, state)
        if kind is None:
            return None
        if kind is owner.StatementKind.DELETE:
            erased = row.with_(share=b"", delete_counter=state.change_counter)
        else:
            erased = row.with_(share=b"", change_counter=state.change_counter)
        return self._write(key, erased, trusted=False)

    def _exhausted_share(self, key: bytes, state: ThresholdState) -> ShareWrite | None:
        """This node's share, erased, when it takes a tombstone of its share's version and
        its own count is already at L (docs/threshold.md, "Counters and erasure"): the
        request that would have erased it (`_destroyed`) may never come, since a client
        that finds t tombstones sends nothing. The tombstone alone erases nothing, nor a
        count at L on its peers' reports. If the L-th attempt was the owner's success, its
        reset can no longer reach this share: the node holds the tombstone, and no value
        of that version is live again here."""
        row = self.row(key)
        if (
            state.status != EntryStatus.DESTROYED
            or row is None
            or not row.share
            or row.version != state.version
            or row.count < self.shape.guess_limit
            or _assumed(row)
        ):
            return None
        return self._write(key, row.with_(share=b""), trusted=False)

    def take_writes(self) -> tuple[ShareWrite, ...]:
        """Rows this node changed on its own while accepting a value (an erasure on a
        verified owner statement, `on_accept`), for the shell to persist as soon as it can;
        it reports them `durable` like an answer's. They are in effect here at once."""
        writes, self._unsaved = tuple(self._unsaved), []
        return writes

    # ---- a share left at L (docs/threshold.md, "Counters and erasure") -----------------

    def tick(self, now: float) -> list[ThresholdUpdate]:
        """The rounds to propose now (`now`: the shell's monotonic clock, seconds): one per
        entry whose row has kept its share at this node's own count of L for
        `exhausted_grace` since a tick first saw it there, with no owner reset since. Each
        does what the entry's next request would (`_expire`), so the key is erased even
        if nobody asks again. A round that does not commit is proposed again one grace
        later. And one no-op round per entry a manifest read found live here with no guess
        left, at most one per LOOK_AGAIN_SECONDS (`_look_again`)."""
        due: list[ThresholdUpdate] = []
        for key, since in list(self._at_limit.items()):
            if since is None:
                self._at_limit[key] = now
                continue
            if now - since < self._exhausted_grace:
                continue
            row = self.row(key)
            if row is None or not self._erasable_on_count(row) or self._row_distrusted(key):
                # A rolled-back count is the floor of the truth, not this node's own word:
                # such a row waits for reports or the owner, as a request would.
                self._at_limit.pop(key, None)
                continue
            self._at_limit[key] = now
            due.append(self._expire(key))
        self._looked_at = {k: t for k, t in self._looked_at.items() if now - t < LOOK_AGAIN_SECONDS}
        for key in list(self._asked_again):
            if key in self._looked_at:
                continue
            self._asked_again.discard(key)
            self._looked_at[key] = now
            due.append(self._look_again(key))
        return due

    def _look_again(self, key: bytes) -> ThresholdUpdate:
        """A no-op round for an entry this node holds live with no guess left, proposed
        when it is asked for the manifest: the tombstone that ends such an entry may have
        been chosen without this node (an expiry, `_expire`, or the next request, while it
        was down), and the repair that brings it (`Replica._settle`) lives in the memory
        of nodes that may have restarted since. A manifest read answers from the held
        value without a round, and a client that finds t tombstones asks no further, so
        this node would keep the live value until the entry's next evaluation (soak run
        BG, docs/soak.md). The round commits the newest value a majority holds; over a
        tombstone of the version this node's row holds, the share is erased on this
        node's own count only (`_destroyed`), as the next request would; nothing else
        changes, and no attempt is counted or answered."""

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            row = self.row(key)
            if (
                state.status == EntryStatus.DESTROYED
                and row is not None
                and row.version == state.version
                and not self._row_distrusted(key)
            ):
                return state, lambda: self._destroyed(key)
            return state, lambda: Answer(error(ErrorCode.REFUSED, "looked again: no change"))

        return ThresholdUpdate(key, apply)

    def _expire(self, key: bytes) -> ThresholdUpdate:
        """The round `tick` proposes for a share left at L: what the next evaluate would
        do to it, with no B and no attempt counted. The owner's verified reset in the
        value is applied (the share stays); else, while the value of the row's version is
        live with its L attempts used, the tombstone, which acceptors check, and the share
        erased on this node's own count (`_destroyed`); over a tombstone of that version,
        the share erased; over a later version, erased (no reset of the old one can come,
        and it never evaluates again). Otherwise nothing, and the key is no longer
        watched: the next request decides, as before."""
        entry_id = EntryId.from_bytes(key)
        limit = self.shape.guess_limit

        def unwatched() -> Answer:
            self._at_limit.pop(key, None)
            return Answer(error(ErrorCode.REFUSED, "nothing to erase"))

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            row = self.row(key)
            if row is None or self._row_distrusted(key):
                return state, unwatched
            if not self._erasable_on_count(row):
                if (
                    _erased_on_count(row, limit)
                    and state.version == row.version
                    and state.status == EntryStatus.LIVE
                    and state.manifest == row.manifest
                    and state.attempts_used >= limit
                ):
                    # This round's own tombstone, taken by this node's acceptor at an
                    # earlier try, erased the share (`_exhausted_share`); that try lost its
                    # round, and the live value it was built on was chosen again. Proposed
                    # as it is, this node refused it for good ("brought back to life")
                    # while the others took it (sim seed 10588257): the retry proposes the
                    # tombstone again, as the next request would over that value.
                    return _tombstone_of(state), lambda: self._destroyed(key)
                return state, unwatched
            # Never an evaluation: only ever this node's own count at L ends its share.
            require(row.count >= limit and not _assumed(row), "an expiry below L")
            if state.version > row.version:
                return state, lambda: Answer(
                    _destroyed_error(), (self._write(key, row.with_(share=b""), trusted=False),)
                )
            if state.version != row.version:
                return state, unwatched
            if state.status == EntryStatus.DESTROYED:
                return state, lambda: self._destroyed(key)
            if state.status != EntryStatus.LIVE or state.manifest != row.manifest:
                return state, unwatched
            if self._replicated_reset(key, entry_id.account, entry_id.entry, row, state):

                def reset() -> Answer:
                    _, writes = self._apply_replicated_reset(
                        key, entry_id.account, entry_id.entry, row, state
                    )
                    self._at_limit.pop(key, None)
                    return Answer(error(ErrorCode.REFUSED, "the owner reset it"), writes)

                return state, reset
            if state.attempts_used < limit:
                return state, unwatched
            return _tombstone_of(state), lambda: self._destroyed(key)

        return ThresholdUpdate(key, apply)

    def accepted_hash(self, key: bytes, version: int, attempt: int) -> bytes | None:
        accepted = self._accepted.get(key)
        found = accepted.get(attempt) if accepted is not None else None
        return found[1] if found is not None and found[0] == version else None

    def _sign_ack(
        self, kind: AckKind, account: str, entry: str, manifest: bytes, share_key: bytes
    ) -> ShareAck:
        version = Manifest.from_bytes(manifest).version
        signed = share_ack_message(
            kind, self.fleet_id, account, entry, version, share_key, manifest
        )
        return ShareAck(kind, version, self.index, self._signing_key.sign(signed))

    def _statement(
        self,
        kind: owner.StatementKind,
        account: str,
        entry: str,
        version: int,
        counter: int,
        payload_hash: bytes,
    ) -> owner.OwnerStatement:
        return owner.OwnerStatement(
            kind, self.fleet_id, account, entry, version, counter, payload_hash
        )

    # ---- operations -------------------------------------------------------------------

    def handle(self, op: Op, request: Message) -> ThresholdUpdate | ThresholdRead:
        match op, request:
            case ((Op.REGISTER_SHARE | Op.CHANGE_SHARE), RegisterShareRequest()):
                return self._stage(op, request)
            case Op.DELIVER_SHARE, RegisterShareRequest():
                # A late delivery, its seal opened by the firmware (`delivered_share`):
                # a register-share of the committed M that may find this node behind.
                return self._stage(Op.REGISTER_SHARE, request, late=True)
            case Op.COMMIT_SHARES, CommitSharesRequest():
                return self._commit(request)
            case Op.MANIFEST, ManifestRequest():
                return self._manifest(request)
            case Op.EVALUATE, EvaluateRequest():
                return self._evaluate(request)
            case Op.RESET, ResetRequest():
                return self._reset(request)
            case Op.DELETE_SHARE, DeleteShareRequest():
                return self._delete(request)
        raise InvalidInput("request does not match the operation")

    def _check_dealt(self, manifest: Manifest, account: str, entry: str) -> None:
        """The manifest was dealt for this fleet, entry, epoch and node set."""
        if manifest.fleet_id != self.fleet_id:
            raise InvalidInput("the manifest is for another fleet")
        if (manifest.account, manifest.entry) != (account, entry):
            raise InvalidInput("the manifest is for another entry")
        if manifest.epoch != self.shape.epoch:
            raise InvalidInput(
                f"the manifest was dealt for epoch {manifest.epoch}; this fleet is at"
                f" epoch {self.shape.epoch} (is the client's deployment record current?)"
            )
        if (manifest.nodes, manifest.threshold) != (self.shape.nodes, self.shape.threshold):
            raise InvalidInput(
                f"the manifest is for {manifest.threshold} of {manifest.nodes} nodes; this"
                f" fleet is {self.shape.threshold} of {self.shape.nodes}"
            )
        # Every node's K_i must be a key: a dealer whose polynomial is 0 at some index
        # (never `threshold.deal`) gives that node the identity, so it can hold no share,
        # and its ERASED acknowledgement of the entry's delete could not be signed (its
        # delete answer raised after the delete committed). Each K_i is remembered for the
        # commit's acknowledgements and the client's proof checks.
        index = _node_without_a_key(manifest)
        if index is not None:
            raise InvalidInput(
                f"the manifest's commitments give node {index} no key (K_{index} is the"
                " identity): not a dealing of this fleet's shape"
            )

    @staticmethod
    def _check_kind(changing: bool, manifest: Manifest, authorization: bytes, counter: int) -> None:
        if changing != bool(authorization):
            raise InvalidInput(
                "a password change needs the owner's signature; a registration takes none"
            )
        if not changing and (manifest.version == 0 or counter != 0):
            raise InvalidInput("a new entry's manifest has a version above 0 and counter 0")

    @staticmethod
    def _new_version_refused(
        changing: bool, state: ThresholdState, manifest: Manifest
    ) -> ErrorResponse | None:
        """Why M cannot be the next version over `state` (registration or change)."""
        if not changing:
            if state.status == EntryStatus.LIVE:
                return error(
                    ErrorCode.ALREADY_REGISTERED,
                    "this entry already holds a key; recover it to change the password",
                )
            if manifest.version != state.version + 1:
                return error(
                    ErrorCode.STALE_MANIFEST,
                    f"a new registration here takes version {state.version + 1}",
                )
        elif state.status != EntryStatus.LIVE or manifest.version != state.version + 1:
            return error(
                ErrorCode.STALE_MANIFEST,
                f"a password change here takes version {state.version + 1} of a live entry",
            )
        return None

    def _change_refused(
        self,
        changing: bool,
        key: bytes,
        request: RegisterShareRequest | CommitSharesRequest,
        replicated_old: bytes,
    ) -> ErrorResponse | None:
        """For a password change: the owner's CHANGE_PASSWORD statement about the previous
        version, rebuilt from this node's own state: pk_auth from the M it checked its old
        share against (the replicated one only if it holds none). A node that holds no
        share of the entry erases nothing, so it needs no statement to take one."""
        if not changing:
            return None
        manifest, counter, authorization = request.manifest, request.counter, request.authorization
        version = Manifest.from_bytes(manifest).version
        row = self.row(key)
        if row is not None and row.version >= version:
            return None  # already moved: the share is answered from the row
        mine = row if row is not None and row.version == version - 1 else None
        held = mine.manifest if mine is not None and mine.manifest else replicated_old
        if not held:
            if row is None or not row.share:
                return None
            return error(ErrorCode.REFUSED, "cannot check the change against this node's share")
        statement = self._statement(
            owner.StatementKind.CHANGE_PASSWORD,
            request.account,
            request.entry,
            version - 1,
            counter,
            owner.payload_hash(manifest),
        )
        try:
            owner.verify_statement(
                Manifest.from_bytes(held).pk_auth,
                statement,
                authorization,
                last_counter=None,  # acting on it moves the version: single use
            )
        except AuthenticationFailed as err:
            return error(ErrorCode.REFUSED, err.message)
        return None

    def _held_ack(self, account: str, entry: str, manifest: bytes) -> ShareAck:
        share_key = Manifest.from_bytes(manifest).commitments.node_public_key(self.index)
        return self._sign_ack(AckKind.HELD, account, entry, manifest, share_key)

    def _stage(self, op: Op, request: RegisterShareRequest, *, late: bool = False) -> ThresholdRead:
        """docs/threshold.md "Stage, then commit", step 1: every check on this node's own,
        then the share kept aside in this node's row and a signed STAGED acknowledgement.
        No round: nothing changes for the entry until a commit carries t such
        acknowledgements. A share of the entry's committed M (a late delivery) is taken as
        this node's share at once, and acknowledged as held.

        `late`: a device's delivery of a share it owes (`deliver-share`), sent only for
        the M that t nodes agree on. A node that holds an older value of the entry (it
        missed the commit, and the repair and settling that would have brought it M lived
        in the memory of nodes that restarted since, or gave up after two minutes; an
        intact restart asks nobody) first runs a round that leaves the value as it is,
        which makes it take the entry's newest value, and then answers from that value
        (docs/threshold.md, "Finishing later"): the share is still taken only for the
        committed M. Until review s40 it answered from its old value, `already_registered`,
        at every delivery until the entry's next recovery."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        manifest = Manifest.from_bytes(request.manifest)
        share = threshold.KeyShare.from_bytes(request.share)
        account, entry = request.account, request.entry
        self._check_dealt(manifest, account, entry)
        if share.index != self.index:
            raise InvalidInput(f"share {share.index} sent to the node of share {self.index}")
        threshold.verify_share(share, manifest.commitments)  # k_i·G = Σ_j C_j·i^j
        changing = op is Op.CHANGE_SHARE
        self._check_kind(changing, manifest, request.authorization, request.counter)

        def change_refused(replicated_old: bytes) -> ErrorResponse | None:
            return self._change_refused(changing, key, request, replicated_old)

        def repair(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            return state, partial(read, state, repaired=True)

        def read(state: ThresholdState, *, repaired: bool = False) -> Answer:
            if state.status == EntryStatus.LIVE and state.manifest == request.manifest:
                refused = change_refused(b"")
                if refused is not None:
                    return Answer(refused)
                taken = self._take_share(key, state, request.share, request.counter)
                if isinstance(taken, ErrorResponse):
                    return Answer(taken)
                ack = self._held_ack(account, entry, request.manifest)
                return Answer(ack, () if taken is None else (taken,))
            # Not for an entry this node holds nothing of (no value, no row): a made-up
            # name then left a record on every node per delivery (review s40-D); such a
            # node stages the share, and the entry's next round brings it M.
            holds_something = state != ThresholdState() or self.row(key) is not None
            if late and not repaired and holds_something and _may_be_behind(state, manifest):
                behind = error(
                    ErrorCode.FLEET_UNAVAILABLE,
                    f"this node holds version {state.version} of this entry, not the share's"
                    f" manifest (version {manifest.version}): it is bringing the entry up to"
                    " date from its peers; send the share again",
                )
                return Answer(behind, repair=ThresholdUpdate(key, repair))
            refused = self._new_version_refused(changing, state, manifest) or change_refused(
                state.manifest
            )
            if refused is not None:
                if late:
                    again = " (after a round with its peers)" if repaired else ""
                    return Answer(
                        error(
                            ErrorCode(refused.code),
                            f"this node holds version {state.version} of this entry{again},"
                            f" not the share's manifest (version {manifest.version}):"
                            f" {refused.detail}",
                        )
                    )
                return Answer(refused)
            row = self.row(key)
            if (
                row is not None
                and row.version >= manifest.version
                and not (row.version == manifest.version and _orphaned(row, state))
            ):
                return Answer(
                    error(ErrorCode.REFUSED, "this node already holds another share for it")
                )
            if (
                row is not None
                and row.share
                and (row.version, row.manifest) == (state.version, state.manifest)
                and not self._count_trusted(key, state.version, state.attempt)
            ):
                # The staged row keeps the live share and its count: written now, a clean
                # restart would trust that rolled-back count (node/store.py
                # `share_suspect`). Staged once t peers have reported.
                return Answer(
                    error(
                        ErrorCode.FLEET_UNAVAILABLE,
                        "this node's store was restored from an older copy; it keeps a new"
                        " share once its peers have reported the entry's count",
                    )
                )
            base = row if row is not None else NodeShare(0, b"", b"", [])
            kept = [s for s in base.staged if s.manifest != request.manifest]
            kept.append(StagedShare(request.share, request.manifest))
            staged = base.with_(staged=kept[-STAGED_KEPT:])
            if row is None:
                refused = self._new_entry_refused(key)  # no share row: maybe a new name
                if refused is not None:
                    return Answer(refused)
            if staged.staged_only and not (row is not None and row.staged_only):
                refused = self._staging_refused(account)  # one more staged-only entry
                if refused is not None:
                    return Answer(refused)
            ack = self._sign_ack(
                AckKind.STAGED, account, entry, request.manifest, share.public_key()
            )
            return Answer(ack, (self._write(key, staged, trusted=False),))

        return ThresholdRead(key, read)

    def _new_entry_refused(self, key: bytes) -> ErrorResponse | None:
        """`too_many_entries` if this node does not count the entry `key` and counts
        `ENTRIES_PER_ACCOUNT` entries of its account, rows handed out and not yet durable
        included (each is counted once stored: stagings of new names in one group commit
        would otherwise all pass)."""
        count = self.count_entries
        if count is None:
            return None
        counted, this_one = count(key)
        if this_one:
            return None
        account = EntryId.from_bytes(key).account
        pending = [
            k
            for k in self._pending
            if k != key and EntryId.from_bytes(k).account == account and not count(k)[1]
        ]
        cap = self._entries_cap
        if counted + len(pending) < cap:
            return None
        return error(
            ErrorCode.TOO_MANY_ENTRIES,
            f"this node counts {cap} entries of this account, the most it keeps for one"
            " account; use an entry name the account had before",
        )

    def _staging_refused(self, account: str) -> ErrorResponse | None:
        """`too_many_pending` if `account` has `STAGED_ENTRIES_PER_ACCOUNT` entries whose
        rows here keep staged shares and no share (rows not yet durable included)."""
        if self.count_staged is None:
            return None
        overlay = {
            key: row.staged_only
            for key, row in self._pending.items()
            if EntryId.from_bytes(key).account == account
        }
        cap = self._staged_cap
        if self.count_staged(account, overlay, cap) < cap:
            return None
        return error(
            ErrorCode.TOO_MANY_PENDING,
            f"this node keeps {cap} registrations of this account that were staged and never"
            " committed, the most it keeps; finish one (register that entry again) first",
        )

    def _commit(self, request: CommitSharesRequest) -> ThresholdUpdate:
        """docs/threshold.md "Stage, then commit", step 2: M becomes the entry's version by
        majority, carrying t nodes' acknowledgements that they keep their share of it, so
        every acceptor can check that t nodes will be able to evaluate it before it takes
        it. Each node promotes its staged share when it accepts M (`on_accept`)."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        manifest = Manifest.from_bytes(request.manifest)
        account, entry = request.account, request.entry
        self._check_dealt(manifest, account, entry)
        changing = bool(request.authorization)
        self._check_kind(changing, manifest, request.authorization, request.counter)
        acknowledged = count_commit_acks(
            self.fleet_id, key, request.manifest, request.acks, self.node_keys
        )
        if acknowledged < self.shape.threshold:
            raise InvalidInput(
                f"a commit needs {self.shape.threshold} nodes' acknowledgements that they"
                f" keep their share; {acknowledged} verify"
            )

        def change_refused(replicated_old: bytes) -> ErrorResponse | None:
            return self._change_refused(changing, key, request, replicated_old)

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            if state.status == EntryStatus.LIVE and state.manifest == request.manifest:
                # Another node's copy of the same commit got there first: one commit (a
                # change is still checked against this node's own old manifest).
                refused = change_refused(b"")
                if refused is not None:
                    return state, lambda: Answer(refused)
                return state, lambda: committed(state)
            refused = self._new_version_refused(changing, state, manifest) or change_refused(
                state.manifest
            )
            if refused is not None:
                return state, lambda: Answer(refused)
            fresh = dict(
                version=manifest.version,
                manifest=request.manifest,
                attempt_hash=b"",
                reset_attempt=state.attempt,  # a new window: the old attempts are void
                reset_hash=b"",
                reset_signature=b"",
                acks=request.acks,
            )
            if changing:
                new = state.with_(
                    **fresh, change_counter=request.counter, change_signature=request.authorization
                )
            else:
                # After a delete, the owner's signed DELETE of the previous version stays
                # in the value: a node that missed the delete and still holds that version
                # live checks it with its own pk_auth and catches up (docs/threshold.md,
                # "Catching up"). Over a tombstone there is no owner statement to keep.
                deleted = state.status == EntryStatus.EMPTY
                new = state.with_(
                    **fresh,
                    status=EntryStatus.LIVE,
                    change_counter=state.change_counter if deleted else 0,
                    change_signature=state.change_signature if deleted else b"",
                )
            return new, lambda: committed(new)

        def committed(state: ThresholdState) -> Answer:
            if state.manifest != request.manifest:
                return Answer(error(ErrorCode.STALE_MANIFEST, "another registration won"))
            row = self.row(key)
            if row is not None and row.manifest == request.manifest and row.share:
                return Answer(self._held_ack(account, entry, request.manifest))
            promoted = self._promotion(key, state)
            if promoted is None:
                return Answer(
                    error(
                        ErrorCode.NOT_REGISTERED,
                        "committed, but this node keeps no share of this version; send it"
                        " its share again",
                    )
                )
            if isinstance(promoted, ErrorResponse):
                return Answer(promoted)
            return Answer(self._held_ack(account, entry, request.manifest), (promoted,))

        return ThresholdUpdate(key, apply)

    def _promotion(self, key: bytes, state: ThresholdState) -> ShareWrite | ErrorResponse | None:
        """This node's staged share, made its share, when `state` is the live value of the
        M it staged it for and carries t nodes' acknowledgements of M that verify here
        (whichever way the value reached this node); None when it staged none for it."""
        row = self.row(key)
        if row is None or state.status != EntryStatus.LIVE:
            return None
        staged = next((s for s in row.staged if s.manifest == state.manifest), None)
        if (
            staged is None
            or count_commit_acks(self.fleet_id, key, state.manifest, state.acks, self.node_keys)
            < self.shape.threshold
        ):
            return None
        return self._take_share(key, state, staged.share, state.change_counter)

    def _take_share(
        self, key: bytes, state: ThresholdState, share: bytes, counter: int
    ) -> ShareWrite | ErrorResponse | None:
        """Keep `share` as this node's share of the live `state` (its M): the row to write,
        None when this node holds it already, or why it may not."""
        version = state.version
        row = self.row(key)
        if row is not None and row.version == version and row.manifest and not row.share:
            # Erased (on this node's own count at L, or by the owner's delete or change):
            # taking the same share back (a late delivery, held back by a relay) would
            # start a fresh count.
            return _destroyed_error()
        if row is not None and row.version == version and row.share:
            if row.share == share:
                return None
            if not _orphaned(row, state):
                return error(ErrorCode.REFUSED, "this node already holds another share for it")
        if row is not None and row.version > version:
            return error(ErrorCode.REFUSED, "this node already holds a later version of it")
        evaluated: list[Evaluation] = []
        reset_at = state.reset_attempt
        if self._distrusted and (row is None or row.manifest != state.manifest):
            # This node's store was rolled back: it may have held this share before and
            # evaluated attempts of this window (also when the row holds an orphan of the
            # same version). They count as evaluated, as t count reports make them. The
            # window is not taken from the held value alone: a wiped node holds whatever a
            # peer's copy passing the value's own checks says (a bare commit at the latest
            # attempt: an empty window). Its end is the highest attempt t peers report or
            # this node saw; its start the lowest they report, unless the owner's signed
            # reset in the value (verified here) is later.
            self._seen(key, state.attempt)
            reported = self._reported.get(key)
            if reported is None or reported[0] != version:
                self._want_reports(key, version)
                return error(
                    ErrorCode.FLEET_UNAVAILABLE,
                    "this node's store was restored from an older copy; it takes its share"
                    " once its peers have reported the entry's count",
                )
            _, highest, lowest = reported
            reset_at = min(state.reset_attempt, lowest)
            if state.reset_signature and self._reset_verifies(
                EntryId.from_bytes(key).account,
                EntryId.from_bytes(key).entry,
                NodeShare(version, b"", state.manifest, []),
                state.reset_attempt,
                state.reset_hash,
                state.reset_signature,
            ):
                reset_at = state.reset_attempt
            highest = max(highest, state.attempt, self._floors[key])
            window = _window(reset_at, highest, set())
            if len(window) > self.shape.guess_limit:
                return _exhausted_on_reports()
            evaluated = [Evaluation(a, UNKNOWN_B) for a in window]
        # The old version's share and anything staged, if any, are overwritten here: erased.
        new_row = NodeShare(
            version,
            share,
            state.manifest,
            evaluated,
            reset_at=reset_at,
            change_counter=counter,
        )
        return self._write(key, new_row)

    def _manifest(self, request: ManifestRequest) -> ThresholdRead:
        """A read: answered from the value this node holds, with no write round (the
        client uses a manifest only when t > N/2 nodes return it byte for byte). With
        `confirm`, asked when earlier answers did not agree, a node that holds something
        of the entry first runs a round that leaves the value as it is, and answers from
        the value that round commits: a node back from an intact restart answers from
        the values it holds, and one it missed while down (a delete, say) reaches it only
        when settling does, up to `Timing.settle_max` later or never if the nodes that
        would settle it restarted too; meanwhile, with another node down, its old answer
        kept t from agreeing (sim seed 7200073). A node that holds nothing of the entry
        answers at once, as for every request on a name it holds nothing of (review r1)."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        limit = self.shape.guess_limit

        def confirmed(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            return state, partial(read, state, after_round=True)

        def read(state: ThresholdState, *, after_round: bool = False) -> Answer:
            holds_something = state != ThresholdState() or self.row(key) is not None
            if request.confirm and not after_round and holds_something:
                asking = error(
                    ErrorCode.FLEET_UNAVAILABLE,
                    "this node is bringing the entry up to date from its peers; ask again",
                )
                return Answer(asking, repair=ThresholdUpdate(key, confirmed))
            if state.status == EntryStatus.LIVE and state.attempts_used >= limit:
                self._asked_again.add(key)  # its tombstone may be chosen elsewhere
            # A share staged for the M this node holds is its share now (a node that took
            # M as a catch-up copy, or joined the commit, has not accepted it itself).
            promoted = self._promotion(key, state)
            answer = answer_from(state)
            if isinstance(promoted, ShareWrite):
                return Answer(answer.response, (promoted, *answer.writes))
            return answer

        def answer_from(state: ThresholdState) -> Answer:
            row = self.row(key)
            if row is not None and row.share and row.version > state.version:
                # The value this node holds is older than the share it took (it has not
                # caught up since): answer the M it checked that share against.
                return Answer(
                    ManifestResponse(
                        EntryStatus.LIVE, row.version, row.manifest, limit, limit - row.count, True
                    )
                )
            mine = row if row is not None and row.version == state.version else None
            if state.status != EntryStatus.LIVE:
                used = limit if state.status == EntryStatus.DESTROYED else 0
                return Answer(
                    ManifestResponse(state.status, state.version, b"", limit, limit - used, False)
                )
            # This node's answer is the M it checked its share against.
            holds = mine is not None and bool(mine.share)
            manifest = mine.manifest if mine is not None and mine.share else state.manifest
            count = mine.count if mine is not None else 0
            if mine is not None and not self._count_trusted(key, state.version, state.attempt):
                # A rolled-back count may be too low: answer the most it can have been
                # (every attempt since the last reset this node verifies), never an old
                # figure.
                reset_at = self._verified_reset(key, request, mine, state)
                count = min(limit, max(count, state.attempt - reset_at))
            return Answer(
                ManifestResponse(state.status, state.version, manifest, limit, limit - count, holds)
            )

        return ThresholdRead(key, read)

    def _evaluate(self, request: EvaluateRequest) -> ThresholdUpdate:
        """docs/threshold.md "Recovery" steps 1 and 2."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        blinded_hash = _blinded_hash(request.blinded)
        limit = self.shape.guess_limit

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            behind = self._behind_own_share(key, state, request.version)
            if behind is not None:
                return state, behind
            if state.status == EntryStatus.EMPTY:
                if 0 < request.version <= state.version:
                    # Deleted (on another device) since the client read the version it
                    # names: as for a password change, its read is out of date, so the
                    # SDK says the key changed instead of "fleet unavailable".
                    return state, _answer(
                        ErrorCode.STALE_MANIFEST,
                        f"the key was deleted at version {state.version}; fetch its manifest again",
                    )
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            if state.status == EntryStatus.DESTROYED:
                return state, lambda: self._destroyed(key)
            if request.version != state.version:
                return state, _answer(
                    ErrorCode.STALE_MANIFEST,
                    f"the entry is at version {state.version}; fetch its manifest again",
                )
            if state.attempt > state.reset_attempt and hmac.compare_digest(
                state.attempt_hash, blinded_hash
            ):
                # This B is the latest attempt's: another node's copy of the same request,
                # or a resend. One attempt, not a new one.
                return state, lambda: self._evaluate_committed(key, request, state)
            if state.reset_signature and hmac.compare_digest(state.reset_hash, blinded_hash):
                # The B of the attempt the owner's last reset answered: a replay (a client
                # blinds afresh for every attempt), never a new attempt, so that a reset
                # signature kept by a hostile node can never match a later attempt's B.
                return state, _answer(
                    ErrorCode.STALE_ATTEMPT, "this attempt was already answered; start again"
                )
            if request.client_time_ms <= state.attempt_client_time_ms:
                return state, _answer(
                    ErrorCode.STALE_ATTEMPT,
                    "a later attempt was already made; check this device's clock, then retry",
                )
            if state.attempts_used >= limit:
                destroyed = state.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"")
                return destroyed, lambda: self._destroyed(key)
            counted = state.with_(
                attempt=state.attempt + 1,
                attempt_hash=blinded_hash,
                attempt_client_time_ms=request.client_time_ms,
            )
            return counted, lambda: self._evaluate_committed(key, request, counted)

        # With no row this node evaluates nothing, whatever a round would bring: the nodes
        # that hold the entry number the attempt with their own copies of the request.
        return ThresholdUpdate(key, apply, partial(self._unheld, key))

    def _evaluate_committed(
        self, key: bytes, request: EvaluateRequest, state: ThresholdState
    ) -> Answer:
        """After the commit (docs/threshold.md "Recovery" step 2): this node's own checks,
        then the count persisted (in the answer's writes), then the evaluation."""
        blinded_hash = _blinded_hash(request.blinded)
        limit = self.shape.guess_limit
        attempt = state.attempt
        if not hmac.compare_digest(state.attempt_hash, blinded_hash):
            return Answer(error(ErrorCode.STALE_ATTEMPT, "another attempt is under way"))
        accepted = self.accepted_hash(key, state.version, attempt)
        if accepted is None or not hmac.compare_digest(accepted, blinded_hash):
            # Committed, but not (yet) by this node's own acceptance: a resend makes it
            # accept the value (the attempt is the same, so nothing is charged again).
            return Answer(
                error(
                    ErrorCode.FLEET_UNAVAILABLE,
                    "this node has not accepted the attempt itself yet; resend",
                )
            )
        row = self.row(key)
        if row is None or row.version != state.version or not row.share:
            return Answer(error(ErrorCode.NOT_REGISTERED, "this node holds no share for it"))
        if row.manifest != state.manifest:
            # Its share is of another commit of this version, one that lost its round.
            return Answer(error(ErrorCode.NOT_REGISTERED, "this node holds no share of this M"))
        row, writes = self._apply_replicated_reset(key, request.account, request.entry, row, state)
        if attempt <= row.reset_at or (
            state.reset_signature and hmac.compare_digest(state.reset_hash, blinded_hash)
        ):
            # Also the B the owner's reset answered, under any number: its guess is over.
            return Answer(
                error(ErrorCode.STALE_ATTEMPT, "this attempt was already answered; start again")
            )
        # A B this node counted in this window is answered again under the number it was
        # counted as, never charged again (review s60: a hostile proposer renumbered the
        # latest attempt, same H(B), between the client's resends, and each resend cost
        # every honest node a guess: the owner's right password ended the entry).
        attempt = next(
            (e.attempt for e in row.evaluated if e.blinded_hash == blinded_hash), attempt
        )
        earlier = row.evaluated_hash(attempt)
        if earlier == UNKNOWN_B:
            return Answer(
                error(
                    ErrorCode.STALE_ATTEMPT,
                    "this node's store was restored from an older copy and may have answered"
                    " this attempt; start again",
                ),
                writes,
            )
        if earlier is not None and not hmac.compare_digest(earlier, blinded_hash):
            self.answered_for_another_b += 1
            # Another B took this number here first: another device's attempt, or one the
            # fleet numbered twice beside hostile nodes (each node counts its own). The
            # device's attempt is overtaken, as by a later one, and is made again under a
            # new number (sim seed 10821178: refused, two devices' recoveries with two
            # hostile nodes of five left the owner's with t - 1 partials after the faults).
            return Answer(
                error(
                    ErrorCode.STALE_ATTEMPT, "this attempt was answered for another B; start again"
                )
            )
        if earlier is None:
            if not self._count_trusted(key, state.version, state.attempt):
                return Answer(
                    error(
                        ErrorCode.FLEET_UNAVAILABLE,
                        "this node's store was restored from an older copy; it answers"
                        " again once t of its peers have reported the entry's count, or after"
                        " a successful recovery",
                    ),
                    writes,
                )
            if row.count >= limit and _assumed(row):
                # At L only on the count its peers reported: never erase on their word.
                return Answer(_exhausted_on_reports(), writes)
            if row.count >= limit:
                # The count is at L and another request came: erase the share.
                erased = row.with_(share=b"")
                return Answer(_destroyed_error(), (*writes, self._write(key, erased)))
            row = row.with_(evaluated=[*row.evaluated, Evaluation(attempt, blinded_hash)])
            writes = (*writes, self._write(key, row))
        # The partial is made only for the B this node counted (durably, in `writes`) for
        # this attempt, within L: checked always, since nothing after it can take it back.
        require(
            row.evaluated_hash(attempt) == blinded_hash and row.count <= limit,
            "an evaluation without its counted guess",
        )
        share = threshold.KeyShare.from_bytes(row.share)
        partial = threshold.evaluate_partial(share, request.blinded)
        response = EvaluateResponse(
            attempt, partial.index, partial.evaluated, partial.proof, limit - row.count
        )
        return Answer(response, writes)

    def _apply_replicated_reset(
        self, key: bytes, account: str, entry: str, row: NodeShare, state: ThresholdState
    ) -> tuple[NodeShare, tuple[ShareWrite, ...]]:
        """A reset that travels in the replicated value, applied only if the owner's
        signature verifies over fields this node rebuilds itself."""
        reset = self._replicated_reset(key, account, entry, row, state)
        if reset is None:
            return row, ()
        trusted = self._reset_restores_trust(key, state.reset_attempt, state.attempt)
        if not trusted and self._row_distrusted(key):
            return reset, ()  # for this request only: the value still carries it
        return reset, (self._write(key, reset, trusted=trusted),)

    def _replicated_reset(
        self, key: bytes, account: str, entry: str, row: NodeShare, state: ThresholdState
    ) -> NodeShare | None:
        """`row` after the reset the replicated value carries, if it is later than the
        row's and the owner's signature verifies over fields this node rebuilds itself."""
        if state.reset_attempt <= row.reset_at or not state.reset_signature:
            return None
        blinded_hash = self._own_hash(key, row, state.version, state.reset_attempt)
        if blinded_hash is None:
            blinded_hash = state.reset_hash  # this node took no part in that attempt
        if not self._reset_verifies(
            account, entry, row, state.reset_attempt, blinded_hash, state.reset_signature
        ):
            return None
        return _after_reset(row, state.reset_attempt, blinded_hash)

    def _verified_reset(
        self, key: bytes, request: ManifestRequest, row: NodeShare, state: ThresholdState
    ) -> int:
        """The latest reset this node verifies the owner's signature of: its row's, or
        the one the replicated value carries (checked, not applied: a read writes
        nothing)."""
        if state.reset_attempt <= row.reset_at or not state.reset_signature:
            return row.reset_at
        blinded_hash = self._own_hash(key, row, state.version, state.reset_attempt)
        verifies = self._reset_verifies(
            request.account,
            request.entry,
            row,
            state.reset_attempt,
            blinded_hash or state.reset_hash,
            state.reset_signature,
        )
        return state.reset_attempt if verifies else row.reset_at

    def _own_hash(self, key: bytes, row: NodeShare, version: int, attempt: int) -> bytes | None:
        own = row.evaluated_hash(attempt)
        if own is not None and own != UNKNOWN_B:
            return own
        return self.accepted_hash(key, version, attempt)

    def _reset_verifies(
        self,
        account: str,
        entry: str,
        row: NodeShare,
        attempt: int,
        blinded_hash: bytes,
        signature: bytes,
    ) -> bool:
        try:
            statement = self._statement(
                owner.StatementKind.RESET, account, entry, row.version, attempt, blinded_hash
            )
            owner.verify_statement(
                Manifest.from_bytes(row.manifest).pk_auth,
                statement,
                signature,
                last_counter=row.reset_at,
            )
        except (AuthenticationFailed, InvalidInput):
            return False
        return True

    def _reset(self, request: ResetRequest) -> ThresholdUpdate:
        """docs/threshold.md "Recovery" step 5: verified here, then carried in the value."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        limit = self.shape.guess_limit
        account, entry, attempt = request.account, request.entry, request.attempt

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            behind = self._behind_own_share(key, state, request.version)
            if behind is not None:
                return state, behind
            if state.status != EntryStatus.LIVE:
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            if request.version != state.version:
                return state, _answer(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
            row = self.row(key)
            if row is None or row.version != state.version or not row.manifest:
                return state, _answer(ErrorCode.NOT_REGISTERED, "this node holds no share for it")
            if attempt > state.attempt:
                return state, _answer(ErrorCode.REFUSED, "no such attempt")
            blinded_hash = self._own_hash(key, row, state.version, attempt)
            if blinded_hash is None and attempt == state.attempt:
                blinded_hash = state.attempt_hash
            if attempt <= row.reset_at:
                # Already reset here (a resend, or the replicated reset came first).
                return state, lambda: Answer(
                    ResetResponse(row.version, row.reset_at, limit - row.count)
                )
            if not blinded_hash:
                # No B of this version at that number: the latest attempt number can be
                # the one the version's commit landed on, which carries none (a commit
                # this node took over a sibling applied at a lower number, whose window
                # its row starts at). There is no attempt to reset.
                return state, _answer(
                    ErrorCode.REFUSED, "no attempt of this version has that number"
                )
            if not self._reset_verifies(
                account, entry, row, attempt, blinded_hash, request.signature
            ):
                return state, _answer(
                    ErrorCode.REFUSED, "the owner's reset does not verify for this attempt"
                )
            new = state
            if attempt > state.reset_attempt:
                new = state.with_(
                    reset_attempt=attempt,
                    reset_hash=blinded_hash,
                    reset_signature=request.signature,
                )

            def build() -> Answer:
                current = self.row(key)
                assert current is not None  # for mypy: rows are never removed, only rewritten
                if (current.version, current.manifest) != (row.version, row.manifest):
                    # The row moved on while the round ran (a change committed, its staged
                    # share promoted): the reset was verified for the old version only,
                    # and must not wipe the new version's count.
                    return Answer(
                        error(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
                    )
                if attempt <= current.reset_at:
                    return Answer(
                        ResetResponse(current.version, current.reset_at, limit - current.count)
                    )
                reset = _after_reset(current, attempt, blinded_hash)
                trusted = self._reset_restores_trust(key, attempt, new.attempt)
                response = ResetResponse(reset.version, reset.reset_at, limit - reset.count)
                if not trusted and self._row_distrusted(key):
                    # Committed in the value, which carries it to this row once the node
                    # trusts it again; not written over a row it does not trust.
                    return Answer(response)
                return Answer(response, (self._write(key, reset, trusted=trusted),))

            return new, build

        # With no row this node verifies no reset (no pk_auth): `apply` refuses it anyway.
        return ThresholdUpdate(key, apply, partial(self._unheld, key))

    def _delete(self, request: DeleteShareRequest) -> ThresholdUpdate:
        key = EntryId.of(request.account, request.entry).to_bytes()
        account, entry = request.account, request.entry

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            behind = self._behind_own_share(key, state, request.version)
            if behind is not None:
                return state, behind
            if request.version != state.version:
                return state, _answer(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
            # Another node's copy of this same delete committed first: one delete, and
            # this node still checks the owner's signature itself before it erases.
            already = (
                state.status == EntryStatus.EMPTY
                and state.change_counter == request.counter
                and hmac.compare_digest(state.change_signature, request.signature)
            )
            row = self.row(key)
            if row is not None and row.version > state.version:
                # This node holds a share of a later version than the round's value (the
                # value is behind, or a hostile peer's Promise made an old one the base):
                # a delete of the older version, replayed, erases nothing of it.
                return state, _answer(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
            mine = row if row is not None and row.version == state.version else None
            held = mine.manifest if mine is not None and mine.manifest else state.manifest
            if not held or (state.status != EntryStatus.LIVE and not already):
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            signed = ThresholdState(status=EntryStatus.LIVE, version=state.version, manifest=held)
            new = state.with_(
                status=EntryStatus.EMPTY,
                manifest=b"",
                acks=b"",
                attempt_hash=b"",
                reset_attempt=state.attempt,
                reset_hash=b"",
                reset_signature=b"",
                change_counter=request.counter,
                change_signature=request.signature,
            )
            # Verified here against the M this node checked its own share against, on
            # every path: the value may already be this tombstone (`already`), written by
            # acceptors a hostile minority chose, and the erasure is this node's own act.
            if not _signed(
                self.fleet_id,
                EntryId(account, entry),
                signed,
                owner.StatementKind.DELETE,
                new,
                held,
            ):
                return state, _answer(
                    ErrorCode.REFUSED, "the owner's delete does not verify for this key"
                )

            def build() -> Answer:
                current = self.row(key)
                if current is not None and current.version > state.version:
                    # The row moved on while the round ran (a later version's share was
                    # taken): the delete was verified for the older version only.
                    return Answer(
                        error(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
                    )
                share_key = Manifest.from_bytes(held).commitments.node_public_key(self.index)
                ack = self._sign_ack(AckKind.ERASED, account, entry, held, share_key)
                # A later version's staged share stays: another device may have staged
                # its registration here once this node held the delete (chosen through
                # another node's round), before this node's own copy of the delete came;
                # its commit then found no share on any such node (sim seed 10356181).
                later = [
                    s
                    for s in (current.staged if current is not None else [])
                    if Manifest.from_bytes(s.manifest).version > state.version
                ]
                erased = NodeShare(
                    state.version,
                    b"",
                    held,  # kept: a late delivery of this version's share is refused
                    [],
                    reset_at=new.reset_attempt,
                    delete_counter=request.counter,
                    staged=later,
                )
                return Answer(ack, (self._write(key, erased),))

            return new, build

        # With no row this node erases nothing: the nodes that hold the entry commit the
        # delete with their own copies of the request.
        return ThresholdUpdate(key, apply, partial(self._unheld, key))

    def _behind_own_share(
        self, key: bytes, state: ThresholdState, version: int
    ) -> Callable[[], Answer] | None:
        """A transient refusal if the value a change was applied to is older than the share
        this node holds for the version the client names: the node took that version's
        share (and answered its M to the client's read) but has not accepted its commit
        itself, and the answer joins an older chosen value (`Replica._joined`) or a round
        that has not yet brought the newest. "The entry changed" would send the client
        away though t nodes could serve it (sim seed 11610198); sent again, the request
        meets a round that brings this node the newest value. A tombstone too: a node
        whose value is an older version's tombstone and holds a share of a registration
        over it said "destroyed", as final (review s59)."""
        if version <= state.version:
            return None
        row = self.row(key)
        if row is None or not row.share or row.version != version:
            return None
        return _answer(
            ErrorCode.FLEET_UNAVAILABLE,
            f"this node holds a share of version {version} but has not caught up with its"
            f" commit (it holds version {state.version}); send again",
        )

    def _unheld(self, key: bytes) -> Answer | None:
        """`ThresholdUpdate.unheld`: not registered, if this node keeps no row of the entry
        (nor one not yet durable); None if it does."""
        if self.row(key) is not None:
            return None
        return Answer(error(ErrorCode.NOT_REGISTERED, "no key is stored here"))

    def _destroyed(self, key: bytes) -> Answer:
        """The entry is destroyed by consensus; this node erases its share only on its own
        count (never on a replicated tombstone alone)."""
        row = self.row(key)
        if row is not None and row.share and row.count >= self.shape.guess_limit:
            if _assumed(row):
                return Answer(_destroyed_error())  # kept: the count is its peers' word
            return Answer(_destroyed_error(), (self._write(key, row.with_(share=b"")),))
        return Answer(_destroyed_error())


@dataclass
class _WantedReports:
    """The count reports a rolled-back node asked for on one entry: by share index, the
    attempt each peer reported; `heard`: the peers whose report was checked (taken or
    forged), never checked again for this request."""

    version: int
    nonce: bytes
    reports: dict[int, int]
    heard: set[int]
    #: by share index, the window start (latest reset) each peer reported.
    resets: dict[int, int]


def _every_row(key: bytes) -> bool:
    return True


def _window(reset_at: int, highest: int, known: set[int]) -> list[int]:
    """The attempts after `reset_at` up to `highest` that are not in `known` (at most
    L + 1 of them are listed: more are refused anyway)."""
    listed: list[int] = []
    for attempt in range(reset_at + 1, highest + 1):
        if attempt not in known:
            listed.append(attempt)
            if len(listed) > MAX_GUESS_LIMIT:
                break
    return listed


def count_staged_in(rows: Mapping[bytes, NodeShare]) -> StagedCount:
    """`ShareKeeper.count_staged` over a shell's rows held in memory (`rows`: entry key ->
    its durable row; the simulation and the in-process test fleet): a scan, which the
    node's store replaces with its `staged` table."""

    def count(account: str, overlay: Mapping[bytes, bool], limit: int) -> int:
        counted = {
            key
            for key, row in rows.items()
            if row.staged_only and EntryId.from_bytes(key).account == account
        }
        counted -= {key for key, only in overlay.items() if not only}
        counted |= {key for key, only in overlay.items() if only}
        return len(counted)

    return count


def holds_live_value(record: AcceptorRecord) -> bool:
    """Whether an entry's record holds a live threshold entry, read from its payload's
    tag and status alone (a full decode costs more than the rest of a save); a value that
    does not decode holds none."""
    try:
        payload = payload_of(record.value)
    except InvalidInput:
        return False
    return is_live_payload(payload)


def is_live_payload(payload: bytes) -> bool:
    """Whether an entry value's payload is a live threshold entry, by its tag and status."""
    return (
        len(payload) >= 9
        and payload[0] == ThresholdState.TAG
        and int.from_bytes(payload[1:9], "big") == EntryStatus.LIVE
    )


def count_entries_in(live: Iterable[bytes], rows: Mapping[bytes, NodeShare]) -> EntryCount:
    """`ShareKeeper.count_entries` over what a shell held in memory has written (`live`:
    the keys of the entries it wrote a live value of, `holds_live_value`; `rows`: entry
    key -> share row; the simulation and the in-process test fleet): a scan, which the
    node's store replaces with its `account_entries` table."""

    def count(key: bytes) -> tuple[int, bool]:
        account = _account_of(key)
        mine = {k for k in (*live, *rows) if _account_of(k) == account}
        return len(mine), key in mine

    return count


def _account_of(key: bytes) -> str | None:
    """The account of an entry's key; None for a key that names no entry."""
    try:
        return EntryId.from_bytes(key).account
    except (InvalidInput, ValueError):
        return None


def kept_at_limit(row: NodeShare, guess_limit: int) -> bool:
    """Whether `row` keeps a share at this node's own count of `guess_limit` (counts
    assumed on peers' reports are not its own, and never erase)."""
    return bool(row.share) and row.count >= guess_limit and not _assumed(row)


def _erased_on_count(row: NodeShare, guess_limit: int) -> bool:
    """Whether `row` held a share of its version that this node erased at its own count of
    `guess_limit` (not one assumed on peers' reports): its manifest kept, its share gone."""
    return bool(row.manifest) and not row.share and row.count >= guess_limit and not _assumed(row)


def _tombstone_of(state: ThresholdState) -> ThresholdState:
    """The tombstone of a live value with no guess left (what the next request proposes)."""
    return state.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"")


def _assumed(row: NodeShare) -> bool:
    """Whether the row counts evaluations assumed on peers' count reports."""
    return any(e.blinded_hash == UNKNOWN_B for e in row.evaluated)


def _exhausted_on_reports() -> ErrorResponse:
    return error(
        ErrorCode.FLEET_UNAVAILABLE,
        "this node's store was restored from an older copy and its peers' reports put"
        " its count at the limit; it answers again after the owner's next success",
    )


def _after_reset(row: NodeShare, attempt: int, blinded_hash: bytes) -> NodeShare:
    """Forget this node's evaluations for attempts up to `attempt`, and of the owner's B
    (`blinded_hash`, whose attempt the owner signed) under any later number: a hostile
    proposer's renumbering of it had this node count it there instead (review s60)."""
    require(attempt > row.reset_at, "a reset never goes back")
    kept = [e for e in row.evaluated if e.attempt > attempt and e.blinded_hash != blinded_hash]
    return row.with_(reset_at=attempt, evaluated=kept)


def _answer(code: ErrorCode, detail: str) -> Callable[[], Answer]:
    return lambda: Answer(error(code, detail))


def _destroyed_error() -> ErrorResponse:
    return error(
        ErrorCode.DESTROYED,
        "too many wrong passwords: the key was destroyed and cannot be recovered",
    )


def count_commit_acks(
    fleet_id: bytes,
    key: bytes,
    manifest: bytes,
    acks: bytes,
    node_keys: Mapping[int, Ed25519PublicKey],
) -> int:
    """How many distinct nodes' acknowledgements in `acks` (`protocol.encode_commit_acks`)
    verify: each signed by that node's key from the deployment record, over its K_i of M,
    held or staged. Malformed acknowledgements count none."""
    entry_id = EntryId.from_bytes(key)
    try:
        decoded = decode_commit_acks(acks)
        parsed = Manifest.from_bytes(manifest)
    except InvalidInput:
        return 0
    verified = 0
    for ack in decoded:
        public = node_keys.get(ack.index)
        if public is None or ack.index > parsed.nodes:
            continue
        try:
            share_key = parsed.commitments.node_public_key(ack.index)
        except InvalidInput:
            continue  # commitments that give this node no key: nothing it could have signed
        signed = share_ack_message(
            ack.kind,
            fleet_id,
            entry_id.account,
            entry_id.entry,
            parsed.version,
            share_key,
            manifest,
        )
        try:
            public.verify(ack.signature, signed)
        except InvalidSignature:
            continue
        verified += 1
    return verified


def check_threshold_value(
    fleet_id: bytes,
    key: bytes,
    shape: FleetShape,
    state: ThresholdState,
    held: bytes,
    *,
    node_keys: Mapping[int, Ed25519PublicKey],
) -> str | None:
    """Why an acceptor refuses a proposed threshold value, or None (docs/threshold.md
    "Recovery" step 1). `held` is the payload this acceptor holds for the key. What one
    value shows on its own, then what changed against the held value: a counter that goes
    down, or a field that changes without the owner's signature, is refused. A peer's
    answer to this node catching up is checked the same way (docs/threshold.md, "Catching
    up"). A live value of a version the acceptor does not hold must
    carry t nodes' verified acknowledgements that they keep their share of its M
    (`node_keys`: every node's signing key by share index), so no round commits a version
    fewer than t nodes can evaluate (docs/threshold.md, "Stage, then commit")."""
    entry_id = EntryId.from_bytes(key)
    try:
        status = EntryStatus(state.status)
    except ValueError:
        return "unknown status"
    limit = shape.guess_limit
    if state.reset_attempt > state.attempt:
        return "a reset for an attempt never made"
    if state.attempt_hash and len(state.attempt_hash) != 32:
        return "malformed attempt hash"
    # Measured in every state: an empty or destroyed value needs no signature that
    # verifies, and an unmeasured field let a peer pad a made-up entry's value to the
    # replica's 256 KiB limit, a row that size on every node per Accept.
    if state.reset_hash and len(state.reset_hash) != 32:
        return "malformed reset hash"
    if any(
        signature and len(signature) != owner.SIGNATURE_LEN
        for signature in (state.reset_signature, state.change_signature)
    ):
        return "malformed owner signature"
    manifest: Manifest | None = None
    if status is EntryStatus.LIVE:
        if state.attempts_used > limit:
            return "more attempts than the limit"
        try:
            manifest = Manifest.from_bytes(state.manifest)
        except InvalidInput:
            return "a live entry without a well-formed manifest"
        if (manifest.fleet_id, manifest.account, manifest.entry, manifest.version) != (
            fleet_id,
            entry_id.account,
            entry_id.entry,
            state.version,
        ):
            return "the manifest is for another fleet, entry or version"
        if (manifest.nodes, manifest.threshold) != (shape.nodes, shape.threshold):
            return "the manifest is for another node set"
        if state.reset_signature:
            try:  # a forged value's fields may not even make a statement (a short hash)
                statement = owner.OwnerStatement(
                    owner.StatementKind.RESET,
                    fleet_id,
                    entry_id.account,
                    entry_id.entry,
                    state.version,
                    state.reset_attempt,
                    state.reset_hash,
                )
                owner.verify_statement(
                    manifest.pk_auth, statement, state.reset_signature, last_counter=None
                )
            except (AuthenticationFailed, InvalidInput):
                return "a reset the owner did not sign"
    elif state.manifest:
        return "an empty or destroyed entry still holding a manifest"
    elif state.acks:
        return "an empty or destroyed entry still holding acknowledgements"
    elif status is EntryStatus.DESTROYED and state.attempts_used < limit:
        return "a tombstone with guesses left"
    previous = _held_threshold(held)
    if status is EntryStatus.LIVE and (
        previous is None or (previous.version, previous.manifest) != (state.version, state.manifest)
    ):
        assert manifest is not None
        # As at staging (`ShareKeeper._check_dealt`): no honest node ever staged a share of
        # such an M, and a hostile peer's copy of one raised in this check (review s48).
        if _node_without_a_key(manifest) is not None:
            return "a manifest whose commitments give a node no key"
        if (
            count_commit_acks(fleet_id, key, state.manifest, state.acks, node_keys)
            < shape.threshold
        ):
            return "a new version without t nodes' acknowledgement that they keep their share"
    if previous is None:
        return None  # nothing held: only the value's own checks
    return _check_transition(fleet_id, entry_id, previous, state, manifest)


def _node_without_a_key(manifest: Manifest) -> int | None:
    """The first node i whose K_i M's commitments make the identity, or None (each K_i is
    remembered: the acknowledgements and the clients' proof checks ask for it again)."""
    for index in range(1, manifest.nodes + 1):
        try:
            manifest.commitments.node_public_key(index)
        except InvalidInput:
            return index
    return None


def _held_threshold(held: bytes) -> ThresholdState | None:
    try:
        state = decode_threshold(held)
    except InvalidInput:
        return None
    return None if state is None or state == ThresholdState() else state


def _check_transition(
    fleet_id: bytes,
    entry_id: EntryId,
    held: ThresholdState,
    state: ThresholdState,
    manifest: Manifest | None,
) -> str | None:
    """Why `state` may not follow `held`, or None. A live later version is taken on its t
    acknowledgements (checked by the caller); a later value holding no key, on its own
    checks."""
    if state.version < held.version:
        if state.version == held.version - 1 and manifest is None and _bare_commit(held):
            # The commit of the held version with nothing since, and a value of the version
            # before that holds no key: a sibling built on the same value of that version
            # (the owner's delete, or a tombstone, racing a password change or a
            # registration) that won the round this node's commit lost, or that value
            # committed again. Refused, the node refused every later value of the entry
            # for good (sim seed 10007660: node 1, the leader, accepted the password change
            # to version 2 alone; the owner's delete of version 1 was chosen by the other
            # two). Taken, it acts on nothing in it: no live value, so no evaluation; no
            # share erased or promoted; no live value of the version before comes back
            # over it; the held version comes back only on its t acknowledgements, with
            # the share and count this node keeps of it. Its share, which counted nothing,
            # gives way to the owner's next registration of that version (`_orphaned`). A
            # proposer that brings the node here could already end the entry (a tombstone
            # of the held version needs no statement). Once the held version counted an
            # attempt or holds an owner reset, the version never goes down.
            return None
        return "the version went down"
    # The attempt counter and clock number the attempts on the held version: this node
    # compares them only with a value that keeps that version live here. A value that ends
    # it here is not compared with them: a tombstone of it (destroyed, or the owner's
    # delete of the live value held, whose signature is checked below, or of a version
    # already ended here: seed 10046249, a sibling delete one attempt apart) evaluates nothing;
    # a later version is taken only on its own evidence, checked below (the owner's
    # statement retiring the held version, or t nodes' acknowledgements), and this node's
    # count of it starts with its own row of that version, which only the owner's signed
    # reset moves, while no request can use the held version's share again. The held value
    # may be a sibling of the committed one that lost its round (the same attempt or a
    # later one, another request, a later clock): a value built on the committed one then
    # looked like the counter or the clock going back, and was refused for good (sim seeds
    # 9201842 and 9500124, a tombstone; 9507211, a password change's commit).
    if _outlived_tombstone(held, state):
        return None
    ends_held = state.version > held.version or state.status != EntryStatus.LIVE
    # Over a held commit with nothing since, a live value of its version (the same commit
    # applied over another value of the version before, or a value built on it, or the
    # version's other M) is not compared with the held attempt numbers either
    # (`_over_a_bare_commit`).
    over_bare = _over_a_bare_commit(held, state)
    renumbers = ends_held or over_bare
    if state.attempt < held.attempt and not renumbers:
        return "the attempt counter went down"
    if state.attempt_client_time_ms < held.attempt_client_time_ms and not renumbers:
        return "the attempt clock went down"
    if state.version == held.version:
        # A tombstone below a reset this node holds is taken (seed 7000233: the owner's
        # reset for the L-th attempt, accepted by a minority, lost to the tombstone): it
        # only ends the entry sooner, which an attempt counter pushed up by L also does.
        # Over a value that holds no key, nothing counts any more.
        if (
            not over_bare
            and state.reset_attempt < held.reset_attempt
            and state.status != EntryStatus.DESTROYED
            and held.status == EntryStatus.LIVE
        ):
            return "the reset went back"
        if held.status == EntryStatus.LIVE:
            if state.status == EntryStatus.LIVE and state.manifest != held.manifest:
                # Two commits of one version (two devices registering, or changing the
                # password, at once): the node may hold the one that lost its round. Over
                # a commit with nothing since, the other is taken on its own t
                # acknowledgements (checked by the caller), as over no value at all;
                # refused, the node refused every later value of the entry (sim seed
                # 9507654). Once the version counted an attempt or holds an owner reset
                # here, its M is never replaced.
                if not over_bare:
                    return "the manifest changed without the owner's signature"
            elif state.status == EntryStatus.LIVE and state.acks != held.acks:
                return "the acknowledgements changed within a version"
            if state.status == EntryStatus.EMPTY and not _signed(
                fleet_id, entry_id, held, owner.StatementKind.DELETE, state, held.manifest
            ):
                return "a delete the owner did not sign"
            if (
                state.reset_attempt > held.reset_attempt
                and not state.reset_signature
                and state.status == EntryStatus.LIVE
                and not over_bare
            ):
                return "a reset without the owner's signature"
            if (
                state.status == EntryStatus.LIVE
                and state.reset_attempt == held.reset_attempt
                and held.reset_signature
                and not state.reset_signature
            ):
                # The owner's reset held here, dropped from a value built on it (review
                # s55): no honest step clears it within a version (a new attempt keeps it,
                # the next reset replaces it with the owner's next one, a commit starts a
                # new version), a line of the version without it stays below the reset's
                # chosen attempt in ballot order (docs/threshold.md, "A value that drops
                # the owner's reset"), and a node that missed the reset refuses such a value as
                # "a reset without the owner's signature", so taken here it cut that node
                # out of the entry's rounds until the owner's next reset. A held bare
                # commit carries no reset, so the siblings `_over_a_bare_commit` takes are
                # never refused here; another signed reset at the same attempt is taken.
                return "the owner's reset was dropped"
        elif state.status == EntryStatus.LIVE:
            return "an entry brought back to life without a new version"
        return None
    # A later version, or a value that ends the held version, is taken on its own checks
    # and, when live, its t acknowledgements (checked by the caller). What the node does on
    # it (`ShareKeeper.on_accept`): it erases its old share on the owner's statement
    # retiring it, verified with the held pk_auth (`_retiring_statement`), and promotes a
    # share of the new M it staged itself, which replaces the old one (`_promotion`); a
    # late delivery does the same (docs/threshold.md, "Catching up").
    #
    # A later value that holds no key (a tombstone, or the owner's delete of a version this
    # node never held, signed with that version's pk_auth, which it never saw) needs no
    # statement: any proposer can already bring this node there in two steps that need
    # none (a tombstone of that version, its attempt count pushed to L; then, at that
    # version, the empty value over the tombstone, which holds no key to check a delete
    # with), and the node acts on nothing in it: no live value, so no evaluation; no share
    # erased or promoted (`_retiring_statement` takes no empty value as retiring the held
    # version, `_promotion` needs a live M); the held version never comes back (the version
    # never goes down), and a live version after it needs its own evidence. Refused, a node
    # that missed a version and its delete stayed live at the old version for good (sim
    # seed 9709511: the tombstone of version 1, the registration over it, the owner's
    # delete of version 2).
    #
    # A live later version carries t nodes' acknowledgements that they keep their share of
    # its M (`count_commit_acks`): at least one honest node checked the step into it
    # against its own state. The laggard takes it to number attempts again, and acts on
    # nothing else in it: it holds no share of that version (unless it staged one, promoted
    # as above), so it evaluates nothing. Before the acknowledgements, a node that missed
    # two changes in a row was stuck for good (docs/soak.md, run T). The next version is
    # taken the same way, with or without the owner's statement (session 56): the statement
    # guarded nothing, since any proposer could bring the node to such a value in two steps
    # that need none (the value with its window moved L attempts on, taken as a
    # registration over the held version's tombstone, sim seed 9101198; then the value
    # itself over that bare commit, `_over_a_bare_commit`), and asked for, a node that
    # missed a password change refused every value of the entry whose statement a hostile
    # node had cleared, until the owner's next version (review s55).
    return None


def _outlived_tombstone(held: ThresholdState, state: ThresholdState) -> bool:
    """Whether `held` is a tombstone that lost its round to the owner's success: `state`,
    live at its version, carries the owner's signed reset (verified by the caller) for an
    attempt inside or after the tombstone's window (after the tombstone's own reset).

    The tombstone counted L failed attempts since its reset. A success at one of them
    means the window did not end in L failures (the tombstone was wrong, whether or not
    it won its round); a success at a later one means attempts went on past the
    tombstone, so it was not chosen. Only a hostile proposer sends a live value over a
    chosen tombstone, and it gains nothing (below). Refused, a node that erased its share
    at L and proposed the tombstone while the owner's reset was on its way refused every
    later value of the entry for good (sim seeds 10043566 and 10045090, a reset at the
    tombstone's last attempt; 10159529, at an earlier one, with a guess after it).

    Taken, it gives back nothing: a share this node erased stays erased (`_take_share`
    refuses the same version's share again), and a share it kept, below L on its own
    count, is where the owner's reset would have left it (the node applies the reset to
    its own count only for the B it evaluated itself). No stale value revives a
    tombstone this way: every value of the tombstone's own line has a reset at or below
    the tombstone's."""
    return (
        held.status == EntryStatus.DESTROYED
        and state.status == EntryStatus.LIVE
        and state.version == held.version
        and bool(state.reset_signature)
        and state.reset_attempt > held.reset_attempt
    )


def _may_be_behind(held: ThresholdState, manifest: Manifest) -> bool:
    """Whether a node holding `held` may have missed the commit of `manifest`, delivered
    late (so it is not the held value): the held value is of an earlier version, or of
    the same version and live with another M (a sibling commit whose round was lost). A
    value of a later version, or one that ended this version, is never left again."""
    if held.version < manifest.version:
        return True
    return held.version == manifest.version and held.status == EntryStatus.LIVE


def _orphaned(row: NodeShare, held: ThresholdState) -> bool:
    """Whether this node's share `row` is of an M that the value it holds (`held`) does
    not keep live, and counted nothing here: what a node keeps of a commit whose round
    was lost to a sibling that holds no key (sim seed 10007660), or of a commit whose
    version's other M won. Kept, the node refused the owner's next registration of that
    version for good ("already holds another share"); it gives way to it, which erases
    the orphan. Nothing is gained: a count belongs to one M, this one counted nothing, and
    the share that replaces it starts its own count with its commit, as a new version's
    does."""
    return (
        bool(row.share)
        and row.count == 0
        and not (held.status == EntryStatus.LIVE and held.manifest == row.manifest)
    )


def _over_a_bare_commit(held: ThresholdState, state: ThresholdState) -> bool:
    """Whether `held` is its version's commit with nothing since (`_bare_commit`) and
    `state` is live at that version. Such a `state` is taken without comparing its attempt
    counter, clock or window start with the held ones: only its M (another M needs its own
    t acknowledgements, checked by the caller; the same M, the same ones) and the owner's
    signatures in it are checked.

    Why: a commit keeps the attempt number and clock of the value it is applied over and
    starts its version's window there, and two proposers can apply the same commit over
    two siblings of the version before (one of them a guess that was never committed):
    the node may hold the commit that lost its round, which is later, earlier or the same
    in any of the three. Each way was refused for good once, as "a reset without the
    owner's signature" (sim seeds 9300379, 9301925: a later start) and "the attempt
    counter went down" (10112960: an earlier start); two devices' commits of one version
    were refused as "the manifest changed" (9507654).

    Taking it forgives nothing: the held commit counts no attempt, and this node counted
    no attempt of the version under it; its own count of the version is its row, which
    starts at the commit and moves only with attempts it answers and the owner's signed
    reset of a B it evaluated, and it answers one B per attempt number, so a number used
    again for another B is refused. Once the version counted an attempt here or holds an
    owner reset, the held value is no bare commit and every comparison applies again."""
    return _bare_commit(held) and state.status == EntryStatus.LIVE and state.version == held.version


def _bare_commit(held: ThresholdState) -> bool:
    """Whether `held` is its version's commit as the commit wrote it: no attempt and no
    owner reset since, so its window starts where the commit landed (`reset_attempt` =
    the attempt it was applied at). What a node takes over it: `_over_a_bare_commit`;
    over the version before: `_check_transition`."""
    return (
        held.status == EntryStatus.LIVE
        and held.attempt == held.reset_attempt
        and not held.attempt_hash
        and not held.reset_signature
    )


def _retiring_statement(
    fleet_id: bytes, entry_id: EntryId, held: ThresholdState, state: ThresholdState
) -> owner.StatementKind | None:
    """Which owner statement in `state` (version held + 1) retires the live `held` version,
    verified with held's pk_auth, or None: a password change to `state`'s M, or a delete of
    held's M (kept by the registration that followed it, and by that version's tombstone)."""
    if state.version != held.version + 1 or not state.change_signature:
        return None
    if state.manifest and _signed(
        fleet_id, entry_id, held, owner.StatementKind.CHANGE_PASSWORD, state, state.manifest
    ):
        return owner.StatementKind.CHANGE_PASSWORD
    if state.status != EntryStatus.EMPTY and _signed(
        fleet_id, entry_id, held, owner.StatementKind.DELETE, state, held.manifest
    ):
        return owner.StatementKind.DELETE
    return None


def _signed(
    fleet_id: bytes,
    entry_id: EntryId,
    held: ThresholdState,
    kind: owner.StatementKind,
    state: ThresholdState,
    payload: bytes,
) -> bool:
    """`state.change_signature` is the held owner's `kind` statement about the held
    version, over SHA-256(payload)."""
    statement = owner.OwnerStatement(
        kind,
        fleet_id,
        entry_id.account,
        entry_id.entry,
        held.version,
        state.change_counter,
        owner.payload_hash(payload),
    )
    try:
        owner.verify_statement(
            Manifest.from_bytes(held.manifest).pk_auth,
            statement,
            state.change_signature,
            last_counter=None,
        )
    except (AuthenticationFailed, InvalidInput):
        return False
    return True
