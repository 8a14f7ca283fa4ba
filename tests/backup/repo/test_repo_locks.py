"""Locks against the ways they fail: a storage outage is reported as itself, not as the
failed removal of the lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import snapshot

from backupvault.backup.errors import StorageError
from backupvault.backup.repo import create_snapshot, restore_snapshot
from backupvault.backup.repo.backend import Backend

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


def test_an_outage_is_reported_as_itself_not_as_the_lock_left_behind(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, repo_path = tmp_path / "src", tmp_path / "repo"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(3000))
    create_snapshot(source, str(repo_path), root_key, repo_params=SMALL)
    (source / "g").write_bytes(os.urandom(30_000))
    put, delete = Backend.put, Backend.delete
    down = [False]

    def failing_put(self: Backend, name: str, data: Any, **kw: Any) -> None:
        down[0] = down[0] or name.startswith("data/")
        if down[0]:
            raise StorageError(f"cannot store {name}: 503 SlowDown")
        put(self, name, data, **kw)

    def failing_delete(self: Backend, name: str) -> None:
        if down[0]:
            raise StorageError(f"cannot delete {name}: 503 SlowDown")
        delete(self, name)

    monkeypatch.setattr(Backend, "put", failing_put)
    monkeypatch.setattr(Backend, "delete", failing_delete)
    with pytest.raises(StorageError) as caught:
        create_snapshot(source, str(repo_path), root_key)
    assert caught.value.message.startswith("cannot store data/")
    assert caught.value.hint is not None and "could not be removed" in caught.value.hint


def test_a_lock_removal_that_fails_once_is_tried_again(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(300))
    delete = Backend.delete
    failed: list[str] = []

    def flaky_delete(self: Backend, name: str) -> None:
        if name.startswith("locks/") and not failed:
            failed.append(name)
            raise StorageError(f"cannot delete {name}: connection reset")
        delete(self, name)

    monkeypatch.setattr(Backend, "delete", flaky_delete)
    create_snapshot(source, str(tmp_path / "repo"), root_key)
    assert failed and os.listdir(tmp_path / "repo" / "locks") == []
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)
