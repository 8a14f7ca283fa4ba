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
from backupvault.fleet.records import Mark
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, ThresholdState
from backupvault.node.store import (
    SHARE_PREFIX,
    STORE_FORMAT,
    NodeStore,
    StoreCorrupted,
    StoreRecords,
    bucket_of,
    share_record,
    store_generation,
)
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
        found = db.execute("SELECT name, ver, row FROM record")
        return {bytes(n): (int(v), bytes(r)) for n, v, r in found}


def put(path: Path, name: bytes, ver: int, row: bytes) -> None:
    """Write a row behind the store's back (the name's current row goes, as the store's
    own writes do)."""
    with sqlite3.connect(path) as db:
        sql = "INSERT OR REPLACE INTO record (ver, name, row) VALUES (?, ?, ?)"
        db.execute(sql, (ver, name, row))


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
    ver, row = rows(path)[a]
    flipped = bytearray(row)
    flipped[position] ^= 0x04
    put(path, a, ver, bytes(flipped))
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


def test_an_older_row_under_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, b"old")])
    a = store.name_of(ENTRY_A)
    _, old_row = rows(path)[a]
    store.save([AcceptorRecord(ENTRY_A, 2, 1, 2, 1, b"new")])
    store.close()
    put(path, a, rows(path)[a][0], old_row)  # the version is authenticated with the row
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
    state = ThresholdState(status=status, manifest=secret, version=version)
    return ReplicatedValue([AppliedOp(b"op", version)], state.to_bytes()).to_bytes()


def test_a_destroyed_entry_cannot_be_read_back_from_any_file(tmp_path: Path) -> None:
    """Every copy the store ever wrote of the live entry (each a row that decrypts to a
    LIVE state with its manifest) is gone from the database, WAL and shm files
    once the tombstone is saved."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    a = store.name_of(ENTRY_A)
    live_rows = []
    for version in range(1, 6):
        value = _entry(EntryStatus.LIVE, b"manifest-%d" % version, version)
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


def test_a_store_of_a_newer_format_is_refused_as_newer(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (STORE_FORMAT,)
        db.execute(f"PRAGMA user_version={STORE_FORMAT + 1}")
    with pytest.raises(StoreCorrupted, match="newer version") as refused:
        make(path)
    assert "catches up" in (refused.value.hint or "")


def test_a_store_made_before_the_format_was_kept_opens_and_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=0")
    reopened = make(path)
    assert {r.key for r in reopened.load()} == {ENTRY_A, ENTRY_B}
    # Its `watched` table is owed a scan until a node's first start has made it.
    assert not reopened.watch_complete
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (STORE_FORMAT,) == (7,)
    assert not make(path).watch_complete  # said in the file: a restart still scans
    reopened.complete_watch([])
    assert make(path).watch_complete


# ---- reading one record at a time: nothing is loaded at open ----------------------------


def _many(count: int, round_: int = 1) -> list[AcceptorRecord]:
    return [
        AcceptorRecord(EntryId(f"user{i}", "root-key").to_bytes(), round_, 1, round_, 1, b"v")
        for i in range(count)
    ]


def test_records_are_read_one_at_a_time_and_checked_before_use(tmp_path: Path) -> None:
    """Opening reads no record row; a rolled-back row is refused when its entry is read,
    and by the background check, while entries in other buckets are still served."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(_many(50))
    victim = EntryId("user7", "root-key").to_bytes()
    old = rows(path)[store.name_of(victim)]
    store.save([AcceptorRecord(victim, 2, 1, 2, 1, b"newer")])
    store.close()
    put(path, name(path, victim), *old)
    reopened = make(path)  # no row is read: opening does not notice
    with pytest.raises(StoreCorrupted, match="rolled back"):
        reopened.get(victim)
    bucket = bucket_of(reopened.name_of(victim))
    other = next(r for r in _many(50) if bucket_of(reopened.name_of(r.key)) != bucket)
    assert reopened.get(other.key) == other
    with pytest.raises(StoreCorrupted, match="rolled back"):
        make(path).verify_all()


def test_a_removed_row_is_refused_when_its_entry_is_asked_for(tmp_path: Path) -> None:
    """An absent row is not taken for an entry that never existed: its bucket says it was."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    b = store.name_of(ENTRY_B)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM record WHERE name = ?", (b,))
    with pytest.raises(StoreCorrupted, match="removed"):
        make(path).get(ENTRY_B)


def test_a_bucket_rolled_back_with_its_rows_is_refused_at_open(tmp_path: Path) -> None:
    """A record row and its bucket row both put back as they were (consistent with each
    other): the bucket rows no longer match the store's counter, checked at every open."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, b"old")])
    a = store.name_of(ENTRY_A)
    old_row = rows(path)[a]
    with sqlite3.connect(path) as db:
        old_bucket = db.execute("SELECT id, ver, row FROM bucket").fetchone()
    store.save([AcceptorRecord(ENTRY_A, 2, 1, 2, 1, b"new")])
    store.close()
    put(path, a, *old_row)
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO bucket (id, ver, row) VALUES (?, ?, ?)", old_bucket)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        make(path)


def _in_one_bucket(store: NodeStore) -> tuple[bytes, bytes]:
    """Two entry keys whose names share a bucket."""
    seen: dict[int, bytes] = {}
    for number in range(10_000):
        key = EntryId(f"user{number}", "root-key").to_bytes()
        bucket = bucket_of(store.name_of(key))
        if bucket in seen:
            return seen[bucket], key
        seen[bucket] = key
    raise AssertionError("no two names met in a bucket")


def _copy_store(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for found in target.glob("store.sqlite*"):
        found.unlink()
    for found in source.glob("store.sqlite*"):
        (target / found.name).write_bytes(found.read_bytes())


@pytest.mark.parametrize("relabelled", [None, 3])
def test_a_bucket_row_of_a_forked_history_is_refused(
    tmp_path: Path, relabelled: int | None
) -> None:
    """Review s44b. A write the store committed and the token never counted (a crash
    between the two), lost when the disk owner restores the copy from before it: the
    store matches the token, so the node goes on and writes another history with the
    same counter and versions. A bucket row of the lost write has the (id, version) of
    the new one's; `top` summed (id, version) only, so that row, with the records it
    vouches for, put an older promise back unnoticed (after a rotation too, since the
    bucket rows stopped changing key). `top` now sums each row's digest as well. Also
    when the disk numbers the file as an older format: the counter row, sealed, says
    how `top` is summed."""
    data = tmp_path / "data"
    path = data / "store.sqlite"
    data.mkdir()
    store = make(path)
    x, z = _in_one_bucket(store)
    store.save([AcceptorRecord(x, 1, 1)])
    store.close()
    _copy_store(data, tmp_path / "before")
    store = make(path)
    store.save([AcceptorRecord(z, 1, 1)])  # committed; the token never counts it
    store.close()
    _copy_store(data, tmp_path / "lost")
    _copy_store(tmp_path / "before", data)  # the disk restored: matches the token
    store = make(path)
    store.save([AcceptorRecord(x, 2, 1)])  # the history that goes on: X promised 2
    name_x, name_z = store.name_of(x), store.name_of(z)
    bucket = bucket_of(name_x)
    store.close()

    put(path, name_x, *rows(tmp_path / "before" / "store.sqlite")[name_x])
    put(path, name_z, *rows(tmp_path / "lost" / "store.sqlite")[name_z])
    with sqlite3.connect(tmp_path / "lost" / "store.sqlite") as db:
        lost = db.execute("SELECT id, ver, row FROM bucket WHERE id = ?", (bucket,)).fetchone()
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO bucket (id, ver, row) VALUES (?, ?, ?)", lost)
        if relabelled is not None:
            db.execute(f"PRAGMA user_version={relabelled}")
    with pytest.raises(StoreCorrupted, match="rolled back"):
        make(path)


def test_changes_since_a_version_come_in_pages(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(_many(5))
    first = store.changed_since(b"", 0, 100)
    assert (len(first.records), first.more, first.since) == (5, False, 0)
    store.save([AcceptorRecord(ENTRY_A, 7, 1)])
    later = store.changed_since(first.store_id, first.upto, 100)
    assert later.records == [AcceptorRecord(ENTRY_A, 7, 1)]  # only what changed
    assert later.since == first.upto and later.upto > first.upto
    pages = [store.changed_since(store.store_id, 0, 2)]
    while pages[-1].more:
        pages.append(store.changed_since(store.store_id, pages[-1].upto, 2))
    assert [len(p.records) for p in pages] == [2, 2, 2]
    assert {r.key for p in pages for r in p.records} == {*(r.key for r in _many(5)), ENTRY_A}
    # A mark of another store (or ahead of this one) starts from the beginning.
    assert store.changed_since(os.urandom(16), first.upto, 100).since == 0
    assert store.changed_since(store.store_id, 10**6, 100).since == 0


def test_a_raised_counter_gives_the_store_a_new_id(tmp_path: Path) -> None:
    """After a rollback the versions may repeat: peers' marks of the old id must not hold."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records())
    before = store.store_id
    store.raise_counter(store.counter + 5)
    store.close()
    reopened = make(path)
    assert reopened.store_id != before
    assert reopened.changed_since(before, 1, 100).since == 0


def test_marks_are_saved_with_the_records(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    store.save(records(), {1: Mark(b"peer-one-store-i", 41), 3: Mark(b"x", 7)})
    store.save([AcceptorRecord(ENTRY_A, 9, 1)], {3: Mark(b"x", 9)})
    store.close()
    assert make(path).marks() == {1: Mark(b"peer-one-store-i", 41), 3: Mark(b"x", 9)}


def test_the_cache_in_front_of_the_store_stays_bounded(tmp_path: Path) -> None:
    store = make(tmp_path / "store.sqlite")
    store.save(_many(30))
    source = StoreRecords(store, capacity=10)
    for record in _many(30):
        assert source.get(record.key) == record
    assert len(source._cache) == 10
    newer = AcceptorRecord(EntryId("user3", "root-key").to_bytes(), 5, 1)
    source.put(newer)
    assert source.get(newer.key) == newer  # put and not yet saved: the replica sees it
    assert store.get(newer.key) != newer
    store.save([newer])
    source.saved([newer])
    assert source.get(newer.key) == newer == store.get(newer.key)


def test_rows_keep_large_ballots_and_empty_values(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    kept = [AcceptorRecord(ENTRY_A, 2**40, 65535, 2**33, 7, b""), AcceptorRecord(ENTRY_B)]
    make(path).save(kept)
    reopened = make(path)
    assert [reopened.get(ENTRY_A), reopened.get(ENTRY_B)] == kept


# ---- share rows (the threshold flow) -------------------------------------------------


def _share_row(version: int, share: bytes, count: int) -> NodeShare:
    evaluated = [Evaluation(a, bytes([a]) * 32) for a in range(1, count + 1)]
    return NodeShare(version, share, b"manifest" if share else b"", evaluated)


def test_share_rows_never_leave_the_node(tmp_path: Path) -> None:
    """Catching up hands peers records, never this node's key shares; `load` (node
    inspect) does not list them either."""
    store = make(tmp_path / "store.sqlite")
    share = b"\x01" + b"k" * 32
    store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, b"value a")])
    store.save([share_record(ENTRY_A, _share_row(1, share, 2))])
    assert store.get_share(ENTRY_A) == _share_row(1, share, 2)
    assert store.get_share(ENTRY_B) is None
    changes = store.changed_since(b"", 0, 100)
    assert [r.key for r in changes.records] == [ENTRY_A]
    assert [r.key for r in store.load()] == [ENTRY_A]
    assert share not in files(tmp_path)  # sealed like every row
    store.close()


def test_a_share_row_rolled_back_to_a_lower_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    share = b"\x01" + b"k" * 32
    store.save([share_record(ENTRY_A, _share_row(1, share, 1))])
    name_a = store.name_of(SHARE_PREFIX + ENTRY_A)
    old = rows(path)[name_a]
    store.save([share_record(ENTRY_A, _share_row(1, share, 2))])
    store.close()
    put(path, name_a, *old)
    with pytest.raises(StoreCorrupted, match="rolled back"):
        make(path).get_share(ENTRY_A)


def test_an_erased_share_cannot_be_read_back_from_any_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = make(path)
    share = b"\x01" + b"s" * 32
    name_a = store.name_of(SHARE_PREFIX + ENTRY_A)
    held = []
    for count in range(1, 4):
        store.save([share_record(ENTRY_A, _share_row(1, share, count))])
        store.save([AcceptorRecord(ENTRY_B, count, 1)])
        held.append(rows(path)[name_a][1])
    assert any(row in files(tmp_path) for row in held)
    store.save([share_record(ENTRY_A, _share_row(1, b"", 3))])
    raw = files(tmp_path)
    for row in held:
        assert row[12:28] not in raw
    found = make(path).get_share(ENTRY_A)
    assert found is not None and found.share == b""


def test_share_rows_found_behind_a_rollback_stay_suspect_across_restarts(
    tmp_path: Path,
) -> None:
    """After a detected rollback the rows then in the store stay suspect on every later
    start (a clean restart must not trust a rolled-back count again), until rewritten."""
    path = tmp_path / "store.sqlite"
    store = make(path)
    share = b"\x01" + b"k" * 32
    store.save([share_record(ENTRY_A, _share_row(1, share, 1))])
    store.save([share_record(ENTRY_B, _share_row(1, share, 1))])
    assert not store.share_suspect(ENTRY_A)  # no rollback seen
    store.distrust_share_rows()
    store.close()
    store = make(path)  # a clean restart: the mark is in the counter row
    assert store.share_suspect(ENTRY_A) and store.share_suspect(ENTRY_B)
    store.save([share_record(ENTRY_A, _share_row(1, share, 2))])
    store.close()
    store = make(path)
    assert not store.share_suspect(ENTRY_A)  # written since
    assert store.share_suspect(ENTRY_B)
    assert not store.share_suspect(EntryId("carol", "root-key").to_bytes())  # no row


@pytest.mark.parametrize(
    "damage",
    [
        "file is not a database",
        "UPDATE row_key SET generation = 'abc'",
        "UPDATE bucket SET ver = 'x'",
        "UPDATE meta SET row = NULL",
        "UPDATE key_group SET row = 5",
    ],
)
def test_a_malformed_store_is_refused_as_damaged_not_with_a_traceback(
    tmp_path: Path, damage: str
) -> None:
    """Only sealed rows are authenticated; the clear columns of a damaged file can hold
    anything, and gave raw sqlite3, ValueError or TypeError exceptions."""
    path = tmp_path / "store.sqlite"
    made = NodeStore(path, 0, b"k" * 32)
    made.save([AcceptorRecord(b"a", 1, 0), AcceptorRecord(b"b", 2, 0)])
    made.close()
    if damage == "file is not a database":
        path.write_bytes(b"x" * 5000)
        for extra in ("-wal", "-shm"):
            Path(f"{path}{extra}").unlink(missing_ok=True)
    else:
        with sqlite3.connect(path) as db:
            db.execute(damage)
    with pytest.raises(StoreCorrupted, match=r"malformed|rolled back"):
        store_generation(path)
        store = NodeStore(path, 0, b"k" * 32)
        store.verify_all()
        store.get(b"a")
