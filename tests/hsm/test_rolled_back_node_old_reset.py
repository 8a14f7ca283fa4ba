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
import hashlib

from backupvault.crypto import oprf
from backupvault.fleet.messages import (
    Accept,
    Accepted,
    AcceptorRecord,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
)
from backupvault.hsm.shares import ThresholdUpdate
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    CountReport,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    Op,
    count_report_message,
)
from backupvault.sim.world import (
    FLEET_ID,
    Simulation,
    ThresholdClient,
    signing_key,
    threshold_world,
)

L = 4
RK = bytes(range(32))
HOSTILE = 4  # nodes 3 and 4 are the attacker's (c = 2 < t = 3), as in the earlier audit


def _forge(world: Simulation, key: bytes, state: ThresholdState) -> bool:
    """Hostile node 4 has honest node 0 accept `state`, above its promise."""
    record = world.honest[0].disk.get(key)
    assert record is not None
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    answer = world.inject(
        HOSTILE, 0, Accept(b"forged", key, record.promised_round + 1, HOSTILE, value, 4, False)
    )
    assert isinstance(answer, Accepted)
    return answer.ok


def _hostile_catch_up_copy(world: Simulation, key: bytes, copy: ThresholdState) -> None:
    """Node 4 answers a catching-up node with `copy`, at a ballot above any honest one."""
    high = max(r.promised.round for n in world.honest.values() if (r := n.disk.get(key)))
    value = ReplicatedValue([], copy.to_bytes()).to_bytes()
    record = AcceptorRecord(key, high + 100, HOSTILE, high + 100, HOSTILE, value)

    def sync(request: SyncRequest) -> SyncResponse:
        return SyncResponse(request.sync_id, True, [record], b"hostile", 0, 1, False)

    world.hostile[HOSTILE].sync = sync


def _success_then_spent_window_then_rollback(
    world: Simulation, client: ThresholdClient
) -> ThresholdState:
    """The owner succeeds (attempt 1, reset 1); node 0 then answers L wrong guesses (the
    whole window after that success) and its disk comes back from a copy taken before the
    success; node 4 hands it the success's own value while it catches up."""
    old_disk, old_rows = world.members[0].disk.copy(), world.snapshot(0)
    assert client.recover(b"right") is not None
    success = world.replicated(1, client.key)
    assert success.reset_attempt == success.attempt == 1 and success.reset_signature
    for _ in range(L):
        assert client.recover(b"wrong") is None
    assert world.honest[0].rows[client.key].count == L
    assert world.replicated(1, client.key).attempt == 1 + L
    _hostile_catch_up_copy(world, client.key, success)
    world.crash(0)
    world.members[0].disk = old_disk
    world.restart_rolled_back(0, old_rows)  # not intact: distrusts, catches up
    replica = world.members[0].replica
    assert replica is not None
    assert world.run_until(lambda: replica.ready, 30.0)
    assert world.replicated(0, client.key) == success  # the hostile copy won the catch-up
    assert world.honest[0].rows[client.key].count == 0  # the rolled-back row
    # The client's (or the relay's) status read: node 0 sees the entry for the first time.
    world.request(0, Op.MANIFEST, ManifestRequest(client.account, client.entry))
    return success


def _new_guesses_at_node_0(world: Simulation, client: ThresholdClient, base: ThresholdState) -> int:
    """Nodes 3 and 4 (with node 0, a majority) commit fresh attempts on node 0's line,
    each carrying the owner's old reset; how many node 0 evaluates."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    value = base
    answered = 0
    for j in range(1, L + 1):
        blinded = oprf.blind(b"attacker guess %d" % j)[1]
        value = value.with_(
            attempt=base.attempt + j,
            attempt_hash=hashlib.sha256(blinded).digest(),
            attempt_client_time_ms=value.attempt_client_time_ms + 1,
        )
        if not _forge(world, client.key, value):
            continue
        request = EvaluateRequest(
            client.account, client.entry, 1, blinded, value.attempt_client_time_ms
        )
        update = keeper.handle(Op.EVALUATE, request)
        assert isinstance(update, ThresholdUpdate)
        _, build = update.apply(value)
        answer = build()
        for write in answer.writes:
            world.honest[0].rows[write.key] = write.row
        keeper.durable(answer.writes)
        if isinstance(answer.response, EvaluateResponse):
            answered += 1
    return answered


def _world() -> tuple[Simulation, ThresholdClient]:
    world = threshold_world(5, L, 2, seed=21, leader=False, attacker=lambda *_: None)
    world.observer.collect = True  # its findings are asserted below, with the count
    client = ThresholdClient(world)
    _, acks = client.register(b"right", RK)
    assert acks == 3  # the attacker's nodes 3 and 4 acknowledge nothing
    return world, client


def test_an_old_reset_in_a_hostile_copy_does_not_make_a_rolled_back_row_whole() -> None:
    world, client = _world()
    success = _success_then_spent_window_then_rollback(world, client)
    world.settle(5.0)  # the attacker's nodes answer no count report: no t reports
    extra = _new_guesses_at_node_0(world, client, success)
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
    success = _success_then_spent_window_then_rollback(world, client)
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
    extra = _new_guesses_at_node_0(world, client, success)
    assert extra == 0, f"node 0 answered {L + extra} attempts in one window (L = {L})"
    assert not world.observer.violations, world.observer.violations
