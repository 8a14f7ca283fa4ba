"""A leader that goes down once the followers have learnt to wait for its rounds costs a
recovery one wait and the Forward's timeout, not the recovery (docs/fleet.md, "Copies
that wait for the leader"). The seeded runs check liveness only after the heal, so a
wait that never ended while the leader was down passed 60 seeds with and without
`--eager-wait` (planted, session 53); this world catches it."""

from __future__ import annotations

from backupvault.fleet.replica import DEFAULT_TIMING
from backupvault.sim.world import ThresholdClient, threshold_world

PASSWORD = b"correct horse"


def test_the_leader_going_down_costs_a_recovery_a_wait_not_the_recovery() -> None:
    world = threshold_world(5, 10)
    client = ThresholdClient(world, together=True)
    client.register(PASSWORD, bytes(32))
    for _ in range(8):  # each recovery: an attempt and a reset, both joinable changes
        assert client.recover(PASSWORD) is not None
    waits = {slot: world.members[slot].replica._join_wait.seconds for slot in range(1, 5)}
    assert all(w > 0 for w in waits.values()), waits  # the followers' copies now wait
    world.crash(0)  # the leader
    started = world.now
    assert client.recover(PASSWORD) is not None
    # The manifest read, the attempt (one wait, then the Forward to the silent leader
    # times out and the node goes on without it) and the reset, which the client sends
    # again while the crashed leader's answer is missing: 1.16 simulated seconds. The
    # bound leaves room for one more wait and timeout, not for a wait of its own.
    limit = DEFAULT_TIMING.join_wait_cap + 2 * DEFAULT_TIMING.round_timeout + 0.4
    assert world.now - started < limit, world.now - started


def test_copies_sent_together_do_not_wait_for_a_silent_hostile_node() -> None:
    """A hostile node that answers nothing is not waited for (the attacker answers at
    once or never), and no answer is left behind for a later fan-out."""
    world = threshold_world(5, 10, hostile=1, attacker=lambda slot, op, request: None)
    client = ThresholdClient(world, together=True)
    started = world.now
    client.register(PASSWORD, bytes(32))
    assert client.recover(PASSWORD) is not None
    assert world.now - started < 1.0, world.now - started
    assert not world._sync


def test_an_answer_that_comes_after_the_fan_out_gave_up_is_dropped() -> None:
    """A node cut off from its peers answers its copy only when its round gives up, after
    the relay's deadline: the fan-out goes on without it, and that late answer is not left
    for a later call to find."""
    world = threshold_world(5, 10)
    client = ThresholdClient(world, together=True)
    client.register(PASSWORD, bytes(32))
    world.isolated = frozenset({4})
    assert client.recover(PASSWORD) is not None
    world.settle(10.0)
    assert not world._sync
