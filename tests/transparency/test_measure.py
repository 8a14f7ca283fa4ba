"""The firmware measurement: reproducible, sensitive to every byte and setting."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backupvault.crypto.seal import Kem
from backupvault.transparency.errors import Malformed
from backupvault.transparency.measure import (
    Environment,
    FirmwareConfig,
    UnmeasuredCode,
    combine,
    default_package_dir,
    measure,
    measure_environment,
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


ENV = bytes(range(32, 64))
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
    base = measure(_config(), package_dir=tree, environment_digest=ENV)
    expected = hashlib.sha256(
        b"backupvault-firmware-v2\n"
        + measure_package(tree)
        + ENV
        + b"backupvault-config-v2\n"
        + struct.pack(">QQQH", 10, 3, 5, 0x0020)
        + struct.pack(">H", 1)
        + RELAY
        + struct.pack(">H", 3)
        + b"iss"
        + ISSUER_KEY
    ).digest()
    assert base == expected
    other_environment = measure(_config(), package_dir=tree, environment_digest=bytes(32))
    assert other_environment != base
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
    results = {measure(v, package_dir=tree, environment_digest=ENV) for v in variants}
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


# ---- the environment: dependencies, .pth files, sitecustomize, isolated mode ----------------


def _record_line(site: Path, rel: str) -> str:
    digest = hashlib.sha256((site / rel).read_bytes()).digest()
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{rel},sha256={encoded},{(site / rel).stat().st_size}"


def _distribution(site: Path, name: str, files: dict[str, bytes], requires: list[str]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    for rel, content in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(content)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(metadata)
    lines = [_record_line(site, rel) for rel in [*files, f"{info.name}/METADATA"]]
    (info / "RECORD").write_text("\n".join([*lines, f"{info.name}/RECORD,,"]) + "\n")


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """A site folder: backupvault needs dep (and, for its 'x' extra, extra-dep); stranger
    is installed but nobody needs it."""
    site = tmp_path / "site-packages"
    _distribution(site, "backupvault", {}, ["dep>=1", "extra-dep; extra == 'x'"])
    _distribution(site, "dep", {"dep/__init__.py": b"SECRET = 1\n"}, [])
    _distribution(site, "extra_dep", {"extra_dep.py": b""}, [])
    _distribution(site, "stranger", {"stranger.py": b""}, [])
    return site


def _environment(site: Path) -> Environment:
    return measure_environment([site], search_path=[str(site)], interpreter=False)


def test_environment_measures_the_runtime_dependencies(site_dir: Path) -> None:
    environment = _environment(site_dir)
    assert [d.name for d in environment.distributions] == ["dep"]
    assert "dep/__init__.py" in {path for path, _ in environment.distributions[0].files}
    assert _environment(site_dir).digest == environment.digest  # reproducible


def test_patched_dependency_is_refused(site_dir: Path) -> None:
    (site_dir / "dep" / "__init__.py").write_bytes(b"SECRET = 1\nimport leak\n")
    with pytest.raises(UnmeasuredCode, match=r"differs from what dep 1\.0 installed"):
        _environment(site_dir)


def test_patched_dependency_with_rewritten_record_changes_the_measurement(
    site_dir: Path,
) -> None:
    before = _environment(site_dir).digest
    (site_dir / "dep" / "__init__.py").write_bytes(b"SECRET = 1\nimport leak\n")
    info = site_dir / "dep-1.0.dist-info"
    record = [
        _record_line(site_dir, "dep/__init__.py"),
        _record_line(site_dir, f"{info.name}/METADATA"),
    ]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    assert _environment(site_dir).digest != before


@pytest.mark.parametrize(
    "name", ["sitecustomize.py", "usercustomize.py", "sitecustomize/__init__.py"]
)
def test_customize_module_is_refused(site_dir: Path, name: str) -> None:
    (site_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (site_dir / name).write_text("import os; os.environ['LEAK'] = '1'\n")
    with pytest.raises(UnmeasuredCode, match="customize"):
        _environment(site_dir)


def test_customize_module_anywhere_on_the_path_is_refused(site_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sitecustomize.py").write_text("")
    with pytest.raises(UnmeasuredCode, match="sitecustomize"):
        measure_environment([site_dir], search_path=[str(elsewhere)], interpreter=False)


def test_stray_pth_file_is_refused(site_dir: Path) -> None:
    (site_dir / "zz-inject.pth").write_text("import leak\n")
    with pytest.raises(UnmeasuredCode, match="belongs to no installed distribution"):
        _environment(site_dir)


def test_pth_file_of_a_distribution_is_measured_with_its_owner(site_dir: Path) -> None:
    before = _environment(site_dir).digest
    _distribution(site_dir, "hook", {"hook.pth": b"import hook_impl\n", "hook_impl.py": b""}, [])
    environment = _environment(site_dir)
    assert [d.name for d in environment.distributions] == ["dep", "hook"]
    assert environment.pth_files == ("hook.pth",) and environment.digest != before


def test_this_environment_is_measured_and_covers_the_dependencies() -> None:
    environment = measure_environment()
    names = {d.name for d in environment.distributions}
    assert {"cryptography", "pysodium", "starlette", "uvicorn"} <= names
    assert len(environment.digest) == 32 and len(environment.interpreter_digest) == 96


def test_nodes_need_isolated_mode(tmp_path: Path) -> None:
    code = "from backupvault.transparency.measure import check_isolated; check_isolated()"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert plain.returncode != 0 and "python -I" in plain.stderr
    isolated = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert isolated.returncode == 0, isolated.stderr
