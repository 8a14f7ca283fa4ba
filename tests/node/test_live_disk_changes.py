"""A disk that changes rows under a running node (an attacker with the node's disk, not
its token or memory). The node checked each bucket when it first read it; a row put back
afterwards (an older copy: a lower count), removed or added must still be refused when
it is next read from disk, as at the next start, and never built on or re-sealed.
Found by review (s23): the bucket check ran once per process, so once an entry fell out
of the caches the node served the rolled-back row."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backupvault.fleet.messages import AcceptorRecord
from backupvault.hsm.state import EntryId, Evaluation, NodeShare
from backupvault.node import store as store_module
from backupvault.node.store import (
    SHARE_PREFIX,
    NodeStore,
    StoreCorrupted,
    StoreRecords,
    share_record,
)

KEY = os.urandom(32)
ENTRY = EntryId("alice", "root-key").to_bytes()
OTHER = EntryId("bob", "root-key").to_bytes()
SHARE = b"\x01" + b"k" * 32


@pytest.fixture(autouse=True, params=["kept", "read again"])
def listings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test twice: with checked bucket listings kept in memory (rows compared with
    them), and with none kept but the last (each read checks the bucket on disk)."""
    if request.param == "read again":
        monkeypatch.setattr(store_module, "LISTED_ROWS", 0)


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
    # Reads do not wait for the lock; one that falls between a commit and the digests
    # and listings in memory must read again, not refuse the store.
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    keys = [EntryId(f"user{i}", "root-key").to_bytes() for i in range(8)]
    store.save([AcceptorRecord(k, 1, 1, 1, 1, b"v0") for k in keys])
    failures: list[BaseException] = []
    stop = time.monotonic() + 1.0

    def write() -> None:
        try:
            round_ = 2
            while time.monotonic() < stop:
                store.save([AcceptorRecord(k, round_, 1, round_, 1, b"v") for k in keys[:4]])
                round_ += 1
        except BaseException as failed:  # pragma: no cover - reported below
            failures.append(failed)

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while writer.is_alive():
        for key in keys:
            assert store.get(key) is not None
            reads += 1
    writer.join()
    assert failures == [] and reads > 100


def test_a_bucket_listing_finds_each_name_and_no_other() -> None:
    names = sorted(os.urandom(16) for _ in range(300))
    listing = store_module.BucketListing((name, i + 1) for i, name in enumerate(names))
    assert len(listing) == 300
    assert all(listing.get(name) == i + 1 for i, name in enumerate(names))
    assert listing.get(os.urandom(16)) is None and listing.get(b"\x00" * 16) is None
    changed = listing.updated({names[0]: 999, b"\xff" * 16: 1000})
    assert changed.get(names[0]) == 999 and changed.get(b"\xff" * 16) == 1000
    assert len(changed) == 301 and listing.get(names[0]) == 1  # the old one unchanged
