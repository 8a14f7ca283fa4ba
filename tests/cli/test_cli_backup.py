"""The `backupvault backup` commands as a user runs them: real processes, exit codes,
--json output, and nothing written when something is wrong."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(autouse=True)
def device_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI remembers per device goes to the test's folder, not the home folder."""
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "device-state"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "photos").mkdir(parents=True)
    (root / "notes.txt").write_text("meet at the station at 7\n")
    (root / "photos" / "cat.jpg").write_bytes(bytes(range(256)) * 100)
    return root


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.diff_files or compared.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in compared.common_dirs)


def test_recovery_code_round_trip_with_json(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)
    assert len(result["recovery_code"].split("-")) == 17
    assert "\x1b" not in created.stderr  # no progress bar when not a terminal

    listed = json.loads(
        run(
            "--json", "backup", "list", "--storage", str(storage), "--recovery-code", "-",
            stdin=result["recovery_code"] + "\n",
        ).stdout
    )  # fmt: skip
    assert [b["backup_id"] for b in listed["snapshots"]] == [result["backup_id"]]
    assert listed["snapshots"][0]["added"] == 25 + 25600

    dest = tmp_path / "restored"
    restored = run(
        "backup",
        "restore",
        "--storage",
        str(storage),
        "--to",
        str(dest),
        "--recovery-code",
        "-",
        stdin=result["recovery_code"] + "\n",
    )
    assert restored.returncode == 0, restored.stderr
    assert same_tree(source, dest)


def test_mistyped_and_wrong_codes_exit_3_and_write_nothing(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    code = json.loads(created.stdout)["recovery_code"]
    typo = ("1" if code[0] != "1" else "2") + code[1:]
    dest = tmp_path / "dest"

    mistyped = run(
        "backup", "restore", "--storage", str(storage), "--to", str(dest), "--recovery-code", typo
    )
    assert mistyped.returncode == 3
    assert "checksum" in mistyped.stderr
    assert not dest.exists()

    from backupvault.crypto import recovery

    other = recovery.encode(bytes(32))
    wrong = run(
        "--json",
        "backup",
        "restore",
        "--storage",
        str(storage),
        "--to",
        str(dest),
        "--recovery-code",
        other,
    )
    assert wrong.returncode == 3
    error = json.loads(wrong.stderr.strip().splitlines()[-1])
    assert error["exit_code"] == 3 and "not made with this key" in error["error"]
    assert not dest.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["device-state", "source", "storage"]  # nothing else


@pytest.mark.parametrize(
    "args",
    [
        ["backup", "create", "{src}", "--storage", "{tmp}/s"],  # no secret, not a terminal
        [
            "backup",
            "create",
            "{src}",
            "--storage",
            "{tmp}/s",
            "--password-stdin",
            "--recovery-code",
        ],
        ["backup", "create", "{src}", "--storage", "{tmp}/s", "--password-stdin"],  # no config
        ["backup", "restore", "--storage", "{tmp}/s"],  # no --to
        ["backup", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, source: Path, args: list[str]) -> None:
    filled = [a.format(src=source, tmp=tmp_path) for a in args]
    done = run(*filled, stdin="pw\n")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip()


def test_restore_refuses_a_non_empty_destination(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    code = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )["recovery_code"]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    done = run(
        "backup", "restore", "--storage", str(storage), "--to", str(dest), "--recovery-code", code
    )
    assert done.returncode == 2
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_empty_storage_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run("backup", "list", "--storage", str(tmp_path / "empty"))
    assert done.returncode == 0
    assert "no backups" in done.stdout


def test_missing_backup_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    from backupvault.crypto import recovery

    done = run(
        "backup",
        "restore",
        "--storage",
        str(tmp_path / "empty"),
        "--to",
        str(tmp_path / "d"),
        "--recovery-code",
        recovery.encode(bytes(32)),
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "Traceback" not in done.stderr


def test_second_backup_asks_for_the_code_and_stores_only_changes(
    tmp_path: Path, source: Path
) -> None:
    storage = tmp_path / "storage"
    first = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )
    code = first["recovery_code"]
    (source / "notes.txt").write_text("meet at the station at 8\n")
    second = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        stdin=code + "\n",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    info = json.loads(second.stdout)
    assert "recovery_code" not in info
    assert (info["parent_id"], info["files_read"], info["added"]) == (first["backup_id"], 1, 25)
    dest = tmp_path / "notes"
    restored = run(
        "backup", "restore", first["backup_id"][:8], "--storage", str(storage), "--to", str(dest),
        "--include", "notes.txt", "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "meet at the station at 7\n"
    diff = run(
        "--json", "backup", "diff", first["backup_id"], info["backup_id"], "--storage",
        str(storage), "--recovery-code", code,
    )  # fmt: skip
    assert json.loads(diff.stdout)["changes"] == [
        {"change": "M", "path": "notes.txt", "size_before": 25, "size_after": 25}
    ]
    checked = run("--json", "backup", "check", "--read-data", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert checked.returncode == 0 and json.loads(checked.stdout)["errors"] == []
    forgot = run("--json", "backup", "forget", "--keep-last", "1", "--storage", str(storage),
                 "--recovery-code", code)  # fmt: skip
    assert json.loads(forgot.stdout)["removed"] == [first["backup_id"]]
    pruned = run("--json", "backup", "prune", "--storage", str(storage), "--recovery-code", code)
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["bytes_freed"] >= 0


def test_check_exits_1_on_damage(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    code = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )["recovery_code"]
    pack = next((storage / "data").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 1
    pack.write_bytes(bytes(data))
    done = run("backup", "check", "--read-data", "--storage", str(storage), "--recovery-code", code)
    assert done.returncode == 1
    assert "damaged" in done.stderr and pack.name in done.stderr


def test_single_blob_backups_still_list_and_restore(tmp_path: Path, source: Path) -> None:
    """Backups made before the repository format, beside a repository in the same storage."""
    from backupvault.backup import create_backup
    from backupvault.crypto import recovery

    storage = tmp_path / "storage"
    key = recovery.new_root_key()
    old = create_backup(source, str(storage), key)
    code = recovery.encode(key)
    (source / "notes.txt").write_text("changed after the old backup\n")
    storage2 = tmp_path / "storage2"
    old2 = create_backup(source, str(storage2), key)
    created = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )
    listed = json.loads(
        run("--json", "backup", "list", "--storage", str(storage), "--recovery-code",
            created["recovery_code"]).stdout
    )  # fmt: skip
    assert [b["backup_id"] for b in listed["backups"]] == [old.backup_id]
    assert [s["backup_id"] for s in listed["snapshots"]] == [created["backup_id"]]
    dest = tmp_path / "old"
    restored = run(
        "backup", "restore", old.backup_id[:10], "--storage", str(storage), "--to", str(dest),
        "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (dest / "notes.txt").read_text() == "meet at the station at 7\n"
    only_old = run(
        "backup", "restore", "--storage", str(storage2), "--to", str(tmp_path / "latest-old"),
        "--recovery-code", code,
    )  # fmt: skip
    assert only_old.returncode == 0, only_old.stderr
    assert old2.backup_id in only_old.stdout
