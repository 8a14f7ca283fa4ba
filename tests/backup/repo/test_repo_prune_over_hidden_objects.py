"""What a prune does on storage that hides objects while it runs (storage review s49).

Storage (or a listing that lags: WebDAV, sftp, a sync tool) that leaves an object out of
one listing could have a prune act on that listing for good."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from backupvault.backup.errors import RollbackSuspected
from backupvault.backup.repo import Repository, create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import MissingObject
from backupvault.backup.repo.state import DeviceState
from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


def _age(repo: Path) -> None:
    """Every object written two hours ago (so prune may delete unindexed packs)."""
    old = time.time() - 7200
    for p in repo.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)


def _two_snapshots(tmp_path: Path, root_key: bytes, state: Path) -> tuple[Path, Path, str, str]:
    source = tmp_path / "src"
    source.mkdir()
    (source / "keep").write_bytes(os.urandom(3000))
    (source / "only-in-first").write_bytes(os.urandom(3000))
    repo = tmp_path / "repo"
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL, state_dir=state)
    (source / "only-in-first").unlink()
    second = create_snapshot(source, str(repo), root_key, state_dir=state)
    assert second.parent_id == first.snapshot_id
    _age(repo)
    return source, repo, first.snapshot_id, second.snapshot_id


def test_prune_does_not_delete_the_data_of_a_hidden_parent_snapshot(
    tmp_path: Path, root_key: bytes
) -> None:
    """Snapshot 2 names snapshot 1 as its parent, and no forget record says 1 was
    forgotten: prune reads snapshot 2's header (it reads every tree), so it holds the very
    evidence `backup check` warns of ("storage may be hiding it"), yet it deleted every
    chunk only snapshot 1 used. Storage that hid snapshot 1 for the prune's run and put it
    back had destroyed it. The device-state guard (review s42, F4) covers only the
    device's LAST snapshot of each source, not older ones in its own chain."""
    state = tmp_path / "state"
    _source, repo, first, _second = _two_snapshots(tmp_path, root_key, state)
    hidden = tmp_path / "hidden-snapshot"
    shutil.move(repo / "snapshots" / first, hidden)  # storage leaves it out of listings

    opened = Repository.open(Storage(str(repo)), root_key)
    device = DeviceState(state, opened.keys.repo_id, str(repo))
    pruned_anyway = True
    try:
        maintenance.prune(opened, dry_run=False, state=device, max_unused=0.0)
    except (RollbackSuspected, BackupVaultError):
        pruned_anyway = False
    shutil.move(hidden, repo / "snapshots" / first)  # and shows it again

    try:
        restore_snapshot(str(repo), root_key, tmp_path / "restored", first)
    except BackupVaultError as exc:
        pytest.fail(
            f"prune (refused: {not pruned_anyway}) deleted the data of snapshot {first}, which"
            f" storage hid while it ran although its child names it as parent: {exc}"
        )


def test_prune_over_a_hidden_parent_says_why_and_goes_on_once_it_is_forgotten_by_id(
    tmp_path: Path, root_key: bytes
) -> None:
    """Without device state too (another device's prune). A parent removed on purpose (by
    hand, or by a version that wrote no forget records) is recorded by `backup forget`
    with its whole id, although no listing shows it; then prune goes on."""
    state = tmp_path / "state"
    _source, repo, first, second = _two_snapshots(tmp_path, root_key, state)
    (repo / "snapshots" / first).unlink()
    data = sorted(os.listdir(repo / "data"))
    opened = Repository.open(Storage(str(repo)), root_key)
    for dry_run in (True, False):
        with pytest.raises(RollbackSuspected, match=f"snapshot {second}'s parent {first}") as no:
            maintenance.prune(opened, dry_run=dry_run, max_unused=0.0)
        assert "storage may be hiding it" in no.value.message
        assert "`backup forget ID` with its whole id" in str(no.value.hint)
        assert sorted(os.listdir(repo / "data")) == data
    _, removed, _ = maintenance.forget(opened, maintenance.Policy(), dry_run=False, ids=[first])
    assert removed == [first] and opened.was_forgotten(first)
    maintenance.prune(opened, dry_run=False, max_unused=0.0)
    assert sorted(os.listdir(repo / "data")) != data  # the first snapshot's data is freed
    restore_snapshot(str(repo), root_key, tmp_path / "restored", second)


def _a_pack_the_snapshot_uses(repo: Path, root_key: bytes, snapshot_id: str) -> str:
    opened = Repository.open(Storage(str(repo)), root_key)
    index, _, _ = opened.load_index()
    snap = opened.read_snapshot(snapshot_id)
    used = {c for e in snap.entries or [] for c in e.chunks}
    pack = next(p for p, entries in index.packs.items() if used & {e.chunk_id for e in entries})
    return pack.hex()


def test_a_pack_left_out_of_one_listing_is_not_dropped_from_the_index_for_good(
    tmp_path: Path, root_key: bytes
) -> None:
    """A pack the index lists, which snapshots use, is missing from the listing prune
    reads. Prune wrote an index without it and superseded the old one: when storage
    listed the pack again, its data was all there and authentic, but every restore that
    needed it failed ("in no pack the index lists"). restic's prune refuses on missing
    packs."""
    state = tmp_path / "state"
    _source, repo, _first, second = _two_snapshots(tmp_path, root_key, state)
    victim = _a_pack_the_snapshot_uses(repo, root_key, second)
    away = tmp_path / "pack-away"
    shutil.move(repo / "data" / victim, away)

    opened = Repository.open(Storage(str(repo)), root_key)
    device = DeviceState(state, opened.keys.repo_id, str(repo))
    with contextlib.suppress(BackupVaultError):  # refusing is fine
        maintenance.prune(opened, dry_run=False, state=device)
    shutil.move(away, repo / "data" / victim)  # listed again, every byte intact

    repaired = maintenance.repair(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    try:
        restore_snapshot(str(repo), root_key, tmp_path / "restored", second)
    except BackupVaultError as exc:
        pytest.fail(
            f"pack {victim} is back and intact, yet after prune and `backup repair`"
            f" (packs_indexed={repaired.packs_indexed}, files named lost:"
            f" {[d.paths for d in repaired.damaged_files]}) the restore fails: {exc.message}"
        )


def test_prune_refuses_while_a_pack_in_use_is_missing_and_deletes_nothing(
    tmp_path: Path, root_key: bytes
) -> None:
    """The refusal is a damaged repository's (exit 9), names the pack, says what to do,
    and leaves every object as it was, also in a dry run."""
    state = tmp_path / "state"
    _source, repo, _first, second = _two_snapshots(tmp_path, root_key, state)
    victim = _a_pack_the_snapshot_uses(repo, root_key, second)
    (repo / "data" / victim).unlink()
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if "locks" not in p.parts)
    opened = Repository.open(Storage(str(repo)), root_key)
    for dry_run in (True, False):
        with pytest.raises(MissingObject, match=victim) as refused:
            maintenance.prune(opened, dry_run=dry_run, max_unused=0.0)
        assert refused.value.exit_code == 9
        assert "prune deleted and rewrote nothing" in refused.value.message
        assert "`backup repair`" in str(refused.value.hint)
        after = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if "locks" not in p.parts)
        assert after == before
    # Really gone: the repair drops it from the index, and prune goes on.
    maintenance.repair(opened, dry_run=False)
    maintenance.prune(opened, dry_run=False)


def test_repair_indexes_an_intact_pack_no_index_names_with_no_other_damage(
    tmp_path: Path, root_key: bytes
) -> None:
    """A repair run while storage did not list a pack drops it from the index (as it
    should: it is missing). Listed again, whole, the next repair found no damage and left
    it out of the index, naming its files lost; now it indexes it."""
    state = tmp_path / "state"
    _source, repo, _first, second = _two_snapshots(tmp_path, root_key, state)
    victim = _a_pack_the_snapshot_uses(repo, root_key, second)
    away = tmp_path / "pack-away"
    shutil.move(repo / "data" / victim, away)
    dropped = maintenance.repair(Repository.open(Storage(str(repo)), root_key), dry_run=False)
    assert dropped.packs_missing == [victim]
    shutil.move(away, repo / "data" / victim)  # listed again, every byte intact

    opened = Repository.open(Storage(str(repo)), root_key)
    checked = maintenance.check(opened, read_data=False)
    assert checked.errors and checked.damaged_files  # its chunks are in no index
    repaired = maintenance.repair(opened, dry_run=False)
    assert (repaired.packs_indexed, repaired.damaged_files) == (1, [])
    assert (repaired.chunks_lost, repaired.packs_damaged) == ([], [])
    checked = maintenance.check(opened, read_data=True)
    assert (checked.errors, checked.damaged_files) == ([], [])
    restore_snapshot(str(repo), root_key, tmp_path / "restored", second)
    # Nothing left to do: the next repair writes nothing.
    index_objects = sorted(os.listdir(repo / "index"))
    assert maintenance.repair(opened, dry_run=False).packs_indexed == 0
    assert sorted(os.listdir(repo / "index")) == index_objects


def test_check_calls_lost_chunks_not_repairable_beside_a_pack_no_index_names_holding_others(
    tmp_path: Path, root_key: bytes
) -> None:
    """Check calls chunks in no index repairable when a pack no index names holds them
    (repair indexes it); one that holds other chunks does not make them so, and keeps
    its warning."""
    state = tmp_path / "state"
    _source, repo, _first, second = _two_snapshots(tmp_path, root_key, state)
    victim = _a_pack_the_snapshot_uses(repo, root_key, second)
    (repo / "data" / victim).unlink()
    opened = Repository.open(Storage(str(repo)), root_key)
    assert maintenance.repair(opened, dry_run=False).packs_missing == [victim]
    # A backup of other data that left its packs and nothing else (its index and
    # snapshot gone): packs no index names, holding none of the chunks lost.
    other = tmp_path / "other"
    other.mkdir()
    (other / "new").write_bytes(os.urandom(3000))
    packs, indexes = set(os.listdir(repo / "data")), set(os.listdir(repo / "index"))
    made = create_snapshot(other, str(repo), root_key)
    for name in set(os.listdir(repo / "index")) - indexes:
        (repo / "index" / name).unlink()
    (repo / "snapshots" / made.snapshot_id).unlink()
    left = sorted(set(os.listdir(repo / "data")) - packs)
    assert left

    checked = maintenance.check(Repository.open(Storage(str(repo)), root_key), read_data=True)
    assert checked.errors and all(
        e.startswith("snapshot ") and e.endswith(" in no index") for e in checked.errors
    )
    assert checked.damaged_files and checked.repairable is False
    assert sorted(w.split()[1] for w in checked.warnings) == left
