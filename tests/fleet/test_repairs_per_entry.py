"""A node keeps one repair an entry: the newest chosen value's (`Replica._add_repair`).

Kept per op id, a node that missed a burst of changes to one entry had each change's repair
resent to it every second, and, once it was found to have promised higher, each repair's
refusal set off a no-op round: 18 rounds in 2 s at one node in sim seed 10756088.
"""

from __future__ import annotations

from dataclasses import replace

from test_forged_accepts_and_pokes import sent_by_ticks
from test_replica import Net, put

from backupvault.fleet.messages import Accept, Prepare, payload_of

K = b"k"
CHANGES = 6


def _burst_missed_by_node_2(*, promised_higher: bool) -> Net:
    """Node 0 commits CHANGES changes to K while node 2 is cut off; node 2 comes back, if
    `promised_higher` having promised far above them (its own rounds while cut off)."""
    net = Net()
    net.propose(0, b"first", K, put(b"\x00"))
    net.settle()
    net.down.add(2)
    for i in range(CHANGES):
        net.propose(0, b"op-%d" % i, K, put(bytes([i + 1])))
        net.settle()
    if promised_higher:
        held = net.replicas[2].source.get(K)
        assert held is not None
        net.replicas[2].source.put(replace(held, promised_round=1000, promised_node=2))
    net.down.discard(2)
    return net


def test_a_burst_of_changes_leaves_one_repair_that_resends_the_newest_value() -> None:
    net = _burst_missed_by_node_2(promised_higher=False)
    resent = [
        e.message
        for _, e in sent_by_ticks(net, 0.95)
        if e.to == 2 and isinstance(e.message, Accept) and e.message.key == K
    ]
    # One resend, of the newest value, where each change's repair resent its own.
    assert len(resent) == 1
    assert isinstance(resent[0], Accept)
    assert payload_of(resent[0].value) == bytes([CHANGES])
    net.settle()
    assert payload_of(net.disk[2][K].value) == bytes([CHANGES])


def test_a_node_that_missed_a_burst_and_promised_higher_costs_one_no_op_round() -> None:
    net = _burst_missed_by_node_2(promised_higher=True)
    sent = sent_by_ticks(net, 3.0)
    rounds = {e.message.op_id for _, e in sent if isinstance(e.message, Prepare)}
    assert len(rounds) == 1, f"{len(rounds)} no-op rounds for one lagging node"
    assert payload_of(net.disk[2][K].value) == bytes([CHANGES])
    assert all(payload_of(disk[K].value) == bytes([CHANGES]) for disk in net.disk.values())
