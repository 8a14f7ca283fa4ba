"""A first `--recovery-code` backup that loses the race to create the repository (another
device stored its config first, with a key of its own): the error must not hand out
this device's code as the repository's, which it does not open."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from backupvault.backup.repo import create_snapshot, repository
from backupvault.backup.repo.keys import new_config
from backupvault.cli import main as cli_main


def test_the_loser_of_the_race_prints_no_recovery_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for folder in (mine, theirs):
        folder.mkdir()
        (folder / "file").write_bytes(os.urandom(3000))
    storage = tmp_path / "repo"
    other_key = os.urandom(32)
    raced: list[bool] = []

    def other_device_first(*args: Any, **kwargs: Any) -> Any:
        made = new_config(*args, **kwargs)
        if not raced:  # this device found no config; the other one stores its own first
            raced.append(True)
            monkeypatch.setattr(repository, "new_config", new_config)
            create_snapshot(theirs, str(storage), other_key)
        return made

    monkeypatch.setattr(repository, "new_config", other_device_first)
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as done:
        cli_main.main(
            ["--json", "backup", "create", str(mine), "--storage", str(storage), "--recovery-code"]
        )
    out = capsys.readouterr()
    assert raced and done.value.code == 3, out.err
    error = json.loads(out.err.strip().splitlines()[-1])
    assert "another device created the repository" in error["error"]
    assert "recovery_code" not in error and "the new repository was made" not in error["hint"]
    assert out.out == ""
