"""Which snapshot "latest" is when several folders or hosts back up into one repository:
--host and --path (restic's), as the library takes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupvault.backup import BackupNotFound
from backupvault.backup.errors import Altered
from backupvault.backup.repo import create as create_module
from backupvault.backup.repo import create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import MissingObject
from backupvault.backup.repo.repository import Repository, SnapshotFilter
from backupvault.backup.storage import Storage


def _folder(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "note.txt").write_text(text)
    return folder


@pytest.fixture
def three_sources(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path, Path]:
    """A repository with, oldest first: `docs` from laptop, `photos` from laptop, `docs`
    from desk (another machine's folder of the same name)."""
    repo = str(tmp_path / "repo")
    docs, photos = _folder(tmp_path, "docs", "laptop docs"), _folder(tmp_path, "photos", "cats")
    monkeypatch.setattr(create_module, "host_name", lambda: "laptop")
    create_snapshot(docs, repo, root_key)
    create_snapshot(photos, repo, root_key)
    monkeypatch.setattr(create_module, "host_name", lambda: "desk")
    (docs / "note.txt").write_text("desk docs")
    create_snapshot(docs, repo, root_key)
    return repo, docs, photos


def _restored(repo: str, root_key: bytes, out: Path, only: SnapshotFilter) -> str:
    restore_snapshot(repo, root_key, out, only=only)
    return (out / "note.txt").read_text()


def test_latest_is_the_newest_of_what_the_filter_lets_through(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    repo, docs, photos = three_sources
    assert _restored(repo, root_key, tmp_path / "a", SnapshotFilter()) == "desk docs"
    assert _restored(repo, root_key, tmp_path / "b", SnapshotFilter(paths=(str(photos),))) == "cats"
    laptop = SnapshotFilter(hosts=("laptop",), paths=(str(docs),))
    assert _restored(repo, root_key, tmp_path / "c", laptop) == "laptop docs"
    # A host alone: the newest from that machine, whichever folder.
    assert _restored(repo, root_key, tmp_path / "d", SnapshotFilter(hosts=("laptop",))) == "cats"
    either = SnapshotFilter(hosts=("nowhere", "laptop"), paths=(str(docs), str(tmp_path / "x")))
    assert _restored(repo, root_key, tmp_path / "e", either) == "laptop docs"


def test_a_path_matches_as_written_relative_or_with_a_trailing_slash(
    tmp_path: Path,
    root_key: bytes,
    three_sources: tuple[str, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, _docs, photos = three_sources
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for written in ("photos", "photos/", f"{photos}/", "./photos", "sub/../photos"):
        out = tmp_path / f"out-{written.replace('/', '_')}"
        assert _restored(repo, root_key, out, SnapshotFilter(paths=(written,))) == "cats", written


def test_a_filter_that_matches_nothing_restores_nothing(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    repo, _docs, _photos = three_sources
    only = SnapshotFilter(hosts=("desk",), paths=(str(tmp_path / "photos"),))
    with pytest.raises(BackupNotFound) as raised:
        restore_snapshot(repo, root_key, tmp_path / "out", only=only)
    assert f"no snapshots of {tmp_path / 'photos'} from host desk" in raised.value.message
    assert raised.value.hint is not None and "backup list" in raised.value.hint
    assert not (tmp_path / "out").exists()
    # A folder of the same name under another path is another folder.
    with pytest.raises(BackupNotFound):
        restore_snapshot(repo, root_key, tmp_path / "out", only=SnapshotFilter(paths=("/docs",)))


def test_a_restore_of_the_latest_of_them_all_counts_the_other_sources(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    repo, docs, _photos = three_sources
    everything = restore_snapshot(repo, root_key, tmp_path / "a")
    # Of desk's docs: laptop's photos is another folder, laptop another host.
    assert (everything.other_folders, everything.other_hosts) == (1, 1)
    chosen = restore_snapshot(
        repo, root_key, tmp_path / "b", only=SnapshotFilter(paths=(str(docs),))
    )
    assert (chosen.other_folders, chosen.other_hosts) == (0, 0)  # chosen, not the latest of all


def test_a_listing_and_ls_take_the_filter(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    repo_url, docs, _photos = three_sources
    repo = Repository.open(Storage(repo_url), root_key)
    listed = maintenance.list_snapshots(repo, SnapshotFilter(paths=(str(docs),)))
    assert [(s.host, s.source) for s in listed] == [("laptop", str(docs)), ("desk", str(docs))]
    assert len(maintenance.list_snapshots(repo)) == 3
    summary, entries = maintenance.ls(repo, "latest", (), SnapshotFilter(hosts=("laptop",)))
    assert summary.source == str(tmp_path / "photos") and [e.path for e in entries] == [b"note.txt"]


def test_a_path_is_matched_as_backup_create_records_it(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`~` is the home folder; a source recorded with `..` in it (`backup create
    sub/../photos` records it so, and `backup forget` keeps its own series for it) is
    matched by that path, not by the folder it names."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    repo = str(tmp_path / "repo")
    photos = _folder(tmp_path, "photos", "cats")
    (tmp_path / "sub").mkdir()
    create_snapshot(photos, repo, root_key)
    create_snapshot(Path("sub/../photos"), repo, root_key)
    plain = SnapshotFilter(paths=("~/photos",))
    assert restore_snapshot(repo, root_key, tmp_path / "a", only=plain).source == str(photos)
    dotted = restore_snapshot(
        repo, root_key, tmp_path / "b", only=SnapshotFilter(paths=("sub/../photos",))
    )
    assert dotted.source == str(tmp_path / "sub" / ".." / "photos")
    assert dotted.other_folders == 0


def test_a_filter_beside_unreadable_snapshots_says_they_may_be_it(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    """A snapshot whose header does not open hides its folder: "no snapshots of photos"
    would be a claim storage could make false by damaging one (review s43)."""
    repo, _docs, photos = three_sources
    opened = Repository.open(Storage(repo), root_key)
    photos_id = next(s.id_hex for s in opened.list_snapshots() if s.summary.source == str(photos))
    damaged = Path(repo) / "snapshots" / photos_id
    data = bytearray(damaged.read_bytes())
    data[40] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(Altered) as raised:
        restore_snapshot(
            repo, root_key, tmp_path / "out", only=SnapshotFilter(paths=(str(photos),))
        )
    assert raised.value.exit_code == 9 and photos_id in raised.value.message
    assert raised.value.message.startswith(f"no readable snapshot of {photos} at ")
    assert not (tmp_path / "out").exists()


def test_a_keep_policy_with_a_filter_leaves_every_other_snapshot_alone(
    tmp_path: Path,
    root_key: bytes,
    three_sources: tuple[str, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """restic's `forget --path`: a policy per folder (`--keep-last 1 --path ~/docs`, and
    another for ~/photos) without one run forgetting what the other keeps."""
    repo_url, docs, photos = three_sources
    monkeypatch.setattr(create_module, "host_name", lambda: "laptop")
    for text in ("dogs", "birds"):
        (photos / "note.txt").write_text(text)
        create_snapshot(photos, repo_url, root_key)
    repo = Repository.open(Storage(repo_url), root_key)
    newest_photos = maintenance.list_snapshots(repo, SnapshotFilter(paths=(str(photos),)))[-1]
    everything = [s.snapshot_id for s in maintenance.list_snapshots(repo)]
    policy = maintenance.Policy(last=1)
    kept, removed, _ = maintenance.forget(
        repo, policy, dry_run=True, only=SnapshotFilter(paths=(str(docs),))
    )
    assert removed == [] and kept == everything  # one of docs per host: the photos untouched
    kept, removed, _ = maintenance.forget(
        repo, policy, dry_run=False, only=SnapshotFilter(paths=(str(photos),))
    )
    assert len(removed) == 2 and newest_photos.snapshot_id in kept
    assert kept == [i for i in everything if i not in removed]
    left = maintenance.list_snapshots(Repository.open(Storage(repo_url), root_key))
    assert sorted((s.host, s.source) for s in left) == [
        ("desk", str(docs)), ("laptop", str(docs)), ("laptop", str(photos))
    ]  # fmt: skip


def test_a_filter_beside_a_snapshot_storage_does_not_serve_says_it_may_be_it(
    tmp_path: Path,
    root_key: bytes,
    three_sources: tuple[str, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listed, then "not there" when read: as a damaged header, it hides its folder
    (review s43)."""
    repo, _docs, photos = three_sources
    opened = Repository.open(Storage(repo), root_key)
    photos_id = next(s.id_hex for s in opened.list_snapshots() if s.summary.source == str(photos))
    real = Repository.read_snapshot

    def hiding(self: Repository, name: str, *args: object, **kwargs: object) -> object:
        if name == photos_id:
            raise MissingObject(f"snapshots/{name}")
        return real(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "read_snapshot", hiding)
    with pytest.raises(Altered) as raised:
        restore_snapshot(
            repo, root_key, tmp_path / "out", only=SnapshotFilter(paths=(str(photos),))
        )
    assert photos_id in raised.value.message and not (tmp_path / "out").exists()


def test_forget_damaged_with_a_filter_reads_only_those_folders(
    tmp_path: Path, root_key: bytes, three_sources: tuple[str, Path, Path]
) -> None:
    """--damaged with --path docs removed a photos snapshot whose tree does not open
    (its header does: its folder is known), where every other snapshot is to be kept."""
    repo_url, docs, photos = three_sources
    repo = Repository.open(Storage(repo_url), root_key)
    photos_id = next(s.id_hex for s in repo.list_snapshots() if s.summary.source == str(photos))
    damaged = Path(repo_url) / "snapshots" / photos_id
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 1  # in the tree, after the header and summary
    damaged.write_bytes(bytes(data))
    policy = maintenance.Policy(last=5)
    _, removed, _ = maintenance.forget(
        repo, policy, dry_run=True, damaged=True, only=SnapshotFilter(paths=(str(docs),))
    )
    assert removed == []
    _, removed, _ = maintenance.forget(repo, policy, dry_run=True, damaged=True)
    assert removed == [photos_id]


def test_a_snapshot_of_a_machine_with_no_name_is_found_by_the_empty_host(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = str(tmp_path / "repo")
    docs = _folder(tmp_path, "docs", "nameless")
    monkeypatch.setattr(create_module, "host_name", lambda: "")
    create_snapshot(docs, repo, root_key)
    monkeypatch.setattr(create_module, "host_name", lambda: "laptop")
    (docs / "note.txt").write_text("named")
    create_snapshot(docs, repo, root_key)
    assert _restored(repo, root_key, tmp_path / "a", SnapshotFilter(hosts=("",))) == "nameless"
    assert _restored(repo, root_key, tmp_path / "b", SnapshotFilter(hosts=("laptop",))) == "named"
