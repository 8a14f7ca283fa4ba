"""An Accept that arrives again after the acceptor's promise moved past it (a duplicate on
the wire, a repair's resend, a hostile node's replay): answered as taken only when this
node itself took it (docs/fleet.md, "Pipelined promise")."""

from __future__ import annotations

from test_replica import Net, _value

from backupvault.fleet.messages import Accept, Accepted, Ballot, Prepare
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Replica, Send

KEY = b"k"


def _answers(effects: list, to: int) -> list[Accepted]:
    return [
        e.message
        for e in effects
        if isinstance(e, Send) and e.to == to and isinstance(e.message, Accepted)
    ]


def _top(net: Net) -> int:
    return max(r.source.get(KEY).promised.round for r in net.replicas.values())  # type: ignore[union-attr]


def _registered() -> Net:
    net = Net(5, seed=5)
    net.propose(0, b"op-first", KEY, lambda value: (b"first", None))
    net.settle()
    return net


def test_a_value_held_only_as_a_catch_up_copy_is_not_answered_below_the_promise() -> None:
    """Node 1's Accept of v (pipelined, as a leader's) reached nodes 2 and 3 only: not
    chosen. Node 4's round then had node 0's promise, which reported the older value. Node 0
    was rolled back and caught up: it copied v from node 2 and node 4's promise from node 4.
    A duplicate of node 1's Accept then reached it. Answered as taken (as before session
    51), v had a majority (0, 2, 3) at its ballot, and node 4's round, built on the older
    value with node 0's promise, a majority (0, 1, 4) at a higher one: two values chosen,
    the later not built on the earlier (a committed change lost), with no hostile node."""
    net = _registered()
    top = _top(net)
    rolled_back = net.replicas[0].source.get(KEY)
    assert rolled_back is not None
    v = _value(b"v, node 1's")
    accept_v = Accept(b"op-v", KEY, top + 1, 1, v, 1, True)
    for acceptor in (2, 3):
        assert _answers(net.replicas[acceptor].receive(1, accept_v, net.now), 1)[0].ok
    promises = []
    for acceptor in (0, 1, 4):
        promises += net.replicas[acceptor].receive(4, Prepare(b"op-w", KEY, top + 3, 4), net.now)
    assert len(promises) >= 3  # node 4's round has a majority's promise of (top + 3, 4)
    net.queue.clear()
    net.replicas[0] = Replica(0, range(5), net.rand.randbytes, MemoryRecords.of([rolled_back]))
    net.run(0, net.replicas[0].start(net.now))
    net.settle()
    copied = net.replicas[0].source.get(KEY)
    assert net.replicas[0].ready and copied is not None
    assert copied.accepted == Ballot(top + 1, 1) and copied.value == v
    assert copied.promised == Ballot(top + 3, 4)

    answer = _answers(net.replicas[0].receive(1, accept_v, net.now), 1)
    assert answer and not answer[0].ok  # it never took v itself, and promised above it

    w = _value(b"w, node 4's, on the first value")
    for acceptor in (0, 1, 4):  # node 4's own acceptor answers it without the network
        net.replicas[acceptor].receive(4, Accept(b"op-w", KEY, top + 3, 4, w, 4, False), net.now)
        record = net.replicas[acceptor].source.get(KEY)
        assert record is not None and record.accepted == Ballot(top + 3, 4) and record.value == w
    # w is chosen (0, 1, 4); v, at a lower ballot, was taken by 2 and 3 only.


def test_a_replay_of_an_accept_this_node_took_is_answered_as_taken_pipelined_or_not() -> None:
    """Review s50r3: a hostile node replayed the leader's Accept with the pipeline flag
    cleared to the acceptors that took it; they refused it (their promise had moved one
    round up), naming the leader's own digest, and the leader dropped its hold. The
    acceptor took that Accept itself, so it answers again as before, flag or not."""
    net = _registered()
    top = _top(net)
    v = _value(b"v, the leader's")
    pipelined = Accept(b"op-v", KEY, top + 1, 1, v, 1, True)
    replay = Accept(b"op-v", KEY, top + 1, 1, v, 1, False)
    acceptor = net.replicas[2]
    assert _answers(acceptor.receive(1, pipelined, net.now), 1)[0].ok
    assert acceptor.source.get(KEY).promised == Ballot(top + 2, 1)  # type: ignore[union-attr]
    for message in (replay, pipelined):
        answer = _answers(acceptor.receive(3, message, net.now), 1)  # to the origin, node 1
        assert answer and answer[0].ok and answer[0].promised_round == top + 2
    assert acceptor.source.get(KEY).promised == Ballot(top + 2, 1)  # type: ignore[union-attr]


def test_a_replay_with_another_value_or_a_lower_ballot_is_still_refused() -> None:
    net = _registered()
    top = _top(net)
    v = _value(b"v, the leader's")
    acceptor = net.replicas[2]
    assert _answers(acceptor.receive(1, Accept(b"op-v", KEY, top + 1, 1, v, 1, True), net.now), 1)[
        0
    ].ok
    forged = Accept(b"op-v", KEY, top + 1, 1, _value(b"another"), 1, False)
    below = Accept(b"op-u", KEY, top, 1, v, 1, True)
    for message in (forged, below):
        answer = _answers(acceptor.receive(3, message, net.now), 1)
        assert answer and not answer[0].ok
    record = acceptor.source.get(KEY)
    assert record is not None and record.value == v and record.accepted == Ballot(top + 1, 1)
