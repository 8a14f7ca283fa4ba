"""SafeDestination's own belt: even when something else plants links inside the folder it
writes (a race the staging folder's 0700 mode should already prevent), it follows none; and
the tar reader with it turns any mangled archive into a clean error."""

from __future__ import annotations

import errno
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupvault.backup import Limits, SafeDestination, UnsafeArchive, safe
from backupvault.backup.archive import extract_archive
from backupvault.errors import BackupVaultError

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


def _honest_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in [
            (".", tarfile.DIRTYPE, b""),
            ("d", tarfile.DIRTYPE, b""),
            ("d/f", tarfile.REGTYPE, b"x" * 700),
            ("d/" + "é" * 60, tarfile.REGTYPE, b"long unicode name"),
            ("h", tarfile.LNKTYPE, b""),
            ("s", tarfile.SYMTYPE, b""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data), 1_700_000_000.25
            info.linkname = {"h": "d/f", "s": "d/f"}.get(name, "")
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


HONEST = _honest_tar()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(HONEST) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_archives_fail_cleanly_and_stay_inside(edits: list[tuple[int, int]]) -> None:
    """Any byte edits of an honest archive: a clean restore or a backupvault error, never
    another exception, and never a file outside the destination."""
    tar = bytearray(HONEST)
    for position, value in edits:
        tar[position] = value
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "root"
        root.mkdir()
        compressed = io.BytesIO(zstandard.ZstdCompressor().compress(bytes(tar)))
        try:
            with SafeDestination(root, LIMITS) as dest:
                extract_archive(compressed, dest)
        except BackupVaultError:
            pass
        assert sorted(p.name for p in Path(work).iterdir()) == ["root"]
        for path in root.rglob("*"):
            if path.is_symlink():
                resolved = path.resolve()
                assert resolved == root.resolve() or root.resolve() in resolved.parents


def test_the_unmutated_archive_restores(tmp_path: Path) -> None:
    with SafeDestination(tmp_path, LIMITS) as dest:
        stats = extract_archive(io.BytesIO(zstandard.ZstdCompressor().compress(HONEST)), dest)
    assert (stats.files, stats.folders, stats.links, stats.has_root) == (3, 1, 1, True)
    assert (tmp_path / "s").read_bytes() == b"x" * 700
    assert (tmp_path / "d" / "f").stat().st_mtime_ns == 1_700_000_000_250_000_000


def test_a_link_that_leads_out_through_a_case_folded_name_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single-blob restore checked links only by their names as bytes; on a file system
    that takes "L" and "l" for one (APFS, NTFS, ext4 casefold) "x" -> "L/L/L/L/../../../..
    /outside" leads out through the link "l" -> ".". Once made, the links are resolved
    again in the folder itself, as the repository restore does, and that one is removed
    and reported. The stand-in for case folding: making "l" makes "L" too, as in
    tests/backup/repo/test_repo_restore_links.py."""
    made = os.symlink

    def folding(
        target: str, path: str, target_is_directory: bool = False, *, dir_fd: int | None = None
    ) -> None:
        made(target, path, dir_fd=dir_fd)
        if path == "l":
            made(target, "L", dir_fd=dir_fd)

    monkeypatch.setattr(os, "symlink", folding)
    root = tmp_path / "a" / "b" / "c" / "staging"
    root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    escaping = "/".join(["L"] * 4 + [".."] * 4 + ["outside"])
    with SafeDestination(root, Limits(100, 100)) as dest:
        dest.folder("d", 0o555, 0)  # read-only once finished: the link is removed before
        dest.symlink("l", ".")
        dest.symlink("d/x", "../" + escaping)
        dest.symlink("ok", "l/d")
        written = dest.finish()
    monkeypatch.undo()
    assert not (root / "d" / "x").is_symlink()
    assert os.readlink(root / "ok") == "l/d" and os.readlink(root / "l") == "."
    assert written.links == 2  # "l" and "ok"; the stand-in's "L" is no link of the archive
    (removed,) = written.skipped
    assert removed.name == "d/x"
    assert "leads outside the restored folder on this file system" in removed.reason


def test_a_folder_the_cleanup_cannot_open_is_still_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored folder mode of 0o000 makes the staging folder's removal fail to open it
    (root, as the tests run, is never refused: the refusal is made here). The retry
    called `os.open` without flags, and its TypeError replaced the restore's own error
    and left the folder behind, where the next restore met it again (review s41-A)."""
    root = tmp_path / "staging"
    (root / "locked" / "inner").mkdir(parents=True)
    (root / "locked" / "inner" / "f").write_bytes(b"x")
    opened = os.open
    refused: list[str] = []

    def refusing(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if os.fsdecode(path).endswith("locked") and not refused:
            refused.append(os.fsdecode(path))
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return opened(path, flags, mode, dir_fd=dir_fd)

    checked = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    monkeypatch.setattr(os, "open", refusing)
    try:
        safe._remove_tree(root, checked)
    finally:
        os.close(checked)
    assert refused and not root.exists()


def test_a_full_disk_with_bytes_and_inodes_to_spare_gives_no_figures_that_say_there_is_room(
    tmp_path: Path,
) -> None:
    """Review s49: ENOSPC or EDQUOT with room on the disk (a quota) said "needs 1 B, has
    9 GiB". It says the disk refused, and a quota may be why."""
    refused = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    error = safe.full_disk(tmp_path, Limits(1, 1), refused)
    assert "needs" not in error.message and "quota" in error.message
    assert os.strerror(errno.EDQUOT) in error.message
