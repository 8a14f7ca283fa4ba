"""What the vault keeps for one entry: the replicated value (`ThresholdState`) and this
node's own row (`NodeShare`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from backupvault.codec import Message
from backupvault.errors import InvalidInput
from backupvault.protocol import EntryStatus, check_name

DEFAULT_GUESS_LIMIT = 10
MAX_GUESS_LIMIT = 100


@dataclass(frozen=True)
class EntryId(Message):
    """The replication key of an entry: (account, entry)."""

    TAG = 40
    account: str
    entry: str

    @classmethod
    def of(cls, account: str, entry: str) -> EntryId:
        return cls(check_name("account", account), check_name("entry", entry))


def is_entry_key(key: bytes) -> bool:
    """Whether `key` is an entry's replication key exactly as `EntryId.of(...).to_bytes()`
    makes it: the only keys the fleet replicates (`Replica`'s key check). A node's store
    keeps other rows in the same table (its own share rows, which hold its key share); a
    peer's message naming one of those must never reach them."""
    try:
        entry = EntryId.from_bytes(key)
        return EntryId.of(entry.account, entry.entry).to_bytes() == key
    except (InvalidInput, ValueError):
        return False


#: Tag 41 was the single-seed flow's entry state (`EntryState`), removed with it. A live
#: one (a key behind the single seed) makes the node refuse to start (node/main.py); an
#: acceptor refuses any as a proposed value; one that holds no key any more (deleted or
#: destroyed) reads as an empty entry.
SINGLE_SEED_ENTRY_TAG = 41


def single_seed_status(payload: bytes) -> EntryStatus | None:
    """The status of a single-seed value (its encoding starts with its tag and its status,
    a u64), or None if `payload` is not one. Nothing else of it is read."""
    if len(payload) < 9 or payload[0] != SINGLE_SEED_ENTRY_TAG:
        return None
    status = int.from_bytes(payload[1:9], "big")
    return EntryStatus(status) if status in tuple(EntryStatus) else EntryStatus.LIVE


# ---- the threshold flow (docs/threshold.md) ----------------------------------------------


@dataclass(frozen=True)
class ThresholdState(Message):
    """One threshold entry, replicated by the fleet. Consensus only numbers attempts: no
    node evaluates, resets or erases on this value's word alone (docs/threshold.md).

    `attempt` is the latest attempt number (never goes down, never reset); the attempts
    used in the current window are `attempt - reset_attempt`. `attempt_hash` is SHA-256 of
    the latest attempt's blinded element B: every node that receives its copy of one
    client request proposes "new attempt with H(B)", and when H(B) is already the latest
    attempt's that proposal changes nothing, so the N copies are one attempt. `reset_*`
    is the latest owner reset (a public signature that anyone can check), so nodes that
    missed the client's `reset` verify and apply it from here. `change_*` is the owner's
    statement that moved the entry to this version (a password change; or the delete of
    the previous version, kept by the registration after it; none for version 1 or over a
    tombstone) or, once deleted, the delete of this one. `acks`, while live: at least t
    nodes' signed word that they keep their share of M (`protocol.encode_commit_acks`), so
    an acceptor takes a new version only once t nodes can evaluate it (docs/threshold.md,
    "Stage, then commit")."""

    TAG = 42
    status: int = EntryStatus.EMPTY
    version: int = 0  # the manifest version; kept when the entry is deleted
    manifest: bytes = b""  # M; empty unless live
    attempt: int = 0
    attempt_hash: bytes = b""
    attempt_client_time_ms: int = 0
    reset_attempt: int = 0
    reset_hash: bytes = b""
    reset_signature: bytes = b""
    change_counter: int = 0
    change_signature: bytes = b""
    acks: bytes = b""

    @property
    def attempts_used(self) -> int:
        return self.attempt - self.reset_attempt

    def with_(self, **fields: object) -> ThresholdState:
        return dataclasses.replace(self, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Evaluation(Message):
    """One attempt this node answered: attempt a and SHA-256 of the B it evaluated."""

    TAG = 43
    attempt: int
    blinded_hash: bytes


#: Staged shares a node keeps per entry (the oldest goes first).
STAGED_KEPT = 4


@dataclass(frozen=True, repr=False)
class StagedShare(Message):
    """A share of M this node checked, kept until M commits."""

    TAG = 45
    share: bytes
    manifest: bytes


@dataclass(frozen=True, repr=False)
class NodeShare(Message):
    """What one node keeps for itself about one threshold entry: never replicated, sealed
    under the node's storage key, persisted before any answer that depends on it leaves.

    `share` is this node's k_i (index u8 || scalar), empty once erased; `manifest` the M it
    checked the share against. `evaluated` holds the attempts answered since the last
    owner reset (`reset_at`), one B per attempt; its length is the count, never above L.
    `change_counter`/`delete_counter`: the highest owner statement counters acted on.
    `staged`: shares of a later version this node checked and keeps until one's M commits,
    when that one becomes `share` (docs/threshold.md, "Stage, then commit"); the newest
    last, at most `STAGED_KEPT`, so two devices registering at once both stage."""

    TAG = 44
    version: int
    share: bytes
    manifest: bytes
    evaluated: list[Evaluation]
    reset_at: int = 0
    change_counter: int = 0
    delete_counter: int = 0
    staged: list[StagedShare] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.evaluated)

    @property
    def staged_only(self) -> bool:
        """Whether this row keeps staged shares and no share of its own: a registration
        (or a change) this node took part in that has not committed here, what the cap
        per account counts (`STAGED_ENTRIES_PER_ACCOUNT`, hsm/shares.py)."""
        return not self.share and bool(self.staged)

    def evaluated_hash(self, attempt: int) -> bytes | None:
        return next((e.blinded_hash for e in self.evaluated if e.attempt == attempt), None)

    def with_(self, **fields: object) -> NodeShare:
        return dataclasses.replace(self, **fields)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"NodeShare(version={self.version}, count={self.count}, reset_at={self.reset_at})"
