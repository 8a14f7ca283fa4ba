"""Symbolic links in a repository restore: each is made as it was stored, after every file,
and never followed. `safe.resolves_outside`, which the single-blob extractor uses to remove
a link that leads out once made (on a file system that takes names differing in case or
Unicode form for one, "L" is the link "l"), looks names up in the folder itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.backup import safe
from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot
from backupvault.backup.repo import snapshots as snaps
from backupvault.backup.repo.tree import DIR, ROOT, SYMLINK, Entry
from backupvault.backup.storage import Storage

# The reviewer's shape: lexically inside, out through "L" where "L" is "l".
FOLDED = b"/".join([b"L"] * 4 + [b".."] * 4 + [b"outside"])


@pytest.fixture
def repo(tmp_path: Path, root_key: bytes) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"x")
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key)
    return repo


def _plant(repo: Path, root_key: bytes, links: list[tuple[bytes, bytes]]) -> None:
    """A snapshot of the folder "d" and these links, sealed as a holder of RK could."""
    opened = Repository.open(Storage(str(repo)), root_key)
    entries = [Entry(DIR, ROOT, 0o755, 0), Entry(DIR, b"d", 0o755, 0)]
    entries += [Entry(SYMLINK, path, 0o777, 0, target=target) for path, target in links]
    summary = snaps.Summary(snaps.KIND_FOLDER, 0, 1, len(links), 0, 0, 0, "/x", "h")
    for old in (repo / "snapshots").iterdir():
        old.unlink()
    snapshot_id, data = snaps.seal(root_key, opened.keys.repo_id, None, summary, entries)
    (repo / "snapshots" / snapshot_id.hex()).write_bytes(data)


def _links(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): os.readlink(p)
        for p in folder.rglob("*")
        if p.is_symlink()
    }


def test_every_link_comes_back_as_it_was_stored_wherever_it_leads(
    repo: Path, root_key: bytes
) -> None:
    """Absolute links and links out of the folder are restored too (restic and tar do): a
    home folder's dotfile links were lost on every restore with exit 0 (review s40-R2).
    Each is only made, never followed: nothing appears where any of them leads."""
    outside = repo.parent / "outside"
    outside.mkdir()
    links = [
        (b"l", b"."),
        (b"x", b"l/l/../../outside"),
        (b"abs", os.fsencode(outside)),
        (b"d/up", b"../.."),
        (b"d/deep", b"../l/d/../l/../.."),
        (b"ok", b"d"),
        (b"d/back", b"../l/d/../a"),
        (b"d/loose", b"missing/../../a"),
        (b"x2", FOLDED),
    ]
    _plant(repo, root_key, links)
    dest = repo.parent / "restored"
    info = restore_snapshot(str(repo), root_key, dest)
    assert _links(dest) == {path.decode(): os.fsdecode(target) for path, target in links}
    assert info.skipped == [] and info.links == len(links)
    assert os.listdir(outside) == []
    assert sorted(os.listdir(repo.parent)) == ["outside", "repo", "restored", "src"]


def test_resolves_outside_looks_names_up_in_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "f").write_bytes(b"")
    for name, target in [
        ("l", "."),
        ("L", "."),  # what a case-insensitive file system shows for "L"
        ("x", FOLDED.decode()),
        ("in", "L/L/d/../f"),
        ("missing", "nothing/../f"),
        ("missing-out", "nothing/../../f"),
        ("through-file", "f/../../f"),
        ("abs", "/etc"),
        ("d/up", "../l/.."),
        ("loop", "loop2"),
        ("loop2", "loop"),
    ]:
        os.symlink(target, root / name)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        outside = {
            name
            for name in ["x", "in", "missing", "missing-out", "through-file", "abs", "d/up", "loop"]
            if safe.resolves_outside(fd, os.fsencode(name))
        }
    finally:
        os.close(fd)
    # a loop leads nowhere (more than 40 links: counted as leading out)
    assert outside == {"x", "missing-out", "through-file", "abs", "d/up", "loop"}


def test_a_disk_that_holds_no_links_is_said_before_any_file_is_written(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT and exFAT (a USB drive as it comes) hold no symbolic links: symlink(2) says
    EPERM there (the file system has no symlink operation; faked here, as a test cannot
    mount one). Links are made last, so a restore of a home folder onto such a drive
    wrote every file, failed at the first link, removed it all and blamed "a file size
    limit, a quota, a failing disk" (review s62). Now it stops before writing a file, and
    says why; a restore with no link in it is not asked to make one."""
    from backupvault.backup.repo import restore as restore_module
    from backupvault.backup.repo.restore import RestoreFailed

    source = tmp_path / "src"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "notes.txt").write_text("notes")
    (source / "latest").symlink_to("docs/big.bin")
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key)
    written: list[bytes] = []
    real_write_file = restore_module._write_file

    def write_file(dir_fd: int, entry: Entry, data: Iterator[bytes | bytearray]) -> None:
        written.append(entry.path)
        real_write_file(dir_fd, entry, data)

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(1, os.strerror(1))

    monkeypatch.setattr(restore_module, "_write_file", write_file)
    monkeypatch.setattr(restore_module.os, "symlink", no_links)
    with pytest.raises(RestoreFailed, match="cannot hold symbolic links") as refused:
        restore_snapshot(str(repo), root_key, tmp_path / "usb")
    assert "and this restore has 1" in str(refused.value)
    assert "--include" in str(refused.value.hint)
    assert written == []
    assert sorted(os.listdir(tmp_path)) == ["repo", "src"]  # nothing left beside --to
    # What holds no link restores there as before.
    restore_snapshot(str(repo), root_key, tmp_path / "usb", include=("docs", "notes.txt"))
    assert sorted(written) == [b"docs/big.bin", b"notes.txt"]
    assert (tmp_path / "usb" / "docs" / "big.bin").read_bytes() == (
        source / "docs" / "big.bin"
    ).read_bytes()
