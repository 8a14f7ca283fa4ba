"""The firmware measurement: a reproducible hash of the node code and its security settings.

    package digest = SHA-256( "backupvault-measurement-v1\\n"
                              || for each file, sorted by relative POSIX path (UTF-8 bytes):
                                   u32 len(path) || path || u64 len(content) || SHA-256(content) )

over every regular file under the installed `backupvault` package directory, skipping
`__pycache__` directories and `*.pyc`/`*.pyo` files. Only paths and contents count: not
the directory the package sits in, not mtimes, owners or permissions.

    config encoding = "backupvault-config-v1\\n" || u64 guess_limit || u64 quorum
                      || u64 node_count || u16 kem id
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

from backupvault.crypto.seal import Kem
from backupvault.transparency.errors import Malformed

PACKAGE_DOMAIN = b"backupvault-measurement-v1\n"
CONFIG_DOMAIN = b"backupvault-config-v1\n"
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

    def __post_init__(self) -> None:
        for name in ("guess_limit", "quorum", "node_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 64:
                raise Malformed(f"{name} must be a positive u64")
        if not isinstance(self.kem, Kem):
            raise Malformed("kem must be a backupvault.crypto.seal.Kem")

    def to_bytes(self) -> bytes:
        return CONFIG_DOMAIN + struct.pack(
            ">QQQH", self.guess_limit, self.quorum, self.node_count, int(self.kem)
        )


def combine(package_digest: bytes, config: FirmwareConfig) -> bytes:
    """The measurement from a package digest and a configuration."""
    if len(package_digest) != 32:
        raise Malformed("a package digest is 32 bytes")
    return hashlib.sha256(FIRMWARE_DOMAIN + package_digest + config.to_bytes()).digest()


def measure(
    *,
    guess_limit: int,
    quorum: int,
    node_count: int,
    kem: Kem,
    package_dir: Path | None = None,
) -> bytes:
    """The firmware measurement of the package at `package_dir` (default: the installed one)
    running with this configuration; this is what a DeploymentRecord's `measurement` holds."""
    config = FirmwareConfig(guess_limit, quorum, node_count, kem)
    return combine(measure_package(package_dir), config)
