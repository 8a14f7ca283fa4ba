"""The backup file header: parse, serialize, seal DK under RK, open it again.

The byte layout is specified in docs/format.md; this module is its implementation.
Parsing validates every field before anything is decrypted, and raises only `InvalidInput`.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.backup.errors import Altered, Corrupt
from backupvault.backup.keykinds import KEY_NAMES, KEY_PASSWORD, KEY_RECOVERY_CODE, KEY_UNKNOWN
from backupvault.crypto import stream
from backupvault.errors import InvalidInput, WrongKey

MAGIC: Final = b"BVBACKUP"
VERSION: Final = 2  # what new backups are written as
VERSION_1: Final = 1  # read only: no key kind, no declared totals
PAYLOAD_TAR_ZSTD: Final = 1
# Written: KEY_PASSWORD or KEY_RECOVERY_CODE; a version-1 header says nothing (KEY_UNKNOWN).
KEY_KINDS: Final = {k: KEY_NAMES[k] for k in (KEY_PASSWORD, KEY_RECOVERY_CODE)}
#: Ceilings on what one backup may hold, whatever its header declares: a restore never
#: writes more than the header's own (authenticated) figures, and those are at most these.
MAX_ENTRIES: Final = 1 << 24
MAX_CONTENT_BYTES: Final = 1 << 50
ROOT_KEY_LEN: Final = 32
DATA_KEY_LEN: Final = 32
BACKUP_ID_LEN: Final = 16
KEY_CHECK_LEN: Final = 16
WRAP_NONCE_LEN: Final = 12
WRAPPED_DK_LEN: Final = DATA_KEY_LEN + 16

# magic, version, payload, key_kind, chunk_size, backup_id, created_at_us, content_bytes,
# entries, stream_salt, key_check, wrap_nonce: everything the DK wrap authenticates.
_PREFIX = struct.Struct(
    f">8sBBBI{BACKUP_ID_LEN}sQQI{stream.SALT_LEN}s{KEY_CHECK_LEN}s{WRAP_NONCE_LEN}s"
)
# Version 1: the same without key_kind, content_bytes and entries.
_PREFIX_V1 = struct.Struct(
    f">8sBBI{BACKUP_ID_LEN}sQ{stream.SALT_LEN}s{KEY_CHECK_LEN}s{WRAP_NONCE_LEN}s"
)
WRAP_AAD_LEN: Final = _PREFIX.size
HEADER_LEN: Final = _PREFIX.size + WRAPPED_DK_LEN  # also the longest header of any version
HEADER_LEN_V1: Final = _PREFIX_V1.size + WRAPPED_DK_LEN
#: Bytes that say which version (and so how long) a header is: magic and version.
VERSION_PREFIX_LEN: Final = len(MAGIC) + 1
# Creation times from 2000-01-01 to 9999-12-31: anything else is not a header we wrote.
_MIN_TIME_US: Final = 946_684_800 * 1_000_000
_MAX_TIME_US: Final = 253_402_300_799 * 1_000_000

_WRAP_INFO: Final = b"backupvault/v1 backup dk-wrap"
_CHECK_INFO: Final = b"backupvault/v1 backup key-check"


@dataclass(frozen=True)
class BackupHeader:
    """A parsed header. Fields are as on disk; nothing here is authenticated until `open_header`."""

    key_kind: int  # KEY_UNKNOWN for version 1
    chunk_size: int
    backup_id: bytes
    created_at_us: int
    content_bytes: int  # an upper bound on the file data (version 1: MAX_CONTENT_BYTES)
    entries: int  # an upper bound on the archive's members (version 1: MAX_ENTRIES)
    stream_salt: bytes
    key_check: bytes
    wrap_nonce: bytes
    wrapped_dk: bytes
    version: int = VERSION
    payload: int = PAYLOAD_TAR_ZSTD

    @property
    def backup_id_hex(self) -> str:
        return self.backup_id.hex()

    @property
    def key_name(self) -> str:
        return KEY_NAMES[self.key_kind]

    @property
    def declares_totals(self) -> bool:
        """Whether `content_bytes` and `entries` are the backup's own figures (version 2)
        rather than the ceilings (version 1)."""
        return self.version != VERSION_1

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_at_us / 1_000_000, tz=UTC)

    def wrap_aad(self) -> bytes:
        if self.version == VERSION_1:
            return _PREFIX_V1.pack(
                MAGIC,
                self.version,
                self.payload,
                self.chunk_size,
                self.backup_id,
                self.created_at_us,
                self.stream_salt,
                self.key_check,
                self.wrap_nonce,
            )
        return _PREFIX.pack(
            MAGIC,
            self.version,
            self.payload,
            self.key_kind,
            self.chunk_size,
            self.backup_id,
            self.created_at_us,
            self.content_bytes,
            self.entries,
            self.stream_salt,
            self.key_check,
            self.wrap_nonce,
        )

    def to_bytes(self) -> bytes:
        return self.wrap_aad() + self.wrapped_dk

    @classmethod
    def from_start(cls, data: bytes) -> BackupHeader:
        """The header at the start of `data`, which may go on past it (the first
        `HEADER_LEN` bytes of a backup object hold any version's whole header)."""
        return cls.from_bytes(data[: header_length(data)])

    @classmethod
    def from_bytes(cls, data: bytes) -> BackupHeader:
        expected = header_length(data)
        if len(data) < expected:
            raise Corrupt(
                f"backup is truncated: the header is {len(data)} bytes, expected {expected}"
            )
        if len(data) > expected:
            raise Corrupt(f"header must be exactly {expected} bytes, got {len(data)}")
        if data[len(MAGIC)] == VERSION_1:
            return cls._from_v1(data)
        (
            _magic,
            version,
            payload,
            key_kind,
            chunk_size,
            backup_id,
            created_at_us,
            content_bytes,
            entries,
            stream_salt,
            key_check,
            wrap_nonce,
        ) = _PREFIX.unpack_from(data)
        _check_common(payload, chunk_size, created_at_us)
        if key_kind not in KEY_KINDS:
            raise Corrupt(f"unknown backup key kind {key_kind}")
        if content_bytes > MAX_CONTENT_BYTES:
            raise Corrupt(f"backup header declares {content_bytes} bytes, over the ceiling")
        if not 1 <= entries <= MAX_ENTRIES:
            raise Corrupt(f"backup header declares {entries} entries, outside 1 ... 2^24")
        return cls(
            key_kind=key_kind,
            chunk_size=chunk_size,
            backup_id=backup_id,
            created_at_us=created_at_us,
            content_bytes=content_bytes,
            entries=entries,
            stream_salt=stream_salt,
            key_check=key_check,
            wrap_nonce=wrap_nonce,
            wrapped_dk=data[_PREFIX.size :],
            version=version,
            payload=payload,
        )

    @classmethod
    def _from_v1(cls, data: bytes) -> BackupHeader:
        (
            _magic,
            version,
            payload,
            chunk_size,
            backup_id,
            created_at_us,
            stream_salt,
            key_check,
            wrap_nonce,
        ) = _PREFIX_V1.unpack_from(data)
        _check_common(payload, chunk_size, created_at_us)
        return cls(
            key_kind=KEY_UNKNOWN,
            chunk_size=chunk_size,
            backup_id=backup_id,
            created_at_us=created_at_us,
            content_bytes=MAX_CONTENT_BYTES,
            entries=MAX_ENTRIES,
            stream_salt=stream_salt,
            key_check=key_check,
            wrap_nonce=wrap_nonce,
            wrapped_dk=data[_PREFIX_V1.size :],
            version=version,
            payload=payload,
        )


def header_length(start: bytes) -> int:
    """The length of the header that `start` (at least its first `VERSION_PREFIX_LEN`
    bytes) begins, by its version; refuses what is not a header this build reads."""
    if len(start) < len(MAGIC) or start[: len(MAGIC)] != MAGIC:
        raise Corrupt("not a backupvault backup (the file does not start with BVBACKUP)")
    if len(start) < VERSION_PREFIX_LEN:
        raise Corrupt(f"backup is truncated: the header is {len(start)} bytes")
    version = start[len(MAGIC)]
    if version == VERSION:
        return HEADER_LEN
    if version == VERSION_1:
        return HEADER_LEN_V1
    raise InvalidInput(
        f"backup format version {version} is not supported (this build reads "
        f"{VERSION_1} and {VERSION})",
        hint="upgrade backupvault",
    )


def _check_common(payload: int, chunk_size: int, created_at_us: int) -> None:
    if payload != PAYLOAD_TAR_ZSTD:
        raise Corrupt(f"unknown backup payload type {payload}")
    if not stream.MIN_CHUNK_SIZE <= chunk_size <= stream.MAX_CHUNK_SIZE:
        raise Corrupt(f"backup header has an invalid chunk size {chunk_size}")
    if not _MIN_TIME_US <= created_at_us <= _MAX_TIME_US:
        raise Corrupt("backup header has an invalid creation time")


def _check_root_key(root_key: bytes) -> None:
    if not isinstance(root_key, bytes | bytearray) or len(root_key) != ROOT_KEY_LEN:
        raise InvalidInput(f"root key must be {ROOT_KEY_LEN} bytes")


def _derive(root_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root_key)


def _key_check(root_key: bytes, version: int, backup_id: bytes) -> bytes:
    message = MAGIC + bytes([version]) + backup_id
    mac = hmac.new(_derive(root_key, _CHECK_INFO), message, "sha256").digest()
    return mac[:KEY_CHECK_LEN]


def open_header(header: BackupHeader, root_key: bytes) -> bytes:
    """Authenticate the whole header under RK and return DK."""
    _check_root_key(root_key)
    expected = _key_check(root_key, header.version, header.backup_id)
    if not hmac.compare_digest(expected, header.key_check):
        raise WrongKey(
            "this backup was not made with this key (wrong recovery code or vault entry, "
            "or the header was altered)",
            hint="backups made with --recovery-code each have their own code",
        )
    wrap_key = AESGCM(_derive(root_key, _WRAP_INFO))
    try:
        return wrap_key.decrypt(header.wrap_nonce, header.wrapped_dk, header.wrap_aad())
    except InvalidTag:
        raise Altered("the backup header failed authentication: it was altered") from None
