"""A snapshot's tree: every file, folder and link with its metadata and chunk ids.

Encoding in docs/format.md ("Tree"). Decoding validates every length and every name, so a
tree can only name paths inside the restore folder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from backupvault.backup.errors import Corrupt
from backupvault.backup.repo.chunks import CHUNK_ID_LEN

FILE: Final = 1
DIR: Final = 2
SYMLINK: Final = 3
ROOT: Final = b"."
_HEAD = struct.Struct(">BH")
_META = struct.Struct(">Hq")
_FILE = struct.Struct(">QQqI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_NAME: Final = 65535
MAX_PATH: Final = _MAX_NAME  # bytes of an entry's path
#: The times a tree holds (i64 nanoseconds since 1970: 1677-09-21 to 2262-04-11).
TIME_MIN_NS: Final = -(1 << 63)
TIME_MAX_NS: Final = (1 << 63) - 1


@dataclass(slots=True)
class Entry:
    kind: int
    path: bytes  # relative, "/"-separated; b"." is the backed-up folder itself
    mode: int  # permission bits
    mtime_ns: int
    size: int = 0
    inode: int = 0
    ctime_ns: int = 0
    chunks: list[bytes] = field(default_factory=list)
    target: bytes = b""  # symbolic links


def check_path(path: bytes) -> None:
    """Refuse any name that is not a plain relative path (or the root, b".")."""
    if path == ROOT:
        return
    if not path or len(path) > _MAX_NAME or b"\0" in path:
        raise Corrupt("snapshot tree holds an invalid name")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise Corrupt(f"snapshot tree holds an unsafe name {path!r}")


def encode(entries: list[Entry]) -> bytes:
    """The tree's bytes; InvalidInput, naming the entry, for a field out of its range."""
    parts = [_U32.pack(len(entries))]
    for e in entries:
        try:
            head = _HEAD.pack(e.kind, len(e.path)) + e.path + _META.pack(e.mode, e.mtime_ns)
            parts.append(head)
            if e.kind == FILE:
                parts.append(_FILE.pack(e.size, e.inode, e.ctime_ns, len(e.chunks)))
                parts.extend(e.chunks)
            elif e.kind == SYMLINK:
                parts.append(_U16.pack(len(e.target)) + e.target)
        except struct.error:
            # struct's message names no field; a backup's entries are kept in range when
            # made (create.py), so this is a caller's bug or a file system's nonsense.
            raise Corrupt(
                f"cannot store {e.path!r} in a snapshot: its name, link target, size, inode "
                'or times are out of the range the format holds (docs/format.md, "Tree")'
            ) from None
    return b"".join(parts)


def encoded_size(entries: list[Entry]) -> int:
    """The length of `encode(entries)`, without making it."""
    size = _U32.size
    for e in entries:
        size += _HEAD.size + len(e.path) + _META.size
        if e.kind == FILE:
            size += _FILE.size + CHUNK_ID_LEN * len(e.chunks)
        elif e.kind == SYMLINK:
            size += _U16.size + len(e.target)
    return size


def decode(data: bytes) -> list[Entry]:
    try:
        (count,) = _U32.unpack_from(data, 0)
        pos = 4
        entries: list[Entry] = []
        seen: set[bytes] = set()
        folders: set[bytes] = set()
        for _ in range(count):
            kind, name_len = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            path = data[pos : pos + name_len]
            pos += name_len
            mode, mtime_ns = _META.unpack_from(data, pos)
            pos += _META.size
            entry = Entry(kind, path, mode & 0o7777, mtime_ns)
            if kind == FILE:
                entry.size, entry.inode, entry.ctime_ns, n = _FILE.unpack_from(data, pos)
                pos += _FILE.size
                end = pos + n * CHUNK_ID_LEN
                if end > len(data):
                    raise Corrupt("snapshot tree is truncated")
                entry.chunks = [data[p : p + CHUNK_ID_LEN] for p in range(pos, end, CHUNK_ID_LEN)]
                pos = end
            elif kind == SYMLINK:
                (target_len,) = _U16.unpack_from(data, pos)
                pos += _U16.size
                entry.target = data[pos : pos + target_len]
                pos += target_len
                if not entry.target or b"\0" in entry.target:
                    raise Corrupt("snapshot tree holds an invalid link target")
            elif kind != DIR:
                raise Corrupt(f"snapshot tree holds an unknown entry type {kind}")
            if pos > len(data):
                raise Corrupt("snapshot tree is truncated")
            check_path(path)
            if path == ROOT and kind != DIR:
                raise Corrupt("snapshot tree's root is not a folder")
            if path in seen:
                raise Corrupt(f"snapshot tree names {path!r} twice")
            # Every entry inside a folder comes after that folder's own entry, as a backup
            # writes them. Otherwise a link could stand where a folder is named ("a" a link
            # to ".", then "a/x"), and restore would create "x" through it: where the link
            # leads, which may be outside the restore folder.
            parent = path.rpartition(b"/")[0]
            if parent and parent not in folders:
                raise Corrupt(
                    f"snapshot tree names {path!r} before its folder, or inside something "
                    "that is not a folder"
                )
            seen.add(path)
            if kind == DIR:
                folders.add(path)
            entries.append(entry)
    except struct.error:
        raise Corrupt("snapshot tree is truncated") from None
    if pos != len(data):
        raise Corrupt("snapshot tree has trailing bytes")
    return entries
