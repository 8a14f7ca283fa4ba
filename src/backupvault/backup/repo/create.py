"""`backup create` for the repository format: walk, cut, name, deduplicate, seal, pack.

Order of writes, so that a crash at any point leaves no visible snapshot and loses
nothing: packs first (each complete before it is visible), then one index object naming
them, then the snapshot object. Packs of an interrupted run are found by the next run
(see `Repository.load_index`) and their chunks reused.

Files unchanged since the parent snapshot (same path, size, mtime, ctime and inode, and
every chunk still indexed) are not read again, unless `force_read` is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import io
import mmap
import os
import posixpath
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from backupvault.backup.errors import SourceError, StorageError
from backupvault.backup.keykinds import KEY_NAMES, KEY_UNKNOWN
from backupvault.backup.progress import NoProgress, Progress
from backupvault.backup.repo import snapshots, tree
from backupvault.backup.repo.backend import PRIVATE_MEMORY
from backupvault.backup.repo.chunks import CHUNK_ID_LEN, Chunker, Prepared, Sealer
from backupvault.backup.repo.repository import (
    SHARED,
    Lock,
    PackWriter,
    Repository,
    cpu_workers,
    cycle_collector_paused,
    host_name,
    short_gil_turns,
)
from backupvault.backup.repo.state import DeviceState, another_repository, place_of
from backupvault.backup.repo.tree import (
    DIR,
    FILE,
    MAX_PATH,
    ROOT,
    SYMLINK,
    TIME_MAX_NS,
    TIME_MIN_NS,
    Entry,
)
from backupvault.backup.safe import Skipped
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput

_TASK_BYTES = 8 << 20  # plaintext per worker task
_WINDOW_BYTES = 16 << 20  # a large file is read this much at a time
_SMALL_BATCH = 256  # small files per worker task
_READ_AHEAD = 1  # windows a large file's reader may be ahead of its cutter
# glibc's mallopt parameters (malloc.h), and the values a backup sets: see _keep_freed_memory.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TRIM_THRESHOLD = 1 << 30
_MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems

# (entry number, chunk id, plaintext length, the chunk to seal or None if already stored);
# a length of _VANISHED: the file is left out; _GROWN: it is read as a large file.
Piece = tuple[int, bytes, int, Prepared | None]
_VANISHED = -1
_GROWN = -2


#: Errors of one mount under SOURCE, not of this process: a FUSE or network file system
#: whose program or server has gone (sshfs, rclone, gvfs: "Transport endpoint is not
#: connected"), a file deleted on an NFS server while it was read ("Stale file handle").
#: A dead `~/mnt/nas` stopped every backup of the home folder around it, night after
#: night, with exit 2 (review s62).
_GONE_MOUNT = frozenset({errno.ENOTCONN, errno.ESTALE})


def _unreadable(exc: OSError) -> str | None:
    """Why a file (or a folder) is left out, as restic does, for an error reading it, or
    None if the error stops the backup. Permission denied, an I/O error (a bad sector: a
    failing disk, when a backup matters most, stopped the whole backup for one file), and
    a mount that no longer answers (`_GONE_MOUNT`); not an error of the process or the
    system (too many open files, no memory), which would leave out every file after it."""
    if isinstance(exc, PermissionError) or exc.errno == errno.EIO:
        return f"cannot read it ({exc.strerror})"
    if exc.errno in _GONE_MOUNT:
        return (
            f"cannot read it ({exc.strerror}): a network or FUSE mount whose server or"
            " program has gone (unmount it, or --exclude it)"
        )
    return None


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    parent_id: str | None
    created_at: datetime
    source: str
    files: int
    folders: int
    links: int
    size: int
    files_read: int
    added: int
    stored: int  # bytes written: packs, index, snapshot
    url: str
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _clamped(path: bytes, which: str, ns: int, notes: list[str]) -> int:
    """`ns` within what a tree holds (i64 nanoseconds: 1677-09-21 to 2262-04-11), noting
    in `notes` a time moved into it. Such times come from archives and file system images
    (`touch -d 2400-01-01` makes one); refusing them would fail every backup of the folder."""
    if TIME_MIN_NS <= ns <= TIME_MAX_NS:
        return ns
    bound = TIME_MAX_NS if ns > TIME_MAX_NS else TIME_MIN_NS
    shown = datetime.fromtimestamp(bound // 1_000_000_000, UTC)
    notes.append(
        f"{os.fsdecode(path)}: its {which} time is "
        f"{'after' if ns > TIME_MAX_NS else 'before'} {shown:%Y-%m-%d}, outside what a "
        f"snapshot can hold; it was stored as {shown:%Y-%m-%d %H:%M:%S} UTC (what it holds "
        "is backed up; to keep its real time, give it one with `touch`)"
    )
    return bound


def _entry(path: bytes, st: os.stat_result, notes: list[str]) -> Entry | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        mtime_ns = _clamped(path, "modification", st.st_mtime_ns, notes)
        ctime_ns = _clamped(path, "change", st.st_ctime_ns, notes)
        return Entry(FILE, path, mode, mtime_ns, st.st_size, st.st_ino, ctime_ns)
    if stat.S_ISDIR(st.st_mode):
        return Entry(DIR, path, mode, _clamped(path, "modification", st.st_mtime_ns, notes))
    if stat.S_ISLNK(st.st_mode):
        return Entry(SYMLINK, path, mode, _clamped(path, "modification", st.st_mtime_ns, notes))
    return None


def excluded(path: bytes, patterns: tuple[str, ...]) -> bool:
    """Whether `path` (inside the source) matches a pattern: one with a `/` against the
    whole path, one without against the last name, with shell wildcards (fnmatch's: `*`
    also matches `/`). Leading and trailing slashes of a pattern are then left out: a
    trailing one still makes it a path (`cache/` is the folder `cache` of the source, as
    docs/cli.md says; until review s62 it was every `cache` at any depth, `build/` every
    `build` folder of every project). One starting with `./` is a path inside the source
    (normalised as `--include` is: `./docs/` is `docs`), matched against the whole path."""
    text = os.fsdecode(path)
    name = text.rsplit("/", 1)[-1]
    for pattern in patterns:
        anchored = pattern.startswith("./")
        bare = (posixpath.normpath(pattern) if anchored else pattern).strip("/")
        if fnmatch.fnmatchcase(text if anchored or "/" in pattern else name, bare):
            return True
    return False


def source_stat(source: Path) -> os.stat_result:
    """The backup source's own status, if it is a file or a folder (checked before the
    repository is made: a first backup that cannot start makes nothing)."""
    try:
        st = os.lstat(source)
    except OSError as exc:
        raise SourceError(
            f"cannot read {source}: {exc.strerror}",
            hint="give SOURCE as a file or folder this user can read",
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise SourceError(
            f"backup source {source} is a symbolic link (to {os.readlink(source)}): "
            f"give what it points to, {source.resolve()}",
            hint="a backup never follows a link given as SOURCE (one inside SOURCE is kept"
            " as a link)",
        )
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise SourceError(
            f"backup source {source} is not a file or folder",
            hint="give SOURCE as a regular file or a folder: a fifo, socket or device is"
            " not backed up (inside a folder, one is named as skipped)",
        )
    return st


class Item(NamedTuple):
    path: str  # on disk
    entry: Entry
    device: int  # st_dev and st_ino: which file or folder the walk saw there
    inode: int
    parent: Item | None  # the folder it was listed in; None for the source itself


class Walked(NamedTuple):
    kind: int  # snapshots.KIND_FILE or KIND_FOLDER
    items: list[Item]  # parents first
    skipped: list[Skipped]
    notes: list[str]  # stored, but not as they are (a time out of range)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Folders deeper than this are not kept open while their sub-folders are walked (the
#: descriptor limit is often 1024); each is opened again from the deepest one kept.
_KEEP_OPEN = 64


def _open_folder(name: str, dir_fd: int | None, device: int, inode: int) -> int:
    """A descriptor of the folder the walk saw as `name` (in the folder `dir_fd`), with
    `device` and `inode`. Anything else there now (a link, which O_NOFOLLOW does not
    follow, a file, another folder moved in) raises FileNotFoundError, as a folder
    deleted since does: it is left out, and nothing is read through it."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:  # O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR, or ELOOP
        raise FileNotFoundError(errno.ENOENT, "replaced since the walk", name) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileNotFoundError(errno.ENOENT, "replaced since the walk", name) from None
        raise
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (device, inode):
            raise FileNotFoundError(errno.ENOENT, "replaced since the walk", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class _Folder:
    """A folder on the walk's current path: its descriptor (None if not kept open, past
    `_KEEP_OPEN`), and its sub-folders still to walk (item numbers)."""

    name: str
    device: int
    inode: int
    fd: int | None
    pending: Iterator[int] = field(default_factory=lambda: iter(()))


def _folder_fd(path: list[_Folder]) -> tuple[int, bool]:
    """(descriptor of the last folder of `path`, whether the caller must close it): the
    one kept open, or one opened again from the deepest folder kept open, each step
    checked as the walk first opened it."""
    last = len(path) - 1
    kept = max(i for i, folder in enumerate(path) if folder.fd is not None)
    fd = path[kept].fd
    assert fd is not None
    owned = False
    try:
        for folder in path[kept + 1 : last + 1]:
            step = _open_folder(folder.name, fd, folder.device, folder.inode)
            if owned:
                os.close(fd)
            fd, owned = step, True
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return fd, owned


def walk(source: Path, exclude: tuple[str, ...] = (), stay_on: int | None = None) -> Walked:
    """What to back up of `source`, leaving out what `exclude` matches (a folder with
    everything in it), and with `stay_on` (a device number) what is inside a folder on
    another device: the folder stays, empty. Each folder is opened (O_NOFOLLOW) relative
    to its parent's descriptor and listed through its own: a folder swapped for a link
    while the walk runs is not walked into, and paths longer than PATH_MAX are walked
    too. At most the current path's folders are open at once."""
    skipped: list[Skipped] = []
    notes: list[str] = []
    st = source_stat(source)
    if not stat.S_ISDIR(st.st_mode):
        entry = _entry(os.fsencode(source.name), st, notes)
        assert entry is not None
        only = Item(str(source), entry, st.st_dev, st.st_ino, None)
        return Walked(snapshots.KIND_FILE, [only], skipped, notes)
    root = _entry(ROOT, st, notes)
    assert root is not None
    items: list[Item] = [Item(str(source), root, st.st_dev, st.st_ino, None)]
    gone: set[int] = set()  # item numbers of folders gone or replaced since listed
    try:
        root_fd = _open_folder(str(source), None, st.st_dev, st.st_ino)
    except FileNotFoundError:
        raise SourceError(
            f"backup source {source} was replaced while the backup started",
            hint="run the backup again",
        ) from None
    except OSError as exc:
        raise SourceError(f"cannot read folder {source}: {exc.strerror}") from None
    path = [_Folder(str(source), st.st_dev, st.st_ino, root_fd)]
    try:
        path[0].pending = iter(_list(root_fd, items[0], exclude, items, skipped, notes, stay_on))
        while path:
            number = next(path[-1].pending, None)
            if number is None:
                done = path.pop()
                if done.fd is not None:
                    os.close(done.fd)
                continue
            item = items[number]
            name = os.path.basename(item.path)
            owned = False
            try:
                # (past _KEEP_OPEN, opened again: a parent replaced since its listing
                # leaves its sub-folders out as vanished too)
                parent_fd, owned = _folder_fd(path)
                fd = _open_folder(name, parent_fd, item.device, item.inode)
            except FileNotFoundError:
                gone.add(number)
                skipped.append(Skipped(os.fsdecode(item.entry.path), "vanished during the backup"))
                continue
            except OSError as exc:
                if _unreadable(exc) is None:
                    raise SourceError(f"cannot read folder {item.path}: {exc.strerror}") from None
                # as restic: the rest is backed up, and this is said (the folder stays, empty)
                reason = f"cannot list this folder ({exc.strerror}): backed up empty"
                skipped.append(Skipped(os.fsdecode(item.entry.path), reason, unread=True))
                continue
            finally:
                if owned:
                    os.close(parent_fd)
            try:
                subfolders = _list(fd, item, exclude, items, skipped, notes, stay_on)
            except BaseException:
                os.close(fd)
                raise
            keep = len(path) < _KEEP_OPEN
            if not keep:
                os.close(fd)
            path.append(
                _Folder(name, item.device, item.inode, fd if keep else None, iter(subfolders))
            )
    finally:
        for folder in path:
            if folder.fd is not None:
                os.close(folder.fd)
    if gone:
        items = [item for number, item in enumerate(items) if number not in gone]
    return Walked(snapshots.KIND_FOLDER, items, skipped, notes)


def _list(
    fd: int,
    folder: Item,
    exclude: tuple[str, ...],
    items: list[Item],
    skipped: list[Skipped],
    notes: list[str],
    stay_on: int | None = None,
) -> list[int]:
    """Add the folder `fd`'s (`folder`'s) children (sorted by name) to `items`; its
    sub-folders' item numbers, to walk next (those on device `stay_on`, if given)."""
    directory = folder.path
    prefix = b"" if folder.parent is None else folder.entry.path + b"/"
    try:
        with os.scandir(fd) as listing:
            children = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        if not prefix or _unreadable(exc) is None:  # the source itself: nothing to back up
            raise SourceError(f"cannot read folder {directory}: {exc.strerror}") from None
        # As a folder it fails to open: kept empty, named as unread.
        reason = f"cannot list this folder ({exc.strerror}): backed up empty"
        skipped.append(Skipped(os.fsdecode(prefix[:-1]), reason, unread=True))
        return []
    subfolders: list[int] = []
    # os.path.join(directory, name) made a quarter of the walk's time; a child's name
    # never holds a "/", so this is the same path.
    base = directory if directory.endswith("/") else directory + "/"
    for child in children:
        name = prefix + os.fsencode(child.name)
        if exclude and excluded(name, exclude):
            continue
        if len(name) > MAX_PATH:
            reason = f"its path is longer than the {MAX_PATH:,} bytes a snapshot holds"
            skipped.append(Skipped(os.fsdecode(name), reason, unread=True))
            continue
        where = base + child.name
        try:
            child_stat = child.stat(follow_symlinks=False)  # fstatat(fd, name)
        except FileNotFoundError:
            continue  # deleted while we looked
        except OSError as exc:
            if (why := _unreadable(exc)) is None:
                raise SourceError(f"cannot read {where}: {exc.strerror}") from None
            skipped.append(Skipped(os.fsdecode(name), why, unread=True))
            continue
        entry = _entry(name, child_stat, notes)
        if entry is None:
            skipped.append(Skipped(os.fsdecode(name), "not a regular file, folder or link"))
            continue
        if entry.kind == SYMLINK:
            try:
                entry.target = os.fsencode(os.readlink(child.name, dir_fd=fd))
            except OSError as exc:
                # Deleted since its stat (ENOENT), or replaced by what is no link (EINVAL)
                if exc.errno in (errno.ENOENT, errno.EINVAL):
                    skipped.append(Skipped(os.fsdecode(name), "vanished during the backup"))
                    continue
                if (why := _unreadable(exc)) is None:
                    raise SourceError(f"cannot read link {where}: {exc.strerror}") from None
                skipped.append(Skipped(os.fsdecode(name), why, unread=True))
                continue
        items.append(Item(where, entry, child_stat.st_dev, child_stat.st_ino, folder))
        if entry.kind != DIR:
            continue
        if stay_on is not None and child_stat.st_dev != stay_on:
            continue  # asked for, as restic's -x: not warned of at every backup
        subfolders.append(len(items) - 1)
    return subfolders


class _Window:
    """A read buffer; back in the free list once the reader, every task using it and
    every pending blob in it (sealed into its pack on an upload thread) are done with it.
    Its memory is a private mapping, not a bytearray: bytearray(n) zero-fills 20 MiB on
    the reader thread with the GIL held, where the kernel zeroes a mapping's pages on
    their first touch, inside the read, without it."""

    def __init__(self, size: int, free: list[_Window], lock: threading.Lock) -> None:
        self.data = mmap.mmap(-1, size, flags=PRIVATE_MEMORY)
        self.users = 1  # the reader
        self._free = free
        self._lock = lock

    def hold(self) -> _Window:
        with self._lock:
            self.users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if not self.users:
                self._free.append(self)


class _Folders:
    """Descriptors of the folders on the path to the last file opened (one reader's: a
    batch of small files, or a large file), each reached from the source as the walk
    reached it (`_open_folder`: O_NOFOLLOW, and the device and inode the walk saw). Files
    are opened relative to them, never by a path the kernel resolves: a folder swapped for
    a link (or for another folder) after the walk is not read through. Files of one folder
    come one after another in the walk's order, so each folder is opened about once."""

    def __init__(self) -> None:
        self._items: list[Item] = []  # the folders on `_path`, from the source's
        self._path: list[_Folder] = []

    def fd(self, folder: Item) -> tuple[int, bool]:
        """(descriptor of `folder`, whether the caller must close it), as `_folder_fd`."""
        if self._items and self._items[-1] is folder and self._path[-1].fd is not None:
            return self._path[-1].fd, False  # the last file's folder: most often
        chain = [folder]
        while (up := chain[-1].parent) is not None:
            chain.append(up)
        chain.reverse()
        same = 0
        while same < min(len(chain), len(self._items)) and chain[same] is self._items[same]:
            same += 1
        self._close(same)
        for item in chain[same:]:
            name = item.path if item.parent is None else os.path.basename(item.path)
            fd = None  # past _KEEP_OPEN: opened again by _folder_fd at each use
            if len(self._path) < _KEEP_OPEN:
                parent_fd = self._path[-1].fd if self._path else None
                fd = _open_folder(name, parent_fd, item.device, item.inode)
            self._path.append(_Folder(name, item.device, item.inode, fd))
            self._items.append(item)
        return _folder_fd(self._path)

    def _close(self, keep: int) -> None:
        while len(self._path) > keep:
            self._items.pop()
            if (fd := self._path.pop().fd) is not None:
                os.close(fd)

    def __enter__(self) -> _Folders:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close(0)


#: O_NOFOLLOW: a link put in the file's place since the walk is not followed (ELOOP);
#: O_NONBLOCK: nor does a fifo put there make the open wait for a writer; O_NOCTTY: nor
#: does a terminal become ours.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_seen(item: Item, folders: _Folders, *, blocking: bool = True) -> tuple[int, int]:
    """A descriptor of the regular file the walk saw as `item`, and its size now (fstat),
    opened relative to its folder's descriptor from `folders` (a path longer than PATH_MAX
    is opened so too).
    Anything else there now (a link, a fifo, a device: another process may swap it in
    between the walk and the read), or a folder on its way replaced since, raises
    FileNotFoundError, as a file deleted since does: it is left out, not read through (a
    link to a file outside the source, or to /dev/zero, which would be read without end).
    Another regular file moved in (an editor saving by rename) is read: it is what the
    folder holds, and the walk would have taken it just the same a moment later (its
    entry keeps the walk's inode, so the next backup reads it again). Not `blocking`: left
    with O_NONBLOCK, for `_read_small` (which makes it blocking if a read ever says so)."""
    try:
        if item.parent is None:  # the source itself, a file: the path given
            fd = os.open(item.path, _READ_FLAGS)
        else:
            dir_fd, owned = folders.fd(item.parent)
            try:
                fd = os.open(os.path.basename(item.path), _READ_FLAGS, dir_fd=dir_fd)
            finally:
                if owned:
                    os.close(dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a socket
            raise FileNotFoundError(errno.ENOENT, "replaced since the walk", item.path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "replaced since the walk", item.path)
        if blocking:
            _make_blocking(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _make_blocking(fd: int) -> None:
    # F_SETFL 0 clears O_NONBLOCK in one call (set_blocking makes two); no other status
    # flag was set.
    fcntl.fcntl(fd, fcntl.F_SETFL, 0)


def _read_small(fd: int, size: int, opened_size: int) -> bytes | None:
    """A small file's bytes with few system calls (one read, where `open(path,
    "rb").read()` makes more: about 10 % of a backup of 50,000 small files,
    docs/performance.md, "Fourth pass"). `size` is what the walk saw; None if the file
    holds more now (it grew since: the caller reads it in windows, as a large file, rather
    than whole into memory, however large it has grown), `fd` then blocking. A read of
    fewer bytes than asked that holds all `opened_size` (fstat's, once open) is the file's
    end then, not confirmed by another read (1-2 % of that backup's time: "Eighth pass"); a
    file system returning less mid-file is read on.

    `fd` may still be O_NONBLOCK (`_open_seen`): Linux's file systems ignore it for a
    regular file, and clearing it first cost a system call a file, each one letting go of
    the GIL and waiting for it again (5 % of that backup's time: docs/performance.md,
    "Eighth pass"). A file system that does not ignore it, and says EAGAIN, has the file
    made blocking and read again."""
    data = _read_some(fd, size + 1)
    while len(data) <= size:
        if len(data) == opened_size:
            return data
        more = _read_some(fd, size + 1 - len(data))
        if not more:
            return data
        data += more
    _make_blocking(fd)
    return None


def _read_some(fd: int, count: int) -> bytes:
    try:
        return os.read(fd, count)
    except BlockingIOError:
        _make_blocking(fd)
        return os.read(fd, count)


class _Workers:
    """Naming and compressing on a thread pool (BLAKE3 or HMAC, and zstd, release the
    GIL), as are small files' reads and cuts; results are consumed in submission order.
    Encryption comes later, into the pack (`PackWriter`)."""

    def __init__(self, repo: Repository, known: PackWriter, workers: int) -> None:
        self._sealer: Sealer = repo.sealer
        self._known = known
        self._config = repo.config
        self._keys = repo.keys
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="backup")
        self.inflight: deque[tuple[Future[list[Piece]], _Window | None]] = deque()
        self.limit = workers * 3
        # A window holds the previous one's uncut tail (less than chunk_max) in its
        # headroom, then fresh bytes: enough that they outnumber the tail.
        self.headroom = repo.config.chunk_max
        self.read_size = max(_WINDOW_BYTES, 4 * repo.config.chunk_max)
        self._free: list[_Window] = []
        self._free_lock = threading.Lock()  # the reader thread takes, this one returns
        #: files this process may not open, by number, and why: left out, as restic does
        self.unreadable: dict[int, str] = {}
        #: small files that grew past what the walk saw, by number: open, at their start,
        #: and the size the walk saw
        self.grown: dict[int, tuple[int, int]] = {}
        self._grown_lock = threading.Lock()
        #: files that grew past `_read_limit` while read, by number: the size the walk
        #: saw, and the bytes stored
        self.cut_short: dict[int, tuple[int, int]] = {}

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = Chunker(self._config, self._keys)
        return chunker

    def _piece(self, number: int, data: bytes | memoryview) -> Piece:
        chunk_id = self._sealer.chunk_id(data)
        if chunk_id in self._known:
            return number, chunk_id, len(data), None
        return number, chunk_id, len(data), self._sealer.prepare(data)

    def seal_views(self, number: int, views: list[memoryview]) -> list[Piece]:
        return [self._piece(number, view) for view in views]

    def read_small(self, batch: list[tuple[int, Item, int]]) -> list[Piece]:
        with _Folders() as folders:
            return self._read_batch(batch, folders)

    def _read_batch(self, batch: list[tuple[int, Item, int]], folders: _Folders) -> list[Piece]:
        pieces: list[Piece] = []
        waiting: list[tuple[int, memoryview]] = []  # (where in `pieces`, chunk): to compress
        for number, item, size in batch:
            try:
                fd, opened_size = _open_seen(item, folders, blocking=False)
                try:
                    data = _read_small(fd, size, opened_size)
                    if data is None:
                        os.lseek(fd, 0, os.SEEK_SET)
                        with self._grown_lock:
                            self.grown[number] = fd, size
                        fd = -1  # the main thread reads it (`take_grown`)
                finally:
                    if fd >= 0:
                        os.close(fd)
            except FileNotFoundError:
                pieces.append((number, b"", _VANISHED, None))  # the caller drops it
                continue
            except OSError as exc:
                if (why := _unreadable(exc)) is None:
                    raise SourceError(f"cannot read {item.path}: {exc.strerror}") from None
                self.unreadable[number] = why
                pieces.append((number, b"", _VANISHED, None))
                continue
            if data is None:
                pieces.append((number, b"", _GROWN, None))
                continue
            for view in self._chunker().cut(data):  # none for an empty file
                chunk_id = self._sealer.chunk_id(view)
                if chunk_id not in self._known:
                    waiting.append((len(pieces), view))
                pieces.append((number, chunk_id, len(view), None))
        prepared = self._sealer.prepare_all([view for _, view in waiting])
        for (at, _), blob in zip(waiting, prepared, strict=True):
            number, chunk_id, length, _ = pieces[at]
            pieces[at] = (number, chunk_id, length, blob)
        return pieces

    def take_grown(self, number: int) -> tuple[int, int]:
        with self._grown_lock:
            return self.grown.pop(number)

    def submit(
        self, task: Callable[..., list[Piece]], *args: Any, window: _Window | None = None
    ) -> None:
        if window is not None:
            window.hold()
        self.inflight.append((self.pool.submit(task, *args), window))

    def done_with(self, window: _Window | None) -> None:
        if window is not None:
            window.release()

    def window(self) -> _Window:
        """A free read buffer (their number is bounded by the tasks in flight and the
        reader's lead)."""
        with self._free_lock:
            if self._free:
                window = self._free.pop()
                window.users = 1
                return window
        return _Window(self.headroom + self.read_size, self._free, self._free_lock)

    def _result(self) -> tuple[list[Piece], _Window | None]:
        future, window = self.inflight.popleft()
        try:
            return future.result(), window
        except BaseException:
            self.done_with(window)
            raise

    def ready(self, block: bool) -> Iterator[tuple[list[Piece], _Window | None]]:
        """Finished results in order; with `block`, wait until few enough are in flight."""
        while self.inflight and (
            self.inflight[0][0].done() or (block and len(self.inflight) > self.limit)
        ):
            yield self._result()

    def drain(self) -> Iterator[tuple[list[Piece], _Window | None]]:
        while self.inflight:
            yield self._result()

    def shutdown(self) -> None:
        for future, _window in self.inflight:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for fd, _ in self.grown.values():  # left by a backup that failed
            os.close(fd)
        self.grown.clear()
        with self._free_lock:
            self._free.clear()  # each window refers to this list: freed now, not by the GC


@cycle_collector_paused()
@short_gil_turns()
def create_snapshot(
    source: str | os.PathLike[str],
    storage_url: str,
    root_key: bytes,
    progress: Progress | None = None,
    *,
    force_read: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    repo_params: Mapping[str, int] | None = None,
    state_dir: Path | None = None,
    key_kind: int = KEY_UNKNOWN,
    exclude: tuple[str, ...] = (),
    on_new_repository: Callable[[], None] | None = None,
    one_file_system: bool = False,
) -> SnapshotInfo:
    """Back up `source` into the repository at `storage_url` (created on first use; then
    `on_new_repository` is called as soon as it exists, before anything else is written).
    `key_kind` (backup/keykinds.py) records how RK is kept: the vault, or a recovery code.
    `exclude`: patterns of paths inside `source` to leave out (`excluded`).
    `one_file_system`: a folder on another file system than `source` (a mount point) is
    backed up empty, as restic's `--one-file-system`.

    With `state_dir`, the device remembers the snapshot it made, and the next backup warns
    if storage no longer shows it (deleted, or hidden: a rollback)."""
    if key_kind not in KEY_NAMES:
        raise InvalidInput(f"unknown key kind {key_kind}")
    if isinstance(exclude, str):  # a str is a tuple of one-letter patterns to the checker
        raise TypeError("exclude is a tuple of patterns")
    source_path = Path(source).absolute()
    if not source_path.exists():
        raise SourceError(f"backup source {source_path} does not exist")
    stay_on = source_stat(source_path).st_dev if one_file_system else None
    snapshots.check_time(time.time_ns() // 1000)  # before anything is read or written
    reporter = progress or NoProgress()
    _keep_freed_memory()
    storage = Storage(storage_url, storage_options)
    repo = Repository.open(storage, root_key, create=True, **dict(repo_params or {}))
    if repo.created and on_new_repository is not None:
        on_new_repository()
    state = (
        DeviceState(state_dir, repo.keys.repo_id, place_of(storage))
        if state_dir is not None
        else None
    )
    with repo.lock(SHARED) as lock:
        info = _create_locked(
            repo,
            lock,
            source_path,
            reporter,
            force_read,
            workers or cpu_workers(),
            state,
            key_kind,
            exclude,
            stay_on,
        )
    if state is not None:
        state.made(info.source, info.snapshot_id)
    return info


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the
    kernel, for the rest of the process (which a backup's read windows and sealed blobs
    do not outlive by much: the CLI exits after it): allocations of up to 32 MiB come from
    the heap rather than each from a mapping of its own, and the heap is not trimmed below
    1 GiB. Measured on the 2-core VM (docs/performance.md), a first backup of 512 MiB took
    about 15 % less CPU and wall time: every mapping unmapped by one thread costs the
    others a TLB flush, and every fresh page a fault. Other C libraries: left alone."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _create_locked(
    repo: Repository,
    lock: Lock,
    source: Path,
    reporter: Progress,
    force_read: bool,
    workers: int,
    state: DeviceState | None,
    key_kind: int,
    exclude: tuple[str, ...],
    stay_on: int | None,
) -> SnapshotInfo:
    listed_index, packs, adopted = repo.load_index()
    index, lost = listed_index.present(packs)
    warnings: list[str] = []
    if lost:
        warnings.append(
            f"{len(lost)} pack{'s' if len(lost) != 1 else ''} that the index lists "
            f"{'are' if len(lost) != 1 else 'is'} missing from storage: files with chunks "
            "in them are read and stored again; older snapshots that need them stay "
            "damaged (`backup check` names them, `backup prune` drops the lost packs)"
        )
    before = state.held_before() if state is not None else None
    if before is not None:
        # Its snapshots are in that repository's state, not this one's: a rollback of this
        # place (another repository of the same key served in its stead) goes unseen else.
        warnings.append(another_repository(repo.backend.display_url, before, repo.keys.repo_id))
    last = state.last_made(str(source)) if state is not None else None
    listed = repo.list_snapshots()  # once: the rollback check's and the parent's
    # One there but damaged is no rollback (review s42-B, B6); one listed but not served is.
    if last is not None and last not in {s.id_hex for s in listed} | set(repo.damaged):
        what = f"the last snapshot this device made of {source},"
        warnings.extend(m for m in repo.why_gone(last, what) if m)
    host = host_name()
    parent: snapshots.Snapshot | None = None
    for candidate in reversed(listed):
        if candidate.summary.source == str(source) and candidate.summary.host == host:
            try:
                parent = repo.read_snapshot(candidate.id_hex)
            except (AuthenticationFailed, InvalidInput) as exc:
                # Its tree is damaged: back up without a parent (every file is read) rather
                # than never again.
                repo.found_damaged(candidate.id_hex, exc)
            break
    warnings.extend(
        f"snapshot {name} cannot be read ({why}): left out; `backup check` shows the damage"
        for name, why in sorted(repo.damaged.items())
    )
    warnings.extend(
        f"index object {name} cannot be read ({why}): left out; the packs it named that "
        "still open are indexed again by this backup, and `backup prune` removes it"
        for name, why in sorted(repo.damaged_indexes.items())
    )
    previous: dict[bytes, Entry] = {}
    if parent is not None and parent.entries is not None and not force_read:
        previous = {e.path: e for e in parent.entries if e.kind == FILE}

    kind, items, skipped, notes = walk(source, exclude, stay_on)
    warnings.extend(notes)
    entries = [item.entry for item in items]
    # A tree no reader would open, by the walk alone (each file's fewest chunks), stops
    # the backup before a file is read; `snapshots.seal` checks the tree it makes.
    fewest = sum(-(-e.size // repo.config.chunk_max) for e in entries if e.kind == FILE)
    snapshots.check_tree_size(
        tree.encoded_size(entries) + CHUNK_ID_LEN * fewest, len(entries), str(source)
    )
    total = sum(e.size for e in entries if e.kind == FILE)
    packer = PackWriter(repo, index)
    pool = _Workers(repo, packer, workers)
    chunker = repo.chunker()
    added = 0
    files_read = 0
    vanished: set[int] = set()
    grown: list[int] = []  # small files that grew since the walk, to read as large ones

    def read_grown() -> None:
        while grown:
            number = grown.pop()
            fd, size = pool.take_grown(number)
            _submit_large(pool, chunker, number, items[number], size, consume, fd)

    def consume(result: tuple[list[Piece], _Window | None]) -> None:
        """Record a task's chunks; blobs for the packer hold the window their bytes are
        in, until sealed into their pack."""
        nonlocal added
        pieces, window = result
        for number, chunk_id, length, blob in pieces:
            if length == _GROWN:
                grown.append(number)
                continue
            if length < 0:
                vanished.add(number)
                continue
            entry = entries[number]
            entry.chunks.append(chunk_id)
            entry.size += length  # what was read, not what stat said before
            if blob is not None and chunk_id not in packer:
                packer.add(chunk_id, blob, length, window.hold() if window else None)
                added += length
            reporter.advance(length)
        pool.done_with(window)

    reporter.start(total, "backing up")
    small: list[tuple[int, Item, int]] = []
    try:
        for number, item in enumerate(items):
            entry = item.entry
            if entry.kind != FILE:
                continue
            old = previous.get(entry.path)
            if (
                old is not None
                and (old.size, old.mtime_ns, old.ctime_ns, old.inode)
                == (entry.size, entry.mtime_ns, entry.ctime_ns, entry.inode)
                and all(c in index.chunks for c in old.chunks)
            ):
                entry.chunks = list(old.chunks)
                reporter.advance(entry.size)
                continue
            files_read += 1
            listed_size = entry.size
            entry.size = 0  # counted again from the chunks read
            if listed_size <= chunker.min_size:
                small.append((number, item, listed_size))
                if len(small) >= _SMALL_BATCH:
                    pool.submit(pool.read_small, small)
                    small = []
            else:
                _submit_large(pool, chunker, number, item, listed_size, consume)
            for result in pool.ready(block=True):
                consume(result)
            read_grown()
        if small:
            pool.submit(pool.read_small, small)
        while pool.inflight or grown:
            for result in pool.drain():
                consume(result)
            read_grown()
        packer.finish()
    except BaseException:
        pool.shutdown()
        packer.abort()
        raise
    finally:
        reporter.finish()
    pool.shutdown()

    warnings.extend(
        f"{os.fsdecode(entries[number].path)}: changed during the backup: it grew past "
        f"{limit:,} bytes while it was read ({size:,} when the walk saw it); its first "
        f"{limit:,} bytes are stored (run the backup again once it stops growing)"
        for number, (size, limit) in sorted(pool.cut_short.items())
    )
    for number in sorted(vanished):
        # A file deleted since the walk is not missing from the snapshot; one that could
        # not be read is.
        unread = number in pool.unreadable
        reason = pool.unreadable.get(number, "vanished during the backup")
        skipped.append(Skipped(os.fsdecode(entries[number].path), reason, unread=unread))
    kept = [e for n, e in enumerate(entries) if n not in vanished]

    new_packs = dict(packer.written)
    for name in adopted:
        new_packs[bytes.fromhex(name)] = index.packs[bytes.fromhex(name)]
    stored = packer.stored
    # A prune that took our lock for stale (deleting it first) may have deleted packs we
    # wrote or reuse: named by no index and no snapshot of ours, then.
    lock.verify()
    if new_packs:
        stored += repo.write_index(new_packs)[1]
    summary = snapshots.Summary(
        kind=kind,
        files=sum(e.kind == FILE for e in kept),
        folders=sum(e.kind == DIR and e.path != ROOT for e in kept),
        links=sum(e.kind == SYMLINK for e in kept),
        size=sum(e.size for e in kept if e.kind == FILE),
        added=added,
        stored=stored,
        source=str(source),
        host=host,
        key_kind=key_kind,
    )
    parent_id = parent.header.snapshot_id if parent is not None else None
    created_us = time.time_ns() // 1000
    snapshot_id, data = snapshots.seal(
        repo.root_key, repo.keys.repo_id, parent_id, summary, kept, created_us
    )
    lock.verify()  # again: chunks of other snapshots this one reuses are not safe before
    repo.backend.put(f"snapshots/{snapshot_id.hex()}", data)
    try:
        # And once it is stored: a prune removes stale locks before it lists snapshots,
        # so if ours is still there, every prune that ignores it will see this snapshot;
        # if not, one may have listed them before it landed, and deleted its chunks.
        lock.verify()
    except (BackupVaultError, KeyboardInterrupt) as lost:
        # Not confirmed (the lock is gone, could not be read back, or read back as other
        # bytes: review s47, F2; or a stop signal came meanwhile: review s60): the
        # snapshot is taken back, so that the failure reported is the state left.
        try:
            repo.backend.delete(f"snapshots/{snapshot_id.hex()}")
        except StorageError:
            if isinstance(lost, BackupVaultError):
                lost.hint = (
                    f"snapshot {snapshot_id.hex()[:16]} may be stored but its data is not"
                    " confirmed: run `backup check`, then the backup again"
                )
        raise
    stored += len(data)
    return SnapshotInfo(
        snapshot_id=snapshot_id.hex(),
        parent_id=parent_id.hex() if parent_id else None,
        created_at=snapshots.SnapshotHeader.from_bytes(data).created_at,
        source=str(source),
        files=summary.files,
        folders=summary.folders,
        links=summary.links,
        size=summary.size,
        # Files it could not read (or that vanished) were tried, not read.
        files_read=files_read - len(vanished),
        added=added,
        stored=stored,
        url=repo.backend.display_url,
        skipped=skipped,
        warnings=warnings,
    )


def _read_limit(size: int) -> int:
    """The most read of a file that held `size` bytes before its read began: the headroom
    the single-blob format gave a source growing while read (1/64, and 1 MiB). A file
    growing faster than it is read (a log, or a writer keeping ahead on purpose) would be
    read without end."""
    return size + size // 64 + (1 << 20)


def _submit_large(
    pool: _Workers,
    chunker: Chunker,
    number: int,
    item: Item,
    size: int,
    consume: Callable[[tuple[list[Piece], _Window | None]], None],
    fd: int | None = None,
) -> None:
    """Read the file in windows (readinto: no page faults of a mapping, and no GIL held
    while the kernel copies; on a thread of its own when there is more than one window, so
    the copy runs beside the cutting), cut each on this thread (pyfastcdc releases the GIL
    too), and hand its chunks to the workers in batches of about 8 MiB. The tail of a
    window that is not surely cut yet goes before the next window's bytes (in its
    headroom), so the chunks are the same as a cut of the whole file. `size`: what the walk
    saw (at most `_Reader.limit` bytes are read, and cut as the file's end). `fd`: the
    file, already open (checked) at its start; else it is opened here."""
    path = item.path
    try:
        if fd is None:
            with _Folders() as folders:
                fd = _open_seen(item, folders)[0]
    except FileNotFoundError:
        pool.inflight.append((_done([(number, b"", _VANISHED, None)]), None))
        return
    except OSError as exc:
        if (why := _unreadable(exc)) is None:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None
        pool.unreadable[number] = why
        pool.inflight.append((_done([(number, b"", _VANISHED, None)]), None))
        return
    handle = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed below)
    with handle, _Reader(handle, pool, size) as reader:
        with contextlib.suppress(OSError):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        previous: _Window | None = None
        tail = memoryview(b"")  # the previous window's uncut end
        final = False
        while not final:
            try:
                window, filled, final = reader.next()
            except OSError as exc:
                if (why := _unreadable(exc)) is None:
                    raise SourceError(f"cannot read {path}: {exc.strerror}") from None
                # Its chunks handed over so far are dropped with it (after them, in order).
                pool.unreadable[number] = why
                pool.inflight.append((_done([(number, b"", _VANISHED, None)]), None))
                break
            buffer = memoryview(window.data)
            start = pool.headroom - len(tail)
            _copy(buffer[start : pool.headroom], tail)
            tail.release()
            pool.done_with(previous)
            views, cut = chunker.cut_window(buffer[start : pool.headroom + filled], final)
            tail = buffer[start + cut : pool.headroom + filled]
            batch: list[memoryview] = []
            batch_bytes = 0
            for view in views:
                batch.append(view)
                batch_bytes += len(view)
                if batch_bytes >= _TASK_BYTES:
                    pool.submit(pool.seal_views, number, batch, window=window)
                    batch, batch_bytes = [], 0
                    for result in pool.ready(block=True):
                        consume(result)
            if batch:
                pool.submit(pool.seal_views, number, batch, window=window)
            previous = window
            for result in pool.ready(block=True):
                consume(result)
        pool.done_with(previous)
    if reader.cut_short:
        pool.cut_short[number] = size, reader.limit


class _Reader:
    """A file's windows, read into the space after their headroom, up to `limit` bytes
    in all: ahead on a thread of its own if the file is larger than one window (at most
    `_READ_AHEAD` windows), else on the caller's thread. Each comes with whether it is the
    last: the file's end, or `limit` reached (then `cut_short` says if the file holds more).

    `limit` is `_read_limit` of the larger of `walked` (its size at the walk) and its size
    now: fixed before the first read, so a file is read to an end whatever writes to it;
    one that grew between the walk and its read (a download) is read whole, as it was
    when its read began."""

    def __init__(self, handle: io.FileIO, pool: _Workers, walked: int) -> None:
        self._handle = handle
        self._pool = pool
        size = os.fstat(handle.fileno()).st_size
        self.limit = self._left = _read_limit(max(walked, size))
        self.cut_short = False
        self._stop = threading.Event()
        self._ready: queue.Queue[tuple[_Window, int, bool] | BaseException] = queue.Queue(
            _READ_AHEAD
        )
        self._thread: threading.Thread | None = None
        if size > pool.read_size:
            self._thread = threading.Thread(target=self._run, name="backup-read", daemon=True)
            self._thread.start()

    def _read(self) -> tuple[_Window, int, bool]:
        window = self._pool.window()
        want = min(self._pool.read_size, self._left)
        start = self._pool.headroom
        with memoryview(window.data) as buffer:
            try:
                filled = _read_into(self._handle, buffer[start : start + want])
                self._left -= filled
                if filled == want and not self._left:
                    # Stopped at the limit, not at the end: one byte more says if it grew.
                    self.cut_short = bool(self._handle.read(1))
            except OSError:
                self._pool.done_with(window)
                raise
        return window, filled, filled < want or not self._left

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._read()
            except BaseException as exc:  # handed over: the cutter raises it
                self._put(exc)
                return
            self._put(item)
            if item[2]:
                return

    def _put(self, item: tuple[_Window, int, bool] | BaseException) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._ready.put(item, timeout=0.05)
                return

    def next(self) -> tuple[_Window, int, bool]:
        if self._thread is None:
            return self._read()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _copy(into: memoryview, data: memoryview) -> None:
    """into[:] = data without holding the GIL (ctypes releases it; a window's tail is up
    to chunk_max bytes, and the other threads wait meanwhile otherwise)."""
    if len(data):
        assert len(into) >= len(data)
        target = ctypes.addressof(ctypes.c_char.from_buffer(into))
        ctypes.memmove(target, ctypes.addressof(ctypes.c_char.from_buffer(data)), len(data))


def _read_into(handle: io.FileIO, buffer: memoryview) -> int:
    """Fill `buffer` from the file; fewer bytes only at its end."""
    filled = 0
    while filled < len(buffer):
        got = handle.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def _done(pieces: list[Piece]) -> Future[list[Piece]]:
    future: Future[list[Piece]] = Future()
    future.set_result(pieces)
    return future
