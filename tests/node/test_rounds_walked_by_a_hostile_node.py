"""A hostile node walking honest acceptors' rounds up (review s49).

An acceptor takes no ballot more than `MAX_ROUND_STEP` above the highest round it has
promised (for any entry, or for the entry's own record), nor at or above `ROUND_CEILING`:
a hostile proposer must walk rounds up a step per message. With a step of 2^32 the walk
to the ceiling took 2^30 Prepares, about nine hours of what the channel admits from one
peer, and then one Prepare at the ceiling per entry took it out of reach for good. Walked
part of the way, two honest acceptors left the others a step per refused round behind,
and changes to the entry failed for minutes; and one copied record at the ceiling, handed
to a node catching up, switched the check off at that node for good.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from pathlib import Path

from peer_shell import Clock, frame, node_service, open_store

from backupvault.codec import decode_any
from backupvault.fleet.channel import MAX_SEEN_PER_PEER, WINDOW
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    AcceptorRecord,
    Prepare,
    SyncResponse,
)
from backupvault.fleet.replica import (
    MAX_ROUND_STEP,
    ROUND_CEILING,
    Committed,
    Failed,
    Persist,
    Replica,
    Send,
)
from backupvault.hsm.state import EntryId
from backupvault.node.peers import MAX_FRAME_MESSAGES

MADE_UP = EntryId.of("nobody", "walk").to_bytes()
YEAR = 365 * 86400


def test_walking_an_acceptor_to_the_ceiling_takes_longer_than_any_attacker_has(
    tmp_path: Path,
) -> None:
    """On the real node shell (sealed frames in, real SQLite store): each frame of 1,024
    Prepares from node 1, for one made-up entry, each a step above the last, lifts node 0's
    highest promised round by 1,024 steps, and no more. The channel admits
    MAX_SEEN_PER_PEER / WINDOW (33,333) messages a second from one peer: the walk to the
    ceiling must take more than a year of that (it took about nine hours with 2^32)."""

    async def scenario() -> tuple[int, float]:
        clock = Clock()
        service, _ = node_service(tmp_path, clock)
        start = service.replica._max_round
        started = time.perf_counter()
        for f in range(4):
            base = service.replica._max_round
            prepares = [
                Prepare(
                    b"w%07d" % (f * MAX_FRAME_MESSAGES + i),
                    MADE_UP,
                    base + (i + 1) * MAX_ROUND_STEP,
                    1,
                )
                for i in range(MAX_FRAME_MESSAGES)
            ]
            assert service.peer_frame(1, frame(1, prepares)) == 0
            for _ in range(20):
                await asyncio.sleep(0)
        took = time.perf_counter() - started
        walked = service.replica._max_round - start
        assert service._fatal is None
        await service.stop()
        return walked, took

    walked, took = asyncio.run(scenario())
    assert walked == 4 * MAX_FRAME_MESSAGES * MAX_ROUND_STEP  # every Prepare took a full step
    steps_to_ceiling = ROUND_CEILING // MAX_ROUND_STEP
    per_second_admitted = MAX_SEEN_PER_PEER / WINDOW
    hours_at_channel_rate = steps_to_ceiling / per_second_admitted / 3600
    measured_rate = 4 * MAX_FRAME_MESSAGES / took
    print(
        f"steps to ceiling {steps_to_ceiling:,}; channel admits {per_second_admitted:,.0f}/s"
        f" -> {hours_at_channel_rate:.1f} h; this shell took {measured_rate:,.0f} Prepares/s"
        f" -> {steps_to_ceiling / measured_rate / 3600:.1f} h"
    )
    assert steps_to_ceiling > per_second_admitted * YEAR, (
        f"one hostile peer walks an honest acceptor to ROUND_CEILING in"
        f" {hours_at_channel_rate:.1f} h at the channel's admitted rate"
    )


class Net:
    """Five replicas on an in-memory network (as tests/fleet/test_replica.py)."""

    def __init__(self, n: int = 5, seed: int = 1) -> None:
        self.rand = random.Random(seed)
        self.now = 0.0
        self.replicas = {i: Replica(i, range(n), self.rand.randbytes) for i in range(n)}
        self.down: set[int] = set()
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.results: dict[bytes, Committed | Failed] = {}
        self.disk: dict[int, dict[bytes, AcceptorRecord]] = {i: {} for i in range(n)}
        for i, r in self.replicas.items():
            self.run(i, r.start(self.now))
        self.settle()

    def run(self, node: int, effects: list) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    self.queue.append((node, to, message.to_bytes()))
                case Persist(record):
                    self.disk[node][record.key] = record
                case Committed() | Failed():
                    self.results[effect.op_id] = effect

    def settle(self, max_time: float = 30.0) -> None:
        deadline = self.now + max_time
        while self.now < deadline:
            while self.queue:
                sender, to, raw = self.queue.popleft()
                if to in self.down or sender in self.down:
                    continue
                self.run(
                    to, self.replicas[to].receive(sender, decode_any(raw, PEER_MESSAGES), self.now)
                )
            if not any(r.pending() for i, r in self.replicas.items() if i not in self.down):
                return
            self.now += 0.01
            for i, r in self.replicas.items():
                if i not in self.down:
                    self.run(i, r.tick(self.now))


def add(n: int):
    def change(value: bytes) -> tuple[bytes, int]:
        new = int.from_bytes(value or b"\0", "big") + n
        return new.to_bytes(8, "big"), new

    return change


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
    net.propose = lambda node, op, key, change: net.run(  # type: ignore[attr-defined]
        node, net.replicas[node].propose(op, key, change, net.now)
    )
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


def test_a_store_keeps_its_floor_a_step_above_at_most_across_a_restart(tmp_path: Path) -> None:
    """The floor is on disk too (the meta row): a copy at the ceiling written by the group
    commit lifted it there, and a restart brought the void check back."""
    store = open_store(tmp_path)
    store.save([AcceptorRecord(b"mine", 7, 0)])
    store.save([AcceptorRecord(b"made-up", ROUND_CEILING - 1, 4)])
    store.close()
    reopened = open_store(tmp_path)
    assert 7 < reopened.max_round() <= 7 + MAX_ROUND_STEP
    assert reopened.get(b"made-up") == AcceptorRecord(b"made-up", ROUND_CEILING - 1, 4)
    reopened.close()


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
