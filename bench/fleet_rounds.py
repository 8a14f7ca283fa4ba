"""The replication protocol's cost per change, with and without the stable leader: the real
`Replica` of 5 nodes on a simulated network where every message takes the same one-way
delay, so the figures count round trips, messages and acceptor writes, whatever the
machine's load (the real-process figures are in vault_e2e).

- One client: sequential changes to one entry, each sent to the next node in turn (as the
  relay's round robin does); the commit latency in units of the inter-node round trip.
- 16 clients on distinct entries, each sending its next change as soon as the last one
  commits: peer messages and acceptor writes (fsyncs, before group commit) per change.

The reference is the leaderless CASPaxos round (`Timing(leader=False)`) in the same run.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from backupvault.fleet.replica import (
    DEFAULT_TIMING,
    Committed,
    Effect,
    Failed,
    Persist,
    Replica,
    Send,
)

NODES = 5
ONE_WAY = 0.010  # seconds: a 20 ms round trip between nodes


@dataclass
class _Run:
    leader: bool
    replicas: dict[int, Replica] = field(default_factory=dict)
    events: list[tuple[float, int, int, int, Any]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    now: float = 0.0
    messages: int = 0
    writes: int = 0
    committed: dict[bytes, float] = field(default_factory=dict)
    failed: int = 0

    def __post_init__(self) -> None:
        rand = random.Random(1)
        timing = replace(DEFAULT_TIMING, leader=self.leader)
        for i in range(NODES):
            self.replicas[i] = Replica(i, range(NODES), rand.randbytes, None, timing)
            self.run(i, self.replicas[i].start(0.0, intact=True))

    def run(self, node: int, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    self.messages += 1
                    when = self.now + ONE_WAY
                    heapq.heappush(self.events, (when, next(self.seq), node, to, message))
                case Persist():
                    self.writes += 1
                case Committed(op_id):
                    self.committed[op_id] = self.now
                case Failed():
                    self.failed += 1

    def until(self, done: Any, limit: float = 60.0) -> None:
        while self.events and not done():
            when, _, sender, to, message = heapq.heappop(self.events)
            if when > limit:
                break
            self.now = when
            self.run(to, self.replicas[to].receive(sender, message, when))


def _increment(value: bytes) -> tuple[bytes, int]:
    n = int.from_bytes(value or b"\0", "big") + 1
    return n.to_bytes(8, "big"), n


def one_client(leader: bool, changes: int) -> list[float]:
    """Commit latency of each change, in round trips, after the first (warm-up) change."""
    fleet = _Run(leader)
    latencies = []
    for i in range(changes + 1):
        op = f"op{i}".encode()
        started = fleet.now
        node = i % NODES
        fleet.run(node, fleet.replicas[node].propose(op, b"entry", _increment, fleet.now))
        fleet.until(lambda op=op: op in fleet.committed)
        if i:
            latencies.append((fleet.committed[op] - started) / (2 * ONE_WAY))
        fleet.until(lambda: False, limit=fleet.now + 4 * ONE_WAY)  # let the laggards answer
    return latencies


def many_clients(leader: bool, clients: int, changes: int) -> tuple[float, float]:
    """(peer messages, acceptor writes) per committed change, clients on distinct entries."""
    fleet = _Run(leader)
    sent = {c: 0 for c in range(clients)}

    def send(c: int) -> None:
        op = f"c{c}-{sent[c]}".encode()
        node = (c + sent[c]) % NODES
        sent[c] += 1
        key = f"entry{c}".encode()
        fleet.run(node, fleet.replicas[node].propose(op, key, _increment, fleet.now))

    for c in range(clients):
        send(c)
    while len(fleet.committed) < clients * changes and fleet.events:
        before = set(fleet.committed)
        fleet.until(lambda before=before: len(fleet.committed) > len(before))
        for op in set(fleet.committed) - before:
            c = int(op.decode().split("-")[0][1:])
            if sent[c] < changes:
                send(c)
    done = len(fleet.committed)
    return fleet.messages / done, fleet.writes / done


def run(quick: bool) -> list[dict[str, object]]:
    changes = 20 if quick else 100
    rows: list[dict[str, object]] = []
    leader_rtt = statistics.median(one_client(True, changes))
    leaderless_rtt = statistics.median(one_client(False, changes))
    rows.append(
        {
            "name": "one client, one change: commit latency in inter-node round trips "
            "(simulated, 5 nodes, relay round robin)",
            "value": leader_rtt,
            "unit": "RTT",
            "reference": f"leaderless CASPaxos, same run: {leaderless_rtt:.2f} RTT",
            "ratio": leader_rtt / leaderless_rtt,
            "goal": "about 1 RTT at the leader, 1.5 forwarded (issue 10)",
        }
    )
    messages, writes = many_clients(True, 16, changes // 4)
    ref_messages, ref_writes = many_clients(False, 16, changes // 4)
    rows.append(
        {
            "name": "peer messages per committed change, 16 clients on distinct entries",
            "value": messages,
            "unit": "msgs",
            "reference": f"leaderless CASPaxos, same run: {ref_messages:.1f}",
            "ratio": messages / ref_messages,
            "goal": "fewer (lower is better)",
        }
    )
    rows.append(
        {
            "name": "acceptor writes per committed change, 16 clients on distinct entries",
            "value": writes,
            "unit": "writes",
            "reference": f"leaderless CASPaxos, same run: {ref_writes:.1f}",
            "ratio": writes / ref_writes,
            "goal": "one per acceptor (lower is better)",
        }
    )
    return rows
