"""Erasure covers backups and rolled-back disks (issue 9 §5): when a share is erased the
node re-seals its store under a new row key and has its token destroy the old one, so a
copy of the data folder taken before the erase no longer opens with anything the node
still has. Against a real SoftHSM2 token."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.errors import AuthenticationFailed, BackupVaultError
from backupvault.fleet.messages import AcceptorRecord
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, StagedShare
from backupvault.node.softhsm import init_softhsm_token
from backupvault.node.store import NodeStore, StoreCorrupted, share_record, store_generation
from backupvault.node.token import (
    ROW_KEY_FILE,
    ROW_KEY_NEXT,
    ROW_KEY_PREFIX,
    SEALING_KEY_LABEL,
    SECRET_AAD_PREFIX,
    SOFTHSM2_CONF_ENV,
    RowKeyRing,
    TokenError,
    TokenSealer,
)

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
    with pytest.raises(TokenError, match="holds no key"):
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
