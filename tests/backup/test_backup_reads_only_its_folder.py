"""A backup of a folder someone else may write in reads only files inside it.

The walk opens each folder with O_NOFOLLOW relative to its parent and refuses a folder
swapped for a link. Files are read later, each opened relative to its folder's descriptor,
reached from the source the same way: a folder replaced by a link after the walk listed it
must not make the backup read, through that link, a file from outside the source (stored
under the walked name, with the mode the walk saw, and restored there). Review s49, F1:
files were opened by their whole path, and only the last component was not followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupvault.backup.repo import create, create_snapshot, restore_snapshot


@pytest.mark.parametrize("size", [100, 2_000_000])  # a small file (batch read), a large one
def test_no_file_is_read_through_a_folder_swapped_for_a_link_after_the_walk(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    source = tmp_path / "shared"
    (source / "dir").mkdir(parents=True)
    planted = source / "dir" / "notes.txt"
    planted.write_bytes(b"p" * size)
    planted.chmod(0o644)
    # The victim's private file, outside the source, with the same name.
    private = tmp_path / "home" / ".ssh"
    private.mkdir(parents=True)
    secret = private / "notes.txt"
    secret.write_bytes(b"SECRET" + b"s" * (size - 6))
    secret.chmod(0o600)

    real_walk = create.walk

    def walk_then_swap(*args, **kwargs):  # type: ignore[no-untyped-def]
        walked = real_walk(*args, **kwargs)
        # The other user, who may write in shared/, swaps dir for a link once it was listed.
        os.rename(source / "dir", tmp_path / "dir-moved-away")
        os.symlink(private, source / "dir")
        return walked

    monkeypatch.setattr(create, "walk", walk_then_swap)
    info = create_snapshot(source, str(tmp_path / "repo"), root_key)

    dest = tmp_path / "restored"
    restore_snapshot(str(tmp_path / "repo"), root_key, dest)
    restored = dest / "dir" / "notes.txt"
    # Either left out as vanished (as a folder swapped during the walk is), or the
    # planted file's own content: never the file the link leads to.
    if restored.exists():
        assert not restored.read_bytes().startswith(b"SECRET"), (
            "the backup read a file outside the source through a folder swapped for a link,"
            f" and restored it with mode {oct(restored.stat().st_mode & 0o777)};"
            f" skipped={info.skipped}"
        )


@pytest.mark.parametrize("depth", [1, 70])  # kept open while read; past _KEEP_OPEN, reopened
def test_a_file_in_a_folder_replaced_after_the_walk_is_left_out_as_vanished(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """Another folder moved into a walked folder's place (no link: O_NOFOLLOW alone would
    pass it) is not the folder the walk listed: its files are not read in its stead."""
    source = tmp_path / "shared"
    parts = [f"d{i}" for i in range(depth)]
    folder = source.joinpath(*parts)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_bytes(b"listed")
    (source / "kept.txt").write_bytes(b"kept")
    real_walk = create.walk

    def walk_then_replace(*args, **kwargs):  # type: ignore[no-untyped-def]
        walked = real_walk(*args, **kwargs)
        os.rename(folder, tmp_path / "moved-away")
        folder.mkdir()
        (folder / "notes.txt").write_bytes(b"moved in")
        return walked

    monkeypatch.setattr(create, "walk", walk_then_replace)
    info = create_snapshot(source, str(tmp_path / "repo"), root_key)
    monkeypatch.undo()

    inside = "/".join([*parts, "notes.txt"])
    assert [str(s) for s in info.skipped] == [f"{inside}: vanished during the backup"]
    dest = tmp_path / "restored"
    restore_snapshot(str(tmp_path / "repo"), root_key, dest)
    assert not dest.joinpath(*parts, "notes.txt").exists()
    assert (dest / "kept.txt").read_bytes() == b"kept"
