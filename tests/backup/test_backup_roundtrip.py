"""Create, list and restore backups on local storage: what goes in comes out, exactly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from backup_trees import SMALL_CHUNK, RecordingProgress, make_tree, snapshot
from single_blob import create_backup

from backupvault.backup import (
    BackupNotFound,
    DestinationError,
    Skipped,
    StorageNotFound,
    list_backups,
    restore_backup,
)
from backupvault.backup.errors import StorageError
from backupvault.backup.storage import Storage, StoredBackup
from backupvault.errors import InvalidInput, UsageError


def test_folder_round_trip_keeps_everything(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    store = tmp_path / "store"
    info = create_backup(source, str(store), root_key, chunk_size=SMALL_CHUNK)
    assert info.size > 5 * SMALL_CHUNK  # a multi-chunk backup

    dest = tmp_path / "restored"
    restore_progress = RecordingProgress()
    restored = restore_backup(str(store), root_key, dest, progress=restore_progress)
    assert snapshot(dest) == snapshot(source)
    assert restored.backup_id == info.backup_id
    assert (restored.files, restored.links, restored.folders) == (9, 3, 4)
    assert restore_progress.events[0] == ("start", (info.size, "restoring"))
    assert restore_progress.done == info.size
    hard = (dest / "hardlink.txt").stat()
    assert hard.st_nlink == 2 and hard.st_ino == (dest / "docs" / "notes.txt").stat().st_ino
    assert os.readlink(dest / "link-to-notes") == "docs/notes.txt"


def test_multi_chunk_file_with_default_and_small_chunks(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 * SMALL_CHUNK + 17))
    store = str(tmp_path / "store")
    create_backup(source, store, root_key, chunk_size=SMALL_CHUNK)
    restore_backup(store, root_key, tmp_path / "out")
    assert (tmp_path / "out" / "data.bin").read_bytes() == source.read_bytes()


def test_single_file_backup_restores_into_a_new_folder(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"\xff\xd8 not really a jpeg")
    source.chmod(0o640)
    os.utime(source, (1_500_000_000, 1_500_000_000))
    store = str(tmp_path / "store")
    create_backup(source, store, root_key)
    dest = tmp_path / "out"
    restore_backup(store, root_key, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["photo.jpg"]
    assert snapshot(dest / "photo.jpg") == snapshot(source)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask


def test_empty_file_and_empty_folder(tmp_path: Path, root_key: bytes) -> None:
    store = str(tmp_path / "store")
    empty_file = tmp_path / "empty"
    empty_file.write_bytes(b"")
    create_backup(empty_file, store, root_key)
    restore_backup(store, root_key, tmp_path / "out-file")
    assert (tmp_path / "out-file" / "empty").read_bytes() == b""

    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir(mode=0o705)
    os.utime(empty_folder, (1_234_567_890, 1_234_567_890))
    create_backup(empty_folder, store, root_key)
    restore_backup(store, root_key, tmp_path / "out-folder")  # the latest
    assert snapshot(tmp_path / "out-folder") == snapshot(empty_folder)


def test_restore_into_an_existing_empty_folder(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    store = str(tmp_path / "store")
    create_backup(source, store, root_key)
    dest = tmp_path / "empty-dest"
    dest.mkdir()
    restore_backup(store, root_key, dest)
    assert snapshot(dest) == snapshot(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-dest", "source", "store"]


def test_links_pointing_outside_are_skipped_and_reported(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "inside").write_text("x")
    (source / "absolute").symlink_to("/etc/hostname")
    (source / "escaping").symlink_to("../../outside")
    (source / "fine").symlink_to("inside")
    os.mkfifo(source / "fifo")
    store = str(tmp_path / "store")
    info = create_backup(source, store, root_key)
    assert info.skipped == [Skipped("fifo", "not a regular file, folder or link")]
    assert str(info.skipped[0]) == "fifo: not a regular file, folder or link"
    result = restore_backup(store, root_key, tmp_path / "out")
    assert sorted(s.name for s in result.skipped) == ["absolute", "escaping"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine", "inside"]
    assert (tmp_path / "out" / "fine").read_text() == "x"


def test_list_and_restore_by_id(tmp_path: Path, root_key: bytes) -> None:
    store = str(tmp_path / "store")
    assert list_backups(store, missing_ok=True) == []
    versions = []
    for text in ("first", "second", "third"):
        source = tmp_path / "file.txt"
        source.write_text(text)
        versions.append(create_backup(source, store, root_key))
    listed = list_backups(store)
    assert [b.backup_id for b in listed] == [v.backup_id for v in versions]
    assert [b.size for b in listed] == [v.size for v in versions]
    assert [b.created_at for b in listed] == [v.created_at for v in versions]

    restore_backup(store, root_key, tmp_path / "latest")
    assert (tmp_path / "latest" / "file.txt").read_text() == "third"
    restore_backup(store, root_key, tmp_path / "first", backup_id=versions[0].backup_id[:10])
    assert (tmp_path / "first" / "file.txt").read_text() == "first"
    restore_backup(
        f"file://{store}", root_key, tmp_path / "second", backup_id=versions[1].backup_id.upper()
    )
    assert (tmp_path / "second" / "file.txt").read_text() == "second"
    with pytest.raises(BackupNotFound, match="no backup with id"):
        restore_backup(store, root_key, tmp_path / "x", backup_id="0" * 32)
    with pytest.raises(UsageError, match="hexadecimal"):
        restore_backup(store, root_key, tmp_path / "x", backup_id="not-hex")
    assert not (tmp_path / "x").exists()


def test_a_local_folder_lists_as_fsspec_lists_it(tmp_path: Path) -> None:
    """Local storage is listed with os.scandir (fsspec is slower to import than listing):
    the same files, with their sizes, and nothing else taken for a file."""
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / f"backup-20261202T101500.000000Z-{'ab' * 16}.bvb").write_bytes(b"x" * 7)
    (tmp_path / ".partial-upload.0123456789abcdef.partial").write_bytes(b"y" * 3)
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")

    def files(entries: list[dict[str, object]]) -> set[tuple[str, object]]:
        return {(str(e["name"]), e["size"]) for e in entries if e["type"] == "file"}

    ours = Storage(str(tmp_path))._local_entries()
    theirs = LocalFileSystem().ls(str(tmp_path), detail=True)
    assert files(ours) == files(theirs) and len(files(ours)) == 2
    assert len(ours) == 2 and len(theirs) == 4  # the folder and the link are no files


def test_s3_without_credentials_says_how_to_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # fsspec keeps one per arguments: the S3 tests' own
    with pytest.raises(StorageError, match="NoCredentialsError") as raised:
        Storage("s3://no-such-bucket/backups").list()
    assert "AWS_ACCESS_KEY_ID" in str(raised.value.hint)


def test_a_scheme_whose_package_is_missing_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec.core

    def missing(*args: object, **kwargs: object) -> None:
        raise ImportError("Please install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(StorageError, match="install gcsfs") as raised:
        Storage("gs://bucket/backups")
    assert "-m pip install NAME" in str(raised.value.hint)


def test_empty_or_missing_storage_has_no_backups(tmp_path: Path, root_key: bytes) -> None:
    with pytest.raises(StorageNotFound, match="storage not found"):
        restore_backup(str(tmp_path / "nowhere"), root_key, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackupNotFound, match="no backups at"):
        restore_backup(str(tmp_path / "empty"), root_key, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["non-empty", "file", "no parent", "symlink"])
def test_unusable_destinations_are_refused_before_anything(
    tmp_path: Path, root_key: bytes, kind: str
) -> None:
    source = tmp_path / "f"
    source.write_text("x")
    store = str(tmp_path / "store")
    create_backup(source, store, root_key)
    dest = tmp_path / "dest"
    if kind == "non-empty":
        dest.mkdir()
        (dest / "keep").write_text("mine")
    elif kind == "file":
        dest.write_text("mine")
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        dest.symlink_to(tmp_path / "elsewhere")
    else:
        dest = tmp_path / "missing" / "dest"
    before = snapshot(tmp_path)
    with pytest.raises(DestinationError):
        restore_backup(store, root_key, dest)
    assert snapshot(tmp_path) == before


def test_bad_root_key(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with pytest.raises(InvalidInput, match="root key must be 32 bytes"):
        restore_backup(store, b"short", tmp_path / "out")
    assert not (tmp_path / "store").exists()


def test_object_deleted_between_listing_and_reading(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "f"
    source.write_text("x")
    store = tmp_path / "store"
    info = create_backup(source, str(store), root_key)
    real_find = Storage.find

    def find_then_lose(self: Storage, backup_id: str) -> StoredBackup:
        found = real_find(self, backup_id)
        (store / info.name).unlink()  # another client deleted it just now
        return found

    monkeypatch.setattr(Storage, "find", find_then_lose)
    with pytest.raises(BackupNotFound, match=f"backup {info.name} not found"):
        restore_backup(str(store), root_key, tmp_path / "out", backup_id=info.backup_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "store"]
