"""`backup create` against a source that is odd or changes while it is backed up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot, tree
from backupvault.backup.repo.tree import FILE, TIME_MAX_NS, Entry
from backupvault.backup.storage import Storage
from backupvault.errors import InvalidInput


def _entries(repo: Path, root_key: bytes) -> dict[bytes, Entry]:
    snapshot = Repository.open(Storage(str(repo)), root_key).find_snapshot(None)
    assert snapshot.entries is not None
    return {e.path: e for e in snapshot.entries}


def test_a_time_after_2262_is_stored_clamped_and_said(tmp_path: Path, root_key: bytes) -> None:
    """A time past what a tree holds (i64 ns) made tree.encode raise struct.error once
    every pack was uploaded: every backup of the folder failed, "this is a bug". It is
    stored as the latest time the tree holds, with a warning; the content is backed up
    (so nothing is skipped, and the CLI does not exit 8)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"ok")
    future = source / "from-a-zip.txt"
    future.write_bytes(b"content")
    year_2400 = 13_569_465_600
    os.utime(future, (year_2400, year_2400))
    if os.stat(future).st_mtime_ns <= TIME_MAX_NS:
        pytest.skip("this file system does not hold times after 2262")
    repo = tmp_path / "repo"
    made = create_snapshot(source, str(repo), root_key)
    assert made.skipped == []
    assert made.files == 2
    (note,) = [w for w in made.warnings if "from-a-zip.txt" in w]
    assert "modification time is after 2262-04-11" in note
    assert "stored as 2262-04-11 23:47:16 UTC" in note
    assert _entries(repo, root_key)[b"from-a-zip.txt"].mtime_ns == TIME_MAX_NS
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "from-a-zip.txt").read_bytes() == b"content"
    # Clamped alike each time: the file cache still knows the file unchanged.
    again = create_snapshot(source, str(repo), root_key)
    assert again.files_read == 0


@pytest.mark.parametrize(
    "entry",
    [
        Entry(FILE, b"f", 0o644, TIME_MAX_NS + 1),
        Entry(FILE, b"f", 0o644, 0, ctime_ns=-(1 << 63) - 1),
        Entry(FILE, b"f", 0o644, 0, size=-1),
        Entry(FILE, b"x" * 65536, 0o644, 0),
    ],
)
def test_a_tree_field_out_of_range_is_a_clear_error(entry: Entry) -> None:
    with pytest.raises(InvalidInput, match="out of the range the format holds"):
        tree.encode([entry])
