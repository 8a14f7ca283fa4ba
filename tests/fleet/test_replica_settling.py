"""Settling and checked catch-up copies in the replica itself (the fleet-level scenarios
are in tests/sim/test_settling.py, on the real keeper)."""

from __future__ import annotations

import random
from dataclasses import replace

from test_replica import Net, put

from backupvault.codec import decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    AcceptorRecord,
    Ballot,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
    payload_of,
)
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import (
    DEFAULT_TIMING,
    MAX_ROUND_STEP,
    ROUND_CEILING,
    Replica,
    Send,
)

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


# ---- stand-ins: the ballot's own node resends, the others send word -----------------


def _settling_net(proposer: int) -> tuple[Net, Ballot]:
    """Leaderless, announced: `proposer` commits put(v2) over put(v1) while node 2 is
    down (its own repair of node 2 pending). The chosen ballot."""
    net = Net(5, announce=True, timing=replace(DEFAULT_TIMING, leader=False))
    net.propose(proposer, b"op-1", KEY, put(b"v1"))
    net.settle()
    net.down = {2}
    net.propose(proposer, b"op-2", KEY, put(b"v2"))
    net.settle()
    chosen = net.disk[proposer][KEY].accepted
    assert chosen.node == proposer
    return net, chosen


def _accepts_to_2(net: Net, seconds: float) -> list[tuple[int, Accept]]:
    """Deliver and tick for `seconds`; every Accept sent to node 2, with its sender."""
    sent: list[tuple[int, Accept]] = []
    until = net.now + seconds
    while net.now < until:
        for sender, to, raw in list(net.queue):
            message = decode_any(raw, PEER_MESSAGES)
            if to == 2 and isinstance(message, Accept):
                sent.append((sender, message))
        net.run_for(0.01)
    return sent


def test_while_the_ballot_s_node_repairs_the_others_send_no_word() -> None:
    """Node 3's ballot chose v2; node 3's repair of node 2 runs. At the first settle look
    the others, which took v2 too, leave it to node 3 (the lowest-numbered went first
    until session 54, and now could only send word, not the value)."""
    net, chosen = _settling_net(proposer=3)
    sent = _accepts_to_2(net, 5.0)  # past the first look (3 s), before the second (6 s)
    assert {sender for sender, _ in sent} == {3}
    assert all(Ballot(a.round, a.node) == chosen for _, a in sent)


def test_a_stand_in_s_word_brings_a_laggard_the_value_by_a_round_of_its_own() -> None:
    """Node 0's ballot chose v2 and node 0 restarts (its repair and its settling are lost
    with its memory); node 2 comes back intact. A stand-in sends node 2 node 0's Accept,
    which node 2 does not take: it runs a no-op round of its own and so holds v2 under a
    ballot of the fleet's. The stand-ins send word a few times, not once a second (until
    session 54 each resent the value once a second for the repair window)."""
    net, chosen = _settling_net(proposer=0)
    restarted = Replica(
        0,
        range(5),
        net.rand.randbytes,
        net.replicas[0].source,
        net.replicas[0].timing,
        announce=lambda key, payload: True,
    )
    net.replicas[0] = restarted
    net.run(0, restarted.start(net.now, intact=True))
    net.down = set()
    sent = _accepts_to_2(net, 60.0)
    words = [(s, a) for s, a in sent if Ballot(a.round, a.node) == chosen]
    assert words and all(sender != 0 for sender, _ in words)
    assert len(words) <= 6
    held = net.disk[2][KEY]
    assert payload_of(held.value) == b"v2" and held.accepted > chosen
