"""Version-1 backups through the real command line: listed, restored with their recovery
code on stdin, and refused (writing nothing) when tampered with or given the wrong code."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli_backup import _on_small_disk

from backupvault.crypto import recovery

_spec = importlib.util.spec_from_file_location(
    "v1_fixture", Path(__file__).parents[1] / "backup" / "v1_fixture.py"
)
assert _spec is not None and _spec.loader is not None
v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v1)


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copy(v1.OBJECT, folder / v1.OBJECT.name)
    return folder


def restore(store: Path, dest: Path, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return run(
        *flags,
        "backup",
        "restore",
        "--storage",
        str(store),
        "--to",
        str(dest),
        "--recovery-code",
        "-",
        stdin=code + "\n",
    )


def test_v1_restores_with_its_recovery_code(tmp_path: Path, store: Path) -> None:
    done = restore(store, tmp_path / "restored", v1.RECOVERY_CODE, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["backup_id"] == v1.BACKUP_ID and result["key"] == "unknown"
    v1.check_restored(tmp_path / "restored")


def test_v1_is_listed_as_unknown_key(store: Path) -> None:
    listed = run("--json", "backup", "list", "--storage", str(store))
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["backups"]
    assert (row["backup_id"], row["key"], row["stored_bytes"]) == (v1.BACKUP_ID, "unknown", 954)
    text = run("backup", "list", "--storage", str(store))
    assert text.returncode == 0, text.stderr
    [line] = [x for x in text.stdout.splitlines() if x.startswith(v1.BACKUP_ID)]
    assert line.endswith("  unknown")


def _nothing_written(tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("command", [["check"], ["prune"], ["forget", "--keep-last", "1"]])
def test_repository_commands_on_v1_storage_say_what_is_there(
    store: Path, command: list[str]
) -> None:
    """They said "config is missing from URL", once the key had been given."""
    done = run("backup", *command, "--storage", str(store), "--recovery-code", "-", stdin="\n")
    assert done.returncode == 1, done.stderr
    assert (
        f"error: no repository at {store}: it holds only 1 single-blob backup of an earlier"
        f" version, which `backup {command[0]}` does not work on"
    ) in done.stderr
    assert "`backup list` and `backup restore` read them" in done.stderr


def test_wrong_code_exits_3_and_writes_nothing(tmp_path: Path, store: Path) -> None:
    wrong = restore(store, tmp_path / "dest", recovery.encode(bytes(32)), "--json")
    assert wrong.returncode == 3, wrong.stderr
    assert "not made with this key" in json.loads(wrong.stdout or wrong.stderr)["error"]
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:200] + bytes([data[200] ^ 0x01]) + data[201:],  # a body byte
        lambda data: data[:-1] + bytes([data[-1] ^ 0x80]),  # the final tag
        lambda data: data[:500],  # truncated in the stream
        lambda data: data[:100],  # truncated in the header
    ],
)
def test_tampered_v1_is_refused_and_writes_nothing(
    tmp_path: Path, store: Path, damage: Callable[[bytes], bytes]
) -> None:
    stored = store / v1.OBJECT.name
    stored.write_bytes(damage(stored.read_bytes()))
    done = restore(store, tmp_path / "dest", v1.RECOVERY_CODE)
    assert done.returncode == 9, done.stderr  # damaged, not "try again"
    assert "failed authentication" in done.stderr or "is truncated" in done.stderr
    _nothing_written(tmp_path)


def test_v1_on_a_disk_that_fills_says_so_and_writes_nothing(tmp_path: Path, store: Path) -> None:
    """The free-space check for version 1 asks for the object's size (954 B, which 16 KiB
    holds); the files need more, so the disk fills during the restore."""
    result = _on_small_disk(
        tmp_path, "16k",
        [sys.executable, "-m", "backupvault", "backup", "restore", "--storage", str(store),
         "--to", str(tmp_path / "disk" / "dest"), "--recovery-code", "-"],
        stdin=v1.RECOVERY_CODE + "\n",
    )  # fmt: skip
    assert result.startswith("exit 1\n"), result
    assert "no space left on the destination's disk (it had 16.0 KiB free;" in result
    assert "version 1, does not record how much it holds" in result
    assert "disk holds: []" in result and "bug" not in result
