"""The plaintext inside a backup: a POSIX (pax) tar of a file or folder, zstd-compressed.

A folder is archived as "." (the folder itself, for its mode and mtime) followed by its
contents under relative names, depth-first in sorted order; a single file as one member
named after the file. Symbolic links are stored as links (never followed); hard links
within the source as tar hard links; FIFOs, sockets and device files are skipped and reported.

Extraction is stricter than tarfile's "data" filter: only regular files, folders, and links
whose targets stay inside the destination; absolute or escaping names abort; setuid, setgid
and sticky bits and ownership are dropped; other permission bits and mtimes are kept.
Symbolic links that point outside the restored tree are skipped and reported.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from backupvault.backup.errors import SourceError
from backupvault.errors import InvalidInput

DEFAULT_LEVEL = 3
_COPY_SIZE = 1 << 20


class Progress(Protocol):
    """What create/restore report progress to (the CLI adapts it to a progress bar)."""

    def start(self, total_bytes: int | None, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class Writable(Protocol):
    def write(self, data: bytes) -> object: ...


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


@dataclass
class ArchiveStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    has_root: bool = False  # the archive holds "." (a folder backup)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _walk(source: Path) -> Iterator[tuple[str, str]]:
    """(path on disk, name in the archive) for the source and everything under it."""
    if not source.is_dir():
        yield str(source), source.name
        return
    yield str(source), "."
    stack: list[tuple[str, str]] = [(str(source), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot read folder {directory}: {exc.strerror}") from None
        subfolders: list[tuple[str, str]] = []
        for entry in children:
            arcname = prefix + entry.name
            yield entry.path, arcname
            if entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, arcname + "/"))
        stack.extend(reversed(subfolders))


def source_size(source: Path) -> int:
    """Total bytes of the regular files to archive (for progress)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for path, _ in _walk(source):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:  # hard links are archived once
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


class _SourceReader:
    """Reads a source file for tar: counts progress, reports read errors as `SourceError`."""

    def __init__(self, handle: Any, path: str, progress: Progress | None) -> None:
        self._handle = handle
        self._path = path
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._handle.read(size)
        except OSError as exc:
            raise SourceError(f"cannot read {self._path}: {exc.strerror or exc}") from None
        if self._progress is not None and data:
            self._progress.advance(len(data))
        return data


class _TarSink:
    """What tarfile writes to in plain "w" mode (no stream buffering): write and tell."""

    def __init__(self, compressor: Any) -> None:
        self._compressor = compressor
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._compressor.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset


def write_archive(
    source: Path,
    out: Writable,
    progress: Progress | None = None,
    level: int = DEFAULT_LEVEL,
) -> ArchiveStats:
    """Stream a zstd-compressed tar of `source` to `out`."""
    stats = ArchiveStats()
    compressor = zstandard.ZstdCompressor(level=level).stream_writer(
        cast(IO[bytes], out), closefd=False, write_return_read=True
    )
    tar = tarfile.TarFile(
        fileobj=cast(IO[bytes], _TarSink(compressor)),
        mode="w",
        format=tarfile.PAX_FORMAT,
        copybufsize=_COPY_SIZE,
        encoding="utf-8",
    )
    for path, arcname in _walk(source):
        try:
            info = tar.gettarinfo(name=path, arcname=arcname)
            # Whole microseconds, so the decimal tar keeps round-trips exactly (see _utime).
            info.mtime = os.lstat(path).st_mtime_ns // 1000 / 1_000_000
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None
        if info is None or not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            stats.skipped.append((arcname, "not a regular file, folder or link"))
            continue
        if info.isreg():
            try:
                handle = open(path, "rb")  # noqa: SIM115
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
            with handle:
                try:
                    tar.addfile(info, _SourceReader(handle, path, progress))
                except OSError as exc:  # tar's "unexpected end of data"; storage errors are not
                    raise SourceError(f"cannot back up {path} (did it shrink?): {exc}") from None
            stats.files += 1
            stats.bytes += info.size
        else:
            tar.addfile(info)
            if info.isdir():
                stats.has_root |= arcname == "."
                stats.folders += arcname != "."
            elif info.issym():
                stats.links += 1
            else:
                stats.files += 1
    tar.close()
    compressor.flush(zstandard.FLUSH_FRAME)
    return stats


class _RestoreFilter:
    """The extraction filter; records what it skips."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def __call__(self, member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise InvalidInput(f"backup archive holds a special file {member.name!r}")
        try:
            filtered = tarfile.data_filter(member, dest_path)
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            if member.issym():
                self.skipped.append((member.name, f"symbolic link to {member.linkname} is outside"))
                return None
            raise InvalidInput(
                f"backup archive holds a hard link out of the tree: {member.name!r}"
            ) from None
        except tarfile.FilterError as exc:
            raise InvalidInput(f"backup archive holds an unsafe entry: {exc}") from None
        if member.isreg() or member.islnk():
            # The data filter also clears group/other write; those we keep.
            return filtered.replace(mode=member.mode & 0o777, deep=False)
        return filtered


def extract_archive(compressed: Readable, dest: Path) -> ArchiveStats:
    """Extract a stream made by `write_archive` into the existing empty folder `dest`.

    Returns the stats; the mode/mtime of "." (the backed-up folder itself) is applied to
    `dest` too. Folder attributes are applied last, deepest first, so read-only folders work.
    """
    stats = ArchiveStats()
    restore_filter = _RestoreFilter()
    decompressor = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], compressed), read_across_frames=False, closefd=False
    )
    folders: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        # Not a `with`: closing a stream-mode TarFile would read on to the end.
        tar = tarfile.open(fileobj=decompressor, mode="r|", encoding="utf-8")  # noqa: SIM115
        while (member := tar.next()) is not None:
            if member.isdir():
                # Folder attributes wait until everything inside them is written.
                tar.extract(member, str(dest), set_attrs=False, filter=restore_filter)
                folders.append((dest / os.path.normpath(member.name), member))
                is_root = os.path.normpath(member.name) == "."
                stats.has_root |= is_root
                stats.folders += not is_root
            else:
                skipped_before = len(restore_filter.skipped)
                tar.extract(member, str(dest), filter=restore_filter)
                if len(restore_filter.skipped) == skipped_before:
                    if member.issym():
                        stats.links += 1
                    else:
                        _utime(dest / os.path.normpath(member.name), member.mtime)
                        stats.files += 1
                        stats.bytes += member.size
            # Stream mode keeps every member it read; drop them so memory stays flat.
            cast(Any, tar).members.clear()
        # What follows the tar end marker must be zero padding: anything else is not ours.
        while chunk := decompressor.read(1 << 16):
            if chunk.count(0) != len(chunk):
                raise InvalidInput("backup archive has unexpected data after its end")
    except zstandard.ZstdError as exc:
        raise InvalidInput(f"backup archive is corrupt (zstd: {exc})") from None
    except tarfile.TarError as exc:
        raise InvalidInput(f"backup archive is corrupt (tar: {exc})") from None
    for target, member in sorted(folders, key=lambda f: len(f[0].parts), reverse=True):
        os.chmod(target, member.mode & 0o777)
        _utime(target, member.mtime)
    stats.skipped = restore_filter.skipped
    return stats


def _utime(target: Path, mtime: float) -> None:
    """Set the archived mtime exactly: tar's float seconds, read back as the whole
    microseconds they were written from (tarfile's own float utime can be 1 µs off)."""
    ns = round(mtime * 1_000_000) * 1000
    os.utime(target, ns=(ns, ns))
