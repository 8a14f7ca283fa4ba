"""Snapshot objects: a header (ids, parent, time, DK wrapped under RK), then a sealed
summary and a sealed tree, both under the snapshot's own DK. Layout: docs/format.md."""

from __future__ import annotations

import hmac
import os
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.backup.errors import Altered, Corrupt, SnapshotTooLarge
from backupvault.backup.keykinds import KEY_NAMES, KEY_UNKNOWN
from backupvault.backup.repo import tree
from backupvault.backup.repo.chunks import one_frame
from backupvault.backup.repo.index import OBJECT_ID_LEN
from backupvault.backup.repo.keys import KEY_CHECK_LEN, NONCE_LEN, TAG_LEN, hkdf, key_check
from backupvault.errors import InvalidInput

MAGIC: Final = b"BVSNAPSH"
VERSION: Final = 2
DATA_KEY_LEN: Final = 32
NO_PARENT: Final = bytes(OBJECT_ID_LEN)
KIND_FOLDER: Final = 1
KIND_FILE: Final = 2
_PREFIX = struct.Struct(f">8sB16s16s16sQ{KEY_CHECK_LEN}s{NONCE_LEN}s")
HEADER_LEN: Final = _PREFIX.size + DATA_KEY_LEN + TAG_LEN
_U32 = struct.Struct(">I")
_SUMMARY = struct.Struct(">BQQQQQQ")

_WRAP_INFO: Final = b"backupvault/v2 snapshot dk-wrap"
_CHECK_INFO: Final = b"backupvault/v2 snapshot key-check"
_MIN_TIME_US: Final = 946_684_800 * 1_000_000
_MAX_TIME_US: Final = 253_402_300_799 * 1_000_000
_MAX_TREE: Final = 1 << 31
#: How far past this device's clock a snapshot's date is still clock skew (or a time zone
#: set as UTC); one dated later was made by a device whose clock was ahead (or this one's
#: is behind): by its date it stays the latest of its series until then.
AHEAD_SLACK: Final = timedelta(days=1)
#: The largest sealed summary (a source path and a host name of 65535 bytes each) and
#: snapshot object (a tree of _MAX_TREE bytes, which zstd may grow by 1/256) a writer
#: makes: storage may hold anything under a snapshot's name, and it is read whole.
MAX_SEALED_SUMMARY: Final = NONCE_LEN + _SUMMARY.size + 2 + 65535 + 2 + 65535 + 1 + TAG_LEN
MAX_LEN: Final = (
    HEADER_LEN
    + 4
    + MAX_SEALED_SUMMARY
    + NONCE_LEN
    + TAG_LEN
    + (_MAX_TREE + (_MAX_TREE >> 8) + (1 << 16))
)


@dataclass(frozen=True)
class Summary:
    kind: int  # KIND_FOLDER or KIND_FILE
    files: int
    folders: int
    links: int
    size: int  # bytes of all files
    added: int  # plaintext bytes of chunks this snapshot added
    stored: int  # bytes of the pack objects this snapshot uploaded
    source: str
    host: str
    key_kind: int = KEY_UNKNOWN  # how RK is kept: KEY_PASSWORD or KEY_RECOVERY_CODE

    @property
    def key_name(self) -> str:
        return KEY_NAMES[self.key_kind]

    def encode(self) -> bytes:
        source, host = os.fsencode(self.source), self.host.encode()
        return (
            _SUMMARY.pack(
                self.kind, self.files, self.folders, self.links, self.size, self.added, self.stored
            )
            + struct.pack(">H", len(source))
            + source
            + struct.pack(">H", len(host))
            + host
            + bytes([self.key_kind])
        )

    @classmethod
    def decode(cls, data: bytes) -> Summary:
        try:
            kind, files, folders, links, size, added, stored = _SUMMARY.unpack_from(data, 0)
            pos = _SUMMARY.size
            (n,) = struct.unpack_from(">H", data, pos)
            source = data[pos + 2 : pos + 2 + n]
            pos += 2 + n
            (n,) = struct.unpack_from(">H", data, pos)
            host = data[pos + 2 : pos + 2 + n]
            pos += 2 + n
        except struct.error:
            raise Corrupt("snapshot summary is truncated") from None
        key_kind = KEY_UNKNOWN
        if pos < len(data):  # absent from snapshots made before it existed: unknown
            key_kind = data[pos]
            pos += 1
        if pos != len(data) or kind not in (KIND_FOLDER, KIND_FILE) or key_kind not in KEY_NAMES:
            raise Corrupt("snapshot summary is malformed")
        return cls(
            kind,
            files,
            folders,
            links,
            size,
            added,
            stored,
            os.fsdecode(source),
            host.decode(errors="replace"),
            key_kind,
        )


@dataclass(frozen=True)
class SnapshotHeader:
    snapshot_id: bytes
    repo_id: bytes
    parent_id: bytes
    created_at_us: int
    key_check: bytes
    wrap_nonce: bytes
    wrapped_dk: bytes

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_at_us / 1_000_000, tz=UTC)

    @property
    def parent(self) -> bytes | None:
        return None if self.parent_id == NO_PARENT else self.parent_id

    def prefix(self) -> bytes:
        return _PREFIX.pack(
            MAGIC,
            VERSION,
            self.snapshot_id,
            self.repo_id,
            self.parent_id,
            self.created_at_us,
            self.key_check,
            self.wrap_nonce,
        )

    def to_bytes(self) -> bytes:
        return self.prefix() + self.wrapped_dk

    @classmethod
    def from_bytes(cls, data: bytes) -> SnapshotHeader:
        if data[: len(MAGIC)] != MAGIC:
            raise Corrupt("not a backupvault snapshot (bad magic)")
        if len(data) < HEADER_LEN:
            raise Corrupt("snapshot is truncated")
        _m, version, sid, rid, parent, created, check, nonce = _PREFIX.unpack_from(data)
        if version != VERSION:
            raise InvalidInput(f"snapshot format version {version} is not supported")
        if not _MIN_TIME_US <= created <= _MAX_TIME_US:
            raise Corrupt("snapshot has an invalid creation time")
        return cls(sid, rid, parent, created, check, nonce, data[_PREFIX.size : HEADER_LEN])


@dataclass(frozen=True)
class Snapshot:
    header: SnapshotHeader
    summary: Summary
    entries: list[tree.Entry] | None  # None when only the summary was read

    @property
    def id_hex(self) -> str:
        return self.header.snapshot_id.hex()


def check_time(created_at_us: int) -> None:
    """Refuse a creation time no reader takes (before 2000 or after 9999): sealed, the
    snapshot was stored, then refused as damaged by every command after it. A device
    whose clock lost its time (no battery-backed clock, no network time yet) says 1970."""
    if not _MIN_TIME_US <= created_at_us <= _MAX_TIME_US:
        shown = datetime.fromtimestamp(max(min(created_at_us, _MAX_TIME_US), 0) / 1_000_000, tz=UTC)
        raise Corrupt(
            f"this device's clock says {shown:%Y-%m-%d %H:%M:%S} UTC: a snapshot's time must "
            "be from 2000 to 9999, so none was saved",
            hint="set the clock (or let network time set it), then run the backup again (it "
            "reuses any data already stored)",
        )


def check_tree_size(size: int, entries: int, source: str) -> None:
    """Refuse a tree of `size` bytes (`entries` files, folders and links of `source`) that
    no reader would open: one larger than `_MAX_TREE` (2 GiB, some 16 million files with
    short names). Until review s62 a backup saved it and said it had worked, and every
    restore, list and backup after it took that snapshot for damaged."""
    if size <= _MAX_TREE:
        return
    raise SnapshotTooLarge(
        f"{source} is too large for one snapshot: the list of its {entries:,} files, folders"
        f" and links takes {size / (1 << 30):.2f} GiB, more than the"
        f" {_MAX_TREE / (1 << 30):.2f} GiB a snapshot holds; no snapshot was saved",
        hint="back up its sub-folders one by one (a `backup create` for each), or --exclude"
        " what need not be kept (caches); data this backup already stored is reused",
    )


def _seal(dk: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(dk).encrypt(nonce, plaintext, aad)


def seal(
    root_key: bytes,
    repo_id: bytes,
    parent_id: bytes | None,
    summary: Summary,
    entries: list[tree.Entry],
    created_at_us: int | None = None,
) -> tuple[bytes, bytes]:
    """(snapshot id, object bytes) for a new snapshot under a fresh random DK."""
    created = time.time_ns() // 1000 if created_at_us is None else created_at_us
    check_time(created)
    plain_tree = tree.encode(entries)
    check_tree_size(len(plain_tree), len(entries), summary.source)
    snapshot_id = os.urandom(OBJECT_ID_LEN)
    dk = os.urandom(DATA_KEY_LEN)
    unsealed = SnapshotHeader(
        snapshot_id,
        repo_id,
        parent_id or NO_PARENT,
        created,
        key_check(root_key, _CHECK_INFO, MAGIC + bytes([VERSION]) + snapshot_id),
        os.urandom(NONCE_LEN),
        b"",
    )
    wrapped = AESGCM(hkdf(root_key, None, _WRAP_INFO)).encrypt(
        unsealed.wrap_nonce, dk, unsealed.prefix()
    )
    header = SnapshotHeader(**{**unsealed.__dict__, "wrapped_dk": wrapped}).to_bytes()
    summary_ct = _seal(dk, header + b"summary", summary.encode())
    tree_ct = _seal(dk, header + b"tree", zstandard.ZstdCompressor(level=3).compress(plain_tree))
    return snapshot_id, header + _U32.pack(len(summary_ct)) + summary_ct + tree_ct


def _open_dk(header: SnapshotHeader, root_key: bytes) -> bytes:
    expected = key_check(root_key, _CHECK_INFO, MAGIC + bytes([VERSION]) + header.snapshot_id)
    if not hmac.compare_digest(expected, header.key_check):
        # Read only in a repository whose config opened with this key, under which its
        # every snapshot is sealed: so this is not the user's wrong key (exit 3, which
        # sends them to try other passwords) but another repository's object, or damage.
        raise Altered(
            f"snapshot {header.snapshot_id.hex()} was not made with this repository's key:"
            " it belongs to another repository, or its header was altered"
        )
    try:
        return AESGCM(hkdf(root_key, None, _WRAP_INFO)).decrypt(
            header.wrap_nonce, header.wrapped_dk, header.prefix()
        )
    except InvalidTag:
        raise Altered(
            f"snapshot {header.snapshot_id.hex()} header failed authentication: it was altered"
        ) from None


def _open(dk: bytes, aad: bytes, sealed: bytes | memoryview, what: str) -> bytes:
    if len(sealed) < NONCE_LEN + TAG_LEN:
        raise Corrupt(f"{what} is truncated")
    try:
        return AESGCM(dk).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise Altered(f"{what} failed authentication: it was altered") from None


def open_snapshot(
    data: bytes, root_key: bytes, repo_id: bytes, expected_id: bytes, *, with_tree: bool = True
) -> Snapshot:
    """Authenticate a snapshot object (or just its header and summary, given a prefix of
    it with `with_tree=False`) and check it is the one its name says, in this repository."""
    header = SnapshotHeader.from_bytes(data)
    what = f"snapshot {expected_id.hex()}"
    if header.snapshot_id != expected_id:
        raise Altered(f"{what} holds snapshot {header.snapshot_id.hex()}: swapped")
    dk = _open_dk(header, root_key)
    if header.repo_id != repo_id:
        raise Altered(f"{what} belongs to another repository")
    if len(data) < HEADER_LEN + 4:
        raise Corrupt(f"{what} is truncated")
    (summary_len,) = _U32.unpack_from(data, HEADER_LEN)
    start = HEADER_LEN + 4
    if start + summary_len > len(data):
        raise Corrupt(f"{what} is truncated")
    head = data[:HEADER_LEN]
    summary = Summary.decode(_open(dk, head + b"summary", data[start : start + summary_len], what))
    entries = None
    if with_tree:
        # A view, not a copy: a tree may be up to MAX_LEN (2 GiB), and storage can grow an
        # authentic snapshot to that (storage review s42, F2).
        packed = _open(dk, head + b"tree", memoryview(data)[start + summary_len :], what)
        plain = one_frame(zstandard.ZstdDecompressor(), packed, _MAX_TREE, f"{what} tree")
        entries = tree.decode(plain)
    return Snapshot(header, summary, entries)
