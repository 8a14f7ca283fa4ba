"""The firmware measurement: a reproducible hash of the node code and its security settings.

    package digest = SHA-256( "backupvault-measurement-v1\\n"
                              || for each file, sorted by relative POSIX path (UTF-8 bytes):
                                   u32 len(path) || path || u64 len(content) || SHA-256(content) )

over every regular file under the installed `backupvault` package directory, skipping
`__pycache__` directories and `*.pyc`/`*.pyo` files. Only paths and contents count: not
the directory the package sits in, not mtimes, owners or permissions.

    config encoding = "backupvault-config-v2\\n" || u64 guess_limit || u64 quorum
                      || u64 node_count || u16 kem id
                      || u16 relay key count || each relay's Ed25519 public key (32)
                      || u16 len(account issuer) || account issuer (UTF-8)
                      || account issuer's Ed25519 public key (32)
    measurement     = SHA-256( "backupvault-firmware-v1\\n" || package digest (32)
                               || config encoding )

All integers are big-endian. Anyone can recompute it from a source checkout of the release
a fleet claims to run (see docs/transparency.md, "Auditing a deployment").
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backupvault.crypto.seal import Kem
from backupvault.transparency.errors import Malformed

if TYPE_CHECKING:
    from backupvault.transparency.record import DeploymentRecord

PACKAGE_DOMAIN = b"backupvault-measurement-v1\n"
CONFIG_DOMAIN = b"backupvault-config-v2\n"
FIRMWARE_DOMAIN = b"backupvault-firmware-v1\n"
_SKIP_SUFFIXES = (".pyc", ".pyo")
_CHUNK = 1 << 20


def default_package_dir() -> Path:
    """The directory of the installed `backupvault` package."""
    return Path(__file__).resolve().parent.parent


def _files(package_dir: Path) -> list[tuple[bytes, Path]]:
    found: list[tuple[bytes, Path]] = []
    for path in package_dir.rglob("*"):
        rel = path.relative_to(package_dir)
        if "__pycache__" in rel.parts or path.name.endswith(_SKIP_SUFFIXES):
            continue
        if path.is_file():
            found.append((rel.as_posix().encode("utf-8", "surrogateescape"), path))
    found.sort(key=lambda item: item[0])
    return found


def _file_digest(path: Path) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


def measure_package(package_dir: Path | None = None) -> bytes:
    """The 32-byte package digest of `package_dir` (default: the installed package)."""
    root = default_package_dir() if package_dir is None else Path(package_dir)
    if not root.is_dir():
        raise Malformed(f"{root} is not a directory")
    total = hashlib.sha256(PACKAGE_DOMAIN)
    for rel, path in _files(root):
        size, digest = _file_digest(path)
        total.update(struct.pack(">I", len(rel)) + rel + struct.pack(">Q", size) + digest)
    return total.digest()


@dataclass(frozen=True)
class FirmwareConfig:
    """The configuration that changes what the firmware enforces."""

    guess_limit: int
    quorum: int
    node_count: int
    kem: Kem
    #: Who the nodes answer (relay keys) and whose fleet tokens they accept.
    relay_public_keys: tuple[bytes, ...]
    account_issuer: str
    account_issuer_public_key: bytes

    def __post_init__(self) -> None:
        for name in ("guess_limit", "quorum", "node_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 64:
                raise Malformed(f"{name} must be a positive u64")
        if not isinstance(self.kem, Kem):
            raise Malformed("kem must be a backupvault.crypto.seal.Kem")
        keys = (*self.relay_public_keys, self.account_issuer_public_key)
        if not 1 <= len(self.relay_public_keys) < 1 << 16 or any(len(k) != 32 for k in keys):
            raise Malformed("relay and issuer keys are 32-byte Ed25519 keys, at least one relay")
        if not 0 < len(self.account_issuer.encode()) < 1 << 16:
            raise Malformed("the account issuer must be named")

    @classmethod
    def of_record(cls, record: DeploymentRecord) -> FirmwareConfig:
        """The configuration a deployment record names."""
        return cls(
            record.guess_limit,
            record.quorum,
            len(record.nodes),
            record.fleet_public_key.kem,
            tuple(record.relay_public_keys),
            record.account_issuer,
            record.account_issuer_public_key,
        )

    def to_bytes(self) -> bytes:
        issuer = self.account_issuer.encode()
        return (
            CONFIG_DOMAIN
            + struct.pack(">QQQH", self.guess_limit, self.quorum, self.node_count, int(self.kem))
            + struct.pack(">H", len(self.relay_public_keys))
            + b"".join(self.relay_public_keys)
            + struct.pack(">H", len(issuer))
            + issuer
            + self.account_issuer_public_key
        )


def combine(package_digest: bytes, config: FirmwareConfig) -> bytes:
    """The measurement from a package digest and a configuration."""
    if len(package_digest) != 32:
        raise Malformed("a package digest is 32 bytes")
    return hashlib.sha256(FIRMWARE_DOMAIN + package_digest + config.to_bytes()).digest()


def measure(config: FirmwareConfig, package_dir: Path | None = None) -> bytes:
    """The firmware measurement of the package at `package_dir` (default: the installed one)
    running with this configuration; this is what a DeploymentRecord's `measurement` holds."""
    return combine(measure_package(package_dir), config)
