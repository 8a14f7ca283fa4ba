"""Settling and checked catch-up copies in the replica itself (the fleet-level scenarios
are in tests/sim/test_settling.py, on the real keeper)."""

from __future__ import annotations

import random

from test_replica import Net, put

from backupvault.fleet.messages import (
    AcceptorRecord,
    Ballot,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
)
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import MAX_ROUND_STEP, ROUND_CEILING, Replica, Send

KEY = b"entry"


def test_a_value_every_node_took_is_settled_at_once_and_costs_no_message() -> None:
    net = Net(5, announce=True)
    net.propose(2, b"op-1", KEY, put(b"v1"))
    net.settle()
    assert all(r.unsettled() == 0 for r in net.replicas.values())
    # Long past every settle time: nothing is sent for it.
    for _ in range(3000):
        net.now += 0.01
        for i, replica in net.replicas.items():
            net.run(i, replica.tick(net.now))
    assert not net.queue


def test_values_not_announced_are_not_settled() -> None:
    net = Net(5)
    net.down = {4}
    net.propose(0, b"op-1", KEY, put(b"v1"))
    net.settle()
    assert all(r.unsettled() == 0 for r in net.replicas.values())


def _value(payload: bytes) -> bytes:
    return ReplicatedValue([], payload).to_bytes()


def _catching_up(refuse: bytes) -> tuple[Replica, dict[int, bytes]]:
    """Node 0 of 3 restarting (not intact) with b"mine" held at ballot 3.0; its copy check
    refuses the payload `refuse`."""
    source = MemoryRecords()
    source.put(AcceptorRecord(KEY, 3, 0, 3, 0, _value(b"mine")))
    replica = Replica(
        0,
        range(3),
        random.Random(1).randbytes,
        source,
        check_copy=lambda key, payload, held: "goes back" if payload == refuse else None,
    )
    asks = {
        e.to: e.message.sync_id
        for e in replica.start(0.0)
        if isinstance(e, Send) and isinstance(e.message, SyncRequest)
    }
    return replica, asks


def _answer(replica: Replica, asks: dict[int, bytes], peer: int, record: AcceptorRecord) -> None:
    replica.receive(peer, SyncResponse(asks[peer], True, [record], b"peer", 0, 1), 0.1)


def test_a_copy_the_check_refuses_is_not_taken_but_its_promise_is() -> None:
    replica, asks = _catching_up(refuse=b"forged")
    _answer(replica, asks, 1, AcceptorRecord(KEY, 9, 1, 8, 1, _value(b"forged")))
    held = replica.source.get(KEY)
    assert held is not None
    assert (held.accepted, held.value) == (Ballot(3, 0), _value(b"mine"))
    assert held.promised == Ballot(9, 1)  # a promise only makes it refuse lower ballots
    # A newer value the check takes is copied as before.
    _answer(replica, asks, 2, AcceptorRecord(KEY, 7, 2, 7, 2, _value(b"newer")))
    held = replica.source.get(KEY)
    assert held is not None
    assert (held.accepted, held.value, held.promised) == (
        Ballot(7, 2),
        _value(b"newer"),
        Ballot(9, 1),
    )
    assert replica.ready


def test_a_copy_no_acceptor_could_hold_is_ignored_one_far_above_is_taken() -> None:
    """A copy at a round no acceptor takes (at or above the ceiling, or a promise above
    the successor of one) is not an honest node's: ignored. A copy many steps above this
    node's own rounds may be (a hostile node walked the entry up a step at a time): taken,
    since forgetting it could forget this node's own acceptance."""
    replica, asks = _catching_up(refuse=b"")
    for record in (
        AcceptorRecord(KEY, ROUND_CEILING, 1, ROUND_CEILING, 1, _value(b"at the ceiling")),
        AcceptorRecord(KEY, ROUND_CEILING + 1, 1, 3, 0, _value(b"mine")),
    ):
        _answer(replica, asks, 1, record)
        held = replica.source.get(KEY)
        assert held is not None
        assert (held.promised, held.value) == (Ballot(3, 0), _value(b"mine"))
    far = 3 * MAX_ROUND_STEP
    _answer(replica, asks, 2, AcceptorRecord(KEY, far + 1, 2, far, 2, _value(b"far")))
    held = replica.source.get(KEY)
    assert held is not None
    assert (held.promised, held.accepted, held.value) == (
        Ballot(far + 1, 2),
        Ballot(far, 2),
        _value(b"far"),
    )
