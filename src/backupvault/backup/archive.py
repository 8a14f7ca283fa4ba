"""The plaintext inside a single-blob backup (read only: older versions wrote them; new
backups are repository snapshots): a POSIX (pax) tar of a file or folder, zstd-compressed.

A folder was archived as "." (the folder itself, for its mode and mtime) followed by its
contents under relative names, depth-first in sorted order; a single file as one member
named after the file. Symbolic links are stored as links (never followed); hard links
within the source as tar hard links; FIFOs, sockets and device files are skipped and reported.

Reading does not use `tarfile`: `TarReader` parses the headers itself (ustar + pax, only
what the writer produced, every field checked, pax headers capped), and
`extract_archive` hands each member to a `SafeDestination`, which alone touches the disk
(see backup/safe.py for its rules). Symbolic links that lead outside the restored tree are
skipped and reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Protocol, cast

import zstandard

from backupvault.backup.errors import Corrupt, UnsafeArchive
from backupvault.backup.safe import SafeDestination, Skipped

_COPY_SIZE = 1 << 20
# tarfile (the writer) pads the archive to a whole record of 20 blocks: after the first
# zero block there are at most this many bytes, all zeros.
_RECORD = 20 * 512
_ZSTD_MAGIC = 0xFD2FB528


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


@dataclass
class ArchiveStats:
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    has_root: bool = False  # the archive holds "." (a folder backup)
    skipped: list[Skipped] = field(default_factory=list)


_BLOCK = 512
_MAX_PAX = 1 << 20  # our pax headers hold a few names and numbers
_USTAR_MAGIC = b"ustar\x0000"
_KINDS = {b"0": "file", b"\x00": "file", b"1": "hardlink", b"2": "symlink", b"5": "folder"}
_SPECIAL = {b"3": "a character device", b"4": "a block device", b"6": "a FIFO"}
_PAX_KEYS = {"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname"}
_PAX_KEYS |= {"gname", "hdrcharset"}
_DECIMAL = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,9})?")


@dataclass(frozen=True)
class Member:
    """One archive member as `TarReader` parsed it."""

    name: str
    kind: str  # "file", "folder", "symlink" or "hardlink"
    mode: int
    mtime_ns: int
    size: int
    linkname: str


class TarReader:
    """Reads the pax tar single-blob backups hold, member by member, without `tarfile`.

    Accepts ustar headers with valid checksums, pax extended headers ("x", at most 1 MiB)
    for names, link names, sizes and times, and the member types above. Anything else (GNU
    or global headers, sparse files, base-256 numbers, devices, FIFOs) is refused.
    """

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._unread = 0  # data bytes of the current member not yet consumed

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            piece = self._source.read(size - len(data))
            if not piece:
                raise Corrupt("backup archive is truncated")
            data += piece
        return bytes(data)

    def next(self) -> Member | None:
        """The next member (its data must be consumed with `data` first), or None at the end."""
        if self._unread:
            raise AssertionError("the previous member's data was not read")
        pax: dict[str, str] = {}
        while True:
            block = self._read(_BLOCK)
            if block.count(0) == _BLOCK:
                self._check_end()
                if pax:
                    raise Corrupt("backup archive ends after a pax header")
                return None
            kind = self._check_block(block)
            size = _octal(block[124:136], "size")
            if kind == b"x":
                if pax:
                    raise UnsafeArchive("two pax headers for one member")
                if size > _MAX_PAX:
                    raise UnsafeArchive(f"a pax header of {size} bytes")
                pax = _parse_pax(self._read(_padded(size))[:size])
                continue
            if kind in _SPECIAL:
                raise UnsafeArchive(f"{_name(block)!r} is {_SPECIAL[kind]}")
            if kind not in _KINDS:
                raise UnsafeArchive(f"{_name(block)!r} has unsupported tar type {kind!r}")
            return self._member(block, _KINDS[kind], size, pax)

    def _check_block(self, block: bytes) -> bytes:
        if block[257:265] == b"ustar  \x00":
            raise UnsafeArchive(f"{_name(block)!r} has a GNU tar header, never written here")
        if block[257:265] != _USTAR_MAGIC:
            raise Corrupt("backup archive is corrupt (not a POSIX tar header)")
        stored = _octal(block[148:156], "checksum")
        if sum(block[:148]) + 8 * 32 + sum(block[156:]) != stored:
            raise Corrupt("backup archive is corrupt (tar header checksum)")
        return block[156:157]

    def _member(self, block: bytes, kind: str, size: int, pax: dict[str, str]) -> Member:
        name = pax.get("path", _name(block))
        linkname = pax.get("linkpath", _text(block[157:257]))
        if "size" in pax:
            size = _pax_int(pax["size"], "size")
        mtime_ns = _octal(block[136:148], "mtime") * 1_000_000_000
        if "mtime" in pax:
            mtime_ns = _pax_time_ns(pax["mtime"])
        if mtime_ns >= 1 << 62:
            raise Corrupt("backup archive has an out-of-range time")
        if kind != "file" and size:
            raise UnsafeArchive(f"{name!r} is a {kind} with {size} bytes of data")
        self._unread = size
        return Member(name, kind, _octal(block[100:108], "mode"), mtime_ns, size, linkname)

    def data(self) -> Iterator[bytes]:
        """The current member's data, in pieces (then the block padding is skipped)."""
        padding = _padded(self._unread) - self._unread
        while self._unread:
            piece = self._read(min(self._unread, _COPY_SIZE))
            self._unread -= len(piece)
            yield piece
        self._read(padding)

    def _check_end(self) -> None:
        # After the first zero block, only zeros (tar's second block and record padding),
        # and no more than a record of them: a few bytes of zstd can hold terabytes.
        left = _RECORD
        while chunk := self._source.read(left + 1):
            if chunk.count(0) != len(chunk) or len(chunk) > left:
                raise Corrupt("backup archive has unexpected data after its end")
            left -= len(chunk)


class OneFrame:
    """The compressed payload as the decompressor reads it, refused (`InvalidInput`) as
    soon as it is anything but exactly one zstd frame (docs/format.md, "Payload"): a
    skippable or empty frame before it, or any byte after it (a further frame, even one
    of zeros or a skippable one, which a zstd reader would take in silently). The frame's
    end is found by walking its block headers (RFC 8878, 3.1.1) as the bytes go by."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._header = bytearray()  # the header being gathered: the frame's, or a block's
        self._want = 5  # its length: magic and frame header descriptor first
        self._stage = "magic"
        self._skip = 0  # content bytes still to pass over
        self._checksum = 0  # bytes of checksum after the last block
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        with memoryview(data) as view:
            self._walk(view)
        return data

    def check_ended(self) -> None:
        """At the end of the payload: the frame must have ended exactly there."""
        if not self.ended:
            raise Corrupt("backup archive is corrupt: its zstd frame is cut off")

    def _walk(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            if self.ended:
                raise Corrupt(
                    "backup archive is corrupt: not exactly one zstd frame (data after it)"
                )
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
            else:
                step = min(self._want - len(self._header), len(data) - pos)
                self._header += data[pos : pos + step]
                pos += step
            if not self._skip and len(self._header) == self._want:
                self._next()

    def _next(self) -> None:
        """A header is whole (or a block's content passed): what comes next."""
        header = bytes(self._header)
        self._header.clear()
        if self._stage == "magic":
            if int.from_bytes(header[:4], "little") != _ZSTD_MAGIC:
                raise Corrupt("backup archive is corrupt: not a zstd frame")
            descriptor = header[4]
            self._checksum = 4 if descriptor & 0x04 else 0
            single_segment = bool(descriptor & 0x20)
            size_flag = descriptor >> 6
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03]
            rest += (1 if single_segment else 0, 2, 4, 8)[size_flag]
            self._stage, self._want = "frame header", rest  # never 0 bytes
        elif self._stage in ("frame header", "block content"):
            self._stage, self._want = "block", 3
        elif self._stage == "block":
            value = int.from_bytes(header, "little")
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise Corrupt("backup archive is corrupt: a reserved zstd block type")
            self._skip = 1 if kind == 1 else size  # RLE: one byte, repeated
            self._stage = "last block content" if value & 1 else "block content"
            self._want = 0
            if not self._skip:
                self._next()
        elif self._stage == "last block content" and self._checksum:
            self._stage, self._want = "checksum", self._checksum
        else:  # the last block's content, or the checksum after it, passed
            self._stage, self.ended = "end", True


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _name(block: bytes) -> str:
    prefix, name = _text(block[345:500]), _text(block[0:100])
    return f"{prefix}/{name}" if prefix else name


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise UnsafeArchive(f"a base-256 tar {what} field")
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if not digits:
        return 0
    if not re.fullmatch(rb"[0-7]{1,12}", digits):
        raise Corrupt(f"backup archive is corrupt (tar {what} field)")
    return int(digits, 8)


def _pax_int(value: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", value):
        raise Corrupt(f"backup archive is corrupt (pax {what} {value[:30]!r})")
    return int(value)


def _pax_time_ns(value: str) -> int:
    """A pax time to whole microseconds, exactly (the writer's precision), in ns."""
    if not _DECIMAL.fullmatch(value):
        raise Corrupt(f"backup archive is corrupt (pax mtime {value[:30]!r})")
    ns = round(Decimal(value) * 1_000_000) * 1000
    if abs(ns) >= 1 << 62:
        raise Corrupt("backup archive has an out-of-range time")
    return ns


def _parse_pax(data: bytes) -> dict[str, str]:
    """pax records: "<length> <key>=<value>\n", the length counting the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        match = re.match(rb"([0-9]{1,7}) ", data[pos:])
        if match is None:
            raise Corrupt("backup archive is corrupt (pax record)")
        length = int(match.group(1))
        record = data[pos + match.end() : pos + length]
        if length <= match.end() or pos + length > len(data) or not record.endswith(b"\n"):
            raise Corrupt("backup archive is corrupt (pax record length)")
        key, sep, value = record[:-1].partition(b"=")
        name = key.decode("ascii", "replace")
        if not sep or name in records:
            raise Corrupt("backup archive is corrupt (pax record)")
        if name.startswith("GNU.sparse") or name not in _PAX_KEYS:
            raise UnsafeArchive(f"an unsupported pax record {name[:40]!r}")
        records[name] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def extract_archive(compressed: Readable, dest: SafeDestination) -> ArchiveStats:
    """Extract a single-blob backup's archive through `dest` (see backup/safe.py)."""
    frame = OneFrame(compressed)
    decompressor = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], frame), read_across_frames=False, closefd=False
    )
    reader = TarReader(decompressor)
    try:
        while (member := reader.next()) is not None:
            if member.kind == "folder":
                dest.folder(member.name, member.mode, member.mtime_ns)
            elif member.kind == "file":
                dest.file(member.name, member.mode, member.mtime_ns, member.size, reader.data())
            elif member.kind == "symlink":
                dest.symlink(member.name, member.linkname)
            else:
                dest.hardlink(member.name, member.linkname)
        frame.check_ended()
    except zstandard.ZstdError as exc:
        raise Corrupt(f"backup archive is corrupt (zstd: {exc})") from None
    written = dest.finish()
    return ArchiveStats(
        files=written.files,
        folders=written.folders,
        links=written.links,
        bytes=written.bytes,
        has_root=written.has_root,
        skipped=written.skipped,
    )
