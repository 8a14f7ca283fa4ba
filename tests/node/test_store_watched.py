"""Shares left at L are named in the store (format 3), so a start finds them without
opening every row (docs/fleet.md, "The node's store on disk"). Before, every start
decrypted each row of the store in the background: minutes of CPU per node at 10,000,000
entries, while serving, and the 1 M fill bench's recoveries were measured during it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from backupvault.hsm.state import EntryId, Evaluation, NodeShare
from backupvault.node.store import STORE_FORMAT, NodeStore, share_record

KEY = os.urandom(32)
LIMIT = 10


def entry(n: int) -> bytes:
    return EntryId(f"account-{n}", "root-key").to_bytes()


def row(count: int, held: bytes = b"\x01" + b"k" * 32) -> NodeShare:
    return NodeShare(1, held, b"M", [Evaluation(a, bytes([a]) * 32) for a in range(1, count + 1)])


def at_limit(share: NodeShare) -> bool:
    return bool(share.share) and share.count >= LIMIT


def store_at(path: Path) -> NodeStore:
    store = NodeStore(path, 0, KEY)
    store.at_limit = at_limit
    return store


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (found,) = db.execute("PRAGMA user_version").fetchone()
    return int(found)


def scan_owed(path: Path) -> bool:
    """Whether the file says its `watched` table may miss rows (the `unwatched` table)."""
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'unwatched'").fetchone()
    return found is not None


def test_every_save_keeps_the_rows_at_l_named_and_only_those(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = store_at(path)
    assert store.watch_complete and not scan_owed(path)  # a new store
    assert user_version(path) == STORE_FORMAT == 7
    store.save([share_record(entry(n), row(n)) for n in (8, 9, 10, 11)])
    assert sorted(store.watched_keys()) == sorted([entry(10), entry(11)])
    store.save([share_record(entry(9), row(10))])  # reaches L
    store.save([share_record(entry(10), row(10, held=b""))])  # erased
    store.save([share_record(entry(11), row(0))])  # the owner's reset
    assert store.watched_keys() == [entry(9)]
    store.close()
    reopened = store_at(path)  # what the next start reads
    assert reopened.watch_complete
    assert reopened.watched_keys() == [entry(9)]
    reopened.close()


def test_a_store_of_format_2_is_scanned_once_then_named(tmp_path: Path) -> None:
    """A store written before format 3 (or by a tool, without the node's test) may hold a
    row at L the table does not name: it says so until a scan completes it."""
    path = tmp_path / "store.sqlite"
    tool = NodeStore(path, 0, KEY)  # no `at_limit`: cannot judge
    tool.save([share_record(entry(1), row(10)), share_record(entry(2), row(3))])
    assert not tool.watch_complete and scan_owed(path) and user_version(path) == STORE_FORMAT
    tool.close()
    node = store_at(path)
    assert not node.watch_complete  # the next start must scan
    found = node.share_keys(at_limit)
    assert found == [entry(1)]
    node.complete_watch(found)
    assert node.watch_complete and not scan_owed(path)
    node.close()
    assert store_at(path).watched_keys() == [entry(1)]


def test_a_scan_stopped_by_closing_leaves_the_store_to_be_scanned_again(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    tool = NodeStore(path, 0, KEY)
    tool.save([share_record(entry(1), row(10))])
    tool.close()
    node = store_at(path)
    node.close()  # a scan cut short by the node's stop returns what it had read
    node.complete_watch([])
    assert scan_owed(path)
    assert not store_at(path).watch_complete


def test_a_tool_save_after_one_that_rolled_back_still_marks_the_scan_owed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s44: the first tool save's transaction rolled back (a full disk), taking its
    `unwatched` mark with it while the flag in memory stayed down; the next tool save then
    wrote a row at L with no mark, and the next start trusted `watched` without it."""
    path = tmp_path / "store.sqlite"
    tool = NodeStore(path, 0, KEY)  # no `at_limit`: a tool, cannot judge
    real = tool._write_meta
    calls: list[int] = []

    def full_once(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(*args, **kwargs)

    monkeypatch.setattr(tool, "_write_meta", full_once)
    with pytest.raises(sqlite3.OperationalError):
        tool.save([share_record(entry(1), row(3))])
    tool.save([share_record(entry(2), row(LIMIT))])  # at L, not named in `watched`
    tool.close()
    node = store_at(path)
    assert not node.watch_complete and node.share_keys(at_limit) == [entry(2)]
    node.close()
