"""The observer's counting of acceptances, without a simulation around it."""

from __future__ import annotations

import hashlib

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, Ballot, ReplicatedValue
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import EntryStatus
from backupvault.sim.observer import Observer

KEY = EntryId("acct0", "root-key").to_bytes()


def _record(round_: int, node: int) -> AcceptorRecord:
    state = ThresholdState(status=EntryStatus.LIVE, version=1)
    value = ReplicatedValue([AppliedOp(b"op", round_)], state.to_bytes()).to_bytes()
    return AcceptorRecord(KEY, round_, node, round_, node, value)


def _observer() -> Observer:
    return Observer(nodes=3, guess_limit=3, log=lambda line: None)


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


# ---- the threshold checks -------------------------------------------------------------


def _commit(observer: Observer, state: ThresholdState, round_: int) -> None:
    """`state` built on the latest committed value, accepted by nodes 0 and 1 of 3."""
    observer.on_apply(KEY, observer.latest(KEY), state.to_bytes())
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    for node in (0, 1):
        observer.on_persist(node, AcceptorRecord(KEY, round_, 0, round_, 0, value), "accept")


def _attempt(observer: Observer, attempt: int, reset: int, round_: int) -> ThresholdState:
    blinded = b"B%d" % attempt
    state = ThresholdState(
        status=EntryStatus.LIVE,
        version=1,
        manifest=b"M",
        attempt=attempt,
        attempt_hash=hashlib.sha256(blinded).digest(),
        reset_attempt=reset,
        reset_hash=b"r" * 32 if reset else b"",
        reset_signature=b"s" * 64 if reset else b"",
    )
    _commit(observer, state, round_)
    for node in (0, 1):
        observer.on_partial(node, KEY, state, blinded, attempt)
    return state


def test_at_most_l_outputs_per_window_between_committed_resets() -> None:
    observer = Observer(nodes=3, guess_limit=2, log=lambda line: None, collect=True)
    observer.owner_ghost = False
    _attempt(observer, 1, 0, 1)
    _attempt(observer, 2, 0, 2)
    assert observer.violations == [] and observer.max_window == 2
    _attempt(observer, 3, 2, 3)  # a reset for attempt 2 opened a new window
    _attempt(observer, 4, 2, 4)
    assert observer.violations == []
    _attempt(observer, 5, 2, 5)  # a third output in the window
    assert any("3 combined outputs in one window" in v.detail for v in observer.violations)


def test_a_partial_without_the_nodes_own_acceptance_is_caught() -> None:
    observer = Observer(nodes=3, guess_limit=2, log=lambda line: None, collect=True)
    state = ThresholdState(
        status=EntryStatus.LIVE,
        version=1,
        manifest=b"M",
        attempt=1,
        attempt_hash=hashlib.sha256(b"B").digest(),
    )
    _commit(observer, state, 1)  # accepted by nodes 0 and 1
    observer.on_partial(0, KEY, state, b"B", 1)
    assert observer.violations == []
    observer.on_partial(2, KEY, state, b"B", 1)  # node 2 never accepted it
    assert [v.invariant for v in observer.violations] == ["evaluate-only-after-own-acceptance"]


def test_one_b_charged_as_two_attempts_is_caught() -> None:
    observer = Observer(nodes=3, guess_limit=4, log=lambda line: None, collect=True)
    same = hashlib.sha256(b"B").digest()
    live = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"M")
    _commit(observer, live.with_(attempt=1, attempt_hash=same), 1)
    _commit(observer, live.with_(attempt=2, attempt_hash=hashlib.sha256(b"C").digest()), 2)
    assert observer.violations == []
    _commit(observer, live.with_(attempt=3, attempt_hash=same), 3)  # B replayed, charged again
    assert [v.invariant for v in observer.violations] == ["replays-change-nothing"]
