"""How repository objects reach a local disk: large ones (packs) with O_DIRECT from an
aligned buffer (blobs sealed straight into it), small ones (and all of them where O_DIRECT
is refused) in buffered writes of at most 128 KiB; every object fsynced, and its folder
after the rename, either way."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backupvault.backup.errors import StorageError
from backupvault.backup.repo import Repository, create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo import backend as backend_module
from backupvault.backup.repo import create as create_module
from backupvault.backup.repo.backend import Backend, Filled
from backupvault.backup.repo.repository import PackWriter, shuffled
from backupvault.backup.storage import Storage

NAME = "data/" + "ab" * 16
SMALL = {"chunk_min": 4096, "chunk_avg": 16384, "chunk_max": 65536, "pack_size": 100_000}
_BLOBS = bytearray(os.urandom(3 << 20))
# Sizes around the alignment: the object must come back exactly, not padded. Sealed blobs
# are slices of writable buffers, pack headers bytes.
PARTS: list[bytes | bytearray | memoryview] = [
    *(os.urandom(n) for n in (5, 0, 300_000, 70_000, 1, 1 << 20, 4095)),
    *[b"x"] * 3000,
    memoryview(_BLOBS)[7 : 7 + 200_001],
    bytearray(os.urandom(65_536)),
    memoryview(_BLOBS)[1 << 20 :],
    bytearray(os.urandom(65_535)),
    memoryview(bytes(_BLOBS[:100_000])),
]


class Recorder:
    """os.open / os.fsync / os.write spies that call the real functions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse_direct: bool = False) -> None:
        self.direct_opens = 0
        self.fsynced: list[str] = []
        self.writes: list[int] = []
        self._fds: dict[int, str] = {}
        real_open, real_fsync, real_write = os.open, os.fsync, os.write

        def spy_open(path: str, flags: int, *args: Any, **kw: Any) -> int:
            if flags & getattr(os, "O_DIRECT", 0):
                self.direct_opens += 1
                if refuse_direct:
                    raise OSError(errno.EINVAL, "Invalid argument")
            fd = real_open(path, flags, *args, **kw)
            at = kw.get("dir_fd")  # objects are written relative to their folder's descriptor
            shown = os.fsdecode(path)
            self._fds[fd] = shown if at is None else os.path.join(self._fds.get(at, "?"), shown)
            return fd

        def spy_fsync(fd: int) -> None:
            self.fsynced.append(self._fds.get(fd, "?"))
            real_fsync(fd)

        def spy_write(fd: int, data: Any) -> int:
            self.writes.append(len(data))
            return real_write(fd, data)

        monkeypatch.setattr(backend_module.os, "open", spy_open)
        monkeypatch.setattr(backend_module.os, "fsync", spy_fsync)
        monkeypatch.setattr(backend_module.os, "write", spy_write)


def takes_direct(folder: Path) -> bool:
    """Whether the file system of `folder` opens files with O_DIRECT."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    probe = folder / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | flag, 0o600))
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_pack_is_written_direct_and_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct where the test folder's file system takes it (ext4, xfs, btrfs...), else
    buffered: the same bytes and the same fsyncs either way."""
    direct = takes_direct(tmp_path)
    store = Backend(Storage(str(tmp_path / "repo")))
    spy = Recorder(monkeypatch)
    store.put(NAME, PARTS)
    assert store._direct == direct
    assert spy.direct_opens == (1 if hasattr(os, "O_DIRECT") else 0)
    assert store.get(NAME) == b"".join(PARTS)
    if direct:
        assert spy.writes and all(w % 4096 == 0 for w in spy.writes)  # padded, truncated back
    folder = str(tmp_path / "repo" / "data")
    # The temporary file, then the folder holding the renamed object.
    assert len(spy.fsynced) == 2
    assert os.path.dirname(spy.fsynced[0]) == folder and spy.fsynced[0].endswith(".partial")
    assert spy.fsynced[1] == folder
    assert os.listdir(folder) == [NAME.split("/")[1]]
    # The aligned buffer is used again, and a small object goes buffered.
    store.put(NAME, [os.urandom(3 << 20)])
    store.put("index/" + "cd" * 16, [b"small"])
    assert spy.direct_opens == (2 if direct else int(hasattr(os, "O_DIRECT")))
    assert store.get("index/" + "cd" * 16) == b"small"


def test_refused_direct_writes_fall_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without O_DIRECT (tmpfs, some network ones) gets buffered writes,
    asked only once; nothing half-written is left."""
    store = Backend(Storage(str(tmp_path / "repo")))
    store._direct = True  # as on Linux
    monkeypatch.setattr(backend_module.os, "O_DIRECT", 0o40000, raising=False)
    spy = Recorder(monkeypatch, refuse_direct=True)
    store.put(NAME, PARTS)
    store.put("data/" + "cd" * 16, PARTS)
    assert spy.direct_opens == 1
    assert store.get(NAME) == b"".join(PARTS) == store.get("data/" + "cd" * 16)
    assert len(spy.fsynced) == 4  # each object, then its folder
    assert sorted(os.listdir(tmp_path / "repo" / "data")) == ["ab" * 16, "cd" * 16]


@pytest.mark.parametrize("refuse_direct", [False, True])
def test_a_filled_object_is_filled_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse_direct: bool
) -> None:
    """A pack's `fill` lets go of its read windows as it returns (they are reused for
    other bytes at once), so a put must never fill twice, not even when O_DIRECT is
    refused after the buffer was filled."""
    content = b"".join(PARTS)
    calls: list[int] = []

    def fill(out: memoryview) -> None:
        calls.append(len(out))
        out[:] = content

    store = Backend(Storage(str(tmp_path / "repo")))
    store._direct = True
    monkeypatch.setattr(backend_module.os, "O_DIRECT", 0o40000, raising=False)
    Recorder(monkeypatch, refuse_direct=refuse_direct)
    store.put(NAME, Filled(len(content), fill))
    assert calls == [len(content)]
    assert store.get(NAME) == content


def test_a_spare_buffer_takes_a_larger_pack(tmp_path: Path) -> None:
    """Packs vary in size (one closes with the chunk that takes it past the pack size):
    a buffer given back is used again for a larger pack, not a fresh one made (each
    fresh page costs a fault), and two packs in flight never share one."""
    store = Backend(Storage(str(tmp_path / "repo")))
    first = store._aligned_buffer(17 << 20)
    store._return_buffer(first)
    again = store._aligned_buffer(19 << 20)
    assert again is first
    other = store._aligned_buffer(17 << 20)
    assert other is not again and len(other) >= 17 << 20
    assert len(store._aligned_buffer(40 << 20)) >= 40 << 20


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk during a (direct or buffered) write: a clear storage error, no object,
    no temporary."""
    direct = takes_direct(tmp_path)
    store = Backend(Storage(str(tmp_path / "repo")))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend_module.os, "write", full)
    monkeypatch.setattr(backend_module.os, "writev", full)
    with pytest.raises(StorageError, match="cannot store"):
        store.put(NAME, PARTS)
    assert os.listdir(tmp_path / "repo" / "data") == []
    assert store._direct == direct  # a full disk is no reason to stop writing direct


def test_buffered_objects_go_out_whole_in_small_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buffered writes of at most 128 KiB (cheaper for the kernel), short writes
    finished, empty parts skipped."""
    real_writev = os.writev
    sizes: list[int] = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        sizes.append(sum(len(b) for b in buffers))
        return real_writev(fd, [bytes(b"".join(buffers)[:100_000])])

    monkeypatch.setattr(backend_module.os, "writev", short_writev)
    store = Backend(Storage(str(tmp_path / "repo")))
    store._direct = False
    store.put(NAME, PARTS)
    assert store.get(NAME) == b"".join(PARTS)
    assert max(sizes) <= 128 * 1024 and len(sizes) > 10


def test_a_backup_syncs_its_packs_folder_once_before_the_index(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pack's file is fsynced as it is written; the data folder (their names) once,
    after the last pack and before the index that names them is written."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(6):
        (source / f"f{i}").write_bytes(os.urandom(300_000))
    spy = Recorder(monkeypatch)
    create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    data = str(tmp_path / "repo" / "data")
    packs = [i for i, p in enumerate(spy.fsynced) if os.path.dirname(p) == data]
    index = [i for i, p in enumerate(spy.fsynced) if "/repo/index/" in p]
    assert len(packs) == len(os.listdir(data)) > 10
    assert spy.fsynced.count(data) == 1
    assert max(packs) < spy.fsynced.index(data) < index[0]
    assert spy.fsynced[index[0] + 1] == str(tmp_path / "repo" / "index")


def test_read_windows_are_used_again_only_after_their_blobs_are_sealed_into_packs(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs are sealed into their pack's buffer on the upload threads, from the read
    window the chunk was cut from: many windows from few buffers, and every blob intact
    (a window read into again while a pending pack still needed it would show as a
    damaged chunk); and all of them freed when the backup returns, without waiting for
    the garbage collector (they are 20 MiB each)."""
    made: list[weakref.ref[Any]] = []

    class Counted(create_module._Window):
        def __init__(self, *args: Any) -> None:
            made.append(weakref.ref(self))
            super().__init__(*args)

    monkeypatch.setattr(create_module, "_Window", Counted)
    monkeypatch.setattr(create_module, "_WINDOW_BYTES", 256 * 1024)
    real_put = Backend.put

    def slow_put(self: Backend, name: str, data: Any, **kw: Any) -> None:
        time.sleep(0.01)  # the next windows are read and cut meanwhile
        real_put(self, name, data, **kw)

    monkeypatch.setattr(Backend, "put", slow_put)
    source = tmp_path / "src"
    source.mkdir()
    (source / "big").write_bytes(os.urandom(12 << 20))  # 48 windows
    params = {**SMALL, "pack_size": 256 * 1024}
    gc.disable()
    try:
        info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=params)
        assert not [ref for ref in made if ref() is not None]
    finally:
        gc.enable()
    assert 3 <= len(made) < 24
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key)
    assert maintenance.check(repo, read_data=True).errors == []
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out", info.snapshot_id)
    assert (tmp_path / "out" / "big").read_bytes() == (source / "big").read_bytes()


def test_a_pending_blob_lets_go_of_its_window_once_sealed_not_once_written(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read window is used again as soon as the pack needing it is sealed, while the
    pack is still being written and synced (each fresh page of a new window costs a page
    fault, about as much as reading it); a pack that fails before it is sealed lets go
    too."""
    sealed = threading.Event()
    finish_write = threading.Event()
    real_fill_temp = Backend._fill_temp

    def slow_write(at: int, temp: str, write: Any, flags: int = 0) -> None:
        if os.readlink(f"/proc/self/fd/{at}").endswith("/data"):  # a pack
            sealed.set()
            assert finish_write.wait(10)
        real_fill_temp(at, temp, write, flags)

    monkeypatch.setattr(Backend, "_fill_temp", staticmethod(slow_write))
    repo = Repository.open(Storage(str(tmp_path / "repo")), root_key, create=True, **SMALL)
    index, _packs, _adopted = repo.load_index()

    class Window:
        def __init__(self) -> None:
            self.released = threading.Event()

        def release(self) -> None:
            assert not self.released.is_set(), "released twice"
            self.released.set()

    window = Window()
    data = os.urandom(200_000)
    chunk_id = repo.sealer.chunk_id(data)
    packer = PackWriter(repo, index)
    packer.add(chunk_id, repo.sealer.prepare(data), len(data), window)
    packer.flush()
    assert sealed.wait(10)
    assert window.released.wait(10)  # while the write still waits
    finish_write.set()
    packer.finish()
    location = index.chunks[chunk_id]
    blob = repo.backend.get(f"data/{location.pack_id.hex()}")[
        location.offset : location.offset + location.length
    ]
    assert repo.sealer.open(chunk_id, blob, len(data)) == data

    def failing_put(self: Backend, name: str, data: Any, **kw: Any) -> None:
        raise StorageError("cannot store the pack: the disk is gone")

    monkeypatch.setattr(Backend, "put", failing_put)
    other = Window()
    packer = PackWriter(repo, index)
    fresh = os.urandom(100_000)
    packer.add(repo.sealer.chunk_id(fresh), repo.sealer.prepare(fresh), len(fresh), other)
    with pytest.raises(StorageError, match="disk is gone"):
        packer.finish()
    assert other.released.is_set()


def test_a_pack_that_fails_to_upload_fails_the_backup(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs are written two at a time: one that fails while an earlier one is still being
    written fails the backup (no snapshot may name a pack that is not there), and the next
    backup stores everything."""
    real_put = Backend.put
    packs = [0]
    lock = threading.Lock()

    def put(self: Backend, name: str, data: Any, **kw: Any) -> None:
        if name.startswith("data/"):
            with lock:
                packs[0] += 1
                number = packs[0]
            if number == 1:
                time.sleep(0.3)  # still being written when the second one fails
            elif number == 2:
                raise StorageError("cannot store the pack: the disk is gone")
        real_put(self, name, data, **kw)

    monkeypatch.setattr(Backend, "put", put)
    source = tmp_path / "src"
    source.mkdir()
    for i in range(12):
        (source / f"f{i}").write_bytes(os.urandom(60_000))
    repo_path = tmp_path / "repo"
    with pytest.raises(StorageError, match="disk is gone"):
        create_snapshot(source, str(repo_path), root_key, repo_params=SMALL)
    assert packs[0] >= 2
    assert not (repo_path / "snapshots").exists() or not os.listdir(repo_path / "snapshots")
    monkeypatch.setattr(Backend, "put", real_put)
    info = create_snapshot(source, str(repo_path), root_key)
    repo = Repository.open(Storage(str(repo_path)), root_key)
    assert maintenance.check(repo, read_data=True).errors == []
    restore_snapshot(str(repo_path), root_key, tmp_path / "out", info.snapshot_id)
    for i in range(12):
        assert (tmp_path / "out" / f"f{i}").read_bytes() == (source / f"f{i}").read_bytes()


def test_an_object_deleted_while_listed_is_left_out_not_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another device's forget may delete an object between the folder's listing and its
    stat: that object is missing from the answer, every other one is still in it."""
    store = Backend(Storage(str(tmp_path / "repo")))
    names = ["aa" * 16, "bb" * 16, "cc" * 16]
    for name in names:
        store.put(f"snapshots/{name}", [name.encode()])
    real_scandir = os.scandir

    class Vanished:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.name, self.path, self._entry = entry.name, entry.path, entry

        def is_file(self, follow_symlinks: bool = True) -> bool:
            return self._entry.is_file(follow_symlinks=follow_symlinks)

        def stat(self, follow_symlinks: bool = True) -> os.stat_result:
            if self.name == "bb" * 16:
                raise FileNotFoundError(errno.ENOENT, "deleted meanwhile", self.path)
            return self._entry.stat(follow_symlinks=follow_symlinks)

    class Listing:
        def __init__(self, path: str) -> None:
            self._listing = real_scandir(path)

        def __enter__(self) -> list[Vanished]:
            return [Vanished(entry) for entry in sorted(self._listing, key=lambda e: e.name)]

        def __exit__(self, *exc: object) -> None:
            self._listing.close()

    monkeypatch.setattr(backend_module.os, "scandir", Listing)
    assert store.list("snapshots") == {"aa" * 16: 32, "cc" * 16: 32}


def test_a_packs_blobs_go_out_in_an_order_drawn_at_random() -> None:
    """Every order of a pack's blobs comes out, about equally often (a storage reader
    learns nothing of the order files were read in), and nothing is lost or repeated."""
    counts = Counter(tuple(shuffled(["a", "b", "c"])) for _ in range(6000))
    assert len(counts) == 6 and min(counts.values()) > 800, counts
    many = list(range(5000))
    drawn = shuffled(many)
    assert sorted(drawn) == many and drawn != many
