"""Symbolic links in a repository restore: each is made as it was stored, after every file,
and never followed. `safe.resolves_outside`, which the single-blob extractor uses to remove
a link that leads out once made (on a file system that takes names differing in case or
Unicode form for one, "L" is the link "l"), looks names up in the folder itself."""

from __future__ import annotations

import os
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
