"""A follower's copy of a joinable change waits for the leader's own round before it
forwards (`Replica._begin`, `_note_leader_round`, `_time_join`, `_JoinWait`; docs/fleet.md
"Copies that wait for the leader"): the threshold flow's fan-out gives every node a copy,
the leader's round usually reaches the followers first, and a Forward sent at once only
came back as a "retry" after the join. The wait learns only from copies that join the
value of the leader's round for its own copy, so it never learns from itself (review s52:
nor from a failover's leaderless rounds, a resend, or the leader's round for another
request), and no copy waits past the cap (`JOIN_WAIT_CAP` unless `Timing` says)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from tests.fleet.test_replica import Net, _kinds_sent, _propose_everywhere, add, put

from backupvault.fleet.messages import (
    Accept,
    Accepted,
    AcceptorRecord,
    Ballot,
    Forward,
    NotReady,
    Prepare,
    ReplicatedValue,
)
from backupvault.fleet.replica import (
    CHOSEN_ENTRIES,
    DEFAULT_TIMING,
    JOIN_WAIT_CAP,
    JOIN_WAIT_FACTOR,
    JOIN_WAIT_MARGIN,
    JOIN_WAIT_MIN_SAMPLES,
    Committed,
    Replica,
    Send,
    _JoinWait,
    _Proposal,
)

TICK = 0.01  # the node's tick (`Net` ticks the same)
VALUE = ReplicatedValue([], b"v").to_bytes()


def _forwards(effects: list) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and isinstance(e.message, Forward)]


def _first_forward(follower: Replica, now: float, until: float) -> float | None:
    """Tick `follower` every 10 ms until a Forward leaves; when it left."""
    while now < until:
        now += TICK
        if _forwards(follower.tick(now)):
            return now
    return None


def _learnt(net: Net) -> None:
    """Enough fan-outs (the leader's copy first) for every follower to learn a wait."""
    for i in range(JOIN_WAIT_MIN_SAMPLES + 2):
        _propose_everywhere(net, b"learn%d" % i, put(b"L%d" % i), joinable=True)
        net.settle()
    assert all(0 < net.replicas[n]._join_wait.seconds < JOIN_WAIT_CAP for n in range(1, 5))


def _waits(net: Net) -> dict[int, float]:
    return {n: net.replicas[n]._join_wait.seconds for n in range(1, 5)}


def _learn(follower: Replica, delay: float, n: int) -> None:
    for _ in range(n):
        follower._join_wait.learn(delay)


# ---- what it saves, and what it costs --------------------------------------------------


def test_copies_at_every_node_send_no_forward_once_the_wait_is_learnt() -> None:
    net = Net(announce=True)
    net.propose(0, b"warm", b"k", add(1))
    net.settle()
    first = _kinds_sent(net, lambda: _propose_everywhere(net, b"x", put(b"X"), joinable=True))
    assert first.count("Forward") == 4  # nothing learnt yet: as before
    _learnt(net)
    sent = _kinds_sent(net, lambda: _propose_everywhere(net, b"y", put(b"Y"), joinable=True))
    assert "Forward" not in sent and "ForwardAnswer" not in sent
    assert sent.count("Accept") == 4 and "Prepare" not in sent
    results = [net.results[b"y" + bytes([n])] for n in range(5)]
    assert all(isinstance(r, Committed) and r.outcome is not None for r in results)


def test_a_leader_that_missed_its_copy_costs_one_wait_then_the_copies_forward() -> None:
    net = Net(announce=True)
    _learnt(net)
    wait = max(_waits(net).values())
    started = net.now
    sent = _kinds_sent(
        net, lambda: _propose_everywhere(net, b"m", put(b"m"), joinable=True, nodes=[1, 2, 3, 4])
    )
    assert "Forward" in sent
    assert all(isinstance(net.results[b"m" + bytes([n])], Committed) for n in range(1, 5))
    # Committed at the first tick after the wait, or the one after.
    assert net.now - started <= wait + 2 * TICK


def test_non_joinable_changes_and_the_leader_s_own_copy_never_wait() -> None:
    net = Net()
    follower, leader = net.replicas[3], net.replicas[0]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    assert follower._join_wait.seconds > 0
    assert _forwards(follower.propose(b"n", b"kn", put(b"v"), 1.0, joinable=False))
    _learn(leader, 0.02, JOIN_WAIT_MIN_SAMPLES)  # learnt under another leader, say
    effects = leader.propose(b"l", b"kl", put(b"v"), 1.0, joinable=True)
    assert any(isinstance(e, Send) and type(e.message).__name__ == "Prepare" for e in effects)


def test_only_the_first_start_waits() -> None:
    """After its wait the copy forwards to node 0, which answers NotReady: it goes to node
    1 at once, not after another wait."""
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    now = 1.0
    assert not _forwards(follower.propose(b"z", b"kz", put(b"w"), now, joinable=True))
    sent = _first_forward(follower, now, now + 1.0)
    assert sent is not None
    again = follower.receive(0, NotReady(b"z"), sent)
    assert [e.to for e in _forwards(again)] == [1]


# ---- the leader's round during the wait: waited on, within the cap ---------------------


def _leader_round(key: bytes, round_: int = 9) -> Accept:
    """The leader's (node 0's) pipelined Accept for a change it took itself."""
    return Accept(b"a" + key, key, round_, 0, VALUE, 0, True)


def test_the_leader_s_round_during_the_wait_holds_the_forward_back_and_ends() -> None:
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    w = follower._join_wait.seconds
    started = 1.0
    follower.propose(b"z", b"kz", put(b"w"), started, joinable=True)
    follower.receive(0, _leader_round(b"kz"), started + w / 2)
    sent = _first_forward(follower, started + w / 2, started + 2.0)
    assert sent is not None and started + w < sent <= started + 1.5 * w + TICK


def test_a_hostile_leader_holds_a_copy_at_most_the_cap() -> None:
    """Review s52, finding 1: the leader's Accept just before the wait ends (a value that
    is never chosen, so nothing joins) extended the wait by a whole wait again, so a copy
    left about twice `JOIN_WAIT_CAP` after it started."""
    follower = Net().replicas[3]
    _learn(follower, 1.0, JOIN_WAIT_MIN_SAMPLES)
    assert follower._join_wait.seconds == JOIN_WAIT_CAP
    started = 5.0
    assert not _forwards(follower.propose(b"z", b"kz", put(b"w"), started, joinable=True))
    follower.receive(0, _leader_round(b"kz"), started + JOIN_WAIT_CAP - 0.005)
    sent = _first_forward(follower, started + JOIN_WAIT_CAP - 0.005, started + 1.0)
    assert sent is not None and sent - started <= JOIN_WAIT_CAP + TICK


def test_the_timing_s_cap_and_margin_are_the_ones_kept() -> None:
    """The cap and margin are `Timing`'s (the simulator makes copies wait up to a second,
    `--eager-wait`): the estimate stops at that cap, and a copy the leader's rounds keep
    waiting leaves within it of its start, not within the default's."""
    cap = 5 * JOIN_WAIT_CAP
    timing = replace(DEFAULT_TIMING, join_wait_cap=cap, join_wait_margin=0.05)
    follower = Net(timing=timing).replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    assert abs(follower._join_wait.seconds - (JOIN_WAIT_FACTOR * 0.02 + 0.05)) < 1e-9
    _learn(follower, 10.0, 64)
    assert follower._join_wait.seconds == cap
    started = 5.0
    assert not _forwards(follower.propose(b"z", b"kz", put(b"w"), started, joinable=True))
    now = started
    for step in range(200):  # a leader's round every 20 ms, none ever chosen
        now += TICK
        if step % 2 == 0:
            follower.receive(0, _leader_round(b"kz", 10 + step), now)
        if _forwards(follower.tick(now)):
            break
    assert cap - TICK <= now - started <= cap + TICK


def test_the_timing_s_sample_count_is_the_one_kept() -> None:
    eager = _JoinWait(replace(DEFAULT_TIMING, join_wait_min_samples=1))
    eager.learn(0.01)
    assert eager.seconds > 0
    default = _JoinWait(DEFAULT_TIMING)
    default.learn(0.01)
    assert default.seconds == 0.0


def test_only_the_leader_s_own_pipelined_rounds_above_what_this_node_took_are_noted() -> None:
    follower = Net().replicas[3]
    follower.receive(2, Accept(b"o", b"k1", 9, 2, VALUE, 2, True), 1.0)  # not the leader
    follower.receive(0, Accept(b"f", b"k2", 9, 0, VALUE, 4, True), 1.0)  # a Forward's
    follower.receive(0, Accept(b"l", b"k3", 9, 0, VALUE, 0, False), 1.0)  # leaderless
    assert not follower._leader_rounds
    follower.receive(0, _leader_round(b"k4"), 1.0)
    assert list(follower._leader_rounds) == [b"k4"]
    follower.receive(0, _leader_round(b"k4"), 2.0)  # a resend of what it took
    assert follower._leader_rounds[b"k4"][2] == 1.0


# ---- what the wait learns from, and what it does not -----------------------------------


def test_the_estimate_is_the_formula_the_doc_gives() -> None:
    wait = _JoinWait(DEFAULT_TIMING)
    for _ in range(JOIN_WAIT_MIN_SAMPLES - 1):
        wait.learn(0.01)
    assert wait.seconds == 0.0  # too few delays seen: no wait
    for _ in range(11):
        wait.learn(0.01)
    wait.learn(-0.5)  # the leader's round came first: a delay of 0
    wait.learn(0.05)  # one outlier in 20: above the 90th percentile
    assert abs(wait.seconds - (JOIN_WAIT_FACTOR * 0.01 + JOIN_WAIT_MARGIN)) < 1e-9
    assert min(wait.delays) == 0.0
    for _ in range(100):
        wait.learn(5.0)
    assert wait.seconds == JOIN_WAIT_CAP


def test_the_wait_learns_nothing_from_the_accepts_of_forwards() -> None:
    """A leader that gets no copies of its own (down for the relay, or not sent them)
    leads only followers' Forwards: those Accepts come a wait later, and timing them
    taught the wait its own length, growing it to the cap (session 39's first form)."""
    net = Net(announce=True)
    _learnt(net)
    learnt = _waits(net)
    for i in range(3 * JOIN_WAIT_MIN_SAMPLES):
        _propose_everywhere(
            net, b"miss%d" % i, put(b"miss%d" % i), joinable=True, nodes=[1, 2, 3, 4]
        )
        net.settle()
    assert _waits(net) == learnt


def test_a_failover_s_leaderless_rounds_teach_the_wait_nothing() -> None:
    """Review s52, finding 2. Node 0 (leader) is down; node 1's copies come 50 ms before
    the others'. Every copy waits, forwards to 0 and times out, node 1's first: it
    finishes them leaderless, and nodes 2-4, which passed 0 over on another entry's
    timeout, timed node 1's leaderless Accepts (their new leader's) against their copies:
    a wait plus a round timeout each, and the wait went to its cap."""
    net = Net(announce=True)
    for i in range(JOIN_WAIT_MIN_SAMPLES + 2):  # a short wait under leader 0
        _propose_everywhere(net, b"L%d" % i, put(b"L%d" % i), joinable=True, key=b"w%d" % i)
        net.settle()
    learnt = _waits(net)
    assert all(0 < w < JOIN_WAIT_CAP for w in learnt.values())
    net.down = {0}
    # Its timeout has nodes 2-4 pass 0 over.
    _propose_everywhere(net, b"g", put(b"g"), joinable=True, nodes=range(1, 5), key=b"g")
    for i in range(JOIN_WAIT_MIN_SAMPLES):
        _propose_everywhere(net, b"f", put(b"f"), joinable=True, nodes=range(1, 2), key=b"f%d" % i)
    net.run_for(0.05)
    for i in range(JOIN_WAIT_MIN_SAMPLES):
        _propose_everywhere(net, b"f", put(b"f"), joinable=True, nodes=range(2, 5), key=b"f%d" % i)
    net.settle()
    assert all(isinstance(r, Committed) for r in net.results.values())
    assert _waits(net) == learnt


def test_the_leader_s_round_for_another_request_teaches_the_wait_nothing() -> None:
    """Review s52, finding 2: the leader missed request A's copy but got the next request
    B on the same entry; a follower's copy of A waited, forwarded, and the leader's own
    round for B, arriving meanwhile, was timed against A (the wait plus more), so the wait
    fed on itself. A copy is timed only by the round whose value it joins."""
    net = Net(announce=True)
    _learnt(net)
    learnt = _waits(net)
    for i in range(2 * JOIN_WAIT_MIN_SAMPLES):
        _propose_everywhere(net, b"A%d" % i, put(b"A%d" % i), joinable=True, nodes=[1, 2, 3, 4])
        net.run_for(max(learnt.values()) + 2 * TICK)  # A's copies have forwarded
        _propose_everywhere(net, b"B%d" % i, put(b"B%d" % i), joinable=True)
        net.settle()
    assert all(isinstance(r, Committed) for r in net.results.values())
    assert all(_waits(net)[n] <= learnt[n] for n in learnt)


def test_a_join_is_timed_only_by_the_leader_s_round_of_the_value_it_joined() -> None:
    """The round noted for the entry is the leader's latest own round; a copy that joins
    another value (committed through a Forward, or an older round) is not timed by it."""
    follower = Net().replicas[3]
    joined = ReplicatedValue([], b"joined").to_bytes()
    follower.source.put(AcceptorRecord(b"k", 7, 0, 7, 0, joined))
    copy = _Proposal(b"c", b"k", put(b"joined"), deadline=9.0, joinable=True, began=1.0)
    follower._leader_rounds[b"k"] = (Ballot(7, 0), hashlib.sha256(VALUE).digest(), 2.0)
    follower._time_join(copy)
    follower._leader_rounds[b"k"] = (Ballot(6, 0), hashlib.sha256(joined).digest(), 2.0)
    follower._time_join(copy)
    assert not follower._join_wait.delays
    follower._leader_rounds[b"k"] = (Ballot(7, 0), hashlib.sha256(joined).digest(), 2.0)
    follower._time_join(copy)
    assert list(follower._join_wait.delays) == [1.0]


# ---- review s52b --------------------------------------------------------------------


W_VALUE = ReplicatedValue([], b"w").to_bytes()  # what `put(b"w")` leaves as it is
W_DIGEST = hashlib.sha256(W_VALUE).digest()


def _chosen_by(
    follower: Replica, leader: int, key: bytes, round_: int, now: float, voters: tuple
) -> list:
    """`leader`'s own pipelined round for `key` reaches `follower`, then a majority's
    Accepted for it (no announce hook here: the follower counts the voters only)."""
    effects = follower.receive(
        leader, Accept(b"l" + key, key, round_, leader, W_VALUE, leader, True), now
    )
    for voter in voters:
        answer = Accepted(b"l" + key, key, round_, leader, True, round_ + 1, leader, W_DIGEST)
        effects += follower.receive(voter, answer, now)
    return effects


def test_copies_whose_forward_timed_out_teach_the_wait_nothing() -> None:
    """Review s52b. Leader 0 is down; a follower's copies wait, forward to 0,
    time out (0.5 s) and go leaderless; the new leader's (node 1's) own round for its copy
    then reaches the follower and the copies join it. Each is timed from its start: a
    'delay' of a wait plus a round timeout, which the doc says is never seen (cut off at
    a wait plus a forwarded round). Eight of them hold the wait at its cap: session 39's
    'burst while the leader was down'. The simulation shows such samples (0.27-3.2 s in
    seeds 20100000-20100049)."""
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    learnt = follower._join_wait.seconds
    keys = [b"f%d" % i for i in range(8)]
    now = 1.0
    for key in keys:
        assert not _forwards(follower.propose(b"c" + key, key, put(b"w"), now, joinable=True))
    prepared = set()
    while now < 1.7:
        now += TICK
        for e in follower.tick(now):
            if isinstance(e, Send) and isinstance(e.message, Prepare):
                prepared.add(e.message.key)
    assert prepared == set(keys) and follower.leader(now) == 1  # 0 passed over
    results = []
    for key in keys:
        round_ = follower._record(key).promised.round + 1
        results += _chosen_by(follower, 1, key, round_, now, (1, 2, 4))
    assert sum(isinstance(r, Committed) for r in results) == len(keys)  # all joined
    assert follower._join_wait.seconds == learnt, follower._join_wait.seconds


def test_the_leader_s_round_late_in_the_wait_holds_the_forward_a_whole_wait_more() -> None:
    """The doc: 'the wait goes on as long again from then'. The change's own test sends
    the round at half the wait and accepts any Forward after the wait: dropping the
    extension altogether passes it."""
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    w = follower._join_wait.seconds
    started = 1.0
    follower.propose(b"z", b"kz", put(b"w"), started, joinable=True)
    at = started + 0.9 * w
    follower.receive(0, Accept(b"a", b"kz", 9, 0, VALUE, 0, True), at)
    sent = _first_forward(follower, at, started + 2.0)
    assert sent is not None and at + w <= sent <= at + w + TICK


def test_an_accept_at_another_node_s_ballot_is_not_the_leader_s_round() -> None:
    """The leader relaying (a repair of) a round at node 2's ballot, naming itself as
    origin: not its own round. Dropping `accept.node == sender` passes the change's tests."""
    follower = Net().replicas[3]
    follower.receive(0, Accept(b"r", b"k5", 9, 2, VALUE, 0, True), 1.0)
    assert not follower._leader_rounds


def test_a_copy_sent_on_after_not_ready_is_timed_from_its_first_start() -> None:
    """Setting `began` on every start passes the change's tests; the delay would then be
    timed from the second start, and the cap counted from it too."""
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    started = 1.0
    follower.propose(b"z", b"kz", put(b"w"), started, joinable=True)
    sent = _first_forward(follower, started, started + 1.0)
    assert sent is not None
    again = follower.receive(0, NotReady(b"z"), sent)
    assert [e.to for e in _forwards(again)] == [1]
    results = _chosen_by(follower, 1, b"kz", 9, started + 0.1, (1, 2, 4))
    assert any(isinstance(r, Committed) for r in results)
    assert follower._join_wait.delays[-1] == pytest.approx(0.1)


def test_a_queued_copy_that_joins_is_not_timed() -> None:
    """Two copies on one entry, the second queued behind the first (never started): both
    join the leader's round; only the started one is timed (a queued one has no start)."""
    follower = Net().replicas[3]
    _learn(follower, 0.02, JOIN_WAIT_MIN_SAMPLES)
    follower.propose(b"a", b"kq", put(b"w"), 1.0, joinable=True)
    follower.propose(b"b", b"kq", put(b"w"), 1.0, joinable=True)
    before = len(follower._join_wait.delays)
    results = _chosen_by(follower, 0, b"kq", 9, 1.01, (0, 1, 2))
    assert sum(isinstance(r, Committed) for r in results) == 2
    assert len(follower._join_wait.delays) == before + 1


def test_the_leader_s_rounds_are_kept_for_the_latest_entries() -> None:
    follower = Net().replicas[3]
    for i in range(CHOSEN_ENTRIES):
        follower.receive(0, Accept(b"a", b"e%d" % i, 9, 0, VALUE, 0, True), 1.0)
    follower.receive(0, Accept(b"a", b"e0", 10, 0, VALUE, 0, True), 1.1)  # e0 again
    follower.receive(0, Accept(b"a", b"new", 9, 0, VALUE, 0, True), 1.2)
    assert len(follower._leader_rounds) == CHOSEN_ENTRIES
    assert b"e0" in follower._leader_rounds and b"new" in follower._leader_rounds
    assert b"e1" not in follower._leader_rounds


def test_no_copy_waits_past_the_cap_however_the_leader_s_rounds_come() -> None:
    """A hostile leader sends a round for the entry every tick (never chosen)."""
    follower = Net().replicas[3]
    _learn(follower, 1.0, JOIN_WAIT_MIN_SAMPLES)
    started = 5.0
    follower.propose(b"z", b"kz", put(b"w"), started, joinable=True)
    now, round_ = started, 9
    while now < started + 1.0:
        now += TICK / 2
        round_ += 1
        follower.receive(0, Accept(b"h", b"kz", round_, 0, VALUE, 0, True), now)
        if _forwards(follower.tick(now)):
            break
    assert now - started <= JOIN_WAIT_CAP + TICK
