"""list, diff, forget (the policy keeps exactly what it says), prune (keeps every chunk in
use, frees the rest, dry run changes nothing), check (finds damage), and locks."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_trees import RecordingProgress, snapshot

from backupvault.backup.errors import RollbackSuspected, StorageError
from backupvault.backup.repo import (
    Repository,
    RepositoryLocked,
    create_snapshot,
    maintenance,
    restore_snapshot,
    snapshots,
)
from backupvault.backup.repo.backend import Backend, MissingObject
from backupvault.backup.repo.maintenance import Policy, SnapshotSummary, apply_policy
from backupvault.backup.repo.repository import EXCLUSIVE, SHARED
from backupvault.backup.repo.state import DeviceState, place_of
from backupvault.errors import BackupVaultError, UsageError

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary(snapshot_id: str, when: datetime) -> SnapshotSummary:
    return SnapshotSummary(snapshot_id, None, when, "/src", "host", 1, 1, 1, 1, "password")


def test_policy_keeps_exactly_what_it_says() -> None:
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    # Two snapshots a day (noon, 18:00) for 70 days.
    found = [
        summary(f"{day:03}{half}", start + timedelta(days=day, hours=6 * half))
        for day in range(70)
        for half in (0, 1)
    ]

    def kept(policy: Policy) -> list[str]:
        return apply_policy(found, policy)[0]

    assert kept(Policy(last=3)) == ["068" + "1", "069" + "0", "069" + "1"]
    assert kept(Policy(daily=3)) == ["0671", "0681", "0691"]  # the newest of each day
    weekly = kept(Policy(weekly=2))
    assert len(weekly) == 2 and weekly[-1] == "0691"
    # 2026-03-11 is day 69 (a Wednesday); the week before ends on Sunday 2026-03-08 (day 66).
    assert weekly[0] == "0661"
    monthly = kept(Policy(monthly=3))
    # Newest of March (day 69), February (day 58 = Feb 28), January (day 30 = Jan 31).
    assert monthly == ["0301", "0581", "0691"]
    union = kept(Policy(last=1, daily=2, monthly=2))
    assert union == ["0581", "0681", "0691"]
    kept_ids, removed, _ = apply_policy(found, Policy(last=5))
    assert sorted(kept_ids + removed) == sorted(s.snapshot_id for s in found)
    with pytest.raises(UsageError):
        apply_policy(found, Policy())


def test_policy_keeps_the_newest_of_each_year() -> None:
    """restic's --keep-yearly, which a restic user's policy names (`--keep-yearly 5`):
    refused with "No such option"."""
    found = [
        summary(f"{year}-{month:02}", datetime(year, month, 15, tzinfo=UTC))
        for year in (2022, 2023, 2025)  # none in 2024: a year without one is not counted
        for month in (3, 11)
    ]
    assert apply_policy(found, Policy(yearly=2))[0] == ["2023-11", "2025-11"]
    assert apply_policy(found, Policy(yearly=9))[0] == ["2022-11", "2023-11", "2025-11"]
    assert apply_policy(found, Policy(last=1, yearly=1))[0] == ["2025-11"]
    assert not Policy(yearly=1).empty()


def test_policy_is_per_source_and_host() -> None:
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    found = [
        SnapshotSummary("a1", None, when, "/a", "h", 0, 0, 0, 0, "password"),
        SnapshotSummary("a2", None, when + timedelta(hours=1), "/a", "h", 0, 0, 0, 0, "password"),
        SnapshotSummary("b1", None, when, "/b", "h", 0, 0, 0, 0, "password"),
        SnapshotSummary("c1", None, when, "/a", "other", 0, 0, 0, 0, "password"),
    ]
    assert apply_policy(found, Policy(last=1)) == (["a2", "b1", "c1"], ["a1"], [])


def test_a_snapshot_dated_ahead_of_this_clock_is_kept_and_not_counted() -> None:
    """A device whose clock was years ahead made one snapshot: by its date it was the
    newest for years, so `--keep-last 1` kept it alone and forgot every real backup made
    after it, day after day (and prune then deleted their data)."""
    now = datetime(2026, 12, 5, tzinfo=UTC)
    found = [summary(f"real{day}", now - timedelta(days=3 - day)) for day in range(3)]
    found.append(summary("ahead", now + timedelta(days=3650)))
    kept, removed, ahead = apply_policy(found, Policy(last=1), now)
    assert (kept, removed, ahead) == (["real2", "ahead"], ["real0", "real1"], ["ahead"])
    # A few hours ahead is clock skew (or a time zone set wrong), counted as any other.
    found[-1] = summary("skewed", now + timedelta(hours=12))
    assert apply_policy(found, Policy(last=1), now) == (["skewed"], ["real0", "real1", "real2"], [])


def test_forget_keeps_the_newest_real_snapshot_beside_one_dated_ahead(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    source, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    made = repo.read_snapshot(ids[-1])
    assert made.entries is not None
    future_us = int((datetime.now(UTC) + timedelta(days=3650)).timestamp() * 1e6)
    planted, data = snapshots.seal(
        root_key, repo.keys.repo_id, None, made.summary, made.entries, future_us
    )
    (tmp_path / "repo" / "snapshots" / planted.hex()).write_bytes(data)
    kept, removed, ahead = maintenance.forget(repo, Policy(last=1), dry_run=False)
    assert ahead == [planted.hex()] and set(kept) == {ids[-1], planted.hex()}
    assert sorted(removed) == sorted(ids[:-1])
    maintenance.prune(repo, dry_run=False)
    restore_snapshot(repo_url, root_key, tmp_path / "out", ids[-1])
    assert snapshot(tmp_path / "out") == snapshot(source)


@pytest.fixture
def history(tmp_path: Path, root_key: bytes) -> tuple[Path, str, list[str]]:
    """Five snapshots of a changing folder; returns (source, repo, snapshot ids)."""
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(7)
    repo = str(tmp_path / "repo")
    ids = []
    for day in range(5):
        (source / f"day{day}.bin").write_bytes(rng.randbytes(30_000))
        (source / "log.txt").write_bytes(rng.randbytes(5_000 * (day + 1)))
        if day == 3:
            (source / "day1.bin").unlink()
        ids.append(create_snapshot(source, repo, root_key, repo_params=SMALL).snapshot_id)
    return source, repo, ids


def test_a_snapshot_forgotten_while_listing_is_left_out(
    history: tuple[Path, str, list[str]],
    root_key: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`backup list` takes no lock: a forget on another device between the listing of
    names and the reading of one snapshot leaves that one out, not the whole list."""
    _, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    real_names = repo.snapshot_names

    def names_then_forget() -> dict[str, int]:
        listed = real_names()
        (tmp_path / "repo" / "snapshots" / ids[1]).unlink()
        return listed

    monkeypatch.setattr(repo, "snapshot_names", names_then_forget)
    listed = [s.snapshot_id for s in maintenance.list_snapshots(repo)]
    assert listed == [ids[0], *ids[2:]]


def test_list_shows_the_bytes_stored_that_create_reported(tmp_path: Path, root_key: bytes) -> None:
    """What `backup create` says it stored (packs, index, the snapshot object) is what
    `backup list` shows for that snapshot, and what storage holds for a first backup."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(random.Random(5).randbytes(50_000))
    repo_url = str(tmp_path / "repo")
    made = create_snapshot(source, repo_url, root_key, repo_params=SMALL)
    repo = maintenance.open_repository(repo_url, root_key)
    (listed,) = maintenance.list_snapshots(repo)
    assert listed.stored == made.stored
    written = sum(
        f.stat().st_size
        for folder in ("data", "index", "snapshots")
        for f in (tmp_path / "repo" / folder).rglob("*")
        if f.is_file()
    )
    assert made.stored == written


def test_list_and_diff(history: tuple[Path, str, list[str]], root_key: bytes) -> None:
    _, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    listed = maintenance.list_snapshots(repo)
    assert [s.snapshot_id for s in listed] == ids
    assert [s.parent_id for s in listed] == [None, *ids[:-1]]
    assert listed[0].added >= 35_000 and all(s.stored > 0 for s in listed)
    changes = {(c.kind, c.path) for c in maintenance.diff(repo, ids[2], ids[3])}
    assert changes == {("+", "day3.bin"), ("-", "day1.bin"), ("M", "log.txt"), ("U", ".")}


def test_forget_then_prune_keeps_what_is_used_and_frees_the_rest(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    source, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    packs_before = tree_size(tmp_path / "repo" / "data")
    kept, removed, _ = maintenance.forget(repo, Policy(last=2), dry_run=True)
    assert (kept, removed) == (ids[3:], ids[:3])
    assert len(os.listdir(tmp_path / "repo" / "snapshots")) == 5  # dry run
    maintenance.forget(repo, Policy(last=2), dry_run=False)
    assert sorted(os.listdir(tmp_path / "repo" / "snapshots")) == sorted(ids[3:])
    planned = RecordingProgress()
    dry = maintenance.prune(repo, dry_run=True, progress=planned)
    assert dry.bytes_freed > 0 and tree_size(tmp_path / "repo" / "data") == packs_before
    assert planned.events == [("start", (None, "reading snapshots")), ("finish", 0)]
    pruning = RecordingProgress()
    done = maintenance.prune(repo, dry_run=False, progress=pruning)
    assert done.bytes_freed > 0
    # Reading the snapshots (no total), then repacking against the packs' total.
    assert done.packs_repacked > 0 and pruning.done > 0
    assert pruning.events[:3] == [
        ("start", (None, "reading snapshots")),
        ("finish", 0),
        ("start", (pruning.done, "repacking")),
    ]
    assert pruning.events[-1] == ("finish", pruning.done)
    assert tree_size(tmp_path / "repo" / "data") == packs_before - done.bytes_freed
    assert len(os.listdir(tmp_path / "repo" / "index")) == 1
    for snapshot_id in ids[3:]:
        out = tmp_path / f"out-{snapshot_id}"
        restore_snapshot(repo_url, root_key, out, snapshot_id)
    assert (tmp_path / f"out-{ids[4]}" / "log.txt").read_bytes() == (
        source / "log.txt"
    ).read_bytes()
    result = maintenance.check(repo, read_data=True)
    assert result.errors == [] and result.snapshots == 2
    # Everything still used is there; a second prune finds nothing more to do.
    again = maintenance.prune(repo, dry_run=False)
    assert again.packs_deleted == 0 and again.packs_repacked == 0


def test_max_unused_0_removes_what_a_mostly_used_pack_keeps(
    tmp_path: Path, root_key: bytes
) -> None:
    """A file forgotten to be rid of it stayed in its pack while the pack was mostly in use
    (under 10 % unused), and prune said "0 deleted" without a word of it (user review
    s43): the unused part is counted, and `max_unused=0` rewrites such a pack."""
    source, repo_url = tmp_path / "src", str(tmp_path / "repo")
    source.mkdir()
    (source / "album.bin").write_bytes(os.urandom(40_000))
    (source / "secret.txt").write_bytes(os.urandom(1_000))
    one_pack = {**SMALL, "pack_size": 1 << 20}
    first = create_snapshot(source, repo_url, root_key, repo_params=one_pack).snapshot_id
    (source / "secret.txt").unlink()
    second = create_snapshot(source, repo_url, root_key).snapshot_id
    repo = maintenance.open_repository(repo_url, root_key)
    maintenance.forget(repo, Policy(), ids=[first], dry_run=False)
    (pack,) = os.listdir(tmp_path / "repo" / "data")
    kept = maintenance.prune(repo, dry_run=False)
    assert (kept.packs_deleted, kept.packs_repacked) == (0, 0)
    assert kept.unused_kept_chunks == kept.unused_chunks > 0
    assert 1_000 <= kept.unused_kept_bytes < 0.1 * 41_000  # sealed: a little over 1,000
    assert os.listdir(tmp_path / "repo" / "data") == [pack]
    dry = maintenance.prune(repo, dry_run=True, max_unused=0.0)
    assert dry.packs_repacked == 1 and dry.unused_kept_chunks == 0
    done = maintenance.prune(repo, dry_run=False, max_unused=0.0)
    assert done.packs_repacked == 1 and done.bytes_freed >= kept.unused_kept_bytes
    assert pack not in os.listdir(tmp_path / "repo" / "data")
    again = maintenance.prune(repo, dry_run=False, max_unused=0.0)
    assert again.unused_chunks == 0 and again.packs_repacked == 0
    restore_snapshot(repo_url, root_key, tmp_path / "out", second)
    assert (tmp_path / "out" / "album.bin").read_bytes() == (source / "album.bin").read_bytes()
    assert not (tmp_path / "out" / "secret.txt").exists()


def test_check_reports_its_reading_against_the_packs_total(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    """So the bar of `check --read-data` has an end and a time left."""
    _, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)
    packs = sum(f.stat().st_size for f in (tmp_path / "repo" / "data").rglob("*") if f.is_file())
    reading = RecordingProgress()
    assert maintenance.check(repo, read_data=True, progress=reading).errors == []
    assert reading.events == [("start", (packs, "checking")), ("finish", packs)]
    listing = RecordingProgress()
    maintenance.check(repo, read_data=False, progress=listing)
    assert listing.events == [("start", (None, "checking")), ("finish", 0)]


def test_check_finds_damage(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    _, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)
    assert maintenance.check(repo, read_data=True).errors == []
    packs = sorted((tmp_path / "repo" / "data").iterdir())
    data = bytearray(packs[0].read_bytes())
    data[5] ^= 1
    packs[0].write_bytes(bytes(data))
    assert maintenance.check(repo, read_data=False).errors == []  # only reading finds it
    errors = maintenance.check(repo, read_data=True).errors
    assert len(errors) == 1 and packs[0].name in errors[0]
    packs[1].unlink()
    errors = maintenance.check(repo, read_data=False).errors
    assert any(packs[1].name in e and "missing" in e for e in errors)
    snapshot = next((tmp_path / "repo" / "snapshots").iterdir())
    snapshot.write_bytes(snapshot.read_bytes()[:-1])
    errors = maintenance.check(repo, read_data=False).errors
    assert any(snapshot.name in e for e in errors)


def test_check_reports_a_hidden_parent(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    _, repo_url, ids = history
    (tmp_path / "repo" / "snapshots" / ids[2]).unlink()
    repo = maintenance.open_repository(repo_url, root_key)
    warnings = maintenance.check(repo, read_data=False).warnings
    assert any(ids[2] in w and ids[3] in w for w in warnings)


def test_a_forgotten_parent_is_no_warning_and_prune_keeps_every_record(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    _, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    records = tmp_path / "repo" / "forgotten"
    maintenance.forget(repo, Policy(last=2), dry_run=True)
    assert not records.exists()  # a dry run writes nothing
    maintenance.forget(repo, Policy(last=2), dry_run=False)
    assert sorted(os.listdir(records)) == sorted(ids[:3])
    assert {(records / n).stat().st_size for n in ids[:3]} == {36}
    # ids[3] names the forgotten ids[2] as parent: no warning, as there was before records.
    result = maintenance.check(repo, read_data=False)
    assert (result.errors, result.warnings) == ([], [])
    maintenance.prune(repo, dry_run=False)
    # Kept for good: once a record was gone, storage could bring its snapshot back unseen.
    assert sorted(os.listdir(records)) == sorted(ids[:3])
    result = maintenance.check(repo, read_data=True)
    assert (result.errors, result.warnings) == ([], [])


def test_a_forged_or_moved_forget_record_does_not_cover_a_hidden_parent(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    """Storage hides ids[3] (ids[4]'s parent) and plants a record for it: a random one, a
    genuine record of another snapshot renamed, and one from another repository of the
    same key. Each fails authentication (an error) and the warning stays."""
    source, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    maintenance.forget(repo, Policy(last=4), dry_run=False)  # a genuine record for ids[0]
    records = tmp_path / "repo" / "forgotten"
    genuine = (records / ids[0]).read_bytes()
    other_url = str(tmp_path / "other")
    other_ids = [create_snapshot(source, other_url, root_key).snapshot_id for _ in range(2)]
    other = maintenance.open_repository(other_url, root_key)
    maintenance.forget(other, Policy(last=1), dry_run=False)
    foreign = (tmp_path / "other" / "forgotten" / other_ids[0]).read_bytes()
    (tmp_path / "repo" / "snapshots" / ids[3]).unlink()  # storage hides it
    for planted in (os.urandom(36), genuine, foreign, genuine[:20]):
        (records / ids[3]).write_bytes(planted)
        result = maintenance.check(repo, read_data=False)
        assert len(result.errors) == 1 and ids[3] in result.errors[0]
        assert "authentication" in result.errors[0] or "truncated" in result.errors[0]
        assert len(result.warnings) == 1 and "storage may be hiding it" in result.warnings[0]
        assert ids[3] in result.warnings[0] and ids[4] in result.warnings[0]


def test_a_forget_cut_off_between_record_and_delete_loses_nothing(
    history: tuple[Path, str, list[str]],
    root_key: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    real_delete = repo.backend.delete

    def cut_off(name: str) -> None:
        if name.startswith("snapshots/"):
            raise KeyboardInterrupt  # the process stops after writing the first record
        real_delete(name)

    monkeypatch.setattr(repo.backend, "delete", cut_off)
    with pytest.raises(KeyboardInterrupt):
        maintenance.forget(repo, Policy(last=2), dry_run=False)
    monkeypatch.setattr(repo.backend, "delete", real_delete)
    assert os.listdir(tmp_path / "repo" / "forgotten") == [ids[0]]
    assert len(os.listdir(tmp_path / "repo" / "snapshots")) == 5  # nothing deleted yet
    restore_snapshot(repo_url, root_key, tmp_path / "out", ids[0])  # still whole
    assert repo.locks() == []  # the lock went with the interrupted forget
    maintenance.forget(repo, Policy(last=2), dry_run=False)
    assert sorted(os.listdir(tmp_path / "repo" / "snapshots")) == sorted(ids[3:])
    result = maintenance.check(repo, read_data=False)
    assert (result.errors, result.warnings) == ([], [])


def test_check_beside_a_backup_reports_no_damage_and_keeps_prune_out(
    history: tuple[Path, str, list[str]],
    root_key: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup from another device lands just after check has read the index: check
    listed the snapshots before, so the new one (whose index it did not read) is not
    taken for damage. A prune or forget meanwhile is refused by check's shared lock."""
    source, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)
    real_load_index = repo.load_index
    refused: list[str] = []

    def load_index_while_others_work(**kwargs: bool) -> object:
        loaded = real_load_index(**kwargs)
        (source / "new.bin").write_bytes(random.Random(9).randbytes(20_000))
        create_snapshot(source, repo_url, root_key)  # shared beside shared
        other = maintenance.open_repository(repo_url, root_key)
        for attempt in (
            lambda: maintenance.prune(other, dry_run=False),
            lambda: maintenance.forget(other, Policy(last=1), dry_run=False),
        ):
            with pytest.raises(RepositoryLocked) as locked:
                attempt()
            refused.append(locked.value.message)
        return loaded

    monkeypatch.setattr(repo, "load_index", load_index_while_others_work)
    result = maintenance.check(repo, read_data=True)
    assert (result.errors, result.warnings, result.snapshots) == ([], [], 5)
    assert len(refused) == 2 and all("a backup or check" in m for m in refused)
    assert repo.locks() == []
    monkeypatch.setattr(repo, "load_index", real_load_index)
    assert maintenance.check(repo, read_data=True).snapshots == 6


def test_check_on_storage_it_cannot_write_runs_without_a_lock_and_says_so(
    history: tuple[Path, str, list[str]], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)

    def read_only(name: str, *args: object, **kwargs: object) -> None:
        raise StorageError(f"cannot store {name}: permission denied")

    monkeypatch.setattr(repo.backend, "put", read_only)
    result = maintenance.check(repo, read_data=True)
    assert result.errors == [] and result.snapshots == 5
    assert len(result.warnings) == 1 and "checked without a lock" in result.warnings[0]
    assert "permission denied" in result.warnings[0]


def test_locks_exclude_prune_and_backup(
    history: tuple[Path, str, list[str]], root_key: bytes
) -> None:
    source, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)
    with repo.lock(SHARED):
        with pytest.raises(RepositoryLocked):
            maintenance.prune(repo, dry_run=False)
        with pytest.raises(RepositoryLocked):
            maintenance.forget(repo, Policy(last=1), dry_run=False)
        create_snapshot(source, repo_url, root_key)  # shared beside shared is fine
    with repo.lock(EXCLUSIVE), pytest.raises(RepositoryLocked):
        create_snapshot(source, repo_url, root_key)
    assert repo.locks() == []


def _two_snapshots(tmp_path: Path, root_key: bytes) -> tuple[Path, str, Path, list[str]]:
    """(source, repository, device state, [first, second]): one folder backed up twice."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "ver.txt").write_text("v1")
    repo_url, state = str(tmp_path / "repo"), tmp_path / "state"
    first = create_snapshot(source, repo_url, root_key, repo_params=SMALL, state_dir=state)
    (source / "ver.txt").write_text("v2")
    second = create_snapshot(source, repo_url, root_key, state_dir=state)
    return source, repo_url, state, [first.snapshot_id, second.snapshot_id]


def test_storage_hiding_the_newest_snapshot_is_noticed(tmp_path: Path, root_key: bytes) -> None:
    source, repo_url, state, (first, second) = _two_snapshots(tmp_path, root_key)
    (tmp_path / "repo" / "snapshots" / second).unlink()  # storage rolls back
    third = create_snapshot(source, repo_url, root_key, state_dir=state)
    assert len(third.warnings) == 1 and second in third.warnings[0]
    assert third.parent_id == first  # the listing is all it can go by
    assert create_snapshot(source, repo_url, root_key, state_dir=state).warnings == []


def test_storage_serving_another_repository_of_the_key_in_a_folders_place_is_noticed(
    tmp_path: Path, root_key: bytes
) -> None:
    """Two folders backed up to two repositories with one key (the vault's). Storage
    serving the photos repository where the documents one is took the documents' backup
    into it without a word (the device remembers its last snapshot per repository id,
    and storage picks the repository), and once it put the documents repository back,
    that backup was gone and nothing said so."""
    docs, photos = tmp_path / "docs", tmp_path / "photos"
    for folder in (docs, photos):
        folder.mkdir()
        (folder / "a").write_text(folder.name)
    state, a, b = tmp_path / "state", tmp_path / "a", tmp_path / "b"
    create_snapshot(docs, str(a), root_key, repo_params=SMALL, state_dir=state)
    create_snapshot(photos, str(b), root_key, repo_params=SMALL, state_dir=state)
    a.rename(tmp_path / "a-aside")
    shutil.copytree(b, a)  # storage serves b's repository at a
    (docs / "new").write_text("made while the repositories were swapped")
    # A restore of the latest there warns too (it did not: review s42, F5).
    restored = restore_snapshot(str(a), root_key, tmp_path / "out", state_dir=state)
    assert [w for w in restored.warnings if "holds another repository" in w]
    during = create_snapshot(docs, str(a), root_key, state_dir=state)
    assert [w for w in during.warnings if "another repository" in w]
    shutil.rmtree(a)
    (tmp_path / "a-aside").rename(a)  # and puts a's back: that backup is gone
    after = create_snapshot(docs, str(a), root_key, state_dir=state)
    assert [w for w in after.warnings if "another repository" in w]
    assert create_snapshot(docs, str(a), root_key, state_dir=state).warnings == []
    assert create_snapshot(photos, str(b), root_key, state_dir=state).warnings == []


def test_a_last_snapshot_forgotten_by_another_device_is_no_warning(
    tmp_path: Path, root_key: bytes
) -> None:
    """Device A's last snapshot of a source is removed by a forget run elsewhere (it keeps
    the newest per host and source; here a newer snapshot of the same source and host,
    made with another device state); A's next backup says nothing."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("one")
    repo_url = str(tmp_path / "repo")
    made_by_a = create_snapshot(
        source, repo_url, root_key, repo_params=SMALL, state_dir=tmp_path / "a"
    )
    (source / "a").write_text("two")
    create_snapshot(source, repo_url, root_key, state_dir=tmp_path / "b")
    repo = maintenance.open_repository(repo_url, root_key)
    _, removed, _ = maintenance.forget(repo, Policy(last=1), dry_run=False)
    assert removed == [made_by_a.snapshot_id]
    later = create_snapshot(source, repo_url, root_key, state_dir=tmp_path / "a")
    assert later.warnings == []


def test_prune_sweeps_day_old_temporaries_of_interrupted_uploads(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    """A put killed before its rename leaves `.<name>.<random>.partial`; prune removes
    those not written to for a day, and keeps younger ones (a put still at work) and
    anything that is not a temporary of ours."""
    _, repo_url, _ids = history
    root = tmp_path / "repo"
    pack = next(iter(os.listdir(root / "data")))
    stale = [
        root / "data" / f".{pack}.{'a' * 16}.partial",
        root / "snapshots" / f".{'b' * 32}.{'c' * 16}.partial",
        root / "index" / f"{'d' * 32}.{'e' * 16}.partial",  # as WebDAV names them
        root / f".config.{'f' * 16}.partial",
    ]
    fresh = root / "data" / f".{'1' * 32}.{'2' * 16}.partial"
    foreign = [root / "data" / ".notes.partial", root / "data" / f".{pack}.partial"]
    day_ago = (datetime.now(UTC) - timedelta(hours=24, minutes=5)).timestamp()
    for path in [*stale, fresh, *foreign]:
        path.write_bytes(os.urandom(100))
        if path != fresh:
            os.utime(path, (day_ago, day_ago))
    repo = maintenance.open_repository(repo_url, root_key)
    dry = maintenance.prune(repo, dry_run=True)
    assert dry.temporaries_removed == len(stale)
    assert all(path.exists() for path in stale)
    done = maintenance.prune(repo, dry_run=False)
    assert done.temporaries_removed == len(stale)
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and all(path.exists() for path in foreign)
    assert maintenance.check(repo, read_data=True).errors == []


def test_a_restore_of_the_latest_dated_ahead_says_so(
    history: tuple[Path, str, list[str]], root_key: bytes, tmp_path: Path
) -> None:
    """The latest is the snapshot with the greatest date: one dated years ahead (its
    device's clock was) stays the latest until then, and every backup made since is
    passed over without a word. The restore says so, naming the newest one that is not
    dated ahead; by id, it is what was asked for."""
    source, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    old = repo.read_snapshot(ids[0])
    assert old.entries is not None
    future_us = int((datetime.now(UTC) + timedelta(days=3650)).timestamp() * 1e6)
    planted, data = snapshots.seal(
        root_key, repo.keys.repo_id, None, old.summary, old.entries, future_us
    )
    (tmp_path / "repo" / "snapshots" / planted.hex()).write_bytes(data)
    info = restore_snapshot(repo_url, root_key, tmp_path / "latest")
    assert info.backup_id == planted.hex()
    (warning,) = [w for w in info.warnings if planted.hex() in w]
    assert "ahead of this device's clock" in warning and ids[-1] in warning
    by_id = restore_snapshot(repo_url, root_key, tmp_path / "by-id", planted.hex())
    assert by_id.warnings == []
    newest = restore_snapshot(repo_url, root_key, tmp_path / "newest", ids[-1])
    assert newest.warnings == [] and snapshot(tmp_path / "newest") == snapshot(source)


def test_storage_listing_the_newest_snapshot_but_not_serving_it_is_noticed(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage that lists and serves apart (S3, WebDAV) kept the newest snapshot in the
    listing and answered "not found" to its read: restore of the latest gave the older
    one and `create` took it as parent, with no word, since the rollback checks compared
    the device's record with the listing (review s42, F1)."""
    source, repo_url, state, (first, second) = _two_snapshots(tmp_path, root_key)
    real_get = Backend.get

    def hiding(self: Backend, name: str, *args: object, **kwargs: object) -> bytes:
        if name == f"snapshots/{second}":
            raise MissingObject(f"{name} is not there")
        return real_get(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Backend, "get", hiding)
    restored = restore_snapshot(repo_url, root_key, tmp_path / "out", state_dir=state)
    assert restored.backup_id == first and (tmp_path / "out" / "ver.txt").read_text() == "v1"
    assert second not in restored.passed_over  # not damaged: `forget --damaged` leaves it
    assert [w for w in restored.warnings if second in w and "storage may be hiding it" in w]
    made = create_snapshot(source, repo_url, root_key, state_dir=state)
    assert [w for w in made.warnings if second in w and "storage may be hiding it" in w]


def test_a_forgotten_snapshot_storage_brings_back_stays_forgotten(
    tmp_path: Path, root_key: bytes
) -> None:
    """`backup forget` writes an authentic record, then deletes the snapshot; storage that
    kept a copy and put it back made it the latest again, and check said nothing (review
    s42, F3). It is now left out as forgotten, warned of, and the next forget deletes it;
    prune keeps the record."""
    _, repo_url, state, (first, second) = _two_snapshots(tmp_path, root_key)
    stored = tmp_path / "repo" / "snapshots" / second
    copy = stored.read_bytes()
    repo = maintenance.open_repository(repo_url, root_key)
    assert maintenance.forget(repo, Policy(), dry_run=False, ids=[second])[1] == [second]
    stored.write_bytes(copy)  # storage brings it back
    repo = maintenance.open_repository(repo_url, root_key)
    assert [s.snapshot_id for s in maintenance.list_snapshots(repo)] == [first]
    assert repo.leftovers == {second}
    restored = restore_snapshot(repo_url, root_key, tmp_path / "out", state_dir=state)
    assert restored.backup_id == first
    assert [w for w in restored.warnings if second in w and "`backup forget`" in w]
    checked = maintenance.check(repo, read_data=False)
    assert checked.errors == [] and checked.snapshots == 1
    assert [w for w in checked.warnings if second in w and "still holds it" in w]
    maintenance.prune(repo, dry_run=False)
    stored.write_bytes(copy)  # and again, after a prune
    repo = maintenance.open_repository(repo_url, root_key)
    assert [s.snapshot_id for s in maintenance.list_snapshots(repo)] == [first]
    _, removed, _ = maintenance.forget(repo, Policy(last=5), dry_run=False)
    assert removed == [second] and not stored.exists()
    assert maintenance.check(repo, read_data=False).warnings == []


def test_prune_deletes_nothing_while_storage_hides_a_snapshot_this_device_made(
    tmp_path: Path, root_key: bytes
) -> None:
    """Storage hiding the newest snapshot during a prune had this device delete that
    snapshot's own data, exit 0 (review s42, F4). With the device's state, prune now
    refuses and deletes nothing; a backup made since (which records its new last
    snapshot) lets it go on, as after a snapshot removed by hand."""
    source, repo_url, state_dir, (_, second) = _two_snapshots(tmp_path, root_key)
    hidden = tmp_path / "repo" / "snapshots" / second
    aside = tmp_path / "aside"
    hidden.rename(aside)
    repo = maintenance.open_repository(repo_url, root_key)
    state = DeviceState(state_dir, repo.keys.repo_id, place_of(repo.backend.storage))
    data = sorted(os.listdir(tmp_path / "repo" / "data"))
    with pytest.raises(RollbackSuspected, match=second) as refused:
        maintenance.prune(repo, dry_run=False, state=state)
    assert "storage may be hiding it" in refused.value.message
    assert sorted(os.listdir(tmp_path / "repo" / "data")) == data
    aside.rename(hidden)  # storage shows it again: the prune goes on
    maintenance.prune(repo, dry_run=False, state=state)
    restore_snapshot(repo_url, root_key, tmp_path / "out", second)
    hidden.unlink()  # removed by hand, on purpose
    with pytest.raises(RollbackSuspected) as refused:
        maintenance.prune(repo, dry_run=True, state=state)
    assert "`backup forget ID`" in str(refused.value.hint)
    # Said so by its id (it is in no listing), the prune goes on (review s42-B, B4).
    _, removed, _ = maintenance.forget(repo, Policy(), dry_run=False, ids=[second], state=state)
    assert removed == [second] and repo.was_forgotten(second)
    maintenance.prune(repo, dry_run=False, state=state)
    create_snapshot(source, repo_url, root_key, state_dir=state_dir)
    maintenance.prune(repo, dry_run=False, state=state)


def test_prune_reads_grown_snapshots_one_at_a_time(
    history: tuple[Path, str, list[str]], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage can grow an authentic snapshot by gigabytes (its header and summary still
    open, so the whole object is read); prune read 8 at once whatever their size (storage
    review s42, F2). As many are read at once as fit in a budget, by their listed sizes."""
    _, repo_url, _ = history
    repo = maintenance.open_repository(repo_url, root_key)
    reading: dict[int, int] = {}  # thread -> reads under way on it (one nests another)
    most = [0]
    lock = threading.Lock()
    read = Repository.read_snapshot

    def counted(self: Repository, name: str, **kwargs: bool) -> object:
        me = threading.get_ident()
        with lock:
            reading[me] = reading.get(me, 0) + 1
            most[0] = max(most[0], len(reading))
        try:
            time.sleep(0.05)
            return read(self, name, **kwargs)
        finally:
            with lock:
                reading[me] -= 1
                if not reading[me]:
                    del reading[me]

    monkeypatch.setattr(Repository, "read_snapshot", counted)
    maintenance.snapshot_references(repo)
    assert most[0] > 1  # small snapshots: several at once
    largest = max(repo.snapshot_names().values())
    monkeypatch.setattr(maintenance, "_SNAPSHOT_READ_BUDGET", 2 * largest - 1)
    most[0] = 0
    maintenance.snapshot_references(repo)
    assert most[0] == 1


def test_a_newest_snapshot_whose_tree_is_damaged_is_passed_over_and_forget_damaged_removes_it(
    tmp_path: Path, root_key: bytes
) -> None:
    """One byte appended to the newest snapshot (its header and summary still open) stopped
    every restore of the latest, and prune's hint, `forget --damaged`, removed nothing
    (storage review s42, F7). The latest that opens is restored, saying what it passed
    over, and `forget --damaged` removes it."""
    _, repo_url, _, (first, second) = _two_snapshots(tmp_path, root_key)
    with open(tmp_path / "repo" / "snapshots" / second, "ab") as grown:
        grown.write(b"\0")
    restored = restore_snapshot(repo_url, root_key, tmp_path / "out")
    assert restored.backup_id == first and second in restored.passed_over
    repo = maintenance.open_repository(repo_url, root_key)
    with pytest.raises(BackupVaultError, match=second):
        maintenance.prune(repo, dry_run=True)
    kept, removed, _ = maintenance.forget(repo, Policy(), dry_run=False, damaged=True)
    assert (kept, removed) == ([first], [second])
    maintenance.prune(repo, dry_run=False)


def test_prune_reads_no_more_of_a_snapshot_than_storage_lists(
    history: tuple[Path, str, list[str]], root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read budget goes by listed sizes; storage listing a small size and serving a
    grown object got 8 large reads at once (review s42-B, B5). A snapshot served longer
    than listed is now refused as unreadable, and prune deletes nothing."""
    _, repo_url, ids = history
    repo = maintenance.open_repository(repo_url, root_key)
    listed = repo.snapshot_names()
    monkeypatch.setattr(repo, "snapshot_names", lambda: {**listed, ids[-1]: 100})
    with pytest.raises(BackupVaultError, match=ids[-1]):
        maintenance.prune(repo, dry_run=False)


def test_a_last_snapshot_there_but_damaged_is_passed_over_not_called_gone(
    tmp_path: Path, root_key: bytes
) -> None:
    """The device's last snapshot, there but damaged, was also reported "gone ... storage
    may be hiding it" (review s42-B, B6): it is only passed over, as damaged."""
    _, repo_url, state, (first, second) = _two_snapshots(tmp_path, root_key)
    stored = tmp_path / "repo" / "snapshots" / second
    data = bytearray(stored.read_bytes())
    data[snapshots.HEADER_LEN + 10] ^= 1  # in its sealed summary
    stored.write_bytes(bytes(data))
    restored = restore_snapshot(repo_url, root_key, tmp_path / "out", state_dir=state)
    assert restored.backup_id == first and second in restored.passed_over
    assert not [w for w in restored.warnings if "is gone" in w], restored.warnings


def test_ls_lists_each_folder_followed_by_what_is_in_it(tmp_path: Path, root_key: bytes) -> None:
    """As restic's `ls` and `find`: the snapshot stores a folder's children before its
    sub-folders' contents, and `ls` listed them so, `b` between `a` and `a/x` (user
    review s43)."""
    source = tmp_path / "src"
    (source / "a" / "in").mkdir(parents=True)
    for name in ("a/x", "a/in/deep", "a-b", "b"):
        (source / name).write_text(name)
    repo_url = str(tmp_path / "repo")
    create_snapshot(source, repo_url, root_key)
    repo = maintenance.open_repository(repo_url, root_key)
    _, entries = maintenance.ls(repo, "latest")
    assert [e.path for e in entries] == [b"a", b"a/in", b"a/in/deep", b"a/x", b"a-b", b"b"]
    _, under_a = maintenance.ls(repo, "latest", ("a",))
    assert [e.path for e in under_a] == [b"a", b"a/in", b"a/in/deep", b"a/x"]
