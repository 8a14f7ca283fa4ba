"""A hostile node walking honest acceptors' rounds up (review s49), on replicas in
memory: how the acceptors it left behind climb toward a ballot out of their reach (in any
order of messages), and the floor a copy cannot lift (the step and the store:
tests/node/test_rounds_walked_by_a_hostile_node.py)."""

from __future__ import annotations

import random
from dataclasses import replace

from test_replica import Net, add

from backupvault.fleet.messages import (
    AcceptorRecord,
    Ballot,
    Prepare,
    Promise,
    SyncResponse,
)
from backupvault.fleet.replica import (
    CLIMB_BURST_STEPS,
    CLIMB_STEPS_PER_SECOND,
    MAX_ROUND_STEP,
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


class ReorderingNet(Net):
    """`Net`, delivering whatever is on the wire in a random order (as the simulator's
    links do: each message has its own delay)."""

    def __init__(self) -> None:
        self.shuffle = random.Random(7)
        super().__init__()

    def next_on_the_wire(self) -> tuple[int, int, bytes]:
        self.queue.rotate(-self.shuffle.randrange(len(self.queue)))
        return self.queue.popleft()


def _walk(net: Net, walked: int, steps: int) -> None:
    """Hostile node 4 walks entry k's rounds at node `walked` up `steps` steps, a Prepare
    a step above that node's floor each."""
    target = net.replicas[walked]
    for i in range(steps):
        prepare = Prepare(b"w%d" % i, b"k", target._max_round + MAX_ROUND_STEP, 4)
        net.run(walked, target.receive(4, prepare, net.now))
    assert net.disk[walked][b"k"].promised_round > steps * MAX_ROUND_STEP


def test_two_honest_acceptors_walked_up_do_not_stall_an_entry() -> None:
    """Node 4 (hostile, silent from then on) walks entry k's rounds at nodes 1 and 2 up
    1,000 steps, a Prepare a step above the last each (2,000 messages). The other two
    honest nodes stand a step per message below, and take no ballot more than a step
    above their own rounds at once, so a change needs nodes 0 and 3 to climb first. They
    climbed a step per refused round, 4 steps per change of 6 s: every change to k failed
    for minutes, and 100 Prepares stalled it a minute (review s49). An acceptor now climbs
    toward a ballot out of its reach as far as the proposer's budget there allows
    (`CLIMB_BURST_STEPS` at once, `CLIMB_STEPS_PER_SECOND` after), and the first change
    commits."""
    net = Net()
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    net.down.add(4)
    for walked in (1, 2):
        _walk(net, walked, 1000)
    net.queue.clear()
    assert _proposing(net, 0, b"after", b"k") == Committed(b"after", 2)
    assert _proposing(net, 3, b"again", b"k") == Committed(b"again", 3)


def test_nodes_left_behind_climb_whatever_order_messages_arrive_in() -> None:
    """As above, on links that reorder. Until session 50 proposers climbed the acceptors
    left behind with rungs, Prepares a step apart that each had to arrive after the one
    below it: reordered, a few of 256 were taken a round, and in the simulator an entry
    stayed out of reach for good (seeds 10580507, 10586150, 10586427). A climb is now one
    message's effect at the acceptor (the seeds are regressions in
    tests/sim/test_regressions.py)."""
    net = ReorderingNet()
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    net.down.add(4)
    for walked in (1, 2):
        _walk(net, walked, 1000)
    net.queue.clear()
    assert _proposing(net, 0, b"after", b"k") == Committed(b"after", 2)
    assert _proposing(net, 3, b"again", b"k") == Committed(b"again", 3)


def left_far_behind(net: Net) -> AcceptorRecord:
    """Node 4 walks entry k up 600 steps at nodes 0 and 1 (then is silent); node 0 commits
    a change (node 3 climbs to take it) while node 2 is cut off, and node 2 is back. Node
    2 then stands 600 steps below the chosen ballot: what node 0 holds, returned."""
    assert _proposing(net, 0, b"a", b"k") == Committed(b"a", 1)
    net.down.add(4)
    for walked in (0, 1):
        _walk(net, walked, 600)
    net.queue.clear()
    net.down.add(2)
    assert _proposing(net, 0, b"b", b"k") == Committed(b"b", 2)
    chosen = net.disk[0][b"k"]
    assert net.disk[2][b"k"].promised_round + 300 * MAX_ROUND_STEP < chosen.accepted_round
    net.down.discard(2)
    return chosen


def test_a_repair_climbs_a_node_left_far_behind_over_its_resends() -> None:
    """Node 4 walks entry k up 600 steps at nodes 0 and 1; node 0 commits a change (node 3
    climbs to take it) while node 2 is cut off. Node 2 then stands 600 steps below the
    chosen ballot: each resend of the repair climbs it `CLIMB_BURST_STEPS` at most, and
    it stays pending while the promise it reports rises, so it takes the value with no
    further change (given up at its first refusal, it held the old value)."""
    net = Net()
    chosen = left_far_behind(net)
    deadline = net.now + 30.0
    while net.now < deadline and net.disk[2][b"k"].value != chosen.value:
        net.now += 0.1
        for i in range(4):
            net.run(i, net.replicas[i].tick(net.now))
        net.settle(0.1)
    assert net.disk[2][b"k"].value == chosen.value


def test_an_acceptor_climbs_toward_a_far_ballot_within_the_senders_budget() -> None:
    """A ballot more than a step above an acceptor's rounds is refused; the acceptor
    promises instead the highest round of that node's within the sender's budget (a burst
    of `CLIMB_BURST_STEPS` steps beyond the free one, refilled at
    `CLIMB_STEPS_PER_SECOND`), and answers with it. Each peer's budget is its own, one
    pool for every entry; no climb reaches the ceiling."""
    net = Net()
    acceptor = net.replicas[1]
    floor = acceptor._max_round
    far = floor + 300 * MAX_ROUND_STEP
    answer = acceptor.receive(0, Prepare(b"p", b"k", far, 0), net.now)
    (refusal,) = [e.message for e in answer if isinstance(e, Send)]
    assert isinstance(refusal, Promise) and not refusal.ok
    climbed = floor + (CLIMB_BURST_STEPS + 1) * MAX_ROUND_STEP
    assert acceptor._record(b"k").promised == Ballot(climbed, 0)
    assert (refusal.promised_round, refusal.promised_node) == (climbed, 0)
    # The budget is spent: a second message climbs the one free step.
    acceptor.receive(0, Prepare(b"p2", b"k", far, 0), net.now)
    assert acceptor._record(b"k").promised == Ballot(climbed + MAX_ROUND_STEP, 0)
    # Another peer's budget is whole; it climbs the entry on for its own ballot.
    acceptor.receive(2, Prepare(b"p3", b"k", far + 1, 2), net.now)
    assert acceptor._record(b"k").promised == Ballot(far + 1, 2)
    # Refilled over time: a ballot 100 steps up, 0.1 s later, is taken.
    later = net.now + 100 / CLIMB_STEPS_PER_SECOND
    answer = acceptor.receive(0, Prepare(b"p4", b"k", far + 101 * MAX_ROUND_STEP, 0), later)
    (promise,) = [e.message for e in answer if isinstance(e, Send)]
    assert promise.ok
    # One pool for every entry (per entry, a hostile peer walked each entry it poked 257
    # steps a Prepare: review s50b): another entry climbs the free step only.
    free = acceptor._max_round + MAX_ROUND_STEP
    acceptor.receive(0, Prepare(b"p6", b"k2", far, 0), later)
    assert free <= acceptor._record(b"k2").promised.round < free + MAX_ROUND_STEP
    # At the ceiling nothing is promised, climbed or not.
    before = acceptor._record(b"k").promised
    acceptor.receive(3, Prepare(b"p5", b"k", ROUND_CEILING, 3), later + 60)
    assert acceptor._record(b"k").promised == before


def test_a_climb_is_one_message_and_only_when_rounds_were_walked() -> None:
    """Without a hostile node a round sends one Prepare per peer, as before; after a walk
    too: no message is sent for the climb (the rungs of session 49 were up to 256
    Prepares per peer a round)."""
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
    _walk(net, 1, 300)
    _walk(net, 2, 300)
    sent.clear()
    assert _proposing(net, 0, b"after", b"k") == Committed(b"after", 4)
    prepares = [m for m in sent if isinstance(m, Prepare)]
    assert 4 < len(prepares) <= 5 * 4  # a few rounds, each one Prepare per peer
    assert len({(m.round, m.node) for m in prepares}) == len(prepares) // 4


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
    and, with two nodes down, the entry would have no majority."""
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
    repair's ballot is often the leader's, and an acceptor climbs only `CLIMB_BURST_STEPS`
    steps at once) had its own acceptor refuse its Prepare, which left anyway, unreserved:
    its own leader hold then took the same ballot for another value (review s49r: a
    committed change was lost). Such a Prepare now waits while its own acceptor climbs."""
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
    """One refusal's word lifts the next ballot a step; beyond that, up to
    `CLIMB_BURST_STEPS` + 1 steps, only within `CLIMB_STEPS_PER_SECOND` (a burst of
    `CLIMB_BURST_STEPS`) for each refusing peer and entry: two hostile messages each time
    (a forwarded change and its refusal) had honest ballots walk every honest floor 257
    steps (review s49r), so the ceiling was days away. Another entry's budget, or another
    peer's, is its own (review s50: one pool per peer was spent on a made-up entry)."""
    replica = Net().replicas[0]
    start = replica._now
    far = ROUND_CEILING - 2
    climbed = 0
    for i in range(40):  # 40 lies at once, each refusing a ballot a step above the last
        refused = Ballot(i * MAX_ROUND_STEP + 1, 0)
        before = max(replica._learned.get(b"k", 0), refused.round + MAX_ROUND_STEP - 1)
        replica._learn_round(b"k", 4, far, refused)
        climbed += (replica._learned[b"k"] - before) // MAX_ROUND_STEP
    assert climbed <= CLIMB_BURST_STEPS
    for other, peer in ((b"other", 4), (b"k", 3)):
        at = replica._learned.get(other, 0)
        refused = Ballot(max(at, 1), 0)
        replica._learn_round(other, peer, far, refused)
        beyond = replica._learned[other] - (refused.round + MAX_ROUND_STEP - 1)
        assert beyond == CLIMB_BURST_STEPS * MAX_ROUND_STEP, (other, peer)
    at = replica._learned[b"k"]
    replica._learn_round(b"k", 4, far, Ballot(at, 0))
    assert replica._learned[b"k"] == at + MAX_ROUND_STEP - 1  # spent: a step, no more
    replica._now = start + 1.0
    at = replica._learned[b"k"]
    replica._learn_round(b"k", 4, far, Ballot(at, 0))
    climbed = replica._learned[b"k"] - (at + MAX_ROUND_STEP - 1)
    assert climbed == CLIMB_BURST_STEPS * MAX_ROUND_STEP  # refilled
