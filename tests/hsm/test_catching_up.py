"""A node that missed a delete and the registration after it catches up on the owner's
signed DELETE, which the new value keeps, checked with the node's own pk_auth; it erases
its old share only on that statement, and refuses what it cannot check (docs/threshold.md,
"Catching up"). Seed 6000566 found the stale laggards; tests/sim/test_regressions.py runs
the scenario end to end."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_tombstone_and_copies import _stored

from backupvault.codec import Message
from backupvault.crypto import oprf, owner
from backupvault.errors import AuthenticationFailed
from backupvault.fleet.messages import Accept, Accepted, ReplicatedValue
from backupvault.hsm.shares import UNKNOWN_B, _orphaned, check_threshold_value
from backupvault.hsm.state import Evaluation, NodeShare, StagedShare, ThresholdState
from backupvault.protocol import (
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    Op,
    RegisterShareRequest,
)
from backupvault.sim.world import FLEET_ID, Simulation, ThresholdClient, threshold_world

OLD_RK = bytes(32)
NEW_RK = bytes([7]) * 32


@pytest.fixture
def world() -> Simulation:
    return threshold_world(limit=4, seed=6)


def _deleted_and_registered_again(world: Simulation, client: ThresholdClient) -> None:
    """Nodes 3 and 4 cut off while the owner deletes version 1 and registers version 2."""
    client.register(b"old", OLD_RK)
    world.reachable = {0, 1, 2}
    recovered = client.recover(b"old")
    assert recovered is not None
    assert client.delete(recovered[0]) == 3
    assert client.register(b"new", NEW_RK, version=2)[1] == 3


def _checker(
    world: Simulation, key: bytes
) -> Callable[[ThresholdState, ThresholdState], str | None]:
    """Why an acceptor holding the second value refuses the first, or None."""

    def check(proposed: ThresholdState, held: ThresholdState) -> str | None:
        return check_threshold_value(
            FLEET_ID, key, world.shape, proposed, held.to_bytes(), node_keys=world.node_keys
        )

    return check


def _check(world: Simulation, key: bytes, proposed: ThresholdState, slot: int = 3) -> str | None:
    held = world.replicated(slot, key).to_bytes()
    return check_threshold_value(
        FLEET_ID, key, world.shape, proposed, held, node_keys=world.node_keys
    )


def test_a_laggard_takes_the_registration_after_a_delete_it_verifies_and_erases(
    world: Simulation,
) -> None:
    client = ThresholdClient(world)
    _deleted_and_registered_again(world, client)
    laggard = world.replicated(3, client.key)
    committed = world.replicated(0, client.key)
    assert (laggard.status, laggard.version) == (EntryStatus.LIVE, 1)
    assert (committed.status, committed.version) == (EntryStatus.LIVE, 2)
    assert committed.change_signature  # the owner's DELETE of version 1, kept
    assert _check(world, client.key, committed) is None
    old_rows = {slot: world.honest[slot].rows[client.key] for slot in (3, 4)}
    assert all(row.share and row.version == 1 for row in old_rows.values())
    world.reachable = None
    world.settle(5.0)
    for slot in (3, 4):
        assert world.replicated(slot, client.key) == world.replicated(0, client.key)
        # Erased on the verified statement; nothing of version 2 is dealt to it here.
        assert world.honest[slot].rows[client.key] == old_rows[slot].with_(
            share=b"", delete_counter=committed.change_counter
        )
    recovered = client.recover(b"new")
    assert recovered is not None and recovered[1] == NEW_RK


def _other_entrys_delete(world: Simulation) -> ThresholdState:
    other = ThresholdClient(world, entry="other")
    other.register(b"other", OLD_RK)
    recovered = other.recover(b"other")
    assert recovered is not None
    other.delete(recovered[0])
    return world.replicated(0, other.key)


def test_a_laggard_erases_nothing_on_a_new_version_without_a_delete_it_verifies(
    world: Simulation,
) -> None:
    """Absent, forged, altered or another entry's DELETE: the value is taken on its t
    acknowledgements (session 56: the statement guarded nothing a proposer could not reach
    in two steps), and erases nothing; the genuine statement erases the old share."""
    client = ThresholdClient(world)
    _deleted_and_registered_again(world, client)
    other = _other_entrys_delete(world)  # nodes 0-2 only: 3 and 4 are still cut off
    committed = world.replicated(0, client.key)
    forged = {
        "absent": committed.with_(change_counter=0, change_signature=b""),
        "forged": committed.with_(change_signature=bytes(64)),
        "another counter": committed.with_(change_counter=committed.change_counter + 1),
        "another entry's delete": committed.with_(
            change_counter=other.change_counter, change_signature=other.change_signature
        ),
    }
    keeper = world.honest[3].keeper
    assert keeper is not None
    row = world.honest[3].rows[client.key]
    for what, value in forged.items():
        assert _check(world, client.key, value) is None, what
        keeper.on_accept(client.key, value.to_bytes())
        assert keeper.take_writes() == (), what
        assert keeper.row(client.key) == row, what
    keeper.on_accept(client.key, committed.to_bytes())  # the genuine one does erase
    assert [w.row.share for w in keeper.take_writes()] == [b""]


def test_a_laggard_takes_a_chain_of_changes_on_t_acknowledgements_and_erases_nothing(
    world: Simulation,
) -> None:
    """Two missed password changes: the value carries only the second CHANGE statement,
    signed with a key the laggard never saw, and t nodes' acknowledgements of its M. The
    laggard takes it (else it would be stuck for good: soak run T), but acts on nothing
    in it: it keeps its old share, which no request of the new version can use. Without
    the acknowledgements it refuses."""
    client = ThresholdClient(world)
    client.register(b"one", OLD_RK)
    world.reachable = {0, 1, 2}
    first = client.recover(b"one")
    assert first is not None
    assert client.change_password(first[0], b"two", OLD_RK)[1] == 3
    second = client.recover(b"two")
    assert second is not None
    assert client.change_password(second[0], b"three", OLD_RK)[1] == 3
    committed = world.replicated(0, client.key)
    assert committed.version == 3
    assert _check(world, client.key, committed) is None
    stripped = committed.with_(acks=committed.acks[:66])
    assert "acknowledgement" in (_check(world, client.key, stripped) or "")
    keeper = world.honest[3].keeper
    assert keeper is not None
    keeper.on_accept(client.key, committed.to_bytes())
    assert keeper.take_writes() == ()
    assert world.honest[3].rows[client.key].share


def test_a_later_tombstone_is_taken_without_a_statement_and_erases_nothing(
    world: Simulation,
) -> None:
    """A tombstone of a later version is no more than a proposer could bring a node to in
    two steps today; it is taken so the tombstone reaches every node, and erases nothing
    on its own word."""
    client = ThresholdClient(world)
    _deleted_and_registered_again(world, client)
    committed = world.replicated(0, client.key)
    tombstone = committed.with_(
        status=EntryStatus.DESTROYED,
        manifest=b"",
        acks=b"",
        attempt=committed.attempt + 4,
        change_counter=0,
        change_signature=b"",
    )
    assert _check(world, client.key, tombstone) is None
    keeper = world.honest[3].keeper
    assert keeper is not None
    keeper.on_accept(client.key, tombstone.to_bytes())
    assert keeper.take_writes() == ()
    assert world.honest[3].rows[client.key].share
    # The tombstone the fleet makes of version 2 keeps the owner's DELETE of version 1:
    # that one erases.
    kept = tombstone.with_(
        change_counter=committed.change_counter, change_signature=committed.change_signature
    )
    assert _check(world, client.key, kept) is None
    keeper.on_accept(client.key, kept.to_bytes())
    assert [w.row.share for w in keeper.take_writes()] == [b""]


def test_a_node_that_missed_only_the_delete_request_erases_on_the_value(
    world: Simulation,
) -> None:
    """Node 3 never got the client's delete request, but its acceptor takes the deleted
    value, which carries the owner's DELETE: verified with its own M, it erases. The same
    value with a forged statement is refused and erases nothing."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    recovered = client.recover(b"old")
    assert recovered is not None
    world.reachable = {0, 1, 2, 4}
    assert client.delete(recovered[0]) == 4
    deleted = world.replicated(0, client.key)
    assert deleted.status == EntryStatus.EMPTY and deleted.version == 1
    keeper = world.honest[3].keeper
    assert keeper is not None
    forged = deleted.with_(change_signature=bytes(64))
    assert _check(world, client.key, forged) is not None
    keeper.on_accept(client.key, forged.to_bytes())
    assert keeper.take_writes() == ()
    world.reachable = None
    world.settle(5.0)
    assert world.replicated(3, client.key) == deleted
    row = world.honest[3].rows[client.key]
    assert row.share == b"" and row.delete_counter == deleted.change_counter


def test_a_tombstone_below_a_reset_this_node_holds_is_taken(world: Simulation) -> None:
    """Seed 7000233: the owner's reset for the L-th attempt was accepted by one node only,
    and the fleet committed the tombstone without it; that node refused the tombstone for
    ever as "the reset went back". A tombstone is taken below a held reset (it only ends
    the entry sooner, as an attempt counter pushed up by L does); a live value is not."""
    client = ThresholdClient(world)
    client.register(b"right", OLD_RK)
    assert client.recover(b"wrong") is None
    assert client.recover(b"right") is not None
    held = world.replicated(0, client.key)
    assert held.reset_attempt == held.attempt == 2
    before_reset = held.with_(reset_attempt=0, reset_hash=b"", reset_signature=b"")
    tombstone = before_reset.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"", attempt=4)
    assert _check(world, client.key, tombstone, slot=0) is None
    assert _check(world, client.key, before_reset.with_(attempt=3), slot=0) == (
        "the reset went back"
    )


def test_a_laggard_takes_a_registration_over_a_tombstone_it_missed_and_erases_nothing(
    world: Simulation,
) -> None:
    """Sim seed 9101198: nodes 3 and 4 cut off while the entry is guessed to destruction
    and registered again. A registration over a tombstone carries no owner statement; the
    laggard takes it on its t acknowledgements, and acts on nothing in it (before session
    56 it needed the new window to start L attempts or more after the held one, or the
    owner's statement; an earlier start is taken too now)."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    world.reachable = {0, 1, 2}
    for _ in range(world.shape.guess_limit):
        assert client.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):  # the next request writes the tombstone
        client.recover(b"wrong")
    assert world.replicated(0, client.key).status == EntryStatus.DESTROYED
    assert client.register(b"new", NEW_RK, version=2)[1] == 3
    laggard = world.replicated(3, client.key)
    committed = world.replicated(0, client.key)
    assert (laggard.status, laggard.version) == (EntryStatus.LIVE, 1)
    assert (committed.status, committed.version) == (EntryStatus.LIVE, 2)
    assert not committed.change_signature  # a tombstone keeps no owner statement
    assert committed.reset_attempt - laggard.reset_attempt == world.shape.guess_limit
    assert _check(world, client.key, committed) is None
    early = committed.with_(reset_attempt=committed.reset_attempt - 1)
    assert _check(world, client.key, early) is None
    keeper = world.honest[3].keeper
    assert keeper is not None
    row = world.honest[3].rows[client.key]
    keeper.on_accept(client.key, committed.to_bytes())
    assert keeper.take_writes() == ()
    assert keeper.row(client.key) == row
    world.reachable = None
    world.settle(5.0)
    for slot in (3, 4):
        assert world.replicated(slot, client.key) == world.replicated(0, client.key)
    recovered = client.recover(b"new")
    assert recovered is not None and recovered[1] == NEW_RK


def test_a_tombstone_is_taken_over_a_sibling_attempt_with_a_later_clock(
    world: Simulation,
) -> None:
    """Sim seed 9201842: a node held a sibling of the committed last attempt (the same
    number, another request, a later client clock) that lost its round; the tombstone
    built on the committed one has the earlier clock, and the node refused it for good.
    A tombstone of the held version is taken whatever the clock; a live value still may
    not take the clock back."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    for _ in range(world.shape.guess_limit):
        assert client.recover(b"wrong") is None
    committed = world.replicated(0, client.key)
    assert committed.status == EntryStatus.LIVE
    assert committed.attempts_used == world.shape.guess_limit
    sibling = committed.with_(
        attempt_hash=bytes(32), attempt_client_time_ms=committed.attempt_client_time_ms + 75_000
    )
    tombstone = committed.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"")

    check = _checker(world, client.key)
    assert check(tombstone, sibling) is None
    assert check(committed, sibling) == "the attempt clock went down"


def test_a_signed_delete_is_taken_over_a_later_sibling_attempt(world: Simulation) -> None:
    """Sim seed 9500124: a node held a sibling attempt one further than the committed one
    (another request, which lost its round); the owner's delete, built on the committed
    attempt, has a lower attempt number, and the node refused it for good as "the
    attempt counter went down". A tombstone of the held version is taken whatever the
    sibling's number; a live value still may not take the counter back, and a delete
    still needs the owner's signature."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    recovered = client.recover(b"old")
    assert recovered is not None
    live = world.replicated(0, client.key)
    assert client.delete(recovered[0]) == world.nodes
    tombstone = world.replicated(0, client.key)
    assert tombstone.status == EntryStatus.EMPTY and tombstone.version == live.version
    sibling = live.with_(
        attempt=tombstone.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=live.attempt_client_time_ms + 75_000,
    )

    def check(proposed: ThresholdState) -> str | None:
        return check_threshold_value(
            FLEET_ID,
            client.key,
            world.shape,
            proposed,
            sibling.to_bytes(),
            node_keys=world.node_keys,
        )

    assert check(tombstone) is None
    assert check(live) == "the attempt counter went down"
    unsigned = tombstone.with_(change_signature=b"")
    assert check(unsigned) == "a delete the owner did not sign"


def test_a_later_start_of_the_same_commit_is_taken_over_a_bare_sibling(
    world: Simulation,
) -> None:
    """Sim seeds 9300379 and 9301925: a password change's commit starts the new version's
    window at the attempt it is applied at. A node took the commit applied at an earlier
    attempt (a sibling that lost its round); the committed one starts later, with no owner
    reset, and the node refused it, and every later value of that version, as "a reset
    without the owner's signature". A held commit with nothing since takes the later
    start; once the node counted an attempt of the version, or holds the owner's reset,
    an unsigned later start is still refused."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    assert client.recover(b"wrong") is None
    recovered = client.recover(b"old")
    assert recovered is not None
    client.change_password(recovered[0], b"new", NEW_RK)
    committed = world.replicated(0, client.key)
    assert (committed.version, committed.attempt, committed.reset_attempt) == (2, 2, 2)
    assert not committed.attempt_hash and not committed.reset_signature
    sibling = committed.with_(attempt=1, reset_attempt=1)

    check = _checker(world, client.key)
    assert check(committed, sibling) is None
    assert check(committed.with_(attempt=3, attempt_hash=bytes(32)), sibling) is None
    counted = sibling.with_(attempt=2, attempt_hash=bytes(32))
    later = committed.with_(attempt=3, reset_attempt=3)
    assert check(later, counted) == "a reset without the owner's signature"
    reset = sibling.with_(reset_signature=bytes(64))
    assert check(committed, reset) == "a reset without the owner's signature"


def test_an_earlier_start_of_the_same_commit_is_taken_over_a_bare_sibling(
    world: Simulation,
) -> None:
    """Sim seed 10112960, the other way round: a node accepted, alone, the password
    change applied over a guess that was never committed (attempt 9, window from 9); the
    change applied at attempt 8 was chosen, and the node refused it, and every later value
    of the entry, as "the attempt counter went down". A held commit with nothing since
    takes a value of its version whose window starts earlier (the chosen commit, or a
    value built on it, whose counter and clock are below the held ones); once the node
    counted an attempt of the version, or holds the owner's reset, the counter, the clock
    and the window start never go back."""
    client, _, _, committed = _changed(world)
    assert committed.attempt == committed.reset_attempt and not committed.attempt_hash
    lost = committed.with_(
        attempt=committed.attempt + 1,
        reset_attempt=committed.attempt + 1,
        attempt_client_time_ms=committed.attempt_client_time_ms + 75_000,
    )

    check = _checker(world, client.key)
    guess = committed.with_(
        attempt=committed.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=committed.attempt_client_time_ms + 1,
    )
    assert check(committed, lost) is None  # refused before the fix
    assert check(guess, lost) is None  # built on the chosen commit
    counted = lost.with_(attempt=lost.attempt + 1, attempt_hash=bytes(32))
    assert check(committed, counted) == "the attempt counter went down"
    assert check(guess.with_(attempt=counted.attempt), counted) == "the attempt clock went down"
    signed = lost.with_(reset_signature=bytes(64))
    assert check(committed, signed) == "the attempt counter went down"
    assert check(committed.with_(acks=b""), lost) == (
        "the acknowledgements changed within a version"
    )


def test_the_same_commit_over_a_sibling_with_a_later_clock_is_taken(world: Simulation) -> None:
    """The third way of the two above, which no seed has found yet: the same change
    applied over two siblings of the version before at one attempt number (two guesses
    that were never committed), or over a sibling a number further on, whose clock is
    later than the chosen commit's. A commit keeps the clock of the value it is applied
    over, so the held commit's clock is later and the chosen one looked like "the attempt
    clock went down". Over a held commit with nothing since, a live value of its version
    is not compared on counter, clock or window start; once the node counted an attempt
    of the version, the clock never goes back."""
    client, _, _, committed = _changed(world)

    check = _checker(world, client.key)
    clock = committed.attempt_client_time_ms
    same_start = committed.with_(attempt_client_time_ms=clock + 500)
    assert check(committed, same_start) is None  # "the attempt clock went down" before
    later = committed.with_(
        attempt=committed.attempt + 1, reset_attempt=committed.attempt + 1
    )  # applied over a later sibling whose clock is below the held commit's
    assert check(later, same_start) is None
    counted = same_start.with_(attempt=committed.attempt + 1, attempt_hash=bytes(32))
    guess = committed.with_(attempt=counted.attempt + 1, attempt_hash=bytes(32))
    assert check(guess, counted) == "the attempt clock went down"


def test_a_password_change_is_taken_over_a_later_sibling_attempt(world: Simulation) -> None:
    """Sim seed 9507211: a node held a sibling attempt one further than the committed one
    (another request, which lost its round); the owner's password change, built on the
    committed attempt, starts version 2 at a lower attempt number, and the node refused it,
    and every later value of the entry, as "the attempt counter went down". A later
    version is not compared with the held version's counter or clock (it is taken on its
    own evidence); within a version they still may not go back."""
    client, _, live, commit = _changed(world)
    sibling = live.with_(
        attempt=live.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=live.attempt_client_time_ms + 75_000,
    )

    check = _checker(world, client.key)
    assert check(commit, sibling) is None
    assert check(live, sibling) == "the attempt counter went down"
    unsigned = commit.with_(change_signature=b"")
    assert check(unsigned, sibling) is None  # on its t acknowledgements (session 56)
    counted = commit.with_(attempt=commit.attempt + 1, attempt_hash=bytes(32))
    assert check(commit, counted) == "the attempt counter went down"


def _forge(world: Simulation, slot: int, key: bytes, state: ThresholdState) -> bool:
    """The hostile node (the last slot) sends honest node `slot` an Accept of `state`
    above its promise; whether it was accepted."""
    record = world.honest[slot].disk.get(key)
    assert record is not None
    hostile = world.plan.nodes - 1
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    accept = Accept(b"forged", key, record.promised_round + 1, hostile, value, hostile, False)
    answer = world.inject(hostile, slot, accept)
    assert isinstance(answer, Accepted)
    return answer.ok


def test_a_hostile_proposer_cannot_take_the_count_back_across_a_version() -> None:
    """The attack on the rule above. A hostile proposer (node 4 of 5) holds the owner's
    statement of a password change (it is in the committed value) and any attempt it
    invents. Node 0 staged its share of version 2 but was cut off from its peers while the
    change committed: the attacker makes it accept an attempt of version 1 further on (a
    value any proposer can make), then the change's commit at the lower attempt, which it
    now takes. It gains nothing: node 0's count of version 2 starts at zero there as
    anywhere (a new share, a new window), its version-1 share is gone, no value takes it
    back to version 1, and once it counts attempts of version 2 no value of version 2 or
    later takes that count back: every node stops at L."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    assert client.register(b"old", OLD_RK)[1] == 4
    assert client.recover(b"wrong") is None
    recovered = client.recover(b"old")
    assert recovered is not None
    world.reachable = {1, 2, 3, 4}
    client.change_password(recovered[0], b"new", NEW_RK)
    commit = world.replicated(1, client.key)
    held = world.replicated(0, client.key)
    assert (held.version, commit.version, commit.attempt) == (1, 2, held.attempt)
    further = held.with_(
        attempt=held.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=held.attempt_client_time_ms + 1,
    )
    assert _forge(world, 0, client.key, further)
    assert _forge(world, 0, client.key, commit)  # refused before the fix
    node0 = world.honest[0].rows[client.key]
    assert (node0.version, node0.count, node0.reset_at) == (2, 0, commit.reset_attempt)
    assert not _forge(world, 0, client.key, further)  # the version went down
    world.reachable = None
    world.settle(5.0)
    assert world.replicated(0, client.key) == world.replicated(1, client.key)
    # Every honest node counts its attempts of version 2: no value takes a count back.
    assert client.recover(b"wrong") is None
    counted = {slot: world.honest[slot].rows[client.key] for slot in range(4)}
    assert all((row.version, row.count) == (2, 1) for row in counted.values())
    now = world.replicated(1, client.key)
    for forged in (
        commit,  # the counter back to the commit
        further,  # back to version 1
        now.with_(reset_attempt=now.attempt),  # a reset without the owner's signature
        now.with_(version=3),  # a later version without the owner or t nodes
        # (A later delete, which holds no key, is taken since seed 9709511, as a later
        # tombstone always was, and moves no count:
        # test_a_hostile_proposer_deleting_a_later_version_gains_nothing.)
    ):
        for slot in range(4):
            assert not _forge(world, slot, client.key, forged)
    _every_node_stops_at_l(world, client, counted)


def test_a_hostile_proposer_moving_a_bare_commits_window_start_gains_nothing() -> None:
    """The attack on the rule above. A hostile proposer (node 4 of 5) moves node 0's held
    commit of version 2, with nothing since, to a later window start (taken since seeds
    9300379 and 9301925), back to an earlier one (taken since seed 10112960), and to a
    later clock and back (`_over_a_bare_commit`), as often as it likes. It gains
    nothing: node 0's row of version 2 counts nothing either way and moves only with
    attempts it answers; once the version counted an attempt, no copy is taken again;
    and every node stops at L."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client, _, _, commit = _changed(world)
    later = commit.with_(
        attempt=commit.attempt + 2,
        reset_attempt=commit.attempt + 2,
        attempt_client_time_ms=commit.attempt_client_time_ms + 1,
    )
    later_clock = commit.with_(attempt_client_time_ms=commit.attempt_client_time_ms + 9_000)
    row = world.honest[0].rows[client.key]
    assert (row.version, row.count) == (2, 0)
    for _ in range(2):
        assert _forge(world, 0, client.key, later)
        assert _forge(world, 0, client.key, commit)  # refused before the fix
        assert _forge(world, 0, client.key, later_clock)
        assert _forge(world, 0, client.key, commit)  # refused before `_over_a_bare_commit`
    assert world.honest[0].rows[client.key] == row
    world.settle(5.0)
    assert client.recover(b"wrong") is None
    counted = {slot: world.honest[slot].rows[client.key] for slot in range(4)}
    assert all((row.version, row.count) == (2, 1) for row in counted.values())
    for forged in (commit, later, later_clock):
        for slot in range(4):
            assert not _forge(world, slot, client.key, forged)
    _every_node_stops_at_l(world, client, counted)


def _every_node_stops_at_l(
    world: Simulation, client: ThresholdClient, counted: dict[int, NodeShare]
) -> None:
    """The honest nodes' rows are still `counted` (one wrong guess each), and the next
    L - 1 wrong guesses bring every one of them to L, after which none evaluates."""
    assert {slot: world.honest[slot].rows[client.key] for slot in counted} == counted
    for _ in range(world.shape.guess_limit - 1):
        assert client.recover(b"wrong") is None
    assert all(row.count == world.shape.guess_limit for row in _rows(world, client.key))
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # destroyed: no evaluation past L


def _rows(world: Simulation, key: bytes) -> list[NodeShare]:
    return [n.rows[key] for n in world.honest.values() if key in n.rows]


def _evaluate_at_node0(
    world: Simulation, client: ThresholdClient, version: int, password: bytes = b"guess"
) -> Message:
    """Node 0's answer to an evaluation of `password` for `version` of the client's entry."""
    blinded = oprf.blind(password)[1]
    return world.request(
        0, Op.EVALUATE, EvaluateRequest(client.account, client.entry, version, blinded, 10**12)
    )


def _racing_registrations(
    limit: int = 4, hostile: int = 0
) -> tuple[Simulation, ThresholdClient, ThresholdState, Simulation]:
    """A world where the owner registered version 1, and the commit of a second device's
    registration of the same version, made at the same time (here in a second world with
    the same node keys, returned last: its nodes hold that M's shares): t nodes staged its
    share too, so it carries t acknowledgements, and it lost the round."""
    world = threshold_world(5, limit, hostile, seed=12, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    other = threshold_world(5, limit, hostile, seed=13, leader=False, attacker=lambda *_: None)
    rival = ThresholdClient(other)
    rival.register(b"rival", NEW_RK)
    lost = other.replicated(0, rival.key)
    chosen = world.replicated(0, client.key)
    assert (lost.version, lost.status) == (chosen.version, chosen.status)
    assert lost.manifest != chosen.manifest
    return world, client, lost, other


def test_the_chosen_registration_is_taken_over_a_bare_sibling_registration() -> None:
    """Sim seed 9507654: two devices registered version 1 at once; two nodes of five
    accepted the commit that lost its round and refused the chosen one as "the manifest
    changed without the owner's signature", then every later value of the entry (the
    owner's delete, signed over the chosen M, did not verify with the sibling's pk_auth),
    for good. Over a held commit with nothing since, another M of the same version is
    taken on its t acknowledgements; without them, or once the held version counted an
    attempt or holds an owner reset, it is refused as before."""
    world, client, lost, _ = _racing_registrations()
    chosen = world.replicated(0, client.key)

    check = _checker(world, client.key)
    assert check(chosen, lost) is None
    assert check(chosen.with_(acks=lost.acks), lost) == (
        "a new version without t nodes' acknowledgement that they keep their share"
    )
    counted = lost.with_(attempt=1, attempt_hash=bytes(32), attempt_client_time_ms=1)
    assert check(
        chosen.with_(attempt=1, attempt_hash=bytes(32), attempt_client_time_ms=1), counted
    ) == ("the manifest changed without the owner's signature")
    reset = lost.with_(reset_signature=bytes(64))
    assert check(chosen, reset) == "the manifest changed without the owner's signature"


def test_a_hostile_proposer_swapping_the_registration_gets_no_evaluation_of_the_old_share() -> None:
    """The attack on the rule above. A hostile proposer (node 4 of 5) holds the commit of
    a registration that lost. Once the chosen one counted an attempt, no node takes the
    other M. Over the chosen commit with nothing since, a node takes it, and the attacker
    gains nothing it could not do already (it can end the entry: L invented attempts,
    then the tombstone): the node's share is of the M it held, so it evaluates nothing
    for the other M, and no count moves."""
    world, client, lost, _ = _racing_registrations(hostile=1)
    chosen = world.replicated(0, client.key)
    assert _forge(world, 0, client.key, lost)  # refused before the fix
    assert world.replicated(0, client.key) == lost
    rows = _rows(world, client.key)
    assert all(row.manifest == chosen.manifest and row.count == 0 for row in rows)
    answer = _evaluate_at_node0(world, client, 1)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.NOT_REGISTERED
    assert _rows(world, client.key) == rows

    world, client, lost, _ = _racing_registrations(hostile=1)
    assert client.recover(b"wrong") is None
    rows = _rows(world, client.key)
    assert all(row.count == 1 for row in rows)
    for slot in range(4):
        assert not _forge(world, slot, client.key, lost)
        assert not _forge(world, slot, client.key, lost.with_(attempt=5))
    assert _rows(world, client.key) == rows
    assert client.recover(b"old") is not None


def test_a_node_that_staged_both_registrations_keeps_the_chosen_share_when_swapped() -> None:
    """The same attack on a node that staged both devices' shares before the chosen
    commit reached it. Taking the chosen M drops the other staged share, so the swapped
    value finds nothing to promote and the node keeps the chosen share. Keeping the other
    staged share for a node that took the losing commit first (sim seeds 10371036,
    10451914, which then wait for the owner's delivery) was tried twice and reverted: the
    node cannot tell that case from this one, and here every honest node would swap its
    share for the loser's, erasing the key the owner's devices use."""
    world, client, lost, other = _racing_registrations(hostile=1)
    chosen = world.replicated(0, client.key)
    mine = world.honest[0].rows[client.key]
    rival = other.honest[0].rows[client.key]
    assert (mine.manifest, rival.manifest) == (chosen.manifest, lost.manifest)
    both = [StagedShare(mine.share, mine.manifest), StagedShare(rival.share, rival.manifest)]
    _stored(world, client.key, NodeShare(0, b"", b"", [], staged=both))
    assert _forge(world, 0, client.key, chosen)  # the chosen commit reaches node 0
    assert world.honest[0].rows[client.key].share == mine.share
    assert _forge(world, 0, client.key, lost)  # the attacker's swap, over a bare commit
    held = world.honest[0].rows[client.key]
    assert (held.manifest, held.share, held.staged) == (chosen.manifest, mine.share, [])
    evaluated = _evaluate_at_node0(world, client, 1, b"rival")
    assert isinstance(evaluated, ErrorResponse), evaluated


def test_a_node_holding_the_lost_registrations_share_takes_the_chosen_ones_when_delivered() -> None:
    """The no-share window the rule above leaves, closed by `_orphaned`: node 0 holds the
    chosen value of version 1 while its share is of the M that lost (here the hostile
    proposer swapped the values, the same state as a node that accepted the losing commit
    alone). Its share counted nothing and is live nowhere at the node, so the device's
    late delivery of the held value's share is taken, erasing the other, and the node
    evaluates again. Before, it refused ("already holds another share for it") until the
    owner's next password change."""
    world, client, lost, other = _racing_registrations(hostile=1)
    assert _forge(world, 0, client.key, lost)
    chosen_row = world.honest[0].rows[client.key]
    assert chosen_row.manifest != lost.manifest and chosen_row.count == 0
    rival_row = other.honest[0].rows[client.key]
    assert rival_row.manifest == lost.manifest
    delivery = RegisterShareRequest(
        client.account, client.entry, lost.manifest, rival_row.share, b"", 0
    )
    answer = world.request(0, Op.REGISTER_SHARE, delivery)
    assert not isinstance(answer, ErrorResponse), answer
    taken = world.honest[0].rows[client.key]
    assert (taken.version, taken.manifest, taken.share, taken.count) == (
        1,
        lost.manifest,
        rival_row.share,
        0,
    )
    evaluated = _evaluate_at_node0(world, client, 1, b"rival")
    assert isinstance(evaluated, EvaluateResponse), evaluated
    assert world.honest[0].rows[client.key].count == 1
    # A share that counted an attempt does not give way: the same delivery of the other
    # M's share back is refused.
    again = RegisterShareRequest(
        client.account, client.entry, chosen_row.manifest, chosen_row.share, b"", 0
    )
    assert isinstance(world.request(0, Op.REGISTER_SHARE, again), ErrorResponse)
    assert world.honest[0].rows[client.key].share == rival_row.share


def _deleted_after(world: Simulation, client: ThresholdClient, history: str) -> None:
    """Nodes 3 and 4 cut off while version 1 ends (`history`: guessed to its tombstone,
    deleted, or changed to version 2), version 2 is made (a registration over the
    tombstone or after the delete, or the change itself), and the owner deletes version 2."""
    client.register(b"old", OLD_RK)
    world.reachable = {0, 1, 2}
    if history == "tombstone":
        for _ in range(world.shape.guess_limit):
            assert client.recover(b"wrong") is None
        with pytest.raises(AuthenticationFailed):  # the next request writes the tombstone
            client.recover(b"wrong")
        assert client.register(b"new", NEW_RK, version=2)[1] == 3
    else:
        recovered = client.recover(b"old")
        assert recovered is not None
        if history == "delete":
            assert client.delete(recovered[0]) == 3
            assert client.register(b"new", NEW_RK, version=2)[1] == 3
        else:
            assert client.change_password(recovered[0], b"new", NEW_RK)[1] == 3
    recovered = client.recover(b"new")
    assert recovered is not None
    assert client.delete(recovered[0]) == 3


@pytest.mark.parametrize("history", ["tombstone", "delete", "change"])
def test_a_laggard_takes_the_delete_of_a_version_it_never_held_and_erases_nothing(
    world: Simulation, history: str
) -> None:
    """Sim seed 9709511: a node cut off while version 1 was destroyed, registered again as
    version 2 and deleted by its owner refused the delete for good, as "a delete of a
    version this node never held": the owner signed it with version 2's pk_auth, which
    the node never saw, and nothing in the value retires version 1 (a tombstone keeps no
    statement, and the delete's statement replaced the one a registration after a delete
    keeps). A value holding no key at a later version is taken, as a later tombstone is,
    and the node acts on nothing in it: its version-1 row stays as it was."""
    client = ThresholdClient(world)
    _deleted_after(world, client, history)
    laggard = world.replicated(3, client.key)
    committed = world.replicated(0, client.key)
    assert (laggard.status, laggard.version) == (EntryStatus.LIVE, 1)
    assert (committed.status, committed.version) == (EntryStatus.EMPTY, 2)
    assert committed.change_signature  # the owner's DELETE of version 2, over its M
    assert _check(world, client.key, committed) is None  # refused before the fix
    keeper = world.honest[3].keeper
    assert keeper is not None
    rows = {slot: world.honest[slot].rows[client.key] for slot in (3, 4)}
    assert all(row.version == 1 and row.share for row in rows.values())
    keeper.on_accept(client.key, committed.to_bytes())
    assert keeper.take_writes() == ()
    world.reachable = None
    world.settle(10.0)
    for slot in (3, 4):
        assert world.replicated(slot, client.key) == committed
        assert world.honest[slot].rows[client.key] == rows[slot]
    # The owner registers again: every node takes version 3 and its share of it.
    assert client.register(b"third", NEW_RK, version=3)[1] == world.nodes
    recovered = client.recover(b"third")
    assert recovered is not None and recovered[1] == NEW_RK


def test_a_hostile_proposer_deleting_a_later_version_gains_nothing() -> None:
    """The attack on the rule above. A hostile proposer (node 4 of 5) sends honest nodes a
    forged delete of version 2 (no such version exists) while the entry is live at
    version 1, after one counted attempt. A node takes it, as it already took a forged
    tombstone of version 2 and then an empty value over that tombstone (the two steps the
    rule shortens, shown first). What the attacker gains is what a forged tombstone gives
    it already (the entry ends at that node): a key-less value carrying a manifest or
    acknowledgements is refused; the node erases nothing and evaluates nothing on it; no
    value brings version 1 back, with its count or with fewer; no live version follows
    without t nodes' acknowledgements; and no honest node's count of version 1 moves."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    registration, _ = client.register(b"old", OLD_RK)
    assert client.recover(b"wrong") is None
    live = world.replicated(0, client.key)
    rows = _rows(world, client.key)
    assert all((row.version, row.count) == (1, 1) for row in rows)
    deleted = _delete_of(live, bytes(64)).with_(version=2)  # no key can check it: forged
    tombstone = deleted.with_(
        status=EntryStatus.DESTROYED,
        attempt=live.attempt + 4,
        change_counter=0,
        change_signature=b"",
    )
    # What a proposer could do before: a later tombstone, then an empty value over it.
    assert _forge(world, 1, client.key, tombstone)
    assert _forge(world, 1, client.key, deleted.with_(attempt=tombstone.attempt))
    # The new path: no key may ride on it.
    for smuggled in (
        deleted.with_(manifest=live.manifest),
        deleted.with_(acks=live.acks),
        deleted.with_(manifest=live.manifest, acks=live.acks),
    ):
        assert not _forge(world, 0, client.key, smuggled)
    assert _forge(world, 0, client.key, deleted)  # refused before the fix
    assert world.replicated(0, client.key) == deleted
    assert _rows(world, client.key) == rows  # nothing erased
    answer = _evaluate_at_node0(world, client, 1)
    # Version 1 read, version 2 deleted since: the entry changed (nothing to evaluate).
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.STALE_MANIFEST
    assert _rows(world, client.key) == rows  # nothing evaluated, no count moved
    # Node 0's round for that request chose the forged value (node 1 takes it over its own
    # empty value of version 2 once node 0's repair writes it above node 1's promise, and
    # node 4 is the attacker's): the attacker ended the entry, which its forged tombstone
    # does as well.
    world.settle(3.0)
    assert world.replicated(1, client.key) == deleted
    assert len(registration.shares) == 1  # the attacker holds one share of k, t = 3
    second, third = _versions_elsewhere()
    for forged in (
        live,  # version 1 back, with its count
        live.with_(attempt=live.attempt + 1, reset_attempt=live.attempt + 1),  # count reset
        second,  # the deleted version back to life, even with t acknowledgements
        third.with_(acks=b""),  # a later version without t acknowledgements
    ):
        for slot in (0, 1):
            assert not _forge(world, slot, client.key, forged)
    assert _rows(world, client.key) == rows


def _versions_elsewhere() -> tuple[ThresholdState, ThresholdState]:
    """Live values of versions 2 and 3 made in a second world with the same node keys
    (password changes): well-formed, each with t nodes' acknowledgements, never made in
    the world attacked."""
    other = threshold_world(5, 4, 1, seed=13, leader=False, attacker=lambda *_: None)
    rival = ThresholdClient(other)
    rival.register(b"one", NEW_RK)
    made = []
    for old, new in ((b"one", b"two"), (b"two", b"three")):
        recovered = rival.recover(old)
        assert recovered is not None
        assert rival.change_password(recovered[0], new, NEW_RK)[1] >= 3
        made.append(other.replicated(0, rival.key))
    assert [(v.status, v.version) for v in made] == [(EntryStatus.LIVE, 2), (EntryStatus.LIVE, 3)]
    return made[0], made[1]


def _signed_delete(
    client: ThresholdClient, export_key: bytes, live: ThresholdState
) -> ThresholdState:
    """The owner's delete of the live value `live`, as a node applies the request: signed
    over its M with the owner's key, never committed in the world it is made in."""
    statement = owner.OwnerStatement(
        owner.StatementKind.DELETE,
        FLEET_ID,
        client.account,
        client.entry,
        live.version,
        1,
        owner.payload_hash(live.manifest),
    )
    return _delete_of(live, owner.sign_statement(export_key, statement))


def _delete_of(live: ThresholdState, signature: bytes) -> ThresholdState:
    """The owner's delete of `live` as a node applies it, under `signature`."""
    return live.with_(
        status=EntryStatus.EMPTY,
        manifest=b"",
        acks=b"",
        attempt_hash=b"",
        reset_attempt=live.attempt,
        reset_hash=b"",
        reset_signature=b"",
        change_counter=1,
        change_signature=signature,
    )


def _changed_and_deleted(
    world: Simulation,
) -> tuple[ThresholdClient, ThresholdState, ThresholdState, ThresholdState]:
    """The owner recovers, then changes the password (committed: version 2) and, from
    another device at the same time, deletes version 1: (client, the live value both were
    built on, the change's commit, the delete)."""
    client, export_key, live, change = _changed(world)
    return client, live, change, _signed_delete(client, export_key, live)


def _changed(world: Simulation) -> tuple[ThresholdClient, bytes, ThresholdState, ThresholdState]:
    """The owner registers, recovers, then changes the password (committed: version 2,
    nothing since): (client, the owner's export key, version 1's live value, the change's
    commit)."""
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    recovered = client.recover(b"old")
    assert recovered is not None
    live = world.replicated(0, client.key)
    client.change_password(recovered[0], b"new", NEW_RK)
    change = world.replicated(0, client.key)
    assert (change.status, change.version, change.attempt) == (EntryStatus.LIVE, 2, live.attempt)
    return client, recovered[0], live, change


def test_the_chosen_delete_is_taken_over_a_bare_password_change_it_raced(
    world: Simulation,
) -> None:
    """Sim seed 10007660: node 1 of 3, the leader, accepted the owner's password change
    (version 2) alone; the owner's delete of version 1, built on the same live value, won
    the next round on the other two, and was committed again and again. Node 1 refused it,
    and every later value of the entry, as "the version went down", for good. Over a
    held commit with nothing since, a value of the version before that holds no key (the
    delete, or a tombstone) is taken, and the node acts on nothing in it; once the held
    version counted an attempt or holds an owner reset, or two versions down, or a live
    value of the version before, it is refused as before."""
    client, live, change, delete = _changed_and_deleted(world)

    check = _checker(world, client.key)
    assert check(delete, live) is None  # the owner's delete of version 1, as signed
    assert check(delete, change) is None  # refused before the fix
    tombstone = delete.with_(
        status=EntryStatus.DESTROYED,
        attempt=live.attempt + world.shape.guess_limit,
        change_counter=0,
        change_signature=b"",
    )
    assert check(tombstone, change) is None
    rows = {slot: world.honest[slot].rows[client.key] for slot in range(world.nodes)}
    assert all(row.version == 2 and row.share for row in rows.values())
    keeper = world.honest[1].keeper
    assert keeper is not None
    for taken in (delete, tombstone):
        keeper.on_accept(client.key, taken.to_bytes())
        assert keeper.take_writes() == ()  # nothing erased or promoted
    assert world.honest[1].rows[client.key] == rows[1]
    went_down = "the version went down"
    counted = change.with_(
        attempt=change.attempt + 1, attempt_hash=bytes(32), attempt_client_time_ms=1
    )
    assert check(delete, counted) == went_down
    assert check(delete, change.with_(reset_signature=bytes(64))) == went_down
    assert check(delete, change.with_(version=3)) == went_down  # two versions down
    assert check(live, change) == went_down  # a live value of the version before
    # Nothing rides on the key-less value, and the version before never lives again.
    assert check(delete.with_(manifest=live.manifest), change) is not None
    assert check(delete.with_(acks=live.acks), change) is not None
    assert check(live, delete) == "an entry brought back to life without a new version"
    # The held version comes back only on its t acknowledgements.
    assert check(change, delete) is None
    assert check(change.with_(acks=b""), delete) == (
        "a new version without t nodes' acknowledgement that they keep their share"
    )


def _change_and_a_forged_delete() -> tuple[
    Simulation, ThresholdClient, ThresholdState, ThresholdState, ThresholdState
]:
    """5 nodes, node 4 hostile: the owner changed the password (committed: version 2, with
    nothing since); (world, client, version 1's live value, the change, the hostile
    node's forged delete of version 1)."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client, export_key, live, change = _changed(world)
    forged = _signed_delete(client, export_key, live).with_(change_signature=bytes(64))
    return world, client, live, change, forged


def test_a_hostile_proposer_taking_a_password_change_back_gains_nothing() -> None:
    """The attack on the rule above. A hostile proposer (node 4 of 5) sends honest nodes
    an empty value of version 1, under a forged delete, over the owner's committed change
    to version 2 with nothing since. A node takes it, and gains the attacker nothing it
    cannot do already (a tombstone of version 2 needs no statement and ends the entry):
    it erases nothing and evaluates nothing; version 1 never lives again; version 2
    comes back only on its t acknowledgements, with the share and count each node kept;
    and once version 2 counted an attempt no node takes version 1 again, so every node
    still stops at L."""
    world, client, live, change, forged = _change_and_a_forged_delete()
    assert change.version == 2
    rows = _rows(world, client.key)
    assert all((row.version, row.count) == (2, 0) for row in rows)
    assert _forge(world, 0, client.key, forged)  # refused before the fix
    assert world.replicated(0, client.key) == forged
    assert _rows(world, client.key) == rows  # nothing erased
    answer = _evaluate_at_node0(world, client, 2)
    assert isinstance(answer, ErrorResponse)
    assert _rows(world, client.key) == rows  # nothing evaluated, no count moved
    for slot in range(4):
        assert not _forge(world, slot, client.key, live)  # version 1 never lives again
    assert not _forge(world, 0, client.key, change.with_(acks=b""))
    # Version 2 back at a lower count: taken on its acknowledgements, but each node's
    # count of it is its own row's, which no value moves.
    assert _forge(world, 0, client.key, change.with_(attempt=0, reset_attempt=0))
    assert _rows(world, client.key) == rows
    assert _forge(world, 0, client.key, change)  # back to the committed value
    world.settle(5.0)
    assert client.recover(b"wrong") is None
    counted = _rows(world, client.key)
    assert all((row.version, row.count) == (2, 1) for row in counted)
    now = world.replicated(1, client.key)
    for again in (forged, forged.with_(attempt=now.attempt, reset_attempt=now.attempt)):
        for slot in range(4):
            assert not _forge(world, slot, client.key, again)  # the version went down
    assert _rows(world, client.key) == counted
    for _ in range(world.shape.guess_limit - 1):
        assert client.recover(b"wrong") is None
    assert all(row.count == world.shape.guess_limit for row in _rows(world, client.key))
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # destroyed: no evaluation past L


def test_a_hostile_proposer_cannot_stop_the_owner_registering_after_a_password_change() -> None:
    """The attack on the rule above, on the registration side. A hostile proposer (node 4
    of 5) sends every honest node an empty value of version 1, under a forged delete,
    over the owner's committed change to version 2 with nothing since: they all take it.
    The owner then finds the entry empty and registers again, at version 2. Each honest
    node's share of the change's M counted nothing and is live nowhere it can see: it
    gives way to the registration, which every node stages and takes (before, every node
    refused: "already holds another share for it", and the entry could never be
    registered again). The change's shares are erased."""
    world, client, _, change, forged = _change_and_a_forged_delete()
    for slot in range(4):
        assert _forge(world, slot, client.key, forged)
    world.settle(5.0)
    state = world.replicated(0, client.key)
    assert (state.status, state.version) == (EntryStatus.EMPTY, 1)
    third_rk = bytes(range(32, 64))
    assert client.register(b"third", third_rk, version=2)[1] == 4  # every honest node
    registered = world.replicated(0, client.key)
    assert (registered.status, registered.version) == (EntryStatus.LIVE, 2)
    assert registered.manifest != change.manifest
    rows = _rows(world, client.key)
    assert all(
        (row.version, row.manifest, row.count) == (2, registered.manifest, 0) for row in rows
    )
    recovered_again = client.recover(b"third")
    assert recovered_again is not None and recovered_again[1] == third_rk
    # The change's value brought back is refused now: the registration counted an attempt
    # and holds the owner's reset; and no node holds the change's share any more.
    assert not any(_forge(world, slot, client.key, change) for slot in range(4))
    assert all(row.manifest == registered.manifest for row in _rows(world, client.key))


def test_only_a_share_that_counted_nothing_and_is_live_nowhere_here_gives_way() -> None:
    """The limit of `_orphaned`: a share that counted an attempt, or whose M the node
    holds live, or that was erased, never gives way to another of its version."""
    m2, m3 = b"manifest of the change", b"manifest of the registration"
    orphan = NodeShare(2, b"\x01" + bytes(32), m2, [])
    empty_v1 = ThresholdState(status=EntryStatus.EMPTY, version=1)
    assert _orphaned(orphan, empty_v1)
    assert _orphaned(orphan, ThresholdState(status=EntryStatus.LIVE, version=2, manifest=m3))
    assert not _orphaned(orphan, ThresholdState(status=EntryStatus.LIVE, version=2, manifest=m2))
    assert not _orphaned(orphan.with_(evaluated=[Evaluation(3, bytes(32))]), empty_v1)
    assert not _orphaned(orphan.with_(share=b""), empty_v1)  # erased at L: never back


def test_a_rolled_back_node_whose_orphan_gives_way_counts_the_window_as_evaluated() -> None:
    """The distrusted side of `_orphaned`. Node 0 held the chosen M's share and evaluated
    two wrong guesses with it; its store is then rolled back to a row that holds the
    other registration's share (of the M that lost, which counted nothing). When the
    device delivers the chosen share again, the orphan gives way, but the node cannot
    know what it evaluated with the chosen share before the rollback: the attempts since
    the value's reset count as evaluated, as for a node with no row. Taken with a fresh
    count, the rollback would have handed node 0 two guesses back."""
    world, client, _, other = _racing_registrations(limit=4)
    for _ in range(2):
        assert client.recover(b"wrong") is None
    chosen = world.replicated(0, client.key)
    own = world.honest[0].rows[client.key]
    assert (own.manifest, own.count) == (chosen.manifest, 2)
    orphan = other.honest[0].rows[client.key]
    assert (orphan.version, orphan.count) == (own.version, 0)
    assert _orphaned(orphan, chosen)
    world.restart_rolled_back(0, {**world.snapshot(0), client.key: orphan})
    world.settle(30)  # caught up: the value node 0 holds is the chosen one again
    assert world.replicated(0, client.key).manifest == chosen.manifest

    delivery = RegisterShareRequest(
        client.account, client.entry, chosen.manifest, own.share, b"", 0
    )
    # The first delivery asks the peers for count reports (the held value alone does not
    # say what the node may have answered); the device's next one takes the share.
    answer = world.request(0, Op.REGISTER_SHARE, delivery)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.FLEET_UNAVAILABLE
    world.settle(5)
    answer = world.request(0, Op.REGISTER_SHARE, delivery)
    assert not isinstance(answer, ErrorResponse), answer
    taken = world.honest[0].rows[client.key]
    assert (taken.manifest, taken.share) == (chosen.manifest, own.share)
    assert [(e.attempt, e.blinded_hash) for e in taken.evaluated] == [
        (1, UNKNOWN_B),
        (2, UNKNOWN_B),
    ]


def test_a_hostile_proposer_replaying_the_owners_reset_over_a_tombstone_gains_nothing() -> None:
    """The attack on `_outlived_tombstone` (sim seed 10159529's fix). A hostile proposer
    (node 4 of 5) keeps the owner's signed reset of a success (it is in the committed
    value) and makes every honest node take a tombstone whose window holds that success,
    then the reset again over it, as often as it likes. It gains nothing: no node's count
    moves, a node counts the window from the owner's success as before, and every node
    stops at L. Once the entry really is destroyed (a tombstone counted from that reset),
    the reset is refused everywhere."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"right", OLD_RK)
    before = world.replicated(0, client.key)
    assert client.recover(b"right") is not None  # attempt 1, the owner's success
    reset = world.replicated(0, client.key)
    assert (reset.attempt, reset.reset_attempt) == (1, 1) and reset.reset_signature
    limit = world.shape.guess_limit
    tombstone = before.with_(
        status=EntryStatus.DESTROYED, manifest=b"", acks=b"", attempt=before.attempt + limit
    )
    assert tombstone.reset_attempt < reset.reset_attempt <= tombstone.attempt
    assert client.recover(b"wrong") is None  # attempt 2: one count in the window from 1
    counted = {slot: world.honest[slot].rows[client.key] for slot in range(4)}
    assert all(row.count == 1 for row in counted.values())
    for _ in range(2):
        for slot in range(4):
            assert _forge(world, slot, client.key, tombstone)
            assert _forge(world, slot, client.key, reset)
    assert {slot: world.honest[slot].rows[client.key] for slot in range(4)} == counted
    world.settle(5.0)
    # The replayed reset took the attempt number back to 1, so the next request is
    # attempt 2 again, which every node answered once already with another B: refused
    # as overtaken and counted nowhere, so the device makes it again under attempt 3,
    # counted once, as any request (the attacker cost the owner a round trip).
    assert client.recover(b"wrong") is None
    assert all(
        row.count == 2 and row.count == counted[slot].count + 1
        for slot, row in ((s, world.honest[s].rows[client.key]) for s in range(4))
    )
    for _ in range(limit - 2):
        assert client.recover(b"wrong") is None
    assert all(row.count == limit for row in _rows(world, client.key))
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # no evaluation past L: the entry is destroyed
    destroyed = world.replicated(0, client.key)
    assert destroyed.status == EntryStatus.DESTROYED
    assert destroyed.reset_attempt == reset.reset_attempt
    for slot in range(4):
        assert not _forge(world, slot, client.key, reset)
    assert all(not row.share for row in _rows(world, client.key))


def test_a_value_that_drops_the_owners_reset_is_refused_so_no_laggard_is_cut_off() -> None:
    """Review s55 (F1): a hostile proposer (node 4 of 5) clears the owner's signed reset
    from a value built on it. Taken by the nodes that hold the reset, it cut a node that
    missed the reset out of the entry's rounds until the owner's next reset (the laggard
    refuses it as a reset without the owner's signature). Every node holding the reset now
    refuses it, and the laggard takes the reset itself once back."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"right", OLD_RK)
    assert client.recover(b"wrong") is None
    world.reachable = {0, 1, 2, 4}  # node 3 misses the owner's success
    assert client.recover(b"right") is not None
    reset = world.replicated(0, client.key)
    laggard = world.replicated(3, client.key)
    assert reset.reset_signature and laggard.reset_attempt < reset.reset_attempt
    dropped = reset.with_(reset_hash=b"", reset_signature=b"")
    built_on = dropped.with_(
        attempt=reset.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=reset.attempt_client_time_ms + 1,
    )
    check = _checker(world, client.key)
    for value in (dropped, built_on):
        assert check(value, reset) == "the owner's reset was dropped"
        assert check(value, laggard) == "a reset without the owner's signature"
        for slot in (0, 1, 2):
            assert not _forge(world, slot, client.key, value)
    # Another value built on the reset, keeping it, is still taken (the control).
    kept = reset.with_(
        attempt=reset.attempt + 1,
        attempt_hash=bytes(32),
        attempt_client_time_ms=reset.attempt_client_time_ms + 1,
    )
    assert check(kept, reset) is None and check(kept, laggard) is None
    world.reachable = None
    world.settle(5.0)
    assert world.replicated(3, client.key) == world.replicated(0, client.key) == reset
    assert client.recover(b"wrong") is None  # answered by every honest node, node 3 too
    world.settle(5.0)
    for slot in range(4):
        row = world.honest[slot].rows[client.key]
        assert row.evaluated_hash(reset.attempt + 1) is not None
        assert (row.reset_at, row.count) == (reset.reset_attempt, 1)


def test_a_password_change_whose_statement_a_hostile_node_cleared_is_taken_by_the_laggard() -> None:
    """Review s55's other case: a hostile proposer (node 4 of 5) clears the owner's
    statement from the password change's commit. The nodes that hold the commit take it
    (the value is the same change); node 3, which missed the change, refused it as "a new
    version without the owner's signed change" and every value after it until the owner's
    next version. The statement guarded nothing: the same value with its window moved L
    on was taken (a registration over the held version's tombstone starts there), and then
    the value itself over that bare commit. So the laggard now takes the next version on
    its t acknowledgements as it takes a later one (promoting the share of it that it had
    staged), and the owner recovers with the new password."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"old", OLD_RK)
    recovered = client.recover(b"old")
    assert recovered is not None
    world.reachable = {0, 1, 2, 4}  # node 3 misses the change
    client.change_password(recovered[0], b"new", NEW_RK)
    commit = world.replicated(0, client.key)
    laggard = world.replicated(3, client.key)
    assert (commit.version, laggard.version) == (2, 1) and commit.change_signature
    cleared = commit.with_(change_counter=0, change_signature=b"")
    check = _checker(world, client.key)
    assert check(cleared, commit) is None  # the holders took it before, as now
    assert check(cleared, laggard) is None  # refused before session 56
    limit = world.shape.guess_limit
    moved = cleared.with_(
        attempt=laggard.reset_attempt + limit, reset_attempt=laggard.reset_attempt + limit
    )
    # The second of the two steps a proposer had before (the first, the window moved L
    # on, was taken under the old rule for a registration over a tombstone: checked on
    # the parent commit by review s56b, not here, where the new rule takes it anyway).
    assert check(cleared, moved) is None
    keeper = world.honest[3].keeper
    assert keeper is not None
    row = world.honest[3].rows[client.key]
    assert row.version == 1 and len(row.staged) == 1  # it staged version 2, then was cut off
    keeper.on_accept(client.key, cleared.to_bytes())
    (write,) = keeper.take_writes()  # its staged share of the version it took, promoted
    assert (write.row.version, write.row.count) == (2, 0) and write.row.share != row.share
    for slot in (0, 1, 2):
        assert _forge(world, slot, client.key, cleared)
    world.reachable = None
    world.settle(5.0)
    assert all(world.replicated(slot, client.key) == cleared for slot in range(4))
    assert client.recover(b"old") is None
    again = client.recover(b"new")
    assert again is not None and again[1] == NEW_RK
