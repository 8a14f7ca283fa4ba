"""What a node does with a tombstone it takes, and what it takes from a peer while it
catches up (docs/threshold.md, "Counters and erasure" and "Catching up"). The scenarios
through the fleet are in tests/sim/test_settling.py."""

from __future__ import annotations

from collections.abc import Callable

from backupvault.hsm.shares import UNKNOWN_B, ShareKeeper, check_threshold_value
from backupvault.hsm.state import Evaluation, NodeShare, ThresholdState
from backupvault.protocol import EntryStatus, ErrorCode, ErrorResponse
from backupvault.sim.world import FLEET_ID, Simulation, ThresholdClient, threshold_world

LIMIT = 2


def _guessed(wrong: int) -> tuple[Simulation, ThresholdClient, ThresholdState]:
    world = threshold_world(3, LIMIT, seed=21)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    for _ in range(wrong):
        assert client.recover(b"wrong") is None
    return world, client, world.replicated(0, client.key)


def _tombstone(state: ThresholdState) -> ThresholdState:
    """The tombstone of the held version, L attempts used (as a next request makes it)."""
    return state.with_(
        status=EntryStatus.DESTROYED, manifest=b"", acks=b"", attempt=state.reset_attempt + LIMIT
    )


def _erased_on_accept(world: Simulation, client: ThresholdClient, value: ThresholdState) -> bool:
    keeper = world.honest[0].keeper
    assert keeper is not None
    keeper.on_accept(client.key, value.to_bytes())
    return [w.row.share for w in keeper.take_writes()] == [b""]


def _stored(world: Simulation, key: bytes, row: NodeShare) -> ShareKeeper:
    """Node 0's store now holds `row`: its keeper reads it from there again."""
    world.honest[0].rows[key] = row
    keeper = world.honest[0].keeper
    assert keeper is not None
    keeper._pending.pop(key, None)
    keeper._cache.pop(key, None)
    return keeper


def _erased_then_taken(
    world: Simulation, client: ThresholdClient, tombstone: ThresholdState, live: ThresholdState
) -> ShareKeeper:
    """Node 0 erased its share at L on its own count and accepted `tombstone`; it then
    takes `live`, which gives it nothing back: its share stays erased."""
    erased = world.honest[0].rows[client.key].with_(share=b"")
    keeper = _stored(world, client.key, erased)
    keeper.on_accept(client.key, tombstone.to_bytes())
    keeper.on_accept(client.key, live.to_bytes())
    assert all(not w.row.share for w in keeper.take_writes())
    assert keeper.row(client.key) == erased
    return keeper


def _check(
    world: Simulation, client: ThresholdClient, held: ThresholdState
) -> Callable[[ThresholdState], str | None]:
    """Why an acceptor holding `held` refuses a value, or None."""

    def check(value: ThresholdState) -> str | None:
        return check_threshold_value(
            FLEET_ID, client.key, world.shape, value, held.to_bytes(), node_keys=world.node_keys
        )

    return check


def test_a_tombstone_taken_at_the_own_count_of_l_erases_the_share() -> None:
    world, client, state = _guessed(LIMIT)
    assert world.honest[0].rows[client.key].count == LIMIT
    assert _erased_on_accept(world, client, _tombstone(state))


def test_a_tombstone_below_the_own_count_of_l_erases_nothing() -> None:
    world, client, state = _guessed(1)
    tombstone = _tombstone(state)
    assert (
        check_threshold_value(
            FLEET_ID, client.key, world.shape, tombstone, b"", node_keys=world.node_keys
        )
        is None
    )
    assert not _erased_on_accept(world, client, tombstone)
    assert world.honest[0].rows[client.key].share


def test_a_count_at_l_on_peers_reports_is_never_erased_on_a_tombstone() -> None:
    world, client, state = _guessed(1)
    row = world.honest[0].rows[client.key]
    assumed = [*row.evaluated, Evaluation(state.attempt + 1, UNKNOWN_B)]
    keeper = _stored(world, client.key, row.with_(evaluated=assumed))
    assert keeper.row(client.key) == world.honest[0].rows[client.key]
    assert not _erased_on_accept(world, client, _tombstone(state))


def test_a_copy_is_checked_like_an_accept() -> None:
    world = threshold_world(5, 4, seed=22)
    client = ThresholdClient(world)
    client.register(b"one", bytes(32))
    world.reachable = {0, 1, 2}
    for old, new in ((b"one", b"two"), (b"two", b"three")):
        recovered = client.recover(old)
        assert recovered is not None
        client.change_password(recovered[0], new, bytes(32))
    assert client.recover(b"wrong") is None
    committed = world.replicated(0, client.key)
    # Node 3 holds version 1: it missed two changes.
    check = _check(world, client, world.replicated(3, client.key))
    assert committed.version == 3
    # A live version further on is taken on its t acknowledgements.
    assert check(committed) is None
    stripped = committed.with_(acks=b"")
    assert "acknowledgement" in (check(stripped) or "")
    # What goes back against the held value, or fails its own checks, is refused: a count
    # reset, and a reset the owner did not sign.
    mine = committed
    check = _check(world, client, mine)
    reset = mine.with_(attempt=mine.reset_attempt)
    assert "went down" in (check(reset) or "")
    unsigned = mine.with_(reset_attempt=mine.attempt, reset_signature=bytes(64))
    assert "did not sign" in (check(unsigned) or "")


def test_a_tombstone_that_lost_to_the_owners_success_at_its_attempt_gives_way() -> None:
    """Sim seeds 10043566 and 10045090: node 0 counts the owner's right password as its
    L-th attempt, the next request reaches it before the owner's reset does, and it erases
    its share and proposes the tombstone; the reset wins the round. The node takes the
    chosen reset and every value after it, and its erased share stays erased."""
    world, client, before = _guessed(LIMIT - 1)
    assert client.recover(b"right") is not None  # the L-th attempt is the owner's
    reset = world.replicated(1, client.key)
    tombstone = _tombstone(before)
    assert reset.reset_attempt == tombstone.attempt == LIMIT and reset.reset_signature
    check = _check(world, client, tombstone)
    assert check(reset) is None
    assert client.recover(b"wrong") is None
    assert check(world.replicated(1, client.key)) is None
    row = world.honest[0].rows[client.key]
    keeper = _erased_then_taken(world, client, tombstone, reset)
    refused = keeper._take_share(client.key, reset, row.share, reset.change_counter)
    assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.DESTROYED


def test_a_tombstone_that_lost_to_the_owners_success_inside_its_window_gives_way() -> None:
    """Sim seed 10159529: the owner's right password was attempt 1 of a window that a
    tombstone counted as L failures (attempts 1 and 2, from reset 0). The next request
    reached two nodes before the owner's reset did: each erased its share at L on its own
    count and accepted the tombstone, while the reset for attempt 1 and a guess after it
    (attempt 2 of the window from 1) were chosen. They refused the chosen values for good
    as "an entry brought back to life". A success inside the tombstone's window means the
    window did not end in L failures: the node takes the chosen values, and its erased
    share stays erased."""
    world, client, before = _guessed(0)
    tombstone = _tombstone(before)
    assert client.recover(b"right") is not None  # attempt 1, the owner's
    reset = world.replicated(1, client.key)
    assert client.recover(b"wrong") is None  # attempt 2, in the window from 1
    after = world.replicated(1, client.key)
    assert (reset.attempt, reset.reset_attempt) == (1, 1) and reset.reset_signature
    assert (after.attempt, after.reset_attempt, tombstone.attempt) == (2, 1, 2)
    check = _check(world, client, tombstone)
    assert check(reset) is None
    assert check(after) is None  # refused before the fix
    unsigned = after.with_(reset_signature=b"", reset_hash=b"")
    assert check(unsigned) == "an entry brought back to life without a new version"
    _erased_then_taken(world, client, tombstone, after)


def test_no_older_success_or_forged_reset_revives_a_tombstone() -> None:
    """A chosen tombstone ends the entry: a live value from before it, the owner's signed
    reset of an earlier success replayed, or a reset moved up to the tombstone's attempt
    without the owner's signature over it, are all refused."""
    world, client, _ = _guessed(0)
    assert client.recover(b"right") is not None  # a success at attempt 1
    earlier = world.replicated(0, client.key)
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    last_live = world.replicated(0, client.key)
    tombstone = _tombstone(last_live)
    check = _check(world, client, tombstone)
    assert earlier.reset_signature and earlier.reset_attempt < tombstone.attempt
    assert check(earlier) == "the attempt counter went down"
    assert check(last_live) == "an entry brought back to life without a new version"
    moved = earlier.with_(attempt=tombstone.attempt, reset_attempt=tombstone.attempt)
    assert "did not sign" in (check(moved) or "")


def test_a_delete_that_won_is_taken_over_a_sibling_delete_an_attempt_on() -> None:
    """Sim seed 10046249: node 1 held the owner's delete built on a later attempt than
    the delete chosen, and refused it ("the attempt counter went down") for good. Two
    values that hold no key are not compared by counters; a live one is still refused."""
    world, client, _ = _guessed(0)
    recovered = client.recover(b"right")
    assert recovered is not None
    live = world.replicated(0, client.key)
    client.delete(recovered[0])
    deleted = world.replicated(0, client.key)
    assert deleted.status == EntryStatus.EMPTY
    sibling = deleted.with_(attempt=deleted.attempt + 1, reset_attempt=deleted.reset_attempt + 1)
    check = _check(world, client, sibling)
    assert check(deleted) is None
    assert check(live) is not None
