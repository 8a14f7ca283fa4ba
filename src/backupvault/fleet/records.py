"""Where a replica finds its own records: a `RecordSource` (docs/fleet.md, "Records and
catch-up").

The replica keeps no copy of every record. It reads one entry's record when a message
about that entry arrives, and writes through the source, which the shell backs with the
node's store and a bounded cache (`node.store.StoreRecords`) and tests and the simulation
back with a dict (`MemoryRecords`). Reads are synchronous: they are reads of this node's
own state, like a lookup in a dict, and keep the replica's steps deterministic; nothing
here talks to the network or waits for another node.

Versions: every write of a record gets the next number of the source's own sequence
(`ver`), so "what changed since version v" is a range. The numbers are local to one
store: they mean something to a peer only together with the store's `store_id`, which a
store takes anew whenever its sequence might restart below numbers it already handed
out (created, wiped, or found rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from backupvault.fleet.messages import AcceptorRecord

#: How far above the highest round it has promised (for any entry, or for this one) an
#: acceptor takes a ballot (`Replica._refused`). Honest rounds grow by one per proposal; a
#: hostile proposer sending rounds near 2^64 would otherwise leave no higher round for
#: anyone (ballot inflation stalls every honest proposer). 2^32 until review s49: a
#: hostile node walked an honest acceptor to the ceiling in 2^30 Prepares, about nine
#: hours of what the channel admits from one peer, and could then take any entry out of
#: reach with one more. 2^16: the ceiling is 2^46 steps away, about 67 years of it.
MAX_ROUND_STEP = 1 << 16


def raised_floor(floor: int, promised_round: int) -> int:
    """The highest round a node counts as promised (its floor for ballot inflation) once it
    stores a record promising `promised_round`: a step above the floor at most. A record
    the acceptor promised itself is never further above (it refuses such ballots); a copy
    a peer handed over during catch-up can be anywhere, and one copy at the ceiling from a
    hostile peer switched the check off at that node for good, on disk (review s49)."""
    return max(floor, min(promised_round, floor + MAX_ROUND_STEP))


@dataclass(frozen=True)
class Mark:
    """How far this node has merged a peer's store: every record of store `store_id`
    written at a version up to `upto` is merged into this node's records."""

    store_id: bytes = b""
    upto: int = 0


@dataclass(frozen=True)
class Changes:
    """One page of a store's records written after version `since`, in version order,
    up to version `upto`; `more` when the page stopped at its limit."""

    store_id: bytes
    since: int
    upto: int
    records: list[AcceptorRecord]
    more: bool


class RecordSource(Protocol):
    def get(self, key: bytes) -> AcceptorRecord | None:
        """The record of `key` as last put, or None if it was never written."""

    def put(self, record: AcceptorRecord) -> None:
        """The record's new state. The replica returns a `Persist` for it in the same step;
        the shell makes it durable before anything after that `Persist` leaves."""

    def max_round(self) -> int:
        """The highest promised round among the records: where new ballots start."""

    def mark(self, peer: int) -> Mark:
        """How far this node has merged `peer`'s store (Mark() if never)."""

    def set_mark(self, peer: int, mark: Mark) -> None:
        """Record a new mark. It is made durable with the records put before it, never
        ahead of them (a mark claims that they are merged)."""

    def changed_since(self, store_id: bytes, since: int, limit: int) -> Changes:
        """Durable records written after version `since` of store `store_id`, at most
        `limit`. If `store_id` is not this store's (or `since` is ahead of it), from the
        start: the asker's mark belongs to a sequence this store no longer continues."""

    def catch_up_began_empty(self) -> bool:
        """Whether the store is in a catch-up that began when it held no record (wiped, or
        new), and has not finished: every value it holds is a peer's copy, none this
        node's own, even after the node was stopped and started again in between."""

    def copied_before_start(self, key: bytes) -> bool:
        """Whether `key`'s record was last written by a catch-up that began before this
        start and has not finished (the node was stopped during it): the value it holds
        may be a peer's copy, and the node's own value before it is lost. Asked before
        this run writes the record."""


@dataclass
class MemoryRecords:
    """A `RecordSource` in a dict, for tests and the simulation, where writes are durable
    the moment they are made. `copy()` is the disk image the simulation rolls back to."""

    store_id: bytes = b"memory"
    _records: dict[bytes, tuple[AcceptorRecord, int]] = field(default_factory=dict)
    _marks: dict[int, Mark] = field(default_factory=dict)
    _last_ver: int = 0
    _max_round: int = 0
    #: A catch-up began on this disk and has not finished (as `NodeStore.catching_up`).
    catching_up: bool = False
    #: ... on an empty disk (as `NodeStore.began_empty`).
    began_empty: bool = False
    #: The last version before that catch-up began, and the last at this start (as
    #: `NodeStore.catch_up_from` and `opened_ver`).
    catch_up_from: int = 0
    opened_ver: int = 0

    @classmethod
    def of(cls, records: list[AcceptorRecord], store_id: bytes = b"memory") -> MemoryRecords:
        source = cls(store_id)
        for record in records:
            source.put(record)
        return source

    def get(self, key: bytes) -> AcceptorRecord | None:
        found = self._records.get(key)
        return found[0] if found else None

    def put(self, record: AcceptorRecord) -> None:
        self._last_ver += 1
        self._records[record.key] = (record, self._last_ver)
        self._max_round = raised_floor(self._max_round, record.promised_round)

    def max_round(self) -> int:
        return self._max_round

    def mark(self, peer: int) -> Mark:
        return self._marks.get(peer, Mark())

    def set_mark(self, peer: int, mark: Mark) -> None:
        self._marks[peer] = mark

    def changed_since(self, store_id: bytes, since: int, limit: int) -> Changes:
        if store_id != self.store_id or since > self._last_ver:
            since = 0
        newer = sorted((rv for rv in self._records.values() if rv[1] > since), key=lambda rv: rv[1])
        page = newer[:limit]
        more = len(newer) > limit
        upto = page[-1][1] if more else self._last_ver
        return Changes(self.store_id, since, upto, [r for r, _ in page], more)

    def catch_up_began_empty(self) -> bool:
        return self.catching_up and self.began_empty

    def copied_before_start(self, key: bytes) -> bool:
        found = self._records.get(key)
        return (
            self.catching_up
            and found is not None
            and self.catch_up_from < found[1] <= self.opened_ver
        )

    def begin_catch_up(self) -> None:
        """What a node's store records when it starts catching up (`NodeStore.open` and
        `mark_catching_up`): empty now, or still in a catch-up that began empty, it holds
        no value of its own; a catch-up still going on keeps where it began."""
        self.began_empty = self._max_round == 0 or self.catch_up_began_empty()
        if not self.catching_up:
            self.catch_up_from = self._last_ver
        self.opened_ver = self._last_ver
        self.catching_up = True

    def end_catch_up(self) -> None:
        self.catching_up = self.began_empty = False
        self.catch_up_from = 0

    # ---- what the simulation does to a disk ------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[bytes]:
        return sorted(self._records)

    def records(self) -> list[AcceptorRecord]:
        return [r for r, _ in self._records.values()]

    def remove(self, key: bytes) -> None:
        """An operator deletes a damaged row."""
        self._records.pop(key, None)

    def renew(self, store_id: bytes) -> None:
        """Found not intact at start: peers' marks of this store no longer hold."""
        self.store_id = store_id

    def copy(self) -> MemoryRecords:
        return MemoryRecords(
            self.store_id,
            dict(self._records),
            dict(self._marks),
            self._last_ver,
            self._max_round,
            self.catching_up,
            self.began_empty,
            self.catch_up_from,
            self.opened_ver,
        )
