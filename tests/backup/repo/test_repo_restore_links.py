"""Symbolic links a restore makes are checked again once made, as the file system resolves
them: on a file system that takes names differing in case or Unicode form for one (APFS,
NTFS, ext4 casefold), a tree whose links the byte-level check follows correctly can still
lead out ("l" -> "." and "x" -> "L/L/../../etc": "L" is the link "l" there). Such a link is
removed, with a warning, before anything is moved into --to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupvault.backup import safe
from backupvault.backup.repo import Repository, create_snapshot, restore, restore_snapshot
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


def test_links_the_tree_check_misses_are_removed_once_made(
    repo: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the tree check fooled (as case folding fools it), every link that leads out
    is still removed and reported; those that stay inside are kept."""
    monkeypatch.setattr(restore, "_link_escapes", lambda *_: False)
    (repo.parent / "outside").mkdir()
    links = [
        (b"l", b"."),
        (b"x", b"l/l/../../outside"),
        (b"abs", os.fsencode(repo.parent / "outside")),
        (b"d/up", b"../.."),
        (b"d/deep", b"../l/d/../l/../.."),
        (b"ok", b"d"),
        (b"d/back", b"../l/d/../a"),
        (b"d/loose", b"missing/../../a"),
    ]
    _plant(repo, root_key, links)
    dest = repo.parent / "restored"
    info = restore_snapshot(str(repo), root_key, dest)
    assert _links(dest) == {
        "l": ".",
        "ok": "d",
        "d/back": "../l/d/../a",
        "d/loose": "missing/../../a",
    }
    removed = {item.name: item.reason for item in info.skipped}
    assert sorted(removed) == ["abs", "d/deep", "d/up", "x"]
    for path, target in links:
        if path.decode() in removed:
            assert removed[path.decode()] == (
                f"symbolic link to {target.decode()} leads outside the restored folder on "
                "this file system (it may take names that differ in case or Unicode form "
                "for one): removed"
            )
    assert info.links == 4
    assert os.listdir(repo.parent / "outside") == []


def test_a_link_out_through_a_case_folded_name_is_removed(
    repo: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's tree, on a stand-in for a case-insensitive file system: making "l"
    also makes "L" (what such a file system shows under that name)."""
    made = os.symlink

    def folding(target: bytes, path: bytes, *, dir_fd: int | None = None) -> None:
        made(target, path, dir_fd=dir_fd)
        if path == b"l":
            made(target, b"L", dir_fd=dir_fd)

    monkeypatch.setattr(os, "symlink", folding)
    links = [(b"l", b"."), (b"x", FOLDED)]
    assert not restore._link_escapes(b"x", FOLDED, dict(links))  # the tree check is fooled
    _plant(repo, root_key, links)
    dest = repo.parent / "restored"
    info = restore_snapshot(str(repo), root_key, dest)
    assert [item.name for item in info.skipped] == ["x"]
    assert "x" not in _links(dest)
    assert _links(dest)["l"] == "."


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
