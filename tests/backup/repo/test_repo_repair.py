"""`backup repair`: the chunks of a damaged, cut-off or missing pack that still
authenticate stay (copied into new packs), the others leave the index, so the next
backup stores them again for every file still in its source; a dry run, or a repair of a
repository that is whole, changes nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from backup_trees import RecordingProgress, flip_chunk_byte, pack_files, snapshot

from backupvault.backup.errors import StorageError
from backupvault.backup.repo import create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import Backend
from backupvault.backup.repo.index import PackEntry
from backupvault.backup.repo.maintenance import RepairResult
from backupvault.backup.repo.repository import Repository
from backupvault.errors import BackupVaultError, UsageError


def _open(repo: Path, root_key: bytes) -> Repository:
    return maintenance.open_repository(str(repo), root_key)


def _repair(
    repo: Path,
    root_key: bytes,
    *,
    dry_run: bool = False,
    packs: tuple[str, ...] = (),
    progress: RecordingProgress | None = None,
) -> RepairResult:
    opened = _open(repo, root_key)
    return maintenance.repair(opened, dry_run=dry_run, packs=packs, progress=progress)


def _entries(repo: Path, root_key: bytes, pack: Path) -> list[PackEntry]:
    return _open(repo, root_key).read_pack_header(pack.name, pack.stat().st_size)


def _pack_of(repo: Path, root_key: bytes, chunk_id: bytes) -> Path:
    return next(
        p
        for p in pack_files(repo)
        if any(e.chunk_id == chunk_id for e in _entries(repo, root_key, p))
    )


def _stored(repo: Path) -> dict[str, bytes]:
    """Every object of the repository, by path: to see that nothing changed."""
    return {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def _files(source: Path) -> list[str]:
    return sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())


def _restores(
    repo: Path, root_key: bytes, source: Path, snapshot_id: str, paths: list[str]
) -> None:
    """`paths` of the snapshot restore, each as it is in `source`."""
    out = repo.parent / f"out-{snapshot_id[:8]}-{len(paths)}"
    restore_snapshot(str(repo), root_key, out, snapshot_id, include=tuple(paths))
    assert _files(out) == sorted(paths)
    for path in paths:
        assert (out / path).read_bytes() == (source / path).read_bytes(), path
    shutil.rmtree(out)


def _next_backup_restores_whole(repo: Path, root_key: bytes, source: Path) -> None:
    """A backup after the repair stores again what was lost: its snapshot restores every
    file (its files are those in `source`, with their content, modes and times). The
    chunks stored again are those the older snapshots name (`source` has not changed):
    they are whole again too."""
    made = create_snapshot(source, str(repo), root_key)
    out = repo.parent / "whole"
    restore_snapshot(str(repo), root_key, out, made.snapshot_id)
    assert snapshot(out) == snapshot(source)
    shutil.rmtree(out)
    checked = maintenance.check(_open(repo, root_key), read_data=True)
    assert (checked.errors, checked.damaged_files) == ([], [])


def test_a_flipped_byte_loses_that_chunk_alone_and_the_next_backup_stores_it_again(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    source, repo = many_packs
    first = _open(repo, root_key).find_snapshot(None).id_hex
    damaged = flip_chunk_byte(repo, root_key, "a/f03")
    pack = _pack_of(repo, root_key, damaged)
    others = [e for e in _entries(repo, root_key, pack) if e.chunk_id != damaged]
    assert len(others) >= 5  # a pack of many chunks, all good but one

    done = _repair(repo, root_key)
    assert done.packs_damaged == [pack.name] and not pack.exists()
    assert done.chunks_lost == [damaged.hex()]
    assert done.chunks_salvaged == len(others) and done.packs_written >= 1
    assert len(done.damage) == 1 and pack.name in done.damage[0]
    assert [(d.snapshot_id, d.paths) for d in done.damaged_files] == [(first, ["a/f03"])]
    # The older snapshot restores every other file; check names only the one lost.
    _restores(repo, root_key, source, first, [f for f in _files(source) if f != "a/f03"])
    checked = maintenance.check(_open(repo, root_key), read_data=True)
    assert checked.errors == [f"snapshot {first} uses 1 chunk in no index"]
    assert [d.paths for d in checked.damaged_files] == [["a/f03"]]

    _next_backup_restores_whole(repo, root_key, source)
    _restores(repo, root_key, source, first, _files(source))
    # Done: a second repair finds nothing to do.
    again = _repair(repo, root_key)
    assert (again.packs_damaged, again.chunks_lost, again.packs_written) == ([], [], 0)


def test_a_cut_off_pack_keeps_the_chunks_before_the_cut(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    source, repo = many_packs
    first = _open(repo, root_key).find_snapshot(None).id_hex
    pack = pack_files(repo)[0]
    entries = _entries(repo, root_key, pack)
    last = max(entries, key=lambda e: e.offset)
    os.truncate(pack, last.offset + last.length - 1)  # the header goes with it

    done = _repair(repo, root_key)
    assert done.packs_damaged == [pack.name] and not pack.exists()
    assert done.chunks_lost == [last.chunk_id.hex()]
    assert done.chunks_salvaged == len(entries) - 1
    [lost] = done.damaged_files
    _restores(repo, root_key, source, first, [f for f in _files(source) if f not in lost.paths])
    _next_backup_restores_whole(repo, root_key, source)


def test_a_missing_pack_leaves_the_index(many_packs: tuple[Path, Path], root_key: bytes) -> None:
    source, repo = many_packs
    first = _open(repo, root_key).find_snapshot(None).id_hex
    pack = pack_files(repo)[0]
    chunks = sorted(e.chunk_id.hex() for e in _entries(repo, root_key, pack))
    pack.unlink()
    before = sorted(os.listdir(repo / "data"))

    done = _repair(repo, root_key)
    assert done.packs_missing == [pack.name] and done.packs_damaged == []
    assert sorted(done.chunks_lost) == chunks and done.packs_written == 0
    assert sorted(os.listdir(repo / "data")) == before  # no pack deleted
    [lost] = done.damaged_files
    checked = maintenance.check(_open(repo, root_key), read_data=True)
    assert not any("missing" in e for e in checked.errors)  # the index no longer names it
    assert [d.paths for d in checked.damaged_files] == [lost.paths]
    _restores(repo, root_key, source, first, [f for f in _files(source) if f not in lost.paths])
    _next_backup_restores_whole(repo, root_key, source)


def test_a_damaged_pack_header_alone_loses_nothing(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    source, repo = many_packs
    pack = pack_files(repo)[0]
    data = bytearray(pack.read_bytes())
    data[-10] ^= 0x01  # in the sealed header, before its length
    pack.write_bytes(bytes(data))
    done = _repair(repo, root_key)
    assert done.packs_damaged == [pack.name] and not pack.exists()
    assert done.chunks_lost == [] and done.damaged_files == [] and done.chunks_salvaged > 0
    checked = maintenance.check(_open(repo, root_key), read_data=True)
    assert (checked.errors, checked.warnings) == ([], [])
    first = _open(repo, root_key).find_snapshot(None).id_hex
    _restores(repo, root_key, source, first, _files(source))


def _damage_three_ways(repo: Path, root_key: bytes) -> None:
    """A flipped byte in one pack, another cut off, a third missing."""
    flipped = _pack_of(repo, root_key, flip_chunk_byte(repo, root_key, "b/f07"))
    cut, gone = [p for p in pack_files(repo) if p != flipped][:2]
    os.truncate(cut, cut.stat().st_size // 2)
    gone.unlink()


def test_a_dry_run_changes_nothing_and_says_what_the_repair_does(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    _, repo = many_packs
    _damage_three_ways(repo, root_key)
    before = _stored(repo)
    planned = RecordingProgress()
    dry = _repair(repo, root_key, dry_run=True, progress=planned)
    assert _stored(repo) == before
    assert dry.dry_run and (dry.packs_written, dry.bytes_written) == (0, 0)
    assert len(dry.packs_damaged) == 2 and len(dry.packs_missing) == 1
    assert planned.events == [
        (
            "start",
            (sum(len(v) for k, v in before.items() if k.startswith("data")), "reading packs"),
        ),
        ("finish", dry.read_bytes),
        ("start", (None, "reading snapshots")),
        ("finish", dry.read_bytes),
    ]
    repairing = RecordingProgress()
    done = _repair(repo, root_key, progress=repairing)
    # What the dry run said is what the repair did.
    for name in ("damage", "packs_damaged", "packs_missing", "chunks_salvaged", "chunks_lost"):
        assert getattr(dry, name) == getattr(done, name), name
    assert dry.damaged_files == done.damaged_files and done.packs_written >= 1
    # Salvaging counts the damaged packs that still hold a chunk to copy (a pack whose
    # every chunk is damaged, which the random layout sometimes makes, is not read again),
    # and ends at its total.
    damaged_bytes = sum(len(before[f"data/{n}"]) for n in done.packs_damaged)
    (_, (read, _)), (_, (salvaging, label)), (_, (last, _)) = [
        e for e in repairing.events if e[0] == "start"
    ]
    assert (read, label, last) == (dry.read_bytes, "salvaging", None)
    assert 0 < salvaging <= damaged_bytes
    finished = [done for kind, done in repairing.events if kind == "finish"]
    assert finished[1] - finished[0] == salvaging


def test_a_whole_repository_is_left_as_it_is(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    _, repo = many_packs
    before = _stored(repo)
    done = _repair(repo, root_key)
    assert _stored(repo) == before
    assert done.packs == len(pack_files(repo)) and done.read_bytes > 0
    assert (done.damage, done.packs_damaged, done.packs_missing, done.chunks_lost) == (
        [],
        [],
        [],
        [],
    )
    assert (done.packs_written, done.damaged_files) == (0, [])


def test_only_the_packs_named_are_read(many_packs: tuple[Path, Path], root_key: bytes) -> None:
    _, repo = many_packs
    one = _pack_of(repo, root_key, flip_chunk_byte(repo, root_key, "a/f01"))
    two = _pack_of(repo, root_key, flip_chunk_byte(repo, root_key, "b/f18"))
    assert one != two
    whole = next(p for p in pack_files(repo) if p not in (one, two))
    untouched = _repair(repo, root_key, packs=(whole.name,))
    assert untouched.packs == 1 and untouched.packs_damaged == []
    done = _repair(repo, root_key, packs=(one.name.upper(),))  # as typed
    assert done.packs == 1 and done.packs_damaged == [one.name]
    assert not one.exists() and two.exists()
    checked = maintenance.check(_open(repo, root_key), read_data=True)
    assert [d.paths for d in checked.damaged_files] == [["a/f01", "b/f18"]]
    assert sum(two.name in e for e in checked.errors) == 1
    with pytest.raises(UsageError, match="no pack 0123"):
        _repair(repo, root_key, packs=("0123" * 8,))
    with pytest.raises(UsageError, match="not a pack id: 0123, data/"):
        _repair(repo, root_key, packs=("0123", f"data/{one.name}"))


def test_a_pack_larger_than_any_pack_is_damage_read_no_further(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    """Storage put a 4 GiB sparse file under a pack's name: repair reads at most one byte
    past the largest pack a writer makes, takes it for damage (its chunks are lost, none
    can be salvaged) and deletes it, and the next backup stores those chunks again."""
    source, repo = many_packs
    pack = pack_files(repo)[0]
    chunks = sorted(e.chunk_id.hex() for e in _entries(repo, root_key, pack))
    with pack.open("r+b") as planted:
        planted.truncate(4 << 30)
    done = _repair(repo, root_key)
    assert done.packs_damaged == [pack.name] and done.chunks_salvaged == 0
    assert sorted(done.chunks_lost) == chunks
    assert any("larger than any object" in d for d in done.damage)
    assert done.read_bytes < 1 << 30
    assert not pack.exists()
    _next_backup_restores_whole(repo, root_key, source)


def test_a_dry_run_on_storage_it_cannot_write_runs_without_a_lock_and_says_so(
    many_packs: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `check`: a dry run only reads, so storage this device may only read (a shared
    copy, a read-only mount) still gets its report, with a warning that no lock was held."""
    _, repo = many_packs
    chunk = flip_chunk_byte(repo, root_key, "b/f03")
    opened = _open(repo, root_key)

    def read_only(name: str, *args: object, **kwargs: object) -> None:
        raise StorageError(f"cannot store {name}: permission denied")

    monkeypatch.setattr(opened.backend, "put", read_only)
    before = _stored(repo)
    dry = maintenance.repair(opened, dry_run=True)
    assert dry.chunks_lost == [chunk.hex()] and _stored(repo) == before
    assert any("without a lock" in w and "permission denied" in w for w in dry.warnings)
    with pytest.raises(StorageError):  # the repair itself writes: it needs the lock
        maintenance.repair(opened, dry_run=False)


def test_a_pack_read_wrong_once_is_not_deleted_as_damaged(
    many_packs: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage (or the way to it) hands out one pack cut short once; read again, it is
    whole. Repair took the one read for the truth: it dropped the chunks that did not
    authenticate from the index and deleted the pack, and with it good data that was
    stored nowhere else. A damaged pack is now read a second time before the repair
    acts on it; read otherwise, nothing is written or deleted."""
    source, repo = many_packs
    pack = pack_files(repo)[0]
    before = _stored(repo)
    get = Backend.get
    served_short: list[str] = []

    def short_once(self: Backend, name: str, *args: Any, **kwargs: Any) -> bytes:
        data = get(self, name, *args, **kwargs)
        if name == f"data/{pack.name}" and not served_short:
            served_short.append(name)
            return data[: len(data) // 2]
        return data

    monkeypatch.setattr(Backend, "get", short_once)
    with pytest.raises(BackupVaultError, match="read differently") as refused:
        _repair(repo, root_key)
    assert served_short and refused.value.hint is not None
    assert {k: v for k, v in _stored(repo).items() if not k.startswith("locks/")} == before
    # Served whole, the pack is whole: nothing to repair, and everything restores.
    monkeypatch.setattr(Backend, "get", get)
    assert _repair(repo, root_key).packs_damaged == []
    _restores(repo, root_key, source, _open(repo, root_key).find_snapshot(None).id_hex,
              _files(source))  # fmt: skip
