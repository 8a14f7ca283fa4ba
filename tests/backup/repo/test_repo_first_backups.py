"""Two first backups into the same empty storage at once (two devices on one schedule):
the repository config is created only if there is none, and both use the one stored;
and an index object that does not open (such a race in older versions, or damage) no
longer makes every command fail."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
from backup_trees import snapshot

from backupvault.backup.errors import Damaged, StorageError
from backupvault.backup.repo import create_snapshot, maintenance, repository, restore_snapshot
from backupvault.backup.repo.backend import Backend
from backupvault.backup.repo.keys import new_config
from backupvault.backup.repo.repository import Repository
from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError, WrongKey

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


def objects(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}


def other_device_first(
    monkeypatch: pytest.MonkeyPatch, source: Path, repo: Path, key: bytes
) -> list[Any]:
    """This device finds no config; before it stores its own, another device makes the
    repository and a whole backup into it. Returns [its SnapshotInfo, the config it made]."""
    done: list[Any] = []

    def slow_new_config(*args: Any, **kwargs: Any) -> Any:
        made = new_config(*args, **kwargs)
        if not done:
            monkeypatch.setattr(repository, "new_config", new_config)
            done.append(create_snapshot(source, str(repo), key, repo_params=SMALL))
            done.append((repo / "config").read_bytes())
        return made

    monkeypatch.setattr(repository, "new_config", slow_new_config)
    return done


def two_sources(tmp_path: Path) -> list[Path]:
    sources = []
    for i in range(2):
        source = tmp_path / f"src{i}"
        source.mkdir()
        (source / "file").write_bytes(os.urandom(3000))
        sources.append(source)
    return sources


def test_two_first_backups_with_one_key_share_the_config_stored_first(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = two_sources(tmp_path)
    repo = tmp_path / "repo"
    other = other_device_first(monkeypatch, theirs, repo, root_key)
    info = create_snapshot(mine, str(repo), root_key, on_new_repository=lambda: 1 / 0)
    assert other and (repo / "config").read_bytes() == other[1]  # not replaced
    for made, source in ((info, mine), (other[0], theirs)):
        out = tmp_path / f"out-{made.snapshot_id}"
        restore_snapshot(str(repo), root_key, out, made.snapshot_id)
        assert snapshot(out) == snapshot(source)
    opened = Repository.open(Storage(str(repo)), root_key)
    assert maintenance.check(opened, read_data=True).errors == []


def test_a_first_backup_that_loses_the_race_with_another_key_writes_nothing(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two devices each with a recovery code of their own: the second learns before it
    writes anything (or shows its code) that the repository is the other's."""
    mine, theirs = two_sources(tmp_path)
    repo = tmp_path / "repo"
    their_key = os.urandom(32)
    other = other_device_first(monkeypatch, theirs, repo, their_key)
    before: list[set[str]] = []
    monkeypatch.setattr(Backend, "put_new", _recording_put_new(before, repo))
    shown: list[bool] = []
    with pytest.raises(WrongKey, match="another device created the repository"):
        create_snapshot(mine, str(repo), root_key, on_new_repository=lambda: shown.append(True))
    assert other and not shown
    assert objects(repo) == before[-1]  # nothing of this device's
    restore_snapshot(str(repo), their_key, tmp_path / "out", other[0].snapshot_id)
    assert snapshot(tmp_path / "out") == snapshot(theirs)


def _recording_put_new(before: list[set[str]], repo: Path) -> Any:
    put_new = Backend.put_new

    def recording(self: Backend, name: str, data: bytes) -> bool | None:
        before.append(objects(repo))
        return put_new(self, name, data)

    return recording


def test_put_new_never_replaces(tmp_path: Path) -> None:
    backend = Backend(Storage(str(tmp_path / "repo")))
    assert backend.put_new("config", b"first") is True
    assert backend.put_new("config", b"second") is False
    assert backend.get("config") == b"first"
    assert os.listdir(tmp_path / "repo") == ["config"]  # no temporary left


def test_where_storage_cannot_refuse_a_config_the_stored_one_is_read_back(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an atomic create-if-absent, the config is written, then read back after a
    pause: a racing device's that landed meanwhile is the one used."""
    storage = Storage(str(tmp_path / "repo"))
    theirs, _ = new_config(root_key)
    paused: list[float] = []

    def plain_put(self: Backend, name: str, data: bytes) -> None:
        self.put(name, data)
        return None

    def racing_sleep(seconds: float) -> None:
        paused.append(seconds)
        Backend(storage).put("config", theirs.to_bytes())

    monkeypatch.setattr(Backend, "put_new", plain_put)
    monkeypatch.setattr(repository.time, "sleep", racing_sleep)
    repo = Repository.open(storage, root_key, create=True)
    assert paused == [repository.CREATE_SETTLE_S]
    assert not repo.created and repo.keys.repo_id == theirs.repo_id


def test_an_index_that_does_not_open_is_left_out_and_replaced(
    tmp_path: Path, root_key: bytes
) -> None:
    """What such a race left in older versions: an index object sealed under a config no
    longer there (here: damaged). Backups go on, naming it in a warning; the packs it
    named are indexed again from their own headers; prune replaces it."""
    source, repo = tmp_path / "src", tmp_path / "repo"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(20_000))
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    (index,) = (repo / "index").iterdir()
    data = bytearray(index.read_bytes())
    data[-1] ^= 1
    index.write_bytes(bytes(data))
    (source / "b").write_bytes(os.urandom(300))
    info = create_snapshot(source, str(repo), root_key)
    assert [w for w in info.warnings if index.name in w and "cannot be read" in w]
    assert info.files_read == 1  # the first file's chunks were found in their packs
    opened = Repository.open(Storage(str(repo)), root_key)
    checked = maintenance.check(opened, read_data=True)
    assert len(checked.errors) == 1 and index.name in checked.errors[0]
    maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert not index.exists()
    opened = Repository.open(Storage(str(repo)), root_key)
    assert maintenance.check(opened, read_data=True).errors == []
    for made in (first, info):
        restore_snapshot(str(repo), root_key, tmp_path / made.snapshot_id, made.snapshot_id)
    assert snapshot(tmp_path / info.snapshot_id) == snapshot(source)


def test_a_storage_error_while_prune_reads_a_damaged_indexs_packs_deletes_nothing(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune indexes the packs of an index that does not open from their headers; a pack
    whose header read failed (a timeout) was skipped as if it were not a pack, looked
    unindexed, and was deleted with chunks the snapshots use (review s23)."""
    source, repo = tmp_path / "src", tmp_path / "repo"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(20_000))
    made = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    (index,) = (repo / "index").iterdir()
    data = bytearray(index.read_bytes())
    data[-1] ^= 1
    index.write_bytes(bytes(data))
    old = time.time() - 7200  # older than the lock expiry: no pack is spared for its age
    for pack in (repo / "data").rglob("*"):
        os.utime(pack, (old, old))
    packs = objects(repo)
    get = Backend.get
    failed: list[str] = []

    def flaky(self: Backend, name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("data/") and args and not failed:
            failed.append(name)
            raise StorageError(f"cannot read {name}: ReadTimeout")
        return get(self, name, *args, **kwargs)

    monkeypatch.setattr(Backend, "get", flaky)
    with pytest.raises(StorageError, match="ReadTimeout"):
        maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert failed and objects(repo) == packs  # nothing deleted
    monkeypatch.setattr(Backend, "get", get)
    restore_snapshot(str(repo), root_key, tmp_path / "out", made.snapshot_id)
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_prune_deletes_no_unindexed_pack_while_a_chunk_in_use_is_in_no_index(
    tmp_path: Path, root_key: bytes
) -> None:
    # The index is gone altogether (and so a chunk the snapshot uses is in no index): the
    # pack that holds it is unindexed, and prune must not take it for a leftover.
    source, repo = tmp_path / "src", tmp_path / "repo"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(20_000))
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    for index in (repo / "index").iterdir():
        index.unlink()
    old = time.time() - 7200
    for pack in (repo / "data").rglob("*"):
        os.utime(pack, (old, old))
    packs = objects(repo)
    with pytest.raises(BackupVaultError, match="prune deletes nothing"):
        maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert objects(repo) == packs


def test_a_first_backup_onto_a_disk_without_hard_links_works(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAT and many SMB mounts refuse link(2): the config is created by look-then-rename
    # there (it was a "cannot store config: Operation not permitted" failure).
    def no_links(source: str, target: str, **_dir_fds: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(repository, "CREATE_SETTLE_S", 0.0)
    backend = Backend(Storage(str(tmp_path / "plain")))
    assert backend.put_new("config", b"first") is None
    assert backend.put_new("config", b"second") is False
    assert backend.get("config") == b"first"
    assert os.listdir(tmp_path / "plain") == ["config"]
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(3000))
    made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out", made.snapshot_id)
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_a_repository_whose_config_is_gone_is_not_made_anew_over_its_objects(
    tmp_path: Path, root_key: bytes
) -> None:
    """Storage lost `config` (deleted, or a sync tool or a rollback took it): the next
    backup made a new repository in the same folder, its own config in the old one's
    place, and took the old snapshots for another repository's ("left out"), which
    `forget --damaged` and prune then delete. Without the old config (RMK is in it
    alone) none of them opens again, and a config that storage still keeps among its
    versions could no longer be put back. Now the backup refuses, writing nothing."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("the only copy")
    repo = tmp_path / "repo"
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    config = (repo / "config").read_bytes()
    (repo / "config").unlink()
    before = objects(repo)
    with pytest.raises(Damaged, match="no config") as refused:
        create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert refused.value.hint is not None and "put it back" in refused.value.hint
    assert objects(repo) == before
    with pytest.raises(Damaged, match="no config"):
        restore_snapshot(str(repo), root_key, tmp_path / "out")
    # Put back, it all opens as before.
    (repo / "config").write_bytes(config)
    create_snapshot(source, str(repo), root_key)
    restore_snapshot(str(repo), root_key, tmp_path / "out", first.snapshot_id)
    assert snapshot(tmp_path / "out") == snapshot(source)
