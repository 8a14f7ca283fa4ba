"""The node's group commit and peer frames: nothing that follows a persist leaves the node
before the persist is durable, not even an effect from a later batch, and everything
queued for a peer in one turn of the event loop leaves as one frame."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.crypto.seal import Kem, NodePrivateKey, ResponseKey
from backupvault.errors import InvalidInput
from backupvault.fleet.channel import PeerChannel
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord, NotReady, Prepare
from backupvault.fleet.records import Mark
from backupvault.fleet.replica import Committed, Effect, Failed, Persist, Send
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import (
    EXHAUSTED_GRACE_SECONDS,
    Answer,
    FleetShape,
    ShareWrite,
    ThresholdRead,
    ThresholdUpdate,
    error,
)
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, ThresholdState
from backupvault.invariants import BrokenInvariant
from backupvault.node.peers import join_frame, split_frame
from backupvault.node.service import NodeService
from backupvault.node.store import (
    SHARE_PREFIX,
    NodeStore,
    StoreCorrupted,
    StoreRecords,
    share_record,
)
from backupvault.protocol import ErrorCode, ErrorResponse, Op
from backupvault.tokens import TokenVerifier, fleet_audience

FLEET_ID = b"fleet"
NODE_KEY = NodeKey(0, NodePrivateKey.generate(Kem.X25519), Ed25519PrivateKey.generate())
ACCOUNTS = TokenVerifier(
    Ed25519PrivateKey.generate().public_key(), "issuer", fleet_audience(FLEET_ID)
)
IDENTITIES = {i: X25519PrivateKey.generate() for i in range(3)}
PUBLIC = {i: k.public_key().public_bytes_raw() for i, k in IDENTITIES.items()}


def _channel(node: int) -> PeerChannel:
    private = IDENTITIES[node].private_bytes_raw()
    return PeerChannel(node, private, PUBLIC, FLEET_ID, os.urandom)


class SlowStore(NodeStore):
    """A store whose writes block until the test lets them through: all of them once
    `release` is set, or one per permit given to `permits` when that is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, 0, b"k" * 32)
        self.release = threading.Event()
        self.permits: threading.Semaphore | None = None
        self.saved: list[list[bytes]] = []

    def save(
        self,
        records: Iterable[AcceptorRecord],
        marks: dict[int, Mark] | None = None,
        *,
        caught_up: bool = False,
    ) -> None:
        if self.permits is not None:
            assert self.permits.acquire(timeout=10)
        else:
            self.release.wait(10)
        records = list(records)
        super().save(records, marks, caught_up=caught_up)
        self.saved.append([r.key for r in records])


def _service(tmp_path: Path) -> tuple[NodeService, SlowStore, list[tuple[int, list[bytes]]]]:
    store = SlowStore(tmp_path / "store.sqlite")
    addresses = {i: ("127.0.0.1", 1) for i in range(3)}
    firmware = VaultFirmware(FLEET_ID, NODE_KEY, ACCOUNTS, FleetShape(0, 3, 2), store.get_share)
    # Every write in the thread, as for a slow disk: the tests hold writes back.
    service = NodeService(0, addresses, firmware, _channel(0), store, inline_write_seconds=0)
    posted: list[tuple[int, list[bytes]]] = []

    def send_frame(to: int, envelopes: list[bytes]) -> None:
        posted.append((to, envelopes))

    service._send_frame = send_frame  # type: ignore[method-assign]
    return service, store, posted


def _opened(envelopes: list[bytes], at: int) -> list[bytes]:
    channel = _channel(at)
    return [channel.open(e, PEER_MESSAGES)[1].op_id for e in envelopes]  # type: ignore[attr-defined]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


def test_sends_wait_for_the_persist_before_them_even_from_a_later_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store, posted = _service(tmp_path)
        record = AcceptorRecord(b"entry", 1, 0)
        service._execute([Send(1, NotReady(b"before"))])  # nothing to wait for: goes at once
        service._execute([Persist(record), Send(1, NotReady(b"after-persist"))])
        service._execute([Send(2, NotReady(b"later-batch"))])  # no persist of its own
        await _turns()
        assert [_opened(f, 1) for u, f in posted] == [[b"before"]]
        store.release.set()
        for _ in range(200):
            if len(posted) == 3:
                break
            await asyncio.sleep(0.01)
        assert store.saved == [[b"entry"]]
        assert _opened(posted[1][1], 1) == [b"after-persist"]
        assert _opened(posted[2][1], 2) == [b"later-batch"]
        assert service.metrics["group_commits"] == 1

    asyncio.run(scenario())


def test_what_a_later_batch_sends_before_its_first_persist_leaves_before_its_write(
    tmp_path: Path,
) -> None:
    """A leader's Accept comes before its own acceptance's write (replica._send_accept).
    Queued behind another write, it leaves as soon as that write is durable, not after
    its own batch's write; what follows that persist still waits for it."""

    async def scenario() -> None:
        service, store, posted = _service(tmp_path)
        store.permits = threading.Semaphore(0)
        service._execute([Persist(AcceptorRecord(b"a", 1, 0))])
        await _turns()  # the first write is under way (gated)
        service._execute(
            [
                Send(1, NotReady(b"accept")),
                Persist(AcceptorRecord(b"b", 2, 0)),
                Send(1, NotReady(b"accepted")),
            ]
        )
        await _turns()
        assert posted == []  # behind the first write
        store.permits.release()  # the first write lands; the second is gated
        await _until(lambda: len(posted) == 1, "the Accept did not leave")
        assert _opened(posted[0][1], 1) == [b"accept"]
        assert store.saved == [[b"a"]]
        await _turns()
        assert len(posted) == 1  # "accepted" waits for its own write
        store.permits.release()
        await _until(lambda: len(posted) == 2, "the Accepted did not leave")
        assert _opened(posted[1][1], 1) == [b"accepted"]
        assert store.saved == [[b"a"], [b"b"]]

    asyncio.run(scenario())


def test_persists_queued_during_a_write_share_the_next_transaction(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        service._execute([Persist(AcceptorRecord(b"a", 1, 0))])
        await _turns()  # the first write is under way (blocked)
        for key in (b"b", b"c", b"b"):
            service._execute([Persist(AcceptorRecord(key, 2, 0))])
        store.release.set()
        for _ in range(200):
            if not service._committing:
                break
            await asyncio.sleep(0.01)
        assert store.saved == [[b"a"], [b"b", b"c"]]  # two transactions, b written once

    asyncio.run(scenario())


class TimedStore(NodeStore):
    """A store that records which thread made each write, and takes 0.3 s over the writes
    `slow` names (by their order, from 0)."""

    def __init__(self, path: Path, slow: set[int]) -> None:
        super().__init__(path, 0, b"k" * 32)
        self.slow = slow
        self.threads: list[int] = []

    def save(
        self,
        records: Iterable[AcceptorRecord],
        marks: dict[int, Mark] | None = None,
        *,
        caught_up: bool = False,
    ) -> None:
        if len(self.threads) in self.slow:
            time.sleep(0.3)
        self.threads.append(threading.get_ident())
        super().save(records, marks, caught_up=caught_up)


def test_quick_writes_run_on_the_loop_and_slow_ones_in_a_thread(tmp_path: Path) -> None:
    """The first write measures the disk in the thread; quick ones then run on the event
    loop (the hand-off costs more than they do). Once the last RECENT_WRITES (4) writes
    were all slow, the next goes to the thread, and after a quick one back to the loop.
    Durability before sending holds either way: each Send leaves after its write."""

    async def scenario() -> None:
        store = TimedStore(tmp_path / "store.sqlite", slow={3, 4, 5, 6})
        addresses = {i: ("127.0.0.1", 1) for i in range(3)}
        firmware = VaultFirmware(FLEET_ID, NODE_KEY, ACCOUNTS, FleetShape(0, 3, 2), store.get_share)
        # A threshold far above this disk's writes and below the slow ones.
        service = NodeService(0, addresses, firmware, _channel(0), store, inline_write_seconds=0.2)
        posted: list[int] = []
        service._send_frame = lambda to, envelopes: posted.append(len(store.threads))  # type: ignore[method-assign]
        for i in range(9):
            service._execute(
                [Persist(AcceptorRecord(b"k%d" % i, 1, 0)), Send(1, NotReady(b"%d" % i))]
            )
            await _until(lambda n=i + 1: not service._committing and len(posted) == n, "no send")
            assert posted[i] == i + 1  # sent after its own write
        loop = threading.get_ident()
        on_loop = [thread == loop for thread in store.threads]
        assert on_loop == [False, True, True, True, True, True, True, False, True]
        store.close()

    asyncio.run(scenario())


def test_messages_for_a_peer_in_one_turn_leave_as_one_frame(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, _, posted = _service(tmp_path)
        for i in range(5):
            service._execute([Send(1, NotReady(bytes([i]))), Send(2, NotReady(bytes([i])))])
        await _turns()
        frames = {to: _opened(envelopes, to) for to, envelopes in posted}
        assert len(posted) == 2
        assert frames == {n: [bytes([i]) for i in range(5)] for n in (1, 2)}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "frame",
    [b"\x00\x00\x00", b"\x00\x00\x00\x05abc", b"\x00\x00\x00\x00", b"\x00\x00\x00\x01a\x00"],
)
def test_a_malformed_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(InvalidInput):
        split_frame(frame)


def test_frames_round_trip() -> None:
    envelopes = [b"a", b"bc" * 300, os.urandom(70000)]
    assert split_frame(join_frame(envelopes)) == envelopes
    assert split_frame(b"") == []


def test_a_failed_write_stops_the_node_and_sends_nothing_that_depended_on_it(
    tmp_path: Path,
) -> None:
    class BrokenStore(SlowStore):
        def save(
            self,
            records: Iterable[AcceptorRecord],
            marks: dict[int, Mark] | None = None,
            *,
            caught_up: bool = False,
        ) -> None:
            raise OSError("disk full")

    async def scenario() -> None:
        service, _, posted = _service(tmp_path)
        service._store = BrokenStore(tmp_path / "broken.sqlite")
        service._execute([Persist(AcceptorRecord(b"a", 1, 0)), Send(1, NotReady(b"x"))])
        for _ in range(200):
            if not service._committing:
                break
            await asyncio.sleep(0.01)
        service._execute([Send(1, NotReady(b"y"))])
        await _turns()
        assert posted == []
        answer = await service.client_request(Op.MANIFEST, "acct", "entry", b"")
        assert (answer.status, answer.error) == (503, "node_not_ready")

    asyncio.run(scenario())


def test_the_token_counts_each_write_and_sends_wait_for_both(tmp_path: Path) -> None:
    counted: list[int] = []
    release = threading.Event()

    def record(count: int) -> None:
        release.wait(10)
        counted.append(count)

    async def scenario() -> None:
        service, store, posted = _service(tmp_path)
        service._record_counter = record
        store.release.set()  # the store is quick; the token is slow
        service._execute([Persist(AcceptorRecord(b"a", 1, 0)), Send(1, NotReady(b"x"))])
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert store.saved == [[b"a"]] and posted == []  # stored, but not yet counted
        release.set()
        for _ in range(200):
            if posted:
                break
            await asyncio.sleep(0.01)
        assert counted == [store.counter] == [1]
        assert len(posted) == 1

    asyncio.run(scenario())


def test_the_token_counts_a_write_only_after_the_store_has_made_it(tmp_path: Path) -> None:
    """Store first, then token: a crash in between leaves the store one ahead (intact at
    the next start), never the token ahead (which would look like a rollback)."""
    counted: list[tuple[int, int]] = []

    async def scenario() -> None:
        service, store, posted = _service(tmp_path)
        service._record_counter = lambda count: counted.append((count, store.counter))
        service._execute([Persist(AcceptorRecord(b"a", 1, 0)), Send(1, NotReady(b"x"))])
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert counted == [] and posted == []  # the store's write is held: nothing counted
        store.release.set()
        for _ in range(200):
            if posted:
                break
            await asyncio.sleep(0.01)
        assert counted == [(1, 1)]  # counted the write the store had made, once it had
        assert len(posted) == 1

    asyncio.run(scenario())


class FakeSealer:
    def __init__(self, recorded: int | None) -> None:
        self.recorded = recorded

    def store_counter(self) -> int | None:
        return self.recorded

    def advance_store_counter(self, value: int) -> None:
        assert self.recorded is None or value >= self.recorded
        self.recorded = value


@pytest.mark.parametrize(
    ("writes", "recorded", "intact"),
    [(3, 3, True), (3, 2, True), (3, 4, False), (3, 9, False), (0, 5, False), (3, None, False)],
)
def test_a_store_is_intact_only_if_the_token_has_not_counted_more_writes(
    tmp_path: Path, writes: int, recorded: int | None, intact: bool
) -> None:
    from backupvault.node.main import store_is_intact

    store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    for i in range(writes):
        store.save([AcceptorRecord(b"a", i + 1, 0)])
    sealer = FakeSealer(recorded)
    assert store_is_intact(store, sealer) is intact  # type: ignore[arg-type]
    assert sealer.recorded == store.counter >= (recorded or 0)  # the two agree again


@pytest.mark.parametrize(
    ("writes", "recorded", "start"),
    [
        (0, None, "first_start"),  # a new node: an empty store, no counter yet
        (3, 3, "intact"),
        (3, 2, "intact"),  # its last write landed, the token's not
        (3, 4, "rollback_detected"),
        (0, 5, "rollback_detected"),  # wiped
        (3, None, "uncounted_history"),  # a history the token never counted
    ],
)
def test_the_start_says_first_start_intact_or_rollback_for_operators(
    tmp_path: Path, writes: int, recorded: int | None, start: str
) -> None:
    """Metrics said `intact_start: false` on a node's very first start, as after a
    rollback: an operator could not tell a new node from a rolled-back disk."""
    from backupvault.node.main import store_start

    store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    for i in range(writes):
        store.save([AcceptorRecord(b"a", i + 1, 0)])
    assert store_start(store, FakeSealer(recorded)) == start  # type: ignore[arg-type]
    store.close()
    if start == "first_start":  # stopped before it caught up: that is not a first start
        store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
        again = store_start(store, FakeSealer(store.counter))  # type: ignore[arg-type]
        assert again == "catch_up_unfinished"


def test_a_node_stopped_during_its_catch_up_catches_up_again_at_its_next_start(
    tmp_path: Path,
) -> None:
    """Sim seeds 9100627 and 9100640: a rolled-back node began catching up (its counter
    raised to the token's), stopped before it finished, and started again with counters
    that matched: it served as intact without the records it had not fetched yet."""
    from backupvault.node.main import store_is_intact

    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, b"k" * 32)
    store.save([AcceptorRecord(b"a", 1, 0)])
    sealer = FakeSealer(5)  # the token counted more writes: a rollback
    assert store_is_intact(store, sealer) is False
    store.save([AcceptorRecord(b"b", 1, 0)])  # a copy taken while catching up
    store.close()
    for _ in range(2):  # stopped before it caught up: not intact, however often
        store = NodeStore(path, 0, b"k" * 32)
        sealer.recorded = store.counter
        assert store.catching_up
        assert store_is_intact(store, sealer) is False
        store.close()
    store = NodeStore(path, 0, b"k" * 32)
    store.save([AcceptorRecord(b"c", 1, 0)], caught_up=True)  # written once it was ready
    store.close()
    store = NodeStore(path, 0, b"k" * 32)
    sealer.recorded = store.counter
    assert not store.catching_up
    assert store_is_intact(store, sealer) is True
    assert {r.key for r in store.load()} == {b"a", b"b", b"c"}


def test_a_wiped_store_stopped_during_its_catch_up_still_knows_it_began_empty(
    tmp_path: Path,
) -> None:
    """A wiped (or new) node that copied records and was stopped before it caught up comes
    back with records, every one a peer's copy: the store remembers that its catch-up
    began empty, whatever happens to it meanwhile (found behind the token again, started
    twice), until a write made once it caught up (docs/fleet.md, the counter row's
    catch-up byte). A store with records of its own never says so."""
    from backupvault.node.main import store_start

    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, b"k" * 32)
    sealer = FakeSealer(7)  # the token counted writes this (wiped) store does not hold
    store_start(store, sealer)  # type: ignore[arg-type]
    assert store.catching_up and store.began_empty
    store.save([AcceptorRecord(b"a", 1, 0)])  # a copy taken while catching up
    store.close()
    for _ in range(2):
        store = NodeStore(path, 0, b"k" * 32)
        assert store.began_empty and StoreRecords(store).catch_up_began_empty()
        assert store_start(store, sealer) == "catch_up_unfinished"  # type: ignore[arg-type]
        assert store.began_empty
        store.close()
    store = NodeStore(path, 0, b"k" * 32)
    store.raise_counter(store.counter + 5)  # and found behind the token in between
    assert store.began_empty
    store.save([AcceptorRecord(b"b", 1, 0)], caught_up=True)
    assert not store.began_empty and not StoreRecords(store).catch_up_began_empty()
    store.close()
    store = NodeStore(path, 0, b"k" * 32)
    assert not store.catching_up and not store.began_empty
    store.raise_counter(store.counter + 5)  # rolled back: it holds values of its own
    assert store.catching_up and not store.began_empty
    store.close()
    assert not NodeStore(path, 0, b"k" * 32).began_empty


def test_the_rows_of_a_catch_up_stopped_before_it_finished_are_known_after_a_restart(
    tmp_path: Path,
) -> None:
    """A rolled-back node's catch-up replaces its own values with peers' copies; stopped
    before it finished, the node restarts with those copies on disk and its own values
    lost. The store says which rows that catch-up wrote (above the version it began at,
    up to the one at this start), so the replica does not take them for its own; rows
    written before it, or in this run, are not among them; none once it caught up."""
    from backupvault.node.main import store_start

    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, b"k" * 32)
    store.save([AcceptorRecord(b"own", 1, 0)], caught_up=True)
    sealer = FakeSealer(store.counter + 4)  # the token counted more: rolled back
    assert store_start(store, sealer) == "rollback_detected"  # type: ignore[arg-type]
    assert not store.began_empty
    store.save([AcceptorRecord(b"copy", 1, 0)])  # a copy taken while catching up
    assert not store.copied_before_start(b"copy")  # this run's own catch-up: the map knows
    store.close()
    for _ in range(2):  # stopped before it caught up, once and again
        store = NodeStore(path, 0, b"k" * 32)
        assert store_start(store, sealer) == "catch_up_unfinished"  # type: ignore[arg-type]
        records = StoreRecords(store)
        assert records.copied_before_start(b"copy")
        assert not records.copied_before_start(b"own")
        assert not records.copied_before_start(b"never")
        store.close()
    store = NodeStore(path, 0, b"k" * 32)
    store_start(store, sealer)  # type: ignore[arg-type]
    store.save([AcceptorRecord(b"late", 1, 0)])  # written in this run
    assert store.copied_before_start(b"copy") and not store.copied_before_start(b"late")
    store.save([AcceptorRecord(b"done", 1, 0)], caught_up=True)
    assert not store.copied_before_start(b"copy")
    store.close()
    store = NodeStore(path, 0, b"k" * 32)
    assert not store.catching_up and not store.copied_before_start(b"copy")
    store.close()


def test_a_write_made_before_the_node_caught_up_keeps_the_catch_up_open(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    store.mark_catching_up()
    store.save([AcceptorRecord(b"a", 1, 0)])
    store.raise_counter(store.counter + 3)
    store.distrust_share_rows()
    store.close()
    assert NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32).catching_up


def _counted_write(store: NodeStore, sealer: FakeSealer, record: AcceptorRecord) -> None:
    store.save([record], caught_up=True)  # the store, then the token, as the service does
    sealer.advance_store_counter(store.counter)


def _started_with_a_copy_kept(tmp_path: Path) -> tuple[Path, FakeSealer, NodeStore]:
    """A store (in tmp_path/data) that wrote x once, a copy of it kept in tmp_path/old,
    and the store opened again, intact."""
    from backupvault.node.main import store_is_intact

    data = tmp_path / "data"
    data.mkdir()
    store = NodeStore(data / "store.sqlite", 0, b"k" * 32)
    sealer = FakeSealer(None)
    store_is_intact(store, sealer)  # type: ignore[arg-type]
    _counted_write(store, sealer, AcceptorRecord(b"x", 1, 1, 1, 1, b"v1"))
    store.close()
    shutil.copytree(data, tmp_path / "old")
    store = NodeStore(data / "store.sqlite", 0, b"k" * 32)
    assert store_is_intact(store, sealer)  # type: ignore[arg-type]
    return data, sealer, store


def _put_back(copy: Path, data: Path) -> NodeStore:
    shutil.rmtree(data)
    shutil.copytree(copy, data)
    return NodeStore(data / "store.sqlite", 0, b"k" * 32)


def test_a_copy_taken_one_ahead_of_the_token_is_no_intact_store_after_a_rollback(
    tmp_path: Path,
) -> None:
    """Audit (2026-12-04): a store one write ahead of its token is intact (a crash between
    the two writes). After a rollback the store's counter was raised only to the token's,
    so the new history's next write carried the counter of a copy taken one ahead in the
    old history: put back once the token had counted that write, the copy matched it and
    was taken as intact, every promise and acceptance since forgotten. A rollback now
    moves the store two past the token."""
    from backupvault.node.main import store_is_intact

    data, sealer, store = _started_with_a_copy_kept(tmp_path)
    _counted_write(store, sealer, AcceptorRecord(b"x", 2, 1, 2, 1, b"v2"))
    store.save([AcceptorRecord(b"x", 3, 1, 2, 1, b"v2")])  # stopped before the token counts it
    store.close()
    shutil.copytree(data, tmp_path / "one-ahead")

    store = _put_back(tmp_path / "old", data)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    _counted_write(store, sealer, AcceptorRecord(b"x", 9, 1, 9, 1, b"v9"))
    store.close()
    store = _put_back(tmp_path / "one-ahead", data)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    store.close()


def test_a_row_of_a_lost_history_is_never_at_a_version_a_later_history_writes(
    tmp_path: Path,
) -> None:
    """Audit (2026-12-04): a raise reserved the versions the lost history could have
    used, counting its saves from the token; but a lost history that itself began with a
    raise had spent that reserve already, and its one uncounted save went past it. The
    same old copy restored twice then wrote a row at that very (name, version), and the
    lost row, put back, passed its seal and its bucket's digest. Versions now stay at or
    below the counter times ROWS_PER_SAVE in every state, and a raise moves past both."""
    from backupvault.node.main import store_is_intact

    data, sealer, store = _started_with_a_copy_kept(tmp_path)
    for r in (2, 3, 4):
        _counted_write(store, sealer, AcceptorRecord(b"x", r, 1, r, 1, b"v%d" % r))
    store.close()

    store = _put_back(tmp_path / "old", data)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    store.save([AcceptorRecord(b"x", 5, 1, 1, 1, b"v1")])  # the token never counts it
    name = store.name_of(b"x")
    store.close()
    with sqlite3.connect(data / "store.sqlite") as db:
        lost = db.execute("SELECT ver, row FROM record WHERE name = ?", (name,)).fetchone()

    store = _put_back(tmp_path / "old", data)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    _counted_write(store, sealer, AcceptorRecord(b"x", 9, 1, 9, 1, b"v9"))
    store.close()
    with sqlite3.connect(data / "store.sqlite") as db:
        (version,) = db.execute("SELECT ver FROM record WHERE name = ?", (name,)).fetchone()
        assert version != lost[0]
        db.execute("UPDATE record SET row = ? WHERE name = ?", (lost[1], name))
    store = NodeStore(data / "store.sqlite", 0, b"k" * 32)
    with pytest.raises(StoreCorrupted):
        store.get(b"x")
    store.close()


@pytest.mark.parametrize("recorded", [None, 1], ids=["token-without-counter", "store-2-ahead"])
def test_a_start_that_must_catch_up_and_dies_half_way_catches_up_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: int | None
) -> None:
    """Audit (2026-12-04): with no counter in the token, or a store two or more ahead of
    it, the start advanced the token before the store recorded that a catch-up began; a
    crash between the two left counters that matched and no mark, and the next start
    served as intact. The store is now written first, as for a rollback."""
    from backupvault.node.main import store_is_intact

    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, b"k" * 32)
    for r in (1, 2, 3):
        store.save([AcceptorRecord(b"x", r, 1)])
    store.close()
    sealer = FakeSealer(recorded)
    store = NodeStore(path, 0, b"k" * 32)

    def disk_fails(self: NodeStore) -> None:
        raise sqlite3.OperationalError("disk I/O error")  # or the process is killed here

    with monkeypatch.context() as patched:
        patched.setattr(NodeStore, "mark_catching_up", disk_fails)
        with pytest.raises(sqlite3.OperationalError):
            store_is_intact(store, sealer)  # type: ignore[arg-type]
    store.close()
    store = NodeStore(path, 0, b"k" * 32)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    store.close()


def test_a_damaged_row_found_during_a_step_stops_the_node(tmp_path: Path) -> None:
    """Records are read when a message needs them, not at start; one that fails its check
    stops the node: no answer leaves, clients get 503."""
    entry = EntryId("acct", "entry").to_bytes()
    filled = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    filled.save([AcceptorRecord(entry, 1, 0), AcceptorRecord(b"other", 1, 0)])
    filled.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.execute("UPDATE record SET row = zeroblob(length(row))")

    async def scenario() -> None:
        service, store, posted = _service(tmp_path)  # opens: reads no record row
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))
        assert service.replica.ready and service._fatal is None
        service._step(lambda: service.replica.receive(1, Prepare(b"op", entry, 5, 1), 0.0))
        await _turns()
        assert posted == [] and service._fatal is not None
        answer = await service.client_request(Op.MANIFEST, "acct", "entry", b"")
        assert (answer.status, answer.error) == (503, "node_not_ready")

    asyncio.run(scenario())


def test_messages_a_peer_queued_before_this_node_started_are_dropped_not_refused(
    tmp_path: Path,
) -> None:
    """A peer flushes what it queued while this node was down: the messages are dropped
    (their nonces only the previous process knew), and the stream stays open; closing it
    made every peer redial just as the node came back, which delayed its first rounds past
    the relay's patience. A forged message in the same frame is still refused."""
    service, _, _ = _service(tmp_path)
    queued = _channel(1).seal(0, NotReady(b"queued"))
    service._channel.not_before = time.time() + 1  # the node (re)started after it
    assert service.peer_frame(1, join_frame([queued])) == 0
    assert service.metrics["peer_messages_before_start"] == 1
    forged = bytearray(_channel(1).seal(0, NotReady(b"forged")))
    forged[-1] ^= 1
    assert service.peer_frame(1, join_frame([bytes(forged)])) == 1


def test_a_broken_invariant_in_a_step_stops_the_node_and_sends_nothing(tmp_path: Path) -> None:
    """As TigerBeetle crashes on a failed assertion: a step of the core that would break an
    invariant stops the node (fail-stop). Nothing queued after it leaves, clients get 503,
    and health stops saying ready, so the relay passes the node over."""

    async def scenario() -> None:
        service, store, posted = _service(tmp_path)
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))
        assert service.serving and service.stopped_because is None

        def broken() -> list[Effect]:
            raise BrokenInvariant("ballots only grow")

        service._step(broken)
        service._execute([Send(1, NotReady(b"op"))])  # anything later: not sent
        await _turns()
        assert posted == []
        assert not service.serving
        assert service.stopped_because == "broken invariant: ballots only grow"
        answer = await service.client_request(Op.MANIFEST, "acct", "entry", b"")
        assert (answer.status, answer.error) == (503, "node_not_ready")
        assert "invariant" in answer.detail

    asyncio.run(scenario())


def test_a_tick_that_raises_stops_the_node_rather_than_end_its_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error out of a tick (a KeyError, as a peer's flood of Forwards once caused in
    the leader's tick) ended the ticking task: the node never ticked again (no timeouts,
    repairs, catch-up or settling) and went on saying it was serving. It stops now, as for
    a broken invariant, and says why."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))

        def broken(now: float) -> list[Effect]:
            raise KeyError(b"lonely")

        monkeypatch.setattr(service.replica, "tick", broken)
        ticking = asyncio.ensure_future(service._tick_forever())
        await _until(ticking.done, "the ticking task ends")
        assert ticking.exception() is None
        assert not service.serving
        assert service.stopped_because == (
            "broken invariant: a tick of the replica raised KeyError(b'lonely')"
        )
        await service.stop()

    asyncio.run(scenario())


def test_an_effect_that_cannot_be_carried_out_stops_the_node(tmp_path: Path) -> None:
    """A Send to a peer this node has no channel to (a node once addressed itself) is a bug
    in the core. Carried out at once, it raised into whichever peer frame or request ran
    the step; queued behind a write, it ended the group commit's task with the rest of the
    batch undelivered and the node still saying ready. Both stop the node now."""

    async def scenario(behind_a_write: bool) -> None:
        service, store, posted = _service(tmp_path / str(behind_a_write))
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))
        effects: list[Effect] = [Send(7, NotReady(b"nowhere")), Send(1, NotReady(b"after"))]
        if behind_a_write:
            effects.insert(0, Persist(AcceptorRecord(b"a", 1, 0)))
        service._step(lambda: effects)
        await _until(lambda: not service.serving, "the node goes on serving")
        await _turns()
        assert posted == []  # nothing after the failed effect left
        assert service.stopped_because is not None
        assert "KeyError(7)" in service.stopped_because
        assert not service._committing
        await service.stop()

    asyncio.run(scenario(behind_a_write=False))
    asyncio.run(scenario(behind_a_write=True))


def test_a_broken_invariant_in_the_firmware_stops_the_node_rather_than_answer_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))

        def broken(*args: object) -> None:
            raise BrokenInvariant("a count above L")

        monkeypatch.setattr(service._firmware, "open", lambda *a: (object(), None))
        monkeypatch.setattr(service._firmware, "handle", broken)
        answer = await service.client_request(Op.MANIFEST, "acct", "entry", b"")
        assert (answer.status, answer.error) == (503, "node_not_ready")
        assert not service.serving
        assert service.stopped_because == "broken invariant: a count above L"

    asyncio.run(scenario())


def test_share_rows_are_durable_before_the_answer_that_depends_on_them(tmp_path: Path) -> None:
    """A node's own share row (its count) goes through the same group commit, after any
    persist before it, and `_persist_rows` returns only once it is written."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        entry = EntryId("alice", "chat").to_bytes()
        row = NodeShare(1, b"\x01" + b"k" * 32, b"m", [Evaluation(1, bytes(32))])
        service._execute([Persist(AcceptorRecord(entry, 1, 0))])
        waiting = asyncio.create_task(service._persist_rows((ShareWrite(entry, row),)))
        await _turns()
        assert not waiting.done() and store.get_share(entry) is None
        store.release.set()
        assert await asyncio.wait_for(waiting, 5)
        assert store.get_share(entry) == row
        assert store.saved == [[entry], [SHARE_PREFIX + entry]]

    asyncio.run(scenario())


def test_an_erasure_made_while_accepting_a_value_is_persisted(tmp_path: Path) -> None:
    """A row the firmware changes while this node's acceptor takes a value (an erasure on
    a verified owner statement, docs/threshold.md "Catching up") is handed over after the
    step and written through the group commit, then reported durable."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        entry = EntryId("alice", "chat").to_bytes()
        erased = NodeShare(1, b"", b"m", [], delete_counter=1)
        keeper = service._firmware.shares
        keeper._unsaved.append(keeper._write(entry, erased, trusted=False))
        service._step(lambda: [])
        assert keeper.take_writes() == ()  # handed to the shell
        store.release.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.get_share(entry) == erased and entry not in keeper._pending:
                break
        assert store.get_share(entry) == erased
        assert entry not in keeper._pending  # durable: the store answers for it now

    asyncio.run(scenario())


def test_a_clean_restart_after_a_rollback_still_distrusts_the_rows_it_found(
    tmp_path: Path,
) -> None:
    """A start behind the token marks the store's share rows suspect; the next start
    finds the store intact, yet does not trust those rows' counts again."""
    path = tmp_path / "store.sqlite"
    entry = EntryId("alice", "chat").to_bytes()
    store = NodeStore(path, 0, b"k" * 32)
    store.save([share_record(entry, NodeShare(1, b"", b"", []))])
    for intact in (False, True):
        firmware = VaultFirmware(FLEET_ID, NODE_KEY, ACCOUNTS, FleetShape(0, 3, 2), store.get_share)
        addresses = {i: ("127.0.0.1", 1) for i in range(3)}
        NodeService(0, addresses, firmware, _channel(0), store, intact=intact)
        assert not firmware.shares._count_trusted(entry, 1, 0)
        store.close()
        store = NodeStore(path, 0, b"k" * 32)
    store.save([share_record(entry, NodeShare(1, b"", b"", [], reset_at=1))])
    firmware = VaultFirmware(FLEET_ID, NODE_KEY, ACCOUNTS, FleetShape(0, 3, 2), store.get_share)
    addresses = {i: ("127.0.0.1", 1) for i in range(3)}
    NodeService(0, addresses, firmware, _channel(0), store, intact=True)
    assert firmware.shares._count_trusted(entry, 1, 0)  # written since: trusted
    store.close()


def test_a_new_node_distrusts_nothing_at_its_first_start(tmp_path: Path) -> None:
    """A new node (empty store, no counter in its token) catches up, but has no row that
    can hold a rolled-back count: raised as after a rollback, it distrusted every entry and
    took no new share until t peers reported (with one node, never)."""
    from backupvault.node.main import store_is_intact

    store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    sealer = FakeSealer(None)
    assert store_is_intact(store, sealer) is False  # type: ignore[arg-type]
    assert store.catching_up and sealer.recorded == store.counter
    store.distrust_share_rows()  # what the service does for a start that is not intact
    assert store.suspect_through == 0
    store.close()


def _expiring_service(
    tmp_path: Path, outcome: Committed | Failed
) -> tuple[NodeService, SlowStore, bytes, NodeShare]:
    """A ready node whose firmware proposes one round on its own (a share left at L past
    the grace) that erases a row; the round ends as `outcome` says."""
    service, store, _ = _service(tmp_path)
    store.release.set()
    service.replica.ready = True
    entry = EntryId("alice", "chat").to_bytes()
    erased = NodeShare(1, b"", b"m", [])
    keeper = service._firmware.shares

    def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
        refused = ErrorResponse("refused", "nothing to answer", 0)
        return state, lambda: Answer(refused, (keeper._write(entry, erased, trusted=False),))

    async def commit(
        key: bytes, change: Callable[[bytes], tuple[bytes, Any]], *, joinable: bool = False
    ) -> Committed | Failed:
        assert key == entry and not joinable  # its own round, joined with no request
        _, build = change(b"")
        return Committed(outcome.op_id, build) if isinstance(outcome, Committed) else outcome

    service._commit = commit  # type: ignore[method-assign]
    service._firmware.tick = lambda now: [ThresholdUpdate(entry, apply)]  # type: ignore[method-assign]
    return service, store, entry, erased


def test_a_round_the_firmware_proposes_on_its_own_has_its_rows_persisted(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store, entry, erased = _expiring_service(tmp_path, Committed(b"op", None))
        service._expire_shares()
        await _until(lambda: store.get_share(entry) == erased, "the erasure was not persisted")
        await _until(lambda: entry not in service._firmware.shares._pending, "not durable")

    asyncio.run(scenario())


def test_a_round_of_its_own_that_fails_persists_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store, entry, _ = _expiring_service(tmp_path, Failed(b"op", "no majority"))
        service._expire_shares()
        await _turns(20)
        assert not service._tasks
        assert store.get_share(entry) is None

    asyncio.run(scenario())


def _at_limit(limit: int) -> NodeShare:
    evaluated = [Evaluation(a, bytes([a]) * 32) for a in range(1, limit + 1)]
    return NodeShare(1, b"s" * 32, b"m", evaluated)


def test_a_share_left_at_l_before_a_restart_is_watched_once_the_store_is_checked(
    tmp_path: Path,
) -> None:
    """Nobody asks for the entry after the restart: the node's scan of its store still
    hands the row at L to the firmware, which ends it one grace on."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        at_limit = EntryId("alice", "chat").to_bytes()
        below = EntryId("bob", "chat").to_bytes()
        store.save([share_record(at_limit, _at_limit(10)), share_record(below, _at_limit(9))])
        keeper = service._firmware.shares
        await service._verify_store()
        assert keeper.tick(0.0) == []  # first seen at L now
        assert [u.key for u in keeper.tick(EXHAUSTED_GRACE_SECONDS)] == [at_limit]

    asyncio.run(scenario())


def test_a_started_node_reads_the_shares_left_at_l_from_the_store_and_never_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a format 3 store the rows at L come from the store's table: no row is opened by
    a scan of the whole store (minutes of CPU at 10 M entries, after every restart). On a
    store of an earlier format the start scans once and completes the table."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        left = EntryId("alice", "chat").to_bytes()
        store.save([share_record(left, _at_limit(10))])
        scans: list[int] = []
        real_scan = NodeStore.share_keys

        def counted(self: NodeStore, *args: Any, **kwargs: Any) -> list[bytes]:
            scans.append(1)
            return real_scan(self, *args, **kwargs)

        monkeypatch.setattr(NodeStore, "share_keys", counted)
        keeper = service._firmware.shares
        await service._verify_store()
        assert scans == [] and list(keeper._at_limit) == [left]
        with sqlite3.connect(tmp_path / "store.sqlite") as db:
            db.execute("PRAGMA user_version=2")  # as a store from before format 3
        store.watch_complete = False
        await service._verify_store()
        assert scans == [1] and store.watch_complete

    asyncio.run(scenario())


def test_an_answer_waits_for_a_row_of_its_entry_an_earlier_request_is_still_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer built on this node's row of the entry that an earlier request handed to
    the store (a resend finding the count its first copy is writing) leaves only once
    that write is durable, though it writes nothing itself (review s48: it left at once)."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        service._step(lambda: service.replica.start(0.0, intact=True))
        await _until(lambda: not service._committing, "the start's write")
        store.release.clear()
        entry = EntryId("alice", "chat").to_bytes()
        keeper = service._firmware.shares
        row = NodeShare(1, b"\x01" + b"k" * 32, b"m", [Evaluation(1, bytes(32))])
        first = asyncio.create_task(service._persist_rows((keeper._write(entry, row),)))
        await _turns()
        response_key = ResponseKey(os.urandom(32), FLEET_ID, 0, str(Op.MANIFEST))
        read = ThresholdRead(entry, lambda state: Answer(error(ErrorCode.REFUSED, "from the row")))
        monkeypatch.setattr(service._firmware, "open", lambda *a: (object(), response_key))
        monkeypatch.setattr(service._firmware, "handle", lambda *a: read)
        answering = asyncio.create_task(service.client_request(Op.MANIFEST, "alice", "chat", b""))
        await _turns(20)
        assert not first.done() and store.get_share(entry) is None
        assert not answering.done()  # held back with the write it rests on
        store.release.set()
        answer = await asyncio.wait_for(answering, 5)
        assert answer.status == 200
        assert await first
        assert store.get_share(entry) == row
        assert entry not in keeper._pending

    asyncio.run(scenario())


@pytest.mark.parametrize("repair", [True, False], ids=["repair", "change"])
def test_a_repair_round_joins_only_a_value_chosen_after_it_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repair: bool
) -> None:
    """A read whose value is too old to answer from (a confirm, a late share) runs a round
    that brings the node the newest value, joined only to a value chosen after it came: a
    join to the value it held wrote nothing to the nodes that lack it (review s59). Both
    are joinable: the N copies of one request make one round."""

    async def scenario() -> None:
        service, store, _ = _service(tmp_path)
        store.release.set()
        service.replica.ready = True
        entry = EntryId("alice", "chat").to_bytes()
        proposed: list[tuple[bool, bool]] = []

        def unchanged(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            return state, lambda: Answer(error(ErrorCode.REFUSED, "after the round"))

        async def commit(
            key: bytes,
            change: Callable[[bytes], tuple[bytes, Any]],
            *,
            joinable: bool = False,
            fresh: bool = False,
        ) -> Committed | Failed:
            proposed.append((joinable, fresh))
            _, build = change(b"")
            return Committed(b"op", build)

        update = ThresholdUpdate(entry, unchanged)
        read = ThresholdRead(
            entry, lambda state: Answer(error(ErrorCode.FLEET_UNAVAILABLE, "old"), repair=update)
        )
        response_key = ResponseKey(os.urandom(32), FLEET_ID, 0, str(Op.MANIFEST))
        monkeypatch.setattr(service, "_commit", commit)
        monkeypatch.setattr(service._firmware, "open", lambda *a: (object(), response_key))
        monkeypatch.setattr(service._firmware, "handle", lambda *a: read if repair else update)
        answer = await service.client_request(Op.MANIFEST, "alice", "chat", b"")
        assert answer.status == 200
        assert proposed == [(True, repair)]

    asyncio.run(scenario())
