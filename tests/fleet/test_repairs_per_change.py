"""A node repairs each chosen change it made on its own, not only the newest one of an entry.

Session 55 tried one repair an entry, the newest chosen value's taking the place of older
ones (a node that missed a burst of changes was resent each one every second, and one that
had promised higher set off a no-op round per change). Review s55 found three ways it lost
convergence; each test here failed on that code (bb9303a) and passes on the code it went
back to.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_replica import Net, put

from backupvault.fleet.messages import Accept, AppliedOp, Forward, ReplicatedValue, payload_of
from backupvault.fleet.replica import DEFAULT_TIMING, Committed, Replica

H, K = 4, b"k"
V0, V1, V2 = b"\x01", b"\x02", b"\x03"


def _promised_higher(net: Net, node: int) -> None:
    """`node` promised far above K's rounds (its own round while cut off, say)."""
    held = net.replicas[node].source.get(K)
    assert held is not None
    raised = replace(held, promised_round=held.promised_round + 50, promised_node=node)
    net.replicas[node].source.put(raised)


def _path_dependent(key: bytes, payload: bytes, held: bytes) -> str | None:
    """Takes V1 over V0 and V2 over V1, refuses V2 over V0, as the firmware's check did a
    value built on the owner's signed reset, or password change, with the signature
    cleared (until session 56: docs/threshold.md, "A value that drops the owner's reset is
    refused", "The next version is taken on its acknowledgements"): the replica must not
    count on a check being free of such paths."""
    refused = "a new version without the owner's signed change or delete of the held one"
    return refused if (payload, held) == (V2, V0) else None


def test_a_laggard_gets_the_intermediate_value_its_check_needs() -> None:
    """Node 1's change V1 goes through the leader (node 0) while node 2 is cut off; H
    forwards V2, built on it, which every other node's check takes. Node 2 takes V2 only
    after V1: the repair of V1 must still reach it (repaired with V2 alone, it refused V2
    for good: stand-ins' words and catch-up copies are checked the same way)."""
    net = Net(announce=True)
    for i, old in list(net.replicas.items()):
        net.replicas[i] = Replica(
            i,
            old.nodes,
            net.rand.randbytes,
            old.source,
            DEFAULT_TIMING,
            check_value=_path_dependent,
            announce=lambda key, payload: True,
        )
        net.run(i, net.replicas[i].start(net.now, intact=True))
    net.propose(0, b"zero", K, put(V0))
    net.settle()
    net.down.add(2)
    net.propose(1, b"one", K, put(V1))
    net.settle()
    assert isinstance(net.results[b"one"], Committed)
    lead = net.replicas[0]._leads[K]
    value = ReplicatedValue([AppliedOp(b"h" * 16, 1)], V2).to_bytes()
    forward = Forward(b"h" * 16, K, lead.base.round, lead.base.node, value)
    net.run(0, net.replicas[0].receive(H, forward, net.now))
    net.settle(1.0)
    assert all(payload_of(net.disk[i][K].value) == V2 for i in (0, 1, 3))
    net.down.discard(2)
    net.run_for(60.0)
    assert payload_of(net.disk[2][K].value) == V2


@pytest.mark.parametrize("announce", [False, True])
def test_a_laggard_that_promised_higher_catches_up_while_the_entry_keeps_changing(
    announce: bool,
) -> None:
    """A change every 0.6 s: each commit's repair must live to be refused and lift node 2
    (a fresh repair an entry at each commit, first resent a round's timeout later, never
    did, and settling never came due: node 2 held the first value through all 39)."""
    net = Net(announce=announce)
    net.propose(0, b"zero", K, put(b"\x00"))
    net.settle()
    _promised_higher(net, 2)
    for i in range(1, 40):
        net.propose(1, b"op-%d" % i, K, put(bytes([i])))
        net.run_for(0.6)
    assert payload_of(net.disk[2][K].value)[0] >= 30


def test_a_forged_word_does_not_cost_a_laggard_its_lift() -> None:
    """H's one word (an Accept under node 3's ballot) has node 0 lift K while node 2, which
    promised higher, is cut off; node 2 refuses the lift's value and is given up by that
    repair. Node 0's repair of the change before must still lift it (replaced by the
    lift's, it did not, and an entry not announced has no settling to stand in)."""
    net = Net()
    net.propose(0, b"zero", K, put(V0))
    net.settle()
    net.down.add(2)
    _promised_higher(net, 2)
    net.propose(1, b"one", K, put(V1))
    net.settle()
    assert isinstance(net.results[b"one"], Committed)
    record = net.replicas[0].source.get(K)
    assert record is not None
    word = Accept(b"w" * 16, K, record.accepted_round + 10, 3, record.value, 3, False)
    net.run(0, net.replicas[0].receive(H, word, net.now))
    net.run_for(0.8)  # the word comes due: node 0 lifts K
    net.down.discard(2)
    net.run_for(40.0)
    assert payload_of(net.disk[2][K].value) == V1
