"""Attacks on the node side of finishing later (docs/threshold.md, "Finishing later"):
a share delivered again after the node erased it, a delivery for another node, another
entry or a stale version, through the real `ShareKeeper` on real replicas."""

from __future__ import annotations

import hashlib

from backupvault.crypto import oprf
from backupvault.crypto.manifest import Registration
from backupvault.hsm.shares import ShareWrite
from backupvault.hsm.state import Evaluation
from backupvault.protocol import (
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    Op,
    RegisterShareRequest,
)
from backupvault.sim import clients
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world

RK = bytes(range(32))
L = 4


def _registered() -> tuple[Simulation, ThresholdClient, Registration]:
    world = threshold_world(limit=L)
    client = ThresholdClient(world)
    made = clients.deal(client.ctx, b"right", RK, 1)
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, made)).acks == 5
    return world, client, made


def _ask(world: Simulation, client: ThresholdClient, slot: int) -> object:
    _, blinded = oprf.blind(b"guess")
    client.clock_ms += 1000
    return world.request(
        slot, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, client.clock_ms)
    )


def test_a_share_erased_at_the_limit_is_not_taken_back_by_a_late_delivery() -> None:
    """A node that erased its share on its own count (L evaluations since the last reset
    it verified, while the fleet's value is still live: c hostile nodes can bring an
    honest node there on a branch of their making) must not take the same share back
    from a delivery of the live M: the device re-sends every node's share after each
    success while it owes one, and a relay can hold such a copy back for the request's
    lifetime. Taking it back started a fresh count: L more evaluations in one window."""
    world, client, made = _registered()
    keeper = world.honest[0].keeper
    assert keeper is not None
    row = world.honest[0].rows[client.key]
    spent = row.with_(
        evaluated=[Evaluation(1000 + a, hashlib.sha256(bytes([a])).digest()) for a in range(L)]
    )
    world.honest[0].rows[client.key] = spent
    keeper.durable((ShareWrite(client.key, spent),))
    answer = _ask(world, client, 0)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.DESTROYED
    assert not world.honest[0].rows[client.key].share  # erased on its own count
    late = RegisterShareRequest(
        "alice", "chat", made.manifest.to_bytes(), made.shares[0].to_bytes(), b"", 0
    )
    answer = world.request(0, Op.REGISTER_SHARE, late)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.DESTROYED
    row = world.honest[0].rows[client.key]
    assert not row.share and row.count == L  # still erased, its count kept
    answer = _ask(world, client, 0)
    assert isinstance(answer, ErrorResponse)  # no partial from node 0 in this window
    # The other nodes still hold theirs: the entry is live, node 0 alone is out.
    assert all(world.honest[s].rows[client.key].share for s in range(1, 5))


def test_a_rolled_back_node_given_its_share_late_counts_the_window_it_may_have_answered() -> None:
    """A node whose store was rolled back to before it held its share may have answered
    attempts since the value's last reset; a late delivery of the same share (a copy a
    relay held back) must not start it at 0: it counts those attempts as evaluated, as t
    count reports would."""
    world, client, made = _registered()
    before = world.snapshot(0)
    world.honest[0].rows.pop(client.key)  # the copy from before the registration
    before.pop(client.key, None)
    for _ in range(2):
        assert client.recover(b"wrong") is None  # attempts 1 and 2, answered by node 0
    assert world.honest[0].rows[client.key].count == 2
    world.restart_rolled_back(0, before)
    world.settle(30)
    assert client.key not in world.honest[0].rows
    late = RegisterShareRequest(
        "alice", "chat", made.manifest.to_bytes(), made.shares[0].to_bytes(), b"", 0
    )
    # Not on the held value's word (a hostile peer's copy can make the window empty):
    # the node asks its peers for count reports first, and takes the share once t did.
    first = world.request(0, Op.REGISTER_SHARE, late)
    assert isinstance(first, ErrorResponse) and first.code == ErrorCode.FLEET_UNAVAILABLE
    assert client.key not in world.honest[0].rows
    world.settle(5)
    assert not isinstance(world.request(0, Op.REGISTER_SHARE, late), ErrorResponse)
    row = world.honest[0].rows[client.key]
    assert row.share and [e.attempt for e in row.evaluated] == [1, 2] and row.count == 2
