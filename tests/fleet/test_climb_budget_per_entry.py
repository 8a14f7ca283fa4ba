"""The budget of what a proposer learns from a peer's refusals is kept per peer and
entry, and a repair keeps a node that climbs (review s50 of 1036920, where an acceptor
first climbed toward a far ballot by itself). With one budget per peer for every entry, a
hostile node had an honest peer's refusals of a made-up entry spend it just before each
round that needed it (older: session 49's code too); and a repair dropped a node still
climbing when its refusal came twice or late, or (review s50b) when a hostile node's
Accept of another value under the ballot was refused. The acceptor's own climbing budget
stays one pool per peer: docs/fleet.md, "Rounds walked up by a hostile node".

Nodes: 0-3 honest, 4 = H hostile (silent in the rounds; it sends only what a test says).
"""

from __future__ import annotations

from dataclasses import replace

from test_replica import Net, _refusing, add, put
from test_rounds_walked import _proposing, _walk, left_far_behind

from backupvault.codec import decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    AppliedOp,
    Forward,
    Prepare,
    Promise,
    ReplicatedValue,
    payload_of,
)
from backupvault.fleet.replica import MAX_ROUND_STEP, Committed, Send

H, K = 4, b"k"
HOSTILE_VALUE = ReplicatedValue([AppliedOp(b"h" * 16, 1)], b"x").to_bytes()


def _deliver(net: Net, only=lambda s, t, m: True) -> None:
    """Deliver what is queued (and what that sets off) now, with no ticks; messages that
    `only` rejects stay queued, in order."""
    kept = []
    while net.queue:
        sender, to, raw = net.queue.popleft()
        if to in net.down or sender in net.down:
            continue
        message = decode_any(raw, PEER_MESSAGES)
        if not only(sender, to, message):
            kept.append((sender, to, raw))
            continue
        net.run(to, net.replicas[to].receive(sender, message, net.now))
    net.queue.extend(kept)


# ---- the budget of what a proposer learns from an honest peer, drained (older) ----


def test_a_hostile_node_cannot_drain_a_proposers_learning_budget_for_an_honest_peer() -> None:
    """The climbing budget a proposer keeps per refusing peer (review s49rr) is also spent
    by that honest peer's refusals of ballots H set off: H walks a made-up entry a free
    step at nodes 1 and 2 (whose floors the walk of k lifted 300 steps) and forwards a change
    to it to node 0; node 0's Prepare for it, at round 1, is refused by both with promises
    300 steps up, and its budgets for 1 and 2 are spent there. Timed before each refusal
    of node 0's ballot for k (5 messages), node 0 learns k's rounds a step a round and the
    change fails; without it, it commits in 1.5 s."""
    net = Net()
    for replica in net.replicas.values():
        replica.timing = replace(replica.timing, leader=False)
    assert _proposing(net, 0, b"a", K) == Committed(b"a", 1)
    net.down.add(H)
    for walked in (1, 2):
        _walk(net, walked, 300)
    net.queue.clear()
    drains = 0

    def drain() -> None:
        nonlocal drains
        drains += 1
        made_up = b"made-up-%d" % drains
        for walked in (1, 2):
            r = net.replicas[walked]
            walk = Prepare(b"d%d" % drains, made_up, r._max_round + MAX_ROUND_STEP, H)
            net.run(walked, r.receive(H, walk, net.now))
        forward = Forward(b"f%015d" % drains, made_up, 0, 0, HOSTILE_VALUE)
        saved = list(net.queue)
        net.queue.clear()
        net.run(0, net.replicas[0].receive(H, forward, net.now))
        _deliver(net, lambda s, t, m: m.key == made_up)
        net.queue.extend(saved)

    net.run(0, net.replicas[0].propose(b"b", K, add(1), net.now))
    deadline = net.now + 10
    while b"b" not in net.results and net.now < deadline:
        while net.queue:
            sender, to, raw = net.queue.popleft()
            if to in net.down or sender in net.down:
                continue
            message = decode_any(raw, PEER_MESSAGES)
            if to == 0 and isinstance(message, Promise) and message.key == K and not message.ok:
                drain()
            net.run(to, net.replicas[to].receive(sender, message, net.now))
        net.now += 0.01
        for i in range(4):
            net.run(i, net.replicas[i].tick(net.now))
    assert net.results[b"b"] == Committed(b"b", 2), f"{drains} drains"


# ---- a repair and a climbing node's refusals ----


def test_a_repair_keeps_a_climbing_node_when_its_refusal_arrives_twice() -> None:
    """A repair took a refusal whose promise did not rise since the last for the check's
    final word: a climbing node's refusal delivered twice (the simulator's links duplicate
    a message; one delayed past the next resend, up to 3 s there, does the same) had it
    drop node 2 while it climbed, and node 2 kept the old value for good. A refusal
    naming a promise below the ballot now always keeps the node pending."""
    net = Net()
    chosen = left_far_behind(net)
    deadline = net.now + 30.0
    while net.now < deadline and net.disk[2][K].value != chosen.value:
        net.now += 0.1
        for i in range(4):
            net.run(i, net.replicas[i].tick(net.now))
        while net.queue:
            sender, to, raw = net.queue.popleft()
            if to in net.down or sender in net.down:
                continue
            message = decode_any(raw, PEER_MESSAGES)
            net.run(to, net.replicas[to].receive(sender, message, net.now))
            if sender == 2 and isinstance(message, Accepted) and not message.ok:
                net.run(to, net.replicas[to].receive(sender, message, net.now))  # again
    assert net.disk[2][K].value == chosen.value


def test_a_check_refusal_from_a_node_below_the_ballot_is_final_at_once() -> None:
    """A node that missed the round stands below the ballot; its check refuses the value.
    Its refusal promises the ballot and names it (a climb's names a lower one), so the
    repair takes it as final: the node is sent the round's Accept and no resend, and
    nothing lags."""
    net = Net()
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    _refusing(net, 4, leader=False)
    net.down.add(4)
    net.propose(0, b"two", K, put(b"\x02"))
    net.settle()
    assert isinstance(net.results[b"two"], Committed)
    net.down.discard(4)
    accepts: list[Accept] = []
    run = net.run

    def watching(node: int, effects: list) -> None:
        accepts.extend(
            e.message
            for e in effects
            if isinstance(e, Send) and e.to == 4 and isinstance(e.message, Accept)
        )
        run(node, effects)

    net.run = watching  # type: ignore[method-assign]
    for _ in range(300):  # 30 s of ticks
        net.now += 0.1
        for i, replica in net.replicas.items():
            net.run(i, replica.tick(net.now))
        net.settle()
    assert len(accepts) == 1, accepts
    assert net.disk[4][K].promised_round == accepts[0].round
    assert all(not r.lagging() for i, r in net.replicas.items())
    assert payload_of(net.disk[4][K].value) == b"\x01"
