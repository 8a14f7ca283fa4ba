"""The store keeps an entry's manifest M once: a share row whose M is the entry value's
names it by SHA-256, and gets it back from the value when read. The reference never
dangles (a value moving to another M writes the share row again with M in full, in the
same transaction), a read racing that save still gets the right M, and a share row that
names an M its value does not hold is refused, never read with another M."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, ThresholdState
from backupvault.node import store as store_module
from backupvault.node.store import (
    SHARE_PREFIX,
    NodeStore,
    StoreCorrupted,
    share_record,
)
from backupvault.protocol import EntryStatus

KEY = os.urandom(32)
ENTRY = EntryId("alice-account", "root-key").to_bytes()
SHARE = b"\x01" + b"k" * 32
M1 = b"M1" + os.urandom(467)  # the size of a filled entry's manifest
M2 = b"M2" + os.urandom(467)


def value(version: int, manifest: bytes, status: int = EntryStatus.LIVE) -> AcceptorRecord:
    state = ThresholdState(status=status, version=version, manifest=manifest)
    replicated = ReplicatedValue([AppliedOp(b"op", version)], state.to_bytes())
    return AcceptorRecord(ENTRY, version, 1, version, 1, replicated.to_bytes())


def share(version: int, manifest: bytes, count: int = 1, held: bytes = SHARE) -> NodeShare:
    evaluated = [Evaluation(a, bytes([a]) * 32) for a in range(count)]
    return NodeShare(version, held, manifest, evaluated)


def stored_share_row(store: NodeStore) -> bytes:
    """The share row's value as the store keeps it (before M is put back)."""
    record = store.get(SHARE_PREFIX + ENTRY)
    assert record is not None
    return record.value


def test_a_share_row_beside_its_value_names_the_manifest_and_reads_it_back(
    tmp_path: Path,
) -> None:
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    row = share(1, M1, count=3)
    store.save([value(1, M1), share_record(ENTRY, row)])

    kept = stored_share_row(store)
    assert M1 not in kept  # once, in the value
    assert len(kept) < len(row.to_bytes()) - len(M1) + 40
    assert store.get_share(ENTRY) == row
    store.close()
    reopened = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    assert reopened.get_share(ENTRY) == row
    assert reopened.share_keys(lambda found: found.count == 3) == [ENTRY]  # the scan reads it
    reopened.close()


def test_a_share_row_saved_after_its_value_names_the_value_on_disk(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    store.save([value(1, M1)])
    store.save([share_record(ENTRY, share(1, M1, count=2))])
    assert M1 not in stored_share_row(store)
    assert store.get_share(ENTRY) == share(1, M1, count=2)


@pytest.mark.parametrize(
    "moved",
    [value(2, M2), value(2, b"", EntryStatus.DESTROYED), AcceptorRecord(ENTRY, 3, 1)],
    ids=["another manifest", "destroyed", "no value"],
)
def test_a_value_that_moves_on_writes_the_share_row_with_its_manifest_in_full(
    tmp_path: Path, moved: AcceptorRecord
) -> None:
    """A password change commits M2 while this node's share is still M1's; a destroyed
    entry's value holds no M; a value can be replaced by a bare promise. The share row
    still reads with the M it was checked against, also after a restart."""
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    row = share(1, M1, count=2)
    store.save([value(1, M1), share_record(ENTRY, row)])
    store.save([moved])
    assert M1 in stored_share_row(store)
    assert store.get_share(ENTRY) == row
    store.close()
    assert NodeStore(tmp_path / "store.sqlite", 0, KEY).get_share(ENTRY) == row


def test_a_value_that_keeps_its_manifest_leaves_the_share_row_alone(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    store.save([value(1, M1), share_record(ENTRY, share(1, M1))])
    before = store.get(SHARE_PREFIX + ENTRY)
    store.save([value(2, M1)])  # a counted attempt: same M, next ballot
    assert store.get(SHARE_PREFIX + ENTRY) == before


def test_erased_and_staged_rows_keep_their_manifest_in_full(tmp_path: Path) -> None:
    """An erased row never names M (a value moving on would then write an erased row
    again); a share row of another version than the value's holds its own M."""
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    store.save([value(1, M1), share_record(ENTRY, share(1, M1, held=b""))])
    assert M1 in stored_share_row(store)
    store.save([share_record(ENTRY, share(2, M2))])
    assert M2 in stored_share_row(store)
    assert store.get_share(ENTRY) == share(2, M2)


def test_a_read_racing_the_save_that_moves_the_value_gets_the_right_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unlocked read takes the share row that names M1, then a save moves the value to
    M2 (and writes the share row in full) before the value is read: the read is made
    again under the lock, and never refused as damage."""
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    row = share(1, M1)
    store.save([value(1, M1), share_record(ENTRY, row)])
    real_get = store.get
    raced = []

    def get(key: bytes) -> AcceptorRecord | None:
        if key == ENTRY and not raced:
            raced.append(True)
            store.save([value(2, M2)])
        return real_get(key)

    monkeypatch.setattr(store, "get", get)
    assert store.get_share(ENTRY) == row
    assert raced


def test_a_share_row_naming_a_manifest_its_value_does_not_hold_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the reference left dangling (here: the save that moves the value is made
    without writing the share row again), the row is refused as damage, never read with
    the value's other M (the node verifies the owner's statements with it)."""
    store = NodeStore(tmp_path / "store.sqlite", 0, KEY)
    store.save([value(1, M1), share_record(ENTRY, share(1, M1))])
    monkeypatch.setattr(NodeStore, "_keep_manifests_once", lambda self, latest: None)
    store.save([value(2, M2)])
    with pytest.raises(StoreCorrupted, match="names a manifest its entry's value does not hold"):
        store.get_share(ENTRY)


def test_a_format_1_store_with_manifests_in_full_reads_and_becomes_format_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite"
    with monkeypatch.context() as before:  # as a store of format 1 wrote its rows
        before.setattr(store_module, "_share_to_store", lambda row, beside: row)
        store = NodeStore(path, 0, KEY)
        store.save([value(1, M1), share_record(ENTRY, share(1, M1))])
        store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=1")
    reopened = NodeStore(path, 0, KEY)
    assert M1 in stored_share_row(reopened)
    assert reopened.get_share(ENTRY) == share(1, M1)
    reopened.save([share_record(ENTRY, share(1, M1, count=2))])  # its next write names M
    assert M1 not in stored_share_row(reopened)
    assert reopened.get_share(ENTRY) == share(1, M1, count=2)
    reopened.close()
    # A store of an earlier format is scanned for shares left at L at a node's first
    # start (test_store_watched.py) before its `watched` table is trusted.
    assert not NodeStore(path, 0, KEY).watch_complete
