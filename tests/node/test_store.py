"""A node's store refuses tampered rows instead of answering from them (a flipped bit, a
row moved to another entry, a row from another node's database, a single row rolled back
to an older copy, a row removed or added), keeps entry names out of the file, is private
to the node's user, and leaves nothing of a destroyed entry that still decrypts."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.state import EntryId, EntryState
from backupvault.node.store import NodeStore, StoreCorrupted
from backupvault.protocol import EntryStatus

KEY = os.urandom(32)
ENTRY_A = EntryId("alice-account", "root-key").to_bytes()
ENTRY_B = EntryId("bob-account", "root-key").to_bytes()


def make(path: Path, node: int = 0, key: bytes = KEY) -> NodeStore:
    return NodeStore(path, node, key)


def records() -> list[AcceptorRecord]:
    return [AcceptorRecord(ENTRY_A, 3, 1, 3, 1, b"value a"), AcceptorRecord(ENTRY_B, 5, 2)]


def rows(path: Path) -> dict[bytes, tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT name, seq, row FROM record")
        return {bytes(n): (int(s), bytes(r)) for n, s, r in found}


def put(path: Path, name: bytes, seq: int, row: bytes) -> None:
    with sqlite3.connect(path) as db:
        sql = "INSERT OR REPLACE INTO record (name, seq, row) VALUES (?, ?, ?)"
        db.execute(sql, (name, seq, row))


def files(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("store"))


def name(path: Path, key: bytes) -> bytes:
    store = make(path)
    try:
        return store.name_of(key)
    finally:
        store.close()


def test_round_trip_and_nothing_in_the_clear(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    store.close()
    assert sorted(make(path).load(), key=lambda r: r.key) == sorted(records(), key=lambda r: r.key)
    raw = files(tmp_path)
    assert b"value a" not in raw
    for entry in (b"alice-account", b"bob-account", ENTRY_A, ENTRY_B):
        assert entry not in raw  # names are keyed HMACs


def test_store_is_private_to_the_node_user(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    make(folder / "store.sqlite").save(records())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


@pytest.mark.parametrize("position", [0, 12, 20, -1])
def test_flipped_bit_is_refused(tmp_path: Path, position: int) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    a = name(path, ENTRY_A)
    seq, row = rows(path)[a]
    flipped = bytearray(row)
    flipped[position] ^= 0x04
    put(path, a, seq, bytes(flipped))
    with pytest.raises(StoreCorrupted):
        make(path).load()


def test_rows_swapped_between_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    a, b = name(path, ENTRY_A), name(path, ENTRY_B)
    current = rows(path)
    put(path, a, *current[b])
    put(path, b, *current[a])
    with pytest.raises(StoreCorrupted):
        make(path).load()


def test_row_from_another_nodes_store_is_refused(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    make(ours, node=0).save(records())
    make(theirs, node=1).save([AcceptorRecord(ENTRY_A, 9, 1, 9, 1, b"other")])
    a = name(ours, ENTRY_A)
    put(ours, a, *rows(theirs)[a])
    with pytest.raises(StoreCorrupted):
        make(ours, node=0).load()


def test_wrong_storage_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    with pytest.raises(StoreCorrupted, match="failed authentication"):
        make(path, key=os.urandom(32)).load()


def test_a_single_row_rolled_back_to_an_older_copy_is_refused(tmp_path: Path) -> None:
    """The older row is authentic (it was written by this node), but the store's counter
    and digest say which copy is current."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, b"old")])
    a = store.name_of(ENTRY_A)
    old = rows(path)[a]
    store.save([AcceptorRecord(ENTRY_A, 2, 1, 2, 1, b"new")])
    store.save([AcceptorRecord(ENTRY_B, 3, 1)])
    store.close()
    put(path, a, *old)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        make(path).load()


def test_an_older_row_under_a_newer_seq_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, b"old")])
    a = store.name_of(ENTRY_A)
    _, old_row = rows(path)[a]
    store.save([AcceptorRecord(ENTRY_A, 2, 1, 2, 1, b"new")])
    store.close()
    put(path, a, rows(path)[a][0], old_row)  # the seq is authenticated with the row
    with pytest.raises(StoreCorrupted):
        make(path).load()


def test_a_removed_or_added_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    b = store.name_of(ENTRY_B)
    b_row = rows(path)[b]
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM record WHERE name = ?", (b,))
    with pytest.raises(StoreCorrupted, match="removed"):
        make(path).load()
    put(path, b, *b_row)
    assert len(make(path).load()) == 2  # put back as it was: consistent again


def _entry(status: int, secret: bytes, version: int) -> bytes:
    state = EntryState(status=status, wrapped_root_key=secret, record=secret, version=version)
    return ReplicatedValue([AppliedOp(b"op", version)], state.to_bytes()).to_bytes()


def test_a_destroyed_entry_cannot_be_read_back_from_any_file(tmp_path: Path) -> None:
    """Every copy the store ever wrote of the live entry (each a row that decrypts to a
    LIVE state with its wrapped root key) is gone from the database, WAL and shm files
    once the tombstone is saved."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    a = store.name_of(ENTRY_A)
    live_rows = []
    for version in range(1, 6):
        value = _entry(EntryStatus.LIVE, b"wrapped-root-key-%d" % version, version)
        store.save([AcceptorRecord(ENTRY_A, version, 1, version, 1, value)])
        store.save([AcceptorRecord(ENTRY_B, version, 1)])  # other traffic in between
        live_rows.append(rows(path)[a][1])
    assert any(row in files(tmp_path) for row in live_rows)  # the check can see a copy
    tombstone = _entry(EntryStatus.DESTROYED, b"", 6)
    store.save([AcceptorRecord(ENTRY_A, 6, 1, 6, 1, tombstone)])
    raw = files(tmp_path)
    for row in live_rows:
        assert row[12:28] not in raw  # not even a fragment of the ciphertext
    assert {r.key: r.value for r in make(path).load()}[ENTRY_A] == tombstone


def test_a_store_of_the_older_format_is_refused_with_a_way_out(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE record (key BLOB PRIMARY KEY, row BLOB)")
    with pytest.raises(StoreCorrupted, match="older version") as refused:
        make(path)
    assert "catches up" in (refused.value.hint or "")
