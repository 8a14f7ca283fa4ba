"""SafeDestination's own belt: even when something else plants links inside the folder it
writes (a race the staging folder's 0700 mode should already prevent), it follows none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupvault.backup import Limits, SafeDestination, UnsafeArchive

LIMITS = Limits(max_entries=100, max_bytes=1 << 20)


def test_a_planted_symlink_is_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    root = tmp_path / "root"
    root.mkdir()
    (root / "victim").symlink_to(outside / "victim")
    with SafeDestination(root, LIMITS) as dest, pytest.raises(UnsafeArchive, match="exists"):
        dest.file("victim", 0o644, 0, 4, [b"evil"])
    assert (outside / "victim").read_text() == "original"


def test_a_folder_swapped_for_a_symlink_is_not_entered(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    with SafeDestination(root, LIMITS) as dest:
        dest.folder("d", 0o755, 0)
        dest.folder("d/e", 0o755, 0)
        dest.file("other", 0o644, 0, 0, [])  # the cached folder descriptor is now the root
        os.rmdir(root / "d" / "e")
        os.rmdir(root / "d")
        (root / "d").symlink_to(outside)
        with pytest.raises(UnsafeArchive, match="cannot open the folder 'd/e'"):
            dest.file("d/e/f", 0o644, 0, 4, [b"evil"])
    assert list(outside.iterdir()) == []


def test_modes_times_and_hard_links(tmp_path: Path) -> None:
    with SafeDestination(tmp_path, LIMITS) as dest:
        dest.folder("ro", 0o4555, 1_000_000_000_000_000)
        dest.file("ro/f", 0o6755, 2_000_000_000_000_000, 3, [b"a", b"bc"])
        dest.hardlink("ro/g", "ro/f")
        written = dest.finish()
    assert (written.files, written.folders, written.bytes) == (2, 1, 3)
    st = (tmp_path / "ro" / "f").stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_nlink) == (0o755, 2 * 10**15, 2)
    assert (tmp_path / "ro").stat().st_mode & 0o7777 == 0o555
