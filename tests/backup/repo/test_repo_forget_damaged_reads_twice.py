"""`backup forget --damaged` reads a snapshot it found damaged a second time before it
deletes it (storage review s49, F5).

`backup repair` reads a damaged pack a second time before it deletes anything
(`_confirm_damage`: "one read cut short or garbled on its way (once) made the repair drop
good chunks"). `forget --damaged`, which prune's own hint sends the user to, deleted a
snapshot (and wrote its forget record, so it stayed forgotten even once storage served
it whole again) on a single read that did not authenticate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupvault.backup.repo import Repository, create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import Backend
from backupvault.backup.storage import Storage


def _two_snapshots(tmp_path: Path, root_key: bytes) -> tuple[Path, str]:
    """(repository, the first of two snapshots)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(5000))
    repo = tmp_path / "repo"
    snap = create_snapshot(source, str(repo), root_key).snapshot_id
    (source / "g").write_bytes(os.urandom(5000))
    create_snapshot(source, str(repo), root_key)
    return repo, snap


def test_forget_damaged_does_not_delete_a_snapshot_on_one_garbled_read(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, snap = _two_snapshots(tmp_path, root_key)
    real_get = Backend.get
    garbled = []

    def get_once_garbled(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        data = real_get(self, name, *args, **kwargs)
        if name == f"snapshots/{snap}" and not garbled:
            garbled.append(name)  # one read garbled on its way (a flaky proxy, a bad NIC)
            return data[:200] + bytes([data[200] ^ 1]) + data[201:]
        return data

    monkeypatch.setattr(Backend, "get", get_once_garbled)
    opened = Repository.open(Storage(str(repo)), root_key)
    warnings: list[str] = []
    kept, removed, _ = maintenance.forget(
        opened, maintenance.Policy(), dry_run=False, damaged=True, warnings=warnings
    )
    monkeypatch.undo()

    assert garbled
    assert (repo / "snapshots" / snap).exists() or snap not in removed, (
        f"forget --damaged deleted snapshot {snap}, intact in storage, on one garbled read"
        f" (removed={removed})"
    )
    restore_snapshot(str(repo), root_key, tmp_path / "restored", snap)
    assert removed == [] and snap in kept and snap not in opened.damaged
    [warning] = warnings
    assert snap in warning and "read whole the second time: kept" in warning
    assert not (repo / "forgotten").exists()


def test_forget_damaged_removes_a_snapshot_damaged_on_both_reads(
    tmp_path: Path, root_key: bytes
) -> None:
    repo, snap = _two_snapshots(tmp_path, root_key)
    stored = repo / "snapshots" / snap
    data = bytearray(stored.read_bytes())
    data[200] ^= 1
    stored.write_bytes(bytes(data))
    opened = Repository.open(Storage(str(repo)), root_key)
    warnings: list[str] = []
    _, removed, _ = maintenance.forget(
        opened, maintenance.Policy(), dry_run=False, damaged=True, warnings=warnings
    )
    assert (removed, warnings) == ([snap], [])
    assert not stored.exists() and opened.was_forgotten(snap)
