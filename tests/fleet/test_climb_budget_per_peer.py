"""The climbing budget (`CLIMB_STEPS_PER_SECOND`) is kept per refusing peer (review
s49rr: it was one pool per node that any peer's refusal spent; per entry too since review
s50, tests/fleet/test_climb_budget_per_entry.py). A hostile node that
forwards the victim a change for a made-up entry and refuses the Prepare it sets off,
claiming a far promise, spent the whole pool (256 steps) with two messages; ordered just
before each honest refusal (the network is the attacker's), it left every honest climb a
step a round, which is the s49 stall the rungs were made to end: a walk of 300 steps at
two honest nodes (600 Prepares) then made the next change fail, where without the drain
it commits in about 1.5 s.

Nodes: 1 = X (the victim, proposing leaderless), 0, 2, 3 honest, 4 = H hostile (silent to
rounds of k, which is what docs/fleet.md's numbers assume)."""

from __future__ import annotations

import random
from dataclasses import replace

from backupvault.codec import decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accepted,
    AppliedOp,
    Forward,
    Prepare,
    Promise,
    ReplicatedValue,
)
from backupvault.fleet.replica import (
    MAX_ROUND_STEP,
    ROUND_CEILING,
    Committed,
    Persist,
    Replica,
    Send,
)

X, H = 1, 4
K = b"k"


class Wire:
    def __init__(self, drain: bool) -> None:
        rand = random.Random(3)
        self.now = 0.0
        self.replicas = {i: Replica(i, range(5), rand.randbytes) for i in range(5)}
        for r in self.replicas.values():
            r.timing = replace(r.timing, leader=False)
            r.start(self.now, intact=True)
        self.pending: list[tuple[int, int, object]] = []
        self.results: dict[bytes, object] = {}
        self.drain = drain
        self.drains = 0

    def run(self, node: int, effects: list) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.pending.append((node, e.to, decode_any(e.message.to_bytes(), PEER_MESSAGES)))
            elif not isinstance(e, Persist):
                self.results[e.op_id] = e

    def spend(self) -> None:
        """H's two messages: a Forward for a made-up entry, and a refusal of the Prepare
        it sets off, claiming a promise near the ceiling."""
        self.drains += 1
        key = b"made-up-%d" % self.drains
        value = ReplicatedValue([AppliedOp(b"h" * 16, 1)], b"x").to_bytes()
        before = len(self.pending)
        self.run(X, self.replicas[X].receive(H, Forward(b"f" * 16, key, 0, 0, value), self.now))
        sent, self.pending = self.pending[before:], self.pending[:before]
        for _src, dst, m in sent:
            if dst == H and isinstance(m, Prepare):
                no = Promise(m.op_id, key, m.round, m.node, False, 0, 0, b"", ROUND_CEILING - 2, H)
                self.run(X, self.replicas[X].receive(H, no, self.now))

    def flush(self) -> None:
        while self.pending:
            src, dst, m = self.pending.pop(0)
            if dst == H or src == H:
                continue  # H is silent in k's rounds
            refusal = isinstance(m, (Promise, Accepted)) and not m.ok and m.key == K
            if self.drain and dst == X and refusal:
                self.spend()
            self.run(dst, self.replicas[dst].receive(src, m, self.now))

    def walk(self, node: int, steps: int) -> None:
        r = self.replicas[node]
        for i in range(steps):
            round_ = max(r._max_round, r._record(K).promised.round) + MAX_ROUND_STEP
            self.run(node, r.receive(H, Prepare(b"w%d" % i, K, round_, H), self.now))
        self.pending.clear()


def add(n: int):
    def change(value: bytes):
        new = int.from_bytes(value or b"\0", "big") + n
        return new.to_bytes(8, "big"), new

    return change


def _change_after_a_walk(drain: bool, steps: int = 300) -> tuple[object, int]:
    w = Wire(drain)
    w.run(X, w.replicas[X].propose(b"a" * 16, K, add(1), w.now))
    w.flush()
    assert isinstance(w.results[b"a" * 16], Committed)
    w.walk(2, steps)
    w.walk(3, steps)  # 2 x 300 Prepares, once
    w.run(X, w.replicas[X].propose(b"b" * 16, K, add(1), w.now))
    while b"b" * 16 not in w.results:
        w.flush()
        w.now += 0.05
        for i in (0, 1, 2, 3):
            w.run(i, w.replicas[i].tick(w.now))
    return w.results[b"b" * 16], w.drains


def test_without_the_drain_a_300_step_walk_delays_a_change_about_a_second() -> None:
    result, _ = _change_after_a_walk(drain=False)
    assert isinstance(result, Committed)


def test_two_hostile_messages_per_round_do_not_stop_an_honest_climb() -> None:
    result, drains = _change_after_a_walk(drain=True)
    assert isinstance(result, Committed), (
        result,
        f"{drains} drains, {2 * drains} hostile messages",
    )
