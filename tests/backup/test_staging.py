"""A restore's staging folder: what a killed restore leaves is removed by the next restore
into the same place, and nothing else is (backup/safe.py, `remove_abandoned`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from backupvault.backup.repo import create_snapshot, restore_snapshot
from backupvault.backup.safe import Staging, remove_abandoned


def _killed_restore(dest: Path) -> Path:
    """The staging folder a restore into `dest` leaves when it is killed (SIGKILL) while
    it writes: a real `Staging`, in a process killed inside its `with`."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from backupvault.backup.safe import Staging

        with Staging(Path({str(dest)!r})) as staging:
            os.mkdir("sub", dir_fd=staging.fd)
            sub = os.open("sub", os.O_RDONLY | os.O_DIRECTORY, dir_fd=staging.fd)
            fd = os.open("half.bin", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=sub)
            os.write(fd, b"half of a file")
            os.fchmod(sub, 0o500)  # as a restored read-only folder
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (left,) = [p for p in dest.parent.iterdir() if p.name.endswith(".restoring")]
    return left


def test_a_killed_restore_s_staging_folder_is_removed_by_the_next(
    tmp_path: Path, root_key: bytes
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("restored whole")
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key)
    dest = tmp_path / "out" / "restored"
    dest.parent.mkdir()
    left = _killed_restore(dest)
    assert (left / "sub" / "half.bin").read_bytes() == b"half of a file"
    info = restore_snapshot(repo, root_key, dest)
    assert info.warnings == [
        f"removed {left}, the partial copy a restore into {dest} left when it was killed "
        "before it could clean up"
    ]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["restored"]
    assert (dest / "a.txt").read_text() == "restored whole"


def test_a_running_restore_s_folder_and_look_alikes_are_left_alone(tmp_path: Path) -> None:
    """A staging folder still locked by its restore (running, here in this process), a
    link under a staging folder's name, a folder of another destination's restore, and a
    name that only looks like one: none is touched."""
    dest = tmp_path / "restored"
    elsewhere = tmp_path / "target"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not ours to remove")
    link = tmp_path / f".restored.{'ab' * 6}.restoring"
    link.symlink_to(elsewhere)
    other = tmp_path / f".other.{'cd' * 6}.restoring"
    other.mkdir()
    not_hex = tmp_path / ".restored.not-hex-here.restoring"
    not_hex.mkdir()
    with Staging(dest) as running:
        os.mkdir("inside", dir_fd=running.fd)
        assert remove_abandoned(dest) == []
        assert (running.path / "inside").is_dir()
    assert not running.path.exists()  # left by its own restore, as always
    assert link.is_symlink() and (elsewhere / "keep.txt").exists()
    assert other.is_dir() and not_hex.is_dir()


def test_an_abandoned_folder_is_removed_even_when_it_holds_read_only_folders(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "restored"
    left = _killed_restore(dest)
    (message,) = remove_abandoned(dest)
    assert str(left) in message
    assert not left.exists()
