"""Storage attacks on the repository format: every altered, missing, swapped, duplicated
or truncated object is detected by restore, and nothing is written into --to (an altered
index object is left out and reported by check: restore reads the packs' own headers)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from backup_trees import snapshot

from backupvault.backup.errors import Damaged, StorageError
from backupvault.backup.repo import (
    Repository,
    create_snapshot,
    maintenance,
    restore_snapshot,
    snapshots,
)
from backupvault.backup.repo.backend import Backend
from backupvault.backup.repo.index import (
    INDEX_AAD,
    IndexFile,
    PackEntry,
    max_index_len,
    max_pack_len,
    seal_object,
    split_index,
)
from backupvault.backup.repo.repository import RepositoryLocked
from backupvault.backup.repo.tree import DIR, FILE, ROOT, SYMLINK, Entry
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput, WrongKey

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


@pytest.fixture
def made(tmp_path: Path, root_key: bytes) -> tuple[Path, Path]:
    """A repository with one snapshot of small, equal-sized incompressible files (so
    many packs, and blobs of one length) and one larger file."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(40):
        (source / f"f{i:02}").write_bytes(os.urandom(50))
    (source / "big").write_bytes(os.urandom(20_000))
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    return source, repo


def packs(repo: Path) -> list[Path]:
    return sorted((repo / "data").iterdir())


def pack_entries(repo: Path, root_key: bytes, pack: Path) -> list[PackEntry]:
    opened = Repository.open(Storage(str(repo)), root_key)
    return opened.read_pack_header(pack.name, pack.stat().st_size)


def assert_restore_fails(
    repo: Path,
    root_key: bytes,
    error: type[BaseException] = BackupVaultError,
    *,
    check_finds_it: bool = True,
) -> BaseException:
    """Restore fails with `error` and leaves nothing; `check --read-data` reports it."""
    dest = repo.parent / "restored"
    before = set(os.listdir(repo.parent))
    with pytest.raises(error) as caught:
        restore_snapshot(str(repo), root_key, dest)
    assert not dest.exists()
    assert set(os.listdir(repo.parent)) == before  # no staging folder left behind
    if check_finds_it:
        opened = Repository.open(Storage(str(repo)), root_key)
        assert maintenance.check(opened, read_data=True).errors != []
    return caught.value


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_untouched_repository_restores(made: tuple[Path, Path], root_key: bytes) -> None:
    source, repo = made
    restore_snapshot(str(repo), root_key, repo.parent / "ok")
    assert (repo.parent / "ok" / "big").read_bytes() == (source / "big").read_bytes()


@pytest.mark.parametrize("where", ["nonce", "body", "tag"])
def test_altered_chunk_blob(made: tuple[Path, Path], root_key: bytes, where: str) -> None:
    _, repo = made
    pack = packs(repo)[0]
    entry = pack_entries(repo, root_key, pack)[0]
    offset = {"nonce": 0, "body": 13, "tag": entry.length - 1}[where]
    flip(pack, entry.offset + offset)
    assert_restore_fails(repo, root_key, AuthenticationFailed)


def test_missing_pack(made: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = made
    snap = Repository.open(Storage(str(repo)), root_key).find_snapshot(None)

    def users(pack: Path) -> list[str]:
        lost = {e.chunk_id for e in pack_entries(repo, root_key, pack)}
        return [os.fsdecode(e.path) for e in snap.entries or [] if lost & set(e.chunks)]

    # A pack of many small files: every file that uses a chunk of it is named, not the
    # first one alone.
    pack = next(p for p in packs(repo) if len(users(p)) > 1)
    named = users(pack)
    pack.unlink()
    error = assert_restore_fails(repo, root_key, AuthenticationFailed)
    assert "in no pack the index lists" in str(error)
    assert f"{len(named)} files cannot be restored" in str(error)
    assert all(path in str(error) for path in named[:20])


def test_a_backup_after_a_pack_was_lost_stores_its_chunks_again(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """The index still lists the lost pack. A backup used to take its chunks as stored
    (unchanged files kept their old chunk lists; new ones deduplicated against it), saved
    a snapshot that could not be restored, and exited 0; `--force-read` did not help."""
    source, repo = made
    for pack in packs(repo):
        pack.unlink()
    (source / "new").write_bytes(b"something new")
    info = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert any("missing from storage" in w for w in info.warnings)
    dest = repo.parent / "again"
    restore_snapshot(str(repo), root_key, dest, info.snapshot_id)
    for name in os.listdir(source):
        assert (dest / name).read_bytes() == (source / name).read_bytes()
    opened = Repository.open(Storage(str(repo)), root_key)
    damaged = maintenance.check(opened, read_data=True).errors
    assert damaged and all(info.snapshot_id not in e for e in damaged)  # the old one only


def test_a_damaged_pack_moved_aside_as_check_says_is_stored_again(
    made: tuple[Path, Path], root_key: bytes, tmp_path: Path
) -> None:
    """`backup check`'s hint for a damaged pack, followed: move the pack it names out of
    data/, back up again, and the new snapshot restores."""
    source, repo = made
    pack = packs(repo)[0]
    flip(pack, pack_entries(repo, root_key, pack)[0].offset + 20)
    opened = Repository.open(Storage(str(repo)), root_key)
    errors = maintenance.check(opened, read_data=True).errors
    assert errors and all(e.startswith(f"pack {pack.name}") for e in errors)
    pack.rename(tmp_path / pack.name)
    info = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    dest = repo.parent / "again"
    restore_snapshot(str(repo), root_key, dest, info.snapshot_id)
    assert all((dest / n).read_bytes() == (source / n).read_bytes() for n in os.listdir(source))


def test_a_damaged_parent_never_stops_the_next_backup(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """One flipped byte in the newest snapshot's tree made every later backup of the
    source fail; `forget` could not remove it (every policy keeps the newest)."""
    source, repo = made
    (snap,) = (repo / "snapshots").iterdir()
    flip(snap, snap.stat().st_size - 1)
    info = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert info.parent_id is None and info.files_read == len(os.listdir(source))
    assert any(snap.name in w and "cannot be read" in w for w in info.warnings)
    restored = restore_snapshot(str(repo), root_key, repo.parent / "r")
    assert restored.backup_id == info.snapshot_id


def test_an_object_that_is_no_snapshot_is_left_out_and_can_be_removed(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """A stray object among the snapshots made list, restore of the latest, backup and
    prune fail with "bad magic", naming nothing."""
    _, repo = made
    (good,) = (repo / "snapshots").iterdir()
    stray = repo / "snapshots" / ("0123456789abcdef" * 2)
    stray.write_bytes(os.urandom(300))
    opened = Repository.open(Storage(str(repo)), root_key)
    assert [s.snapshot_id for s in maintenance.list_snapshots(opened)] == [good.name]
    assert list(opened.damaged) == [stray.name]
    restored = restore_snapshot(str(repo), root_key, repo.parent / "r")
    assert (restored.backup_id, list(restored.passed_over)) == (good.name, [stray.name])
    with pytest.raises(BackupVaultError, match=stray.name) as refused:
        maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert "forget --damaged" in str(refused.value)
    kept, removed, _ = maintenance.forget(
        Repository.open(Storage(str(repo)), root_key),
        maintenance.Policy(),
        dry_run=False,
        damaged=True,
    )
    assert (kept, removed) == ([good.name], [stray.name]) and not stray.exists()
    maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)


def test_swapped_packs(made: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = made
    first, second = packs(repo)[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    assert_restore_fails(repo, root_key, AuthenticationFailed)


def test_pack_duplicated_over_another(made: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = made
    first, second = packs(repo)[:2]
    second.write_bytes(first.read_bytes())
    assert_restore_fails(repo, root_key, AuthenticationFailed)


def test_chunk_duplicated_over_another(made: tuple[Path, Path], root_key: bytes) -> None:
    """Blob A copied over blob B of the same length, in place: B's id does not match."""
    _, repo = made
    for pack in packs(repo):
        entries = pack_entries(repo, root_key, pack)
        by_length: dict[int, list[PackEntry]] = {}
        for entry in entries:
            by_length.setdefault(entry.length, []).append(entry)
        pair = next((v for v in by_length.values() if len(v) >= 2), None)
        if pair is not None:
            break
    assert pair is not None
    data = bytearray(pack.read_bytes())
    a, b = pair[0], pair[1]
    data[b.offset : b.offset + b.length] = data[a.offset : a.offset + a.length]
    pack.write_bytes(bytes(data))
    assert_restore_fails(repo, root_key, AuthenticationFailed)


def test_truncated_pack(made: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = made
    pack = max(packs(repo), key=lambda p: p.stat().st_size)
    entries = pack_entries(repo, root_key, pack)
    last = max(entries, key=lambda e: e.offset)
    os.truncate(pack, last.offset + last.length - 1)
    assert_restore_fails(repo, root_key, AuthenticationFailed)


def test_an_extended_pack_is_not_called_truncated(made: tuple[Path, Path], root_key: bytes) -> None:
    """Bytes appended to a pack: `check --read-data` said it was truncated (storage review
    s42, F7)."""
    _, repo = made
    pack = max(packs(repo), key=lambda p: p.stat().st_size)
    with open(pack, "ab") as grown:
        grown.write(os.urandom(96) + b"\xff" * 4)  # no trailer fits
    opened = Repository.open(Storage(str(repo)), root_key)
    errors = maintenance.check(opened, read_data=True).errors
    assert [e for e in errors if pack.name in e and "bytes added" in e], errors


def test_missing_index(made: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = made
    for index in (repo / "index").iterdir():
        index.unlink()
    assert "in no pack the index lists" in str(
        assert_restore_fails(repo, root_key, AuthenticationFailed)
    )


def test_altered_index(made: tuple[Path, Path], root_key: bytes) -> None:
    """An index object that fails authentication is left out, not trusted: restore finds
    the chunks from the packs' own authenticated headers; check reports the index."""
    source, repo = made
    index = next((repo / "index").iterdir())
    flip(index, 40)
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)
    errors = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert [e for e in errors.errors if index.name in e and "cannot be read" in e]


@pytest.mark.parametrize("offset", [0, 9, 30, 60, 100, 150, -1])
def test_altered_snapshot(made: tuple[Path, Path], root_key: bytes, offset: int) -> None:
    _, repo = made
    snap = next((repo / "snapshots").iterdir())
    flip(snap, offset % snap.stat().st_size)
    assert_restore_fails(repo, root_key, BackupVaultError)


def test_snapshot_renamed_or_from_another_repository(
    made: tuple[Path, Path], root_key: bytes, tmp_path: Path
) -> None:
    source, repo = made
    snap = next((repo / "snapshots").iterdir())
    renamed = snap.with_name("0" * 32)
    snap.rename(renamed)
    assert "swapped" in str(assert_restore_fails(repo, root_key, AuthenticationFailed))
    renamed.unlink()
    # A snapshot sealed under the same RK, but in another repository.
    other = tmp_path / "other"
    create_snapshot(source, str(other), root_key, repo_params=SMALL)
    foreign = next((other / "snapshots").iterdir())
    (repo / "snapshots" / foreign.name).write_bytes(foreign.read_bytes())
    assert "another repository" in str(assert_restore_fails(repo, root_key))


def test_a_snapshot_sealed_under_another_key_is_damage_not_a_wrong_password(
    made: tuple[Path, Path], root_key: bytes, tmp_path: Path
) -> None:
    """Storage plants a snapshot of another key's repository (another account's, or its
    own) under its own name. The config opened with this key, and every snapshot of a
    repository is sealed under the key its config opens with, so this is damage (exit 9),
    not "wrong password or recovery code" (exit 3), which sent a user to try other
    passwords, each a guess the vault counts."""
    source, repo = made
    other = tmp_path / "other"
    create_snapshot(source, str(other), os.urandom(32), repo_params=SMALL)
    foreign = next((other / "snapshots").iterdir())
    (repo / "snapshots" / foreign.name).write_bytes(foreign.read_bytes())
    dest = tmp_path / "restored"
    with pytest.raises(Damaged) as caught:
        restore_snapshot(str(repo), root_key, dest, foreign.name)
    assert not isinstance(caught.value, WrongKey) and caught.value.exit_code == 9
    assert "another repository" in caught.value.message
    assert not dest.exists()
    # The latest passes over it, naming it.
    info = restore_snapshot(str(repo), root_key, dest)
    assert foreign.name in info.passed_over and snapshot(dest) == snapshot(source)


def _plant(repo: Path, root_key: bytes, entries: list[Entry]) -> None:
    """A snapshot with a chosen tree, sealed properly (as a holder of RK could)."""
    opened = Repository.open(Storage(str(repo)), root_key)
    summary = snapshots.Summary(snapshots.KIND_FOLDER, 1, 0, 0, 0, 0, 0, "/x", "h")
    for old in (repo / "snapshots").iterdir():
        old.unlink()
    snapshot_id, data = snapshots.seal(root_key, opened.keys.repo_id, None, summary, entries)
    (repo / "snapshots" / snapshot_id.hex()).write_bytes(data)


@pytest.mark.parametrize(
    "name", [b"../evil", b"/abs/evil", b"a/../../evil", b"a//b", b"./x", b"a/.", b""]
)
def test_tree_with_escaping_names_is_refused(
    made: tuple[Path, Path], root_key: bytes, name: bytes
) -> None:
    _, repo = made
    root = Entry(DIR, ROOT, 0o755, 0)
    _plant(repo, root_key, [root, Entry(FILE, name, 0o644, 0)])
    assert_restore_fails(repo, root_key, InvalidInput)
    assert not (repo.parent.parent / "evil").exists()


def test_tree_writing_through_a_link_fails_cleanly(
    made: tuple[Path, Path], root_key: bytes, tmp_path: Path
) -> None:
    _, repo = made
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [
        Entry(DIR, ROOT, 0o755, 0),
        Entry(SYMLINK, b"a", 0o777, 0, target=os.fsencode(outside)),
        Entry(FILE, b"a/f", 0o644, 0),
    ]
    _plant(repo, root_key, entries)
    assert_restore_fails(repo, root_key, check_finds_it=False)  # a tree its maker chose
    assert os.listdir(outside) == []


@pytest.mark.parametrize(
    "entries",
    [
        # "a" -> "." makes "a/a/.../pw" the restore folder's own "pw", and its target,
        # counted from its named parent, seemed to stay inside while it led to /etc.
        [
            Entry(SYMLINK, b"a", 0o777, 0, target=b"."),
            Entry(SYMLINK, b"a/a/a/a/pw", 0o777, 0, target=b"../../../../etc/passwd"),
        ],
        # "a/out" is really "./out" -> "../victim": "out/planted" is made in victim.
        [
            Entry(SYMLINK, b"a", 0o777, 0, target=b"."),
            Entry(SYMLINK, b"a/out", 0o777, 0, target=b"../victim"),
            Entry(SYMLINK, b"out/planted", 0o777, 0, target=b"anything"),
        ],
        # a folder named after what is inside it
        [Entry(FILE, b"d/f", 0o644, 0), Entry(DIR, b"d", 0o755, 0)],
        # inside a file
        [Entry(FILE, b"f", 0o644, 0), Entry(FILE, b"f/g", 0o644, 0)],
    ],
    ids=["link to itself as a folder", "link made through a link", "child first", "in a file"],
)
def test_a_tree_naming_anything_inside_what_is_not_an_earlier_folder_is_refused(
    made: tuple[Path, Path], root_key: bytes, entries: list[Entry]
) -> None:
    _, repo = made
    victim = repo.parent / "victim"
    victim.mkdir()
    _plant(repo, root_key, [Entry(DIR, ROOT, 0o755, 0), *entries])
    assert_restore_fails(repo, root_key, InvalidInput)
    assert os.listdir(victim) == []


def test_damage_after_partial_write_leaves_nothing(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """The last pack restore reads is bad: earlier files were already written to the
    staging folder, and all of it is removed."""
    _, repo = made
    for pack in packs(repo)[-2:]:
        entry = pack_entries(repo, root_key, pack)[-1]
        flip(pack, entry.offset + 20)
    assert_restore_fails(repo, root_key, AuthenticationFailed)


@pytest.mark.parametrize("planted", ["a link", "a folder of another user"])
def test_a_staging_folder_swapped_as_it_is_made_is_not_written_into(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Someone who may write in the destination's parent (a shared folder, not sticky)
    replaces the hidden staging folder the moment it is made: with a link to a folder of
    the user's, the restore gave that folder mode 0700 and wrote the files into it; with
    a folder of their own, it wrote them where that user reads them. Refused, and
    neither is touched."""
    _, repo = made
    elsewhere = repo.parent / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    real_mkdir = Path.mkdir

    def mkdir_then_swapped(self: Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(self, *args, **kwargs)
        if self.name.endswith(".restoring"):
            self.rmdir()
            if planted == "a link":
                self.symlink_to(elsewhere)
            else:
                real_mkdir(self, mode=0o777)
                os.chown(self, 65534, 65534)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_swapped)
    dest = repo.parent / "restored"
    with pytest.raises(BackupVaultError, match="staging"):
        restore_snapshot(str(repo), root_key, dest)
    monkeypatch.undo()
    assert not dest.exists() and not os.path.lexists(dest)
    assert list(elsewhere.iterdir()) == [] and elsewhere.stat().st_mode & 0o777 == 0o755
    [swapped] = [p for p in repo.parent.iterdir() if p.name.endswith(".restoring")]
    assert os.listdir(swapped) == []  # the other user's folder: nothing written in it


# ---- objects larger than any this program writes ---------------------------------------

_HUGE = 64 << 20  # a sparse file: storage pays nothing for it


def _largest_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of every object or range read from storage, recorded from now on."""
    reads: list[int] = []
    original = Backend.get

    def get(self: Backend, name: str, *args: Any, **kwargs: Any) -> bytes:
        data = original(self, name, *args, **kwargs)
        reads.append(len(data))
        return data

    monkeypatch.setattr(Backend, "get", get)
    return reads


def _sparse(path: Path, size: int = _HUGE, start: bytes = b"") -> None:
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(start)
        handle.truncate(size)


def test_a_huge_object_planted_among_the_packs_is_not_read_by_every_backup(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup adopts packs no index names, reading each whole: a file planted in data/
    (a sparse one costs storage nothing) was read into memory by every backup, all of it
    (a few GiB: the backup was killed for want of memory). A pack is never larger than the
    config's pack_size, chunk_max and a header allow; a larger object is left alone."""
    source, repo = made
    planted = repo / "data" / ("ab" * 16)
    _sparse(planted)
    reads = _largest_reads(monkeypatch)
    info = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert max(reads, default=0) < 1 << 20
    monkeypatch.undo()
    restore_snapshot(str(repo), root_key, repo.parent / "out", info.snapshot_id)
    assert snapshot(repo.parent / "out") == snapshot(source)
    old = planted.stat().st_mtime - 2 * maintenance.UNINDEXED_PACK_MIN_AGE_S
    os.utime(planted, (old, old))
    maintenance.prune(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert not planted.exists()  # no pack of this repository: removed as garbage


def test_check_reads_no_more_of_a_pack_than_a_pack_can_hold(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, repo = made
    pack = packs(repo)[0]
    os.truncate(pack, _HUGE)
    reads = _largest_reads(monkeypatch)
    errors = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert max(reads, default=0) < 1 << 20
    assert [e for e in errors.errors if pack.name in e and "larger than any" in e]


def test_a_huge_config_lock_or_forget_record_is_not_read_whole(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each is read whole, and is at most a few hundred bytes long when this program
    writes it: one of 64 MiB was read into memory, all of it."""
    source, repo = made
    first = next((repo / "snapshots").iterdir()).name
    second = create_snapshot(source, str(repo), root_key, repo_params=SMALL).snapshot_id
    (repo / "snapshots" / first).unlink()  # the parent gone: its forget record is read
    _sparse(repo / "forgotten" / first)
    reads = _largest_reads(monkeypatch)
    result = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=False)
    assert [e for e in result.errors if "forget record" in e or first in e]
    assert max(reads, default=0) < 1 << 20 and second

    reads.clear()
    lock = repo / "locks" / ("cd" * 16)
    _sparse(lock)
    with pytest.raises(BackupVaultError, match=lock.name):
        create_snapshot(source, str(repo), root_key)
    assert max(reads, default=0) < 1 << 20
    lock.unlink()

    reads.clear()
    config = repo / "config"
    _sparse(config, start=config.read_bytes())
    with pytest.raises(InvalidInput, match="config"):
        restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert max(reads, default=0) < 1 << 20


def test_a_snapshot_declaring_a_huge_summary_or_grown_huge_is_not_read_whole(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing reads a snapshot's header and summary, whose length is in the clear: a
    length of 4 GiB had that much read. A restore reads the chosen snapshot whole: it is
    read no further than the largest tree a reader takes (patched down here)."""
    _, repo = made
    (good,) = (repo / "snapshots").iterdir()
    data = bytearray(good.read_bytes())
    data[snapshots.HEADER_LEN : snapshots.HEADER_LEN + 4] = b"\xff" * 4
    declaring = repo / "snapshots" / ("ef" * 16)
    data[9:25] = bytes.fromhex(declaring.name)
    _sparse(declaring, start=bytes(data))
    reads = _largest_reads(monkeypatch)
    opened = Repository.open(Storage(str(repo)), root_key)
    assert [s.snapshot_id for s in maintenance.list_snapshots(opened)] == [good.name]
    assert declaring.name in opened.damaged and max(reads, default=0) < 1 << 20
    declaring.unlink()

    reads.clear()
    monkeypatch.setattr(snapshots, "MAX_LEN", 1 << 20, raising=False)
    os.truncate(good, _HUGE)  # still lists: the header and summary are intact
    with pytest.raises(BackupVaultError):
        restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert max(reads, default=0) <= 1 << 20


@pytest.mark.parametrize("planted", [b"", b"ab", b"\xff\xff\xff\xff"])
def test_a_damaged_index_and_a_tiny_object_among_the_packs_still_restore(
    made: tuple[Path, Path], root_key: bytes, planted: bytes
) -> None:
    """With an index object that does not open, restore, check and prune read the packs'
    own headers from their ends: an object of under 4 bytes in data/ made them fail
    ("cannot read": a seek before its start), and one whose last 4 bytes claim a header
    longer than it is was taken as a pack."""
    source, repo = made
    flip(next((repo / "index").iterdir()), 40)
    (repo / "data" / ("ab" * 16)).write_bytes(planted)
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)
    result = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert [e for e in result.errors if "index" in e]  # the damaged index, nothing else


def test_a_listing_that_lies_about_a_packs_size_gives_a_clear_error(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote storage lists sizes as it likes: with a damaged index, a pack listed longer
    than it is gave a short trailer read, and a raw struct.error; listed as a terabyte, a
    buffer of zeros that size was made before anything was checked."""
    _, repo = made
    flip(next((repo / "index").iterdir()), 40)
    listed = Backend.list

    def lying(self: Backend, folder: str) -> dict[str, int]:
        found = listed(self, folder)
        if folder == "data":
            first, second, *_ = sorted(found)
            found[first] += 2
            found[second] = 1 << 40
        return found

    monkeypatch.setattr(Backend, "list", lying)
    reads = _largest_reads(monkeypatch)
    with pytest.raises(AuthenticationFailed, match="in no pack the index lists"):
        restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert max(reads, default=0) < 1 << 20


def test_a_fifo_or_device_put_under_an_objects_name_is_refused_not_waited_on(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """Storage that is a shared folder may hold a FIFO where the config is: every command
    hung in its open (a cron job for ever), and a link to /dev/zero was read without end
    where an object is read whole."""
    source, repo = made
    config = repo / "config"
    config.rename(repo.parent / "config.real")
    os.mkfifo(config)
    outcome: list[BaseException | None] = []

    def backup() -> None:
        try:
            create_snapshot(source, str(repo), root_key)
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=backup, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # let the open go on: a writer to the FIFO ends its wait
        os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(20)
        pytest.fail("the backup waited on the FIFO")
    assert isinstance(outcome[0], InvalidInput) and "config" in str(outcome[0])
    config.unlink()
    (repo.parent / "config.real").rename(config)

    first = next((repo / "snapshots").iterdir()).name
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    (repo / "snapshots" / first).unlink()  # the parent is gone: its forget record is read
    (repo / "forgotten").mkdir(exist_ok=True)
    (repo / "forgotten" / first).symlink_to("/dev/zero")
    result = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=False)
    assert [e for e in result.errors if "not a file" in e]


# ---- index objects: written in parts of a bounded size, read no further ------------------


_TARGET = "backupvault.backup.repo.index.INDEX_BODY_TARGET"


def _opened(repo: Path, root_key: bytes) -> Repository:
    return Repository.open(Storage(str(repo)), root_key)


def _index_objects(repo: Path, root_key: bytes) -> dict[str, IndexFile]:
    keys = _opened(repo, root_key).keys
    return {
        p.name: IndexFile.open(keys.index, bytes.fromhex(p.name), p.read_bytes())
        for p in (repo / "index").iterdir()
    }


def test_a_huge_index_object_is_read_no_further_than_any_index_and_is_damage(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index objects were read whole, with no limit, by every command: a sparse file of
    a few GiB planted in index/ (which costs storage nothing) was read into memory by
    each. It is read no further than the largest index object a writer makes, left out
    as damaged (check reports it), and the repository still restores; prune replaces it."""
    source, repo = made
    planted = repo / "index" / ("ab" * 16)
    with open(planted, "wb") as handle:
        handle.truncate(64 << 20)
    most = max_index_len(_opened(repo, root_key).config)
    assert most < 64 << 20
    reads = _largest_reads(monkeypatch)
    result = maintenance.check(_opened(repo, root_key), read_data=True)
    assert max(reads) <= most + 1
    assert [e for e in result.errors if planted.name in e and "larger than any" in e]
    reads.clear()
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert max(reads) <= most + 1
    assert snapshot(repo.parent / "out") == snapshot(source)
    reads.clear()
    create_snapshot(source, str(repo), root_key)
    assert max(reads) <= most + 1
    monkeypatch.undo()
    maintenance.prune(_opened(repo, root_key), dry_run=False)
    assert not planted.exists()
    assert maintenance.check(_opened(repo, root_key), read_data=True).errors == []


def test_writers_split_the_index_into_objects_of_at_most_the_documented_size(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup wrote one index object for all its packs, and prune and repair one for
    every pack of the repository: its size had no bound, so no read of one could have
    one. With the target patched down, each writer splits (superseded ids after every
    pack record) and every object stays within `max_index_len`."""
    source, repo = made
    for p in (repo / "index").iterdir():
        p.unlink()  # the fixture's, written with the usual target: made again below
    (repo / "snapshots" / next((repo / "snapshots").iterdir()).name).unlink()
    monkeypatch.setattr(_TARGET, 600)
    config = _opened(repo, root_key).config
    most = max_index_len(config)
    (source / "more").write_bytes(os.urandom(30_000))
    create_snapshot(source, str(repo), root_key)
    written = _index_objects(repo, root_key)
    assert len(written) > 3
    assert all((repo / "index" / n).stat().st_size <= most for n in written)

    maintenance.prune(_opened(repo, root_key), dry_run=False)
    after = _index_objects(repo, root_key)
    assert not set(after) & set(written)  # every earlier object superseded and deleted
    assert len(after) > 3
    assert all((repo / "index" / n).stat().st_size <= most for n in after)
    listing = [f for f in after.values() if f.packs]
    superseding = [f for f in after.values() if f.supersedes]
    assert superseding and sum(bool(f.packs) for f in superseding) <= 1
    assert {s.hex() for f in superseding for s in f.supersedes} == set(written)
    assert sum(len(f.packs) for f in listing) == len(list((repo / "data").iterdir()))
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)


def test_a_prune_interrupted_between_its_index_objects_loses_nothing(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects naming what they supersede are written last: a prune stopped after some
    of its new objects leaves the old ones live beside them."""
    source, repo = made
    monkeypatch.setattr(_TARGET, 600)
    original = Backend.put
    puts: list[str] = []

    def failing(self: Backend, name: str, *args: Any, **kwargs: Any) -> None:
        if name.startswith("index/"):
            puts.append(name)
            if len(puts) == 3:
                raise OSError("storage went away")
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(Backend, "put", failing)
    with pytest.raises(OSError):
        maintenance.prune(_opened(repo, root_key), dry_run=False)
    monkeypatch.setattr(Backend, "put", original)
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)
    assert maintenance.check(_opened(repo, root_key), read_data=True).errors == []


@pytest.mark.parametrize("count", ["superseded", "packs", "entries"])
def test_an_index_object_declaring_huge_counts_is_refused_before_any_allocation(
    count: str,
) -> None:
    """Sealed by a writer holding the index key (a compromised device): a count of 2^32 - 1
    superseded ids in a short object was read one id at a time, an empty one each time
    the data was out, 4 billion times, before the object was found truncated."""
    huge = (1 << 32) - 1
    body = {
        "superseded": huge.to_bytes(4, "big") + b"\0" * 4,
        "packs": bytes(4) + huge.to_bytes(4, "big"),
        "entries": bytes(4) + (1).to_bytes(4, "big") + b"p" * 16 + huge.to_bytes(4, "big"),
    }[count]
    key, index_id = b"k" * 32, b"i" * 16
    sealed = seal_object(key, INDEX_AAD + index_id, body)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="truncated"):
        IndexFile.open(key, index_id, sealed)
    assert time.monotonic() - started < 1


def test_split_index_bounds_every_object() -> None:
    """Each object's body is at most the target after its two counts, or one pack record
    alone when that is larger; superseded ids only after every pack record."""
    entry = PackEntry(b"c" * 32, 0, 30, 1)
    packs = {bytes([i]) * 16: [entry] * (5 if i not in (7, 19) else 400) for i in range(20)}
    old = [bytes([i]) * 16 for i in range(100)]
    assert len(split_index(packs, old)) == 1  # all of it fits in one
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_TARGET, 1000)
        parts = split_index(packs, old)
        bodies = [len(p.seal(b"k" * 32, b"i" * 16)) - 28 - 8 for p in parts]
        record = 20 + 44 * 400
        assert all(b <= 1000 or b == record for b in bodies)
        assert record in bodies
        first_superseding = next(n for n, p in enumerate(parts) if p.supersedes)
        assert all(not p.packs for p in parts[first_superseding + 1 :])
        assert all(not p.supersedes for p in parts[:first_superseding])
        assert [s for p in parts for s in p.supersedes] == old
        assert {k: v for p in parts for k, v in p.packs.items()} == packs


# ---- hostile listings -------------------------------------------------------------------


class _HostileListing:
    """An fsspec file system over a local folder whose listings also hold what a hostile
    server may send: names that are no object id, each real entry twice, entries without
    a name or with a size that is no byte count, a folder, and things that are no entry."""

    def __init__(self, bogus: int = 0) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.local = LocalFileSystem()
        self.bogus = bogus

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def ls(self, path: str, detail: bool = True) -> list[Any]:
        real = self.local.ls(path, detail=True)
        planted: list[Any] = [
            {"name": f"{path}/{'AB' * 16}", "type": "file", "size": 1},
            {"name": f"{path}/../../etc/passwd", "type": "file", "size": 1},
            {"name": f"{path}/\x1b[31m{'ab' * 15}", "type": "file", "size": 1},
            {"name": f"{path}/{'cd' * 16}", "type": "file", "size": "lots"},
            {"name": f"{path}/{'ef' * 16}", "type": "file", "size": -5},
            {"name": f"{path}/{'12' * 16}", "type": "directory", "size": 0},
            {"type": "file", "size": 3},
            {"name": 7, "type": "file"},
            "not an entry",
            None,
        ]
        planted += ({"name": f"{path}/x{n:031x}", "type": "file"} for n in range(self.bogus))
        return [*real, *real, *planted]


def _hostile(monkeypatch: pytest.MonkeyPatch, repo: Path, fs: _HostileListing) -> None:
    """Every Storage opened from now on reaches `repo` through `fs` (as remote storage)."""
    monkeypatch.setattr(Storage, "_connect", lambda self, url, options: (fs, str(repo)))


def test_a_hostile_listing_is_ignored_with_one_warning_and_never_crashes(
    made: tuple[Path, Path],
    root_key: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listing entry without a name raised KeyError, one whose size was no number
    ValueError (every command, on any remote storage); names that are no object id are
    left out, a name listed twice counts once, and each folder's strays are warned of
    once (escaped: a name may hold terminal escapes)."""
    source, repo = made
    _hostile(monkeypatch, repo, _HostileListing())
    caplog.set_level("WARNING", "backupvault.backup")
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)
    info = create_snapshot(source, str(repo), root_key)
    assert info.snapshot_id
    caplog.clear()
    result = maintenance.check(_opened(repo, root_key), read_data=True)
    assert result.errors == []
    warned = [r.getMessage() for r in caplog.records if "no object of this" in r.getMessage()]
    assert all("\x1b" not in m and "\\x1b" in m for m in warned)
    # once per folder and command, not at every listing of it (locks are listed often)
    assert sorted(m.split()[0] for m in warned) == ["data", "index", "locks", "snapshots"]
    assert all("9 name(s)" in m for m in warned)
    assert maintenance.list_snapshots(_opened(repo, root_key))[-1].snapshot_id == (info.snapshot_id)
    maintenance.prune(_opened(repo, root_key), dry_run=False)
    restore_snapshot(str(repo), root_key, repo.parent / "again", info.snapshot_id)
    assert snapshot(repo.parent / "again") == snapshot(source)


def test_a_folder_of_names_that_are_no_ids_costs_no_memory_per_name(
    made: tuple[Path, Path], root_key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A local folder's listing kept every file's name and size, then picked the ids: a
    folder of bogus names (a file costs storage an inode) took memory for each."""
    import tracemalloc

    _, repo = made
    folder = repo / "locks"
    folder.mkdir(exist_ok=True)
    for n in range(20_000):
        (folder / f"no-lock-{n:07}").touch()
    backend = _opened(repo, root_key).backend
    tracemalloc.start()
    try:
        listed = backend.list("locks")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert listed == {}
    assert peak < 200_000
    assert any("20000 name(s)" in r.getMessage() for r in caplog.records)


def test_a_single_blob_listing_naming_a_backup_twice_finds_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restore --id` with the full id of a backup storage lists twice said the id
    "matches 2 backups"; an entry with no name or an odd size raised a raw error."""
    name = f"backup-20250101T000000.000000Z-{'ab' * 16}.bvb"
    entries: list[Any] = [
        {"name": f"/b/{name}", "type": "file", "size": 10},
        {"name": f"/b/{name}", "type": "file", "size": 10},
        {"name": f"/b/.{name}.{'0' * 16}.partial", "type": "file", "size": "x"},
        {"type": "file"},
        "junk",
    ]
    storage = Storage(str(tmp_path))
    monkeypatch.setattr(storage, "_entries", lambda missing_ok: entries)
    assert [b.name for b in storage.list()] == [name]
    assert storage.find("ab" * 16).name == name
    assert [p.size for p in storage.partials()] == [None]


@pytest.mark.parametrize(
    "mtime",
    [float("nan"), float("inf"), 10**400, -1e308, 1e300],
    ids=["nan", "inf", "huge", "huge-finite-past", "huge-finite-future"],
)
def test_a_listing_time_that_is_no_time_never_crashes_the_lock_check(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch, mtime: object
) -> None:
    """An object in locks/ that does not open counts as a lock written when storage says:
    a listed time of NaN raised ValueError (inf, or an integer past a float, Overflow)
    in every command that takes a lock. A time that is no time counts as none."""
    source, repo = made
    planted = "9a" * 16
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks" / planted).write_bytes(os.urandom(80))
    fs = _HostileListing()
    listing = fs.ls

    def timed(path: str, detail: bool = True) -> list[Any]:
        # The planted object's time only: beside the backup's own lock, listed as it was
        # written, a huge finite one made an age that overflowed (review s47, F3).
        return [
            {**e, "mtime": mtime}
            if isinstance(e, dict) and str(e.get("name", "")).endswith(planted)
            else e
            for e in listing(path)
        ]

    monkeypatch.setattr(fs, "ls", timed)
    _hostile(monkeypatch, repo, fs)
    with pytest.raises(RepositoryLocked, match="does not open as a lock"):
        create_snapshot(source, str(repo), root_key)


def test_an_object_planted_among_the_packs_is_not_read_whole_by_every_backup(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup adopts packs no index names: each was read whole (up to max_pack_len,
    52 MB at the default sizes) before anything of it was checked, so objects planted
    under pack names cost that much reading each, at every backup. Their sealed header
    is read first, from the end (two small reads)."""
    source, repo = made
    planted = repo / "data" / ("5e" * 16)
    with open(planted, "wb") as handle:
        handle.truncate(max_pack_len(_opened(repo, root_key).config) - 1)
    read: list[int] = []
    original = Backend.get

    def get(self: Backend, name: str, *args: Any, **kwargs: Any) -> bytes:
        data = original(self, name, *args, **kwargs)
        if name.endswith(planted.name):
            read.append(len(data))
        return data

    monkeypatch.setattr(Backend, "get", get)
    create_snapshot(source, str(repo), root_key)
    assert 0 < sum(read) <= 64


def test_an_object_planted_among_the_snapshots_is_not_read_whole(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check, prune and repair read every snapshot whole (prune on 8 threads at once),
    up to the largest tree a reader takes (2 GiB): an object planted under a snapshot's
    name was read that far before anything of it was checked. Its header and summary
    are authenticated first (a small read)."""
    _, repo = made
    planted = repo / "snapshots" / ("7c" * 16)
    with open(planted, "wb") as handle:
        handle.truncate(64 << 20)
    reads = _largest_reads(monkeypatch)
    result = maintenance.check(_opened(repo, root_key), read_data=False)
    assert [e for e in result.errors if planted.name in e]
    with pytest.raises(BackupVaultError, match=planted.name):
        maintenance.prune(_opened(repo, root_key), dry_run=False)
    maintenance.repair(_opened(repo, root_key), dry_run=True)
    assert max(reads) < 1 << 20


def test_storage_that_ignores_byte_ranges_is_named_not_taken_for_damage(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that ignores a read's range sends the object from its start: restore
    took those bytes for the range's, and said the pack was truncated (or, naming the
    files, that chunks were damaged) while `check --read-data` found nothing wrong."""
    _, repo = made
    opened = _opened(repo, root_key)
    located = opened.load_index()[0].chunks
    files = opened.find_snapshot(None).entries or []
    inside = next(e for e in files if e.kind == FILE and located[e.chunks[0]].offset > 0)
    fs = _HostileListing()
    whole = fs.local.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda path, start=None, end=None: whole(path))
    _hostile(monkeypatch, repo, fs)
    dest = repo.parent / "out"
    with pytest.raises(StorageError, match="for a range of") as caught:
        restore_snapshot(str(repo), root_key, dest, include=(inside.path.decode(),))
    assert "byte ranges" in (caught.value.hint or "")
    assert not dest.exists()


def test_an_index_object_listed_larger_than_any_is_not_read_and_one_listed_small_is_bounded(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index object storage lists larger than any is damage without a read (as a pack
    listed so is); one it lists small but holds large is read no further than any."""
    _, repo = made
    planted = repo / "index" / ("3b" * 16)
    with open(planted, "wb") as handle:
        handle.truncate(64 << 20)
    most = max_index_len(_opened(repo, root_key).config)
    read: list[int | None] = []  # the `most` of each read of it
    original = Backend.get

    def get(self: Backend, name: str, *args: Any, **kwargs: Any) -> bytes:
        if name.endswith(planted.name):
            read.append(kwargs.get("most"))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Backend, "get", get)
    opened = _opened(repo, root_key)
    opened.index_files()
    assert read == [] and "larger than any" in opened.damaged_indexes[planted.name]
    assert "backup repair" in opened.damaged_indexes[planted.name]  # an older version's?

    listed = Backend.list

    def lying(self: Backend, folder: str) -> dict[str, int]:
        return {n: 100 for n in listed(self, folder)} if folder == "index" else listed(self, folder)

    monkeypatch.setattr(Backend, "list", lying)
    opened = _opened(repo, root_key)
    opened.index_files()
    assert read == [most] and "backup repair" in opened.damaged_indexes[planted.name]


@pytest.mark.parametrize("folder", ["data", "index", "locks"])
def test_a_repository_folder_that_is_a_link_elsewhere_is_refused_not_cleaned(
    made: tuple[Path, Path], root_key: bytes, tmp_path: Path, folder: str
) -> None:
    """A shared folder (NFS, SMB) may hold a symbolic link where `data/` should be, to
    another repository of the same key on this machine: prune took that one's packs for
    this one's unindexed ones and deleted them (and repair, failing their headers, too).
    A repository's folders are never links: one is refused before anything is listed or
    deleted."""
    source, repo = made
    other = tmp_path / "other"
    create_snapshot(source, str(other), root_key, repo_params=SMALL)
    for pack in (other / "data").iterdir():
        old = pack.stat().st_mtime - 2 * maintenance.UNINDEXED_PACK_MIN_AGE_S
        os.utime(pack, (old, old))
    before = {p.name for p in (other / folder).iterdir()}
    for p in (repo / folder).iterdir():
        p.unlink()
    (repo / folder).rmdir()
    (repo / folder).symlink_to(other / folder)
    with pytest.raises(InvalidInput, match="symbolic link"):
        maintenance.prune(_opened(repo, root_key), dry_run=False)
    with pytest.raises(InvalidInput, match="symbolic link"):
        maintenance.repair(_opened(repo, root_key), dry_run=False)
    assert {p.name for p in (other / folder).iterdir()} == before
    restore_snapshot(str(other), root_key, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_check_looks_each_parent_up_in_the_listing_once_not_through_it(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check looked each snapshot's parent up in a list of every name storage listed: a
    listing of a million names made it take each snapshot times a million steps."""
    from types import SimpleNamespace

    _, repo = made
    compared = 0

    class Name(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    names = [Name(f"{n:032x}") for n in range(2000)]
    monkeypatch.setattr(Repository, "snapshot_names", lambda self: dict.fromkeys(names, 1))

    def fake(self: Repository, name: str, *, with_tree: bool = True) -> object:
        parent = bytes.fromhex(names[-1])  # the last a list scan would reach
        return SimpleNamespace(header=SimpleNamespace(parent=parent), entries=[])

    monkeypatch.setattr(Repository, "read_snapshot", fake)
    result = maintenance.check(_opened(repo, root_key), read_data=False)
    assert result.snapshots == len(names)
    assert compared < 10 * len(names)


def test_repair_replaces_an_index_object_larger_than_any(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """An index object longer than `max_index_len` (planted, or one an earlier version
    wrote for a large repository) is damage that `backup repair` fixes: it writes the
    index in parts, superseding it, and deletes it."""
    source, repo = made
    planted = repo / "index" / ("4d" * 16)
    with open(planted, "wb") as handle:
        handle.truncate(max_index_len(_opened(repo, root_key).config) + 1)
    assert [e for e in maintenance.check(_opened(repo, root_key), read_data=False).errors]
    result = maintenance.repair(_opened(repo, root_key), dry_run=False)
    assert [d for d in result.damage if planted.name in d] and not planted.exists()
    assert maintenance.check(_opened(repo, root_key), read_data=True).errors == []
    restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert snapshot(repo.parent / "out") == snapshot(source)


def test_index_objects_are_read_a_few_at_a_time_when_each_may_be_large(
    made: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index objects were read 8 at a time whatever their bound: with 1 GiB packs an
    index object may be 1.6 GB, so objects planted that large held 13 GB at once."""
    from backupvault.backup.repo import repository

    _, repo = made
    for n in range(6):
        (repo / "index" / f"{n:032x}").write_bytes(os.urandom(100))
    monkeypatch.setattr(repository, "max_index_len", lambda config: 200 << 20)
    running = 0
    most = 0
    lock = threading.Lock()
    original = Repository._read_index

    def counted(self: Repository, name: str) -> object:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.02)
            return original(self, name)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(Repository, "_read_index", counted)
    _opened(repo, root_key).index_files()
    assert most == 1


def test_a_folder_of_the_repository_made_a_file_is_said_in_the_systems_words(
    made: tuple[Path, Path], root_key: bytes
) -> None:
    """`data` replaced by a file: the error named Python's NotADirectoryError (storage
    review s42, F7); it now gives the system's words, and restore writes nothing."""
    _, repo = made
    shutil.rmtree(repo / "data")
    (repo / "data").write_text("not a folder")
    error = assert_restore_fails(repo, root_key, StorageError, check_finds_it=False)
    assert "Not a directory" in str(error) and "NotADirectoryError" not in str(error)


@pytest.mark.parametrize("folder", ["data", "locks"])
def test_a_repository_folder_swapped_for_a_link_after_the_first_write_is_not_written_through(
    tmp_path: Path, folder: str
) -> None:
    """Review s47, F4: the check that a repository folder is no link ran once per run, at
    its first write; a link put in its place afterwards (on a shared folder, by whoever
    else writes there) had every later object of the run written through it, into the
    folder it led to. Each write now goes through a descriptor of the folder opened
    without following a link."""
    backend = Backend(Storage(str(tmp_path / "repo")))
    backend.put(f"{folder}/{'01' * 16}", b"first")
    victim = tmp_path / "victim"
    victim.mkdir()
    moved = tmp_path / "moved"
    (tmp_path / "repo" / folder).rename(moved)
    (tmp_path / "repo" / folder).symlink_to(victim)
    with pytest.raises(InvalidInput, match="symbolic link"):
        backend.put(f"{folder}/{'02' * 16}", b"second")
    with pytest.raises(InvalidInput, match="symbolic link"):
        backend.put_new(f"{folder}/{'03' * 16}", b"third")
    with pytest.raises(InvalidInput, match="symbolic link"):
        backend.sync_folder(folder)
    assert os.listdir(victim) == []
    assert os.listdir(moved) == ["01" * 16]


@pytest.mark.parametrize("offset", [41, 56])  # the first and last byte of its key check
def test_a_config_whose_key_check_was_altered_is_damage_not_another_key(
    made: tuple[Path, Path], root_key: bytes, offset: int
) -> None:
    """The key check is in the wrapped RMK's associated data: with it put back, RMK opens
    under this key, so the config is this key's, altered (exit 9). It was "made with
    another one" (WrongKey, exit 3): a user was sent after other passwords and codes."""
    _, repo = made
    config = repo / "config"
    data = bytearray(config.read_bytes())
    data[offset] ^= 0x01
    config.write_bytes(bytes(data))
    with pytest.raises(Damaged, match="key check was altered"):
        Repository.open(Storage(str(repo)), root_key)
    with pytest.raises(WrongKey):  # another key is still told as such
        Repository.open(Storage(str(repo)), os.urandom(32))
