"""Review s60: a Ctrl-C or SIGTERM that landed after the restore's rename (or the backup's
snapshot put) but before the CLI ignores them (`_committed`) was reported as "nothing was
written" / "no snapshot was saved" (exit 130), while `--to` held the whole restore / the
snapshot stayed stored, unconfirmed. Now the restore says it had finished, and the backup
takes its snapshot back, as when its lock cannot be confirmed."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest

from backupvault.backup import safe
from backupvault.backup.repo import create_snapshot
from backupvault.backup.repo import repository as repository_module
from backupvault.cli.main import main
from backupvault.crypto import recovery

pytestmark = pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")


def test_a_signal_just_after_the_restore_renamed_its_copy_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root_key = recovery.new_root_key()
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("precious\n")
    storage = tmp_path / "storage"
    create_snapshot(source, str(storage), root_key)
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "state"))

    finish = safe.Staging.finish

    def finish_then_signal(self: safe.Staging, *args: object, **kwargs: object) -> None:
        finish(self, *args, **kwargs)  # the copy is now at --to
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C a moment later

    monkeypatch.setattr(safe.Staging, "finish", finish_then_signal)
    monkeypatch.setattr(sys, "stdin", io.StringIO(recovery.encode(root_key) + "\n"))
    dest = tmp_path / "restored"
    args = ["backup", "restore", "--storage", str(storage), "--to", str(dest),
            "--recovery-code", "-"]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 130, err
    assert f"restore interrupted after it had finished: {dest} holds the whole restore" in err
    assert (dest / "a.txt").read_text() == "precious\n"


def test_a_signal_during_the_check_after_the_snapshot_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock's read-back after `put(snapshot)` is a storage round trip (remote: tens to
    hundreds of ms). A KeyboardInterrupt there is no BackupVaultError, so `_create_locked`
    neither confirms nor deletes the snapshot: it stays, unconfirmed, and the user is told
    none was saved."""
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    storage = tmp_path / "storage"
    verify = repository_module.Lock.verify
    calls = [0]

    def verify_signalled(self: repository_module.Lock, *, read: bool = True) -> None:
        calls[0] += 1
        if calls[0] == 3 and self.kind == repository_module.SHARED:  # after the put
            os.kill(os.getpid(), signal.SIGTERM)  # lands while the lock is read back
        verify(self, read=read)

    monkeypatch.setattr(repository_module.Lock, "verify", verify_signalled)
    args = ["backup", "create", str(source), "--storage", str(storage), "--recovery-code"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 130, err
    assert "no snapshot was saved" in err
    assert os.listdir(storage / "snapshots") == []  # taken back, as the message says
