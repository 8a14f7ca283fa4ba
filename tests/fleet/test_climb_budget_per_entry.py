"""Climbing budgets are kept per peer and entry, and a repair keeps a node that climbs
(review s50 of 1036920, where an acceptor first climbed toward a far ballot by itself).
With one budget per peer for every entry, a hostile node had an honest peer spend it on
a made-up entry just before each round or resend that needed it (the first two tests;
the third, for the budget of what a proposer learns, failed on session 49's code too);
and a repair dropped a node still climbing when its refusal came twice or late.

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


def _drain_at_others(net: Net, victim: int, n: int) -> None:
    """H's two messages: a Prepare for a made-up entry a free step above `victim`'s floor
    (no budget of H's is spent), and a Forward of a change to it. `victim` leads the entry
    and prepares it just above its own floor; every acceptor whose rounds stand below climbs
    toward that ballot on `victim`'s budget there, which is one pool for every entry."""
    r = net.replicas[victim]
    made_up = b"made-up-%d" % n
    walk = Prepare(b"d%d" % n, made_up, r._max_round + MAX_ROUND_STEP, H)
    net.run(victim, r.receive(H, walk, net.now))
    forward = Forward(b"f%015d" % n, made_up, 0, 0, HOSTILE_VALUE)
    net.run(victim, r.receive(H, forward, net.now))
    # The network is the attacker's: the made-up entry's messages land first.
    _deliver(net, lambda s, t, m: getattr(m, "key", None) == made_up)


# ---- the acceptor's budget, drained through the victim's own traffic ----


def test_a_hostile_node_cannot_drain_a_repairers_climbing_budget() -> None:
    """As test_a_repair_climbs_a_node_left_far_behind_over_its_resends (node 2 stands 600
    steps below the chosen ballot, node 0 repairs it), with H sending node 0 two messages
    before each resend (`_drain_at_others`). Node 0's budget at node 2 is spent on the
    made-up entry, so each resend climbs node 2 one or two steps: after the repair window
    node 2 still holds the old value (on 1aae77c the repair's rungs climbed it in 8 s)."""
    net = Net()
    chosen = left_far_behind(net)
    deadline = net.now + net.replicas[0].timing.repair_window + 10
    drains = 0
    while net.now < deadline and net.disk[2][K].value != chosen.value:
        net.now += 0.1
        if any(r.next_at <= net.now for r in net.replicas[0]._repairs.values()):
            drains += 1
            _drain_at_others(net, 0, drains)
        for i in range(4):
            net.run(i, net.replicas[i].tick(net.now))
        _deliver(net)
    assert net.disk[2][K].value == chosen.value, (
        f"node 2 left {(chosen.accepted_round - net.disk[2][K].promised_round) // MAX_ROUND_STEP}"
        f" steps below after {drains} drains ({2 * drains} hostile messages)"
    )


def test_a_hostile_node_cannot_drain_a_proposers_climbing_budget() -> None:
    """H walks k up 300 steps at nodes 1 and 2 (600 Prepares, once). Node 1's change (it
    stands with node 2 at the walked rounds) needs node 0 or 3 to climb 300 steps on node
    1's budget there: it commits in 0.5 s. With H's two messages before each of node 1's
    rounds (`_drain_at_others`, 8 messages a change), every change fails (on 1aae77c it
    committed in 1.5 s with the same messages)."""
    net = Net()
    for replica in net.replicas.values():
        replica.timing = replace(replica.timing, leader=False)
    assert _proposing(net, 1, b"a", K) == Committed(b"a", 1)
    net.down.add(H)
    for walked in (1, 2):
        _walk(net, walked, 300)
    net.queue.clear()
    drains = 0
    run = net.run

    def draining(node: int, effects: list) -> None:
        nonlocal drains
        ours = [e for e in effects if isinstance(e, Send) and isinstance(e.message, Prepare)]
        if node == 1 and any(e.message.key == K and e.message.node == 1 for e in ours):
            net.run = run
            drains += 1
            _drain_at_others(net, 1, drains)
            net.run = draining
        run(node, effects)

    net.run = draining  # type: ignore[method-assign]
    assert _proposing(net, 1, b"b", K) == Committed(b"b", 2), f"{drains} drains"


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
