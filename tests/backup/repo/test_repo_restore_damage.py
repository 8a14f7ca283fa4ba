"""A restore that meets damaged chunks still fails and writes nothing into --to, but first
authenticates every other chunk it needs, and its error names every file that cannot be
restored (and how to restore the rest). `backup check` names the same files, snapshot by
snapshot, for damaged chunks (--read-data) and for missing or cut-off packs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backup_trees import SMALL_PACKS, flip_chunk_byte, pack_files

from backupvault.backup.repo import (
    Repository,
    create_snapshot,
    maintenance,
    restore,
    restore_snapshot,
)
from backupvault.backup.repo.damage import files_using, listed
from backupvault.backup.repo.index import Index
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed


def _users(repo: Path, root_key: bytes, chunk_ids: set[bytes]) -> list[str]:
    opened = Repository.open(Storage(str(repo)), root_key)
    entries = opened.find_snapshot(None).entries
    assert entries is not None
    return files_using(entries, chunk_ids)


def _fails(repo: Path, root_key: bytes, **kwargs: object) -> AuthenticationFailed:
    dest = repo.parent / "restored"
    before = set(os.listdir(repo.parent))
    with pytest.raises(AuthenticationFailed) as caught:
        restore_snapshot(str(repo), root_key, dest, **kwargs)  # type: ignore[arg-type]
    assert not dest.exists()
    assert set(os.listdir(repo.parent)) == before  # no staging folder left behind
    return caught.value


@pytest.mark.parametrize("streamed", [False, True], ids=["small files", "streamed files"])
def test_every_file_using_a_damaged_chunk_is_named(
    many_packs: tuple[Path, Path],
    root_key: bytes,
    monkeypatch: pytest.MonkeyPatch,
    streamed: bool,
) -> None:
    source, repo = many_packs
    if streamed:  # every file written chunk by chunk, as files over 1 MiB are
        monkeypatch.setattr(restore, "_SMALL_FILE", 0)
    damaged = {flip_chunk_byte(repo, root_key, "a/f03"), flip_chunk_byte(repo, root_key, "big", -1)}
    damaged.add(flip_chunk_byte(repo, root_key, "b/f17", -1))
    users = _users(repo, root_key, damaged)
    assert users == ["big", "a/f03", "b/f17"]  # tree order (files before folders)
    error = _fails(repo, root_key)
    assert error.message.endswith(f"cannot be restored: {', '.join(users)}")
    assert "failed authentication" in error.message
    assert "(and 2 more damaged chunks)" in error.message
    [named] = error.details["damaged_files"]
    assert named["paths"] == users
    assert error.hint is not None
    assert "nothing was written into" in error.hint
    assert "--include" in error.hint
    assert "backup check --read-data" in error.hint
    assert "`backupvault backup repair` drops the damaged chunks" in error.hint
    # What the hint says: the other files restore with --include.
    others = [str(p.relative_to(source)) for p in sorted(source.rglob("*")) if p.is_file()]
    others = [p for p in others if p not in users]
    dest = repo.parent / "rest"
    restore_snapshot(str(repo), root_key, dest, include=tuple(others))
    for path in others:
        assert (dest / path).read_bytes() == (source / path).read_bytes()
    for path in users:
        assert not (dest / path).exists()


def test_a_truncated_pack_names_the_files_of_the_chunks_it_lost(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    _, repo = many_packs
    pack = pack_files(repo)[0]
    opened = Repository.open(Storage(str(repo)), root_key)
    entries = opened.read_pack_header(pack.name, pack.stat().st_size)
    last = max(entries, key=lambda e: e.offset)
    os.truncate(pack, last.offset + last.length - 1)
    error = _fails(repo, root_key)
    assert f"pack {pack.name} is truncated" in error.message
    assert error.message.endswith(listed(_users(repo, root_key, {last.chunk_id})))


def test_a_damaged_chunk_no_included_file_uses_is_not_read(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    _, repo = many_packs
    flip_chunk_byte(repo, root_key, "a/f05")
    restore_snapshot(str(repo), root_key, repo.parent / "part", include=("b",))
    error = _fails(repo, root_key, include=("a",))
    assert error.message.endswith("; the file that uses it cannot be restored: a/f05")


def _named_by_check(repo: Path, root_key: bytes, read_data: bool) -> dict[str, list[str]]:
    """Snapshot id -> the files `backup check` names in it (in its order: oldest first)."""
    opened = Repository.open(Storage(str(repo)), root_key)
    result = maintenance.check(opened, read_data=read_data)
    return {d.snapshot_id: d.paths for d in result.damaged_files}


def test_check_names_the_files_of_damaged_chunks_in_each_snapshot(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    """Also in a backup made after the damage: it reuses the damaged chunk of a file that
    did not change (the index still lists it), so that file stays damaged there too."""
    source, repo = many_packs
    flip_chunk_byte(repo, root_key, "a/f03")
    flip_chunk_byte(repo, root_key, "b/f17", -1)
    first = Repository.open(Storage(str(repo)), root_key).find_snapshot(None).id_hex
    (source / "b" / "f17").write_bytes(os.urandom(300))
    second = create_snapshot(source, str(repo), root_key, repo_params=SMALL_PACKS).snapshot_id
    assert _named_by_check(repo, root_key, read_data=False) == {}  # only reading finds it
    named = _named_by_check(repo, root_key, read_data=True)
    assert named == {first: ["a/f03", "b/f17"], second: ["a/f03"]}
    assert list(named) == [first, second]  # oldest first
    # The files a restore of each snapshot names.
    for snapshot_id, paths in named.items():
        error = _fails(repo, root_key, snapshot_id=snapshot_id)
        [named] = error.details["damaged_files"]
        assert (named["backup_id"], named["paths"]) == (snapshot_id, paths)
    opened = Repository.open(Storage(str(repo)), root_key)
    found = maintenance.check(opened, read_data=True).damaged_files[0]
    assert (found.source, found.host) == (str(source), opened.list_snapshots()[0].summary.host)


def test_check_names_the_files_of_a_missing_and_a_cut_off_pack(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    """Found without reading the packs: storage lists them missing or shorter than the
    index says."""
    _, repo = many_packs
    opened = Repository.open(Storage(str(repo)), root_key)
    gone, cut = pack_files(repo)[:2]
    lost = {e.chunk_id for e in opened.read_pack_header(gone.name, gone.stat().st_size)}
    last = max(opened.read_pack_header(cut.name, cut.stat().st_size), key=lambda e: e.offset)
    gone.unlink()
    os.truncate(cut, last.offset + last.length - 1)
    snapshot_id = opened.find_snapshot(None).id_hex
    expected = _users(repo, root_key, lost | {last.chunk_id})
    assert expected and len(expected) < 41  # some files, not all of them
    for read_data in (False, True):
        assert _named_by_check(repo, root_key, read_data) == {snapshot_id: expected}


def test_a_damaged_pack_header_alone_names_no_files(
    many_packs: tuple[Path, Path], root_key: bytes
) -> None:
    """A restore reads the chunks where the index says, not through the header: check
    reads them so too, and names no file for a header that does not open."""
    _, repo = many_packs
    pack = pack_files(repo)[0]
    data = bytearray(pack.read_bytes())
    data[-10] ^= 0x01  # in the sealed header, before its length
    pack.write_bytes(bytes(data))
    opened = Repository.open(Storage(str(repo)), root_key)
    result = maintenance.check(opened, read_data=True)
    assert len(result.errors) == 1 and pack.name in result.errors[0]
    assert result.damaged_files == []
    restore_snapshot(str(repo), root_key, repo.parent / "all")


def test_listed_counts_what_it_leaves_out() -> None:
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"f{i}" for i in range(25)], limit=3) == "f0, f1, f2 and 22 more"


def test_an_interruption_just_after_the_staging_folder_is_made_leaves_nothing(
    many_packs: tuple[Path, Path], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM (the CLI raises KeyboardInterrupt for both) between the staging
    folder made and the `with` around it entered left the hidden folder next to --to for
    good (tests/cli's SIGTERM test, which signals as soon as the folder appears, failed
    now and then so)."""
    _, repo = many_packs
    fchmod = os.fchmod

    def interrupted(fd: int, mode: int) -> None:
        if mode == 0o700:  # the staging folder made private
            raise KeyboardInterrupt
        fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        restore_snapshot(str(repo), root_key, repo.parent / "out")
    assert not [p for p in repo.parent.iterdir() if "out" in p.name]


def _stored_twice(tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository where every chunk of `source` is in two packs: a second backup that
    saw no index stored them all again (as two backups at once do, each unaware of the
    other's new packs)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_bytes(b"the only file, " * 1000)
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key)
    real = Repository.load_index

    def blind(self: Repository, *, adopt_unindexed: bool = True) -> object:
        _, packs, adopted = real(self, adopt_unindexed=False)
        return Index(), packs, adopted

    with monkeypatch.context() as patched:
        patched.setattr(Repository, "load_index", blind)
        create_snapshot(source, str(repo), root_key, force_read=True)
    return repo


def _flip_in(repo: Path, root_key: bytes, pack: Path) -> None:
    opened = Repository.open(Storage(str(repo)), root_key)
    (entry,) = opened.read_pack_header(pack.name, pack.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[entry.offset + 20] ^= 0x01
    pack.write_bytes(bytes(data))


def test_a_damaged_chunk_is_read_from_another_pack_that_holds_it(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restore fell back to no second copy (`repair` kept it, the restore failed until
    then). Whichever copy the index names first, the other is read when it is damaged."""
    repo = _stored_twice(tmp_path, root_key, monkeypatch)
    first, second = pack_files(repo)
    for damaged, dest in ((first, "one"), (second, "two")):
        _flip_in(repo, root_key, damaged)
        restore_snapshot(str(repo), root_key, tmp_path / dest)
        assert (tmp_path / dest / "a.txt").read_bytes() == b"the only file, " * 1000
        _flip_in(repo, root_key, damaged)  # mended
    _flip_in(repo, root_key, first)
    _flip_in(repo, root_key, second)  # both copies damaged: named, nothing written
    error = _fails(repo, root_key)
    assert error.message.endswith("cannot be restored: a.txt")


def test_check_names_no_file_whose_damaged_chunk_has_a_good_copy(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check named a.txt as one "which cannot be restored" when the copy the index names
    first was damaged, though a restore reads the other copy (as above) and restores it;
    the damaged pack is still an error, for `backup repair`."""
    repo = _stored_twice(tmp_path, root_key, monkeypatch)
    for damaged in pack_files(repo):
        _flip_in(repo, root_key, damaged)
        opened = Repository.open(Storage(str(repo)), root_key)
        result = maintenance.check(opened, read_data=True)
        assert result.errors and result.repairable
        assert result.damaged_files == []
        restore_snapshot(str(repo), root_key, tmp_path / f"out-{damaged.name}")
        _flip_in(repo, root_key, damaged)  # mended
    for damaged in pack_files(repo):
        _flip_in(repo, root_key, damaged)  # both copies: named
    result = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert [d.paths for d in result.damaged_files] == [["a.txt"], ["a.txt"]]
