"""A share delivered late (docs/threshold.md, "Finishing later"), on real replicas: a node
that missed its share takes it for the live version's manifest, and refuses a share of
a version the entry has moved past; `manifest` says whether this node holds a share."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from backupvault.crypto.seal import seal_share
from backupvault.hsm.state import EntryId
from backupvault.protocol import (
    AckKind,
    DeliverShareRequest,
    ErrorCode,
    ErrorResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ShareAck,
)
from backupvault.sim import clients
from backupvault.sim.world import FLEET_ID, ThresholdClient, sealing_key, threshold_world

RK = bytes(range(32))


def _holds(world: object, slot: int) -> bool:
    answer = world.request(slot, Op.MANIFEST, ManifestRequest("alice", "chat"))  # type: ignore[attr-defined]
    assert isinstance(answer, ManifestResponse)
    return answer.holds_share


def test_a_late_share_is_taken_for_the_live_version_and_refused_for_an_old_one() -> None:
    world = threshold_world(limit=4)
    client = ThresholdClient(world)
    world.reachable = {0, 1, 2, 3}  # node 4 is cut off
    v1 = clients.deal(client.ctx, b"right", RK, 1)
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, v1)).acks == 4
    world.reachable = None
    assert [_holds(world, s) for s in range(5)] == [True] * 4 + [False]
    late = RegisterShareRequest(
        "alice", "chat", v1.manifest.to_bytes(), v1.shares[4].to_bytes(), b"", 0
    )
    # Node 4 has not caught up on M yet: it keeps the share staged, and makes it its
    # share once it holds M (settling brings it within seconds).
    staged = world.request(4, Op.REGISTER_SHARE, late)
    assert isinstance(staged, ShareAck) and staged.kind == AckKind.STAGED
    assert world.run_until(lambda: world.replicated(4, client.key).version == 1, 60.0)
    assert _holds(world, 4) and world.honest[4].rows[client.key].version == 1
    again = world.request(4, Op.REGISTER_SHARE, late)
    assert isinstance(again, ShareAck) and again.kind == AckKind.HELD

    # Version 2 with node 4 down: the share of version 1 that node 4 would still
    # take as a late delivery is refused once the entry moved on (forced by hand here;
    # the client drops it), and so is version 1's share at node 3, which took version 2.
    recovered = client.recover(b"right")
    assert recovered is not None
    world.crash(4)  # down through the change: it stages nothing
    changed = client._run(
        clients.change_password(client.ctx, client._recovered(recovered[0], RK), b"new pw")
    )
    assert changed.acks == 4 and changed.registration is not None
    v2 = changed.registration
    world.restart(4)
    # Node 4 catches up on version 2 within seconds (settling), and erases its version 1
    # share on the owner's CHANGE statement, checked against the M it held.
    assert world.run_until(lambda: world.replicated(4, client.key).version == 2, 60.0)
    for slot in (3, 4):
        stale = RegisterShareRequest(
            "alice", "chat", v1.manifest.to_bytes(), v1.shares[slot].to_bytes(), b"", 0
        )
        answer = world.request(slot, Op.REGISTER_SHARE, stale)
        assert isinstance(answer, ErrorResponse), answer
        assert answer.code == ErrorCode.ALREADY_REGISTERED
        assert world.honest[slot].rows[client.key].version == (2 if slot == 3 else 1)
    assert not world.honest[4].rows[client.key].share
    assert not _holds(world, 4)  # no live share for version 2
    # The client sends version 2's share late as a register-share of the committed M: node
    # 4 takes it (its version 1 share is overwritten: erased) without the change statement
    # (a node that missed several changes could not check that against its older share).
    late = RegisterShareRequest(
        "alice", "chat", v2.manifest.to_bytes(), v2.shares[4].to_bytes(), b"", 0
    )
    assert isinstance(world.request(4, Op.REGISTER_SHARE, late), ShareAck)
    row = world.honest[4].rows[client.key]
    assert row.version == 2 and row.share == v2.shares[4].to_bytes() and _holds(world, 4)
    # A share that does not match M's commitments is refused, even for the live M.
    forged = RegisterShareRequest(
        "alice", "chat", v2.manifest.to_bytes(), v1.shares[4].to_bytes(), b"", 0
    )
    assert isinstance(world.request(4, Op.REGISTER_SHARE, forged), ErrorResponse)
    assert world.honest[4].rows[client.key].share == v2.shares[4].to_bytes()


def test_a_node_cut_off_past_the_repair_window_catches_up_on_the_late_delivery() -> None:
    """Review s40 (M1), on the seeded world: node 4 is off the network through a password
    change and for longer than the repair and settling windows, so no node will bring it
    the new M; back, it holds version 1. The device's late delivery makes it run a round
    first (one that changes nothing), which brings it M, and then it takes its share and
    acknowledges it as held. Before, it answered `already_registered` at every delivery
    until the entry's next recovery. (A node that holds nothing of the entry runs no such
    round: review s40-D, made-up entry names then left a record on every node.)"""
    world = threshold_world(limit=4)
    client = ThresholdClient(world)
    _loot, acks = client.register(b"right", RK)
    assert acks == 5
    recovered = client.recover(b"right")
    assert recovered is not None
    world.down = {4}
    changed = client._run(
        clients.change_password(client.ctx, client._recovered(recovered[0], RK), b"new pw")
    )
    assert changed.acks == 4 and changed.registration is not None
    owed = client.ctx.pending.owed(client.ctx.fleet_id, "alice", "chat", client.ctx.epoch)
    assert [record.nodes for record in owed] == [(4,)]
    world.settle(300.0)  # the repair gives up after two minutes, settling sooner
    world.down = set()
    world.settle(10.0)
    assert world.replicated(4, client.key).version == 1  # nothing comes to it by itself

    assert client.status() == "status: live"  # delivers what this device owes, on the way
    assert not client.ctx.pending.owed(client.ctx.fleet_id, "alice", "chat", client.ctx.epoch)
    assert world.replicated(4, client.key).version == 2
    assert _holds(world, 4) and world.honest[4].rows[client.key].share
    # The key opens with two of the other holders down.
    world.down = {0, 1}
    assert client.recover(b"new pw") is not None


def test_late_deliveries_for_made_up_entries_run_no_round_and_leave_no_record() -> None:
    """Review s40-D: a late delivery to a node that holds nothing of the entry ran the
    round that brings a node behind up to date, so an account holder delivering shares it
    dealt itself for made-up entry names left an acceptor record on every node per name
    (what review s40-R1 stopped for evaluate, reset and delete). Such a node stages the
    share with no round; the staged entries are capped per account."""
    world = threshold_world(limit=4)
    client = ThresholdClient(world)
    names = [f"made-up-{i}" for i in range(6)]
    for name in names:
        made = clients.deal(replace(client.ctx, entry=name), b"pw", bytes(32), 1)
        manifest = made.manifest.to_bytes()
        digest = hashlib.sha256(manifest).digest()
        for slot in range(5):
            sealed = seal_share(
                sealing_key(slot).public_key(), FLEET_ID, slot, digest,
                made.shares[slot].to_bytes(),
            )  # fmt: skip
            request = DeliverShareRequest("alice", name, manifest, sealed)
            world.request(slot, Op.DELIVER_SHARE, request)
    keys = [EntryId.of("alice", name).to_bytes() for name in names]
    records = [k for slot in range(5) for k in keys if world.honest[slot].disk.get(k) is not None]
    assert records == []
