"""The firmware measurement: reproducible, sensitive to every byte and setting."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from backupvault.crypto.seal import Kem
from backupvault.transparency.errors import Malformed
from backupvault.transparency.measure import (
    FirmwareConfig,
    combine,
    default_package_dir,
    measure,
    measure_package,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "a" / "backupvault"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_bytes(b"x = 1\n")
    (root / "sub" / "mod.py").write_bytes(b"def f():\n    return 2\n")
    (root / "py.typed").write_bytes(b"")
    return root


def test_framing_by_hand(tree: Path) -> None:
    total = hashlib.sha256(b"backupvault-measurement-v1\n")
    for rel in ("__init__.py", "py.typed", "sub/mod.py"):  # sorted by relative path
        content = (tree / rel).read_bytes()
        total.update(struct.pack(">I", len(rel)) + rel.encode())
        total.update(struct.pack(">Q", len(content)) + hashlib.sha256(content).digest())
    assert measure_package(tree) == total.digest()


def test_one_byte_changes_the_measurement(tree: Path) -> None:
    before = measure_package(tree)
    path = tree / "sub" / "mod.py"
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    assert measure_package(tree) != before


def test_renaming_or_adding_a_file_changes_it(tree: Path) -> None:
    before = measure_package(tree)
    (tree / "sub" / "mod.py").rename(tree / "sub" / "mod2.py")
    renamed = measure_package(tree)
    assert renamed != before
    (tree / "extra.txt").write_bytes(b"")
    assert measure_package(tree) not in (before, renamed)


def test_location_mtimes_and_bytecode_do_not_matter(tree: Path, tmp_path: Path) -> None:
    before = measure_package(tree)
    copy = tmp_path / "elsewhere" / "pkg"
    shutil.copytree(tree, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (copy / "sub" / "stale.pyc").write_bytes(b"junk")
    assert measure_package(copy) == before


def test_installed_package_is_measured() -> None:
    assert (default_package_dir() / "transparency" / "measure.py").is_file()
    digest = measure_package()
    assert len(digest) == 32 and digest == measure_package(default_package_dir())


RELAY = bytes([1]) * 32
ISSUER_KEY = bytes([2]) * 32


def _config(**changes: Any) -> FirmwareConfig:
    fields: dict[str, Any] = {
        "guess_limit": 10,
        "quorum": 3,
        "node_count": 5,
        "kem": Kem.X25519,
        "relay_public_keys": (RELAY,),
        "account_issuer": "iss",
        "account_issuer_public_key": ISSUER_KEY,
    }
    fields.update(changes)
    return FirmwareConfig(**fields)


def test_configuration_is_bound(tree: Path) -> None:
    base = measure(_config(), package_dir=tree)
    expected = hashlib.sha256(
        b"backupvault-firmware-v1\n"
        + measure_package(tree)
        + b"backupvault-config-v2\n"
        + struct.pack(">QQQH", 10, 3, 5, 0x0020)
        + struct.pack(">H", 1)
        + RELAY
        + struct.pack(">H", 3)
        + b"iss"
        + ISSUER_KEY
    ).digest()
    assert base == expected
    variants = [
        _config(guess_limit=11),
        _config(quorum=4),
        _config(node_count=7),
        _config(kem=Kem.MLKEM768_X25519),
        # Who the nodes answer, and whose tokens they take, are part of the firmware.
        _config(relay_public_keys=(RELAY, bytes([3]) * 32)),
        _config(relay_public_keys=(bytes([3]) * 32,)),
        _config(account_issuer="other"),
        _config(account_issuer_public_key=bytes([4]) * 32),
    ]
    results = {measure(v, package_dir=tree) for v in variants}
    assert base not in results and len(results) == len(variants)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(Malformed):
        measure_package(tmp_path / "missing")
    with pytest.raises(Malformed):
        _config(guess_limit=0)
    with pytest.raises(Malformed):
        _config(relay_public_keys=())
    with pytest.raises(Malformed):
        _config(account_issuer_public_key=b"short")
    with pytest.raises(Malformed):
        combine(b"short", _config())
