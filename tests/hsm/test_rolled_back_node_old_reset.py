"""Audit (rollback lead 1, `_floors`): a node that found its store rolled back made its
row whole again on any verified owner reset at or above the *first* attempt number it saw
for the entry after the restart. That first sight is the value it holds, and after a
catch-up that can be a hostile peer's copy at a high ballot: the genuine value of the
owner's last success (its reset, and nothing after it). So the floor was that success's
own attempt, and the same old reset, replayed from that value, made the rolled-back row
(count 0) trusted in the window it had already spent: the node answered L more attempts
between two owner successes. Over the count reports too: settling applied the value's
reset first and then ignored what the honest peers reported.

Now the floor is the highest attempt the node has seen since the restart (the doc's "the
latest attempt number it saw"), and a reset in the value settles on reports only at or
above the highest attempt reported (docs/threshold.md, the findings table)."""

from __future__ import annotations

import dataclasses

from rollback_attack import (
    HOSTILE,
    RK,
    L,
    new_guesses_at_node_0,
    success_then_spent_window_then_rollback,
)

from backupvault.protocol import (
    CountReport,
    count_report_message,
)
from backupvault.sim.world import (
    FLEET_ID,
    Simulation,
    ThresholdClient,
    signing_key,
    threshold_world,
)


def _world() -> tuple[Simulation, ThresholdClient]:
    world = threshold_world(5, L, 2, seed=21, leader=False, attacker=lambda *_: None)
    world.observer.collect = True  # its findings are asserted below, with the count
    client = ThresholdClient(world)
    _, acks = client.register(b"right", RK)
    assert acks == 3  # the attacker's nodes 3 and 4 acknowledge nothing
    return world, client


def test_an_old_reset_in_a_hostile_copy_does_not_make_a_rolled_back_row_whole() -> None:
    world, client = _world()
    success = success_then_spent_window_then_rollback(world, client)
    world.settle(5.0)  # the attacker's nodes answer no count report: no t reports
    extra = new_guesses_at_node_0(world, client, success)
    assert extra == 0, (
        f"node 0 answered {L + extra} attempts between two owner successes (L = {L}): the"
        " owner's old reset, replayed from a hostile copy, made its rolled-back row whole"
    )
    assert not world.observer.violations, world.observer.violations


def test_count_reports_are_not_overruled_by_an_old_reset_in_the_held_value() -> None:
    """The honest peers report the window node 0 spent; its held value (the hostile copy)
    carries the reset that opened that window. Settling must count the window."""
    world, client = _world()
    world.count_reports = False  # delivered here, one by one
    success = success_then_spent_window_then_rollback(world, client)
    keeper = world.honest[0].keeper
    replica = world.members[0].replica
    assert keeper is not None and replica is not None
    (request,) = keeper.take_report_requests()
    held = replica.held_payload(client.key)
    for peer in (1, 2):  # honest: they hold the window's last attempt
        peer_keeper = world.honest[peer].keeper
        peer_replica = world.members[peer].replica
        assert peer_keeper is not None and peer_replica is not None
        report = peer_keeper.count_report(1, request, peer_replica.held_payload(client.key))
        assert report is not None and report.attempt == 1 + L
        writes = keeper.take_count_report(peer + 1, report, held)
        assert writes is not None
    # Node 4 reports the old success's attempt (it could report anything).
    low = (success.attempt, success.reset_attempt)
    hostile = CountReport(
        client.account, client.entry, 1, HOSTILE + 1, 1, *low, request.nonce, bytes(64)
    )
    message = count_report_message(FLEET_ID, hostile)
    hostile = dataclasses.replace(hostile, signature=signing_key(HOSTILE).sign(message))
    writes = keeper.take_count_report(HOSTILE + 1, hostile, held)
    assert writes is not None
    for write in writes:
        world.honest[0].rows[write.key] = write.row
    keeper.durable(writes)
    assert world.honest[0].rows[client.key].count == L, (
        "settled below the window its honest peers reported"
    )
    extra = new_guesses_at_node_0(world, client, success)
    assert extra == 0, f"node 0 answered {L + extra} attempts in one window (L = {L})"
    assert not world.observer.violations, world.observer.violations
