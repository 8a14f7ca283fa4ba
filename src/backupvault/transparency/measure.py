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

import base64
import csv
import hashlib
import importlib.metadata
import os
import re
import site
import struct
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from backupvault.crypto.seal import Kem
from backupvault.errors import BackupVaultError
from backupvault.transparency.errors import Malformed

if TYPE_CHECKING:
    from backupvault.transparency.record import DeploymentRecord

PACKAGE_DOMAIN = b"backupvault-measurement-v1\n"
CONFIG_DOMAIN = b"backupvault-config-v2\n"
FIRMWARE_DOMAIN = b"backupvault-firmware-v2\n"
ENVIRONMENT_DOMAIN = b"backupvault-environment-v1\n"
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo"}
_STDLIB_SKIP |= {"ensurepip", "__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_CHUNK = 1 << 20


def default_package_dir() -> Path:
    """The directory of the installed `backupvault` package."""
    return Path(__file__).resolve().parent.parent


def _files(package_dir: Path, skip: set[str] | None = None) -> list[tuple[bytes, Path]]:
    skipped = {"__pycache__"} if skip is None else skip
    found: list[tuple[bytes, Path]] = []
    for folder, subfolders, names in os.walk(package_dir):
        subfolders[:] = [d for d in subfolders if d not in skipped and not d.startswith("config-")]
        for name in names:
            path = Path(folder) / name
            if name.endswith(_SKIP_SUFFIXES) or not path.is_file():
                continue
            rel = path.relative_to(package_dir)
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


def _tree_digest(root: Path, skip: set[str] | None = None) -> bytes:
    total = hashlib.sha256(PACKAGE_DOMAIN)
    for rel, path in _files(root, skip):
        size, digest = _file_digest(path)
        total.update(struct.pack(">I", len(rel)) + rel + struct.pack(">Q", size) + digest)
    return total.digest()


def measure_package(package_dir: Path | None = None) -> bytes:
    """The 32-byte package digest of `package_dir` (default: the installed package)."""
    root = default_package_dir() if package_dir is None else Path(package_dir)
    if not root.is_dir():
        raise Malformed(f"{root} is not a directory")
    return _tree_digest(root)


# ---- the environment ------------------------------------------------------------------------


class UnmeasuredCode(BackupVaultError):
    """Code that the measurement does not cover could run in this process."""


def _item(label: str, data: bytes) -> bytes:
    raw = label.encode("utf-8", "surrogateescape")
    return struct.pack(">I", len(raw)) + raw + struct.pack(">Q", len(data)) + data


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def _requirements(
    dist: importlib.metadata.Distribution, extras: set[str]
) -> list[tuple[str, set[str]]]:
    found = []
    for line in dist.requires or []:
        spec, _, marker = line.partition(";")
        match = _REQUIREMENT.match(spec)
        if match is None:
            continue
        wanted = _EXTRA_MARKER.search(marker)
        if wanted is not None and _normalise(wanted.group(1)) not in extras:
            continue
        names = {_normalise(e) for e in (match.group(2) or "").split(",") if e.strip()}
        found.append((_normalise(match.group(1)), names))
    return found


@dataclass(frozen=True)
class MeasuredDistribution:
    name: str
    version: str
    files: tuple[tuple[str, bytes], ...]  # (path inside the site folder, SHA-256)


@dataclass(frozen=True)
class Environment:
    """What `measure_environment` found: its digest and the parts, for people to compare."""

    digest: bytes
    interpreter: str
    interpreter_digest: bytes
    distributions: tuple[MeasuredDistribution, ...]
    pth_files: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, object]:
        return {
            "environment_digest": self.digest.hex(),
            "interpreter": self.interpreter,
            "interpreter_digest": self.interpreter_digest.hex(),
            "distributions": [f"{d.name}=={d.version}" for d in self.distributions],
            "pth_files": list(self.pth_files),
        }


def _record_hash(text: str) -> bytes | None:
    algorithm, _, value = text.partition("=")
    if algorithm != "sha256":
        return None
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _measure_distribution(
    dist: importlib.metadata.Distribution, site_dir: Path
) -> MeasuredDistribution:
    name = _normalise(dist.metadata["Name"] or "")
    files = []
    for entry, hashed in _listed_files(dist):
        if not hashed:
            continue  # RECORD itself, and compiled caches
        path = Path(os.path.realpath(str(dist.locate_file(entry))))
        if not path.is_relative_to(site_dir):
            continue  # console scripts and data outside the site folder
        expected = _record_hash(hashed)
        if expected is None:
            raise UnmeasuredCode(f"{name} lists {entry} with an unsupported hash")
        try:
            actual = _file_digest(path)[1]
        except OSError:
            raise UnmeasuredCode(f"{name}'s file {entry} is missing") from None
        if actual != expected:
            raise UnmeasuredCode(
                f"{path} differs from what {name} {dist.version} installed (its RECORD)",
                hint="a dependency was patched in place; reinstall it",
            )
        files.append((path.relative_to(site_dir).as_posix(), actual))
    return MeasuredDistribution(name, dist.version, tuple(sorted(files)))


def _listed_files(dist: importlib.metadata.Distribution) -> list[tuple[str, str]]:
    """(path, "algorithm=value" or "") for each file a distribution lists: a dist-info
    RECORD read as CSV text directly (as importlib.metadata reads it, without making a
    path object per row), otherwise what importlib.metadata lists."""
    record = dist.read_text("RECORD")
    if record is None:
        return [
            (str(e), f"{e.hash.mode}={e.hash.value}" if e.hash else "") for e in dist.files or []
        ]
    return [
        (row[0], row[1] if len(row) > 1 else "") for row in csv.reader(record.splitlines()) if row
    ]


def _interpreter_digest(stdlib: Path) -> bytes:
    executable = Path(os.path.realpath(sys.executable))
    parts = [_file_digest(executable)[1]]
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    shared = Path(str(libdir)) / str(library) if libdir and library else None
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and shared is not None and shared.is_file():
        parts.append(_file_digest(shared)[1])
    else:
        parts.append(hashlib.sha256(b"").digest())
    parts.append(_tree_digest(stdlib, _STDLIB_SKIP))
    return b"".join(parts)


def _pth_owners(
    dists: dict[str, tuple[importlib.metadata.Distribution, Path]],
) -> dict[str, str]:
    """Which distribution installed each top-level .pth file, by the file lists the
    distributions keep. A dist-info RECORD is read as CSV text and only its .pth rows are
    made paths: building a path object for each of the ~27,000 files every installed
    distribution lists took most of a node's start (docs/performance.md)."""
    owners: dict[str, str] = {}
    for name, (dist, _) in dists.items():
        record = dist.read_text("RECORD")
        if record is None:  # egg-info: the file lists importlib.metadata knows
            listed = [str(entry) for entry in dist.files or []]
        else:
            rows = csv.reader(record.splitlines())
            listed = [str(PurePosixPath(row[0])) for row in rows if row and ".pth" in row[0]]
        for path in listed:
            if path.endswith(".pth") and "/" not in path:
                owners[path] = name
    return owners


def _customize_modules(search_path: Iterable[str], stdlib: Path) -> list[Path]:
    found = []
    for entry in search_path:
        folder = Path(entry or ".").resolve()
        if folder == stdlib or not folder.is_dir():
            continue
        for name in ("sitecustomize", "usercustomize"):
            for candidate in (folder / f"{name}.py", folder / name):
                if candidate.exists():
                    found.append(candidate)
            found.extend(folder.glob(f"{name}.*.so"))
    return found


def measure_environment(
    site_dirs: Sequence[Path] | None = None,
    *,
    search_path: Sequence[str] | None = None,
    root: str = "backupvault",
    interpreter: bool = True,
) -> Environment:
    """Measure the interpreter, the site folders' code and the .pth files (defaults: this
    process's); UnmeasuredCode when something that could run is not covered."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    sites = [
        Path(p).resolve() for p in (site.getsitepackages() if site_dirs is None else site_dirs)
    ]
    sites = [p for p in dict.fromkeys(sites) if p.is_dir()]
    path = sys.path if search_path is None else search_path
    strays = _customize_modules([*path, *map(str, sites)], stdlib)
    if strays:
        raise UnmeasuredCode(
            f"{strays[0]} would run in every Python process here, and no measurement covers it",
            hint="remove it; a node's environment holds only the measured release",
        )
    dists: dict[str, tuple[importlib.metadata.Distribution, Path]] = {}
    for folder in sites:
        for dist in importlib.metadata.distributions(path=[str(folder)]):
            dists.setdefault(_normalise(dist.metadata["Name"] or ""), (dist, folder))
    owners = _pth_owners(dists)
    wanted: set[str] = set()
    pending: list[tuple[str, set[str]]] = [(_normalise(root), set())]
    pth_items = []
    for folder in sites:
        for pth in sorted(folder.glob("*.pth")):
            owner = owners.get(pth.name)
            if owner is None:
                raise UnmeasuredCode(
                    f"{pth} belongs to no installed distribution; Python runs its import lines"
                    " at start",
                    hint="remove it; a node's environment holds only the measured release",
                )
            pending.append((owner, set()))
            pth_items.append((pth.name, _file_digest(pth)[1]))
    while pending:
        name, extras = pending.pop()
        if name in wanted or name not in dists:
            continue
        wanted.add(name)
        pending.extend(_requirements(dists[name][0], extras))
    measured = [
        _measure_distribution(dists[n][0], dists[n][1]) for n in sorted(wanted) if n != root
    ]
    if root in wanted:  # checked against its RECORD (its .pth), measured as the package
        _measure_distribution(dists[root][0], dists[root][1])
    total = hashlib.sha256(ENVIRONMENT_DOMAIN)
    interpreter_digest = _interpreter_digest(stdlib) if interpreter else b""
    total.update(_item("interpreter", interpreter_digest))
    for each in measured:
        body = b"".join(
            struct.pack(">I", len(p.encode())) + p.encode() + digest for p, digest in each.files
        )
        total.update(_item(f"{each.name}=={each.version}", body))
    for name, digest in sorted(pth_items):
        total.update(_item(name, digest))
    return Environment(
        total.digest(),
        f"{sys.implementation.name} {sys.version.split()[0]} ({os.path.realpath(sys.executable)})",
        interpreter_digest,
        tuple(measured),
        tuple(name for name, _ in sorted(pth_items)),
    )


def check_isolated() -> None:
    """Refuse unless Python runs in isolated mode (`python -I`)."""
    if not sys.flags.isolated:
        raise UnmeasuredCode(
            "a node runs only under `python -I`: otherwise PYTHONPATH, PYTHONSTARTUP, the"
            " user site and the current folder could add code no measurement covers",
            hint="start it as `python -I -m backupvault node serve ...`",
        )


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
            record.kem,
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


def combine(
    package_digest: bytes, config: FirmwareConfig, environment_digest: bytes | None = None
) -> bytes:
    """The measurement from a package digest, a configuration and an environment digest
    (default: this process's environment, `measure_environment`)."""
    if len(package_digest) != 32:
        raise Malformed("a package digest is 32 bytes")
    if environment_digest is None:
        environment_digest = measure_environment().digest
    if len(environment_digest) != 32:
        raise Malformed("an environment digest is 32 bytes")
    return hashlib.sha256(
        FIRMWARE_DOMAIN + package_digest + environment_digest + config.to_bytes()
    ).digest()


def measure(
    config: FirmwareConfig,
    package_dir: Path | None = None,
    environment_digest: bytes | None = None,
) -> bytes:
    """The firmware measurement of the package at `package_dir` (default: the installed one)
    running with this configuration in this environment (default: this process's); this is
    what a DeploymentRecord's `measurement` holds."""
    return combine(measure_package(package_dir), config, environment_digest)
