"""A rolled-back node that a majority of ready peers, not every peer, lets finish its
catch-up (docs/fleet.md, "Catching up"): it trusts only answers to asks sent once the
quarantine has passed, so a value chosen with a vote it forgot, by a round that was still
going when its peers first answered, reaches it before it votes again."""

from __future__ import annotations

import pytest
from test_replica import Net, _value

from backupvault.fleet.channel import WINDOW
from backupvault.fleet.messages import Accept, payload_of
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import DEFAULT_TIMING, Committed, Replica

KEY = b"k"


@pytest.mark.parametrize("taken_after", [1.0, WINDOW - 1.0], ids=["at-once", "late-on-the-wire"])
def test_a_value_chosen_with_a_forgotten_vote_after_the_first_answers_reaches_the_node(
    taken_after: float,
) -> None:
    """docs/fleet.md's worked case (its "Known limits" until session 51): node 1 took node
    0's ballot b and was rolled back before node 2 took b; nodes 2, 3 and 4 answered its
    catch-up (none had b yet) and node 0 was cut off; node 2 then took b, so b was chosen
    by {0, 1, 2} with node 1's forgotten vote. Once the quarantine had passed, node 1 went
    ready on those old answers and, with nodes 3 and 4, chose a change built on the value
    before b: b was lost. Late on the wire: node 2 takes node 0's Accept almost the
    channel's window after it was sent (review s51b: with a quarantine of 20 s, after the
    node's fresh answers)."""
    net = Net(5, seed=7)
    net.propose(0, b"op-first", KEY, lambda value: (b"first", None))
    net.settle()
    top = max(r.source.get(KEY).promised.round for r in net.replicas.values())  # type: ignore[union-attr]
    rolled_back = net.replicas[1].source.get(KEY)
    assert rolled_back is not None
    b = Accept(b"op-b", KEY, top + 1, 0, _value(b"b"), 0, False)
    sent_at = net.now
    for acceptor in (0, 1):
        net.replicas[acceptor].receive(0, b, net.now)
    net.queue.clear()
    net.down = {0}  # node 0 is cut off from here on
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes, MemoryRecords.of([rolled_back]))
    net.run(1, net.replicas[1].start(net.now))
    net.run_for(taken_after)  # nodes 2, 3 and 4 answer: none has b
    assert not net.replicas[1].ready
    net.replicas[2].receive(0, b, net.now)  # b is chosen: nodes 0, 1 (forgotten) and 2
    assert net.now - sent_at < WINDOW  # the channel still opens node 0's message
    net.queue.clear()
    net.run_for(DEFAULT_TIMING.quarantine - taken_after + 2.0)
    assert net.replicas[1].ready
    held = net.replicas[1].source.get(KEY)
    assert held is not None and payload_of(held.value) == b"b"

    net.down = {0, 2}  # the change below needs node 1's vote
    net.propose(4, b"op-w", KEY, lambda value: (value + b"+w", None))
    net.settle(10.0)
    assert isinstance(net.results[b"op-w"], Committed)
    assert net.replicas[4].held_payload(KEY) == b"b+w"  # built on the chosen b


def test_the_quarantine_outlasts_a_round_and_its_messages_on_the_wire() -> None:
    """A round lives `deadline`; a peer's message opens up to the channel's window after it
    was sent; clocks may differ by a few seconds. With 20 s, an Accept of the forgotten
    round held on the wire 21 s was taken after the node's fresh answers (review s51b)."""
    assert DEFAULT_TIMING.quarantine >= DEFAULT_TIMING.deadline + WINDOW + 4.0
