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

from backupvault.backup.repo.chunks import BLOB_OVERHEAD, CHUNK_ID_LEN
from backupvault.backup.repo.keys import NONCE_LEN, TAG_LEN, RepoConfig
from backupvault.errors import AuthenticationFailed, InvalidInput

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
        raise AuthenticationFailed(f"{what} is truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise AuthenticationFailed(
            f"{what} failed authentication: it was altered, truncated or swapped"
        ) from None


def _encode_entries(entries: list[PackEntry]) -> bytes:
    return _U32.pack(len(entries)) + b"".join(_ENTRY.pack(*e) for e in entries)


def _decode_entries(data: bytes, pos: int, what: str) -> tuple[list[PackEntry], int]:
    if pos + 4 > len(data):
        raise InvalidInput(f"{what} is truncated")
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + count * _ENTRY.size
    if end > len(data):
        raise InvalidInput(f"{what} is truncated")
    entries = [PackEntry(*_ENTRY.unpack_from(data, p)) for p in range(pos, end, _ENTRY.size)]
    return entries, end


def seal_pack_header(key: bytes, pack_id: bytes, entries: list[PackEntry]) -> bytes:
    """The pack's trailer: sealed header || u32 length of the sealed header."""
    sealed = seal_object(key, PACK_AAD + pack_id, _encode_entries(entries))
    return sealed + _U32.pack(len(sealed))


def max_pack_len(config: RepoConfig) -> int:
    """The largest pack this repository's writers make: blobs until they reach pack_size
    (the last one may be a whole chunk_max chunk, stored raw), the smallest blob 29 bytes
    (an empty chunk), and a header entry for each. Storage may hold anything under a
    pack's name, and an unindexed pack is read whole to adopt it."""
    blobs = config.pack_size + config.chunk_max + BLOB_OVERHEAD
    header = NONCE_LEN + 4 + _ENTRY.size * (blobs // BLOB_OVERHEAD + 1) + TAG_LEN
    return blobs + header + PACK_TRAILER_LEN


def open_pack_header(key: bytes, pack_id: bytes, pack: bytes, at: int = 0) -> list[PackEntry]:
    """The entries of a pack object, given its bytes from offset `at` to its end (all of
    it by default), checked against its size."""
    what = f"pack {pack_id.hex()}"
    if len(pack) < PACK_TRAILER_LEN:
        raise InvalidInput(f"{what} is truncated")
    (sealed_len,) = _U32.unpack_from(pack, len(pack) - PACK_TRAILER_LEN)
    header_start = len(pack) - PACK_TRAILER_LEN - sealed_len
    if header_start < 0:
        raise InvalidInput(f"{what} is truncated")
    plain = open_object(key, PACK_AAD + pack_id, pack[header_start:-PACK_TRAILER_LEN], what)
    entries, end = _decode_entries(plain, 0, what)
    if end != len(plain):
        raise InvalidInput(f"{what} header has trailing bytes")
    for entry in entries:
        if entry.offset + entry.length > at + header_start:
            raise InvalidInput(f"{what} header points past its data")
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
            raise InvalidInput(f"{what} is truncated") from None
        if pos != len(data) or any(len(i) != OBJECT_ID_LEN for i in result.supersedes):
            raise InvalidInput(f"{what} is malformed")
        return result


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
