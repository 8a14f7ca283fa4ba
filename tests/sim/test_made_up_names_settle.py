"""One hostile node's Accepts of the empty value for made-up entry names, sent once to
each honest node, both hostile nodes silent after (review s48): every honest acceptor
takes such a value (it needs no owner's signature), announces it and settles it
(`Replica._settle`). The cost of the resends within the repair window is documented
(docs/fleet.md, "What a peer's message may name"); what must not happen is that it never
ends, or that one tick grows quadratic in the names."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

import backupvault.fleet.replica as replica_module
from backupvault.codec import decode_any
from backupvault.fleet.messages import PEER_MESSAGES, Accept, AppliedOp, ReplicatedValue
from backupvault.fleet.replica import Send
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.sim.world import Simulation, threshold_world

HONEST, HOSTILE = (0, 1, 2), (3, 4)


def _world_with_a_burst(names: int) -> tuple[Simulation, Counter[str]]:
    world = threshold_world(5, 10, len(HOSTILE), seed=1, leader=True)
    for slot in HOSTILE:
        world.members[slot].hostile.answer = lambda message: None  # silent from here on
    sent: Counter[str] = Counter()
    deliver = world._deliver

    def spied(sender: int, to: int, raw: bytes) -> None:
        if sender in HONEST:
            sent[type(decode_any(raw, PEER_MESSAGES)).__name__] += 1
        deliver(sender, to, raw)

    world._deliver = spied  # type: ignore[method-assign]
    world.settle(1.0)
    empty = ReplicatedValue([AppliedOp(os.urandom(16), 1)], ThresholdState().to_bytes())
    for i in range(names):
        key = EntryId.of("mallory", f"made-up-{i}").to_bytes()
        accept = Accept(os.urandom(16), key, 1, HOSTILE[0], empty.to_bytes(), HOSTILE[0], False)
        for to in HONEST:
            world.inject(HOSTILE[0], to, accept)
    return world, sent


def test_settling_made_up_names_ends_once_their_votes_left_the_lru(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CHOSEN_ENTRIES scaled down from 4096 to 20, 40 names: once the names outnumber the
    votes kept, a settle found no votes, ran a no-op round, and its new value was settled
    from the start by every honest node, for good (about 290,000 messages in every 30 s).
    A no-op round's value now goes on settling where the one before it was."""
    monkeypatch.setattr(replica_module, "CHOSEN_ENTRIES", 20)
    world, sent = _world_with_a_burst(40)
    world.settle(240.0)  # twice the repair window, and the longest settle wait
    sent.clear()
    world.settle(30.0)
    assert not sent, dict(sent)


class _CountedRepairs(dict[bytes, Any]):
    scans = 0

    def values(self) -> Any:
        _CountedRepairs.scans += 1
        return super().values()


def test_one_tick_looks_at_the_repairs_once_however_many_names_it_settles() -> None:
    """Each settled key scanned every repair (`_repair_missing`): a tick settling 2,000
    names took about a second on the node's event loop, 4,000 names 1.6 s. (Node 0
    stands in for the hostile ballot's node: it tells both hostile nodes, which missed
    each value, that it was chosen; it cannot resend another node's Accept.)"""
    world, _ = _world_with_a_burst(300)
    world.settle(0.2)
    replica = world.members[0].replica
    assert replica is not None
    replica._repairs = _CountedRepairs(replica._repairs)
    effects = replica.tick(world.now + 3.5)
    told = [e for e in effects if isinstance(e, Send) and isinstance(e.message, Accept)]
    assert sorted({e.to for e in told}) == list(HOSTILE)
    assert len({e.message.key for e in told}) == 300  # each name settled in this one tick
    assert _CountedRepairs.scans <= 2
