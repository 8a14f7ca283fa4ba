"""Pack headers and index objects: where each chunk lives (pack, offset, length).

Both are sealed under the repository's index key; layouts in docs/format.md.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.backup.errors import Altered, Corrupt
from backupvault.backup.repo.chunks import BLOB_OVERHEAD, CHUNK_ID_LEN
from backupvault.backup.repo.keys import NONCE_LEN, TAG_LEN, RepoConfig

OBJECT_ID_LEN: Final = 16
PACK_AAD: Final = b"BVPACK02"
INDEX_AAD: Final = b"BVINDEX2"
_ENTRY = struct.Struct(f">{CHUNK_ID_LEN}sIII")
_U32 = struct.Struct(">I")
PACK_TRAILER_LEN: Final = 4


class Location(NamedTuple):
    pack_id: bytes
    offset: int
    length: int
    raw_length: int


class PackEntry(NamedTuple):
    chunk_id: bytes
    offset: int
    length: int
    raw_length: int


def seal_object(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_object(key: bytes, aad: bytes, sealed: bytes, what: str) -> bytes:
    if len(sealed) < NONCE_LEN + TAG_LEN:
        raise Altered(f"{what} is truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise Altered(
            f"{what} failed authentication: it was altered, truncated or swapped"
        ) from None


def _encode_entries(entries: list[PackEntry]) -> bytes:
    return _U32.pack(len(entries)) + b"".join(_ENTRY.pack(*e) for e in entries)


def _decode_entries(data: bytes, pos: int, what: str) -> tuple[list[PackEntry], int]:
    if pos + 4 > len(data):
        raise Corrupt(f"{what} is truncated")
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + count * _ENTRY.size
    if end > len(data):
        raise Corrupt(f"{what} is truncated")
    entries = [PackEntry(*_ENTRY.unpack_from(data, p)) for p in range(pos, end, _ENTRY.size)]
    return entries, end


def seal_pack_header(key: bytes, pack_id: bytes, entries: list[PackEntry]) -> bytes:
    """The pack's trailer: sealed header || u32 length of the sealed header."""
    sealed = seal_object(key, PACK_AAD + pack_id, _encode_entries(entries))
    return sealed + _U32.pack(len(sealed))


def _max_pack_blobs(config: RepoConfig) -> tuple[int, int]:
    """(bytes of blobs, number of blobs) of the largest pack: blobs until they reach
    pack_size (the last one may be a whole chunk_max chunk, stored raw), the smallest
    blob 29 bytes (an empty chunk)."""
    blobs = config.pack_size + config.chunk_max + BLOB_OVERHEAD
    return blobs, blobs // BLOB_OVERHEAD + 1


def max_pack_len(config: RepoConfig) -> int:
    """The largest pack this repository's writers make: its blobs and a header entry for
    each. Storage may hold anything under a pack's name, and an unindexed pack is read
    whole to adopt it."""
    blobs, count = _max_pack_blobs(config)
    header = NONCE_LEN + 4 + _ENTRY.size * count + TAG_LEN
    return blobs + header + PACK_TRAILER_LEN


#: A writer closes an index object before its body would pass this many bytes (and
#: the two counts), unless it holds nothing yet: about 190,000 chunks, 140 GiB of data
#: at the default chunk sizes, per object.
INDEX_BODY_TARGET: Final = 8 << 20
_SUPERSEDED_ITEM: Final = OBJECT_ID_LEN


def _pack_record_len(entries: int) -> int:
    return OBJECT_ID_LEN + 4 + _ENTRY.size * entries


def max_index_len(config: RepoConfig) -> int:
    """The largest index object this repository's writers make: the target, or one
    pack's record alone if that is larger (a record is never split). Storage may hold
    anything under an index object's name, and every command reads them whole."""
    largest = max(INDEX_BODY_TARGET, _pack_record_len(_max_pack_blobs(config)[1]))
    return NONCE_LEN + 4 + 4 + largest + TAG_LEN


def open_pack_header(key: bytes, pack_id: bytes, pack: bytes, at: int = 0) -> list[PackEntry]:
    """The entries of a pack object, given its bytes from offset `at` to its end (all of
    it by default), checked against its size."""
    what = f"pack {pack_id.hex()}"
    if len(pack) < PACK_TRAILER_LEN:
        raise Corrupt(f"{what} is truncated")
    (sealed_len,) = _U32.unpack_from(pack, len(pack) - PACK_TRAILER_LEN)
    header_start = len(pack) - PACK_TRAILER_LEN - sealed_len
    if header_start < 0:
        # Its last 4 bytes are no trailer: cut off, or bytes added (storage review s42, F7)
        raise Corrupt(f"{what} is cut off, or has bytes added after its end")
    plain = open_object(key, PACK_AAD + pack_id, pack[header_start:-PACK_TRAILER_LEN], what)
    entries, end = _decode_entries(plain, 0, what)
    if end != len(plain):
        raise Corrupt(f"{what} header has trailing bytes")
    for entry in entries:
        if entry.offset + entry.length > at + header_start:
            raise Corrupt(f"{what} header points past its data")
    return entries


@dataclass
class IndexFile:
    """One index object: the packs it describes, and older index objects it replaces."""

    packs: dict[bytes, list[PackEntry]] = field(default_factory=dict)
    supersedes: list[bytes] = field(default_factory=list)

    def seal(self, key: bytes, index_id: bytes) -> bytes:
        parts = [_U32.pack(len(self.supersedes)), *self.supersedes, _U32.pack(len(self.packs))]
        for pack_id, entries in self.packs.items():
            parts += [pack_id, _encode_entries(entries)]
        return seal_object(key, INDEX_AAD + index_id, b"".join(parts))

    @classmethod
    def open(cls, key: bytes, index_id: bytes, sealed: bytes) -> IndexFile:
        what = f"index {index_id.hex()}"
        data = open_object(key, INDEX_AAD + index_id, sealed, what)
        result = cls()
        try:
            (count,) = _U32.unpack_from(data, 0)
            pos = 4
            if pos + count * OBJECT_ID_LEN > len(data):
                # Checked first: a count of 2^32 - 1 was read an id at a time, 4 billion
                # empty ones past the end.
                raise Corrupt(f"{what} is truncated")
            for _ in range(count):
                result.supersedes.append(data[pos : pos + OBJECT_ID_LEN])
                pos += OBJECT_ID_LEN
            (packs,) = _U32.unpack_from(data, pos)
            pos += 4
            for _ in range(packs):
                pack_id = data[pos : pos + OBJECT_ID_LEN]
                pos += OBJECT_ID_LEN
                result.packs[pack_id], pos = _decode_entries(data, pos, what)
        except struct.error:
            raise Corrupt(f"{what} is truncated") from None
        if pos != len(data) or any(len(i) != OBJECT_ID_LEN for i in result.supersedes):
            raise Corrupt(f"{what} is malformed")
        return result


def split_index(
    packs: dict[bytes, list[PackEntry]], supersedes: Iterable[bytes] = ()
) -> list[IndexFile]:
    """`packs` and `supersedes` as index objects of at most `max_index_len` bytes, in the
    order they must be written: superseded ids only after every pack record (in the last
    object of packs, then in objects of their own). So an interruption before the last
    leaves old and new objects both live (a chunk listed twice is no harm), never an old
    one superseded before every pack it named that is kept is listed anew."""
    files: list[IndexFile] = []
    current = IndexFile()
    body = 0

    def close() -> None:
        nonlocal current, body
        if current.packs or current.supersedes:
            files.append(current)
        current, body = IndexFile(), 0

    for pack_id, entries in packs.items():
        size = _pack_record_len(len(entries))
        if current.packs and body + size > INDEX_BODY_TARGET:
            close()
        current.packs[pack_id] = entries
        body += size
    for old in supersedes:
        if (current.packs or current.supersedes) and body + _SUPERSEDED_ITEM > INDEX_BODY_TARGET:
            close()
        current.supersedes.append(old)
        body += _SUPERSEDED_ITEM
    close()
    return files


class Index:
    """Chunk id -> location, over every live index object and unindexed pack."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, Location] = {}
        self.packs: dict[bytes, list[PackEntry]] = {}

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        listed = list(entries)
        self.packs[pack_id] = listed
        for entry in listed:
            self.chunks.setdefault(
                entry.chunk_id, Location(pack_id, entry.offset, entry.length, entry.raw_length)
            )

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self.chunks

    def present(self, listed: Container[str]) -> tuple[Index, list[bytes]]:
        """(this index without the packs that storage does not list, those packs). A chunk
        in a lost pack is then in no index: a backup stores it again rather than refer
        to it, and a restore that needs it says so before writing anything."""
        kept = Index()
        missing: list[bytes] = []
        for pack_id, entries in self.packs.items():
            if pack_id.hex() in listed:
                kept.add_pack(pack_id, entries)
            else:
                missing.append(pack_id)
        return kept, missing
