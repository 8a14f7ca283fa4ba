"""Review s60: storage that hid a whole repository (its config and every object) from a
folder that also holds single-blob backups of an older version made `backup restore` (the
latest) restore the newest single-blob backup, years old, with exit 0 and no word, on the
very device that recorded backing up to a repository there. The latest is now refused
there; the single-blob backup still restores by its id."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
import single_blob

from backupvault.backup.repo import create_snapshot
from backupvault.cli.main import main
from backupvault.crypto import recovery


def _restore(
    storage: Path, dest: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, *ids: str
) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(recovery.encode(root_key) + "\n"))
    with pytest.raises(SystemExit) as exited:
        main(["backup", "restore", *ids, "--storage", str(storage), "--to", str(dest),
              "--recovery-code", "-"])  # fmt: skip
    return int(exited.value.code or 0)


def test_a_hidden_repository_is_not_replaced_by_an_old_single_blob_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root_key = recovery.new_root_key()
    state = tmp_path / "state"
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(state))
    source = tmp_path / "documents"
    source.mkdir()
    storage = tmp_path / "storage"
    (source / "thesis.txt").write_text("draft 1 (2019)\n")
    old = single_blob.create_backup(
        source, str(storage), root_key, key_kind=single_blob.KEY_RECOVERY_CODE
    )
    (source / "thesis.txt").write_text("final version\n")
    create_snapshot(source, str(storage), root_key, state_dir=state)  # this device's record
    (storage / "config").unlink()  # storage hides the repository, every object of it
    for folder in ("data", "index", "snapshots", "locks", "forgotten"):
        shutil.rmtree(storage / folder, ignore_errors=True)

    dest = tmp_path / "restored"
    assert _restore(storage, dest, root_key, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "storage no longer shows it" in err and not dest.exists()
    # Asked for by its id, the single-blob backup restores.
    assert _restore(storage, dest, root_key, monkeypatch, old.backup_id) == 0
    assert (dest / "thesis.txt").read_text() == "draft 1 (2019)\n"
    # A device that never backed up to a repository there restores the latest as before.
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "another device"))
    assert _restore(storage, tmp_path / "elsewhere", root_key, monkeypatch) == 0
