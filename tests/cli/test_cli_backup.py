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

    listed = json.loads(run("--json", "backup", "list", "--storage", str(storage)).stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [result["backup_id"]]

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "storage"]  # no leftovers


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


def _rename(storage: Path, backup_id: str, when: str) -> None:
    """What an attacker with storage access can do: give an object another time in its name."""
    (old,) = storage.glob(f"backup-*-{backup_id}.bvb")
    old.rename(storage / f"backup-{when}-{backup_id}.bvb")


def test_latest_comes_from_the_authenticated_header_not_the_name(tmp_path: Path) -> None:
    from backupvault.backup import KEY_RECOVERY_CODE, create_backup
    from backupvault.crypto import recovery

    root_key = recovery.new_root_key()
    storage = tmp_path / "storage"
    made = []
    for text in ("first", "second", "third"):
        (tmp_path / "note.txt").write_text(text)
        made.append(
            create_backup(tmp_path / "note.txt", str(storage), root_key, key_kind=KEY_RECOVERY_CODE)
        )
    code = recovery.encode(root_key)

    def restore_latest(dest: str) -> dict[str, str]:
        done = run(
            "--json", "backup", "restore", "--storage", str(storage), "--to",
            str(tmp_path / dest), "--recovery-code", "-", stdin=code + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    # The newest is renamed to look oldest, the oldest to look newest.
    _rename(storage, made[2].backup_id, "20010101T000000.000000Z")
    _rename(storage, made[0].backup_id, "20990101T000000.000000Z")
    listed = json.loads(run("--json", "backup", "list", "--storage", str(storage)).stdout)
    assert listed["backups"][-1]["backup_id"] == made[0].backup_id  # the names say so...
    result = restore_latest("a")  # ...but the headers say otherwise
    assert result["backup_id"] == made[2].backup_id
    assert result["created_at"] == made[2].created_at.isoformat()
    assert (tmp_path / "a" / "note.txt").read_text() == "third"

    # Objects swapped under each other's names entirely (ids included).
    names = {b.backup_id: next(storage.glob(f"*{b.backup_id}.bvb")) for b in made}
    newest, oldest = names[made[2].backup_id], names[made[0].backup_id]
    newest.rename(tmp_path / "swap")
    oldest.rename(newest)
    (tmp_path / "swap").rename(oldest)
    result = restore_latest("b")
    assert result["backup_id"] == made[2].backup_id
    assert (tmp_path / "b" / "note.txt").read_text() == "third"


def test_latest_is_the_latest_this_credential_opens(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    codes = []
    for marker in ("mine", "someone else's"):
        (source / "notes.txt").write_text(marker)
        created = run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        )
        assert created.returncode == 0, created.stderr
        codes.append(json.loads(created.stdout)["recovery_code"])
    listed = run("backup", "list", "--storage", str(storage))
    assert "recovery code" in listed.stdout and "2 backups" in listed.stdout
    done = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "d"),
        "--recovery-code", "-", stdin=codes[0] + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    # A code that opens none of them: exit 3 and a clear message.
    from backupvault.crypto import recovery

    wrong = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "e"),
        "--recovery-code", recovery.encode(bytes(32)),
    )  # fmt: skip
    assert wrong.returncode == 3
    assert "none of the 2 backups" in wrong.stderr and not (tmp_path / "e").exists()
