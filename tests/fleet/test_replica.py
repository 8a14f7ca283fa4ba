"""The replica's protocol on a tiny in-memory network (the full simulator is elsewhere)."""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import pytest

from backupvault.codec import Message, decode_any
from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    RECENT_OPS,
    Accept,
    Accepted,
    AcceptorRecord,
    AppliedOp,
    Ballot,
    Forward,
    ForwardAnswer,
    Prepare,
    Promise,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
    payload_of,
)
from backupvault.fleet.records import Mark, MemoryRecords
from backupvault.fleet.replica import (
    CLIMB_BURST_STEPS,
    DEFAULT_TIMING,
    LEADER_ENTRIES,
    MAX_ROUND_STEP,
    ROUND_CEILING,
    Committed,
    Failed,
    Persist,
    Replica,
    Send,
    Timing,
)


class Net:
    def __init__(
        self, n: int = 5, seed: int = 1, *, announce: bool = False, timing: Timing = DEFAULT_TIMING
    ) -> None:
        self.rand = random.Random(seed)
        self.now = 0.0
        told = (lambda key, payload: True) if announce else None
        self.replicas = {
            i: Replica(i, range(n), self.rand.randbytes, timing=timing, announce=told)
            for i in range(n)
        }
        self.down: set[int] = set()
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.results: dict[bytes, Committed | Failed] = {}
        self.disk: dict[int, dict[bytes, AcceptorRecord]] = {i: {} for i in range(n)}
        for i, replica in self.replicas.items():
            self.run(i, replica.start(self.now))
        self.settle()

    def run(self, node: int, effects: list) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    # Through the codec, as on the wire.
                    self.queue.append((node, to, message.to_bytes()))
                case Persist(record):
                    self.disk[node][record.key] = record
                case Committed() | Failed():
                    self.results[effect.op_id] = effect

    def settle(self, max_time: float = 10.0) -> None:
        deadline = self.now + max_time
        while self.now < deadline:
            self._deliver_queued()
            if not any(r.pending() for i, r in self.replicas.items() if i not in self.down):
                return
            self._tick()

    def run_for(self, seconds: float) -> None:
        """Deliver and tick for `seconds`, whether or not a proposal is pending."""
        until = self.now + seconds
        while self.now < until:
            self._deliver_queued()
            self._tick()

    def _deliver_queued(self) -> None:
        while self.queue:
            sender, to, raw = self.next_on_the_wire()
            if to in self.down or sender in self.down:
                continue
            message: Message = decode_any(raw, PEER_MESSAGES)
            self.run(to, self.replicas[to].receive(sender, message, self.now))

    def _tick(self) -> None:
        self.now += 0.01
        for i, replica in self.replicas.items():
            if i not in self.down:
                self.run(i, replica.tick(self.now))

    def next_on_the_wire(self) -> tuple[int, int, bytes]:
        """The next message delivered: the oldest (links that keep order)."""
        return self.queue.popleft()

    def propose(self, node: int, op: bytes, key: bytes, change) -> None:
        self.run(node, self.replicas[node].propose(op, key, change, self.now))


def add(n: int):
    def change(value: bytes) -> tuple[bytes, int]:
        new = int.from_bytes(value or b"\0", "big") + n
        return new.to_bytes(8, "big"), new

    return change


def test_all_start_ready_after_whole_fleet_sync() -> None:
    net = Net()
    assert all(r.ready for r in net.replicas.values())


def test_changes_commit_in_order_across_proposers() -> None:
    net = Net()
    for i in range(10):
        net.propose(i % 5, f"op{i}".encode(), b"k", add(1))
    net.settle()
    outcomes = sorted(r.outcome for r in net.results.values() if isinstance(r, Committed))
    assert outcomes == list(range(1, 11))  # every increment counted exactly once


def test_minority_down_still_commits_majority_down_fails() -> None:
    net = Net()
    net.down = {3, 4}
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    assert isinstance(net.results[b"a"], Committed)
    net.down = {2, 3, 4}
    net.now += 2 * DEFAULT_TIMING.leader_lease  # the majority has been silent a while
    net.propose(0, b"b", b"k", add(1))
    net.settle()
    assert isinstance(net.results[b"b"], Failed)
    # Nothing was accepted anywhere by the failed proposal: prepare never got a majority
    # (the leader does not skip phase 1 without a majority heard within its lease).
    assert all(
        int.from_bytes(payload_of(net.disk[i][b"k"].value), "big") == 1
        for i in (0, 1)
        if b"k" in net.disk[i]
    )


def test_restarted_node_from_empty_disk_catches_up_before_serving() -> None:
    net = Net()
    net.propose(0, b"a", b"k", add(5))
    net.settle()
    # Node 1 loses its disk and restarts: it must learn the value from the others.
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes)
    net.run(1, net.replicas[1].start(net.now))
    assert not net.replicas[1].ready
    net.settle()
    assert net.replicas[1].ready
    assert int.from_bytes(payload_of(net.replicas[1].source.get(b"k").value), "big") == 5
    net.propose(1, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 6


def test_node_that_missed_a_commit_gets_it_when_reachable_again() -> None:
    net = Net()
    net.down = {4}
    net.propose(0, b"a", b"k", add(3))
    net.settle()
    assert b"k" not in net.disk[4]
    assert net.replicas[0].lagging() == 1
    net.down = set()  # node 4 was cut off, not restarted: only the repair can reach it
    for _ in range(200):
        net.now += 0.01
        net.run(0, net.replicas[0].tick(net.now))
        net.settle()
    assert int.from_bytes(payload_of(net.disk[4][b"k"].value), "big") == 3
    assert net.replicas[0].lagging() == 0


def test_a_retried_change_is_applied_once() -> None:
    """Node 0's Accept reaches only node 1, so its round stalls; node 2 carries that
    half-accepted value forward with its own change; when node 0 retries, it must find its
    change already in the value and not apply it a second time (one guess, one count)."""
    from backupvault.fleet.messages import Accept

    net = Net()
    net.propose(0, b"a", b"k", add(1))
    while net.queue:
        sender, to, raw = net.queue.popleft()
        message = decode_any(raw, PEER_MESSAGES)
        if isinstance(message, Accept) and sender == 0 and to != 1:
            continue  # lost
        net.run(to, net.replicas[to].receive(sender, message, net.now))
    assert b"a" not in net.results  # only nodes 0 and 1 accepted: not committed
    net.propose(2, b"b", b"k", add(10))
    net.settle()
    assert net.results[b"b"].outcome == 11  # built on node 0's half-accepted +1
    assert isinstance(net.results[b"a"], Committed)
    assert net.results[b"a"].outcome == 1  # the outcome of the round that counted
    values = {int.from_bytes(payload_of(net.disk[i][b"k"].value), "big") for i in range(5)}
    assert values == {11}


def test_restart_with_a_peer_unreachable_waits_out_the_quarantine() -> None:
    """With every peer answering, a restarted node is ready at once; with one missing,
    a majority of caught-up peers is trusted only after the quarantine, when no round
    that could hold a promise this node forgot can still act."""
    net = Net()
    net.down = {4}
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes)
    net.run(1, net.replicas[1].start(net.now))
    net.settle()
    assert not net.replicas[1].ready
    started = net.now
    while not net.replicas[1].ready and net.now < started + net.replicas[1].timing.quarantine + 10:
        net.now += 0.5
        for i, replica in net.replicas.items():
            if i not in net.down:
                net.run(i, replica.tick(net.now))
        net.settle()
    assert net.replicas[1].ready
    assert net.now >= started + net.replicas[1].timing.quarantine - 0.5


# ---- catching up: asks, answers and retries, message by message ----------------------


def _asks(effects: list) -> dict[int, bytes]:
    """The SyncRequests among `effects`: peer -> the ask's id."""
    return {e.to: e.message.sync_id for e in effects if isinstance(e, Send)}


def _restarting(node: int = 0) -> tuple[Replica, dict[int, bytes]]:
    replica = Replica(node, range(5), random.Random(7).randbytes)
    return replica, _asks(replica.start(0.0))


def test_a_late_not_ready_answer_never_replaces_a_newer_ready_one() -> None:
    """Peer 3 was catching up at the first ask and caught up by the second; its first
    answer ("not ready") arrives after its second ("ready"). Counting peer 3 as not ready
    would leave the node one ready peer short of a majority while peer 4 stays down."""
    replica, first = _restarting()
    for peer in (1, 2):
        replica.receive(peer, SyncResponse(first[peer], True, []), 0.1)
    second = _asks(replica.tick(replica.timing.sync_retry))
    assert 3 in second and second[3] != first[3]
    replica.receive(3, SyncResponse(second[3], True, []), 0.6)
    replica.receive(3, SyncResponse(first[3], False, []), 0.7)  # the late, older answer
    assert 3 not in _asks(replica.tick(replica.timing.sync_retry * 3))  # held as ready
    fresh = _asks(replica.tick(replica.timing.quarantine + 0.1))  # everyone asked again
    later = replica.timing.quarantine + 0.2
    replica.receive(3, SyncResponse(fresh[3], True, []), later)
    replica.receive(3, SyncResponse(second[3], False, []), later)  # older again: ignored
    for peer in (1, 2):
        replica.receive(peer, SyncResponse(fresh[peer], True, []), later)
    assert replica.ready


def test_peers_that_said_not_ready_are_asked_again() -> None:
    """Peers 1 and 2 are ready, peer 3 is still catching up when asked, peer 4 is down.
    Without asking peer 3 again, the node never sees a majority of ready peers."""
    replica, first = _restarting()
    for peer in (1, 2):
        replica.receive(peer, SyncResponse(first[peer], True, []), 0.1)
    replica.receive(3, SyncResponse(first[3], False, []), 0.1)
    second = _asks(replica.tick(replica.timing.sync_retry))
    assert set(second) == {3, 4}
    replica.receive(3, SyncResponse(second[3], True, []), 0.6)
    replica.tick(replica.timing.quarantine - 1.0)
    assert not replica.ready  # a majority alone is trusted only after the quarantine
    fresh = _asks(replica.tick(replica.timing.quarantine + 0.1))
    assert set(fresh) == {1, 2, 3, 4} and not replica.ready  # and asked again then
    for peer in (1, 2):
        replica.receive(peer, SyncResponse(fresh[peer], True, []), replica.timing.quarantine + 0.2)
    assert not replica.ready  # two fresh answers and an older one are not a majority's
    replica.receive(3, SyncResponse(fresh[3], True, []), replica.timing.quarantine + 0.2)
    assert replica.ready


def test_a_peer_whose_answer_to_the_ask_after_the_quarantine_is_lost_is_asked_again() -> None:
    """Once the quarantine has passed only answers to asks sent then count: a ready peer
    whose answer to that ask was lost is asked again at the next retry, as a silent one."""
    replica, first = _restarting()
    for peer in (1, 2, 3):
        replica.receive(peer, SyncResponse(first[peer], True, []), 0.1)
    fresh = _asks(replica.tick(replica.timing.quarantine + 0.1))
    assert set(fresh) == {1, 2, 3, 4}
    for peer in (1, 2):
        replica.receive(peer, SyncResponse(fresh[peer], True, []), replica.timing.quarantine + 0.2)
    assert not replica.ready  # peer 3's answer to it was lost
    again = _asks(replica.tick(replica.timing.quarantine + 0.1 + replica.timing.sync_retry))
    assert set(again) == {3, 4}
    replica.receive(3, SyncResponse(again[3], True, []), replica.timing.quarantine + 0.7)
    assert replica.ready


def test_sync_retries_stay_within_the_settle_window() -> None:
    """A silent peer is asked again at growing intervals that stop at sync_retry_max,
    so a node restarted into a healed fleet catches up within the simulator's settle
    window rather than after a long backoff."""
    from backupvault.sim.world import SETTLE

    replica, _ = _restarting()
    asked_at = [0.0]
    now = 0.0
    while now < 30.0:
        now = round(now + 0.01, 2)
        if 4 in _asks(replica.tick(now)):
            asked_at.append(now)
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert max(gaps) <= replica.timing.sync_retry_max + 0.011
    assert max(gaps) < SETTLE / 2
    assert len(asked_at) > 10


def test_an_answer_to_an_unknown_ask_is_ignored() -> None:
    replica, first = _restarting()
    for peer in (1, 2, 3):
        replica.receive(peer, SyncResponse(first[peer], True, []), 0.1)
    replica.receive(4, SyncResponse(b"\x00" * 16, True, []), 0.1)  # not an id it sent
    assert not replica.ready
    replica.receive(4, SyncResponse(first[4], True, []), 0.1)
    assert replica.ready  # every peer answered: no quarantine needed


def test_persists_say_why_they_were_made() -> None:
    """Catch-up copies are marked as copies; only an answer to an Accept is an
    acceptance (the simulation's observer counts only those)."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    kinds: list[str] = []
    original = net.run

    def run(node: int, effects: list) -> None:
        kinds.extend(e.kind for e in effects if isinstance(e, Persist))
        original(node, effects)

    net.run = run  # type: ignore[method-assign]
    net.settle()
    assert sorted(set(kinds)) == ["accept", "promise"]
    assert kinds.count("accept") == 5  # one per acceptor
    kinds.clear()
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes)
    net.run(1, net.replicas[1].start(net.now))
    net.settle()
    assert kinds == ["copy"]


def test_an_intact_restart_takes_part_at_once_without_asking_anyone() -> None:
    """The shell vouches (token counter) that the store holds every persisted record: the
    node is an acceptor with stable storage and answers Prepare at once, peers down."""
    replica = Replica(
        0, range(5), random.Random(3).randbytes, MemoryRecords.of([AcceptorRecord(b"k", 4, 2)])
    )
    assert replica.start(0.0, intact=True) == []
    assert replica.ready
    from backupvault.fleet.messages import Prepare, Promise

    effects = replica.receive(1, Prepare(b"op", b"k", 3, 1), 0.0)
    (reply,) = [e.message for e in effects if isinstance(e, Send)]
    assert isinstance(reply, Promise) and not reply.ok  # it remembers promising 4.2


# ---- catching up by what changed ---------------------------------------------------------


def _records_sent_to(net: Net, node: int) -> list[int]:
    """Settle, and return how many records each SyncResponse to `node` carried."""
    sizes: list[int] = []
    original = net.run

    def run(sender: int, effects: list) -> None:
        for e in effects:
            if isinstance(e, Send) and e.to == node and isinstance(e.message, SyncResponse):
                sizes.append(len(e.message.records))
        original(sender, effects)

    net.run = run  # type: ignore[method-assign]
    try:
        net.settle()
    finally:
        net.run = original  # type: ignore[method-assign]
    return sizes


def _restart_keeping_disk(net: Net, node: int) -> list[int]:
    """Restart `node` with its records kept but not vouched for (as after a rollback the
    token caught): it catches up, and the answers' sizes are returned."""
    source = net.replicas[node].source
    net.replicas[node] = Replica(node, range(5), net.rand.randbytes, source)
    net.run(node, net.replicas[node].start(net.now))
    sizes = _records_sent_to(net, node)
    assert net.replicas[node].ready
    return sizes


def test_a_restart_asks_only_for_what_changed_since_it_last_caught_up() -> None:
    net = Net()
    for i in range(20):
        net.propose(i % 5, b"op%d" % i, b"k%d" % i, add(1))
    net.settle()
    # Never merged from its peers before: each sends everything it holds.
    assert _restart_keeping_disk(net, 1) == [20, 20, 20, 20]
    net.propose(0, b"late", b"k-new", add(7))
    net.settle()
    # Now only the one entry written since: not the 21 a full dump would carry.
    assert _restart_keeping_disk(net, 1) == [1, 1, 1, 1]
    assert _restart_keeping_disk(net, 1) == [0, 0, 0, 0]
    held = net.replicas[1].source.get(b"k-new")
    assert held is not None and int.from_bytes(payload_of(held.value), "big") == 7


def test_catching_up_comes_in_pages_until_everything_is_merged(monkeypatch) -> None:
    from backupvault.fleet import replica as replica_module

    monkeypatch.setattr(replica_module, "SYNC_PAGE", 3)
    net = Net()
    for i in range(10):
        net.propose(0, b"op%d" % i, b"k%d" % i, add(i + 1))
    net.settle()
    net.replicas[2] = Replica(2, range(5), net.rand.randbytes)  # wiped
    net.run(2, net.replicas[2].start(net.now))
    sizes = _records_sent_to(net, 2)
    assert net.replicas[2].ready
    assert max(sizes) == 3 and sum(sizes) == 4 * 10  # 4 pages of ≤ 3 from each peer
    for i in range(10):
        held = net.replicas[2].source.get(b"k%d" % i)
        assert held is not None and int.from_bytes(payload_of(held.value), "big") == i + 1


def test_a_page_that_does_not_continue_what_was_merged_is_ignored() -> None:
    """A duplicate of an earlier page, or a page after versions this node never got,
    must not move the mark past records it has not merged."""
    replica, first = _restarting()
    stray = SyncResponse(first[1], True, [AcceptorRecord(b"k", 3, 1)], b"s1", 5, 9, False)
    assert replica.receive(1, stray, 0.1) == []
    assert replica.source.mark(1) == Mark() and replica.source.get(b"k") is None
    page = SyncResponse(first[1], True, [AcceptorRecord(b"k", 3, 1)], b"s1", 0, 5, True)
    effects = replica.receive(1, page, 0.1)
    assert [e.kind for e in effects if isinstance(e, Persist)] == ["copy"]
    assert replica.source.mark(1) == Mark(b"s1", 5)
    (ask,) = [e.message for e in effects if isinstance(e, Send)]  # the next page
    assert (ask.store_id, ask.since) == (b"s1", 5)


def test_a_catch_up_page_longer_than_any_honest_one_is_ignored(monkeypatch) -> None:
    """An honest peer's page holds at most `SYNC_PAGE` records; a hostile peer's page for
    made-up entries was merged whatever its length (up to the 64 MiB frame: some 10^5
    small records, each a row to write, in one step of the node's loop). It is dropped
    whole, as no honest node's, and the mark stays where it was."""
    from backupvault.fleet import replica as replica_module

    monkeypatch.setattr(replica_module, "SYNC_PAGE", 3)
    replica, first = _restarting()
    records = [AcceptorRecord(b"k%d" % i, 3, 1) for i in range(4)]
    long_page = SyncResponse(first[1], True, records, b"s1", 0, 5, True)
    assert replica.receive(1, long_page, 0.1) == []
    assert replica.source.mark(1) == Mark()
    assert all(replica.source.get(r.key) is None for r in records)
    full_page = replace(long_page, records=records[:3])
    effects = replica.receive(1, full_page, 0.1)
    assert [e.kind for e in effects if isinstance(e, Persist)] == ["copy"] * 3


def test_a_peer_that_pages_for_ever_is_asked_one_page_at_a_time() -> None:
    """Peer 1 (hostile) answers every catch-up ask at once with one more page (`more`),
    from the start each time, while peers 2-4 stay silent. Each retry of the node's
    asks (every 2 s at most) asked peer 1 again although its pages kept coming, and every
    page answered asked for the next: one more chain of asks per retry, each driving
    pages as fast as peer 1 answered, without end while the node could not finish
    (after 40 s, 21 pages per round trip). The node asks again only a peer whose pages
    stopped coming, and asks for the next page only in answer to its latest ask."""
    replica, first = _restarting()
    pending = [first[1]]
    now, most = 0.0, 0
    for step in range(400):
        now += 0.1
        effects = []
        for sync_id in pending:
            record = AcceptorRecord(b"made-up-%d" % step, 1, 1)
            page = SyncResponse(sync_id, True, [record], b"h", 0, step + 1, True)
            effects += replica.receive(1, page, now)
        effects += replica.tick(now)
        pending = [
            e.message.sync_id
            for e in effects
            if isinstance(e, Send) and e.to == 1 and isinstance(e.message, SyncRequest)
        ]
        most = max(most, len(pending))
    assert most == 1 and not replica.ready


def _sideways(key: bytes, payload: bytes, held: bytes) -> str | None:
    """An application check under which two values that share a first byte are siblings:
    neither may follow the other (as two registrations of one version, or one commit
    applied at two attempts, were refused before sim seeds 9101607 and 9300379)."""
    if held and payload[:1] == held[:1] and payload != held:
        return "a sibling of the held value"
    return None


def _catching_up_with(own: AcceptorRecord | None) -> tuple[Replica, dict[int, bytes]]:
    source = MemoryRecords()
    if own is not None:
        source.put(own)
    replica = Replica(0, range(3), random.Random(7).randbytes, source, check_copy=_sideways)
    return replica, _asks(replica.start(0.0))


def _value(payload: bytes) -> bytes:
    return ReplicatedValue([], payload).to_bytes()


def test_a_copy_is_checked_against_what_this_node_held_not_a_peer_s_earlier_copy() -> None:
    """Sim seeds 9300379 and 9101607: a wiped node caught up first from a peer holding a
    sibling of the chosen value (accepted by that peer alone), then refused the chosen
    value, checked against that copy. It had accepted the chosen value before its disk was
    lost; forgetting it let a majority commit a value that does not build on it. Which
    peer answers first must not decide what the node holds."""
    replica, asks = _catching_up_with(None)
    sibling = AcceptorRecord(b"k", 6, 0, 3, 0, _value(b"A-sibling"))
    chosen = AcceptorRecord(b"k", 6, 1, 5, 1, _value(b"A-chosen"))
    replica.receive(1, SyncResponse(asks[1], True, [sibling]), 0.1)
    replica.receive(2, SyncResponse(asks[2], True, [chosen]), 0.2)
    assert replica.ready
    assert replica.held_payload(b"k") == b"A-chosen"


def test_after_a_rollback_a_copy_is_checked_against_the_node_s_own_older_value() -> None:
    """The same with a rolled-back store that still holds an older value of its own: the
    chosen copy is checked against that value, not against the sibling merged first."""
    own = AcceptorRecord(b"k", 2, 0, 2, 0, _value(b"B-own"))
    replica, asks = _catching_up_with(own)
    sibling = AcceptorRecord(b"k", 6, 0, 3, 0, _value(b"A-sibling"))
    chosen = AcceptorRecord(b"k", 6, 1, 5, 1, _value(b"A-chosen"))
    replica.receive(1, SyncResponse(asks[1], True, [sibling]), 0.1)
    assert replica.held_payload(b"k") == b"A-sibling"
    replica.receive(2, SyncResponse(asks[2], True, [chosen]), 0.2)
    assert replica.ready
    assert replica.held_payload(b"k") == b"A-chosen"


def test_a_wiped_node_stopped_during_its_catch_up_checks_copies_as_a_wiped_node() -> None:
    """The still-open case of the test above (docs/simulation.md): a wiped node merged a
    sibling of the chosen value, was stopped before it caught up, and started again with
    that copy on its disk. Its store remembers that the catch-up began empty, so the
    chosen value is checked as a wiped node's copies are, not against the sibling (which
    refused it, and the node forgot an acceptance it gave before its disk was lost)."""
    source = MemoryRecords()
    source.begin_catch_up()  # as the node's store does at the first start: empty
    replica = Replica(0, range(3), random.Random(7).randbytes, source, check_copy=_sideways)
    asks = _asks(replica.start(0.0))
    sibling = AcceptorRecord(b"k", 6, 0, 3, 0, _value(b"A-sibling"))
    chosen = AcceptorRecord(b"k", 6, 1, 5, 1, _value(b"A-chosen"))
    replica.receive(1, SyncResponse(asks[1], True, [sibling]), 0.1)
    assert not replica.ready and replica.held_payload(b"k") == b"A-sibling"
    # Stopped here, and started again on the same disk: the catch-up goes on.
    source.begin_catch_up()
    assert source.catch_up_began_empty()
    again = Replica(0, range(3), random.Random(8).randbytes, source, check_copy=_sideways)
    asks = _asks(again.start(1.0))
    again.receive(1, SyncResponse(asks[1], True, []), 1.1)
    again.receive(2, SyncResponse(asks[2], True, [chosen]), 1.2)
    assert again.ready
    assert again.held_payload(b"k") == b"A-chosen"


def test_a_rolled_back_node_stopped_during_its_catch_up_does_not_take_a_copy_for_its_own() -> None:
    """The rolled-back case: the node held an older value of its own (B-own), merged a
    sibling of the chosen value, and was stopped before it caught up; its own value is
    lost with the map. The row the stopped catch-up wrote is checked as a wiped node's
    (against nothing), not against the sibling, which refused the chosen value. A row that
    catch-up did not write is still checked against the node's own value."""
    source = MemoryRecords.of(
        [
            AcceptorRecord(b"k", 2, 0, 2, 0, _value(b"B-own")),
            AcceptorRecord(b"j", 2, 0, 2, 0, _value(b"C-own")),
        ]
    )
    source.begin_catch_up()  # found rolled back
    replica = Replica(0, range(3), random.Random(7).randbytes, source, check_copy=_sideways)
    asks = _asks(replica.start(0.0))
    sibling = AcceptorRecord(b"k", 6, 0, 3, 0, _value(b"A-sibling"))
    replica.receive(1, SyncResponse(asks[1], True, [sibling]), 0.1)
    assert not replica.ready and replica.held_payload(b"k") == b"A-sibling"
    source.begin_catch_up()  # stopped, and started again on the same disk
    again = Replica(0, range(3), random.Random(8).randbytes, source, check_copy=_sideways)
    asks = _asks(again.start(1.0))
    chosen = AcceptorRecord(b"k", 6, 1, 5, 1, _value(b"A-chosen"))
    hostile = AcceptorRecord(b"j", 6, 1, 5, 1, _value(b"C-other"))  # its own value refuses it
    again.receive(1, SyncResponse(asks[1], True, []), 1.1)
    again.receive(2, SyncResponse(asks[2], True, [chosen, hostile]), 1.2)
    assert again.ready
    assert again.held_payload(b"k") == b"A-chosen"
    assert again.held_payload(b"j") == b"C-own"


def test_a_store_with_values_of_its_own_never_says_its_catch_up_began_empty() -> None:
    source = MemoryRecords.of([AcceptorRecord(b"k", 2, 0, 2, 0, _value(b"B-own"))])
    source.begin_catch_up()
    assert source.catching_up and not source.catch_up_began_empty()
    empty = MemoryRecords()
    empty.begin_catch_up()
    empty.put(AcceptorRecord(b"k", 2, 0, 2, 0, _value(b"B-copy")))
    empty.begin_catch_up()  # started again before it caught up
    assert empty.catch_up_began_empty()
    empty.end_catch_up()
    assert not empty.catching_up and not empty.catch_up_began_empty()
    empty.begin_catch_up()  # a later catch-up (a rollback): values of its own now
    assert not empty.catch_up_began_empty()


def test_a_copy_that_this_node_s_own_value_refuses_is_still_not_taken() -> None:
    """The check still stands against what the node itself held (a peer may be hostile):
    only the peer's promise is merged."""
    own = AcceptorRecord(b"k", 2, 0, 2, 0, _value(b"A-own"))
    replica, asks = _catching_up_with(own)
    other = AcceptorRecord(b"k", 6, 1, 5, 1, _value(b"A-other"))
    replica.receive(1, SyncResponse(asks[1], True, [other]), 0.1)
    replica.receive(2, SyncResponse(asks[2], True, []), 0.2)
    assert replica.ready
    held = replica.source.get(b"k")
    assert held is not None and held.promised == other.promised
    assert replica.held_payload(b"k") == b"A-own"


# ---- the stable-leader path ------------------------------------------------------------


def _kinds_sent(net: Net, action) -> list[str]:
    """The message types sent on the network while `action` runs and the fleet settles."""
    sent: list[str] = []
    original = net.run

    def run(node: int, effects: list) -> None:
        sent.extend(type(e.message).__name__ for e in effects if isinstance(e, Send))
        original(node, effects)

    net.run = run  # type: ignore[method-assign]
    try:
        action()
        net.settle()
    finally:
        net.run = original  # type: ignore[method-assign]
    return sent


def test_a_change_at_the_leader_is_one_accept_round() -> None:
    """The first change to an entry pays a Prepare; from then on the leader holds the
    majority's promise of its next ballot and a change is Accept → Accepted only."""
    net = Net()
    first = _kinds_sent(net, lambda: net.propose(0, b"a", b"k", add(1)))
    assert "Prepare" in first
    second = _kinds_sent(net, lambda: net.propose(0, b"b", b"k", add(1)))
    assert sorted(set(second)) == ["Accept", "Accepted"]
    assert second.count("Accept") == 4  # to each peer, once
    assert net.results[b"b"].outcome == 2


def test_a_change_at_another_node_is_forwarded_and_committed_there() -> None:
    """Node 3 forwards its change to the leader (node 0); the acceptors answer both, and
    node 3 commits on their answers: no Prepare, no leaderless round."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    sent = _kinds_sent(net, lambda: net.propose(3, b"b", b"k", add(1)))
    assert sorted(set(sent)) == ["Accept", "Accepted", "Forward"]
    assert sent.count("Forward") == 1
    assert net.results[b"b"].outcome == 2


def test_a_forward_built_on_a_stale_value_is_applied_again_once() -> None:
    """Node 4 missed the last commit (cut off); its forward is built on an old value, so
    the leader hands back the newest one and node 4 applies its change to that."""
    net = Net()
    net.down = {4}
    net.propose(0, b"a", b"k", add(5))
    net.settle()
    net.down = set()
    sent = _kinds_sent(net, lambda: net.propose(4, b"b", b"k", add(1)))
    assert "ForwardAnswer" in sent and "Prepare" not in sent
    assert net.results[b"b"].outcome == 6


def test_many_nodes_through_the_leader_count_every_change_once() -> None:
    net = Net()
    for i in range(20):
        net.propose(i % 5, f"op{i}".encode(), b"k", add(1))
    net.settle()
    outcomes = sorted(r.outcome for r in net.results.values() if isinstance(r, Committed))
    assert outcomes == list(range(1, 21))


def _sends(effects: list, kind: type) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


@pytest.mark.parametrize("leader", [True, False], ids=["leader", "leaderless"])
def test_phase_1_needs_a_majority_of_promises_before_any_accept(leader: bool) -> None:
    """Node 0's Prepare for a new entry (the leader's hold on it, or a leaderless round)
    is promised by itself and one peer: one fewer than a majority. It waits, at the same
    ballot, sending nothing; the next peer's promise completes phase 1, and only then
    do the Accepts leave, at that ballot. (One promise short used to show only as a
    hang: the leader re-prepared for ever.)"""
    net = Net()
    node = net.replicas[0]
    node.timing = replace(node.timing, leader=leader)
    effects = node.propose(b"a", b"k", add(1), net.now)
    prepares = {e.to: e.message for e in _sends(effects, Prepare)}
    assert sorted(prepares) == [1, 2, 3, 4]
    ballot = (prepares[1].round, prepares[1].node)

    def promise_from(peer: int) -> list:
        answer = net.replicas[peer].receive(0, prepares[peer], net.now)
        (promise,) = _sends(answer, Promise)
        assert promise.message.ok
        return node.receive(peer, promise.message, net.now)

    # Node 0's own promise came first (its acceptor answers without the network).
    assert node.quorum == 3
    short = promise_from(1)
    assert short == [], "phase 1 ended on one fewer promise than a majority"
    majority = promise_from(2)
    accepts = _sends(majority, Accept)
    assert sorted(e.to for e in accepts) == [1, 2, 3, 4]
    assert {(e.message.round, e.message.node) for e in accepts} == {ballot}
    assert not _sends(majority, Prepare)


def test_a_dead_leader_is_passed_over_and_the_change_commits_leaderless() -> None:
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    net.down = {0}
    net.propose(2, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 2
    assert net.replicas[2].leader(net.now) == 1
    # The next change at node 2 goes to node 1, which now leads.
    sent = _kinds_sent(net, lambda: net.propose(2, b"c", b"k", add(1)))
    assert "Forward" in sent
    assert net.results[b"c"].outcome == 3


def test_two_leaders_at_once_stay_consistent() -> None:
    """Nodes 3 and 4 pass node 0 over (a false timeout) and forward to node 1, while nodes
    0, 1 and 2 still use node 0: two leaders on the same entry, each refusing the other's
    ballots in turn; every change still counts once."""
    net = Net()
    for node in (3, 4):
        net.replicas[node].suspect(0, net.now)
    assert net.replicas[3].leader(net.now) == 1 and net.replicas[2].leader(net.now) == 0
    for i in range(20):
        net.propose(i % 5, f"op{i}".encode(), b"k", add(1))
    net.settle()
    outcomes = sorted(r.outcome for r in net.results.values() if isinstance(r, Committed))
    assert outcomes == list(range(1, 21))


def test_a_leader_that_swaps_the_value_gets_nothing_committed_at_the_asker() -> None:
    """A hostile leader puts its own value (the counter unchanged) into the Accept for a
    forwarded change. The acceptors' answers name the digest of what they took, so node 3
    does not count them as its commit; it times out, goes leaderless and its change is
    applied to whatever the leader wrote."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    swapped = []
    old = net.disk[0][b"k"].value
    original = net.run

    def run(node: int, effects: list) -> None:
        for effect in effects:
            message = getattr(effect, "message", None)
            if node == 0 and isinstance(message, Accept) and message.op_id == b"b":
                effect = Send(effect.to, replace(message, value=old))
                swapped.append(effect)
            original(node, [effect])

    net.run = run  # type: ignore[method-assign]
    net.propose(3, b"b", b"k", add(1))
    net.settle()
    assert swapped
    assert net.results[b"b"].outcome == 2  # committed once, by its own leaderless round
    # ... and the committed value holds the change the outcome reports.
    assert {int.from_bytes(payload_of(net.disk[i][b"k"].value), "big") for i in range(5)} == {2}


def test_a_leader_that_answers_stale_for_ever_cannot_stall_a_change() -> None:
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    original = net.replicas[0].receive

    def receive(sender: int, message: Message, now: float) -> list:
        if isinstance(message, Forward):  # always "your base is stale", with a made-up one
            return [Send(sender, ForwardAnswer(message.op_id, message.key, True, 0, 0, b""))]
        return original(sender, message, now)

    net.replicas[0].receive = receive  # type: ignore[method-assign]
    net.propose(3, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 2


def test_an_inflated_ballot_slows_the_leader_but_changes_nothing() -> None:
    """A node promises itself a huge ballot on every acceptor: the leader's held promise
    is refused, it goes back to a Prepare above it, and the count goes on correctly.
    (Huge but within MAX_ROUND_STEP of the rounds seen: further above, acceptors refuse
    the round outright; tests/hsm/test_acceptor_checks.py.)"""
    huge = MAX_ROUND_STEP - 10
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    for node in range(5):
        net.run(node, net.replicas[node].receive(4, Prepare(b"x", b"k", huge, 4), net.now))
    net.queue.clear()  # its promises go nowhere
    net.propose(2, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 2
    assert all(r.source.get(b"k").promised.round > huge for r in net.replicas.values())


def test_a_promise_far_above_is_reached_in_steps_and_the_change_commits() -> None:
    """Acceptors walked up to a promise two steps above anything node 0 has seen (each
    Prepare within MAX_ROUND_STEP of what that acceptor had seen): node 0 learns the
    promise from their refusals at most a step at a time, yet still gets above it and
    commits. One answer must not lift its rounds by more: a hostile peer's Promise
    claiming 2^64 - 1 would otherwise make its next ballot overflow the store."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    walked = [MAX_ROUND_STEP - 10, 2 * MAX_ROUND_STEP - 20]
    for node in range(1, 5):
        for round_ in walked:
            net.run(node, net.replicas[node].receive(4, Prepare(b"x", b"k", round_, 4), net.now))
    net.queue.clear()
    assert net.replicas[0]._max_round < MAX_ROUND_STEP
    net.propose(0, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 2
    assert net.replicas[0].source.get(b"k").accepted.round > walked[-1]


def test_answers_claiming_a_round_near_2_64_lift_rounds_only_above_a_refused_ballot() -> None:
    """Answers to ballots node 0 never sent lift nothing; a refusal of one it sent lifts
    its rounds to less than CLIMB_BURST_STEPS + 1 steps above that ballot (as far as an
    acceptor climbs at once), and never to the ceiling (its next ballot must fit the
    store's u64, and no acceptor takes a round at or above it)."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    replica = net.replicas[0]
    before = replica._max_round
    top = (1 << 64) - 1
    lie = Promise(b"x", b"k", 1, 1, False, 0, 0, b"", top, 1)
    net.run(0, replica.receive(1, lie, net.now))
    net.run(0, replica.receive(1, Accepted(b"y", b"k", 1, 1, False, top, 1, b""), net.now))
    assert replica._max_round == before
    net.propose(0, b"b", b"k", add(1))
    net.settle()
    assert net.results[b"b"].outcome == 2
    replica.timing = replace(replica.timing, leader=False)
    effects = replica.propose(b"c", b"k", add(1), net.now)
    (prepare,) = {e.message for e in effects if isinstance(e, Send)}
    refusal = Promise(prepare.op_id, b"k", prepare.round, 0, False, 0, 0, b"", top, 1)
    replica.receive(1, refusal, net.now)
    climb = (CLIMB_BURST_STEPS + 1) * MAX_ROUND_STEP
    assert replica._learned[b"k"] == prepare.round + climb - 1
    assert replica._max_round < MAX_ROUND_STEP  # its acceptor's rounds: only what it promised
    replica.receive(1, replace(refusal, round=ROUND_CEILING - 5), net.now)
    assert replica._learned[b"k"] == prepare.round + climb - 1  # not a ballot it sent
    replica._by_op[b"c"].ballot = Ballot(ROUND_CEILING - 5, 0)
    replica.receive(1, replace(refusal, round=ROUND_CEILING - 5), net.now)
    assert replica._learned[b"k"] == ROUND_CEILING - 1
    net.replicas[1]._max_round = ROUND_CEILING - 5  # within a step, but at the ceiling
    effects = net.replicas[1].receive(4, Prepare(b"z", b"k", ROUND_CEILING, 4), net.now)
    assert [e.message.ok for e in effects if isinstance(e, Send)] == [False]


def _beside_a_refuser(net: Net, leader: bool, seconds: int) -> Net:
    """One change committed with node 4 refusing every ballot, then `seconds` of ticks."""
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=leader)
    _refusing_everything(net, 4)
    net.propose(1, b"a", b"k", add(1))
    net.settle()
    assert net.results[b"a"] == Committed(b"a", 1)
    for _ in range(seconds):
        net.now += 1.0
        for i, replica in net.replicas.items():
            if i != 4:
                net.run(i, replica.tick(net.now))
        net.settle()
    return net


@pytest.mark.parametrize("leader", [True, False])
def test_a_laggard_that_refuses_every_repair_is_lifted_once_not_for_ever(leader: bool) -> None:
    """A committed value's repair refused by a laggard's promise sets off one no-op round
    that writes the value above it. A hostile node refuses every ballot: each no-op round
    left it lagging again, and its refusal set off the next, a round every two seconds
    for ever, for each entry it lagged on. The repair made by that no-op round now gives
    the node up when it refuses too."""
    net = _beside_a_refuser(Net(), leader, seconds=300)  # past the repair window
    assert len(net.results) <= 2  # the change and one no-op round
    assert not any(replica.lagging() for replica in net.replicas.values())
    values = {payload_of(net.disk[i][b"k"].value) for i in range(4)}
    assert values == {(1).to_bytes(8, "big")}


@pytest.mark.parametrize("leader", [True, False])
def test_a_node_that_refuses_every_accept_has_a_settled_entry_lifted_a_few_times_not_for_ever(
    leader: bool,
) -> None:
    """The same with settling (an announced entry): each no-op round makes a new value,
    which every node settles afresh, and the refused settling repair set off the next
    lift, a round every five seconds for ever (review s41-A, 121 rounds in ten minutes).
    A node now lifts a key at most once per repair window."""
    net = _beside_a_refuser(Net(announce=True), leader, seconds=600)  # five repair windows
    assert len(net.results) <= 5  # the change and at most one lift by each honest node
    assert not any(net.replicas[i].lagging() or net.replicas[i].unsettled() for i in range(4))
    values = {payload_of(net.disk[i][b"k"].value) for i in range(4)}
    assert values == {(1).to_bytes(8, "big")}


@pytest.mark.parametrize("leader", [True, False])
def test_prepares_for_made_up_entries_cannot_lift_a_node_s_rounds_out_of_reach(
    leader: bool,
) -> None:
    """A hostile peer sends node 1 two Prepares for entries nobody uses, each a step above
    the last round node 1 has promised (so it takes them). Node 1's ballots for every
    entry were one above its highest promise, which is on disk: every honest acceptor
    refused them as inflated, so none of its leaderless rounds committed again, and a
    restart did not help. Its ballots for an entry now follow that entry's own rounds."""
    net = Net()
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=leader)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    target = net.replicas[1]
    for i in range(2):
        inflated = Prepare(b"x%d" % i, b"unused%d" % i, target._max_round + MAX_ROUND_STEP, 4)
        net.run(1, target.receive(4, inflated, net.now))
    net.queue.clear()  # its promises go nowhere
    net.now += DEFAULT_TIMING.deadline  # the leader's hold has lapsed: it prepares
    for i in range(3):
        op = b"op%d" % i
        net.propose(1, op, b"k", add(1))  # through leader 0, or leaderless at node 1
        net.settle()
        assert net.results[op] == Committed(op, i + 2), op
    restarted = Replica(1, range(5), net.rand.randbytes, target.source, target.timing)
    net.replicas[1] = restarted
    net.run(1, restarted.start(net.now, intact=True))
    net.propose(1, b"after", b"k", add(1))
    net.settle()
    assert net.results[b"after"] == Committed(b"after", 5)


def test_made_up_answers_cannot_lift_a_node_s_rounds_out_of_reach() -> None:
    """Two answers a hostile node made up (a refusal claiming a promise near 2^64, to
    ballots never sent) lifted a node's rounds by two steps: every honest acceptor then
    refused its ballots as inflated, and none of its leaderless rounds committed again."""
    net = Net()
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=False)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    top = (1 << 64) - 1
    lies = [
        Promise(b"x", b"k", 1, 4, False, 0, 0, b"", top, 4),
        Accepted(b"y", b"k", 1, 4, False, top, 4, b""),
    ]
    for lie in lies:
        net.run(1, net.replicas[1].receive(4, lie, net.now))
    for i in range(3):
        op = b"op%d" % i
        net.propose(1, op, b"k", add(1))
        net.settle()
        assert net.results[op] == Committed(op, i + 2), op


# ---- the leader's own write, made while its Accept is on the wire -----------------------


def _accept_ballots(effects: list) -> list[tuple[int, int]]:
    return [
        (e.message.round, e.message.node)
        for e in effects
        if isinstance(e, Send) and isinstance(e.message, Accept | Prepare)
    ]


def test_the_leader_s_accept_leaves_before_its_own_write_and_nothing_after_it() -> None:
    """The Accept goes to every peer first; the leader's own acceptance is written next,
    and its Accepted and the commit come only behind that write (the shell sends
    nothing past a write under way)."""
    net = Net(announce=True)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    effects = net.replicas[0].propose(b"b", b"k", add(1), net.now)
    kinds = [
        type(e.message).__name__ if isinstance(e, Send) else f"Persist:{e.kind}"
        for e in effects
        if isinstance(e, Send | Persist)
    ]
    assert kinds[:5] == ["Accept"] * 4 + ["Persist:accept"], kinds
    assert all(kind == "Accepted" for kind in kinds[5:]), kinds
    net.run(0, effects)
    net.settle()
    assert net.results[b"b"].outcome == 2


def test_a_leader_that_crashes_before_its_own_write_never_reuses_the_ballot() -> None:
    """The leader's Accept reaches two peers, then it crashes before its own acceptance
    is on disk. Its store still matches its token (the write never landed), so it comes
    back intact, at once. Its next ballots are above the lost Accept's (the write before
    reserved that ballot), and every node ends on one history: the lost change is
    carried forward, not overwritten at the same ballot."""
    net = Net()
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    disk_before = dict(net.disk[0])
    effects = net.replicas[0].propose(b"b", b"k", add(10), net.now)
    (lost,) = set(_accept_ballots(effects))
    for effect in effects:
        if isinstance(effect, Send) and effect.to in (1, 2):
            net.queue.append((0, effect.to, effect.message.to_bytes()))
    net.down = {0}
    net.settle(0.5)
    net.queue.clear()
    net.disk[0] = disk_before
    net.replicas[0] = Replica(
        0, range(5), net.rand.randbytes, MemoryRecords.of(disk_before.values())
    )
    assert net.replicas[0].start(net.now, intact=True) == []
    net.down = set()
    sent: list = []
    run = net.run

    def watching(node: int, effects: list) -> None:
        if node == 0:
            sent.extend(effects)
        run(node, effects)

    net.run = watching  # type: ignore[method-assign]
    net.propose(0, b"c", b"k", add(100))
    net.settle()
    ballots = _accept_ballots(sent)
    assert ballots and all(ballot > lost for ballot in ballots), (lost, ballots)
    # The change at b either got in or not, but the value builds on it at most once.
    final = {payload_of(net.disk[n][b"k"].value) for n in range(5)}
    assert len(final) == 1
    assert int.from_bytes(final.pop(), "big") in (101, 111)


def test_an_accept_whose_ballot_no_own_write_reserved_waits_for_one() -> None:
    """The leader's own acceptor refused the last value (its check), so its pipelined
    promise of the next ballot was never written here. The next Accept is then promised
    in its own record first, and leaves only behind that write."""
    net = Net()
    net.propose(0, b"one", b"k", put(b"\x01"))
    net.settle()
    _refusing(net, 0, leader=True)
    net.propose(0, b"two", b"k", put(b"\x02"))
    net.settle()
    assert isinstance(net.results[b"two"], Committed)
    held = net.replicas[0].source.get(b"k").promised
    effects = net.replicas[0].propose(b"three", b"k", put(b"\x01"), net.now)
    (ballot,) = set(_accept_ballots(effects))
    assert ballot > (held.round, held.node)
    first = effects[0]
    assert isinstance(first, Persist) and first.kind == "promise"
    assert (first.record.promised_round, first.record.promised_node) == ballot
    net.run(0, effects)
    net.settle()
    assert net.results[b"three"].outcome == b"\x02"


def test_the_leader_path_can_be_turned_off() -> None:
    net = Net()
    for replica in net.replicas.values():
        replica.timing = replace(replica.timing, leader=False)
    sent = _kinds_sent(
        net, lambda: [net.propose(3, f"{i}".encode(), b"k", add(1)) for i in range(2)]
    )
    assert "Forward" not in sent and "Prepare" in sent


def put(value: bytes):
    """Set the value; the outcome is the value it was applied to."""

    def change(old: bytes) -> tuple[bytes, bytes]:
        return value, old

    return change


def _propose_everywhere(
    net: Net,
    op: bytes,
    change,
    *,
    joinable: bool,
    fresh: bool = False,
    nodes: Iterable[int] | None = None,
    key: bytes = b"k",
) -> None:
    """The same change proposed at every node at once (one client request's N copies), or
    at `nodes` only (the relay reached only those)."""
    for node in net.replicas if nodes is None else nodes:
        effects = net.replicas[node].propose(
            op + bytes([node]), key, change, net.now, joinable=joinable, fresh=fresh
        )
        net.run(node, effects)


def test_copies_of_one_change_at_every_node_are_one_round() -> None:
    """Five nodes propose the same change at once: the first copy changes the value, the
    other four leave it as it is and join it once a majority took it (counted from the
    acceptors' own answers), so the fleet writes one round, not five duelling ones."""
    net = Net(announce=True)
    net.propose(0, b"warm", b"k", add(1))
    net.settle()
    sent = _kinds_sent(net, lambda: _propose_everywhere(net, b"x", put(b"X"), joinable=True))
    assert sent.count("Accept") == 4 and "Prepare" not in sent
    results = [net.results[b"x" + bytes([n])] for n in range(5)]
    assert all(isinstance(r, Committed) for r in results)
    assert all(payload_of(net.disk[n][b"k"].value) == b"X" for n in range(5))
    # Not joinable: every copy is its own round.
    net.propose(0, b"warm2", b"k", add(1))
    net.settle()
    sent = _kinds_sent(net, lambda: _propose_everywhere(net, b"y", put(b"Y"), joinable=False))
    assert sent.count("Accept") >= 4 * 5


def test_fresh_copies_join_only_a_value_chosen_after_them() -> None:
    """A repair (a read asking to confirm) must bring its node the newest value and write
    it to a majority: right after a round, a plain copy joins the chosen value with no
    message, a fresh one goes to the leader. Fresh copies at every node at once are still
    one round, not five that duel (review s59: made not joinable at all, a confirm at
    five nodes cost 170-310 messages and leaderless rounds)."""
    net = Net(announce=True)
    net.propose(0, b"a", b"k", put(b"X"))
    net.settle()
    assert (
        _kinds_sent(
            net,
            lambda: net.run(
                2, net.replicas[2].propose(b"b", b"k", put(b"X"), net.now, joinable=True)
            ),
        )
        == []
    )
    fresh = _kinds_sent(
        net,
        lambda: net.run(
            2, net.replicas[2].propose(b"c", b"k", put(b"X"), net.now, joinable=True, fresh=True)
        ),
    )
    assert "Accept" in fresh and net.results[b"c"].outcome == b"X"
    net.now += 2 * DEFAULT_TIMING.round_timeout
    sent = _kinds_sent(
        net, lambda: _propose_everywhere(net, b"x", put(b"X"), joinable=True, fresh=True)
    )
    assert sent.count("Accept") == 4 and "Prepare" not in sent
    assert all(isinstance(net.results[b"x" + bytes([n])], Committed) for n in range(5))


def test_values_not_announced_are_told_only_to_the_asker_and_never_joined() -> None:
    """Without the application's `announce` (the single-seed flow), acceptors answer only
    the leader and the origin, as before, so joinable copies each make their round."""
    net = Net()
    net.propose(0, b"warm", b"k", add(1))
    net.settle()
    sent = _kinds_sent(net, lambda: net.propose(3, b"a", b"k", add(1)))
    # Nodes 1, 2, 4 answer leader and origin; the leader answers node 3, node 3 the leader
    # (each answers itself without the network). Announced, it would be 5 × 4.
    assert sent.count("Accepted") == 3 * 2 + 2
    sent = _kinds_sent(net, lambda: _propose_everywhere(net, b"x", put(b"X"), joinable=True))
    assert sent.count("Accept") >= 4 * 5


def test_joinable_changes_that_change_the_value_are_each_counted() -> None:
    net = Net(announce=True)
    _propose_everywhere(net, b"x", add(1), joinable=True)
    net.settle()
    outcomes = sorted(r.outcome for r in net.results.values() if isinstance(r, Committed))
    assert outcomes == [1, 2, 3, 4, 5]


def test_a_value_only_a_minority_took_is_never_joined() -> None:
    """Nodes 0 and 4 accept a value the others never see: not chosen, so node 4's copy of
    the same change does not join it (it fails with no majority, as it should)."""
    net = Net(announce=True)
    net.propose(0, b"warm", b"k", add(1))  # the leader holds the next ballot's promise
    net.settle()
    net.down = {1, 2, 3}
    net.propose(0, b"a", b"k", put(b"X"))
    net.settle()
    assert payload_of(net.disk[4][b"k"].value) == b"X"
    net.run(4, net.replicas[4].propose(b"b", b"k", put(b"X"), net.now, joinable=True))
    net.settle()
    assert isinstance(net.results[b"a"], Failed) and isinstance(net.results[b"b"], Failed)


def test_a_value_chosen_long_ago_is_not_joined() -> None:
    """A node answers from a chosen value only right after it was chosen: later, its copy
    runs its own round (a node cut off meanwhile would otherwise answer from an old one)."""
    net = Net(announce=True)
    net.propose(0, b"a", b"k", put(b"X"))
    net.settle()
    net.now += 2 * DEFAULT_TIMING.round_timeout
    sent = _kinds_sent(
        net,
        lambda: net.run(3, net.replicas[3].propose(b"b", b"k", put(b"X"), net.now, joinable=True)),
    )
    assert "Forward" in sent and "Accept" in sent
    assert isinstance(net.results[b"b"], Committed)
    # Right after that round, another node's copy joins it without a message.
    sent = _kinds_sent(
        net,
        lambda: net.run(2, net.replicas[2].propose(b"c", b"k", put(b"X"), net.now, joinable=True)),
    )
    assert sent == [] and net.results[b"c"].outcome == b"X"


def _refusing(net: Net, node: int, *, leader: bool) -> list[int]:
    """Give `node` an acceptor check that refuses every value above 1 (as an honest node
    refuses a newer version it cannot verify), and record what is sent to it."""
    old = net.replicas[node]
    refuse = lambda key, payload, held: "cannot check" if payload > b"\x01" else None  # noqa: E731
    timing = replace(DEFAULT_TIMING, leader=leader)
    net.replicas[node] = Replica(
        node, old.nodes, net.rand.randbytes, old.source, timing, check_value=refuse
    )
    net.run(node, net.replicas[node].start(net.now, intact=True))
    for i in net.replicas:
        if i != node:
            net.replicas[i].timing = timing
    sent: list[int] = []
    run = net.run

    def counting(sender: int, effects: list) -> None:
        sent.extend(1 for e in effects if isinstance(e, Send) and e.to == node)
        run(sender, effects)

    net.run = counting  # type: ignore[method-assign]
    return sent


def test_a_node_whose_check_refuses_the_value_is_not_repaired_for_ever() -> None:
    """Seed 6000566: a laggard whose own check refuses the committed value (it cannot
    verify it) answered every repair with a refusal, and every refusal started a no-op
    round: the fleet committed the same value ~15 times a second for ever. A refusal by
    the check (not the promise) is final for that value: a bounded number of messages,
    no new rounds, nothing left lagging; and it does not hold up the commit itself."""
    for leader in (False, True):
        net = Net()
        net.propose(0, b"one", b"k", put(b"\x01"))
        net.settle()
        sent = _refusing(net, 4, leader=leader)
        net.propose(0, b"two", b"k", put(b"\x02"))
        net.settle()
        assert isinstance(net.results[b"two"], Committed)
        before = len(net.results)
        for _ in range(3000):  # 30 s of ticks, many repair intervals
            net.now += 0.01
            for i, replica in net.replicas.items():
                net.run(i, replica.tick(net.now))
            net.settle()
        assert len(net.results) == before  # no no-op rounds were started
        assert len(sent) <= 6, (leader, len(sent))  # the round and one repair, not a storm
        assert all(not r.lagging() for r in net.replicas.values())
        assert payload_of(net.disk[4][b"k"].value) == b"\x01"  # it still refuses the value


def test_a_value_no_majority_can_take_backs_off_and_fails() -> None:
    """When the check of a majority refuses a value, no ballot helps: the proposal backs
    off, retries and fails at its deadline, and nothing is committed."""
    net = Net()
    net.propose(0, b"one", b"k", put(b"\x01"))
    net.settle()
    for node in (2, 3, 4):
        _refusing(net, node, leader=False)
    net.propose(0, b"two", b"k", put(b"\x02"))
    net.settle(max_time=10.0)
    assert isinstance(net.results[b"two"], Failed)
    assert all(payload_of(net.disk[i][b"k"].value) == b"\x01" for i in (2, 3, 4))


# ---- hostile peers' answers the node cannot build on ------------------------------------


def _promising(net: Net, node: int, value: bytes) -> None:
    """Node `node` turns hostile: it answers every Prepare at once with a promise that
    reports `value` as accepted just below the Prepare's ballot (so it is the newest)."""

    def receive(sender: int, message: Message, now: float) -> list:
        if isinstance(message, Prepare):
            below = (message.round - 1, node)
            lie = Promise(
                message.op_id, message.key, message.round, message.node, True, *below, value,
                message.round, message.node,
            )  # fmt: skip
            return [Send(sender, lie)]
        return []

    net.replicas[node].receive = receive  # type: ignore[method-assign]


def _eight_bytes(value: bytes) -> tuple[bytes, int]:
    """An application's change that reads only its own format (as the firmware's does)."""
    if len(value) not in (0, 8):
        raise InvalidInput("not a counter")
    new = int.from_bytes(value or bytes(8), "big") + 1
    return new.to_bytes(8, "big"), new


@pytest.mark.parametrize("leader", [True, False])
@pytest.mark.parametrize(
    "value",
    [b"\xffnot a replicated value", ReplicatedValue([], b"not eight bytes").to_bytes()],
    ids=["undecodable", "unreadable-payload"],
)
def test_a_promise_of_a_value_nobody_can_build_on_is_dropped_and_the_change_commits(
    leader: bool, value: bytes
) -> None:
    """Two hostile nodes (1 and 2) promise every ballot reporting a value that does not decode, or
    whose payload the change cannot read. No acceptor takes such a value (each checks
    it), so only a hostile peer reports one. The proposer decoded it while handling the
    Promise and the InvalidInput escaped its step: in the node, the stream of whichever
    peer's message came next was closed (an honest one's too), and every round of the
    entry stalled there. Now those promises count as lost: the round goes on with the
    honest nodes' promises and commits."""
    net = Net()
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=leader)
    net.propose(0, b"a", b"k", _eight_bytes)
    net.settle()
    for node in (1, 2):  # asked first, so theirs are among the first promises
        _promising(net, node, value)
    net.now += DEFAULT_TIMING.deadline  # the leader's promises have lapsed: it prepares
    net.propose(3, b"b", b"k", _eight_bytes)  # through leader 0, or leaderless at node 3
    net.settle()
    assert net.results[b"b"].outcome == 2
    assert {payload_of(net.disk[i][b"k"].value) for i in (0, 3, 4)} == {(2).to_bytes(8, "big")}


def _refusing_everything(net: Net, node: int, claim: int | None = None) -> None:
    """Node `node` turns hostile: it refuses every Prepare and Accept at once, claiming a
    promise just above (or at round `claim`), and its answers overtake the honest ones
    (it has no write to wait for)."""

    def receive(sender: int, message: Message, now: float) -> list:
        above = (message.round + 1 if claim is None else claim, node)
        if isinstance(message, Prepare):
            refusal: Message = Promise(
                message.op_id, message.key, message.round, message.node, False, 0, 0, b"", *above
            )
            return [Send(sender, refusal)]
        if isinstance(message, Accept):
            refusal = Accepted(
                message.op_id, message.key, message.round, message.node, False, *above, b""
            )
            return [Send(sender, refusal)]
        return []

    net.replicas[node].receive = receive  # type: ignore[method-assign]
    run = net.run

    def overtaking(sender: int, effects: list) -> None:
        for effect in effects:
            if sender == node and isinstance(effect, Send):
                net.queue.appendleft((sender, effect.to, effect.message.to_bytes()))
            else:
                run(sender, [effect])

    net.run = overtaking  # type: ignore[method-assign]


@pytest.mark.parametrize("claim", [None, (1 << 64) - 1], ids=["just-above", "near-2-64"])
@pytest.mark.parametrize("leader", [True, False])
def test_one_node_that_refuses_every_ballot_cannot_stall_the_fleet(
    leader: bool, claim: int | None
) -> None:
    """A proposer backed off at the first refusal, and a leader dropped its hold: one
    hostile node out of five that refused every Prepare and Accept at once made every
    change fail ("no majority") while the four others promised and accepted. A refusal
    now counts only once no majority is left without the refusers. Claiming a promise
    near 2^64 in each refusal lifted the proposer's rounds a step per answer, past what
    honest acceptors take (`_learn_round`)."""
    net = Net()
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=leader)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    _refusing_everything(net, 4, claim)
    for i in range(6):
        op = b"op%d" % i
        net.propose(1, op, b"k", add(1))  # through leader 0, or leaderless at node 1
        net.settle()
        assert net.results[op] == Committed(op, i + 2), op


def test_forwards_for_more_entries_than_the_leader_holds_at_once_go_leaderless() -> None:
    """A peer forwards changes to LEADER_ENTRIES + 2 entries in one go (one frame, so no
    promise comes back in between): every hold has a Prepare in flight, and none may be
    forgotten. The entry that went in last was forgotten at once and the KeyError
    escaped the leader's step; now the changes past the limit are sent back at once to
    go leaderless, and the table stays within it. Once holds are ready again, new
    entries take their place."""
    leader = Replica(0, range(5), random.Random(1).randbytes)
    leader.start(0.0, intact=True)
    value = ReplicatedValue([], b"v").to_bytes()
    answers: dict[bytes, Message] = {}
    for i in range(LEADER_ENTRIES + 2):
        effects = leader.receive(4, Forward(b"op%d" % i, b"k%d" % i, 0, 0, value), 0.0)
        answers.update({e.message.key: e.message for e in effects if isinstance(e, Send)})
    assert len(leader._leads) == LEADER_ENTRIES
    assert all(isinstance(answers[b"k%d" % i], Prepare) for i in range(LEADER_ENTRIES))
    for i in (LEADER_ENTRIES, LEADER_ENTRIES + 1):
        assert answers[b"k%d" % i] == ForwardAnswer(b"op%d" % i, b"k%d" % i, False, 0, 0, b"")
    # Nodes 1 and 2 promise the first entry, reporting a newer value than the change was
    # built on: the change goes back to node 4 to be built again, the hold is ready with
    # nothing in flight, and makes room.
    first = answers[b"k0"]
    ballot = (first.round, 0)
    for node in (1, 2):
        promise = Promise(first.op_id, b"k0", *ballot, True, 0, 1, value, *ballot)
        leader.receive(node, promise, 0.0)
    effects = leader.receive(4, Forward(b"late", b"late", 0, 0, value), 0.0)
    assert [type(e.message) for e in effects if isinstance(e, Send)] == [Prepare] * 4
    assert b"late" in leader._leads and b"k0" not in leader._leads
    leader.tick(DEFAULT_TIMING.round_timeout)
    assert not leader._leads  # the rest got nowhere: sent back to go leaderless


def test_a_flood_of_forwards_for_one_entry_keeps_one_per_node_waiting() -> None:
    """While the leader's Prepare for an entry is in flight, a peer forwards 10,000
    changes to it: each waited in the entry's queue (values up to 256 KiB each). An
    honest node has one change per entry in flight, so the leader keeps the newest
    Forward of each node; the other nodes' changes still get through."""
    leader = Replica(0, range(5), random.Random(1).randbytes)
    leader.start(0.0, intact=True)
    value = ReplicatedValue([], b"v").to_bytes()
    (prepare, *_) = [
        e.message
        for e in leader.receive(3, Forward(b"honest", b"k", 0, 0, value), 0.0)
        if isinstance(e, Send)
    ]
    for i in range(10_000):
        leader.receive(4, Forward(b"op%d" % i, b"k", 0, 0, value), 0.0)
    assert [(origin, f.op_id) for origin, f in leader._leads[b"k"].queue] == [
        (3, b"honest"),
        (4, b"op9999"),
    ]
    accepts: list[Accept] = []
    for node in (1, 2):
        promise = Promise(prepare.op_id, b"k", prepare.round, 0, True, 0, 0, b"", prepare.round, 0)
        effects = leader.receive(node, promise, 0.0)
        accepts += [e.message for e in effects if isinstance(e, Send)]
    sent = {(a.op_id, a.origin) for a in accepts if isinstance(a, Accept)}
    assert sent == {(b"honest", 3)}  # the first in the queue: the next waits for its commit


def test_a_joinable_change_that_cannot_build_on_the_chosen_value_fails_without_raising() -> None:
    """The chosen value is one the change cannot go past (as the firmware's evaluate over
    a forged tombstone whose attempt counter is at 2^64 - 1: the next attempt does not
    fit). Checking whether the change joined it ran the change outside any guard, and its
    InvalidInput escaped `propose` (and the step of every Accepted that made a queued
    change look again). Now the change is not joined; its rounds cannot build on the
    value either, and it fails at its deadline, as with no majority."""
    net = Net(announce=True)
    net.propose(0, b"a", b"k", put(b"abc"))
    net.settle()
    net.run(0, net.replicas[0].propose(b"b", b"k", _eight_bytes, net.now, joinable=True))
    net.settle()
    assert isinstance(net.results[b"b"], Failed)
    assert {payload_of(net.disk[i][b"k"].value) for i in range(5)} == {b"abc"}


def test_a_flood_of_forwards_cannot_make_the_leader_s_tick_raise() -> None:
    """The same flood, timed: node 4 has the leader take a value alone (an Accept only it
    gets), then forwards LEADER_ENTRIES changes to new entries just before the leader
    settles that value with a no-op round of its own. The round is led here, for an entry
    whose hold the flood pushed out: it was forgotten at once, and the KeyError escaped
    `tick`, which in the node ends the ticking task for good (no more timeouts, repairs,
    catch-up or settling). Now the round goes leaderless."""
    leader = Replica(0, range(5), random.Random(1).randbytes, announce=lambda key, payload: True)
    leader.start(0.0, intact=True)
    value = ReplicatedValue([], b"v").to_bytes()
    leader.receive(4, Accept(b"alone", b"lonely", 1, 4, value, 4, False), 0.0)
    due = DEFAULT_TIMING.settle_after
    for i in range(LEADER_ENTRIES):
        leader.receive(4, Forward(b"op%d" % i, b"k%d" % i, 0, 0, value), due - 0.01)
    effects = leader.tick(due)
    prepares = [e.message for e in effects if isinstance(e, Send) and e.message.key == b"lonely"]
    assert prepares and all(isinstance(m, Prepare) for m in prepares)
    assert b"lonely" not in leader._leads  # its own leaderless round, not the leader's


def test_a_result_comes_after_the_write_of_the_next_change_begun_in_its_step() -> None:
    """Sim seed 10330086: when a change commits, the leader begins the next one queued on
    the same entry in the same step, and its own acceptor takes that value at once (the
    application's hook sees it then). The first change's result came before that write,
    so what it set off (a node's evaluation, which rests on its own acceptance of the
    attempt) ran before the acceptance was durable. The result now comes after it."""
    net = Net(announce=True)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    steps: list[list] = []
    run = net.run

    def recording(node: int, effects: list) -> None:
        if node == 0:
            steps.append(list(effects))
        run(node, effects)

    net.run = recording  # type: ignore[method-assign]
    net.propose(0, b"b", b"k", add(1))
    net.propose(0, b"c", b"k", add(1))  # queued behind b
    net.settle()
    (step,) = [s for s in steps if Committed(b"b", 2) in s]
    writes = [i for i, e in enumerate(step) if isinstance(e, Persist)]
    assert writes, "c's round did not begin in the step b committed in"
    assert step.index(Committed(b"b", 2)) > max(writes), step
    assert net.results[b"c"] == Committed(b"c", 3)


# ---- catching up on entries whose rounds a hostile node walked up -----------------------


@pytest.mark.parametrize("leader", [True, False])
def test_a_wiped_node_keeps_an_acceptance_whose_round_a_hostile_node_walked_up(
    leader: bool,
) -> None:
    """Node 4 (hostile) walks entry k's promise at nodes 0-2 two steps up, each Prepare
    within a step of what that acceptor had seen, so they take it. Node 0 then commits +1
    there with nodes 1 and 2 (3 and 4 cut off), and crashes (its repair is lost). Node 1
    loses its disk and catches up from every peer. Its catch-up skipped every record
    whose round was more than a step above the highest it had seen, which after a wipe is
    nothing: it became ready without the acceptance it gave, and with nodes 3 and 4 it
    formed a majority that chose +100 on an empty value, so the committed +1 was lost
    (two values chosen for one entry; one hostile node and one wiped disk: a minority)."""
    net = Net()
    for node in net.replicas.values():
        node.timing = replace(node.timing, leader=leader)
    for node in (0, 1, 2):
        for round_ in (MAX_ROUND_STEP - 10, 2 * MAX_ROUND_STEP - 20):
            net.run(node, net.replicas[node].receive(4, Prepare(b"x", b"k", round_, 4), net.now))
    net.queue.clear()  # its promises go nowhere
    net.down = {3, 4}
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    assert net.results[b"a"] == Committed(b"a", 1)
    assert net.disk[1][b"k"].accepted.round > 2 * MAX_ROUND_STEP - 20
    timing = net.replicas[0].timing
    net.replicas[0] = Replica(0, range(5), net.rand.randbytes, net.replicas[0].source, timing)
    net.run(0, net.replicas[0].start(net.now, intact=True))  # its repair was in memory
    net.down = set()
    net.replicas[1] = Replica(1, range(5), net.rand.randbytes, MemoryRecords(), timing)
    net.disk[1] = {}
    net.run(1, net.replicas[1].start(net.now))
    net.settle()
    assert net.replicas[1].ready
    net.down = {0, 2}
    net.propose(3, b"b", b"k", add(100))
    net.settle()
    assert net.results[b"b"] == Committed(b"b", 101)  # built on the committed +1


# ---- a hostile node's Accept under another node's ballot --------------------------------


def _sent(effects: list, to: int, kind: type[Message]) -> list:
    return [
        e.message
        for e in effects
        if isinstance(e, Send) and e.to == to and isinstance(e.message, kind)
    ]


@pytest.mark.parametrize("forged_first", [False, True], ids=["forged-after", "forged-before"])
def test_a_forged_accept_under_an_honest_ballot_never_swaps_a_value_or_counts_for_it(
    forged_first: bool,
) -> None:
    """Node 0 runs a leaderless round for k with acceptor 1; node 2 (hostile) gets the
    same Accept and sends node 1 another value under node 0's ballot and op id, with
    node 0 as origin. An acceptor took any value at a ballot equal to its promise, so a
    value it had already accepted at that ballot was replaced: node 0 committed +1 on
    nodes {0, 1} while node 1 held the forged value, on which the next round from node 1
    and others built (the commit lost, with two honest acceptors in its majority). And
    node 0 counted every Accepted for its ballot, whatever value it named: with the
    forged Accept first, it committed on node 1's word that it took the forged value.
    Then an acceptor kept the one value it took at a ballot, which still let the forgery
    in first. An acceptor now takes a ballot only from its own node (review s50b, S1):
    the forgery is never taken nor answered, sent before or after the real Accept."""
    timing = replace(DEFAULT_TIMING, leader=False)
    nodes = {i: Replica(i, range(3), random.Random(i).randbytes, timing=timing) for i in (0, 1)}
    for replica in nodes.values():
        replica.start(0.0, intact=True)
    effects = nodes[0].propose(b"op", b"k", add(1), 0.0)
    (prepare,) = _sent(effects, 1, Prepare)
    (promise,) = _sent(nodes[1].receive(0, prepare, 0.0), 0, Promise)
    (accept,) = _sent(nodes[0].receive(1, promise, 0.0), 1, Accept)
    forged = replace(accept, value=ReplicatedValue([], (99).to_bytes(8, "big")).to_bytes())
    order = [(2, forged), (0, accept)] if forged_first else [(0, accept), (2, forged)]
    answers = []
    for sender, message in order:
        answers += _sent(nodes[1].receive(sender, message, 0.0), 0, Accepted)
    results = [e for a in answers for e in nodes[0].receive(1, a, 0.0) if isinstance(e, Committed)]
    held = nodes[1].source.get(b"k")
    assert held is not None and held.value == accept.value
    assert results == [Committed(b"op", 1)]
    assert [a.ok for a in answers] == [True]  # the forgery got no answer at all


# ---- what one made-up value may make an honest node store --------------------------------


def _padded_values() -> dict[str, bytes]:
    """Values an honest proposer never makes, padded through their list of recent ops:
    one op with a long id, and more ops than a value keeps."""
    payload = b"\x01"
    many = [AppliedOp(b"%016d" % i, 1) for i in range(RECENT_OPS + 1)]
    return {
        "long-op-id": ReplicatedValue([AppliedOp(b"x" * 200_000, 1)], payload).to_bytes(),
        "too-many-ops": ReplicatedValue(many, payload).to_bytes(),
    }


@pytest.mark.parametrize("kind", ["long-op-id", "too-many-ops"])
def test_a_value_padded_through_its_recent_ops_is_never_stored(kind: str) -> None:
    """A value's list of recent op ids is the replica's own bookkeeping, which no
    acceptor check (the firmware's sees the payload alone) looked at: a hostile peer's
    Accept or catch-up copy of a made-up entry, with one op id of 200 KB (any length up to
    `MAX_VALUE_BYTES`) or thousands of ops, was stored as it came, on every honest node,
    so each of its messages cost every node a row of up to 256 KB of disk. An honest
    value holds at most `RECENT_OPS` ops with 16-byte ids; any other is dropped as no
    honest node's, as an Accept, a Promise, a Forward's answer or a catch-up copy."""
    value = _padded_values()[kind]
    acceptor = Replica(0, range(3), random.Random(1).randbytes)
    acceptor.start(0.0, intact=True)
    accept = Accept(b"op", b"made-up", 1, 2, value, 2, False)
    assert acceptor.receive(2, accept, 0.0) == []
    assert acceptor.source.get(b"made-up") is None
    # Nor as a copy while catching up.
    catching = Replica(0, range(3), random.Random(1).randbytes, MemoryRecords())
    asks = {e.to: e.message for e in catching.start(0.0) if isinstance(e, Send)}
    page = SyncResponse(asks[2].sync_id, True, [AcceptorRecord(b"made-up", 1, 2, 1, 2, value)])
    assert catching.receive(2, page, 0.0) == []
    assert catching.source.get(b"made-up") is None
    # Nor as the newest value a Promise reports: the proposer builds on the honest one.
    net = Net(3)
    net.propose(0, b"a", b"k", add(1))
    net.settle()
    proposer = net.replicas[0]
    effects = proposer.propose(b"b", b"k", add(1), net.now)
    (prepare,) = [e.message for e in effects if isinstance(e, Send) and e.to == 2]
    ballot = (prepare.round, prepare.node)
    forged = Promise(prepare.op_id, b"k", *ballot, True, prepare.round - 1, 2, value, *ballot)
    assert proposer.receive(2, forged, net.now) == []


def _attempts(key: bytes, payload: bytes, held: bytes) -> str | None:
    """The firmware's rule for two live values of one version and M, in small: neither
    the attempt counter nor the client's clock goes down; which B it is, is not compared."""
    if not held:
        return None
    new, old = (dict(kv.split("=") for kv in p.decode().split(";")) for p in (payload, held))
    if int(new["a"]) < int(old["a"]) or int(new["c"]) < int(old["c"]):
        return "went down"
    return None


def test_a_catching_up_node_keeps_the_chosen_value_not_a_sibling_the_check_lets_follow() -> None:
    """Review s40-D: preferring, of two copies, the value the acceptor's check lets follow
    the other (tried in session 40 against a hostile peer's stale copies) let a rolled-back
    node hold an unchosen sibling at the chosen value's ballot. Attempt X (a later client
    clock) reached node 3 alone; attempt Y was chosen by nodes 0-2 at a higher ballot; the
    check lets X follow Y, and once nodes 1 and 2 were cut off, nodes 0, 3 and 4 committed
    the next attempt on X: the chosen Y was lost. Copies are merged by ballot."""
    net = Net(5, seed=3)
    for i in range(5):
        net.replicas[i] = Replica(
            i, range(5), net.rand.randbytes, MemoryRecords(), check_value=_attempts
        )
        net.run(i, net.replicas[i].start(net.now))
    net.settle()
    net.propose(0, b"op-c", b"k", lambda value: (b"a=1;c=100;h=C", None))
    net.settle()
    rolled_back = net.replicas[0].source.get(b"k")
    assert rolled_back is not None
    top = max(r.source.get(b"k").promised.round for r in net.replicas.values())  # type: ignore[union-attr]
    x, y = _value(b"a=2;c=300;h=X"), _value(b"a=2;c=200;h=Y")
    net.replicas[3].receive(4, Prepare(b"op-x", b"k", top + 1, 4), net.now)
    net.replicas[3].receive(4, Accept(b"op-x", b"k", top + 1, 4, x, 4, False), net.now)
    for acceptor in (0, 1, 2):  # Y chosen at a higher ballot
        net.replicas[acceptor].receive(1, Prepare(b"op-y", b"k", top + 2, 1), net.now)
        net.replicas[acceptor].receive(1, Accept(b"op-y", b"k", top + 2, 1, y, 1, False), net.now)
    net.queue.clear()
    net.replicas[0] = Replica(
        0, range(5), net.rand.randbytes, MemoryRecords.of([rolled_back]), check_value=_attempts
    )
    net.run(0, net.replicas[0].start(net.now))  # rolled back to before Y: catches up
    net.settle()
    assert net.replicas[0].ready and net.replicas[0].held_payload(b"k") == b"a=2;c=200;h=Y"
    net.down = {1, 2}

    def next_attempt(value: bytes) -> tuple[bytes, None]:
        old = dict(kv.split("=") for kv in value.decode().split(";"))
        return f"a={int(old['a']) + 1};c={int(old['c']) + 1};h=Z".encode(), None

    net.propose(4, b"op-z", b"k", next_attempt)
    net.settle(30.0)
    assert net.replicas[4].held_payload(b"k") == b"a=3;c=201;h=Z"  # built on Y
    assert net.replicas[0].held_payload(b"k") == b"a=3;c=201;h=Z"
