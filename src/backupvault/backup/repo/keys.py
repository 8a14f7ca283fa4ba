"""The repository config object and the keys it holds: RMK wrapped under RK, and the
subkeys derived from RMK. Byte layout: docs/format.md, "Repository format (version 3)"."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.backup.errors import Altered, Corrupt
from backupvault.errors import InvalidInput, WrongKey

CONFIG_MAGIC: Final = b"BVREPCFG"
#: New repositories name chunks with keyed BLAKE3 (version 3); version 2 repositories
#: keep HMAC-SHA256, so their chunk ids, and deduplication against them, stay valid.
VERSION: Final = 3
HMAC_SHA256_IDS: Final = 2
READABLE_VERSIONS: Final = (HMAC_SHA256_IDS, VERSION)
ROOT_KEY_LEN: Final = 32
REPO_KEY_LEN: Final = 32
REPO_ID_LEN: Final = 16
KEY_CHECK_LEN: Final = 16
NONCE_LEN: Final = 12
TAG_LEN: Final = 16

# Chunker and pack parameters (bytes). pyfastcdc's real average is avg + min.
DEFAULT_CHUNK_MIN: Final = 256 * 1024
DEFAULT_CHUNK_AVG: Final = 512 * 1024
DEFAULT_CHUNK_MAX: Final = 4 * 1024 * 1024
DEFAULT_PACK_SIZE: Final = 16 * 1024 * 1024

_PREFIX = struct.Struct(f">8sB{REPO_ID_LEN}sIIII{KEY_CHECK_LEN}s{NONCE_LEN}s")
CONFIG_LEN: Final = _PREFIX.size + REPO_KEY_LEN + TAG_LEN


def hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _check_root_key(root_key: bytes) -> bytes:
    if not isinstance(root_key, bytes | bytearray) or len(root_key) != ROOT_KEY_LEN:
        raise InvalidInput(f"root key must be {ROOT_KEY_LEN} bytes")
    return bytes(root_key)


def key_check(root_key: bytes, info: bytes, message: bytes) -> bytes:
    """A MAC of public values under a key derived from RK: tells "wrong key" apart from
    "altered object" in messages."""
    return hmac.digest(hkdf(root_key, None, info), message, "sha256")[:KEY_CHECK_LEN]


@dataclass(frozen=True)
class RepoKeys:
    """The subkeys of one repository, derived from RMK (never stored). Only the repository
    id shows in a repr: the keys open every backup in the repository, and the seed says
    where files are cut."""

    repo_id: bytes
    # key naming chunks (keyed BLAKE3, or HMAC-SHA256 in version 2)
    chunk_id: bytes = field(repr=False)
    chunk: bytes = field(repr=False)  # AES-256-GCM key sealing chunk blobs
    index: bytes = field(repr=False)  # AES-256-GCM key sealing pack headers, index, locks
    chunker_seed: int = field(repr=False)  # pyfastcdc gear-table seed (63 bits)

    @classmethod
    def derive(cls, repo_key: bytes, repo_id: bytes) -> RepoKeys:
        seed = int.from_bytes(hkdf(repo_key, repo_id, b"backupvault/v2 chunker-seed", 8), "big")
        seed &= (1 << 63) - 1  # pyfastcdc shifts it left by one inside a u64
        return cls(
            repo_id=repo_id,
            chunk_id=hkdf(repo_key, repo_id, b"backupvault/v2 chunk-id"),
            chunk=hkdf(repo_key, repo_id, b"backupvault/v2 chunk-seal"),
            index=hkdf(repo_key, repo_id, b"backupvault/v2 index-seal"),
            chunker_seed=seed or 1,  # pyfastcdc treats 0 as "unkeyed"
        )


@dataclass(frozen=True)
class RepoConfig:
    version: int
    repo_id: bytes
    chunk_min: int
    chunk_avg: int
    chunk_max: int
    pack_size: int
    key_check: bytes
    wrap_nonce: bytes
    wrapped_key: bytes

    def prefix(self) -> bytes:
        return _PREFIX.pack(
            CONFIG_MAGIC,
            self.version,
            self.repo_id,
            self.chunk_min,
            self.chunk_avg,
            self.chunk_max,
            self.pack_size,
            self.key_check,
            self.wrap_nonce,
        )

    def to_bytes(self) -> bytes:
        return self.prefix() + self.wrapped_key

    @classmethod
    def from_bytes(cls, data: bytes) -> RepoConfig:
        if data[: len(CONFIG_MAGIC)] != CONFIG_MAGIC:
            raise Corrupt("not a backupvault repository config (bad magic)")
        if len(data) != CONFIG_LEN:
            raise Corrupt(f"repository config must be {CONFIG_LEN} bytes, got {len(data)}")
        _m, version, repo_id, cmin, cavg, cmax, pack, check, nonce = _PREFIX.unpack_from(data)
        if version not in READABLE_VERSIONS:
            raise InvalidInput(
                f"repository format version {version} is not supported "
                f"(this build reads {' and '.join(map(str, READABLE_VERSIONS))})",
                hint="upgrade backupvault",
            )
        # pyfastcdc's bounds
        if not (64 <= cmin <= 1 << 20 and 256 <= cavg <= 4 << 20 and 1024 <= cmax <= 16 << 20):
            raise Corrupt("repository config has invalid chunk sizes")
        if not cmin <= cavg <= cmax:
            raise Corrupt("repository config has invalid chunk sizes")
        if not 1024 <= pack <= 1024 * 1024 * 1024:
            raise Corrupt("repository config has an invalid pack size")
        return cls(version, repo_id, cmin, cavg, cmax, pack, check, nonce, data[_PREFIX.size :])


_WRAP_INFO: Final = b"backupvault/v2 repo rmk-wrap"
_CHECK_INFO: Final = b"backupvault/v2 repo key-check"


def new_config(
    root_key: bytes,
    *,
    chunk_min: int = DEFAULT_CHUNK_MIN,
    chunk_avg: int = DEFAULT_CHUNK_AVG,
    chunk_max: int = DEFAULT_CHUNK_MAX,
    pack_size: int = DEFAULT_PACK_SIZE,
) -> tuple[RepoConfig, RepoKeys]:
    """A new repository: fresh RMK and repo id; RMK wrapped under RK."""
    rk = _check_root_key(root_key)
    repo_key = os.urandom(REPO_KEY_LEN)
    repo_id = os.urandom(REPO_ID_LEN)
    unsealed = RepoConfig(
        VERSION,
        repo_id,
        chunk_min,
        chunk_avg,
        chunk_max,
        pack_size,
        key_check(rk, _CHECK_INFO, CONFIG_MAGIC + bytes([VERSION]) + repo_id),
        os.urandom(NONCE_LEN),
        b"",
    )
    wrapped = AESGCM(hkdf(rk, None, _WRAP_INFO)).encrypt(
        unsealed.wrap_nonce, repo_key, unsealed.prefix()
    )
    config = RepoConfig(**{**unsealed.__dict__, "wrapped_key": wrapped})
    RepoConfig.from_bytes(config.to_bytes())  # parameters in range
    return config, RepoKeys.derive(repo_key, repo_id)


def open_config(config: RepoConfig, root_key: bytes) -> RepoKeys:
    """Authenticate the config under RK and derive the repository's keys."""
    rk = _check_root_key(root_key)
    expected = key_check(rk, _CHECK_INFO, CONFIG_MAGIC + bytes([config.version]) + config.repo_id)
    if not hmac.compare_digest(expected, config.key_check):
        # The key check is in the wrap's associated data: if RMK opens with the check this
        # key makes put back, the config was sealed under this key and only its check
        # bytes were changed: damage (exit 9), not another key (exit 3, "made with
        # another one", which sent the user after other passwords and codes).
        with contextlib.suppress(InvalidTag):
            AESGCM(hkdf(rk, None, _WRAP_INFO)).decrypt(
                config.wrap_nonce,
                config.wrapped_key,
                dataclasses.replace(config, key_check=expected).prefix(),
            )
            raise Altered("the repository config failed authentication: its key check was altered")
        raise WrongKey(
            "this repository does not open with this key: it was made with another one",
            hint="a repository opens only with the key its first backup made: the vault "
            "key behind your password (on this account and entry), or a recovery code; "
            "if it was made with --recovery-code, give that (--recovery-code -), and if "
            "with a password, leave --recovery-code out. A key registered since (`--new-key`"
            " after wrong guesses destroyed the old one, or a registration after `vault"
            " delete`) opens none of the old key's backups: those open only with a code"
            " `vault recovery-code` printed for the old key",
        )
    try:
        repo_key = AESGCM(hkdf(rk, None, _WRAP_INFO)).decrypt(
            config.wrap_nonce, config.wrapped_key, config.prefix()
        )
    except InvalidTag:
        raise Altered("the repository config failed authentication: it was altered") from None
    return RepoKeys.derive(repo_key, config.repo_id)
