"""What the rollback attack tests of this folder share: a 5-node world whose nodes 3 and 4
are the attacker's (c = 2 < t = 3), an honest node 0 rolled back after spending a window,
and the hostile pair's ways to feed it (docs/threshold.md, "Counters and erasure")."""

from __future__ import annotations

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
from backupvault.fleet.replica import DEFAULT_TIMING
from backupvault.hsm.shares import ThresholdUpdate
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    Op,
)
from backupvault.sim.world import (
    Simulation,
    ThresholdClient,
)

L = 4
RK = bytes(range(32))
HOSTILE = 4  # nodes 3 and 4 are the attacker's (c = 2 < t = 3), as in the earlier audit


def forge(world: Simulation, key: bytes, state: ThresholdState) -> bool:
    """Hostile node 4 has honest node 0 accept `state`, above its promise."""
    record = world.honest[0].disk.get(key)
    assert record is not None
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    answer = world.inject(
        HOSTILE, 0, Accept(b"forged", key, record.promised_round + 1, HOSTILE, value, 4, False)
    )
    assert isinstance(answer, Accepted)
    return answer.ok


def hostile_catch_up_copy(world: Simulation, key: bytes, copy: ThresholdState) -> None:
    """Node 4 answers a catching-up node with `copy`, at a ballot above any honest one."""
    high = max(r.promised.round for n in world.honest.values() if (r := n.disk.get(key)))
    value = ReplicatedValue([], copy.to_bytes()).to_bytes()
    record = AcceptorRecord(key, high + 100, HOSTILE, high + 100, HOSTILE, value)

    def sync(request: SyncRequest) -> SyncResponse:
        return SyncResponse(request.sync_id, True, [record], b"hostile", 0, 1, False)

    world.hostile[HOSTILE].sync = sync


def success_then_spent_window_then_rollback(
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
    hostile_catch_up_copy(world, client.key, success)
    world.crash(0)
    world.members[0].disk = old_disk
    world.restart_rolled_back(0, old_rows)  # not intact: distrusts, catches up
    replica = world.members[0].replica
    assert replica is not None
    assert world.run_until(lambda: replica.ready, DEFAULT_TIMING.quarantine + 10.0)
    assert world.replicated(0, client.key) == success  # the hostile copy won the catch-up
    assert world.honest[0].rows[client.key].count == 0  # the rolled-back row
    # The client's (or the relay's) status read: node 0 sees the entry for the first time.
    world.request(0, Op.MANIFEST, ManifestRequest(client.account, client.entry))
    return success


def new_guesses_at_node_0(
    world: Simulation, client: ThresholdClient, base: ThresholdState, guesses: int = L
) -> int:
    """Nodes 3 and 4 (with node 0, a majority) commit fresh attempts on node 0's line,
    each carrying the owner's old reset; how many node 0 evaluates."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    value = base
    answered = 0
    for j in range(1, guesses + 1):
        blinded = oprf.blind(b"attacker guess %d" % j)[1]
        value = value.with_(
            attempt=base.attempt + j,
            attempt_hash=hashlib.sha256(blinded).digest(),
            attempt_client_time_ms=value.attempt_client_time_ms + 1,
        )
        if not forge(world, client.key, value):
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
