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
    # One wait, then the Forward to the silent leader times out and the node goes on
    # without it; two fan-outs (attempt, reset) and the manifest read in all.
    limit = 2 * (DEFAULT_TIMING.join_wait_cap + 2 * DEFAULT_TIMING.round_timeout) + 1.0
    assert world.now - started < limit, world.now - started
