"""A node's store refuses tampered rows instead of answering from them: a flipped bit, a
row moved to another entry's key, or a row copied from another node's database."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from backupvault.fleet.messages import AcceptorRecord
from backupvault.node.store import NodeStore, StoreCorrupted

KEY = os.urandom(32)


def make(path: Path, node: int = 0, key: bytes = KEY) -> NodeStore:
    return NodeStore(path, node, key)


def records() -> list[AcceptorRecord]:
    return [AcceptorRecord(b"entry-a", 3, 1, 3, 1, b"value a"), AcceptorRecord(b"entry-b", 5, 2)]


def rows(path: Path) -> dict[bytes, bytes]:
    with sqlite3.connect(path) as db:
        return {bytes(k): bytes(r) for k, r in db.execute("SELECT key, row FROM record")}


def put(path: Path, key: bytes, row: bytes) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO record (key, row) VALUES (?, ?)", (key, row))


def test_round_trip_and_nothing_in_the_clear(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    store.close()
    assert sorted(make(path).load(), key=lambda r: r.key) == records()
    raw = path.read_bytes() + (tmp_path / "store.sqlite-wal").read_bytes()
    assert b"value a" not in raw


@pytest.mark.parametrize("position", [0, 12, 20, -1])
def test_flipped_bit_is_refused(tmp_path: Path, position: int) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    row = bytearray(rows(path)[b"entry-a"])
    row[position] ^= 0x04
    put(path, b"entry-a", bytes(row))
    with pytest.raises(StoreCorrupted):
        make(path).load()


def test_rows_swapped_between_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    current = rows(path)
    put(path, b"entry-a", current[b"entry-b"])
    put(path, b"entry-b", current[b"entry-a"])
    with pytest.raises(StoreCorrupted):
        make(path).load()


def test_row_from_another_nodes_store_is_refused(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.sqlite", tmp_path / "theirs.sqlite"
    make(ours, node=0).save(records())
    make(theirs, node=1).save([AcceptorRecord(b"entry-a", 9, 1, 9, 1, b"other")])
    put(ours, b"entry-a", rows(theirs)[b"entry-a"])
    with pytest.raises(StoreCorrupted):
        make(ours, node=0).load()


def test_wrong_storage_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    make(path).save(records())
    with pytest.raises(StoreCorrupted, match="failed authentication"):
        make(path, key=os.urandom(32)).load()


def test_an_older_copy_of_a_row_still_opens(tmp_path: Path) -> None:
    """Rollback is not tampering the store can see: catch-up after restart handles it."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save([AcceptorRecord(b"entry-a", 1, 1, 1, 1, b"old")])
    old_row = rows(path)[b"entry-a"]
    store.save([AcceptorRecord(b"entry-a", 2, 1, 2, 1, b"new")])
    store.close()
    put(path, b"entry-a", old_row)
    assert make(path).load() == [AcceptorRecord(b"entry-a", 1, 1, 1, 1, b"old")]
