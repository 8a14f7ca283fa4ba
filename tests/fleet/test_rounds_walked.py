"""A hostile node walking honest acceptors' rounds up (review s49), on replicas in
memory: the rungs that let the acceptors it left behind climb, and the floor a copy
cannot lift (the step and the store: tests/node/test_rounds_walked_by_a_hostile_node.py)."""

from __future__ import annotations

from dataclasses import replace

from test_replica import Net, add

from backupvault.fleet.messages import Accept, AcceptorRecord, Ballot, Prepare, SyncResponse
from backupvault.fleet.replica import (
    CLIMB_BURST_STEPS,
    MAX_ROUND_STEP,
    MAX_RUNGS,
    ROUND_CEILING,
    Committed,
    Failed,
    Replica,
    Send,
)


def _proposing(net: Net, node: int, op: bytes, key: bytes) -> Committed | Failed:
    net.run(node, net.replicas[node].propose(op, key, add(1), net.now))
    net.settle(60.0)
    return net.results[op]


def test_two_honest_acceptors_walked_up_do_not_stall_an_entry() -> None:
    """Node 4 (hostile, silent from then on) walks entry k's rounds at nodes 1 and 2 up
    1,000 steps, a Prepare a step above the last each (2,000 messages). The other two
    honest nodes stand a step per message below, and take no ballot more than a step
    above their own rounds, so a change needs nodes 0 and 3 to climb first. They climbed
    a step per refused round, 4 steps per change of 6 s: every change to k failed for
    minutes, and 100 Prepares stalled it a minute (review s49). Each ballot is now
    preceded by rungs a step apart (`MAX_RUNGS` a round), and the first change commits."""
    net = Net()
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    net.down.add(4)
    for walked in (1, 2):
        target = net.replicas[walked]
        for i in range(1000):
            prepare = Prepare(b"w%d" % i, b"k", target._max_round + MAX_ROUND_STEP, 4)
            net.run(walked, target.receive(4, prepare, net.now))
        assert net.disk[walked][b"k"].promised_round > 1000 * MAX_ROUND_STEP
    net.queue.clear()
    assert _proposing(net, 0, b"after", b"k") == Committed(b"after", 2)
    assert _proposing(net, 3, b"again", b"k") == Committed(b"again", 3)


def test_the_rungs_are_only_prepares_and_only_when_rounds_were_walked() -> None:
    """Without a hostile node a round sends one Prepare per peer, as before; with rungs,
    every message below the ballot is a Prepare (no value is ever offered at a rung)."""
    net = Net()
    sent: list[object] = []
    run = net.run

    def watching(node: int, effects: list) -> None:
        sent.extend(e.message for e in effects if isinstance(e, Send))
        run(node, effects)

    net.run = watching  # type: ignore[method-assign]
    for i in range(3):
        assert _proposing(net, i, b"op%d" % i, b"k") == Committed(b"op%d" % i, i + 1)
    prepares = [m for m in sent if isinstance(m, Prepare)]
    assert len(prepares) <= 3 * 4  # at most one round of Prepares per change
    net.down.add(4)
    target = net.replicas[1]
    for i in range(300):
        net.run(
            1,
            target.receive(
                4, Prepare(b"w%d" % i, b"k", target._max_round + MAX_ROUND_STEP, 4), net.now
            ),
        )
    sent.clear()
    assert _proposing(net, 0, b"after", b"k") == Committed(b"after", 4)
    highest = max(m.round for m in sent if isinstance(m, Prepare | Accept))
    assert all(isinstance(m, Prepare) for m in sent if getattr(m, "round", highest) < highest - 1)


def test_a_copied_record_at_the_ceiling_does_not_switch_off_the_inflation_check() -> None:
    """A hostile peer's catch-up copy can lift a catching-up node's promise to just under
    the ceiling for the entries that peer names (threshold.md, "Catching up"). One such
    record, for a made-up name, also lifted the node's floor (`_max_round`) to the
    ceiling, so the inflation check was void there for good: a Prepare at
    ROUND_CEILING - 1 for any entry, one registered later too, was taken. Done to two
    honest nodes that caught up (a wipe, a rollback), with the hostile node itself that
    was no majority for any entry. A record now lifts the floor a step at most."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    for victim in (1, 2):  # each restarts from a wiped disk and asks its peers
        net.replicas[victim] = Replica(victim, range(5), net.rand.randbytes)
        effects = net.replicas[victim].start(net.now)
        net.run(victim, effects)
        ask = next(e.message for e in effects if isinstance(e, Send) and e.to == 4)
        lie = SyncResponse(ask.sync_id, True, [AcceptorRecord(b"made-up", ROUND_CEILING, 4)])
        net.run(victim, net.replicas[victim].receive(4, lie, net.now))
        net.settle()
        assert net.replicas[victim].ready
    # Later (hours, days), for an entry the page never named:
    net.propose(0, b"later", b"k2", add(1))
    net.settle()
    assert net.results[b"later"] == Committed(b"later", 1)
    for victim in (1, 2):
        effects = net.replicas[victim].receive(
            4, Prepare(b"x", b"k2", ROUND_CEILING - 1, 4), net.now
        )
        net.run(victim, effects)
    net.queue.clear()
    net.down.add(4)
    net.propose(0, b"after", b"k2", add(1))
    net.settle(60.0)
    assert net.results[b"after"] == Committed(b"after", 2), net.results[b"after"]


def test_a_wiped_node_takes_part_in_an_entry_whose_rounds_it_copied_high() -> None:
    """Copies do not lift a node's floor past a step, so a wiped node that copied an entry
    walked 5 steps up stands below that entry's rounds; its acceptor measures a ballot
    against the entry's own promise too, or it would refuse every ballot for the entry
    (and every rung: it reports the copied promise) and, with two nodes down, the entry
    would have no majority."""
    net = Net()
    for node in (0, 1, 2):
        target = net.replicas[node]
        for i in range(5):
            prepare = Prepare(b"w%d" % i, b"k", target._max_round + MAX_ROUND_STEP, 4)
            net.run(node, target.receive(4, prepare, net.now))
    net.queue.clear()
    net.down = {3, 4}
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    net.down = set()
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes)
    net.run(1, net.replicas[1].start(net.now))
    net.settle()
    assert net.replicas[1].ready
    assert net.replicas[1].source.get(b"k").promised_round > 5 * MAX_ROUND_STEP
    assert net.replicas[1]._max_round <= 2 * MAX_ROUND_STEP
    net.down = {0, 2}
    assert _proposing(net, 3, b"b", b"k") == Committed(b"b", 2)


def test_a_node_sends_no_prepare_its_own_acceptor_has_not_promised() -> None:
    """A node's next ballot for an entry goes above its own acceptor's promise, which so
    reserves every ballot it used. Rounds learned far above that promise (a refused
    repair's ballot is often the leader's, and rungs climb only `MAX_RUNGS` steps a round)
    had its own acceptor refuse its Prepare, which left anyway, unreserved: its own leader
    hold then took the same ballot for another value (review s49r: a committed change was
    lost). Such a Prepare now waits while rungs climb its own acceptor."""
    net = Net()
    for replica in net.replicas.values():
        replica.timing = replace(replica.timing, leader=False)
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    node = net.replicas[1]
    own = node._record(b"k").promised.round
    node._learned[b"k"] = own + 600 * MAX_ROUND_STEP  # as refusals of others' ballots teach
    unreserved: list[Prepare] = []
    run = net.run

    def watching(sender: int, effects: list) -> None:
        for effect in effects:
            message = getattr(effect, "message", None)
            ours = sender == 1 and isinstance(message, Prepare) and message.node == 1
            if ours and node._record(b"k").promised < Ballot(message.round, 1):
                unreserved.append(message)
        run(sender, effects)

    net.run = watching  # type: ignore[method-assign]
    assert _proposing(net, 1, b"b", b"k") == Committed(b"b", 2)
    assert unreserved == []
    assert node._record(b"k").promised.round > own + 600 * MAX_ROUND_STEP


def test_refusals_claiming_far_promises_climb_within_the_budget() -> None:
    """One refusal's word lifts the next ballot a step; beyond that, up to `MAX_RUNGS` + 1
    steps, only within `CLIMB_STEPS_PER_SECOND` (a burst of `CLIMB_BURST_STEPS`): two
    hostile messages each time (a forwarded change and its refusal) had rungs walk every
    honest floor 257 steps (review s49r), so the ceiling was days away."""
    replica = Net().replicas[0]
    start = replica._now
    far = ROUND_CEILING - 2
    climbed = 0
    for i in range(40):  # 40 lies at once, each refusing a ballot a step above the last
        refused = Ballot(i * MAX_ROUND_STEP + 1, 0)
        replica._learn_round(b"k%d" % i, 4, far, refused)
        climbed += (replica._learned[b"k%d" % i] - refused.round) // MAX_ROUND_STEP - 1
    assert climbed <= CLIMB_BURST_STEPS
    replica._now = start + 1.0
    replica._learn_round(b"later", 4, far, Ballot(1, 0))
    assert replica._learned[b"later"] - 1 <= (MAX_RUNGS + 1) * MAX_ROUND_STEP
    assert replica._learned[b"later"] - 1 > MAX_RUNGS * MAX_ROUND_STEP  # refilled
