"""Erasure covers backups and rolled-back disks (issue 9 §5): when a share is erased the
node re-seals its store under a new row key and has its token destroy the old one, so a
copy of the data folder taken before the erase no longer opens with anything the node
still has. Against a real SoftHSM2 token."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.errors import AuthenticationFailed, BackupVaultError
from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, StagedShare, ThresholdState
from backupvault.node import main as node_main
from backupvault.node.softhsm import init_softhsm_token
from backupvault.node.store import (
    KEY_GROUP_BITS,
    KEY_GROUPS,
    LEAVES,
    SHARE_PREFIX,
    STORE_FORMAT,
    NodeStore,
    StoreCorrupted,
    bucket_of,
    leaf_of,
    share_record,
    store_generation,
)
from backupvault.node.token import (
    ROW_KEY_FILE,
    ROW_KEY_NEXT,
    ROW_KEY_PREFIX,
    SEALING_KEY_LABEL,
    SECRET_AAD_PREFIX,
    SOFTHSM2_CONF_ENV,
    RowKeyMoved,
    RowKeyRing,
    TokenError,
    TokenSealer,
)
from backupvault.protocol import EntryStatus

STORAGE_KEY = os.urandom(32)
ENTRY_A = EntryId("alice-account", "root-key").to_bytes()
ENTRY_B = EntryId("bob-account", "root-key").to_bytes()
SHARE = b"\x01" + b"s" * 32


def _share_row(share: bytes) -> NodeShare:
    return NodeShare(1, share, b"manifest" if share else b"", [Evaluation(1, b"\x01" * 32)])


@pytest.fixture
def sealer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenSealer]:
    monkeypatch.delenv(SOFTHSM2_CONF_ENV, raising=False)
    config = init_softhsm_token(tmp_path / "softhsm", "rotation", "pin-4821-ab", "so-9134-cd")
    with TokenSealer(config) as sealer:
        sealer.ensure_sealing_key()
        yield sealer


def _open(data: Path, sealer: TokenSealer) -> NodeStore:
    """The store as the node opens it (node/main.py): row key by the recorded generation."""
    ring = RowKeyRing(sealer, data)
    row_key = ring.load(store_generation(data / "store.sqlite"))
    store = NodeStore(data / "store.sqlite", 0, STORAGE_KEY, row_key, ring.generation())
    store.key_rotation = ring
    store.finish_owed_rotation()
    return store


def _node(tmp_path: Path, sealer: TokenSealer) -> tuple[Path, NodeStore]:
    data = tmp_path / "data"
    data.mkdir()
    RowKeyRing(sealer, data).create()
    return data, _open(data, sealer)


def test_a_copy_taken_before_the_erase_does_not_open_with_anything_the_node_has(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    store.save([AcceptorRecord(ENTRY_B, 4, 1)])
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)  # a backup, or the disk image a rollback brings back
    old_key = RowKeyRing(sealer, backup).load(1)

    store.save([share_record(ENTRY_A, _share_row(b""))])  # erased: rotates

    assert sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "2"]
    # The copy's row key was sealed by a token key that no longer exists...
    with pytest.raises(TokenError, match="copy from before the node erased a key share"):
        RowKeyRing(sealer, backup).load(1)
    # ...and the sealing key, which the node keeps, does not open it either.
    blob = (backup / ROW_KEY_FILE).read_bytes()[5:]
    with pytest.raises(AuthenticationFailed):
        sealer.unseal(blob, SECRET_AAD_PREFIX + b"row-key")
    # The node's current row key does not open the copy's rows.
    current = RowKeyRing(sealer, data).load(2)
    with pytest.raises(StoreCorrupted):
        NodeStore(backup / "store.sqlite", 0, STORAGE_KEY, current, 1)
    # Control: the old key (which an attacker could only have read out before the erase)
    # does open the copy, so what closed it is the destroyed key alone.
    copy = NodeStore(backup / "store.sqlite", 0, STORAGE_KEY, old_key, 1)
    found = copy.get_share(ENTRY_A)
    assert found is not None and found.share == SHARE
    copy.close()
    # The node itself goes on: everything live is still there, under the new key.
    store.close()
    reopened = _open(data, sealer)
    assert reopened.generation == 2
    erased = reopened.get_share(ENTRY_A)
    assert erased is not None and erased.share == b""
    kept = reopened.get(ENTRY_B)
    assert kept is not None and kept.promised_round == 4
    reopened.close()


def test_a_data_folder_restored_from_before_an_erase_says_why_and_what_to_do(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """docs/operations.md told operators to restore a lost data folder "from any backup";
    once the node has erased any share since (a password change, a delete), the backup's
    row key is gone with its token key, by design. The node refused to start with "token
    ... holds no key 'backupvault row key 1' ... what that key sealed cannot be opened
    any more", which said neither that the folder is an older copy nor how to go on."""
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)
    store.save([share_record(ENTRY_A, _share_row(b""))])  # erased: rotates to generation 2
    store.close()
    with pytest.raises(TokenError) as refused:
        _open(backup, sealer)
    message, hint = refused.value.message, str(refused.value.hint)
    assert "generation 1" in message and "generation 2" in message
    assert "copy" in message and "erase" in message
    assert "node init" in hint and "row-key.sealed" in hint and "catches up" in hint
    # The node's own folder still opens: the refusal is the copy's alone.
    _open(data, sealer).close()


def test_rotation_keeps_names_versions_and_the_counter(tmp_path: Path, sealer: TokenSealer) -> None:
    _, store = _node(tmp_path, sealer)
    store.save([AcceptorRecord(ENTRY_B, 4, 1)])
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    counter, changes = store.counter, store.changed_since(store.store_id, 0, 10)
    store.save([share_record(ENTRY_A, _share_row(b""))])
    assert store.counter == counter + 1  # the erase itself; the rotation adds no step
    again = store.changed_since(store.store_id, 0, 10)
    assert [r.key for r in again.records] == [r.key for r in changes.records]
    store.verify_all()
    store.close()


def test_a_rotation_a_crash_interrupted_is_undone_or_finished_at_start(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    ring = RowKeyRing(sealer, data)
    # Crash before the store took the new key: undone, the new token key destroyed.
    ring.begin_rotation()
    store.close()
    store = _open(data, sealer)
    assert not (data / ROW_KEY_NEXT).exists()
    assert sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "1"]
    assert store.get_share(ENTRY_A) is not None
    # Crash after the store was re-sealed, before the old key was destroyed: finished.
    generation, key = ring.begin_rotation()
    store.rotate(key, generation)
    store.close()
    store = _open(data, sealer)
    assert store.generation == 2 and not (data / ROW_KEY_NEXT).exists()
    assert sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "2"]
    found = store.get_share(ENTRY_A)
    assert found is not None and found.share == SHARE
    store.close()


def _files(data: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(data.iterdir()) if f.is_file()}


def test_a_reader_beside_the_node_reads_either_side_of_a_rotation_and_changes_nothing(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """`node inspect` runs beside the live node: it reads the key its copy of the store
    needs and never finishes or undoes the rotation under way (as `load` does at start),
    which would destroy the key the node is moving to."""
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    ring = RowKeyRing(sealer, data)
    _, old_key = ring.read(1)
    generation, new_key = ring.begin_rotation()  # the node is between the two steps
    before, labels = _files(data), sealer.key_labels(ROW_KEY_PREFIX)
    assert ring.read(1) == (1, old_key) and ring.read(2) == (2, new_key)
    assert ring.read(0) == (1, old_key)  # a new store: the current file's
    store.rotate(new_key, generation)  # the store took the new key, the file not yet
    assert ring.read(2) == (2, new_key) and ring.read(1) == (1, old_key)
    assert _files(data).keys() == before.keys()
    assert sealer.key_labels(ROW_KEY_PREFIX) == labels
    ring.finish_rotation(generation)
    assert ring.read(2) == (2, new_key) and ring.read(0) == (2, new_key)
    with pytest.raises(RowKeyMoved, match="past generation 1"):
        ring.read(1)  # its token key is gone
    with pytest.raises(RowKeyMoved, match="past generation 3"):
        ring.read(3)
    store.close()


def test_a_copy_of_the_store_rotated_past_before_its_key_is_read_is_taken_again(
    tmp_path: Path, sealer: TokenSealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a soak hit: the node rotated between the inspector's read of the key and
    its copy of the store ("sealed under row key generation 24, not 23"). The copy now
    comes first and names its generation; a rotation before the key is read makes
    another copy."""
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    ring = RowKeyRing(sealer, data)
    real_snapshot = node_main._snapshot
    copies = []

    def snapshot_then_rotate(source: Path, copy: Path) -> None:
        real_snapshot(source, copy)
        copies.append(store_generation(copy))
        if len(copies) == 1:  # the node rotates right after the first copy
            generation, key = ring.begin_rotation()
            store.rotate(key, generation)
            ring.finish_rotation(generation)

    monkeypatch.setattr(node_main, "_snapshot", snapshot_then_rotate)
    copy = tmp_path / "copy.sqlite"
    generation, key = node_main._copy_store(data / "store.sqlite", copy, ring)
    assert copies == [1, 2] and generation == 2
    opened = NodeStore(copy, 0, STORAGE_KEY, key, generation)
    found = opened.get_share(ENTRY_A)
    assert found is not None and found.share == SHARE
    opened.close()
    store.close()


def test_a_node_rotating_at_every_copy_is_reported_not_misread(
    tmp_path: Path, sealer: TokenSealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, store = _node(tmp_path, sealer)
    ring = RowKeyRing(sealer, data)
    real_snapshot = node_main._snapshot

    def snapshot_then_rotate(source: Path, copy: Path) -> None:
        real_snapshot(source, copy)
        generation, key = ring.begin_rotation()
        store.rotate(key, generation)
        ring.finish_rotation(generation)

    monkeypatch.setattr(node_main, "_snapshot", snapshot_then_rotate)
    with pytest.raises(RowKeyMoved, match="rotated its row key past"):
        node_main._copy_store(data / "store.sqlite", tmp_path / "copy.sqlite", ring)
    assert store.generation == 1 + node_main.COPY_ATTEMPTS
    store.close()


def test_a_store_opened_with_another_generation_is_refused(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    data, store = _node(tmp_path, sealer)
    store.save([AcceptorRecord(ENTRY_B, 4, 1)])
    store.close()
    with pytest.raises(StoreCorrupted, match="generation 1, not 2"):
        NodeStore(data / "store.sqlite", 0, STORAGE_KEY, os.urandom(32), 2)


def test_the_sealing_key_is_never_destroyed(sealer: TokenSealer) -> None:
    with pytest.raises(BackupVaultError, match="never destroyed"):
        sealer.destroy_key(SEALING_KEY_LABEL)


def test_a_share_staged_for_a_new_entry_is_no_erasure(tmp_path: Path, sealer: TokenSealer) -> None:
    """A new entry's first share row holds only a staged share (no version yet): nothing
    was erased, so the store keeps its row key (a re-seal of every row at every
    registration took minutes at 1,000,000 entries); erasing a share it held still
    rotates."""
    _, store = _node(tmp_path, sealer)
    staged = NodeShare(0, b"", b"", [], staged=[StagedShare(SHARE, b"manifest")])
    store.save([share_record(ENTRY_A, staged)])
    assert store.generation == 1 and sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "1"]
    store.save([share_record(ENTRY_A, _share_row(SHARE))])  # committed: held
    store.save([share_record(ENTRY_A, _share_row(b""))])  # erased
    assert store.generation == 2 and sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "2"]
    store.close()


# ---- a key per bucket: an erasure re-seals one bucket, not the store ---------------------


def _raw(path: Path, table: str) -> dict[object, bytes]:
    """Sealed rows straight from the file: record rows by name, key rows by bucket."""
    column = "name" if table == "record" else "id"
    with sqlite3.connect(path) as db:
        found = db.execute(f"SELECT {column}, row FROM {table}").fetchall()
    return {bytes(k) if isinstance(k, bytes) else k: bytes(row) for k, row in found}


def _opens(key: bytes, sealed: bytes, aad: bytes) -> bool:
    try:
        AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except InvalidTag:
        return False
    return True


def _share_after_restart(data: Path, sealer: TokenSealer, entry: bytes) -> bytes:
    """The entry's share as a node started on the folder reads it, every bucket checked."""
    store = _open(data, sealer)
    store.verify_all()
    row = store.get_share(entry)
    store.close()
    assert row is not None
    return row.share


def _every_key(store: NodeStore) -> list[bytes]:
    """Every bucket key and leaf key the store holds."""
    keys = store._bucket_keys.values()
    return [*(k.key for k in keys), *(k.leaf_key(leaf) for k in keys for leaf in range(LEAVES))]


def _others(count: int) -> list[AcceptorRecord]:
    return [AcceptorRecord(EntryId(f"user{i}", "root-key").to_bytes(), 4, 1) for i in range(count)]


def _share_rows_placed(store: NodeStore) -> tuple[bytes, bytes, bytes]:
    """Three entries whose share rows lie in one bucket: the first two in one leaf, the
    third in another (found among a few thousand names: two of 2^20 leaves meet by the
    birthday bound, two of 4,096 buckets far sooner)."""
    by_leaf: dict[tuple[int, int], bytes] = {}
    for number in range(20_000):
        entry = EntryId(f"placed{number}", "root-key").to_bytes()
        name = store.name_of(SHARE_PREFIX + entry)
        place = (bucket_of(name), leaf_of(name))
        if place in by_leaf:
            for (bucket, leaf), third in by_leaf.items():
                if bucket == place[0] and leaf != place[1]:
                    return by_leaf[place], entry, third
        by_leaf.setdefault(place, entry)
    raise AssertionError("no two names met in a leaf")


def test_an_erasure_re_seals_its_leaf_only_and_wraps_every_bucket_key_anew_in_64_rows(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """The cost of an erasure does not grow with the store: it held every row in memory
    and re-sealed all of them (2.4 s and 430 MB more at 100,000 entries), then every row
    of the erased row's bucket (606 ms at 10,000,000 entries), now the rows of its leaf
    (about N / 2^20 entries) and the keys above them: the bucket keys in 64 rows of a
    group each (store format 7), where they took a row each (4,096)."""
    data, store = _node(tmp_path, sealer)
    path = data / "store.sqlite"
    erased, same_leaf, same_bucket = _share_rows_placed(store)
    placed = [share_record(e, _share_row(SHARE)) for e in (erased, same_leaf, same_bucket)]
    store.save([*placed, *_others(40)])
    erased_name = store.name_of(SHARE_PREFIX + erased)
    same_leaf_name = store.name_of(SHARE_PREFIX + same_leaf)
    erased_bucket = bucket_of(erased_name)
    rows_before, keys_before = _raw(path, "record"), _raw(path, "key_group")
    digests_before = _raw(path, "bucket")
    assert len({bucket_of(n) for n in rows_before}) > 30  # spread over many buckets
    assert _raw(path, "leaf_key") == {}  # a bucket's leaf keys are derived until an erasure

    store.save([share_record(erased, _share_row(b""))])  # erased: rotates

    rows_after, keys_after = _raw(path, "record"), _raw(path, "key_group")
    for name, row in rows_after.items():
        assert isinstance(name, bytes)
        if name in (erased_name, same_leaf_name):
            assert row != rows_before[name]  # re-sealed (the erased row itself: rewritten)
        else:
            assert row == rows_before[name]  # not touched: its bucket's other leaf too
    assert keys_after.keys() == keys_before.keys()
    assert len(keys_after) <= KEY_GROUPS == 64
    assert keys_after.keys() == {bucket_of(n) >> KEY_GROUP_BITS for n in rows_before}
    assert all(keys_after[g] != keys_before[g] for g in keys_before)  # wrapped anew
    assert _raw(path, "leaf_key").keys() == {erased_bucket}  # the bucket's leaf keys listed
    # The bucket digests, under a key no erasure changes: only the written bucket's moved.
    changed = {b for b, row in _raw(path, "bucket").items() if digests_before[b] != row}
    assert changed == {erased_bucket}
    assert store.generation == 2
    store.close()
    reopened = _open(data, sealer)
    reopened.verify_all()
    assert {r.key for r in reopened.load()} == {r.key for r in _others(40)}
    gone = reopened.get_share(erased)
    assert gone is not None and gone.share == b""
    for kept in (same_leaf, same_bucket):
        row = reopened.get_share(kept)
        assert row is not None and row.share == SHARE

    # A second erasure in the same bucket, another leaf: the listed keys change again.
    listed_before = _raw(path, "leaf_key")[erased_bucket]
    reopened.save([share_record(same_bucket, _share_row(b""))])
    assert _raw(path, "leaf_key")[erased_bucket] != listed_before
    reopened.close()
    assert _share_after_restart(data, sealer, same_leaf) == SHARE


def test_the_erased_row_in_an_older_copy_opens_with_no_key_the_node_has(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """The attack: a copy of the data folder from before the erasure, and everything the
    node holds after it (its row key, every bucket key). The erased row stays shut; so do
    the copy's own bucket keys. What still opens, and is documented (docs/pkcs11.md):
    rows of other buckets in the copy, with the node's key of that bucket: older states
    of entries it erased nothing of."""
    data, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE)), *_others(40)])
    shutil.copytree(data, tmp_path / "backup")  # the database with its WAL
    copy = tmp_path / "backup" / "store.sqlite"
    erased_name = store.name_of(SHARE_PREFIX + ENTRY_A)
    (erased_ver,) = (
        sqlite3.connect(copy)
        .execute("SELECT ver FROM record WHERE name = ?", (erased_name,))
        .fetchone()
    )

    store.save([share_record(ENTRY_A, _share_row(b""))])

    row_key = RowKeyRing(sealer, data).load(store.generation)
    node_keys = [row_key, *_every_key(store)]
    old_row = _raw(copy, "record")[erased_name]
    aad = store._aad(erased_name, erased_ver)
    assert not any(_opens(key, old_row, aad) for key in node_keys)
    for group, wrapped in _raw(copy, "key_group").items():
        assert isinstance(group, int)
        assert not _opens(row_key, wrapped, store._key_group_aad(group))
    other = next(
        r for r in _others(40) if bucket_of(store.name_of(r.key)) != bucket_of(erased_name)
    )
    other_name = store.name_of(other.key)
    (other_ver,) = (
        sqlite3.connect(copy)
        .execute("SELECT ver FROM record WHERE name = ?", (other_name,))
        .fetchone()
    )
    other_key = store._leaf_key(other_name)
    assert _opens(other_key, _raw(copy, "record")[other_name], store._aad(other_name, other_ver))
    store.close()


def test_a_store_sealed_before_bucket_keys_is_given_them_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of the previous format (every row under the row key, no bucket keys) is
    migrated once, when it is opened: nothing is lost, and its rows are then sealed
    under their buckets' keys."""
    path = tmp_path / "store.sqlite"
    row_key = os.urandom(32)
    store = NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    store.save([share_record(ENTRY_A, _share_row(SHARE)), *_others(20)])
    aads = {}
    # Back to the previous format: each row re-sealed under the row key itself.
    with sqlite3.connect(path) as db:
        for ver, name, row in db.execute("SELECT ver, name, row FROM record").fetchall():
            name = bytes(name)
            aad = aads[name] = store._aad(name, ver)
            key = store._leaf_key(name)
            plain = AESGCM(key).decrypt(row[:12], row[12:], aad)
            nonce = os.urandom(12)
            db.execute(
                "UPDATE record SET row = ? WHERE ver = ?",
                (nonce + AESGCM(row_key).encrypt(nonce, plain, aad), ver),
            )
        db.execute("DROP TABLE key_group")
    store.close()

    # Stopped in the middle (here: an error on the second bucket): the store is left as
    # it was, and the next open migrates it.
    real = NodeStore._reseal
    calls = 0

    def failing(self: NodeStore, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk went away")
        real(self, *args)

    monkeypatch.setattr(NodeStore, "_reseal", failing)
    with pytest.raises(OSError, match="went away"):
        NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    monkeypatch.setattr(NodeStore, "_reseal", real)

    migrated = NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    found = migrated.get_share(ENTRY_A)
    assert found is not None and found.share == SHARE
    assert [r.key for r in migrated.load()] == [r.key for r in _others(20)]
    for name, row in _raw(path, "record").items():
        assert isinstance(name, bytes)
        assert not _opens(row_key, row, aads[name])
        assert _opens(migrated._leaf_key(name), row, aads[name])
    migrated.close()


def test_a_second_erasure_in_a_bucket_with_listed_leaf_keys_leaves_an_older_copy_shut(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """The attack on the listed form: a copy taken after a first erasure in a bucket (its
    leaf keys listed under the bucket key), then a second erasure in another leaf of it.
    Nothing the node holds afterwards opens the copy's leaf keys or the row erased second;
    the leaf kept from before (the other entry in the first erased leaf) still opens, as
    rows of untouched leaves do."""
    data, store = _node(tmp_path, sealer)
    first, same_leaf, second = _share_rows_placed(store)
    store.save([share_record(e, _share_row(SHARE)) for e in (first, same_leaf, second)])
    store.save([share_record(first, _share_row(b""))])  # lists the bucket's leaf keys
    bucket = bucket_of(store.name_of(SHARE_PREFIX + second))
    shutil.copytree(data, tmp_path / "backup")
    copy = tmp_path / "backup" / "store.sqlite"
    second_name = store.name_of(SHARE_PREFIX + second)
    (second_ver,) = (
        sqlite3.connect(copy)
        .execute("SELECT ver FROM record WHERE name = ?", (second_name,))
        .fetchone()
    )
    copied_leaf_keys = _raw(copy, "leaf_key")[bucket]

    store.save([share_record(second, _share_row(b""))])

    row_key = RowKeyRing(sealer, data).load(store.generation)
    node_keys = [row_key, *_every_key(store)]
    old_row = _raw(copy, "record")[second_name]
    assert not any(_opens(k, old_row, store._aad(second_name, second_ver)) for k in node_keys)
    aad = store._leaf_keys_aad(bucket)
    assert not any(_opens(k, copied_leaf_keys, aad) for k in node_keys)
    kept = store.get_share(same_leaf)
    assert kept is not None and kept.share == SHARE
    store.close()


def _bucket_ver(path: Path, bucket: int) -> int:
    with sqlite3.connect(path) as db:
        (ver,) = db.execute("SELECT ver FROM bucket WHERE id = ?", (bucket,)).fetchone()
    return int(ver)


def _meta_top_before_5(db: sqlite3.Connection, store: NodeStore, row_key: bytes) -> None:
    """The counter row's `top` summed as stores before format 5 summed it: (id, version)
    of each bucket row, without its digest."""
    top = 0
    for bucket, ver in db.execute("SELECT id, ver FROM bucket").fetchall():
        top = (top + store._bucket_term_before_5(bucket, ver)) % 2**256
    (row,) = db.execute("SELECT row FROM meta").fetchone()
    plain = AESGCM(row_key).decrypt(row[:12], row[12:], store._meta_aad())
    assert plain[-1] == 1  # the mark that `top` sums digests: absent before format 5
    plain = plain[:24] + top.to_bytes(32, "big") + plain[56:-1]
    nonce = os.urandom(12)
    sealed = AESGCM(row_key).encrypt(nonce, plain, store._meta_aad())
    db.execute("UPDATE meta SET row = ?", (nonce + sealed,))


def _as_format_3(path: Path, store: NodeStore, row_key: bytes) -> None:
    """Rewrite a closed store as format 3 wrote it: each bucket's rows sealed under one
    bucket key, wrapped as 32 bytes, no leaf keys, the bucket rows under the row key."""
    bucket_keys = {bucket: os.urandom(32) for bucket in store._bucket_keys}
    with sqlite3.connect(path) as db:
        for ver, name, row in db.execute("SELECT ver, name, row FROM record").fetchall():
            name = bytes(name)
            aad = store._aad(name, ver)
            plain = AESGCM(store._leaf_key(name)).decrypt(row[:12], row[12:], aad)
            nonce = os.urandom(12)
            sealed = AESGCM(bucket_keys[bucket_of(name)]).encrypt(nonce, plain, aad)
            db.execute("UPDATE record SET row = ? WHERE ver = ?", (nonce + sealed, ver))
        _bucket_keys_before_7(db, store, row_key, bucket_keys)
        db.execute("DELETE FROM leaf_key")
        _bucket_rows_before_5(db, store, row_key)
        db.execute("PRAGMA user_version=3")


def _bucket_keys_before_7(
    db: sqlite3.Connection, store: NodeStore, row_key: bytes, wrapped: dict[int, bytes]
) -> None:
    """The bucket keys as stores before format 7 kept them: a `bucket_key` row per bucket
    (`wrapped`: bucket -> the row's plaintext), each under the row key."""
    db.execute("CREATE TABLE bucket_key (id INTEGER PRIMARY KEY, row BLOB NOT NULL)")
    for bucket, plain in wrapped.items():
        nonce = os.urandom(12)
        sealed = AESGCM(row_key).encrypt(nonce, plain, store._bucket_key_aad(bucket))
        db.execute("INSERT INTO bucket_key (id, row) VALUES (?, ?)", (bucket, nonce + sealed))
    db.execute("DROP TABLE key_group")


def _bucket_rows_before_5(db: sqlite3.Connection, store: NodeStore, row_key: bytes) -> None:
    """The bucket rows under the row key, and `top` without their digests, as in stores
    before format 5."""
    for bucket, ver, row in db.execute("SELECT id, ver, row FROM bucket").fetchall():
        aad = store._bucket_aad(bucket, ver)
        digest = store._bucket_rows_key[0].decrypt(row[:12], row[12:], aad)
        nonce = os.urandom(12)
        sealed = AESGCM(row_key).encrypt(nonce, digest, aad)
        db.execute("UPDATE bucket SET row = ? WHERE id = ?", (nonce + sealed, bucket))
    _meta_top_before_5(db, store, row_key)


def test_a_store_of_format_4_opens_and_becomes_the_current_format(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """Format 4 (leaf keys; its bucket rows under the row key, `top` without their
    digests; a `bucket_key` row per bucket) is read as it is, and made the current format
    in one transaction when opened."""
    data, store = _node(tmp_path, sealer)
    path = data / "store.sqlite"
    store.save([share_record(ENTRY_A, _share_row(SHARE)), *_others(40)])
    store.save([share_record(ENTRY_A, _share_row(b""))])  # a bucket's leaf keys listed
    row_key = RowKeyRing(sealer, data).load(store.generation)
    store.close()
    with sqlite3.connect(path) as db:
        _bucket_rows_before_5(db, store, row_key)
        wrapped = {bucket: keys.wrapped() for bucket, keys in store._bucket_keys.items()}
        _bucket_keys_before_7(db, store, row_key, wrapped)
        db.execute("PRAGMA user_version=4")

    opened = _open(data, sealer)
    assert {r.key for r in opened.load()} == {r.key for r in _others(40)}
    opened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (STORE_FORMAT,) == (7,)
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "bucket_key" not in tables  # grouped, in the same transaction
    assert _raw(path, "key_group").keys() == {b >> KEY_GROUP_BITS for b in store._bucket_keys}
    for bucket, row in _raw(path, "bucket").items():
        assert isinstance(bucket, int)
        assert not _opens(row_key, row, store._bucket_aad(bucket, _bucket_ver(path, bucket)))
    assert _share_after_restart(data, sealer, ENTRY_A) == b""


def test_a_store_of_format_3_is_read_and_its_bucket_re_sealed_whole_at_its_first_erasure(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """Stores of format 3 (one key per bucket) open as they are; a bucket's first erasure
    re-seals all of its rows, as format 3 did, and divides it into leaves, so the next
    erasure there re-seals one leaf."""
    data, store = _node(tmp_path, sealer)
    path = data / "store.sqlite"
    erased, same_leaf, same_bucket = _share_rows_placed(store)
    store.save([share_record(e, _share_row(SHARE)) for e in (erased, same_leaf, same_bucket)])
    store.save(_others(40))
    row_key = RowKeyRing(sealer, data).load(store.generation)
    store.close()
    _as_format_3(path, store, row_key)

    old = _open(data, sealer)
    for bucket, row in _raw(path, "bucket").items():  # re-sealed apart from the row key
        assert isinstance(bucket, int)
        assert not _opens(row_key, row, old._bucket_aad(bucket, _bucket_ver(path, bucket)))
    old.verify_all()
    assert {r.key for r in old.load()} == {r.key for r in _others(40)}
    bucket = bucket_of(old.name_of(SHARE_PREFIX + erased))
    before = _raw(path, "record")
    old.save([share_record(erased, _share_row(b""))])
    after = _raw(path, "record")
    same_bucket_name = old.name_of(SHARE_PREFIX + same_bucket)
    assert after[same_bucket_name] != before[same_bucket_name]  # the whole bucket
    assert _raw(path, "leaf_key") == {}  # divided by a new seed: nothing to list yet
    old.save([share_record(same_leaf, _share_row(b""))])
    assert _raw(path, "record")[same_bucket_name] == after[same_bucket_name]  # one leaf now
    assert _raw(path, "leaf_key").keys() == {bucket}
    old.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (STORE_FORMAT,)
    assert _share_after_restart(data, sealer, same_bucket) == SHARE


def test_listed_leaf_keys_removed_or_from_another_bucket_are_refused_at_open(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    data, store = _node(tmp_path, sealer)
    path = data / "store.sqlite"
    erased, _, _ = _share_rows_placed(store)
    store.save([share_record(erased, _share_row(SHARE)), *_others(40)])
    store.save([share_record(erased, _share_row(b""))])
    (bucket,) = _raw(path, "leaf_key")
    store.close()
    other = next(b for b in range(4096) if b != bucket)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE leaf_key SET id = ?", (other,))  # moved to another bucket's id
    with pytest.raises(StoreCorrupted, match="leaf keys are missing"):
        _open(data, sealer)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE leaf_key SET id = ?", (bucket,))
    _open(data, sealer).close()  # put back: it opens
    with sqlite3.connect(path) as db:
        (row,) = db.execute("SELECT row FROM leaf_key").fetchone()
        db.execute("UPDATE leaf_key SET row = ?", (bytes(row[:-1]) + bytes([row[-1] ^ 1]),))
    with pytest.raises(StoreCorrupted, match="leaf keys failed authentication"):
        _open(data, sealer)


def test_no_key_of_the_erased_leaf_stays_ready_in_memory_after_the_rotation(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """Review s44: AES-GCM objects are kept ready by their key's bytes; the erased leaf's
    old key stayed among them until the cache filled (8,192 keys), so a memory image
    taken after the erasure, with an older copy of the folder, opened the erased row."""
    _, store = _node(tmp_path, sealer)
    store.save([share_record(ENTRY_A, _share_row(SHARE)), *_others(40)])
    name = store.name_of(SHARE_PREFIX + ENTRY_A)
    old_leaf_key = store._leaf_key(name)
    assert store.get_share(ENTRY_A) is not None and old_leaf_key in store._aeads

    store.save([share_record(ENTRY_A, _share_row(b""))])

    assert store.generation == 2 and store._leaf_key(name) != old_leaf_key
    assert old_leaf_key not in store._aeads
    store.close()


class _KeysBeforeGoneAtRead(dict[int, Any]):
    """`_keys_before` that, on the reader's thread, lets the rotation roll back between
    the reader's two looks at the keys (`_row_keys`): the reader has taken the new keys,
    and then the old ones go."""

    def __init__(self, reader: threading.Thread, roll_back: Callable[[], None]) -> None:
        super().__init__()
        self._reader, self._roll_back = reader, roll_back

    def get(self, key: int, default: Any = None) -> Any:
        if threading.current_thread() is self._reader:
            self._roll_back()
        return super().get(key, default)


def test_a_reader_during_a_rotation_that_rolls_back_reads_the_row(tmp_path: Path) -> None:
    """Review s44: a rotation that failed at its commit (a full disk) put the old keys
    back without counting itself, so a reader that had taken the new keys, and found the
    old gone, took the row for a damaged one (`StoreCorrupted`) instead of reading again."""
    store = NodeStore(tmp_path / "store.sqlite", 0, STORAGE_KEY, os.urandom(32), 1)
    store.save([AcceptorRecord(ENTRY_A, 4, 1)])
    assert store.get(ENTRY_A) is not None  # the bucket's listing is kept
    bucket = bucket_of(store.name_of(ENTRY_A))
    in_rotation, may_fail = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def disk_full(changed: object) -> None:
        in_rotation.set()
        may_fail.wait(10)
        raise OSError("disk full")

    def rotate() -> None:
        try:
            store.rotate(os.urandom(32), 2, [bucket])
        except OSError as error:
            failed.append(error)

    rotation = threading.Thread(target=rotate)
    rolled_back = False

    def roll_back() -> None:
        nonlocal rolled_back
        if not rolled_back:
            rolled_back = True
            may_fail.set()
            rotation.join(10)

    store._write_leaf_keys = disk_full  # type: ignore[method-assign]
    store._keys_before = _KeysBeforeGoneAtRead(threading.current_thread(), roll_back)
    rotation.start()
    assert in_rotation.wait(10)
    try:
        record = store.get(ENTRY_A)
    finally:
        may_fail.set()
        rotation.join(10)
    assert failed and rolled_back and record is not None
    store.close()


def test_a_key_group_row_removed_or_put_back_is_refused_at_open(tmp_path: Path) -> None:
    """A group row holds the keys of up to 64 buckets. Removed, or put back from before
    one of its buckets had a key (it opens: same row key), that bucket's rows would read
    as an empty bucket's; refused."""
    path = tmp_path / "store.sqlite"
    row_key = os.urandom(32)
    store = NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    store.save(_others(5))
    groups = _raw(path, "key_group")
    taken = {bucket_of(store.name_of(r.key)) for r in _others(5)}
    group = next(iter(groups))
    assert isinstance(group, int)
    newcomer = next(
        r
        for r in _others(5000)
        if bucket_of(store.name_of(r.key)) >> KEY_GROUP_BITS == group
        and bucket_of(store.name_of(r.key)) not in taken
    )
    store.save([newcomer])  # a new bucket of that group: its row written again
    assert _raw(path, "key_group")[group] != groups[group]
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE key_group SET row = ? WHERE id = ?", (groups[group], group))
    with pytest.raises(StoreCorrupted, match="no key"):
        NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM key_group WHERE id = ?", (group,))
    with pytest.raises(StoreCorrupted, match="no key"):
        NodeStore(path, 0, STORAGE_KEY, row_key, 1)


@pytest.mark.parametrize("beside_its_value", [False, True])
def test_a_share_replaced_by_another_in_one_write_is_an_erasure(
    tmp_path: Path, sealer: TokenSealer, beside_its_value: bool
) -> None:
    """A password change's new share can take the old one's place in one group commit,
    with no empty row between: the old share is erased all the same, so the store
    rotates. A count moving on over the same share is no erasure. Also where the old row
    names its manifest by hash (the entry's value holds it, store format 2)."""
    _, store = _node(tmp_path, sealer)
    if beside_its_value:
        state = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"manifest")
        value = ReplicatedValue([AppliedOp(b"op", 1)], state.to_bytes()).to_bytes()
        store.save([AcceptorRecord(ENTRY_A, 1, 1, 1, 1, value)])
    store.save([share_record(ENTRY_A, _share_row(SHARE))])
    stored = store.get(SHARE_PREFIX + ENTRY_A)
    assert stored is not None and (b"manifest" not in stored.value) == beside_its_value
    counted = NodeShare(
        1, SHARE, b"manifest", [Evaluation(1, b"\x01" * 32), Evaluation(2, b"\x02" * 32)]
    )
    store.save([share_record(ENTRY_A, counted)])
    assert store.generation == 1
    changed = NodeShare(2, b"\x01" + b"t" * 32, b"manifest-2", [])
    store.save([share_record(ENTRY_A, changed)])
    assert store.generation == 2 and sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "2"]
    found = store.get_share(ENTRY_A)
    assert found is not None and found.share == changed.share
    store.close()


# ---- a disk owner around a detected rollback and an erasure ---------------------------


def _counted(count: int, share: bytes = SHARE) -> NodeShare:
    evaluated = [Evaluation(a, bytes([a]) * 32) for a in range(1, count + 1)]
    return NodeShare(1, share, b"manifest" if share else b"", evaluated)


def _write(store: NodeStore, sealer: TokenSealer, records: list[AcceptorRecord]) -> None:
    store.save(records, caught_up=True)  # as the node's group commit: the store, then the token
    sealer.advance_store_counter(store.counter)


def _copy(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def test_a_row_of_the_history_a_rollback_lost_cannot_be_put_back(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """After a rollback the store's versions started again where the restored copy had
    stopped, so the row settled after it could land at the very (name, version) a row of
    the lost history had: that row put back matched its seal and its bucket's digest, and
    was trusted, with its older, lower count."""
    data, store = _node(tmp_path, sealer)
    node_main.store_is_intact(store, sealer)
    _write(store, sealer, [share_record(ENTRY_A, _counted(0)), AcceptorRecord(b"other", 1, 1)])
    store.close()
    _copy(data, tmp_path / "copy")  # the attacker's older copy

    store = _open(data, sealer)
    assert node_main.store_is_intact(store, sealer)
    _write(store, sealer, [share_record(ENTRY_A, _counted(2))])
    name = store.name_of(SHARE_PREFIX + ENTRY_A)
    with sqlite3.connect(data / "store.sqlite") as db:
        lost_ver, lost_row = db.execute(
            "SELECT ver, row FROM record WHERE name = ?", (name,)
        ).fetchone()
    for count in (5, 9):
        _write(store, sealer, [share_record(ENTRY_A, _counted(count))])
    store.close()

    _copy(tmp_path / "copy", data)  # rolled back: found, and the count settled again at 9
    store = _open(data, sealer)
    assert node_main.store_is_intact(store, sealer) is False
    assert store.share_suspect(ENTRY_A) and store.catching_up
    _write(store, sealer, [share_record(ENTRY_A, _counted(9))])
    with sqlite3.connect(data / "store.sqlite") as db:
        (settled_ver,) = db.execute("SELECT ver FROM record WHERE name = ?", (name,)).fetchone()
    store.close()
    assert settled_ver > lost_ver  # a version the lost history never used

    with sqlite3.connect(data / "store.sqlite") as db:  # the node stopped; the lost row back
        db.execute("UPDATE record SET ver = ?, row = ? WHERE name = ?", (lost_ver, lost_row, name))
    store = _open(data, sealer)
    assert node_main.store_is_intact(store, sealer)
    with pytest.raises(StoreCorrupted):
        store.get_share(ENTRY_A)
    store.close()


def test_a_start_that_finds_a_rollback_leaves_no_half_written_state(
    tmp_path: Path, sealer: TokenSealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding a rollback raised the counter, then marked the catch-up, then distrusted
    the share rows, in three writes: a start that died after the first made the next one
    take the rolled-back store as intact, and trust its counts."""
    data, store = _node(tmp_path, sealer)
    node_main.store_is_intact(store, sealer)
    _write(store, sealer, [share_record(ENTRY_A, _counted(1))])
    store.close()
    _copy(data, tmp_path / "old")
    store = _open(data, sealer)
    for count in range(2, 10):
        _write(store, sealer, [share_record(ENTRY_A, _counted(count))])
    store.close()

    _copy(tmp_path / "old", data)
    store = _open(data, sealer)

    def disk_fails(self: NodeStore) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(NodeStore, "mark_catching_up", disk_fails)
        with pytest.raises(sqlite3.OperationalError):
            node_main.store_is_intact(store, sealer)
    store.close()

    store = _open(data, sealer)
    assert node_main.store_is_intact(store, sealer) is False
    assert store.share_suspect(ENTRY_A)
    store.close()


def test_an_erasure_whose_key_rotation_failed_is_rotated_before_the_node_serves(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """The erasure commits, then its bucket's key is rotated. If the rotation failed (a
    crash, or a folder squatting the next row key's file name), nothing remembered it:
    an older copy of the data folder opened with the current token, then and for good."""
    data, store = _node(tmp_path, sealer)
    node_main.store_is_intact(store, sealer)
    _write(store, sealer, [share_record(ENTRY_A, _counted(1))])
    name = store.name_of(SHARE_PREFIX + ENTRY_A)
    store.close()
    _copy(data, tmp_path / "backup")

    (data / ROW_KEY_NEXT).mkdir()
    store = _open(data, sealer)
    assert node_main.store_is_intact(store, sealer)
    with pytest.raises(OSError):  # the node stops serving (its writer fails)
        store.save([share_record(ENTRY_A, _counted(1, share=b""))], caught_up=True)
    assert store.rotation_owed == {bucket_of(name)}
    store.close()
    with pytest.raises(OSError):  # still squatted: the node does not start
        _open(data, sealer)
    (data / ROW_KEY_NEXT).rmdir()

    store = _open(data, sealer)  # the owed rotation is done before anything else
    assert store.rotation_owed == set() and store.generation == 2
    erased = store.get_share(ENTRY_A)
    assert erased is not None and erased.share == b""
    store.close()
    with pytest.raises(Exception, match="row key"):  # the old row key is gone from the token
        RowKeyRing(sealer, tmp_path / "backup").load(1)


def test_a_row_put_back_before_an_owed_rotation_is_refused_not_sealed_anew(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """A rotation owed across a restart re-seals its bucket whole (the erased row's leaf
    is not known any more). The erased share put back on the disk in between must be
    found by the whole bucket's check, never sealed under the keys that replace those its
    erasure destroys."""
    data, store = _node(tmp_path, sealer)
    node_main.store_is_intact(store, sealer)
    _write(store, sealer, [share_record(ENTRY_A, _counted(1))])
    name = store.name_of(SHARE_PREFIX + ENTRY_A)
    path = data / "store.sqlite"
    with sqlite3.connect(path) as db:
        ver, live = db.execute("SELECT ver, row FROM record WHERE name = ?", (name,)).fetchone()
    (data / ROW_KEY_NEXT).mkdir()  # the rotation fails: owed
    with pytest.raises(OSError):
        store.save([share_record(ENTRY_A, _counted(1, share=b""))], caught_up=True)
    store.close()
    (data / ROW_KEY_NEXT).rmdir()
    with sqlite3.connect(path) as db:  # the attacker puts the live share back
        db.execute("DELETE FROM record WHERE name = ?", (name,))
        db.execute("INSERT INTO record (ver, name, row) VALUES (?, ?, ?)", (ver, name, live))
    with pytest.raises(StoreCorrupted, match="rolled back"):
        _open(data, sealer)
    assert _raw(path, "record")[name] == bytes(live)  # as put back, under the old keys
    assert store_generation(path) == 1


def _value(status: int, manifest: bytes, promised: int) -> AcceptorRecord:
    state = ThresholdState(status=status, version=1, manifest=manifest)
    value = ReplicatedValue([AppliedOp(b"op", 1)], state.to_bytes()).to_bytes()
    return AcceptorRecord(ENTRY_A, promised, 1, 1, 1, value)


def test_rewriting_what_is_already_erased_rotates_nothing(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    """An entry becoming destroyed, and a share being erased, each rotate once. Writing
    the destroyed value or the erased row again (a hostile peer's Prepare raising the
    promise on it, a catch-up copy, a later count) erases nothing more: before, each such
    write rotated the row key again (the token made and destroyed a key, and every bucket
    key was wrapped anew), and any peer could ask for one with every message."""
    _, store = _node(tmp_path, sealer)
    store.save([_value(EntryStatus.LIVE, b"manifest", 1), share_record(ENTRY_A, _share_row(SHARE))])
    assert store.generation == 1
    store.save([_value(EntryStatus.DESTROYED, b"", 2), share_record(ENTRY_A, _share_row(b""))])
    assert store.generation == 2  # the erasure
    for promised in range(3, 8):
        store.save([_value(EntryStatus.DESTROYED, b"", promised)])
    erased = NodeShare(1, b"", b"manifest", [Evaluation(1, b"\x01" * 32)] * 2)
    store.save([share_record(ENTRY_A, erased)])
    assert store.generation == 2
    assert sealer.key_labels(ROW_KEY_PREFIX) == [ROW_KEY_PREFIX + "2"]
    assert store.shares_erased == 1  # the share once; not the value, nor the rewrites
    store.close()


_KEYS = b"\x01" + b"k" * 32  # keys of the derived form, well made


@pytest.mark.parametrize(
    "plain",
    [
        bytes([1, 33]) + _KEYS + bytes([1, 33]) + _KEYS,  # a slot twice
        bytes([2, 33]) + _KEYS + bytes([1, 33]) + _KEYS,  # slots falling
        bytes([64, 33]) + _KEYS,  # past the group's 64 buckets
        bytes([1, 31]) + _KEYS[:31],  # no form of keys is 31 bytes
        bytes([1, 33]) + _KEYS[:32],  # cut short
        bytes([1]),  # a lone byte
    ],
)
def test_a_key_group_row_that_opens_but_is_malformed_is_refused(
    tmp_path: Path, plain: bytes
) -> None:
    """Sealed under the right key (a bug, or a disk with the node's key), a group row
    whose entries are not one rising slot and length after another is refused at open,
    not read past its end or into another bucket."""
    path = tmp_path / "store.sqlite"
    row_key = os.urandom(32)
    store = NodeStore(path, 0, STORAGE_KEY, row_key, 1)
    store.save(_others(5))
    group = next(iter(_raw(path, "key_group")))
    assert isinstance(group, int)
    store.close()
    nonce = os.urandom(12)
    sealed = AESGCM(row_key).encrypt(nonce, plain, store._key_group_aad(group))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE key_group SET row = ? WHERE id = ?", (nonce + sealed, group))
    with pytest.raises(StoreCorrupted, match="bucket keys are malformed"):
        NodeStore(path, 0, STORAGE_KEY, row_key, 1)
