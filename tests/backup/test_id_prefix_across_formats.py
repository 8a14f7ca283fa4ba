"""Review s60: a snapshot id prefix that also starts a single-blob backup's id.

`backup restore ID` (cli/main.py, backup_restore) switches to the single-blob reader as
soon as ANY single-blob object in the storage folder has an id starting with ID, without
looking whether ID also names a snapshot. Storage that holds (or is handed) a single-blob
backup of the same user (same vault key: another storage folder of the account, mixed in
by storage) whose id shares the prefix the user typed gets THAT backup restored, silently,
in place of the snapshot asked for: no "ambiguous prefix" error, no warning. The docs say a
prefix that matches several backups is refused (exit 2); now this one is too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import single_blob

from backupvault.backup.repo import create_snapshot
from backupvault.crypto import recovery


def test_a_prefix_of_both_a_snapshot_and_a_single_blob_backup_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root_key = recovery.new_root_key()
    code = recovery.encode(root_key)

    # The user's repository (storage X) and the snapshot they want back.
    wanted = tmp_path / "documents"
    wanted.mkdir()
    (wanted / "contract.txt").write_text("the signed contract\n")
    storage = tmp_path / "X"
    snap = create_snapshot(wanted, str(storage), root_key).snapshot_id
    prefix = snap[:4]  # as `backup forget 3f2a9c01 7be4` in docs/cli.md

    # An old single-blob backup of ANOTHER folder, same key, in ANOTHER storage folder Y,
    # whose id happens to start with the same four hex digits (among years of daily
    # backups, one does; here its id is chosen so rather than searched for).
    other = tmp_path / "old-stuff"
    other.mkdir()
    (other / "contract.txt").write_text("an old draft the user deleted\n")
    real_urandom = os.urandom
    first = [True]

    def urandom(n: int) -> bytes:
        if n == 16 and first[0]:
            first[0] = False
            return bytes.fromhex(prefix) + real_urandom(14)
        return real_urandom(n)

    monkeypatch.setattr(single_blob.os, "urandom", urandom)
    elsewhere = tmp_path / "Y"
    info = single_blob.create_backup(
        other, str(elsewhere), root_key, key_kind=single_blob.KEY_RECOVERY_CODE
    )
    monkeypatch.setattr(single_blob.os, "urandom", real_urandom)
    assert info.backup_id.startswith(prefix) and info.backup_id != snap

    # Storage mixes it into X (all of it authentic, under the user's own key).
    shutil.copy(elsewhere / info.name, storage / info.name)

    dest = tmp_path / "restored"
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "--json", "backup", "restore", prefix,
         "--storage", str(storage), "--to", str(dest), "--recovery-code", "-"],
        input=code + "\n", capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(tmp_path), "BACKUPVAULT_STATE_DIR": str(tmp_path / "st")},
    )  # fmt: skip
    # Storage would choose which of the two the prefix names: refused, as two snapshots
    # sharing a prefix are (exit 2), before the key is asked for.
    assert done.returncode == 2 and "matches both" in done.stderr, done.stderr
    assert not dest.exists()
