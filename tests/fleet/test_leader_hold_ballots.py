"""The leader hold's pipelined successor ballot against the node's own leaderless round
(review s49rr; the hold now prepares anew above a ballot its node's round reserved,
`_Lead.floor`).

`_next_round` counts `lead.held + 1` when a leaderless round picks its ballot (so it takes
held + 2), but the hold went on pipelining: each chosen Accept moves `held` one round up
with no look at what the node's own acceptor promised meanwhile. Two chosen Accepts later
the hold sent an Accept at held + 2, the leaderless round's very ballot, and
`_send_accept` let it go (own promise == that ballot). One node, one ballot, two values:
the value a majority chose at it could be lost to the other at the next change.

Default timing. Nodes: 0 = LEADER (the leader, whose client also proposes), 1, 2, 3 honest,
4 = H hostile (forwards changes; any node takes a Forward). The network is the attacker's.
"""

from __future__ import annotations

import random

from backupvault.codec import decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    AppliedOp,
    Ballot,
    Forward,
    ReplicatedValue,
)
from backupvault.fleet.replica import Persist, Replica, Send

LEADER, H = 0, 4
K = b"k"


class Wire:
    def __init__(self) -> None:
        rand = random.Random(7)
        self.now = 0.0
        self.replicas = {i: Replica(i, range(5), rand.randbytes) for i in range(5)}
        for r in self.replicas.values():
            r.start(self.now, intact=True)
        self.pending: list[tuple[int, int, object]] = []
        self.results: dict[bytes, object] = {}
        self.sent: list[tuple[int, int, object]] = []

    def run(self, node: int, effects: list) -> None:
        for e in effects:
            if isinstance(e, Send):
                msg = decode_any(e.message.to_bytes(), PEER_MESSAGES)
                self.pending.append((node, e.to, msg))
                self.sent.append((node, e.to, msg))
            elif isinstance(e, Persist):
                pass
            else:
                self.results[e.op_id] = e

    def take(self, pick) -> list:
        got = [p for p in self.pending if pick(*p)]
        self.pending = [p for p in self.pending if not pick(*p)]
        return got

    def deliver(self, pick) -> None:
        while True:
            batch = self.take(pick)
            if not batch:
                return
            for src, dst, msg in batch:
                if dst == H:
                    continue  # H answers by hand
                self.run(dst, self.replicas[dst].receive(src, msg, self.now))

    def tick(self, node: int, dt: float = 0.0) -> None:
        self.now += dt
        self.run(node, self.replicas[node].tick(self.now))

    def hostile(self, to: int, msg) -> None:
        self.run(to, self.replicas[to].receive(H, msg, self.now))


def add(n: int):
    def change(value: bytes):
        new = int.from_bytes(value or b"\0", "big") + n
        return new.to_bytes(8, "big"), new

    return change


def evil(i: int) -> bytes:
    return ReplicatedValue(
        [AppliedOp(bytes([i]) * 16, 1)], (1000 + i).to_bytes(8, "big")
    ).to_bytes()


def honest(s, d, m) -> bool:
    return d in (1, 2, 3) or (s in (1, 2, 3) and d == LEADER)


def at(ballot: Ballot):
    """Honest traffic of one round only: its Accepts and their answers."""
    return lambda s, d, m: honest(s, d, m) and (m.round, m.node) == (ballot.round, ballot.node)


def _values_at_ballots_sent_by(w: Wire, node: int) -> dict[Ballot, set[bytes]]:
    out: dict[Ballot, set[bytes]] = {}
    for src, _, m in w.sent:
        if src == node and isinstance(m, Accept) and m.node == node:
            out.setdefault(Ballot(m.round, m.node), set()).add(m.value)
    return out


def _attack() -> tuple[Wire, Ballot]:
    w = Wire()
    o = w.replicas[LEADER]
    # H forwards F1: LEADER prepares a hold for k and sends the one-round Accept; all honest
    # nodes take it.
    w.hostile(LEADER, Forward(b"F1" * 8, K, 0, 0, evil(1)))
    w.deliver(honest)
    lead = o._leads[K]
    assert lead.phase == "ready"
    # F2's Accept goes out (held h2); its answers are held by the network.
    w.hostile(LEADER, Forward(b"F2" * 8, K, lead.base.round, lead.base.node, evil(2)))
    assert lead.phase == "accept"
    h2 = lead.held
    f2 = w.take(lambda s, d, m: True)
    # H's F3 (built on F2's ballot) queues, then LEADER's client's change queues behind it.
    w.hostile(LEADER, Forward(b"F3" * 8, K, h2.round, h2.node, evil(3)))
    w.run(LEADER, o.propose(b"P" * 16, K, add(10), w.now))
    assert o._by_op[b"P" * 16].phase == "forward"
    # 0.3 s later F2 is chosen: the hold sends F3's Accept (a fresh round start).
    w.now += 0.3
    w.pending = f2
    w.deliver(at(h2))
    assert lead.phase == "accept"
    h3 = lead.held
    f3 = w.take(lambda s, d, m: True)
    # 0.5 s after LEADER's change was forwarded it goes leaderless (the hold's round is younger).
    w.tick(LEADER, 0.2)
    p = o._by_op[b"P" * 16]
    assert p.phase == "prepare", p.phase
    assert o._record(K).promised == p.ballot  # reserved, as the fix requires
    w.take(lambda s, d, m: True)  # its Prepares wait on the wire
    # F3 is chosen; the hold pipelines on, with H's next forwards, up to P's ballot.
    w.pending = f3
    w.deliver(at(h3))
    for i in range(4, 8):
        if lead.held > p.ballot or lead.phase != "ready":
            break
        w.hostile(LEADER, Forward(b"F%d" % i * 8, K, lead.base.round, lead.base.node, evil(i)))
        if lead.held == p.ballot:
            break
        w.deliver(at(lead.held))
    return w, p.ballot


def test_the_leader_hold_never_pipelines_onto_a_ballot_its_own_round_reserved() -> None:
    w, b = _attack()
    two = {
        ballot: vals
        for ballot, vals in _values_at_ballots_sent_by(w, LEADER).items()
        if len(vals) > 1
    }
    held = w.replicas[LEADER]._leads[K]
    # Either the hold never reached the round's ballot, or it sent nothing there.
    assert not (held.held == b and held.phase == "accept"), f"hold sends an Accept at {b}"
    assert not two
