"""A file that grows while it is backed up is read up to a bound, not without end.

A large file is read in windows until a read comes back short. Someone who may write in
the source (a shared folder), or a log or VM image being written, who keeps ahead of the
reader made the backup read on without end, filling storage (review s49, F4). It is read
up to its size when its read begins (or at the walk, if larger) plus 1/64 and 1 MiB (the
headroom the single-blob format gave), and what was read is stored as the file, with a
warning that it changed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from backupvault.backup.repo import create, create_snapshot, restore_snapshot
from backupvault.errors import BackupVaultError

WINDOW = 16 << 20


def test_a_file_growing_faster_than_it_is_read_is_not_read_without_end(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "shared"
    source.mkdir()
    growing = source / "growing.log"
    growing.write_bytes(b"x" * (2 << 20))  # 2 MiB when the walk sees it
    real_read_into = create._read_into
    reads = 0

    def writer_stays_ahead(handle, buffer):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        if reads > 40:  # 40 windows: 640 MiB read of a file the walk saw at 2 MiB
            raise AssertionError("still reading a file the walk saw at 2 MiB")
        with open(growing, "ab") as out:  # the other writer appends a window's worth
            out.write(b"y" * WINDOW)
        return real_read_into(handle, buffer)

    monkeypatch.setattr(create, "_read_into", writer_stays_ahead)
    # failing the backup ("grew while it was being backed up") is fine
    with contextlib.suppress(BackupVaultError):
        create_snapshot(source, str(tmp_path / "repo"), root_key)


@pytest.mark.parametrize(
    "size",
    [100, 2 << 20, 20 << 20],  # read whole, then as large; in windows; a reader thread ahead
)
def test_a_file_that_grew_past_the_bound_is_stored_as_its_first_bytes_with_a_warning(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Each file grows a little between the walk and its read (read whole: what it held
    when its read began), then, at its first read, past the bound (growing.log: cut there)
    or to it exactly (exact.log: stored whole, without a warning)."""
    source = tmp_path / "shared"
    source.mkdir()
    growing, exact = source / "growing.log", source / "exact.log"
    growing.write_bytes(os.urandom(size))
    exact.write_bytes(os.urandom(size))
    before_read = size + 1000
    bound = before_read + before_read // 64 + (1 << 20)
    past = {growing.stat().st_ino: (growing, 3 << 20), exact.stat().st_ino: (exact, 0)}
    real_walk, real_read_into = create.walk, create._read_into

    def walk_then_grow(*args, **kwargs):  # type: ignore[no-untyped-def]
        walked = real_walk(*args, **kwargs)
        for path in (growing, exact):
            with open(path, "ab") as out:
                out.write(os.urandom(before_read - size))
        return walked

    def grow_at_first_read(handle, buffer):  # type: ignore[no-untyped-def]
        grows = past.pop(os.fstat(handle.fileno()).st_ino, None)
        if grows is not None:
            with open(grows[0], "ab") as out:
                out.write(os.urandom(bound - before_read + grows[1]))
        return real_read_into(handle, buffer)

    monkeypatch.setattr(create, "walk", walk_then_grow)
    monkeypatch.setattr(create, "_read_into", grow_at_first_read)
    info = create_snapshot(source, str(tmp_path / "repo"), root_key)
    monkeypatch.undo()

    assert past == {} and info.size == 2 * bound and info.skipped == []
    assert info.warnings == [
        f"growing.log: changed during the backup: it grew past {bound:,} bytes while it was"
        f" read ({size:,} when the walk saw it); its first {bound:,} bytes are stored (run"
        " the backup again once it stops growing)"
    ]
    dest = tmp_path / "restored"
    restore_snapshot(str(tmp_path / "repo"), root_key, dest)
    # The chunks cut as of the file's end there: the same bytes, none torn or repeated.
    assert (dest / "growing.log").read_bytes() == growing.read_bytes()[:bound]
    assert (dest / "exact.log").read_bytes() == exact.read_bytes()
