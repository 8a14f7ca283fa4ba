"""A large file is read in windows; its chunks must be exactly those of a cut of the whole
file (as `backup create` made them when it mapped the file), or repositories made before
would no longer deduplicate against new snapshots."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupvault.backup.errors import SourceError
from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot
from backupvault.backup.repo import create as create_module
from backupvault.backup.repo.chunks import RAW, ZSTD
from backupvault.backup.repo.tree import FILE
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 8192}


def whole_file_ids(repo: Repository, data: bytes) -> list[bytes]:
    return [repo.sealer.chunk_id(view) for view in repo.chunker().cut(data)]


def snapshot_ids(repo: Repository, snapshot_id: str) -> list[bytes]:
    entries = repo.read_snapshot(snapshot_id).entries
    assert entries is not None
    (entry,) = [e for e in entries if e.kind == FILE]
    return entry.chunks


@pytest.mark.parametrize("window", [1, 4096, 4097, 1 << 20])
def test_windowed_reads_cut_like_the_whole_file(
    tmp_path: Path, root_key: bytes, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of 4 KiB (the smallest: 4 × chunk_max), odd sizes, and one window for all."""
    monkeypatch.setattr(create_module, "_WINDOW_BYTES", window)
    rng = random.Random(window)
    # Random bytes, long runs (no cut point inside: chunks of exactly chunk_max), and a
    # size that is no multiple of the window.
    data = rng.randbytes(50_000) + bytes(9000) + rng.randbytes(30_001)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key)
    ids = snapshot_ids(repo, info.snapshot_id)
    assert len(ids) > 50
    assert ids == whole_file_ids(repo, data)
    assert info.size == len(data)
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(65, 40_000), seed=st.integers(0, 2**32), zeros=st.booleans())
def test_windowed_cut_matches_for_any_size(
    tmp_path_factory: pytest.TempPathFactory, size: int, seed: int, zeros: bool
) -> None:
    """Sizes around window and chunk bounds, with and without cut-free runs."""
    root_key = bytes(32)
    folder = tmp_path_factory.mktemp("cut")
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    if zeros:
        start = rng.randrange(size)
        data[start : start + rng.randrange(1, 6000)] = bytes(min(6000, size - start))
    data = data[:size]
    source = folder / "f"
    source.write_bytes(data)
    old = create_module._WINDOW_BYTES
    create_module._WINDOW_BYTES = 1
    try:
        info = create_snapshot(source, str(folder / "repo"), root_key, repo_params=SMALL)
    finally:
        create_module._WINDOW_BYTES = old
    repo = Repository.open(Storage(str(folder / "repo")), root_key)
    assert snapshot_ids(repo, info.snapshot_id) == whole_file_ids(repo, bytes(data))


def test_a_file_a_few_windows_long_dedups_against_its_copy(tmp_path: Path, root_key: bytes) -> None:
    """Default parameters: windows of 16 MiB, a 40 MiB file; a copy shifted by one byte
    stores little new (content-defined cuts across window ends)."""
    data = os.urandom(40 << 20)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(data)
    first = create_snapshot(source, str(tmp_path / "repo"), root_key)
    (source / "b.bin").write_bytes(b"x" + data)
    second = create_snapshot(source, str(tmp_path / "repo"), root_key)
    assert first.added == len(data)
    assert second.added < 12 << 20  # the first chunk and the one at each edit (max 4 MiB)
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key)
    entries = repo.read_snapshot(second.snapshot_id).entries
    assert entries is not None
    by_name = {e.path: e.chunks for e in entries if e.kind == FILE}
    assert by_name[b"a.bin"] == whole_file_ids(repo, data)
    assert by_name[b"b.bin"] == whole_file_ids(repo, b"x" + data)


def test_a_files_read_error_leaves_that_file_out_and_saves_the_rest(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails under one file (EIO: a bad sector) while it is read, ahead on a
    thread of its own for a large file or whole for a small one: that file is left out
    and named as unread (exit 8), the others are saved, and the reader thread is gone.
    It stopped the whole backup (exit 2, a usage error), and a failing disk then got no
    backup at all, when one matters most."""
    monkeypatch.setattr(create_module, "_WINDOW_BYTES", 1)
    real_read_into, real_read_small = create_module._read_into, create_module._read_small
    calls = 0

    def named(fd: int, name: str) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(name)

    def failing_read_into(handle: io.FileIO, buffer: memoryview) -> int:
        nonlocal calls
        if named(handle.fileno(), "big.bin"):
            calls += 1
            if calls == 3:
                raise OSError(errno.EIO, "Input/output error")
        return real_read_into(handle, buffer)

    def failing_read_small(fd: int, size: int, opened_size: int) -> bytes | None:
        if named(fd, "bad.txt"):
            raise OSError(errno.EIO, "Input/output error")
        return real_read_small(fd, size, opened_size)

    monkeypatch.setattr(create_module, "_read_into", failing_read_into)
    monkeypatch.setattr(create_module, "_read_small", failing_read_small)
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(60_000))
    (source / "bad.txt").write_bytes(b"on a bad sector")
    (source / "good.txt").write_bytes(b"readable")
    info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    assert calls == 3
    assert not [t for t in threading.enumerate() if t.name == "backup-read"]
    unread = {s.name: s.reason for s in info.skipped if s.unread}
    assert unread.keys() == {"big.bin", "bad.txt"}
    assert all("Input/output error" in why for why in unread.values())
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["good.txt"]
    assert (tmp_path / "out" / "good.txt").read_bytes() == b"readable"


def test_a_folder_the_disk_fails_to_open_is_backed_up_empty_and_the_rest_saved(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a file: an I/O error opening one folder stopped the whole backup (exit 2);
    the folder is now kept empty and named as unread, as one it may not list."""
    real_open_folder = create_module._open_folder

    def failing_open_folder(name: str, dir_fd: int | None, device: int, inode: int) -> int:
        if name == "damaged":
            raise OSError(errno.EIO, "Input/output error")
        return real_open_folder(name, dir_fd, device, inode)

    monkeypatch.setattr(create_module, "_open_folder", failing_open_folder)
    source = tmp_path / "src"
    (source / "damaged").mkdir(parents=True)
    (source / "damaged" / "lost.txt").write_text("behind a bad sector")
    (source / "good.txt").write_text("readable")
    info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    assert [(s.name, s.reason, s.unread) for s in info.skipped] == [
        ("damaged", "cannot list this folder (Input/output error): backed up empty", True)
    ]
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["damaged", "good.txt"]


class _FailingEntry:
    """A listed child whose stat fails as a bad sector under its inode makes it fail."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self.name = entry.name

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise OSError(errno.EIO, "Input/output error")


def test_io_errors_listing_a_folder_or_reading_an_entry_leave_only_that_out(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails while a folder is listed, an entry's inode is read (stat) or a
    link's target is read: that folder is kept empty, that entry left out, each named as
    unread (exit 8), and the rest is saved. Each stopped the whole backup before, where a
    file failing to read did not."""
    real_scandir, real_readlink = os.scandir, os.readlink

    def named(fd: int, name: str) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(name)

    class Listing:
        def __init__(self, fd: int) -> None:
            if named(fd, "/unlistable"):
                raise OSError(errno.EIO, "Input/output error")
            self._inner = real_scandir(fd)

        def __enter__(self) -> list[object]:
            with self._inner as entries:
                return [_FailingEntry(e) if e.name == "bad-inode.txt" else e for e in entries]

        def __exit__(self, *exc: object) -> None:
            return None

    def failing_readlink(path: str, *, dir_fd: int | None = None) -> str:
        if path == "bad-link":
            raise OSError(errno.EIO, "Input/output error")
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(create_module.os, "scandir", Listing)
    monkeypatch.setattr(create_module.os, "readlink", failing_readlink)
    source = tmp_path / "src"
    (source / "unlistable").mkdir(parents=True)
    (source / "unlistable" / "lost.txt").write_text("behind a bad sector")
    (source / "bad-inode.txt").write_text("its inode is on a bad sector")
    (source / "bad-link").symlink_to("good.txt")
    (source / "good.txt").write_text("readable")
    info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    assert sorted((s.name, s.reason, s.unread) for s in info.skipped) == [
        ("bad-inode.txt", "cannot read it (Input/output error)", True),
        ("bad-link", "cannot read it (Input/output error)", True),
        ("unlistable", "cannot list this folder (Input/output error): backed up empty", True),
    ]
    monkeypatch.undo()
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["good.txt", "unlistable"]


def _dead_mount(where: Path) -> Callable[[], object] | None:
    """Mount at `where` a FUSE file system whose program is gone (its /dev/fuse closed
    before it answered anything), as a crashed sshfs or rclone leaves one: every call on
    it says "Transport endpoint is not connected". The function that unmounts it, or
    None where this process may not mount one (not root, no /dev/fuse)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return None
    try:
        options = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
        if libc.mount(b"dead", os.fsencode(where), b"fuse.dead", 0, options.encode()):
            return None
    finally:
        os.close(fd)
    return lambda: libc.umount2(os.fsencode(where), 2)  # MNT_DETACH


def test_a_dead_network_mount_or_a_stale_file_is_left_out_not_fatal(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FUSE or network mount inside SOURCE whose program or server has gone (a crashed
    sshfs at ~/mnt/nas: ENOTCONN on its very stat), and a file an NFS server lost while
    it was read (ESTALE): each is left out and named as unread (exit 8), the rest saved.
    Both stopped the whole backup (exit 2, as a usage error), every night while the
    mount stayed dead (review s62). A real dead mount where this test may make one (as
    root), else its stat failing as one does."""
    source = tmp_path / "src"
    (source / "nas").mkdir(parents=True)
    (source / "good.txt").write_text("readable")
    (source / "stale.txt").write_text("deleted on the server while read")
    unmount = _dead_mount(source / "nas")
    if unmount is None:
        real_scandir = os.scandir

        class Listing:
            def __init__(self, fd: int) -> None:
                self._inner = real_scandir(fd)

            def __enter__(self) -> list[object]:
                with self._inner as entries:
                    return [_DeadMountEntry(e) if e.name == "nas" else e for e in entries]

            def __exit__(self, *exc: object) -> None:
                return None

        monkeypatch.setattr(create_module.os, "scandir", Listing)
    real_open_seen = create_module._open_seen

    def open_seen(
        item: create_module.Item, folders: create_module._Folders, *, blocking: bool = True
    ) -> tuple[int, int]:
        if item.path.endswith("stale.txt"):
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return real_open_seen(item, folders, blocking=blocking)

    monkeypatch.setattr(create_module, "_open_seen", open_seen)
    try:
        info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    finally:
        if unmount is not None:
            unmount()
    gone = "a network or FUSE mount whose server or program has gone (unmount it, or --exclude it)"
    assert sorted((s.name, s.reason, s.unread) for s in info.skipped) == [
        ("nas", f"cannot read it (Transport endpoint is not connected): {gone}", True),
        ("stale.txt", f"cannot read it (Stale file handle): {gone}", True),
    ]
    monkeypatch.undo()
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["good.txt"]


class _DeadMountEntry(_FailingEntry):
    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))


def test_an_io_error_listing_the_source_itself_stops_the_backup(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's own listing failing leaves nothing to back up: an error, and no
    snapshot (an empty one would become the latest)."""
    real_scandir = os.scandir
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")

    def failing_scandir(fd: int) -> object:
        if os.readlink(f"/proc/self/fd/{fd}") == str(source):
            raise OSError(errno.EIO, "Input/output error")
        return real_scandir(fd)

    monkeypatch.setattr(create_module.os, "scandir", failing_scandir)
    with pytest.raises(SourceError, match=r"cannot read folder .*Input/output error"):
        create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    monkeypatch.undo()
    assert Repository.open(Storage(str(tmp_path / "repo")), root_key).list_snapshots() == []


def test_an_error_of_the_system_while_reading_ahead_stops_the_backup_cleanly(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the file's fault (no memory, too many open files): leaving the file out would
    leave out every file after it too. The backup stops naming the file, no snapshot
    appears, and the reader thread is gone."""
    monkeypatch.setattr(create_module, "_WINDOW_BYTES", 1)
    real_read_into = create_module._read_into
    calls = 0

    def failing_read_into(handle: io.FileIO, buffer: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_read_into(handle, buffer)

    monkeypatch.setattr(create_module, "_read_into", failing_read_into)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(60_000))
    with pytest.raises(SourceError, match=r"cannot read .*big\.bin: Cannot allocate memory"):
        create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    assert not [t for t in threading.enumerate() if t.name == "backup-read"]
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key)
    assert repo.snapshot_names() == {}


def test_a_chunk_is_sealed_into_exactly_its_room_and_opens_as_itself(
    tmp_path: Path, root_key: bytes
) -> None:
    """A backup seals each blob straight into its place in a pack: the room must be exactly
    the blob's size, and what is sealed there opens only as its own chunk."""
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key, create=True)
    sealer = repo.sealer
    for data in (os.urandom(300_000), b"compressible " * 30_000):
        chunk_id = sealer.chunk_id(data)
        prepared = sealer.prepare(data)
        assert prepared.compression == (ZSTD if data.startswith(b"comp") else RAW)
        pack = bytearray(prepared.size + 10)
        with memoryview(pack) as view:
            for wrong in (view[5 : 4 + prepared.size], view[5 : 6 + prepared.size]):
                with pytest.raises(ValueError, match="exactly"):
                    sealer.seal_into(chunk_id, prepared, wrong)
            sealer.seal_into(chunk_id, prepared, view[5 : 5 + prepared.size])
        blob = bytes(pack[5 : 5 + prepared.size])
        assert sealer.open(chunk_id, blob, len(data)) == data
        other = sealer.chunk_id(b"another chunk")
        with pytest.raises(AuthenticationFailed):
            sealer.open(other, blob, len(data))


def test_chunks_prepared_together_are_prepared_as_one_by_one(
    tmp_path: Path, root_key: bytes
) -> None:
    """A batch of small files is compressed in one call (`prepare_all`): each chunk comes
    out as `prepare` makes it alone (compressed only where that helps, the same zstd
    frame, in its place in the batch), and each seals and opens as itself."""
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key, create=True)
    sealer = repo.sealer
    rng = random.Random(5)
    chunks = [
        b"x",
        os.urandom(4000),
        b"compressible " * 300,
        bytes(rng.randrange(4) for _ in range(5000)),
        os.urandom(200_000),  # past what zstd is always tried on: sampled first
        b"more text " * 20_000,
        b"ab",
    ]
    together = sealer.prepare_all([memoryview(c) for c in chunks])
    alone = [sealer.prepare(c) for c in chunks]
    assert [(p.compression, bytes(p.payload)) for p in together] == [
        (p.compression, bytes(p.payload)) for p in alone
    ]
    assert [p.compression for p in together] == [RAW, RAW, ZSTD, ZSTD, RAW, ZSTD, RAW]
    for data, prepared in zip(chunks, together, strict=True):
        chunk_id = sealer.chunk_id(data)
        blob = bytearray(prepared.size)
        sealer.seal_into(chunk_id, prepared, memoryview(blob))
        assert sealer.open(chunk_id, blob, len(data)) == data
    assert sealer.prepare_all([]) == []
