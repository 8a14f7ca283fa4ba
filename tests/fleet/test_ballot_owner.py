"""An acceptor takes a ballot only from its own node (review s50b, S1; docs/fleet.md,
"A ballot is taken only from its own node").

Nodes 0-3 honest, 4 = H hostile; every node runs the application check of
test_forged_accepts_and_pokes (a payload of b"\\xff" is refused). Before session 54 any node
could send an Accept under any ballot: a stand-in's repair resent the Accept of the node
whose ballot chose a value, and so could H, with another value. A laggard that never took
that ballot took whatever came first, so honest disks held two values under one ballot.
"""

from __future__ import annotations

from dataclasses import replace

from test_forged_accepts_and_pokes import REFUSED, _check, _checking_net, _lagging_node_2, _ticks
from test_replica import Net, put

from backupvault.codec import Message, decode_any
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    AcceptorRecord,
    AppliedOp,
    Forward,
    Prepare,
    ReplicatedValue,
    payload_of,
)
from backupvault.fleet.replica import HINTS_PER_PEER, Committed, Replica, Send, _ballot

H, K = 4, b"k"


def _value(payload: bytes) -> bytes:
    return ReplicatedValue([AppliedOp(b"h" * 16, 1)], payload).to_bytes()


def _rounds_started(effects: list, node: int) -> set[bytes]:
    """Op ids of the rounds a node's effects start for K (its Prepares and Forwards)."""
    return {
        e.message.op_id
        for e in effects
        if isinstance(e, Send)
        and isinstance(e.message, (Prepare, Forward))
        and e.message.key == K
        and (not isinstance(e.message, Prepare) or e.message.node == node)
    }


def test_a_hostile_accept_under_the_chosen_ballot_is_not_taken_by_a_laggard() -> None:
    """S1: node 0 chose put(2) at its ballot while node 2 was cut off; H sends node 2 the
    same ballot with put(3), which node 2's check would take. It is not taken (node 2
    holds what it held), and node 2 ends with the chosen value, as every node does."""
    net = _checking_net()
    accept = _lagging_node_2(net)
    before = net.disk[2][K]
    forged = replace(accept, value=_value(b"\x03"), origin=0)
    assert net.replicas[2].receive(H, forged, net.now) == []  # not taken, not answered
    assert net.replicas[2].source.get(K) == before
    _ticks(net, 5.0)
    assert {payload_of(net.disk[i][K].value) for i in range(4)} == {b"\x02"}


def test_a_prepare_under_another_node_s_ballot_is_dropped() -> None:
    net = Net()
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    before = net.replicas[1].source.get(K)
    assert before is not None
    far = Prepare(b"p", K, before.promised.round + 5, 0)  # node 0's ballot, sent by H
    assert net.replicas[1].receive(H, far, net.now) == []
    assert net.replicas[1].source.get(K) == before


def test_a_hostile_copy_of_a_fresh_accept_sets_off_no_round() -> None:
    """H copies the leader's Accept to node 2 before the real one lands: node 2 waits a
    round's timeout before it acts on that word, the real Accept comes meanwhile, and
    node 2 starts no round of its own (acted on at once, the copy cost a round)."""
    net = _checking_net(leader=True)
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    net.propose(0, b"two", K, put(b"\x02"))
    wire = _wire(net)
    real = [(s, t, m) for s, t, m in wire if t == 2 and isinstance(m, Accept)]
    assert len(real) == 1, "the leader's Accept to node 2"
    _, _, accept = real[0]
    net.queue.extend((s, t, m.to_bytes()) for s, t, m in wire if (s, t, m) not in real)
    assert net.replicas[2].receive(H, accept, net.now) == []
    started: set[bytes] = set()
    for _ in range(10):  # the copy is 0.1 s ahead of the real one
        net.now += 0.01
        effects = net.replicas[2].tick(net.now)
        started |= _rounds_started(effects, 2)
        net.run(2, effects)
    for sender, to, message in real + _wire(net):  # the real one lands, then the rest
        effects = net.replicas[to].receive(sender, message, net.now)
        started |= _rounds_started(effects, 2) if to == 2 else set()
        net.run(to, effects)
    net.settle()
    for _ in range(30):  # three round timeouts
        net.now += 0.05
        effects = net.replicas[2].tick(net.now)
        started |= _rounds_started(effects, 2)
        net.run(2, effects)
        net.settle(0.05)
    assert not started
    assert payload_of(net.disk[2][K].value) == b"\x02"


def test_word_of_a_refused_value_or_of_a_name_never_held_sets_off_nothing() -> None:
    net = _checking_net()
    accept = _lagging_node_2(net)
    high = accept.round + 10
    refused = replace(accept, round=high, node=1, value=REFUSED)
    made_up = replace(accept, key=b"made-up", round=high, node=1)
    for word in (refused, made_up):
        assert net.replicas[2].receive(H, word, net.now) == []
    assert net.replicas[2]._hints == {}
    assert net.replicas[2].source.get(b"made-up") is None


def test_a_hostile_node_s_words_cost_at_most_a_round_an_entry_a_second() -> None:
    """H tells node 2 ten times a second, for 5 s, that a value above what it holds was
    chosen: node 2 runs at most one round of its own a second (`repair_interval`)."""
    net = _checking_net()
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    started: set[bytes] = set()
    end = net.now + 5.0
    while net.now < end:
        held = net.replicas[2].source.get(K)
        assert held is not None
        word = Accept(b"w" * 16, K, held.accepted.round + 10, 1, _value(b"\x05"), 1, False)
        net.run(2, net.replicas[2].receive(H, word, net.now))
        for _ in range(10):
            net.now += 0.01
            for i in range(4):
                effects = net.replicas[i].tick(net.now)
                started |= _rounds_started(effects, 2) if i == 2 else set()
                net.run(i, effects)
            while net.queue:
                sender, to, raw = net.queue.popleft()
                if H in (sender, to):
                    continue
                effects = net.replicas[to].receive(sender, _decode(raw), net.now)
                started |= _rounds_started(effects, 2) if to == 2 else set()
                net.run(to, effects)
    assert 3 <= len(started) <= 6
    assert {payload_of(net.disk[i][K].value) for i in range(4)} == {b"\x01"}


def _wire(net: Net) -> list[tuple[int, int, Message]]:
    """Everything queued, decoded, the queue emptied."""
    out = [(s, t, _decode(raw)) for s, t, raw in net.queue]
    net.queue.clear()
    return out


def _decode(raw: bytes) -> Message:
    return decode_any(raw, PEER_MESSAGES)


def test_the_leader_repairs_a_node_that_missed_a_forwarded_change() -> None:
    """Node 1's change goes through the leader (node 0) while node 2 is cut off. Node 1
    used to repair node 2 by resending the leader's Accept; only the leader may send it
    now, so the leader repairs (entries not announced here: no settling stands in)."""
    net = Net()
    assert _lagging_node_2(net, proposer=1).node == 0  # the leader's ballot, its repair
    senders: set[int] = set()
    end = net.now + 3.0
    while net.now < end and payload_of(net.disk[2][K].value) != b"\x02":
        for sender, to, message in _wire(net):
            if to == 2 and isinstance(message, Accept):
                senders.add(sender)
            net.run(to, net.replicas[to].receive(sender, message, net.now))
        net.now += 0.01
        for i in range(5):
            net.run(i, net.replicas[i].tick(net.now))
    assert payload_of(net.disk[2][K].value) == b"\x02"
    assert senders == {0}


def _step_without_h(net: Net) -> None:
    """Tick nodes 0-3 by 10 ms and deliver everything not to or from H."""
    net.now += 0.01
    for i in range(4):
        net.run(i, net.replicas[i].tick(net.now))
    while net.queue:
        sender, to, raw = net.queue.popleft()
        if H not in (sender, to):
            net.run(to, net.replicas[to].receive(sender, _decode(raw), net.now))


def test_words_a_round_apart_do_not_put_a_laggard_s_round_off() -> None:
    """Node 0, whose ballot chose put(2), lost its repair of node 2 (a restart); node 1's
    word comes, then H's words, each a round higher, every 0.4 s. Each word used to move
    the laggard's look a round's timeout back, so it never ran its round while H kept on
    (review s54). A higher ballot now keeps the first word's time."""
    net = _checking_net()
    accept = _lagging_node_2(net)
    net.replicas[0]._repairs.clear()
    net.run(2, net.replicas[2].receive(1, replace(accept, origin=1), net.now))
    for i in range(1, 6):  # 2 s of H's words
        word = replace(accept, round=accept.round + i)
        net.run(2, net.replicas[2].receive(H, word, net.now))
        for _ in range(40):
            _step_without_h(net)
    assert payload_of(net.disk[2][K].value) == b"\x02"


def test_a_forward_naming_an_honest_change_s_op_id_leaves_its_repair_in_place() -> None:
    """The leader's repair of a forwarded change is keyed by the op id the forwarding
    node chose, which H sees in the leader's Accept: H's Forward of a change to another
    entry under that op id replaced the repair, and node 2 never got node 1's change
    (review s54). A repair under that op id is now kept."""
    net = Net()
    accept = _lagging_node_2(net, proposer=1)
    net.down.add(2)
    forward = Forward(accept.op_id, b"other", 0, 0, _value(b"\x07"))
    net.run(0, net.replicas[0].receive(H, forward, net.now))
    net.run_for(1.0)
    assert net.replicas[0]._repairs[accept.op_id].accept.key == K
    net.down.discard(2)
    net.run_for(3.0)
    assert payload_of(net.disk[2][K].value) == b"\x02"


def test_word_brings_a_node_that_holds_nothing_only_a_value_worth_fetching() -> None:
    """Node 2 was down when node 0's round made the entry, and node 0's repair is lost (a
    restart). Word of the value from a stand-in has node 2, which holds nothing for it,
    run a round of its own, as the application's `worth_fetching` says (the firmware: a
    live entry's value); word of a value it does not want (a made-up name's) does not."""
    net = _checking_net()
    net.down.add(2)
    net.propose(0, b"one", K, put(b"\x02"))
    net.settle()
    net.down.discard(2)
    net.replicas[0]._repairs.clear()
    old = net.replicas[2]
    net.replicas[2] = Replica(
        2,
        old.nodes,
        net.rand.randbytes,
        old.source,
        old.timing,
        check_value=_check,
        worth_fetching=lambda key, payload: payload == b"\x02",
    )
    net.run(2, net.replicas[2].start(net.now, intact=True))
    assert net.replicas[2].source.get(K) is None
    chosen = net.disk[0][K]
    word = Accept(b"w" * 16, K, *_ballot(chosen.accepted), chosen.value, 1, False)
    unwanted = replace(word, key=b"made-up", value=_value(b"\x03"))
    assert net.replicas[2].receive(H, unwanted, net.now) == []
    assert not net.replicas[2]._hints
    net.run(2, net.replicas[2].receive(1, word, net.now))
    for _ in range(100):
        _step_without_h(net)
    assert payload_of(net.disk[2][K].value) == b"\x02"
    assert net.replicas[2].source.get(b"made-up") is None


def test_one_peer_s_words_cannot_crowd_out_another_s() -> None:
    """H floods node 2 with words for entries node 2 holds, right after node 1's honest
    word for K (a hostile node can make as many entries as it likes): one peer's words
    hold at most HINTS_PER_PEER places, so the honest word stays and comes due (review
    s54b: 4,096 words pushed it out, the oldest first)."""
    net = _checking_net()
    accept = _lagging_node_2(net)
    net.replicas[0]._repairs.clear()
    held = _value(b"\x05")
    keys = [b"e%05d" % i for i in range(HINTS_PER_PEER + 100)]
    for key in keys:
        net.replicas[2].source.put(AcceptorRecord(key, 1, 1, 1, 1, held))
    net.run(2, net.replicas[2].receive(1, replace(accept, origin=1), net.now))
    for key in keys:
        word = Accept(b"w" * 16, key, accept.round + 10, 0, held, H, False)
        assert net.replicas[2].receive(H, word, net.now) == []
    assert K in net.replicas[2]._hints
    assert len(net.replicas[2]._hints) == HINTS_PER_PEER + 1
    for _ in range(100):
        _step_without_h(net)
    assert payload_of(net.disk[2][K].value) == b"\x02"


def _pump(net: Net, withheld: list[tuple[int, int, bytes]] | None, seconds: float) -> None:
    """Deliver and tick for `seconds`; H's messages about K go to `withheld` instead."""
    end = net.now + seconds
    while net.now < end:
        while net.queue:
            sender, to, raw = net.queue.popleft()
            if sender in net.down or to in net.down:
                continue
            message = _decode(raw)
            if withheld is not None and sender == H and getattr(message, "key", b"") == K:
                withheld.append((sender, to, raw))
                continue
            net.run(to, net.replicas[to].receive(sender, message, net.now))
        net.now += 0.01
        for i, replica in net.replicas.items():
            if i not in net.down:
                net.run(i, replica.tick(net.now))


def test_a_forward_under_an_honest_op_id_for_another_entry_leaves_its_repair() -> None:
    """Nodes 2 and 3 are cut off, so node 1's change to K through the leader needs H's
    answer, which H holds back while it forwards a change to another entry under the
    same op id (seen in the leader's Accept) and lets that one be chosen first. The
    leader's repairs are keyed by op id: the honest change got none (review s54b; kept
    from being replaced since 6d75a7a, it was left out instead). It now takes an id of
    its own, and the laggards get it (not announced here: no settling stands in)."""
    net = Net()
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    net.down |= {2, 3}
    withheld: list[tuple[int, int, bytes]] = []
    net.propose(1, b"two", K, put(b"\x02"))
    for _ in range(20):
        _pump(net, withheld, 0.01)
        lead = net.replicas[0]._leads.get(K)
        if lead is not None and lead.phase == "accept":
            break
    net.queue.append((H, 0, Forward(b"two", b"other", 0, 0, _value(b"\x07")).to_bytes()))
    _pump(net, withheld, 0.05)
    assert net.replicas[0]._repairs[b"two"].accept.key == b"other"
    net.queue.extend(withheld)
    _pump(net, None, 0.1)
    assert payload_of(net.disk[0][K].value) == b"\x02"
    assert any(r.accept.key == K for r in net.replicas[0]._repairs.values())
    net.down -= {2, 3}
    net.run_for(2.0)
    assert payload_of(net.disk[2][K].value) == b"\x02"


def test_a_node_that_promised_higher_is_lifted_once_after_a_leader_s_change() -> None:
    """Node 2 promised node 3's higher ballot (a round of node 3's that came to nothing);
    node 1's change then goes through the leader (node 0), which had lifted the entry a
    moment before. Node 2 refuses the leader's Accept and its repair for the promise: the
    leader lifts it once, a no-op round of its own above that promise (sim seed 10756088:
    the leader took its earlier lift for a reason to give node 2 up, and node 2 kept the
    old value; not announced here, so no settling stands in)."""
    net = Net()
    net.propose(0, b"one", K, put(b"\x01"))
    net.settle()
    net.replicas[0]._lifted_at[K] = net.now  # a lift of the entry, a moment before
    top = net.replicas[2]._record(K).promised.round
    net.run(2, net.replicas[2].receive(3, Prepare(b"p", K, top + 5, 3), net.now))
    net.queue.clear()  # node 3's round comes to nothing
    net.propose(1, b"two", K, put(b"\x02"))
    net.run_for(3.0)
    assert isinstance(net.results.get(b"two"), Committed)
    assert {payload_of(net.disk[i][K].value) for i in range(5)} == {b"\x02"}
