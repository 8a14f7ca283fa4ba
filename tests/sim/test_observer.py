"""The observer's counting of acceptances, without a simulation around it."""

from __future__ import annotations

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, Ballot, ReplicatedValue
from backupvault.hsm.state import EntryId, EntryState
from backupvault.protocol import EntryStatus
from backupvault.sim.observer import Observer

KEY = EntryId("acct0", "root-key").to_bytes()


def _record(round_: int, node: int) -> AcceptorRecord:
    state = EntryState(status=EntryStatus.LIVE, version=1)
    value = ReplicatedValue([AppliedOp(b"op", round_)], state.to_bytes()).to_bytes()
    return AcceptorRecord(KEY, round_, node, round_, node, value)


def _observer() -> Observer:
    return Observer(quorum=2, log=lambda line: None)


def test_a_catch_up_copy_alone_does_not_count() -> None:
    observer = _observer()
    record = _record(3, 1)
    observer.on_persist(1, record, "accept")
    observer.on_persist(0, record, "copy")
    observer.on_persist(2, record, "promise")  # a promise carrying the acceptance along
    assert observer.latest(KEY) == b""  # one real acceptance: not chosen


def test_a_copy_followed_by_the_identical_accept_counts_once() -> None:
    """Seeds 777273 and 900502: a node copied (b, v) while catching up, then accepted the
    very same (b, v) from the proposer; the old observer saw no change of the accepted
    ballot and never counted it, so a committed guess looked uncommitted."""
    observer = _observer()
    record = _record(3, 1)
    observer.on_persist(0, record, "copy")
    observer.on_persist(0, record, "accept")
    assert observer.latest(KEY) == b""  # node 0 alone
    observer.on_persist(0, record, "accept")  # the same Accept delivered twice
    assert observer.latest(KEY) == b""  # still node 0 alone: counted once
    observer.on_persist(1, record, "accept")
    assert observer.is_chosen(KEY, observer.latest(KEY)) == Ballot(3, 1)
