"""Repository objects in storage: whole-object put (atomic where the storage allows),
get, ranged get, list, delete. Names are `config` and `<folder>/<32 hex>`.

Local folders and WebDAV write under a hidden temporary name and rename, so a name only
ever holds a complete object; object stores (S3) make a single PUT visible whole.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import math
import mmap
import os
import re
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from backupvault.backup.errors import Corrupt, Damaged, StorageError
from backupvault.backup.storage import (
    SFTP_FILE_SYSTEMS,
    Storage,
    entry_name,
    entry_size,
    read_range,
)
from backupvault.errors import InvalidInput

FOLDERS: Final = ("data", "index", "snapshots", "locks", "forgotten")
log = logging.getLogger("backupvault.backup")
# Ours, and at the top a single-blob backup's (`.backup-<time>-<id>.bvb.<random>.partial`).
_TEMPORARY: Final = re.compile(
    r"^\.?(config|[0-9a-f]{32}|backup-[0-9TZ.]+-[0-9a-f]{32}\.bvb)\.[0-9a-f]{16}\.partial$"
)
_IOV_MAX: Final = 1024
# A repository folder is opened so: a symbolic link in its place is refused (ELOOP).
_FOLDER_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# Writes of up to 128 KiB: measured on the 2-core VM this was tuned on, the kernel spent
# 0.2-0.4 s copying 512 MiB into the page cache in 128 KiB writes, 1.1 s in 1 MiB or
# larger ones (the largest single cost of a first backup).
_WRITE_BYTES: Final = 128 * 1024
# Objects of at least 1 MiB (packs) are written with O_DIRECT where the file system takes
# it: the disk reads them straight from our buffer, and the kernel copies nothing into the
# page cache (measured on the 2-core VM: 512 MiB took 0.4 s of system CPU in buffered
# 128 KiB writes and their fsync, 0.1 s direct, and the direct writes ran at the speed
# of `cat > file; sync`). The fsyncs stay: they make the file's size and blocks durable
# and flush the disk's cache.
_DIRECT_MIN: Final = 1 << 20
_DIRECT_ALIGN: Final = 4096  # address, offset and length (logical blocks up to 4 KiB)
# Buffers are private anonymous mappings: a first touch of a page costs about 0.6 ms
# per MiB on the 2-core VM, against 1.0 ms for mmap's default (shared, so shmem) pages.
PRIVATE_MEMORY: Final = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_DIRECT_SPARE: Final = 4  # aligned buffers kept for reuse (a fresh page costs a fault)
# Each is mapped at least this large, so any spare takes any pack: packs vary in size (a
# pack closes with the chunk that takes it past its size), and pages never touched cost
# nothing.
_DIRECT_BUFFER: Final = 32 << 20
Buffer = bytes | bytearray | memoryview


class Filled(NamedTuple):
    """An object of `size` bytes that `fill` writes into the buffer it is given: the
    buffer that goes to storage (packs are sealed straight into it, without a copy).
    A put calls `fill` exactly once, so it may let go of its sources as it returns."""

    size: int
    fill: Callable[[memoryview], None]

    def to_bytes(self) -> bytearray:
        data = bytearray(self.size)
        with memoryview(data) as view:
            self.fill(view)
        return data


def _copier(parts: list[Buffer]) -> Callable[[memoryview], None]:
    def fill(out: memoryview) -> None:
        offset = 0
        for part in parts:
            with memoryview(part) as view, view.cast("B") as raw:
                out[offset : offset + len(raw)] = raw
                offset += len(raw)

    return fill


class MissingObject(Damaged, StorageError):
    """A repository object that should be there is not."""


class TooLarge(Corrupt):
    """An object longer than any this program writes under its name (`Backend.get`)."""


class Backend:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.is_local = storage.is_local
        self._is_webdav = not self.is_local and type(storage.fs).__name__ == "WebdavFileSystem"
        # sftp (sshfs, or fsspec's paramiko one) writes an object in place: one cut off
        # (a backup killed, a connection lost) was left under its name, torn.
        self._is_sftp = not self.is_local and type(storage.fs).__name__ in SFTP_FILE_SYSTEMS
        self._made: set[str] = set()
        self._warned: set[str] = set()  # folders whose stray names were warned of
        self._direct = self.is_local and hasattr(os, "O_DIRECT")
        self._spare: list[mmap.mmap] = []
        self._spare_lock = threading.Lock()

    @property
    def fs(self) -> Any:
        return self.storage.fs

    @property
    def display_url(self) -> str:
        return self.storage.display_url

    def _error(self, what: str, exc: BaseException) -> StorageError:
        return self.storage._error(what, exc)

    def path(self, name: str) -> str:
        return self.storage.path(name)

    def _makedirs(self, folder: str) -> None:
        if folder in self._made:
            return
        path = self.path(folder) if folder else self.storage.root
        if self.is_local:
            os.makedirs(path, exist_ok=True)
            if folder and os.path.islink(path):
                raise self._linked(folder)
        else:
            self.fs.makedirs(path, exist_ok=True)
        self._made.add(folder)

    def _linked(self, folder: str) -> InvalidInput:
        return InvalidInput(
            f"{folder} at {self.display_url} is a symbolic link: a repository's folders "
            "never are, and one may lead into another repository (whose objects would be "
            "taken for this one's, and deleted as unused)",
            hint=f"put the folder itself in its place (or remove the link, if {folder}/ was empty)",
        )

    def _open_folder(self, folder: str) -> int:
        """A descriptor of a local repository folder (not the root: the user chose that
        path, links and all), refused if it is a symbolic link; FileNotFoundError if it
        is missing. Names are then listed and deleted relative to it, so a link swapped
        in after a check is not followed either."""
        try:
            return os.open(self.path(folder), _FOLDER_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.path(folder)):
                raise self._linked(folder) from None
            raise

    @contextlib.contextmanager
    def _scan_local(self, folder: str) -> Iterator[Iterator[os.DirEntry[str]]]:
        """The entries of a local folder ("" the root), through `_open_folder`."""
        if not folder:
            with os.scandir(self.storage.root) as entries:
                yield entries
            return
        fd = self._open_folder(folder)
        try:
            with os.scandir(fd) as entries:
                yield entries
        finally:
            os.close(fd)

    def put(
        self, name: str, data: Buffer | list[Buffer] | Filled, *, sync_folder: bool = True
    ) -> None:
        """Store an object made of `data` (one buffer, several written in order, or what a
        `Filled` writes); it is
        durable when this returns (local folders: fsync of the file and its folder;
        remote stores acknowledge a PUT only once it is stored). Without `sync_folder`,
        a local object's name is durable only after `sync_folder(folder)`: for many
        objects of one folder that must all be durable before the next step."""
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        final = self.path(name)
        try:
            self._makedirs(folder)
            if self.is_local:
                with self._written_in(folder) as at:
                    self._put_local(at, name.rsplit("/", 1)[-1], data, sync_folder)
                return
            parts = [data.to_bytes()] if isinstance(data, Filled) else _parts(data)
            if self._is_webdav:
                temp = f"{final}.{secrets.token_hex(8)}.partial"
                self.fs.pipe_file(temp, b"".join(parts))
                self.fs.client.move(temp, final, overwrite=True)
            elif self._is_sftp:
                # A hidden temporary renamed (SFTP's posix-rename: atomic, and it replaces
                # a lock refreshed), as on a local folder: a snapshot cut off on its way
                # was a damaged one, which stopped every prune until `forget --damaged`
                # (review s61).
                parent, base = final.rsplit("/", 1)
                temp = f"{parent}/{_temp_name(base)}"
                try:
                    self.fs.pipe_file(temp, b"".join(parts))
                except Exception:
                    with contextlib.suppress(Exception):
                        self.fs.rm_file(temp)
                    raise
                self.fs.mv(temp, final)
            else:
                self.fs.pipe_file(final, b"".join(parts))
        except (StorageError, InvalidInput):
            raise
        except Exception as exc:
            raise self._error(f"cannot store {name}", exc) from None

    def put_new(self, name: str, data: bytes) -> bool | None:
        """Store a small object only if `name` holds none: True if it was stored, False if
        one was there already (left as it is). None where storage cannot refuse to replace
        an object atomically: it was stored unless one was seen first, and a writer racing
        with this one may replace it (read it back a little later to know which is kept).

        Local folders: a complete temporary linked to the name (`link` fails if it
        exists). WebDAV: `MOVE` with `Overwrite: F`. S3 (s3fs): a PUT with
        `If-None-Match: *`. Other fsspec storage: look, then write."""
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        final = self.path(name)
        try:
            self._makedirs(folder)
            if self.is_local:
                with self._written_in(folder) as at:
                    return self._put_new_local(at, name.rsplit("/", 1)[-1], data)
            if self._is_webdav:
                from webdav4.client import ResourceAlreadyExists

                temp = f"{final}.{secrets.token_hex(8)}.partial"
                self.fs.pipe_file(temp, data)
                try:
                    self.fs.client.move(temp, final, overwrite=False)
                except ResourceAlreadyExists:
                    self.fs.rm_file(temp)
                    return False
                return True
            if _can_create_only(self.fs):
                try:
                    self.fs.pipe_file(final, data, mode="create")
                except FileExistsError:
                    return False
                return True
            if self.fs.exists(final):
                return False
            self.fs.pipe_file(final, data)
            return None
        except (StorageError, InvalidInput):
            raise
        except Exception as exc:
            raise self._error(f"cannot store {name}", exc) from None

    def ages(self, folder: str) -> dict[str, float | None]:
        """{32-hex id: seconds since it was written, or None if storage does not say} of
        the objects in `folder`."""
        return self._ages(folder, folder, _is_id)

    @contextlib.contextmanager
    def _written_in(self, folder: str) -> Iterator[int]:
        """A descriptor of the local folder an object is written into ("" the root, which
        the user chose, links and all): a repository folder through `_open_folder`, so a
        link put in its place after the first check is refused at every write, not
        written through (review s47, F4), as listing and deleting refuse it."""
        if folder:
            at = self._open_folder(folder)
        else:
            at = os.open(self.storage.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield at
        finally:
            os.close(at)

    def _put_local(
        self, at: int, base: str, data: Buffer | list[Buffer] | Filled, sync_folder: bool
    ) -> None:
        """Write the object `base` into the folder `at` (`_written_in`)."""
        parts: list[Buffer] = []
        if isinstance(data, Filled):
            filled = data
        else:
            parts = _parts(data)
            filled = Filled(sum(memoryview(part).nbytes for part in parts), _copier(parts))
        if self._direct and filled.size >= _DIRECT_MIN:
            self._put_direct(at, base, filled)
        else:
            temp = _temp_name(base)
            buffered: list[Buffer] = [filled.to_bytes()] if isinstance(data, Filled) else parts
            self._fill_temp(at, temp, lambda fd: _write_all(fd, buffered))
            os.replace(temp, base, src_dir_fd=at, dst_dir_fd=at)
        if sync_folder:
            os.fsync(at)

    def _put_new_local(self, at: int, base: str, data: bytes) -> bool | None:
        """`put_new` in the local folder `at`: a complete temporary linked to the name."""
        temp = _temp_name(base)
        self._fill_temp(at, temp, lambda fd: _write_all(fd, [data]))
        try:
            os.link(temp, base, src_dir_fd=at, dst_dir_fd=at)
        except FileExistsError:
            os.unlink(temp, dir_fd=at)
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                os.unlink(temp, dir_fd=at)
                raise
            # FAT, exFAT, many SMB mounts: no hard links. Look, then rename (the object is
            # whole either way; a writer racing with this one may replace it, so the
            # caller reads it back).
            try:
                os.lstat(base, dir_fd=at)
            except FileNotFoundError:
                os.replace(temp, base, src_dir_fd=at, dst_dir_fd=at)
                os.fsync(at)
                return None
            os.unlink(temp, dir_fd=at)
            return False
        os.unlink(temp, dir_fd=at)
        os.fsync(at)
        return True

    def sync_folder(self, folder: str) -> None:
        """Make the names of objects put into `folder` without `sync_folder` durable."""
        if not self.is_local:
            return
        try:
            with self._written_in(folder) as at:
                os.fsync(at)
        except OSError as exc:
            raise self._error(f"cannot store {folder}", exc) from None

    @staticmethod
    def _fill_temp(at: int, temp: str, write: Callable[[int], None], flags: int = 0) -> None:
        """Create `temp` in the folder `at`, write it with `write(fd)` and fsync it;
        removed on failure."""
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600, dir_fd=at)
        try:
            write(fd)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=at)
            raise
        os.close(fd)

    def _put_direct(self, at: int, base: str, filled: Filled) -> None:
        """Write the object with O_DIRECT from an aligned buffer (filled in place), padded
        to the alignment and truncated back. If the file system refuses O_DIRECT or its
        alignment, the filled buffer is written buffered instead, and every later object
        too (`fill` has run: it is not called again)."""
        size = filled.size
        padded = -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN
        buffer = self._aligned_buffer(padded)
        try:
            with memoryview(buffer) as whole:
                with whole[:size] as room:
                    filled.fill(room)
                whole[size:padded] = bytes(padded - size)

                def write(fd: int) -> None:
                    with whole[:padded] as out:
                        written = 0
                        while written < padded:
                            written += os.write(fd, out[written:])
                    os.ftruncate(fd, size)

                temp = _temp_name(base)
                try:
                    self._fill_temp(at, temp, write, os.O_DIRECT)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._direct = False
                    temp = _temp_name(base)
                    with whole[:size] as content:
                        self._fill_temp(at, temp, lambda fd: _write_all(fd, [content]))
            os.replace(temp, base, src_dir_fd=at, dst_dir_fd=at)
        finally:
            self._return_buffer(buffer)

    def _aligned_buffer(self, size: int) -> mmap.mmap:
        """A page-aligned buffer of at least `size` bytes (an anonymous mapping)."""
        with self._spare_lock:
            for number, spare in enumerate(self._spare):
                if len(spare) >= size:
                    return self._spare.pop(number)
        return mmap.mmap(-1, max(_DIRECT_BUFFER, -(-size // (1 << 20)) << 20), flags=PRIVATE_MEMORY)

    def _return_buffer(self, buffer: mmap.mmap) -> None:
        with self._spare_lock:
            if len(self._spare) < _DIRECT_SPARE:
                self._spare.append(buffer)
                return
        buffer.close()

    def get(
        self,
        name: str,
        start: int | None = None,
        end: int | None = None,
        *,
        most: int | None = None,
    ) -> bytes:
        """The object's bytes, or bytes [start, end) of it. With `most`, the whole object
        if it is no longer than that, else `InvalidInput` having read at most one byte
        more: storage may hold anything under a name (a sparse file of a terabyte costs
        it nothing), and what this program wrote there has a known largest size."""
        if most is not None:
            start, end = 0, most + 1
        path = self.path(name)
        try:
            if self.is_local:
                # Not blocking: a FIFO put under the name would hang the open (and every
                # command with it); it, or a device, is then refused as no file.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
                with open(fd, "rb") as handle:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise Corrupt(f"{name} at {self.display_url} is not a file")
                    if end is not None:  # no buffer of a range past the end is made
                        end = min(end, st.st_size)
                    if start is not None:
                        handle.seek(start)
                    data = handle.read(-1 if end is None else max(0, end - (start or 0)))
            elif start is None and end is None:
                data = bytes(self.fs.cat_file(path))
            elif self._is_sftp:
                data = read_range(self.fs, path, start or 0, end)
            else:
                data = bytes(self.fs.cat_file(path, start=start, end=end))
        except FileNotFoundError:
            raise MissingObject(f"{name} is missing from {self.display_url}") from None
        except InvalidInput:
            raise
        except Exception as exc:
            raise self._error(f"cannot read {name}", exc) from None
        if most is None and end is not None and len(data) > end - (start or 0):
            # A server that ignores the range sends the object from its start: the bytes
            # would be taken for those at `start` (and chunks in them for damaged ones).
            raise StorageError(
                f"cannot read {name} at {self.display_url}: storage sent {len(data)} bytes "
                f"for a range of {end - (start or 0)}",
                hint="this storage does not serve byte ranges (HTTP Range) as asked",
            )
        if most is not None and len(data) > most:
            raise TooLarge(
                f"{name} at {self.display_url} is larger than any object this program "
                f"writes there ({most} bytes): it is not one of this repository's"
            )
        return data

    def exists(self, name: str) -> bool:
        try:
            if self.is_local:
                return os.path.exists(self.path(name))
            return bool(self.fs.exists(self.path(name)))
        except Exception as exc:
            raise self._error(f"cannot read {name}", exc) from None

    def list(self, folder: str) -> dict[str, int]:
        """{32-hex id: size} of the complete objects in `folder`. Storage lists what it
        likes: temporaries are skipped, a name listed twice counts once, and a file
        whose name is no object id (or that storage gives no name or byte count for) is
        left out, with one warning for the folder (`strays`). Nothing is kept of what is
        left out but a count and a few names, so millions of them cost no memory here."""
        path = self.path(folder)
        result: dict[str, int] = {}
        strays = _Strays()
        try:
            if self.is_local:
                self._list_local(folder, result, strays)
                listed: list[Any] = []
            else:
                self.fs.invalidate_cache(path)  # s3fs and others cache listings
                listed = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return result
        except InvalidInput:
            raise
        except Exception as exc:
            raise self._error(f"cannot list {folder}", exc) from None
        for entry in listed:
            name = entry_name(entry)
            if name is not None and entry.get("type") not in (None, "file"):
                continue  # a folder: nothing this program writes, and nothing it reads
            size = None if name is None else entry_size(entry)
            if name is None or size is None:
                strays.add(name if name is not None else "(an entry with no name)")
            elif _is_id(name):
                result.setdefault(name, size)
            elif not _TEMPORARY.match(name):
                strays.add(name)
        self._warn_strays(folder, strays)
        return result

    def _list_local(self, folder: str, result: dict[str, int], strays: _Strays) -> None:
        """`list` of a local folder: its files (links are not followed), one by one."""
        with self._scan_local(folder) as listing:
            for entry in listing:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if _is_id(entry.name):
                        result[entry.name] = entry.stat(follow_symlinks=False).st_size
                    elif not _TEMPORARY.match(entry.name):
                        strays.add(entry.name)
                except FileNotFoundError:
                    continue  # deleted since it was listed (a forget or prune elsewhere)

    def _warn_strays(self, folder: str, strays: _Strays) -> None:
        """One warning per folder and backend (a command lists some folders often)."""
        if strays.count and folder not in self._warned:
            self._warned.add(folder)
            log.warning(
                "%s at %s holds %d name(s) that are no object of this repository, left out: %s",
                folder,
                self.display_url,
                strays.count,
                strays.describe(),
            )

    def temporaries(self, folder: str) -> dict[str, float | None]:
        """{name: seconds since last written, or None if storage does not say} of the
        temporary objects in `folder` (`.<id>.<random>.partial`, WebDAV `<id>.<random>.partial`)
        that a put interrupted before its rename left behind."""
        return self._ages(folder, folder or "the repository", lambda n: bool(_TEMPORARY.match(n)))

    def _ages(
        self, folder: str, what: str, wanted: Callable[[str], bool]
    ) -> dict[str, float | None]:
        """{name: seconds since written, or None} of the files in `folder` ("" the root)
        whose name is `wanted` (none if the folder does not exist)."""
        found: dict[str, float | None] = {}
        now = time.time()
        path = self.path(folder) if folder else self.storage.root
        try:
            if self.is_local:
                with self._scan_local(folder) as entries:
                    for entry in entries:
                        if not (wanted(entry.name) and entry.is_file(follow_symlinks=False)):
                            continue
                        try:
                            stat_result = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            # Deleted since it was listed (a lock released, an object
                            # pruned): the others still have their times. Ending the scan
                            # here left every later lock without storage's time, so one
                            # from a clock behind ours was taken for stale (review s61).
                            continue
                        found[entry.name] = now - stat_result.st_mtime
                return found
            self.fs.invalidate_cache(path)
            listed = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return found
        except InvalidInput:
            raise
        except Exception as exc:
            raise self._error(f"cannot list {what}", exc) from None
        for entry in listed:
            name = entry_name(entry)
            if name is not None and wanted(name) and entry.get("type") in (None, "file"):
                written = _modified(entry)
                found[name] = None if written is None else now - written
        return found

    def delete(self, name: str) -> None:
        try:
            if self.is_local and "/" in name:
                folder, base = name.rsplit("/", 1)
                fd = self._open_folder(folder)  # never through a link to elsewhere
                try:
                    os.unlink(base, dir_fd=fd)
                finally:
                    os.close(fd)
            elif self.is_local:
                os.unlink(self.path(name))
            else:
                self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            return
        except InvalidInput:
            raise
        except Exception as exc:
            raise self._error(f"cannot delete {name}", exc) from None


def _can_create_only(fs: Any) -> bool:
    """Whether `fs.pipe_file` takes mode="create" (s3fs 2024.12 and later: a conditional
    PUT, `If-None-Match: *`, which S3 refuses with 412 if the key exists)."""
    if type(fs).__name__ != "S3FileSystem":
        return False
    try:
        return "mode" in inspect.signature(fs._pipe_file).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _parts(data: Buffer | list[Buffer]) -> list[Buffer]:
    return data if isinstance(data, list) else [data]


#: What `link` fails with on file systems without hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def _temp_name(base: str) -> str:
    return f".{base}.{secrets.token_hex(8)}.partial"


def _write_all(fd: int, parts: list[Buffer]) -> None:
    """writev of at most _WRITE_BYTES at a time (no joined copy of a 16 MiB pack),
    finishing short writes."""
    pending: deque[memoryview] = deque()
    for part in parts:
        view = memoryview(part).cast("B")
        pending.extend(view[i : i + _WRITE_BYTES] for i in range(0, len(view), _WRITE_BYTES))
    while pending:
        batch: list[memoryview] = []
        size = 0
        for piece in pending:
            if batch and (size + len(piece) > _WRITE_BYTES or len(batch) == _IOV_MAX):
                break
            batch.append(piece)
            size += len(piece)
        written = os.writev(fd, batch)
        while written:
            if written >= len(pending[0]):
                written -= len(pending.popleft())
            else:
                pending[0] = pending[0][written:]
                written = 0


#: The largest listing time taken, either side of 1970 (about the year 5138): beyond it a
#: lock's age in microseconds overflowed (review s47, F3: -1e308 s).
LISTED_TIME_LIMIT_S = 1e11


def _modified(entry: dict[str, Any]) -> float | None:
    """An fsspec listing entry's modification time (POSIX seconds), if it has one that is
    a finite number within `LISTED_TIME_LIMIT_S` (a server lists what it likes: NaN made a
    damaged lock's time raise ValueError in int(), a huge integer OverflowError in
    float())."""
    for key in ("mtime", "modified", "LastModified", "last_modified", "created"):
        value = entry.get(key)
        try:
            if isinstance(value, datetime):
                aware = value if value.tzinfo else value.replace(tzinfo=UTC)
                when = aware.timestamp()
            elif isinstance(value, int | float) and not isinstance(value, bool):
                when = float(value)
            else:
                continue
        except (OverflowError, ValueError, OSError):
            return None
        return when if math.isfinite(when) and abs(when) <= LISTED_TIME_LIMIT_S else None
    return None


class _Strays:
    """What a listing left out: how many, and the first few names (for the warning)."""

    SHOWN: Final = 3

    def __init__(self) -> None:
        self.count = 0
        self.names: list[str] = []

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.names) < self.SHOWN:
            self.names.append(name)

    def describe(self) -> str:
        # ascii(): a name may hold terminal escapes or be any length
        shown = ", ".join(ascii(name[:64]) for name in self.names)
        return shown + (", ..." if self.count > len(self.names) else "")


def _is_id(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)
