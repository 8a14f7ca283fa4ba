"""Storage that takes writes but refuses deletes (an S3 bucket whose key may not delete,
as one keeps backups from ransomware; or storage failing a lock's removal at the end):
the lock a command leaves there is a warning once the command's work is done, never its
failure. A backup's snapshot was stored and confirmed, a restore's copy moved onto --to:
reported as failures (exit 1), a backup said "no snapshot" of one that was saved and a
restore "nothing was written" of a --to that held it all; and damage a restore or check
met was reported as the lock's removal failing (exit 1), not as damage (exit 9)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from backup_trees import SMALL_PACKS, flip_chunk_byte, snapshot

from backupvault.backup.errors import StorageError
from backupvault.backup.repo import Repository, create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import Backend
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed


@pytest.fixture
def no_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: Backend, name: str) -> None:
        raise StorageError(f"cannot delete {name}: AccessDenied")

    monkeypatch.setattr(Backend, "delete", refused)


def _left(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not be removed" in r.getMessage()]


def test_a_backup_and_a_restore_are_done_and_say_the_lock_they_leave(
    tmp_path: Path, root_key: bytes, no_deletes: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backupvault.backup")
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(os.urandom(3000))
    repo = tmp_path / "repo"
    info = create_snapshot(source, str(repo), root_key, repo_params=SMALL_PACKS)
    assert os.listdir(repo / "snapshots") == [info.snapshot_id]
    (made,) = _left(caplog)
    assert "locks/" in made and "AccessDenied" in made

    caplog.clear()
    restored = restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert restored.backup_id == info.snapshot_id
    assert snapshot(tmp_path / "out") == snapshot(source)
    assert len(_left(caplog)) == 1


def test_damage_is_reported_as_damage_not_as_the_lock_left(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(os.urandom(3000))
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL_PACKS)
    flip_chunk_byte(repo, root_key, "a.txt")

    def refused(self: Backend, name: str) -> None:
        raise StorageError(f"cannot delete {name}: AccessDenied")

    monkeypatch.setattr(Backend, "delete", refused)
    with pytest.raises(AuthenticationFailed) as caught:
        restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert "could not be removed" in (caught.value.hint or "")
    assert not (tmp_path / "out").exists()
    result = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert result.errors and result.damaged_files
