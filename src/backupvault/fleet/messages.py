"""Node-to-node messages of the replication protocol (CASPaxos per entry, with a stable
leader's one-round path; docs/fleet.md).

Ballots are (round, node) pairs compared in that order, so two proposers never share one.
A record's `value` is the encoded entry state; empty means "never written".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from backupvault.codec import Message
from backupvault.errors import InvalidInput


@dataclass(frozen=True, order=True)
class Ballot:
    round: int
    node: int

    def next_above(self, node: int) -> Ballot:
        return Ballot(self.round + 1, node)


ZERO_BALLOT = Ballot(0, 0)


@dataclass(frozen=True)
class AcceptorRecord(Message):
    """What an acceptor durably keeps for one entry."""

    TAG = 60
    key: bytes
    promised_round: int = 0
    promised_node: int = 0
    accepted_round: int = 0
    accepted_node: int = 0
    value: bytes = b""

    @property
    def promised(self) -> Ballot:
        return Ballot(self.promised_round, self.promised_node)

    @property
    def accepted(self) -> Ballot:
        return Ballot(self.accepted_round, self.accepted_node)


@dataclass(frozen=True)
class Prepare(Message):
    TAG = 61
    op_id: bytes
    key: bytes
    round: int
    node: int


@dataclass(frozen=True)
class Promise(Message):
    """ok=True: the acceptor promised `round/node` and reports what it accepted.
    ok=False: it had promised something higher, reported in promised_*."""

    TAG = 62
    op_id: bytes
    key: bytes
    round: int
    node: int
    ok: bool
    accepted_round: int
    accepted_node: int
    value: bytes
    promised_round: int
    promised_node: int


@dataclass(frozen=True)
class Accept(Message):
    """Accept `value` at ballot round/node. The answer goes to the sender and to `origin`
    (the node whose client asked; the sender itself on the leaderless path). `pipeline`:
    in the same write, promise the ballot's successor (round + 1, node) — a Prepare of
    that ballot delivered right after this Accept — so the leader's next change to the
    entry needs no phase 1."""

    TAG = 63
    op_id: bytes
    key: bytes
    round: int
    node: int
    value: bytes
    origin: int
    pipeline: bool


@dataclass(frozen=True)
class Accepted(Message):
    TAG = 64
    op_id: bytes
    key: bytes
    round: int
    node: int
    ok: bool
    promised_round: int
    promised_node: int
    digest: bytes  # SHA-256 of the value taken or refused (empty on an older node's refusal)


@dataclass(frozen=True)
class SyncRequest(Message):
    """Sent by a node catching up after a (re)start: "send me the records you wrote after
    version `since` of your store `store_id`" (what the asker merged from you last time;
    empty and 0 when it holds nothing of yours). One page of them comes back."""

    TAG = 65
    sync_id: bytes
    store_id: bytes = b""
    since: int = 0


# Records per catch-up answer, at most: one page is about 1 MB on the wire, and reading it
# is a short pause of the answering node's event loop (decrypting ~2,000 rows).
SYNC_PAGE = 2000


@dataclass(frozen=True)
class SyncResponse(Message):
    """A page of the sender's records written after version `since` (0: from the start,
    when the asked-for store or version is not the sender's), up to version `upto`.
    `more`: the page is full, ask again from `upto`."""

    TAG = 66
    LIST_LIMITS: ClassVar[dict[str, int]] = {"records": SYNC_PAGE}
    sync_id: bytes
    ready: bool  # False if the sender is itself still catching up
    records: list[AcceptorRecord]
    store_id: bytes = b""
    since: int = 0
    upto: int = 0
    more: bool = False


@dataclass(frozen=True)
class NotReady(Message):
    """An acceptor that is catching up answers Prepare/Accept with this."""

    TAG = 67
    op_id: bytes


@dataclass(frozen=True)
class Forward(Message):
    """To the leader: "accept `value`, my change applied to the entry's value at ballot
    base_round/base_node, if that is still the newest"."""

    TAG = 76
    op_id: bytes
    key: bytes
    base_round: int
    base_node: int
    value: bytes


@dataclass(frozen=True)
class ForwardAnswer(Message):
    """The leader's answer when it does not send the Accept. retry=True: the base is
    stale, the newest value is (round/node, value): apply the change again and forward.
    retry=False: the leader cannot serve the entry now: propose leaderless."""

    TAG = 77
    op_id: bytes
    key: bytes
    retry: bool
    round: int
    node: int
    value: bytes


@dataclass(frozen=True)
class AppliedOp(Message):
    """A change already folded into a value: its op id and which computation of the
    change made it (a count kept by the proposing node, one per application)."""

    TAG = 68
    op_id: bytes
    round: int


RECENT_OPS = 32  # changes remembered per entry; a retry comes within seconds


@dataclass(frozen=True)
class ReplicatedValue(Message):
    """What acceptors store as a record's value: the application's bytes plus the ids of
    the most recent changes applied to them, so a proposer retrying after a round it
    lost track of never applies the same change twice."""

    TAG = 69
    LIST_LIMITS: ClassVar[dict[str, int]] = {"applied": RECENT_OPS}
    applied: list[AppliedOp]
    payload: bytes


MAX_OP_ID_BYTES = 32  # a node's op ids are 16 random bytes
VALUES_DECODED = 256  # values whose decoding is remembered (`decode_value`)


@functools.lru_cache(maxsize=VALUES_DECODED)
def decode_value(value: bytes) -> ReplicatedValue:
    """`ReplicatedValue.from_bytes`, remembered for the latest values: a node reads the
    same value many times for one change (to check it, apply a change to it, join it,
    announce it), and decoding its list of recent ops was a tenth of a node's CPU. The
    result is shared: never change its `applied` list."""
    return ReplicatedValue.from_bytes(value)


def well_formed(value: bytes) -> bool:
    """Whether `value` (non-empty) is a value an honest proposer makes: it decodes, and its
    list of recent ops is one `Replica._apply` keeps (at most `RECENT_OPS`, each id at
    most `MAX_OP_ID_BYTES`). No acceptor check reads that list (the application's sees the
    payload), so without this a peer could pad a made-up entry's value with it, and every
    node would store the padding."""
    try:
        applied = decode_value(value).applied
    except InvalidInput:
        return False
    return len(applied) <= RECENT_OPS and all(len(op.op_id) <= MAX_OP_ID_BYTES for op in applied)


def payload_of(value: bytes) -> bytes:
    """The application's bytes in a record's value (empty if never written)."""
    return decode_value(value).payload if value else b""


PEER_MESSAGES: tuple[type[Message], ...] = (
    Prepare,
    Promise,
    Accept,
    Accepted,
    SyncRequest,
    SyncResponse,
    NotReady,
    Forward,
    ForwardAnswer,
)
