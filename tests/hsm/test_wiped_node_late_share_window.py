"""Audit (rollback lead): a node whose store was wiped catches up with its own value
empty, so a hostile peer's copy needs to pass only the value's own checks. A bare commit
of the live M (its real t acknowledgements, `reset_attempt == attempt`, no owner reset)
does. `ShareKeeper._take_share` then counted the distrusted node's window from that held
value: empty, so a late delivery of its share (a copy the relay held back, or its own
staged share promoted) started it at 0, and it answered L more attempts in the window
it had already spent: 2L partials from one honest node between two owner successes.
Now such a node takes the share only after t peers' count reports (docs/threshold.md,
the findings table)."""

from __future__ import annotations

import hashlib

from rollback_attack import L, forge, hostile_catch_up_copy

from backupvault.crypto import oprf
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import DEFAULT_TIMING
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    EntryStatus,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    Op,
    RegisterShareRequest,
)
from backupvault.sim import clients
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world


def _spend_window_then_wipe(world: Simulation, client: ThresholdClient) -> ThresholdState:
    """Node 0 answers L wrong guesses (the whole window), then loses its disk and
    catches up with node 4's bare commit of the live M at the window's last attempt."""
    for _ in range(L):
        assert client.recover(b"wrong") is None
    assert world.honest[0].rows[client.key].count == L
    real = world.replicated(1, client.key)
    assert (real.attempt, real.reset_attempt, real.reset_signature) == (L, 0, b"")
    bare = real.with_(reset_attempt=real.attempt, attempt_hash=b"")
    hostile_catch_up_copy(world, client.key, bare)
    world.crash(0)
    world.members[0].disk = MemoryRecords()  # wiped: store and share rows
    world.members[0].rows = {}
    world.restart(0, {})  # not intact: distrusts, catches up
    replica = world.members[0].replica
    assert replica is not None
    assert world.run_until(lambda: replica.ready, DEFAULT_TIMING.quarantine + 10.0)
    return bare


def _new_guesses_at_node_0(world: Simulation, client: ThresholdClient, start: int) -> int:
    """Nodes 3 and 4 (with node 0, a majority) commit fresh attempts on node 0's line;
    how many node 0 evaluates."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    value = world.replicated(0, client.key)
    answered = 0
    for j in range(1, L + 1):
        blinded = oprf.blind(b"attacker guess %d" % j)[1]
        value = value.with_(
            attempt=start + j,
            attempt_hash=hashlib.sha256(blinded).digest(),
            attempt_client_time_ms=value.attempt_client_time_ms + 1,
        )
        if not forge(world, client.key, value):
            continue
        request = EvaluateRequest(
            client.account, client.entry, 1, blinded, value.attempt_client_time_ms
        )
        _, build = keeper.handle(Op.EVALUATE, request).apply(value)
        answer = build()
        for write in answer.writes:
            world.honest[0].rows[write.key] = write.row
        keeper.durable(answer.writes)
        if isinstance(answer.response, EvaluateResponse):
            answered += 1
    return answered


def test_a_wiped_node_given_its_share_late_takes_no_window_from_a_hostile_copy() -> None:
    world = threshold_world(5, L, 2, seed=12, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    made = clients.deal(client.ctx, b"right", bytes(32), 1)
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, made)).acks == 3
    bare = _spend_window_then_wipe(world, client)
    assert world.replicated(0, client.key) == bare  # the hostile copy won the catch-up

    # The relay's held copy of node 0's original delivery.
    late = RegisterShareRequest(
        client.account, client.entry, made.manifest.to_bytes(), made.shares[0].to_bytes(), b"", 0
    )
    world.request(0, Op.REGISTER_SHARE, late)
    world.settle(5.0)
    world.request(0, Op.REGISTER_SHARE, late)  # and again, after any count reports
    row = world.honest[0].rows.get(client.key)
    assert row is None or not row.share or row.count >= L, (
        f"node 0 took its share back at count {row.count if row else None}, having"
        f" answered {L} attempts of this window before the wipe"
    )

    # No owner success since the L wrong guesses: node 0 must answer nothing more.
    extra = _new_guesses_at_node_0(world, client, bare.attempt)
    assert extra == 0, f"node 0 answered {L + extra} attempts in one window (L = {L})"


def test_a_wiped_node_promoting_its_staged_share_takes_no_window_from_a_hostile_copy() -> None:
    """The same with no held-back copy: node 0's store comes back from a backup taken
    after it staged its share and before it promoted it (it then answered L guesses and
    its disk was lost). A manifest read promotes the staged share over the held value."""
    world = threshold_world(5, L, 2, seed=13, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    made = clients.deal(client.ctx, b"right", bytes(32), 1)
    staged_copy: dict[bytes, object] = {}
    original = world.request

    def relay(slot: int, op: Op, request: object, seconds: float = 10.0) -> object:
        answer = original(slot, op, request, seconds)  # type: ignore[arg-type]
        if slot == 0 and op is Op.REGISTER_SHARE:
            staged_copy.update(world.snapshot(0))  # the operator's backup, just then
        return answer

    world.request = relay  # type: ignore[method-assign]
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, made)).acks == 3
    world.request = original  # type: ignore[method-assign]
    backup = staged_copy[client.key]
    assert not backup.share and backup.staged  # type: ignore[attr-defined]

    bare = _spend_window_then_wipe(world, client)
    world.members[0].rows[client.key] = backup  # type: ignore[assignment]
    keeper = world.honest[0].keeper
    assert keeper is not None
    keeper._cache.clear()
    world.request(0, Op.MANIFEST, ManifestRequest(client.account, client.entry))
    world.settle(5.0)
    world.request(0, Op.MANIFEST, ManifestRequest(client.account, client.entry))
    row = world.honest[0].rows[client.key]
    assert not row.share or row.count >= L, f"node 0 promoted its share at count {row.count}"
    assert world.replicated(0, client.key).status == EntryStatus.LIVE
    extra = _new_guesses_at_node_0(world, client, bare.attempt)
    assert extra == 0, f"node 0 answered {L + extra} attempts in one window (L = {L})"
