"""Every node ends with the value of every entry, and catching up takes no forged value.

The chaos soak's runs J, L and M (docs/soak.md) ended with an attacked entry destroyed on
some disks and live, with L of L attempts used, on the others. Two ways, scripted here on
the simulated fleet (the real replica and keeper): a tombstone taken by a minority whose
round then lost its majority, which no proposer had committed and so nobody repaired; and
a committed tombstone whose repair was lost with the crash of the node that committed it.
Fixed in fleet/replica.py (`Replica._settle`: every acceptor settles a value it took that
it has not seen every node take). And a node catching up after a restart checks what a
peer hands it (`check_copy`): a hostile peer's reset count is not taken, and nothing is
erased on a copy.
"""

from __future__ import annotations

import pytest

from backupvault.crypto import oprf
from backupvault.errors import AuthenticationFailed
from backupvault.fleet.messages import AcceptorRecord, ReplicatedValue, SyncRequest, SyncResponse
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import EntryStatus, EvaluateRequest, Op
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world

LIMIT = 2


def _at_the_limit(hostile: int = 0) -> tuple[Simulation, ThresholdClient]:
    """A 5-node world with one entry whose L wrong guesses are used up (still live: the
    next request destroys it)."""
    world = threshold_world(5, LIMIT, hostile=hostile, seed=11)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    for slot in world.honest:
        state = world.replicated(slot, client.key)
        assert (state.status, state.attempts_used) == (EntryStatus.LIVE, LIMIT)
    return world, client


def _destroyed(world: Simulation, client: ThresholdClient) -> list[int]:
    return [
        slot
        for slot in world.honest
        if world.replicated(slot, client.key).status == EntryStatus.DESTROYED
    ]


def _another_guess(client: ThresholdClient) -> EvaluateRequest:
    _, blinded = oprf.blind(b"another wrong guess")
    return EvaluateRequest(client.account, client.entry, 1, blinded, client.clock_ms + 10_000)


def test_a_tombstone_only_a_minority_took_reaches_every_node_after_the_heal() -> None:
    world, client = _at_the_limit()
    # One more guess, sent to node 2: its round (through the leader) makes the tombstone.
    world.send(2, Op.EVALUATE, _another_guess(client))
    assert world.run_until(lambda: len(_destroyed(world, client)) == 1, 5.0)
    first = _destroyed(world, client)[0]
    second = (first + 1) % 5
    # Cut off right then: the Accept reaches one more node, and the round never commits.
    world.reachable = {first, second}
    assert world.run_until(lambda: len(_destroyed(world, client)) == 2, 5.0)
    world.settle(10.0)
    assert sorted(_destroyed(world, client)) == sorted({first, second})
    world.reachable = None
    world.settle(40.0)
    assert _destroyed(world, client) == [0, 1, 2, 3, 4]
    for slot in range(5):
        state = world.replicated(slot, client.key)
        assert state.attempts_used == LIMIT
        # Each node's own count was at L: taking the tombstone erases its share.
        assert world.honest[slot].rows[client.key].share == b""
        assert not world.members[slot].replica.unsettled()  # type: ignore[union-attr]


def test_a_committed_tombstone_reaches_nodes_whose_repair_died_with_its_committer() -> None:
    world, client = _at_the_limit()
    world.down = {3, 4}
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # one more guess: destroyed, on nodes 0, 1 and 2
    world.settle(8.0)  # every node's copy of that request is answered, or given up
    assert _destroyed(world, client) == [0, 1, 2]
    repairers = [slot for slot in range(3) if world.members[slot].replica.lagging()]  # type: ignore[union-attr]
    assert repairers
    # The committer of the client's round (nodes 1 and 2 may hold repairs of their own
    # no-op rounds too: the manifest read of a live entry at L makes each look again).
    world.restart(min(repairers))  # its memory, and the repair in it, is gone; disk kept
    world.down = set()
    world.settle(30.0)
    assert _destroyed(world, client) == [0, 1, 2, 3, 4]
    assert all(world.replicated(s, client.key).attempts_used == LIMIT for s in range(5))


def test_a_tombstone_whose_every_repair_died_reaches_the_others_when_a_client_asks() -> None:
    """Every node that took the tombstone restarts before its repair lands (soak run BG):
    nobody carries it on. The nodes that missed it hold the entry live with no guess
    left, and the next manifest read makes each of them look again (a no-op round), so
    the entry ends destroyed on every disk without another guess. (Left alone, 3 and 4
    get there later too: each stands in for the repair of the guess before, which the
    nodes holding the tombstone refuse, and that refusal sets off the same no-op round.)"""
    world, client = _at_the_limit()
    world.down = {3, 4}
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")
    world.settle(8.0)
    assert _destroyed(world, client) == [0, 1, 2]
    for slot in range(3):
        world.restart(slot)  # every repair and every settling duty is gone
    world.down = set()
    world.settle(3.0)
    assert _destroyed(world, client) == [0, 1, 2]  # nobody asked: 3 and 4 still live
    partials = world.observer.partials
    assert client.status() == "status: destroyed"
    assert world.run_until(lambda: len(_destroyed(world, client)) == 5, 5.0)
    assert _destroyed(world, client) == [0, 1, 2, 3, 4]
    assert all(world.replicated(s, client.key).attempts_used == LIMIT for s in range(5))
    assert world.observer.partials == partials


def test_a_value_whose_two_lowest_acceptors_crashed_reaches_a_node_back_intact() -> None:
    """Sim seed 10440080: a node misses a committed guess while down; the committer and
    the next acceptor in line, who would repair it, crash (their repairs and settling
    duties live in memory); the node comes back intact, so it asks nobody. Every other
    acceptor stands in, one after the other, so it still gets the value."""
    world = threshold_world(5, 3, seed=11)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    world.crash(4)
    assert client.recover(b"wrong") is None
    taken = world.replicated(0, client.key)
    assert taken.attempts_used == 1
    assert world.replicated(4, client.key).attempts_used == 0
    world.settle(5.0)  # settled as far as it goes without node 4: node 0 repairs it
    for slot in (0, 1):
        world.restart(slot)  # the repair and the next stand-in's duty are gone
    world.restart(4)  # intact: it asks nobody
    world.settle(60.0)
    assert [world.replicated(s, client.key) for s in range(5)] == [taken] * 5
    assert not any(world.members[s].replica.unsettled() for s in range(5))  # type: ignore[union-attr]


def _forged_record(
    world: Simulation, client: ThresholdClient, forged: ThresholdState
) -> AcceptorRecord:
    """The record a hostile peer claims, at a ballot above any honest one."""
    high = max(r.promised.round for n in world.honest.values() if (r := n.disk.get(client.key)))
    value = ReplicatedValue([], forged.to_bytes()).to_bytes()
    return AcceptorRecord(client.key, high + 100, 4, high + 100, 4, value)


def _answer_catch_up(world: Simulation, record: AcceptorRecord) -> None:
    def sync(request: SyncRequest) -> SyncResponse:
        return SyncResponse(request.sync_id, True, [record], b"hostile", 0, 1, False)

    world.hostile[4].sync = sync


def test_a_catching_up_node_takes_no_lower_count_from_a_hostile_peer() -> None:
    world = threshold_world(5, 10, hostile=1, seed=12)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    for _ in range(3):
        assert client.recover(b"wrong") is None
    held = world.replicated(1, client.key)
    assert held.attempt == 3
    _answer_catch_up(
        world,
        _forged_record(
            world, client, held.with_(attempt=0, attempt_hash=b"", attempt_client_time_ms=0)
        ),
    )
    world.crash(0)
    assert client.recover(b"wrong") is None  # attempt 4, while node 0 is down
    world.restart(0, world.snapshot(0))  # not intact: it catches up from its peers
    replica = world.members[0].replica
    assert replica is not None
    # What it merged, before any repair can reach it (a node catching up takes none):
    # the honest peers' newer value, not the forged count reset above it.
    assert world.run_until(lambda: replica.ready, 5.0)
    assert world.replicated(0, client.key) == world.replicated(1, client.key)
    assert world.replicated(0, client.key).attempt == 4
    assert world.honest[0].rows[client.key].share


def test_a_copied_tombstone_erases_nothing() -> None:
    world = threshold_world(5, 10, hostile=1, seed=13)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    held = world.replicated(1, client.key)
    tombstone = held.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"", attempt=10)
    _answer_catch_up(world, _forged_record(world, client, tombstone))
    world.restart(0, world.snapshot(0))
    replica = world.members[0].replica
    assert replica is not None
    assert world.run_until(lambda: replica.ready, 5.0)
    # The tombstone passes the checks (any proposer can push the count up by L), so it is
    # held; but a copy is not this node's acceptance, and its count is 0: the share stays.
    assert world.replicated(0, client.key).status == EntryStatus.DESTROYED
    assert world.honest[0].rows[client.key].share


def test_a_node_down_through_a_registration_gets_it_once_its_repairers_restarted() -> None:
    """Node 4 is down while an entry is registered, so it holds nothing for it; the nodes
    whose repairs would bring it the entry restart (repairs live in memory), and node 4
    comes back intact (it asks nobody). A stand-in's word of the live value has node 4 run
    a round of its own, which brings it the entry: word of a name a node never held sets
    off a round only for a live entry's value, which t nodes' acknowledgements vouch for
    (a made-up name's value has none; review s54)."""
    world = threshold_world(5, 3, seed=11)
    client = ThresholdClient(world)
    world.crash(4)
    client.register(b"right", bytes(32))
    taken = world.replicated(0, client.key)
    assert taken.status == EntryStatus.LIVE
    assert world.replicated(4, client.key).status != EntryStatus.LIVE
    world.settle(5.0)
    for slot in (0, 1):
        world.restart(slot)
    world.restart(4)  # intact: it asks nobody
    world.settle(60.0)
    assert [world.replicated(s, client.key) for s in range(5)] == [taken] * 5
