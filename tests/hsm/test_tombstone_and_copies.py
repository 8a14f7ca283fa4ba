"""What a node does with a tombstone it takes, and what it takes from a peer while it
catches up (docs/threshold.md, "Counters and erasure" and "Catching up"). The scenarios
through the fleet are in tests/sim/test_settling.py."""

from __future__ import annotations

from backupvault.hsm.shares import UNKNOWN_B, check_threshold_value
from backupvault.hsm.state import Evaluation, ThresholdState
from backupvault.protocol import EntryStatus
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
    world.honest[0].rows[client.key] = row.with_(evaluated=assumed)
    keeper = world.honest[0].keeper
    assert keeper is not None
    keeper._pending.pop(client.key, None)  # read the row from the "store" again
    keeper._cache.pop(client.key, None)
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
    held = world.replicated(3, client.key).to_bytes()  # version 1: two changes missed

    def check(value: ThresholdState) -> str | None:
        return check_threshold_value(
            FLEET_ID, client.key, world.shape, value, held, node_keys=world.node_keys
        )

    assert committed.version == 3
    # A live version further on is taken on its t acknowledgements.
    assert check(committed) is None
    stripped = committed.with_(acks=b"")
    assert "acknowledgement" in (check(stripped) or "")
    # What goes back against the held value, or fails its own checks, is refused: a count
    # reset, and a reset the owner did not sign.
    mine = committed
    held = mine.to_bytes()
    reset = mine.with_(attempt=mine.reset_attempt)
    assert "went down" in (check(reset) or "")
    unsigned = mine.with_(reset_attempt=mine.attempt, reset_signature=bytes(64))
    assert "did not sign" in (check(unsigned) or "")
