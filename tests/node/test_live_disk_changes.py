"""A disk that changes rows under a running node (an attacker with the node's disk, not
its token or memory). The node checked each bucket when it first read it; a row put back
afterwards (an older copy: a lower count), removed or added must still be refused when
it is next read from disk, as at the next start, and never built on or re-sealed.
Found by review (s23): the bucket check ran once per process, so once an entry fell out
of the caches the node served the rolled-back row."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backupvault.fleet.messages import AcceptorRecord
from backupvault.hsm.state import EntryId, Evaluation, NodeShare
from backupvault.node import store as store_module
from backupvault.node.store import (
    SHARE_PREFIX,
    NodeStore,
    StoreCorrupted,
    StoreRecords,
    bucket_of,
    leaf_of,
    share_record,
)

KEY = os.urandom(32)
ENTRY = EntryId("alice", "root-key").to_bytes()
OTHER = EntryId("bob", "root-key").to_bytes()
SHARE = b"\x01" + b"k" * 32


class _Forgetful(dict[int, store_module.LeafSums]):
    """Kept sums per leaf that a read never finds: each read checks its bucket whole."""

    def get(self, key: int, default: Any = None) -> Any:
        return default


@pytest.fixture(autouse=True, params=["kept", "read again"])
def leaf_sums(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test twice: with each checked bucket's sums per leaf kept in memory (a row is
    compared with its leaf's rows, checked against the leaf's sum), and with none found
    (each read checks the row's whole bucket on disk against its digest, as a bucket's
    first read after start does)."""
    if request.param == "read again":
        opened = NodeStore.__init__

        def forgetful(store: NodeStore, *args: Any, **kwargs: Any) -> None:
            opened(store, *args, **kwargs)
            store._sums = _Forgetful()

        monkeypatch.setattr(NodeStore, "__init__", forgetful)


def _counted(count: int) -> NodeShare:
    return NodeShare(
        1, SHARE, b"manifest", [Evaluation(a, bytes([a]) * 32) for a in range(1, count + 1)]
    )


def _raw(path: Path, name: bytes) -> tuple[int, bytes]:
    with sqlite3.connect(path) as db:
        ver, row = db.execute("SELECT ver, row FROM record WHERE name = ?", (name,)).fetchone()
    return int(ver), bytes(row)


def _put_back(path: Path, name: bytes, ver: int, row: bytes) -> None:
    """The attacker, through SQLite (any process that can write the file can)."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM record WHERE name = ?", (name,))
        db.execute("INSERT INTO record (ver, name, row) VALUES (?, ?, ?)", (ver, name, row))


def test_a_share_row_rolled_back_while_the_node_runs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    name = store.name_of(SHARE_PREFIX + ENTRY)
    store.save([share_record(ENTRY, _counted(0))])
    copy = _raw(path, name)  # the attacker's copy: nothing counted
    for count in range(1, 11):
        store.save([share_record(ENTRY, _counted(count))])
    share = store.get_share(ENTRY)
    assert share is not None and share.count == 10  # its bucket was checked here
    _put_back(path, name, *copy)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        store.get_share(ENTRY)
    with pytest.raises(StoreCorrupted, match="rolled back"):  # and nothing is built on it
        store.save([share_record(ENTRY, _counted(1))])
    store.distrust_share_rows()
    with pytest.raises(StoreCorrupted, match="rolled back"):
        store.share_suspect(ENTRY)


def test_a_record_rolled_back_after_it_left_the_cache_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    records = StoreRecords(store, capacity=1)  # stands in for 20,000 other entries used
    name = store.name_of(ENTRY)
    store.save([AcceptorRecord(ENTRY, 1, 1, 1, 1, b"attempt 0")])
    copy = _raw(path, name)
    store.save([AcceptorRecord(ENTRY, 9, 1, 9, 1, b"attempt 10")])
    found = records.get(ENTRY)
    assert found is not None and found.accepted_round == 9
    records.get(OTHER)  # ENTRY leaves the cache
    _put_back(path, name, *copy)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        records.get(ENTRY)
    with pytest.raises(StoreCorrupted, match="rolled back"):  # nor sent to a peer
        store.changed_since(store.store_id, 0, 100)


def test_a_row_removed_or_added_while_the_node_runs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    name = store.name_of(ENTRY)
    store.save([AcceptorRecord(ENTRY, 9, 1, 9, 1, b"destroyed")])
    assert store.get(ENTRY) is not None
    copy = _raw(path, name)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM record WHERE name = ?", (name,))
    with pytest.raises(StoreCorrupted, match="rolled back"):
        store.get(ENTRY)  # not "no such entry"
    _put_back(path, name, *copy)
    assert store.get(ENTRY) is not None  # the row as checked: served again
    other = store.name_of(OTHER)
    with sqlite3.connect(path) as db:  # a row the node never wrote, in a checked bucket
        db.execute("INSERT INTO record (ver, name, row) VALUES (?, ?, ?)", (99, other, b"x"))
    with pytest.raises(StoreCorrupted):
        store.get(OTHER)


class _SwapDuringRotation:
    """The token's key rotation, with the attacker putting the erased share back while
    the token works (it can slow the disk to stretch that moment)."""

    def __init__(self, path: Path, name: bytes, copy: tuple[int, bytes]) -> None:
        self.path, self.name, self.copy = path, name, copy
        self.finished = False

    def begin_rotation(self) -> tuple[int, bytes]:
        _put_back(self.path, self.name, *self.copy)
        return 1, os.urandom(32)

    def finish_rotation(self, generation: int) -> None:
        self.finished = True  # here the token would destroy the old row key


def test_a_share_put_back_during_its_erasures_rotation_is_not_sealed_anew(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    name = store.name_of(SHARE_PREFIX + ENTRY)
    live = _counted(1)
    store.save([share_record(ENTRY, live)])
    copy = _raw(path, name)
    assert store.get_share(ENTRY) is not None  # its bucket was checked here
    rotation = _SwapDuringRotation(path, name, copy)
    store.key_rotation = rotation
    with pytest.raises(StoreCorrupted, match="rolled back"):
        store.save([share_record(ENTRY, live.with_(share=b""))])  # erasure, then rotation
    # The rotation refused the bucket: the share is not re-sealed under the new keys,
    # the old key is not reported destroyed, and the rotation stays owed.
    assert not rotation.finished and store.rotation_owed
    assert _raw(path, name) == copy


def test_reads_beside_writes_never_take_a_commit_for_a_rollback(tmp_path: Path) -> None:
    # Reads do not wait for the lock; one that falls between a commit and the sums in
    # memory must read again, not refuse the store. The writer saves share rows, then
    # their entries' records: a save reads the share rows back (`_keep_manifests_once`)
    # while the other thread reads (review s45: on one shared connection, that read
    # took the other thread's older snapshot and refused the store as rolled back).
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    keys = [EntryId(f"user{i}", "root-key").to_bytes() for i in range(8)]
    store.save([AcceptorRecord(k, 1, 1, 1, 1, b"v0") for k in keys])
    store.save([share_record(k, _counted(0)) for k in keys])
    failures: list[BaseException] = []
    stop = time.monotonic() + 1.0

    def write() -> None:
        try:
            round_ = 2
            while time.monotonic() < stop:
                store.save([share_record(k, _counted(round_ % 5)) for k in keys[:4]])
                store.save([AcceptorRecord(k, round_, 1, round_, 1, b"v") for k in keys[:4]])
                round_ += 1
        except BaseException as failed:  # pragma: no cover - reported below
            failures.append(failed)

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while writer.is_alive():
        for key in keys:
            assert store.get(key) is not None and store.get_share(key) is not None
            reads += 1
    writer.join()
    assert failures == [] and reads > 100


def _check_all(store: NodeStore, failures: list[BaseException]) -> None:
    try:
        store.verify_all()
    except BaseException as failed:  # pragma: no cover - reported by the caller
        failures.append(failed)


def test_the_background_check_beside_writes_keeps_sums_that_match_the_disk(
    tmp_path: Path,
) -> None:
    # The node's check of every bucket runs in a thread of its own after start, while
    # the node writes: a bucket it sums while a save changes it must not be kept behind
    # the disk (a good row would then look rolled back) nor refused.
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    keys = [EntryId(f"user{i}", "root-key").to_bytes() for i in range(3000)]
    store.save([AcceptorRecord(k, 1, 1, 1, 1, b"v0") for k in keys])
    store.close()
    for attempt in range(2):
        store = NodeStore(path, 0, KEY)  # no bucket checked yet
        failures: list[BaseException] = []
        checker = threading.Thread(target=_check_all, args=(store, failures))
        checker.start()
        round_ = 2 + attempt * 100
        while checker.is_alive():
            batch = keys[round_ % 3000 :][:50]
            store.save([AcceptorRecord(k, round_, 1, round_, 1, b"v") for k in batch])
            round_ += 1
        checker.join()
        assert failures == []
        assert all(store.get(k) is not None for k in keys)  # against the kept sums
        store.close()


def test_a_bucket_summed_while_a_save_changes_it_is_not_kept_behind_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The background check sums a bucket without the lock; a save that lands between
    # its read of the rows and its keeping of the sums makes them stale: kept, they
    # would make the saved row look rolled back on its next read.
    path = tmp_path / "store.sqlite"
    NodeStore(path, 0, KEY).save([AcceptorRecord(ENTRY, 1, 1, 1, 1, b"v0")])
    store = NodeStore(path, 0, KEY)  # no bucket checked yet
    summed = store._checked
    saved: list[bool] = []

    def checked_then_saved(*args: Any) -> dict[bytes, int]:
        pairs = summed(*args)  # the rows as read before the save
        if store.name_of(ENTRY) in pairs and not saved:
            saved.append(True)
            store.save([AcceptorRecord(ENTRY, 2, 1, 2, 1, b"v1")])
        return pairs

    monkeypatch.setattr(store, "_checked", checked_then_saved)
    store.verify_all()
    monkeypatch.undo()
    found = store.get(ENTRY)
    assert saved and found is not None and found.accepted_round == 2


def test_a_read_under_way_in_another_thread_never_pins_what_a_save_checks(
    tmp_path: Path,
) -> None:
    # The event loop's thread in the middle of a read (a statement under way) while a
    # save in the writer thread checks the rows it builds on: each thread reads on its
    # own connection, so the save sees the last commit, not the reader's snapshot.
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    store.save([AcceptorRecord(ENTRY, 1, 1, 1, 1, b"v0"), share_record(ENTRY, _counted(0))])
    reading, finish = threading.Event(), threading.Event()

    def read_slowly() -> None:
        rows = store._reader.execute("SELECT name, ver FROM record")
        rows.fetchone()
        reading.set()
        finish.wait(10)
        rows.fetchall()

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        assert reading.wait(10)
        store.save([share_record(ENTRY, _counted(1))])
        store.save([AcceptorRecord(ENTRY, 2, 1, 2, 1, b"v1")])  # reads the share row back
        share = store.get_share(ENTRY)
        assert share is not None and share.count == 1
    finally:
        finish.set()
        reader.join()


def test_a_row_with_a_version_no_save_writes_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    store.save([AcceptorRecord(ENTRY, 1, 1, 1, 1, b"v0")])
    name = store.name_of(ENTRY)
    neighbour = name[:3] + bytes(13)  # in the same leaf
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO record (ver, name, row) VALUES (?, ?, ?)", (-5, neighbour, b"x"))
    with pytest.raises(StoreCorrupted, match="malformed"):
        store.get(ENTRY)
    with pytest.raises(StoreCorrupted, match="malformed"):
        store.save([AcceptorRecord(ENTRY, 2, 1, 2, 1, b"v1")])
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM record WHERE ver < 0")
        db.execute("UPDATE bucket SET ver = -1")
    store.close()
    with pytest.raises(StoreCorrupted, match="malformed"):
        NodeStore(path, 0, KEY)


def test_leaf_sums_find_each_leaf_and_add_changes() -> None:
    sums = {leaf: int.from_bytes(os.urandom(32), "big") for leaf in range(0, 256, 3)}
    kept = store_module.LeafSums(sums)
    assert len(kept) == len(sums) and kept.sums() == sums
    assert all(kept.get(leaf) == sums.get(leaf, 0) for leaf in range(256))
    changed = kept.updated({0: 5, 1: 7, 3: -sums[3]})
    assert changed.get(0) == (sums[0] + 5) % 2**256 and changed.get(1) == 7
    assert changed.get(3) == 0 and len(changed) == len(sums)  # a leaf emptied goes
    assert kept.get(1) == 0 and kept.get(0) == sums[0]  # the old one unchanged
    assert len(store_module.LeafSums({})) == 0 and store_module.LeafSums({}).get(9) == 0


def test_a_row_rolled_back_in_a_leaf_of_many_rows_is_refused(tmp_path: Path) -> None:
    # Two rows in one leaf: a read checks its leaf's rows against the leaf's sum, so an
    # older copy of either is found, whichever of them is read.
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, KEY)
    leaves: dict[tuple[int, int], list[bytes]] = {}
    in_leaf: list[bytes] = []
    for i in itertools.count():  # names are keyed: find two that share a leaf
        if len(in_leaf) == 2:
            break
        key = EntryId(f"user{i}", "root-key").to_bytes()
        name = store.name_of(key)
        in_leaf = leaves.setdefault((bucket_of(name), leaf_of(name)), [])
        in_leaf.append(key)
    store.save([AcceptorRecord(k, 1, 1, 1, 1, b"v0") for keys in leaves.values() for k in keys])
    victim, neighbour = in_leaf[0], in_leaf[1]
    name = store.name_of(victim)
    copy = _raw(path, name)
    store.save([AcceptorRecord(victim, 9, 1, 9, 1, b"attempt 10")])
    assert store.get(neighbour) is not None
    _put_back(path, name, *copy)
    for key in (victim, neighbour):
        with pytest.raises(StoreCorrupted, match="rolled back"):
            store.get(key)
