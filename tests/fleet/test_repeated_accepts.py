"""An Accept that arrives again after the acceptor's promise moved past it (a duplicate on
the wire, a repair's resend, a hostile node's replay): answered as taken only when this
node itself took it (docs/fleet.md, "An Accept that arrives again")."""

from __future__ import annotations

from dataclasses import replace

from test_replica import Net, _value

from backupvault.codec import Message, decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    AcceptorRecord,
    Ballot,
    Prepare,
    payload_of,
)
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Committed, Replica, Send

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


def test_a_repeat_of_an_accept_this_node_took_is_answered_as_taken_pipelined_or_not() -> None:
    """Review s50r3: a hostile node replayed the leader's Accept with the pipeline flag
    cleared to the acceptors that took it; they refused it (their promise had moved one
    round up), naming the leader's own digest, and the leader dropped its hold. The
    acceptor took that Accept itself, so it answers its node's repeat (a duplicate, or a
    settling resend once the node's own promise has moved on, which clears the flag) as
    taken, flag or not; a copy from any other node is not taken nor answered (S1)."""
    net = _registered()
    top = _top(net)
    v = _value(b"v, the leader's")
    pipelined = Accept(b"op-v", KEY, top + 1, 1, v, 1, True)
    repeat = Accept(b"op-v", KEY, top + 1, 1, v, 1, False)
    acceptor = net.replicas[2]
    assert _answers(acceptor.receive(1, pipelined, net.now), 1)[0].ok
    assert acceptor.source.get(KEY).promised == Ballot(top + 2, 1)  # type: ignore[union-attr]
    for message in (repeat, pipelined):
        assert acceptor.receive(3, message, net.now) == []  # a copy from node 3
        answer = _answers(acceptor.receive(1, message, net.now), 1)
        assert answer and answer[0].ok and answer[0].promised_round == top + 2
    assert acceptor.source.get(KEY).promised == Ballot(top + 2, 1)  # type: ignore[union-attr]


def test_another_value_or_a_lower_ballot_is_still_refused() -> None:
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
        assert acceptor.receive(3, message, net.now) == []
        answer = _answers(acceptor.receive(1, message, net.now), 1)
        assert answer and not answer[0].ok
    record = acceptor.source.get(KEY)
    assert record is not None and record.value == v and record.accepted == Ballot(top + 1, 1)


def _append(tag: bytes):
    def change(payload: bytes) -> tuple[bytes, None]:
        return payload + b"+" + tag, None

    return change


def _pop(net: Net, want) -> list[tuple[int, int, Message]]:
    """Take the queued messages that `want(sender, to, message)`, leave the others."""
    taken, kept = [], []
    for sender, to, raw in net.queue:
        message = decode_any(raw, PEER_MESSAGES)
        (taken if want(sender, to, message) else kept).append((sender, to, message))
    net.queue.clear()
    net.queue.extend((sender, to, message.to_bytes()) for sender, to, message in kept)
    return taken


def _deliver(net: Net, messages: list[tuple[int, int, Message]]) -> None:
    for sender, to, message in messages:
        net.run(to, net.replicas[to].receive(sender, message, net.now))


def _leader_and_a_node_a_round_behind(*, announce: bool) -> tuple[Net, Accept]:
    """Node 0 leads the entry, holding (3, 0); node 4 holds the hold's Prepare of (2, 0)
    but not its Accept, so its next ballot is (3, 4), between (3, 0) and (4, 0). Node 0's
    change v is on the wire at (3, 0), pipelined; it is returned, the wire emptied."""
    net = Net(5, seed=5, announce=announce)
    net.propose(0, b"op-first", KEY, lambda value: (b"first", None))
    net.settle()
    assert net.replicas[0]._leads[KEY].held == Ballot(3, 0)
    told = (lambda key, payload: True) if announce else None
    behind = MemoryRecords.of([AcceptorRecord(KEY, 2, 0)])
    net.replicas[4] = Replica(4, range(5), net.rand.randbytes, behind, announce=told)
    net.run(4, net.replicas[4].start(net.now, intact=True))
    net.propose(0, b"op-v", KEY, _append(b"v"))
    real = _pop(net, lambda sender, to, m: isinstance(m, Accept) and sender == 0)[0][2]
    assert isinstance(real, Accept) and (real.round, real.node, real.pipeline) == (3, 0, True)
    net.queue.clear()
    return net, real


def _node_4_prepares(net: Net) -> list[tuple[int, int, Message]]:
    """Node 4's change w: its Forward to the leader is lost, it goes leaderless at (3, 4);
    its Prepares to nodes 2 and 3 are returned."""
    net.propose(4, b"op-w", KEY, _append(b"w"))
    net.queue.clear()
    for _ in range(200):
        net.now += 0.01
        net.run(4, net.replicas[4].tick(net.now))
        if net.queue:
            break
    prepares = _pop(net, lambda sender, to, m: sender == 4 and to in (2, 3))
    net.queue.clear()
    assert prepares and all(
        isinstance(m, Prepare) and (m.round, m.node) == (3, 4) for _, _, m in prepares
    )
    return prepares


def _every_committed_change_is_in_the_end(net: Net) -> None:
    net.propose(0, b"op-x", KEY, _append(b"x"))
    net.settle(30.0)
    final = {payload_of(r.source.get(KEY).value) for r in net.replicas.values()}  # type: ignore[union-attr]
    assert len(final) == 1
    (value,) = final
    for op, tag in ((b"op-v", b"+v"), (b"op-w", b"+w"), (b"op-x", b"+x")):
        if isinstance(net.results.get(op), Committed):
            assert tag in value, (op, value)


def test_a_take_without_the_pipelined_promise_is_no_phase_1_of_the_next_ballot() -> None:
    """Review s51 (of the repeat rule): a hostile node's replay of the leader's Accept
    with the pipeline flag cleared reached nodes 2 and 3 first, so they promised only
    (3, 0); node 4 then prepared (3, 4) there; the leader's real Accept, a repeat of what
    they took, was answered ok, the leader counted it as their promise of (4, 0) and sent
    its next change there with no Prepare, built on v, while w was chosen at (3, 4) on
    v: w was lost. The repeat now promises (4, 0) as the real Accept asks, so w is not
    taken at (3, 4) there, and every change that committed is in the end. (A hostile
    node's copy is no longer taken at all, S1; the flag-cleared copy here is the leader's
    own, the shape of a settling resend once its promise has moved on.)"""
    net, real = _leader_and_a_node_a_round_behind(announce=False)
    replay = replace(real, pipeline=False)
    _deliver(net, [(0, acceptor, replay) for acceptor in (2, 3)])
    assert net.replicas[2].source.get(KEY).promised == Ballot(3, 0)  # type: ignore[union-attr]
    net.queue.clear()
    prepares = _node_4_prepares(net)
    _deliver(net, prepares)
    promises = _pop(net, lambda sender, to, m: True)
    _deliver(net, [(0, acceptor, real) for acceptor in (2, 3)])  # the real one, repeated
    answers = _pop(net, lambda sender, to, m: to == 0)
    assert all(isinstance(m, Accepted) and m.ok for _, _, m in answers)
    assert all((m.promised_round, m.promised_node) == (4, 0) for _, _, m in answers)  # type: ignore[union-attr]
    _deliver(net, answers)
    _deliver(net, promises)
    _every_committed_change_is_in_the_end(net)


def test_an_answer_that_promised_only_the_held_ballot_does_not_count_for_the_hold() -> None:
    """The same without a repeat: for an announced entry the answer to the flag-cleared
    copy goes to every node, the leader too, which counted it as a promise of (4, 0)."""
    net, real = _leader_and_a_node_a_round_behind(announce=True)
    replay = replace(real, pipeline=False)
    _deliver(net, [(0, acceptor, replay) for acceptor in (2, 3)])
    _deliver(net, _pop(net, lambda sender, to, m: to == 0))
    net.queue.clear()
    assert net.replicas[0]._leads[KEY].held == Ballot(3, 0)  # not (4, 0): no phase 1 of it
    prepares = _node_4_prepares(net)
    _deliver(net, prepares)
    _deliver(net, _pop(net, lambda sender, to, m: to == 4))
    _deliver(net, _pop(net, lambda sender, to, m: isinstance(m, Accept) and to in (2, 3)))
    _deliver(net, _pop(net, lambda sender, to, m: to == 4))
    assert isinstance(net.results[b"op-w"], Committed)  # w (on v) chosen at (3, 4)
    net.queue.clear()
    _every_committed_change_is_in_the_end(net)
