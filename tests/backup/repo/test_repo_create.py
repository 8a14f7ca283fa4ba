"""`backup create` against a source that is odd or changes while it is backed up."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
import signal
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from backupvault.backup.errors import DestinationError, SnapshotTooLarge
from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot, tree
from backupvault.backup.repo import create as create_module
from backupvault.backup.repo import restore as restore_module
from backupvault.backup.repo import snapshots as snapshots_module
from backupvault.backup.repo.maintenance import check
from backupvault.backup.repo.tree import FILE, TIME_MAX_NS, Entry
from backupvault.backup.storage import Storage
from backupvault.errors import InvalidInput

# Many small chunks: a file over 64 bytes takes the large-file (windowed) path.
SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024}


def _after_walk(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run `change()` right after the walk, before any file is read: what another process
    may do to the source while a backup runs, placed in that window every time."""
    real = create_module.walk

    def walk(
        source: Path, exclude: tuple[str, ...] = (), stay_on: int | None = None
    ) -> create_module.Walked:
        walked = real(source, exclude, stay_on)
        change()
        return walked

    monkeypatch.setattr(create_module, "walk", walk)


def _entries(repo: Path, root_key: bytes) -> dict[bytes, Entry]:
    snapshot = Repository.open(Storage(str(repo)), root_key).find_snapshot(None)
    assert snapshot.entries is not None
    return {e.path: e for e in snapshot.entries}


def test_a_time_after_2262_is_stored_clamped_and_said(tmp_path: Path, root_key: bytes) -> None:
    """A time past what a tree holds (i64 ns) made tree.encode raise struct.error once
    every pack was uploaded: every backup of the folder failed, "this is a bug". It is
    stored as the latest time the tree holds, with a warning; the content is backed up
    (so nothing is skipped, and the CLI does not exit 8)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"ok")
    future = source / "from-a-zip.txt"
    future.write_bytes(b"content")
    year_2400 = 13_569_465_600
    os.utime(future, (year_2400, year_2400))
    if os.stat(future).st_mtime_ns <= TIME_MAX_NS:
        pytest.skip("this file system does not hold times after 2262")
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert made.skipped == []
    assert made.files == 2
    (note,) = [w for w in made.warnings if "from-a-zip.txt" in w]
    assert "modification time is after 2262-04-11" in note
    assert "stored as 2262-04-11 23:47:16 UTC" in note
    assert _entries(repo, root_key)[b"from-a-zip.txt"].mtime_ns == TIME_MAX_NS
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "from-a-zip.txt").read_bytes() == b"content"
    # Clamped alike each time: the file cache still knows the file unchanged.
    again = create_snapshot(source, str(repo), root_key)
    assert again.files_read == 0


@pytest.mark.parametrize(
    "entry",
    [
        Entry(FILE, b"f", 0o644, TIME_MAX_NS + 1),
        Entry(FILE, b"f", 0o644, 0, ctime_ns=-(1 << 63) - 1),
        Entry(FILE, b"f", 0o644, 0, size=-1),
        Entry(FILE, b"x" * 65536, 0o644, 0),
    ],
)
def test_a_tree_field_out_of_range_is_a_clear_error(entry: Entry) -> None:
    with pytest.raises(InvalidInput, match="out of the range the format holds"):
        tree.encode([entry])


def test_a_tree_larger_than_a_reader_opens_saves_no_snapshot(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader refuses a tree over 2 GiB (some 16 million files) as damaged; a backup
    wrote one all the same and said it had worked, and every restore, list and later
    backup then passed over that snapshot as damaged (review s62). Shown with a smaller
    limit: the backup stops, before it reads a file when the walk alone shows the tree too
    large, else once the chunks it read make it so; no snapshot is saved, and the last
    one stays the latest, restorable."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "first.txt").write_bytes(b"first")
    repo = tmp_path / "repo"
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    # The walk's least: 4 + 14 (".") + 50 + 32 (first.txt: 1 chunk) + 48 + 98 x 32
    # (big.bin: 100,000 bytes, chunk_max 1 KiB) = 3,284 bytes; its real chunks (about 320
    # bytes each, some 300) take the tree past 6,000.
    (source / "big.bin").write_bytes(os.urandom(100_000))
    monkeypatch.setattr(snapshots_module, "_MAX_TREE", 6000)
    with pytest.raises(SnapshotTooLarge, match="too large for one snapshot") as late:
        create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert "sub-folders one by one" in str(late.value.hint)
    for n in range(200):
        (source / f"many-{n:03}.txt").write_bytes(b"x")
    read: list[str] = []
    real_open_seen = create_module._open_seen

    def open_seen(item: create_module.Item, folders: create_module._Folders) -> int:
        read.append(item.path)
        return real_open_seen(item, folders)

    monkeypatch.setattr(create_module, "_open_seen", open_seen)
    with pytest.raises(SnapshotTooLarge, match=r"the list of its 203 files, folders and links"):
        create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert read == []  # said before a file was read
    monkeypatch.undo()
    assert set(_entries(repo, root_key)) == {b".", b"first.txt"}
    latest = Repository.open(Storage(str(repo)), root_key).find_snapshot(None)
    assert latest.id_hex == first.snapshot_id
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "first.txt").read_bytes() == b"first"


@pytest.mark.parametrize("size", [5, 5000], ids=["small", "large"])
def test_a_file_swapped_for_a_link_after_the_walk_is_not_read_through_it(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The read opened the path again and followed whatever was there: a link put in a
    file's place stored the content of its target (anywhere, /dev/zero without end) under
    the file's name. Now the file is left out as one deleted meanwhile is."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "keep.txt").write_bytes(b"keep")
    (source / "notes.txt").write_bytes(b"n" * size)
    secret = tmp_path / "outside-secret"
    secret.write_bytes(b"s" * size)

    def swap() -> None:
        os.unlink(source / "notes.txt")
        os.symlink(secret, source / "notes.txt")

    _after_walk(monkeypatch, swap)
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert [str(item) for item in made.skipped] == ["notes.txt: vanished during the backup"]
    assert not made.skipped[0].unread
    assert set(_entries(repo, root_key)) == {b".", b"keep.txt"}
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


def test_a_file_saved_by_rename_after_the_walk_is_backed_up_as_it_is_now(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another regular file moved over the file (an editor saving: write a new file, then
    rename it over the old) is read as what the path now holds, not left out: only what
    is no regular file is refused. Its entry keeps the walk's inode, so the next backup
    sees it changed and reads it again."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "notes.txt").write_bytes(b"hello")

    def save() -> None:
        (source / "notes.txt.new").write_bytes(b"hello, saved")
        os.replace(source / "notes.txt.new", source / "notes.txt")

    _after_walk(monkeypatch, save)
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert made.skipped == []
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_bytes() == b"hello, saved"
    monkeypatch.undo()
    assert create_snapshot(source, str(repo), root_key).files_read == 1


def test_a_file_swapped_for_a_fifo_after_the_walk_does_not_block_the_backup(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a fifo for reading waits for a writer: the backup hung for good."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "notes.txt").write_bytes(b"hello")
    fifo = source / "notes.txt"

    def swap() -> None:
        os.unlink(fifo)
        os.mkfifo(fifo)

    _after_walk(monkeypatch, swap)
    hung: list[bool] = []

    def unblock(*_: object) -> None:
        # Without the fix the open waits in a worker thread: be the writer it waits for,
        # so that the test ends (and fails) instead of hanging the run.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        hung.append(True)

    previous = signal.signal(signal.SIGALRM, unblock)
    signal.alarm(30)
    try:
        made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not hung, "the backup waited for a writer to the fifo"
    assert [str(item) for item in made.skipped] == ["notes.txt: vanished during the backup"]


def _when_listed(monkeypatch: pytest.MonkeyPatch, path: bytes, change: Callable[[], None]) -> None:
    """Run `change()` once the walk has seen `path` in its folder's listing, before it
    lists `path` itself: another process changing the source in that window."""
    real = create_module._entry

    def entry(name: bytes, st: os.stat_result, notes: list[str]) -> Entry | None:
        made = real(name, st, notes)
        if name == path:
            change()
        return made

    monkeypatch.setattr(create_module, "_entry", entry)


def test_a_folder_swapped_for_a_link_during_the_walk_is_not_walked_into(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk listed each folder by path (os.scandir follows links): a folder swapped
    for a link to another folder had that folder's content backed up as its own."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "mine").write_bytes(b"mine")
    (source / "keep.txt").write_bytes(b"keep")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not in the source")

    def swap() -> None:
        os.rename(source / "sub", tmp_path / "moved-away")
        os.symlink(outside, source / "sub")

    _when_listed(monkeypatch, b"sub", swap)
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    monkeypatch.undo()
    assert [str(item) for item in made.skipped] == ["sub: vanished during the backup"]
    assert set(_entries(repo, root_key)) == {b".", b"keep.txt"}
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["keep.txt"]


def test_a_folder_replaced_by_another_during_the_walk_is_left_out(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder (not a link) moved into a listed folder's place is not the folder the
    walk saw: its device and inode differ."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret").write_bytes(b"not in the source")

    def swap() -> None:
        os.rename(source / "sub", tmp_path / "moved-away")
        os.rename(other, source / "sub")

    _when_listed(monkeypatch, b"sub", swap)
    made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    monkeypatch.undo()
    assert [str(item) for item in made.skipped] == ["sub: vanished during the backup"]
    assert set(_entries(tmp_path / "repo", root_key)) == {b"."}


def test_a_folder_removed_during_the_walk_is_left_out_not_fatal(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sub-folder deleted between its parent's listing and its own (a browser clearing
    its cache) failed the whole backup with "cannot read folder": no snapshot at all."""
    source = tmp_path / "src"
    (source / "cache" / "deeper").mkdir(parents=True)
    (source / "cache" / "tmp1").write_bytes(b"x")
    (source / "keep.txt").write_bytes(b"keep")
    _when_listed(monkeypatch, b"cache", lambda: shutil.rmtree(source / "cache"))
    made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    monkeypatch.undo()
    assert [str(item) for item in made.skipped] == ["cache: vanished during the backup"]
    assert not made.skipped[0].unread
    assert made.files == 1 and made.folders == 0


def test_a_tree_deeper_than_the_folders_kept_open_is_walked_whole(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `_KEEP_OPEN` levels a folder's descriptor is closed once listed and opened
    again (checked) from the deepest one kept, for each of its sub-folders."""
    monkeypatch.setattr(create_module, "_KEEP_OPEN", 2)
    source = tmp_path / "src"
    deep = source / "a" / "b" / "c" / "d"
    for sibling in ("x", "y"):
        (deep / sibling / "e").mkdir(parents=True)
        (deep / sibling / "e" / "f.txt").write_bytes(sibling.encode())
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert made.skipped == [] and made.files == 2 and made.folders == 8
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "a/b/c/d/y/e/f.txt").read_bytes() == b"y"


def test_a_small_file_that_grows_before_it_is_read_is_read_in_windows(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the walk saw empty or small (a download just begun) was read whole into
    memory however large it had grown by its read, twice over (the parts, then their
    join): 800 MiB took 1.6 GiB. It is now read at most one byte past what the walk saw,
    then in windows as a large file, from the descriptor already open."""
    source = tmp_path / "src"
    source.mkdir()
    download = source / "download.iso"
    download.write_bytes(b"")
    size = 32 << 20
    block = os.urandom(1 << 20)

    def grow() -> None:
        with open(download, "wb") as out:
            for _ in range(size >> 20):
                out.write(block)

    _after_walk(monkeypatch, grow)
    repo = tmp_path / "repo"
    tracemalloc.start()
    try:
        made = create_snapshot(source, str(repo), root_key, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size // 2, f"peak {peak >> 20} MiB for a {size >> 20} MiB file"
    assert made.skipped == [] and made.size == size
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "download.iso").read_bytes() == block * (size >> 20)


def test_a_file_system_that_makes_a_nonblocking_read_wait_is_read_blocking(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are read with O_NONBLOCK still set (Linux's file systems ignore it for a
    regular file; clearing it cost a system call a file). One that does not ignore it
    answers EAGAIN: such a file is made blocking and read again, whole, also when it grew
    since the walk (then read in windows, from the same descriptor)."""
    source = tmp_path / "src"
    source.mkdir()
    for number in range(20):
        (source / f"f{number}").write_bytes(os.urandom(number * 3))
    grown = source / "grown"
    grown.write_bytes(b"")
    real_read, real_read_into = os.read, create_module._read_into
    waited: list[int] = []

    def nonblocking(fd: int) -> bool:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)

    def read(fd: int, count: int) -> bytes:
        # The grown file's first read does not wait: its windows must not either (a
        # nonblocking readinto's EAGAIN reads as the file's end, cutting it short).
        if nonblocking(fd) and not os.readlink(f"/proc/self/fd/{fd}").endswith("grown"):
            waited.append(fd)
            raise BlockingIOError(errno.EAGAIN, "no data yet")
        return real_read(fd, count)

    def read_into(handle: io.FileIO, buffer: memoryview) -> int:
        assert not nonblocking(handle.fileno())
        return real_read_into(handle, buffer)

    monkeypatch.setattr(os, "read", read)
    monkeypatch.setattr(create_module, "_read_into", read_into)
    _after_walk(monkeypatch, lambda: grown.write_bytes(b"g" * 5000))
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert made.skipped == [] and made.files == 21 and len(waited) == 20
    monkeypatch.undo()
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    for path in source.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_a_small_file_is_read_in_one_read_unless_the_file_system_returns_less(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file whose first read holds all it held when opened takes that one read (no
    second read to confirm its end). A file system that returns fewer bytes mid-file (a
    network one may) has the file read on to its end: nothing is cut short."""
    source = tmp_path / "src"
    source.mkdir()
    for number in range(30):
        (source / f"f{number}").write_bytes(os.urandom(number * 2))
    real_read = os.read
    reads: list[int] = []

    def read(fd: int, count: int) -> bytes:
        reads.append(fd)
        return real_read(fd, count)

    monkeypatch.setattr(os, "read", read)
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL, force_read=True)
    assert len(reads) == 30

    def read_little(fd: int, count: int) -> bytes:
        return real_read(fd, min(count, 7))

    monkeypatch.setattr(os, "read", read_little)
    made = create_snapshot(source, str(repo), root_key, repo_params=SMALL, force_read=True)
    assert made.skipped == [] and made.size == sum(n * 2 for n in range(30))
    monkeypatch.undo()
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    for path in source.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("replacement", ["none", "file"])
def test_a_link_removed_or_replaced_before_it_is_read_is_left_out_not_fatal(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, replacement: str
) -> None:
    """A link deleted (or swapped for a file) between its stat and its readlink failed
    the whole backup with "cannot read link"."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "keep.txt").write_bytes(b"keep")
    os.symlink("keep.txt", source / "link")

    def change() -> None:
        os.unlink(source / "link")
        if replacement == "file":
            (source / "link").write_bytes(b"now a file")

    _when_listed(monkeypatch, b"link", change)
    made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    monkeypatch.undo()
    assert [str(item) for item in made.skipped] == ["link: vanished during the backup"]
    assert not made.skipped[0].unread
    assert made.files == 1 and made.links == 0


def _deep(top: Path, levels: int) -> bytes:
    """`levels` nested folders of 250-byte names under `top` (made through descriptors:
    their paths pass PATH_MAX); the relative path of the deepest."""
    name = "d" * 250
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        for file_name, data in ((b"small", b"tiny"), (b"large", b"L" * 5000)):
            out = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, data)
            os.close(out)
        os.symlink("small", "link", dir_fd=fd)
    finally:
        os.close(fd)
    return b"/".join([os.fsencode(name)] * levels)


def test_paths_longer_than_path_max_are_backed_up(tmp_path: Path, root_key: bytes) -> None:
    """The walk listed folders and read files by their full path: one path past PATH_MAX
    (4096 bytes) failed the whole backup with "File name too long", saving nothing."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"fine")
    deepest = _deep(source, 18)  # 18 x 251 bytes
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert made.skipped == []
    assert made.files == 3 and made.links == 1 and made.folders == 18
    entries = _entries(repo, root_key)
    assert entries[deepest + b"/small"].size == 4
    assert entries[deepest + b"/large"].size == 5000
    assert len(entries[deepest + b"/large"].chunks) > 1  # read as a large file
    assert entries[deepest + b"/link"].target == b"small"
    # The content is the file's: the same chunks as a copy of it at the top.
    (source / "copy").write_bytes(b"L" * 5000)
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    entries = _entries(repo, root_key)
    assert entries[b"copy"].chunks == entries[deepest + b"/large"].chunks


def _stat_long(top: Path, path: bytes) -> tuple[os.stat_result, bytes | None]:
    """(lstat, the content of a regular file or the target of a link) of `path` under
    `top`, reached one folder at a time (its path passes PATH_MAX)."""
    *folders, name = path.split(b"/")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            deeper = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = deeper
        st = os.lstat(name, dir_fd=fd)
        if stat.S_ISLNK(st.st_mode):
            return st, os.readlink(name, dir_fd=fd)
        if not stat.S_ISREG(st.st_mode):
            return st, None
        out = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return st, os.read(out, 1 << 20)
        finally:
            os.close(out)
    finally:
        os.close(fd)


@pytest.mark.parametrize("streamed", [False, True], ids=["small files", "streamed files"])
def test_paths_longer_than_path_max_are_restored(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """A backup holds them (above), but the restore created each by its whole path
    relative to the staging folder: "File name too long", and nothing was restored (a
    backup that cannot be restored: data loss). So also with --include, and its folders'
    modes and times, and its links."""
    if streamed:  # every file written chunk by chunk, as files over 1 MiB are
        monkeypatch.setattr(restore_module, "_SMALL_FILE", 0)
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"fine")
    deepest = _deep(source, 18)  # 18 x 251 bytes
    parent = deepest.rpartition(b"/")[0]
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)  # a deep folder's mode and time
    for name in parent.split(b"/"):
        deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.fchmod(fd, 0o750)
    os.utime(fd, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    os.close(fd)
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    included = os.fsdecode(deepest.split(b"/", 1)[0])
    for out, include in ((tmp_path / "out", ()), (tmp_path / "part", (included,))):
        info = restore_snapshot(str(repo), root_key, out, include=include)
        assert info.skipped == [] and info.links == 1
        assert _stat_long(out, deepest + b"/small")[1] == b"tiny"
        assert _stat_long(out, deepest + b"/large")[1] == b"L" * 5000
        assert _stat_long(out, deepest + b"/link")[1] == b"small"
        st, _ = _stat_long(out, parent)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o750, 1_500_000_000_123_456_789)
    assert (tmp_path / "out" / "ok.txt").read_bytes() == b"fine"
    assert not (tmp_path / "part" / "ok.txt").exists()
    # Failing at the very end (the rename): the staging folder goes, deep paths and all.
    before = set(os.listdir(tmp_path))

    def refused(*args: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(DestinationError, match="cannot move the restored data"):
        restore_snapshot(str(repo), root_key, tmp_path / "failed")
    assert set(os.listdir(tmp_path)) == before


def test_a_path_longer_than_a_snapshot_holds_is_skipped_not_fatal(
    tmp_path: Path, root_key: bytes
) -> None:
    """A tree entry's path has at most 65,535 bytes: a deeper one is named as skipped
    (not read: exit 8), not a failed backup once everything was uploaded."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"fine")
    _deep(source, 262)  # 262 x 251 bytes: the 262nd folder's path is 65,761 bytes
    made = create_snapshot(source, str(tmp_path / "repo"), root_key)
    (skipped,) = made.skipped
    assert skipped.unread
    assert skipped.reason == "its path is longer than the 65,535 bytes a snapshot holds"
    assert len(os.fsencode(skipped.name)) == 262 * 251 - 1
    assert made.files == 1 and made.folders == 261


def test_an_empty_file_has_no_chunk(tmp_path: Path, root_key: bytes) -> None:
    """docs/format.md says an empty file has no chunk; the backup gave it one, empty
    (Chunker.cut yielded an empty view), stored in a pack and named in every snapshot."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "empty").write_bytes(b"")
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert made.added == 0
    entry = _entries(repo, root_key)[b"empty"]
    assert (entry.size, entry.chunks) == (0, [])
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "empty").read_bytes() == b""


def test_a_snapshot_that_lists_an_empty_chunk_still_restores(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots made before the fix name the empty chunk for each empty file: they
    restore and check as before, and a later backup keeps the file's chunk list while the
    file is unchanged (a read of it gives none)."""
    real = create_module._Workers.read_small

    def read_small(
        self: create_module._Workers, batch: list[tuple[int, create_module.Item, int]]
    ) -> list[create_module.Piece]:
        # What the earlier code did: one empty chunk, named and sealed, per empty file.
        pieces = real(self, batch)
        read = {piece[0] for piece in pieces}
        pieces += [self._piece(number, b"") for number, _, _ in batch if number not in read]
        return pieces

    source = tmp_path / "src"
    source.mkdir()
    (source / "empty").write_bytes(b"")
    (source / "full").write_bytes(b"full")
    repo = tmp_path / "repo"
    monkeypatch.setattr(create_module._Workers, "read_small", read_small)
    old = create_snapshot(source, str(repo), root_key)
    monkeypatch.undo()
    assert len(_entries(repo, root_key)[b"empty"].chunks) == 1
    restore_snapshot(str(repo), root_key, tmp_path / "old", snapshot_id=old.snapshot_id)
    assert (tmp_path / "old" / "empty").read_bytes() == b""
    assert (tmp_path / "old" / "full").read_bytes() == b"full"
    opened = Repository.open(Storage(str(repo)), root_key)
    assert check(opened, read_data=True).errors == []
    again = create_snapshot(source, str(repo), root_key)
    assert again.files_read == 0
    assert len(_entries(repo, root_key)[b"empty"].chunks) == 1
    create_snapshot(source, str(repo), root_key, force_read=True)
    assert _entries(repo, root_key)[b"empty"].chunks == []
    restore_snapshot(str(repo), root_key, tmp_path / "new")
    assert (tmp_path / "new" / "empty").read_bytes() == b""


def test_a_folder_replaced_past_the_folders_kept_open_leaves_its_sub_folders_out(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `_KEEP_OPEN` levels a folder is opened again for each of its sub-folders;
    replaced after its listing, it leads nowhere else: its sub-folders are left out as
    vanished, not walked through the link (and not a crash)."""
    monkeypatch.setattr(create_module, "_KEEP_OPEN", 2)
    source = tmp_path / "src"
    (source / "a" / "b" / "c" / "x").mkdir(parents=True)
    (source / "a" / "b" / "c" / "y").mkdir()
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "y").mkdir()
    (outside / "y" / "secret").write_bytes(b"not in the source")

    def swap() -> None:  # once "c" is listed (its entry "x" is made), before x and y
        os.rename(source / "a" / "b" / "c", tmp_path / "moved-away")
        os.symlink(outside, source / "a" / "b" / "c")

    _when_listed(monkeypatch, b"a/b/c/x", swap)
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert sorted(map(str, made.skipped)) == [
        "a/b/c/x: vanished during the backup",
        "a/b/c/y: vanished during the backup",
    ]
    assert set(_entries(repo, root_key)) == {b".", b"a", b"a/b", b"a/b/c"}


def test_one_file_system_backs_up_a_folder_on_another_device_empty(tmp_path: Path) -> None:
    """restic's -x: `backup create / -x` must not go into /proc, network shares or other
    mounts. A mount cannot be made here, so the walk is told to stay on a device the
    source is not on: every sub-folder then counts as a mount point."""
    source = tmp_path / "src"
    (source / "docs" / "old").mkdir(parents=True)
    (source / "docs" / "old" / "a.txt").write_text("a")
    (source / "top.txt").write_text("t")
    (source / "empty").mkdir()
    device = os.stat(source).st_dev
    everything = create_module.walk(source, (), device)
    assert [i.entry.path for i in everything.items] == [
        b".", b"docs", b"empty", b"top.txt", b"docs/old", b"docs/old/a.txt"
    ]  # fmt: skip
    elsewhere = create_module.walk(source, (), device + 1)
    # The folders stay (restored as empty folders, as restic keeps a mount point), and
    # files beside them are backed up; nothing inside them is listed or said.
    assert [i.entry.path for i in elsewhere.items] == [b".", b"docs", b"empty", b"top.txt"]
    assert elsewhere.skipped == [] and elsewhere.notes == []


def test_a_backup_with_one_file_system_stays_on_the_sources_device(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The option reaches the walk (the test above walks with a device of its own)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    real, asked = create_module.walk, []

    def walk(
        source: Path, exclude: tuple[str, ...] = (), stay_on: int | None = None
    ) -> create_module.Walked:
        asked.append(stay_on)
        return real(source, exclude, stay_on)

    monkeypatch.setattr(create_module, "walk", walk)
    create_snapshot(source, str(tmp_path / "repo"), root_key, one_file_system=True)
    create_snapshot(source, str(tmp_path / "repo"), root_key)
    assert asked == [os.stat(source).st_dev, None]
