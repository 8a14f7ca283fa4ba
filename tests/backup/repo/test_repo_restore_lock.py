"""A restore holds a shared lock, as `backup check` does (review s60): a prune on another
device that ran while a restore read its packs deleted packs the restore had planned to
read, and the restore failed as "damaged" (exit 9, "running it again does not help"),
though nothing was: check found no error and the same restore ran again fine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backup_trees import SMALL_PACKS, snapshot

from backupvault.backup.errors import StorageError
from backupvault.backup.repo import (
    Repository,
    create_snapshot,
    maintenance,
    restore,
    restore_snapshot,
)
from backupvault.backup.repo.backend import Backend
from backupvault.backup.repo.repository import RepositoryLocked
from backupvault.backup.storage import Storage


def _history(tmp_path: Path, root_key: bytes) -> tuple[Path, str, Path]:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(30):
        (source / f"f{i:02}").write_bytes(os.urandom(200))
    repo_path = tmp_path / "repo"
    first = create_snapshot(source, str(repo_path), root_key, repo_params=SMALL_PACKS)
    for i in range(0, 30, 2):  # half the files change: packs end up part-used
        (source / f"f{i:02}").write_bytes(os.urandom(200))
    create_snapshot(source, str(repo_path), root_key)
    return repo_path, first.snapshot_id, source


def test_a_prune_elsewhere_during_a_restore_waits_for_it(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path, first, source = _history(tmp_path, root_key)
    expected = snapshot(source)
    plan = restore.plan
    refused: list[str] = []

    def plan_then_prune_elsewhere(*args: object) -> None:
        plan(*args)  # the restore has its index and its plan
        other = Repository.open(Storage(str(repo_path)), root_key)  # another device
        try:
            maintenance.forget(other, maintenance.Policy(), dry_run=False, ids=[first])
            maintenance.prune(other, dry_run=False, max_unused=0.0)
        except RepositoryLocked as err:
            refused.append(err.message)

    monkeypatch.setattr(restore, "plan", plan_then_prune_elsewhere)
    info = restore_snapshot(str(repo_path), root_key, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == expected and info.warnings == []
    assert len(refused) == 1  # forget and prune are kept out while the restore reads
    assert Repository.open(Storage(str(repo_path)), root_key).locks() == []  # released


def test_a_restore_from_storage_it_cannot_write_runs_without_a_lock_and_says_so(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path, _, source = _history(tmp_path, root_key)
    put = Backend.put

    def read_only(self: Backend, name: str, *args: object, **kwargs: object) -> None:
        if name.startswith("locks/"):
            raise StorageError(f"cannot store {name}: permission denied")
        put(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Backend, "put", read_only)
    info = restore_snapshot(str(repo_path), root_key, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == snapshot(source)
    assert len(info.warnings) == 1 and "restored without a lock" in info.warnings[0]
    assert "permission denied" in info.warnings[0]
