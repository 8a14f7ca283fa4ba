"""List, diff, forget, prune, check and repair a repository.

prune, crash-safe in this order: (1) copy the chunks still used out of packs that are
mostly unused into new packs; (2) write index objects that list every pack kept, then
ones that supersede all earlier ones (`split_index`); (3) delete the superseded index
objects; (4) delete the packs no longer listed; (5) remove stale locks and the day-old
temporary objects of interrupted uploads (`.partial`). An interruption anywhere loses
nothing: before (2) the new packs are unindexed extras (adopted by the next backup or
removed by the next prune); within it, old and new index objects are both live; after
it, superseded index objects are ignored and unlisted packs are garbage.

repair (restic's `repair packs`), in prune's order: (1) copy the chunks that authenticate
out of damaged packs into new packs, read back; (2) write the index, without the chunks
that did not (nor those of missing packs), read back; (3) delete the superseded index
objects; (4) delete the damaged packs. Interrupted before (2), the new packs are
unindexed extras (the next repair indexes them); after it, the damaged packs are, and the
next repair finds them damaged and deletes them. Only packs found damaged are deleted.

forget, prune and repair take the exclusive lock, so none runs beside a backup: a new
snapshot's chunks are never deleted from under it. A lock taken for stale (a backup
suspended past the expiry, or seen from a clock that is ahead) is removed before prune
reads or deletes anything; the backup checks its lock before it writes its index and
again before its snapshot, and stops if it is gone; prune checks its own the same way
before its index and before each deletion (suspended past the expiry, a backup may have
taken it for stale and reuse what it found unused). prune deletes unindexed packs only
once a lock expiry old (a running backup's are fresh); repair only those that fail to
read whole (a pack is complete once storage shows it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backupvault.backup.errors import RollbackSuspected
from backupvault.backup.progress import NoProgress, Progress
from backupvault.backup.repo import snapshots
from backupvault.backup.repo.backend import FOLDERS, MissingObject
from backupvault.backup.repo.damage import DamagedFiles, files_using
from backupvault.backup.repo.index import (
    OBJECT_ID_LEN,
    Index,
    IndexFile,
    PackEntry,
    max_index_len,
    max_pack_len,
    open_pack_header,
)
from backupvault.backup.repo.repository import (
    ANY_SNAPSHOT,
    EXCLUSIVE,
    LOCK_EXPIRY_S,
    REPACK_UNUSED_PERCENT,
    Lock,
    PackWriter,
    Repository,
    SnapshotFilter,
    host_name,
    leftover_warning,
)
from backupvault.backup.repo.restore import select, under, wanted_paths
from backupvault.backup.repo.state import DeviceState
from backupvault.backup.repo.tree import FILE, ROOT, Entry
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput, UsageError

#: By default a pack is repacked once more than this share of it is unused (`backup prune
#: --max-unused`): repacking reads and writes the whole pack to drop a little of it.
REPACK_UNUSED_FRACTION = REPACK_UNUSED_PERCENT / 100
STALE_TEMPORARY_S = 24 * 3600  # a temporary object not written to for this long is garbage
UNINDEXED_PACK_MIN_AGE_S = LOCK_EXPIRY_S  # an unindexed pack younger may be a backup's


def open_repository(
    storage_url: str, root_key: bytes, storage_options: Mapping[str, Any] | None = None
) -> Repository:
    return Repository.open(Storage(storage_url, storage_options), root_key)


# ---- list, diff -----------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotSummary:
    snapshot_id: str
    parent_id: str | None
    created_at: datetime
    source: str
    host: str
    files: int
    size: int
    added: int
    stored: int
    key: str  # how RK is kept: "password", "recovery code", "unknown" (older snapshots)


def summarize(snapshot: snapshots.Snapshot, object_size: int) -> SnapshotSummary:
    """`stored` counts what the backup wrote, as `backup create` reports it: the packs and
    the index its summary counts, and the snapshot object itself (`object_size`), which
    cannot count its own size."""
    parent = snapshot.header.parent
    s = snapshot.summary
    return SnapshotSummary(
        snapshot.id_hex,
        parent.hex() if parent else None,
        snapshot.header.created_at,
        s.source,
        s.host,
        s.files,
        s.size,
        s.added,
        s.stored + object_size,
        s.key_name,
    )


def list_snapshots(repo: Repository, only: SnapshotFilter = ANY_SNAPSHOT) -> list[SnapshotSummary]:
    sizes = repo.snapshot_names()
    return [
        summarize(s, sizes[s.id_hex]) for s in repo.list_snapshots(sizes) if only.matches(s.summary)
    ]


def ls(
    repo: Repository,
    snapshot_id: str,
    paths: tuple[str, ...] = (),
    only: SnapshotFilter = ANY_SNAPSHOT,
) -> tuple[SnapshotSummary, list[Entry]]:
    """What snapshot `snapshot_id` (a prefix, or "latest" of those `only` lets through)
    holds, each folder followed by what is in it, by name (as restic's `ls` and `find`
    list; the snapshot stores a folder's children before its sub-folders' contents):
    every file, folder and link, or only those under `paths` (as `backup restore
    --include` takes them; a path it does not hold raises BackupNotFound)."""
    snapshot = repo.find_snapshot(snapshot_id, only)
    assert snapshot.entries is not None
    chosen = select(
        snapshot.entries,
        paths,
        hint="give a path inside the snapshot as `backup ls ID` shows it (relative to the"
        " folder that was backed up)",
        source=snapshot.summary.source,
    )
    wanted = wanted_paths(paths)
    if not wanted.keys() - {b"", b"."}:
        shown = [e for e in chosen if e.path != ROOT]
    else:
        # Only what is under the paths given: `select` adds the folders above them for a
        # restore, which has to make them.
        shown = [e for e in chosen if under(e.path, wanted)]
    return summarize(snapshot, 0), sorted(shown, key=lambda e: e.path.split(b"/"))


@dataclass(frozen=True)
class Change:
    kind: str  # "+" added, "-" removed, "M" content changed, "T" type changed, "U" metadata
    path: str
    size_before: int
    size_after: int


def diff(
    repo: Repository, first: str, second: str, warnings: list[str] | None = None
) -> list[Change]:
    """What changed from snapshot `first` to `second`; in `warnings`, that the two are of
    different folders or hosts (`latest` is of whichever was backed up last: user review
    s43, where a diff against it compared two folders without a word)."""
    older, newer = repo.find_snapshot(first), repo.find_snapshot(second)
    a_of, b_of = (
        (older.summary.host, older.summary.source),
        (newer.summary.host, newer.summary.source),
    )
    if a_of != b_of and warnings is not None:
        warnings.append(
            f"the two snapshots are not of one folder on one host: {older.id_hex[:8]} of {a_of[1]}"
            f" ({a_of[0] or 'no host name'}), {newer.id_hex[:8]} of {b_of[1]}"
            f" ({b_of[0] or 'no host name'}); `backup list` shows each one's HOST and SOURCE"
        )
    old = older.entries or []
    new = newer.entries or []
    before = {e.path: e for e in old}
    after = {e.path: e for e in new}
    changes: list[Change] = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        name = os.fsdecode(path)
        if a is None and b is not None:
            changes.append(Change("+", name, 0, b.size))
        elif b is None and a is not None:
            changes.append(Change("-", name, a.size, 0))
        elif a is not None and b is not None:
            if a.kind != b.kind:
                changes.append(Change("T", name, a.size, b.size))
            elif a.chunks != b.chunks or a.target != b.target:
                changes.append(Change("M", name, a.size, b.size))
            elif (a.mode, a.mtime_ns) != (b.mode, b.mtime_ns):
                changes.append(Change("U", name, a.size, b.size))
    return changes


# ---- forget -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly or self.yearly)


def apply_policy(
    found: list[SnapshotSummary], policy: Policy, now: datetime | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(kept ids, removed ids, ids dated ahead). Per (host, source), newest first: the
    `last` newest, and the newest of each of the `daily` latest days (weeks, months,
    years) that have a snapshot. A snapshot dated more than AHEAD_SLACK after `now` (this
    device's clock) is kept and not counted: made by a device whose clock was ahead, it
    would be the newest until its date, and `last=1` forgot every real one after it."""
    if policy.empty():
        raise UsageError(
            "say what to keep: --keep-last, --keep-daily, --keep-weekly, --keep-monthly or"
            " --keep-yearly"
        )
    limit = (now or datetime.now(UTC)) + snapshots.AHEAD_SLACK
    ahead = [s.snapshot_id for s in found if s.created_at > limit]
    groups: dict[tuple[str, str], list[SnapshotSummary]] = {}
    for s in found:
        if s.created_at <= limit:
            groups.setdefault((s.host, s.source), []).append(s)
    kept: set[str] = set(ahead)
    buckets: list[tuple[int, Callable[[datetime], object]]] = [
        (policy.daily, lambda t: t.date()),
        (policy.weekly, lambda t: t.isocalendar()[:2]),
        (policy.monthly, lambda t: (t.year, t.month)),
        (policy.yearly, lambda t: t.year),
    ]
    for members in groups.values():
        members.sort(key=lambda s: s.created_at, reverse=True)
        kept.update(s.snapshot_id for s in members[: policy.last])
        for count, bucket in buckets:
            seen: list[object] = []
            for s in members:
                key = bucket(s.created_at.astimezone())
                if key not in seen:
                    if len(seen) >= count:
                        break
                    seen.append(key)
                    kept.add(s.snapshot_id)
    ordered = [s.snapshot_id for s in found]
    return [i for i in ordered if i in kept], [i for i in ordered if i not in kept], ahead


def forget(
    repo: Repository,
    policy: Policy,
    *,
    dry_run: bool,
    damaged: bool = False,
    ids: Collection[str] = (),
    state: DeviceState | None = None,
    only: SnapshotFilter = ANY_SNAPSHOT,
    warnings: list[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Delete the snapshots `policy` does not keep (an empty policy keeps every one; it
    applies only to those `only` lets through, and keeps the others), or
    those `ids` name (ids or unique prefixes, every one resolved before anything is
    deleted), and with `damaged` the snapshot objects that cannot be read
    (`repo.damaged`, each read a second time first: one that opens then is kept, and
    said so in `warnings`); (kept, removed, those kept because they are dated ahead of
    this device's clock). Every policy keeps the newest of each source, so the device state's
    "last made" snapshot is never forgotten by one; one forgotten by id is replaced in
    `state` by the newest this host still has of its source. A whole id may name one
    gone from the listing that prune refuses over: its forget record is written."""
    if ids and not policy.empty():
        raise UsageError("give snapshot ids or a policy to forget by, not both")
    with repo.lock(EXCLUSIVE):
        names = repo.snapshot_names()
        found = list_snapshots(repo)
        # A snapshot gone from the listing that prune refuses over may be named by its
        # whole id: the user says it was removed on purpose (a forget record is written),
        # which lets prune go on. This device's last snapshot of a source (review s42-B,
        # B4), or a parent a listed snapshot names (storage review s49, F3).
        lasts = set(state.all_made().values()) if state is not None else set()
        recordable = (lasts | {s.parent_id for s in found if s.parent_id}) - names.keys()
        chosen = {
            wanted if (wanted := i.strip().lower()) in recordable else repo.snapshot_id(i, names)
            for i in ids
        }
        removed: list[str]
        ahead: list[str] = []
        if ids:
            kept = [s.snapshot_id for s in found if s.snapshot_id not in chosen]
            removed = [s.snapshot_id for s in found if s.snapshot_id in chosen]
            removed += sorted(chosen - set(removed))  # damaged or no snapshot at all
        elif policy.empty():
            kept, removed = [s.snapshot_id for s in found], []
        else:
            _, removed, ahead = apply_policy([s for s in found if only.matches(s)], policy)
            gone = set(removed)  # what the policy keeps, and every snapshot `only` leaves out
            kept = [s.snapshot_id for s in found if s.snapshot_id not in gone]
        if damaged:
            # Trees too (read whole, as check does): a snapshot whose tree does not open is
            # passed over by restore, and stops prune, whose hint sends the user here.
            for summary in found:
                if summary.snapshot_id not in removed and only.matches(summary):
                    try:
                        repo.read_snapshot(summary.snapshot_id)
                    except (AuthenticationFailed, InvalidInput) as exc:
                        repo.found_damaged(summary.snapshot_id, exc)
            opened = _read_again(repo, set(repo.damaged) - set(removed), warnings)
            kept += [name for name in opened if name not in kept]
            removed += sorted(set(repo.damaged) - set(removed))
            kept = [k for k in kept if k not in repo.damaged]
        # Forgotten before, still in storage (`Repository.leftovers`): deleted again.
        removed += sorted(repo.leftovers - set(removed))
        if not dry_run:
            for snapshot_id in removed:
                if is_object_id(snapshot_id):
                    repo.mark_forgotten(snapshot_id)  # first: a crash between keeps both
                repo.backend.delete(f"snapshots/{snapshot_id}")
            repo.leftovers -= set(removed)
            if state is not None and removed:
                here, gone = host_name(), set(removed)
                newest = {
                    s.source: s.snapshot_id
                    for s in sorted(found, key=lambda s: s.created_at)
                    if s.host == here and s.snapshot_id not in gone
                }
                state.forgot(gone, newest)
    return kept, removed, ahead


def _read_again(repo: Repository, names: Collection[str], warnings: list[str] | None) -> list[str]:
    """Read each snapshot of `names` (found damaged) a second time, whole, before forget
    deletes anything; those that open now (taken off `repo.damaged`, to keep). One read
    garbled on its way (once) had `forget --damaged` delete an authentic snapshot and
    record it forgotten for good (storage review s49, F5), as one had repair drop good
    chunks before `_confirm_damage` read a damaged pack twice."""
    opened = []
    for name in sorted(names):
        try:
            repo.read_snapshot(name)
        except (AuthenticationFailed, InvalidInput):
            continue  # damaged twice: removed
        why = repo.damaged.pop(name)
        opened.append(name)
        if warnings is not None:
            warnings.append(
                f"snapshot {name} could not be read once ({why}), and read whole the second"
                " time: kept; storage, or the way to it, may be failing: run `backup check`"
                " later"
            )
    return opened


def is_object_id(name: str) -> bool:
    try:
        return len(bytes.fromhex(name)) == OBJECT_ID_LEN and name == name.lower()
    except ValueError:
        return False


# ---- prune ------------------------------------------------------------------------------


@dataclass
class PruneResult:
    packs: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_before: int = 0
    bytes_freed: int = 0
    bytes_written: int = 0
    unused_chunks: int = 0
    #: Unused chunks left where they are, in packs unused by no more than `max_unused`.
    unused_kept_chunks: int = 0
    unused_kept_bytes: int = 0
    temporaries_removed: int = 0  # left by interrupted uploads (would be, with dry_run)
    #: Packs no index names, kept for being younger than UNINDEXED_PACK_MIN_AGE_S (a
    #: running backup's, or one that failed: a full disk's).
    young_unindexed_packs: int = 0
    young_unindexed_bytes: int = 0
    #: Packs no index names whose age the storage does not give: kept, whatever it is.
    undated_unindexed_packs: int = 0
    undated_unindexed_bytes: int = 0
    dry_run: bool = False


#: Bytes of snapshot objects prune reads at once, at most (by their listed sizes).
_SNAPSHOT_READ_BUDGET = 512 << 20


def snapshot_references(repo: Repository) -> set[bytes]:
    """The chunks the snapshots use. Raises RollbackSuspected while a snapshot's parent
    is gone with no forget record: storage hiding it for the prune had this device delete
    its data (storage review s49, F3; `_refuse_over_hidden_snapshots` covers only the
    device's last snapshots, which no snapshot names as parent)."""
    listed = repo.snapshot_names()
    names = list(listed)

    def read(name: str) -> snapshots.Snapshot:
        try:
            return repo.read_snapshot(name, most=listed[name])
        except (AuthenticationFailed, InvalidInput) as exc:
            raise type(exc)(
                f"snapshot {name} cannot be read: {exc.message}",
                hint="prune deletes nothing while a snapshot cannot be read (it may use any "
                "pack); `backup forget --damaged` removes snapshots that cannot be read",
            ) from None

    # As many at once as fit in a budget, by the sizes storage lists: storage that grows
    # authentic snapshots by gigabytes made 8 at once hold 3.7 GB and more (storage
    # review s42, F2).
    workers = max(1, min(8, _SNAPSHOT_READ_BUDGET // max(1, max(listed.values(), default=1))))
    with ThreadPoolExecutor(workers) as pool:
        trees = list(pool.map(read, names))
        gone = {
            parent.hex(): f"snapshot {snap.id_hex}'s parent"
            for snap in trees
            if (parent := snap.header.parent) is not None and parent.hex() not in listed
        }
        why = list(pool.map(repo.why_gone, gone, gone.values()))  # a record read each
    suspected = [m for pair in why for m in pair if m]
    if suspected:
        raise _rollback_suspected(suspected)
    used: set[bytes] = set()
    for snap in trees:
        for entry in snap.entries or []:
            if entry.kind == FILE:
                used.update(entry.chunks)
    return used


def prune(
    repo: Repository,
    *,
    dry_run: bool,
    progress: Progress | None = None,
    state: DeviceState | None = None,
    max_unused: float = REPACK_UNUSED_FRACTION,
) -> PruneResult:
    """Delete what no snapshot uses, repacking each pack more than `max_unused` (a share,
    0 to 1) of which is unused; progress: reading the snapshots (no total), then
    the bytes of the packs to repack. With `state`, nothing is deleted while a last
    snapshot this device made is gone with no forget record: storage hiding it for the
    prune would have this device delete its data (review s42, F4); nor, with or without
    it, while a snapshot's parent is (`snapshot_references`), or while a pack in use is
    missing from storage's listing (`_refuse_over_missing_packs`)."""
    reporter = progress or NoProgress()
    with repo.lock(EXCLUSIVE, "prune") as lock:
        if state is not None:
            _refuse_over_hidden_snapshots(repo, state)
        try:
            return _prune_locked(repo, lock, dry_run, reporter, max_unused)
        finally:
            reporter.finish()


def _refuse_over_hidden_snapshots(repo: Repository, state: DeviceState) -> None:
    """Only the device's last snapshots are read (one summary each): not every one, which
    prune reads whole anyway (review s42-B, B2)."""
    names = repo.snapshot_names()
    gone = []
    for source, last in sorted(state.all_made().items()):
        if last in names:
            try:
                repo.read_snapshot(last, with_tree=False)
                continue
            except MissingObject:
                pass  # listed, but not served: as gone, unless forgotten
            except (AuthenticationFailed, InvalidInput):
                continue  # there, damaged: prune stops on it anyway, naming it
        what = f"the last snapshot this device made of {source},"
        bad_record, warning = repo.why_gone(last, what)
        gone += [m for m in (bad_record, warning) if m]
    if gone:
        raise _rollback_suspected(
            gone, " (or a `backup create` of that folder records a new last one)"
        )


def _rollback_suspected(gone: list[str], or_else: str = "") -> RollbackSuspected:
    """Prune's refusal over snapshots that are `gone` (what is wrong, each) with no forget
    record; `or_else`: another way to record that one was removed on purpose."""
    return RollbackSuspected(
        "prune deletes nothing: " + "; ".join(gone),
        hint="if that snapshot was removed on purpose (by hand, or by a backupvault older"
        f" than forget records), `backup forget ID` with its whole id records that{or_else},"
        " then prune; otherwise storage may be rolled back or hiding it: check the storage"
        " first",
    )


def _prune_locked(
    repo: Repository, lock: Lock, dry_run: bool, reporter: Progress, max_unused: float
) -> PruneResult:
    reporter.start(None, "reading snapshots")
    if not dry_run:
        # Stale locks go first, before anything is read or deleted: a backup that still
        # runs behind one (suspended, or seen with a clock ahead of ours) then finds its
        # lock gone when it checks before writing its index and its snapshot, and stops.
        remove_stale_locks(repo)
    index_names = list(repo.backend.list("index"))
    index, sizes, _adopted = repo.load_index(adopt_unindexed=False)
    used = snapshot_references(repo)
    _refuse_over_missing_packs(index, sizes, used)
    # Forget records are kept for good (a few dozen bytes each): storage that kept a copy
    # of a forgotten snapshot could bring it back unseen once its record was gone (review
    # s42, F3).
    result = PruneResult(packs=len(sizes), dry_run=dry_run)
    result.bytes_before = sum(sizes.values())
    unindexed = [name for name in sizes if bytes.fromhex(name) not in index.packs]
    lost = sum(1 for chunk_id in used if chunk_id not in index.chunks)
    if lost and unindexed:
        # A chunk a snapshot uses that no index names may be in any unindexed pack (one
        # whose header could not be read, an index that did not open): deleting them
        # could delete it.
        raise BackupVaultError(
            f"{lost} chunk{'s' * (lost != 1)} the snapshots use {'are' if lost != 1 else 'is'}"
            f" in no index, and {len(unindexed)} pack{'s' * (len(unindexed) != 1)} no index"
            " names may hold them: prune deletes nothing",
            hint="run `backup check`; run prune again once every pack's header can be read"
            " (a storage error on the way) or the next `backup create` has indexed them",
        )
    # Only those written at least a lock expiry ago: a fresh one may be a running
    # backup's, not indexed yet (with no time from storage, kept).
    ages = repo.backend.ages("data") if unindexed else {}
    delete: list[str] = []
    for name in unindexed:
        age = ages.get(name)
        if age is not None and age >= UNINDEXED_PACK_MIN_AGE_S:
            delete.append(name)
        elif age is not None:
            result.young_unindexed_packs += 1
            result.young_unindexed_bytes += sizes[name]
        else:
            result.undated_unindexed_packs += 1
            result.undated_unindexed_bytes += sizes[name]
    repack: list[bytes] = []
    keep: dict[bytes, list[PackEntry]] = {}
    for pack_id, entries in index.packs.items():
        if pack_id.hex() not in sizes:
            continue  # missing, holding no chunk in use that only it has: nothing to keep
        unused = [e for e in entries if e.chunk_id not in used]
        result.unused_chunks += len(unused)
        unused_bytes = sum(e.length for e in unused)
        total = sum(e.length for e in entries) or 1
        if len(unused) == len(entries):
            delete.append(pack_id.hex())
        elif unused_bytes / total > max_unused:
            repack.append(pack_id)
            delete.append(pack_id.hex())
        else:
            keep[pack_id] = entries
            result.unused_kept_chunks += len(unused)
            result.unused_kept_bytes += unused_bytes
    result.packs_deleted = len(delete) - len(repack)
    result.packs_repacked = len(repack)
    result.bytes_freed = sum(sizes[name] for name in delete)
    stale = stale_temporaries(repo)
    result.temporaries_removed = len(stale)
    if dry_run:
        return result
    # (1) copy the used chunks of the packs to repack
    fresh_index = type(index)()
    for pack_id, entries in keep.items():
        fresh_index.add_pack(pack_id, entries)
    writer = PackWriter(repo, fresh_index)
    reporter.finish()
    reporter.start(sum(sizes[p.hex()] for p in repack), "repacking")
    wanted = {p: [e for e in index.packs[p] if e.chunk_id in used] for p in repack}
    _copy_chunks(repo, writer, wanted, sizes, reporter)
    result.packs_written = len(writer.written)
    result.bytes_written = writer.stored
    result.bytes_freed -= writer.stored
    # (2) the index of everything kept, superseding every index object read above.
    # Checked first, and before anything is deleted (each time, without a read): a prune
    # suspended past the lock expiry may have had a backup beside it, which took its
    # lock for stale and reuses chunks it found unused (indexed, or unindexed packs it
    # adopted once this index superseded theirs).
    lock.verify()
    repo.write_index({**keep, **writer.written}, [bytes.fromhex(n) for n in index_names])
    lock.verify()
    # (3), (4), (5)
    for name in [
        *(f"index/{n}" for n in index_names),
        *(f"data/{n}" for n in delete),
    ]:
        lock.verify(read=False)
        repo.backend.delete(name)
    remove_stale_locks(repo)
    for name in stale:
        repo.backend.delete(name)
    return result


def _refuse_over_missing_packs(index: Index, sizes: Mapping[str, int], used: set[bytes]) -> None:
    """Raise while a pack the index names is missing from storage's listing and holds a
    chunk the snapshots use that no listed pack holds. The new index would leave it out
    for good: once storage listed it again (a listing that lags, as on WebDAV, sftp or a
    sync tool; or storage hiding it for one run), its intact chunks were in no index, and
    restore, check and repair called them lost (storage review s49, F2). restic's prune
    refuses too."""
    listed, missing = index.present(sizes)
    needed = [
        p.hex()
        for p in missing
        if any(e.chunk_id in used and e.chunk_id not in listed for e in index.packs[p])
    ]
    if needed:
        more = f" (and {len(needed) - 1} more)" if len(needed) > 1 else ""
        raise MissingObject(
            f"pack {needed[0]}{more}, which the index names and snapshots use, is missing"
            " from storage's listing: prune deleted and rewrote nothing",
            hint="storage that lists objects late (WebDAV, sftp, a sync tool) may list it"
            " again: run prune again later; `backup check` names the files that use it. If"
            " it is really gone, `backup repair` drops it from the index, then prune goes on"
            " (the next `backup create` stores those files again)",
        )


def _copy_chunks(
    repo: Repository,
    writer: PackWriter,
    chunks: Mapping[bytes, list[PackEntry]],
    sizes: Mapping[str, int],
    reporter: Progress,
) -> None:
    """Copy the chunks `chunks` names (pack id -> their entries in it) that `writer` does
    not hold yet into new packs, and finish them. Each is opened first, so that only good
    data is copied: one that does not authenticate raises (progress: the packs read)."""
    try:
        for pack_id, entries in chunks.items():
            # Only as far as its blobs go: storage may have made the object any size.
            blobs_end = max((e.offset + e.length for e in entries), default=0)
            data = repo.backend.get(f"data/{pack_id.hex()}", 0, blobs_end)
            view = memoryview(data)
            for entry in entries:
                if entry.chunk_id not in writer:
                    blob = bytes(view[entry.offset : entry.offset + entry.length])
                    repo.sealer.open(entry.chunk_id, blob, entry.raw_length)
                    writer.add(entry.chunk_id, blob, entry.raw_length)
            reporter.advance(sizes[pack_id.hex()])  # against the packs' total
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def remove_stale_locks(repo: Repository) -> None:
    live = {lock.lock_id for lock in repo.locks()}
    for lock in repo.locks(include_expired=True):
        if lock.lock_id not in live:
            repo.backend.delete(f"locks/{lock.lock_id}")  # stale: its process is gone


def stale_temporaries(repo: Repository) -> list[str]:
    """Temporary objects of interrupted uploads, not written to for STALE_TEMPORARY_S.

    A put writes its temporary in seconds and renames it at once; and prune holds the
    exclusive lock, so no backup that keeps its lock fresh is writing. One a day old was
    left by a process that died (or by one whose lock expired long ago: its snapshot could
    not be trusted to find its packs anyway). Without a time from storage, kept."""
    stale: list[str] = []
    for folder in ("", *FOLDERS):
        for name, age in repo.backend.temporaries(folder).items():
            if age is not None and age >= STALE_TEMPORARY_S:
                stale.append(f"{folder}/{name}" if folder else name)
    return stale


# ---- check ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    snapshots: int = 0
    packs: int = 0
    chunks: int = 0
    read_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_files: list[DamagedFiles] = field(default_factory=list)  # oldest snapshot first
    # Damage `repair` acts on: a pack damaged, cut off or missing, an index object that does
    # not open, a pack no index names that holds chunks in use no index names (repair
    # indexes it). Without it, what is left (chunks in no index: lost before, or dropped by
    # a repair) only a new backup or a forget clears.
    repairable: bool = False


def check(repo: Repository, *, read_data: bool, progress: Progress | None = None) -> CheckResult:
    """Everything that can be checked: objects authenticate, every chunk a snapshot uses is
    indexed in a pack that exists; with `read_data`, every pack is read and every blob
    opened and matched against its id and the index (progress: the bytes of those packs).
    For each snapshot, the files that use a chunk found missing or damaged are named."""
    reporter = progress or NoProgress()
    try:
        with repo.reading_lock() as unlocked:
            result = _check(repo, read_data, reporter)
            if unlocked:
                result.warnings.append(
                    f"checked without a lock ({unlocked}): a prune, forget or repair that ran"
                    " meanwhile may show here as damage"
                )
            return result
    finally:
        reporter.finish()


def _check(repo: Repository, read_data: bool, reporter: Progress) -> CheckResult:
    result = CheckResult()
    # Snapshots first: each one listed had its packs and index stored before it, so they
    # are in what is read next, also when a backup beside this check adds more.
    names = repo.snapshot_names()  # a dict: each parent is looked up in it
    try:
        index, sizes, _ = repo.load_index(adopt_unindexed=False)
    except BackupVaultError as exc:
        result.errors.append(str(exc))
        return result
    result.errors.extend(
        f"index object {name} cannot be read ({why}): left out, the packs it named are "
        "read from their own headers; `backup prune` writes an index that replaces it"
        for name, why in sorted(repo.damaged_indexes.items())
    )
    reading = [p for p in index.packs if p.hex() in sizes] if read_data else []
    reporter.start(sum(sizes[p.hex()] for p in reading) if read_data else None, "checking")
    result.packs = len(sizes)
    result.chunks = len(index.chunks)
    # Where a restore reads each chunk: only from packs storage holds (a second index,
    # as large as the first, only when some are missing).
    all_there = all(pack_id.hex() in sizes for pack_id in index.packs)
    restored_from = index if all_there else index.present(sizes)[0]
    # (chunk id, pack id) of each chunk that cannot be read from that pack
    unreadable: set[tuple[bytes, bytes]] = set()
    unindexed = [name for name in sizes if bytes.fromhex(name) not in index.packs]
    result.warnings.extend(_unindexed_warning(name) for name in unindexed)
    for pack_id, entries in index.packs.items():
        name = pack_id.hex()
        if name not in sizes:
            result.errors.append(f"pack {name} is missing")
        elif entries and max(e.offset + e.length for e in entries) > sizes[name]:
            result.errors.append(f"pack {name} is shorter than its index says")
            unreadable.update(
                (e.chunk_id, pack_id) for e in entries if e.offset + e.length > sizes[name]
            )
    # The packs before the snapshots: each snapshot's tree is then read once, to check it
    # and to name its files that use a damaged chunk (not every tree kept at once).
    for pack_id in reading:
        errors, damaged = _check_pack(repo, pack_id, index.packs[pack_id], reporter.advance, result)
        result.errors.extend(errors)
        unreadable.update((chunk_id, pack_id) for chunk_id in damaged)

    result.repairable = bool(result.errors)  # so far: the index's and the packs' alone

    # Where a chunk read wrong has another copy: a restore reads that one (`damage.py`),
    # so only a chunk with no readable copy makes a file one that cannot be restored.
    damaged_ids = {chunk_id for chunk_id, _ in unreadable}
    copies: dict[bytes, list[bytes]] = {}  # damaged chunk -> every pack that holds it
    if damaged_ids:
        for pack_id, entries in restored_from.packs.items():
            for entry in entries:
                if entry.chunk_id in damaged_ids:
                    copies.setdefault(entry.chunk_id, []).append(pack_id)

    def restorable(chunk_id: bytes) -> bool:
        if chunk_id not in restored_from.chunks:
            return False
        if chunk_id not in damaged_ids:
            return True
        return any((chunk_id, p) not in unreadable for p in copies.get(chunk_id, ()))

    recorded = set(repo.backend.list("forgotten")) & set(names)
    in_no_index: set[bytes] = set()  # chunks snapshots use that no index names
    leftovers = {name for name in recorded if repo.is_forgotten(name)}
    result.warnings.extend(leftover_warning(name) for name in sorted(leftovers))
    result.snapshots = len(names) - len(leftovers)
    for name in names:
        if name in leftovers:
            continue
        try:
            snap = repo.read_snapshot(name)
        except BackupVaultError as exc:
            result.errors.append(f"snapshot {name}: {exc.message}")
            continue
        parent = snap.header.parent
        if parent is not None and parent.hex() not in names:
            bad_record, warning = repo.why_gone(parent.hex(), f"snapshot {name}'s parent")
            result.errors.extend([bad_record] if bad_record else [])
            result.warnings.extend([warning] if warning else [])
        used = {c for e in snap.entries or [] if e.kind == FILE for c in e.chunks}
        missing = used - index.chunks.keys()
        if missing:
            chunks = "chunk" if len(missing) == 1 else "chunks"
            result.errors.append(f"snapshot {name} uses {len(missing)} {chunks} in no index")
            in_no_index |= missing
        files = _files_lost(snap, restorable)
        if files is not None:
            result.damaged_files.append(files)
    result.damaged_files.sort(key=lambda d: (d.created_at, d.snapshot_id))
    # Such chunks in a pack no index names are not lost: `repair` indexes that pack (or,
    # if it is damaged, copies out what authenticates): damage repair acts on.
    for name, held in _holding(repo, unindexed, sizes, in_no_index).items():
        result.warnings.remove(_unindexed_warning(name))
        chunks = "chunk" if held == 1 else "chunks"
        result.errors.append(
            f"pack {name} is in no index and holds {held} {chunks} in use that no index"
            " names: `backup repair` indexes it"
        )
        result.repairable = True
    return result


def _unindexed_warning(name: str) -> str:
    return f"pack {name} is in no index (left by an interrupted backup, or one running now)"


def _holding(
    repo: Repository, names: list[str], sizes: Mapping[str, int], chunks: Collection[bytes]
) -> dict[str, int]:
    """{pack name: how many of `chunks` its header names} of the packs `names` whose
    header names any (two ranged reads each); one whose header cannot be read is left out.
    Only read when some `chunks` there are."""
    held: dict[str, int] = {}
    for name in names if chunks else []:
        try:
            entries = repo.read_pack_header(name, sizes[name])
        except BackupVaultError:
            continue  # not taken for repairable: nothing says the chunks are there
        count = len({e.chunk_id for e in entries if e.chunk_id in chunks})
        if count:
            held[name] = count
    return held


def _files_lost(
    snap: snapshots.Snapshot, restorable: Callable[[bytes], bool]
) -> DamagedFiles | None:
    """The files of `snap` (read with its tree) that use a chunk not `restorable`, if any."""
    entries = snap.entries or []
    lost = {c for e in entries if e.kind == FILE for c in e.chunks if not restorable(c)}
    if not lost:
        return None
    return DamagedFiles.of(snap, files_using(entries, lost))


def _check_pack(
    repo: Repository,
    pack_id: bytes,
    indexed: list[PackEntry],
    advance: Callable[[int], None],
    result: CheckResult,
) -> tuple[list[str], list[bytes]]:
    """(errors, the ids of the chunks that cannot be read from this pack). Each chunk is
    read where the index says, as a restore reads it, also when the pack's header is
    damaged or disagrees with the index: so the chunks named are those a restore fails on."""
    name = pack_id.hex()
    try:
        data = repo.backend.get(f"data/{name}", most=max_pack_len(repo.config))
    except BackupVaultError as exc:  # unreadable, or larger than any pack
        return [f"pack {name}: {exc.message}"], [e.chunk_id for e in indexed]
    advance(len(data))
    result.read_bytes += len(data)
    errors, _entries, damaged = _examine_pack(repo, pack_id, data, indexed)
    return errors, [e.chunk_id for e in damaged]


def _examine_pack(
    repo: Repository, pack_id: bytes, data: bytes, indexed: list[PackEntry] | None
) -> tuple[list[str], list[PackEntry], list[PackEntry]]:
    """(errors, entries, the entries whose chunk cannot be read) of the pack `data`. Its
    chunks are read where the index says (`indexed`), as a restore reads them, also when
    the pack's header is damaged or disagrees with the index; those of a pack no index
    names (`indexed` None) where its header says (none if it does not open)."""
    name = pack_id.hex()
    errors = []
    header: list[PackEntry] = []
    try:
        header = open_pack_header(repo.keys.index, pack_id, data)
        if indexed is not None and sorted(header) != sorted(indexed):
            errors.append(f"pack {name}: its header and the index disagree")
    except BackupVaultError as exc:
        errors.append(f"pack {name}: {exc.message}")
    entries = header if indexed is None else indexed
    damaged = []
    view = memoryview(data)
    for entry in entries:
        if entry.offset + entry.length > len(data):
            damaged.append(entry)  # cut off: the pack is named shorter than indexed
            continue
        try:
            blob = view[entry.offset : entry.offset + entry.length]
            repo.sealer.open(entry.chunk_id, blob, entry.raw_length)
        except BackupVaultError as exc:
            errors.append(f"pack {name}: {exc.message}")
            damaged.append(entry)
    return errors, entries, damaged


# ---- repair -----------------------------------------------------------------------------


@dataclass
class RepairResult:
    packs: int = 0  # packs read
    read_bytes: int = 0
    damage: list[str] = field(default_factory=list)  # what was found, as check says it
    packs_damaged: list[str] = field(default_factory=list)  # deleted (with dry_run: to be)
    packs_missing: list[str] = field(default_factory=list)  # dropped from the index
    packs_indexed: int = 0  # packs no index named that read whole, indexed now
    packs_written: int = 0
    bytes_written: int = 0
    chunks_salvaged: int = 0  # copied out of damaged packs into new ones
    chunks_lost: list[str] = field(default_factory=list)  # indexed before, in no pack now
    damaged_files: list[DamagedFiles] = field(default_factory=list)  # oldest snapshot first
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False


def repair(
    repo: Repository,
    *,
    dry_run: bool,
    packs: Iterable[str] = (),
    progress: Progress | None = None,
) -> RepairResult:
    """Read every pack in storage (or only `packs`, by name), copy every chunk that
    authenticates out of each damaged one into new packs, write one index without the
    chunks that did not (nor those of packs that are missing), then delete the damaged
    packs. The next backup then stores those chunks again rather than reuse them.
    Progress: reading the packs, copying out of the damaged ones, reading the snapshots
    (no total) to name the files that cannot be restored."""
    reporter = progress or NoProgress()
    named = pack_names(packs)
    # A dry run only reads, as check does: backups may run beside it, and on storage this
    # device cannot write to it runs without a lock.
    try:
        if not dry_run:
            with repo.lock(EXCLUSIVE):
                return _repair_locked(repo, dry_run, named, reporter)
        with repo.reading_lock() as unlocked:
            result = _repair_locked(repo, dry_run, named, reporter)
            if unlocked:
                result.warnings.append(
                    f"read without a lock ({unlocked}): a prune, forget or repair that ran"
                    " meanwhile may show here as damage"
                )
            return result
    finally:
        reporter.finish()


def _repair_locked(
    repo: Repository, dry_run: bool, named: list[str], reporter: Progress
) -> RepairResult:
    if not dry_run:
        remove_stale_locks(repo)  # as prune: a backup behind a stale lock then stops
    index_names = list(repo.backend.list("index"))
    index, sizes, _ = repo.load_index(adopt_unindexed=False)
    result = RepairResult(dry_run=dry_run)
    result.damage = [
        f"index object {name} cannot be read ({why})"
        for name, why in sorted(repo.damaged_indexes.items())
    ]
    missing = [p for p in index.packs if p.hex() not in sizes]
    result.packs_missing = [p.hex() for p in missing]
    reading = _packs_to_read(index, sizes, named)
    result.packs = len(reading)
    reporter.start(sum(sizes[p.hex()] for p in reading), "reading packs")
    # Damaged pack -> the entries of its chunks that authenticate; packs no index named
    # that read whole (an interrupted backup's, or this repair's own) are indexed again.
    damaged: dict[bytes, list[PackEntry]] = {}
    adopted: dict[bytes, list[PackEntry]] = {}
    for pack_id in reading:
        # A storage error stops the repair: a pack it cannot read is not taken for damage.
        try:
            data = repo.backend.get(f"data/{pack_id.hex()}", most=max_pack_len(repo.config))
        except InvalidInput as exc:  # larger than any pack: none this repository wrote
            result.damage.append(exc.message)
            reporter.advance(sizes[pack_id.hex()])
            damaged[pack_id] = []
            continue
        reporter.advance(len(data))
        result.read_bytes += len(data)
        errors, entries, bad = _examine_pack(repo, pack_id, data, index.packs.get(pack_id))
        if errors or bad:
            result.damage += errors or [f"pack {pack_id.hex()} is shorter than its index says"]
            unreadable = set(bad)
            damaged[pack_id] = [e for e in entries if e not in unreadable]
        elif pack_id not in index.packs:
            adopted[pack_id] = entries
    result.packs_damaged = [p.hex() for p in damaged]
    kept = Index()
    for pack_id, entries in index.packs.items():
        if pack_id.hex() in sizes and pack_id not in damaged:
            kept.add_pack(pack_id, entries)
    # An intact pack holding chunks no index names is indexed with no other damage too: a
    # pack left out of the index while storage did not list it (by a repair, or an older
    # prune) holds chunks snapshots use (storage review s49, F2).
    to_repair = bool(damaged or missing or repo.damaged_indexes) or any(
        e.chunk_id not in index.chunks for entries in adopted.values() for e in entries
    )
    if to_repair:
        for pack_id, entries in adopted.items():
            kept.add_pack(pack_id, entries)
        result.packs_indexed = len(adopted)
    salvaged = {e.chunk_id for good in damaged.values() for e in good} - kept.chunks.keys()
    result.chunks_salvaged = len(salvaged)
    listed = {e.chunk_id for entries in index.packs.values() for e in entries}
    result.chunks_lost = sorted(c.hex() for c in listed - kept.chunks.keys() - salvaged)
    if to_repair and not dry_run:
        _confirm_damage(repo, index, damaged)
        reporter.finish()
        _salvage(repo, kept, damaged, sizes, index_names, result, reporter)
    reporter.finish()
    reporter.start(None, "reading snapshots")
    _name_lost_files(repo, kept.chunks.keys() | salvaged, result)
    return result


def pack_names(packs: Iterable[str]) -> list[str]:
    """The pack ids a user named, each once, in the form storage names them; a name that
    cannot be a pack's is a `UsageError`, found before the key is asked for."""
    named = list(dict.fromkeys(name.strip().lower() for name in packs))
    malformed = [name for name in named if not is_object_id(name)]
    if malformed:
        raise UsageError(
            f"not a pack id: {', '.join(malformed)}",
            hint=f"a pack id is {2 * OBJECT_ID_LEN} hex digits, as `backup check` names it"
            " (`pack 1f0e...: ...`)",
        )
    return named


def _packs_to_read(index: Index, sizes: dict[str, int], named: list[str]) -> list[bytes]:
    """Every pack storage holds, or those `named` (each one the index lists or storage
    holds; one that is missing is dropped from the index with the others)."""
    if not named:
        return [bytes.fromhex(name) for name in sizes]
    unknown = [n for n in named if n not in sizes and not _listed(index, n)]
    if unknown:
        raise UsageError(
            f"no pack {', '.join(unknown)} in the index or in storage",
            hint="give packs by their full id, as `backup check` names them",
        )
    return [bytes.fromhex(n) for n in named if n in sizes]


def _listed(index: Index, name: str) -> bool:
    return is_object_id(name) and bytes.fromhex(name) in index.packs


def _confirm_damage(repo: Repository, index: Index, damaged: dict[bytes, list[PackEntry]]) -> None:
    """Read each damaged pack again, before anything is written or deleted, and raise
    unless the same chunks authenticate: one read cut short or garbled on its way (once)
    made the repair drop good chunks from the index and delete the pack that held them."""
    for pack_id, good in damaged.items():
        name = pack_id.hex()
        try:
            data = repo.backend.get(f"data/{name}", most=max_pack_len(repo.config))
        except InvalidInput:  # larger than any pack, again
            again: list[PackEntry] | None = []
        else:
            errors, entries, bad = _examine_pack(repo, pack_id, data, index.packs.get(pack_id))
            unreadable = set(bad)
            again = [e for e in entries if e not in unreadable] if errors or bad else None
        if again is None or sorted(again) != sorted(good):
            raise BackupVaultError(
                f"pack {name} read differently the second time (storage handed out other "
                "bytes for it): the repair wrote and deleted nothing",
                hint="storage, or the way to it, may be failing: run `backup check "
                "--read-data` later, and `backup repair` once it names the same damage",
            )


def _salvage(
    repo: Repository,
    kept: Index,
    damaged: dict[bytes, list[PackEntry]],
    sizes: dict[str, int],
    index_names: list[str],
    result: RepairResult,
    reporter: Progress,
) -> None:
    """Copy the good chunks of the `damaged` packs into new packs, write the index of
    `kept` and them, then delete: in the order the module's docstring gives."""
    writer = PackWriter(repo, kept)
    copying = {p: good for p, good in damaged.items() if any(e.chunk_id not in kept for e in good)}
    reporter.start(sum(sizes[p.hex()] for p in copying), "salvaging")
    try:
        _copy_chunks(repo, writer, copying, sizes, reporter)
    except (AuthenticationFailed, InvalidInput) as exc:
        raise BackupVaultError(  # it authenticated when its pack was read first
            f"a chunk read a second time failed ({exc.message}): the repair deleted nothing",
            hint="storage may be failing (it handed out other bytes): run `backup repair` again",
        ) from None
    result.packs_written = len(writer.written)
    result.bytes_written = writer.stored
    # Read back before anything names or deletes: storage damaged something once already.
    _read_back(lambda: _same_packs(repo, writer.written))
    names, _size = repo.write_index(kept.packs, [bytes.fromhex(n) for n in index_names])
    _read_back(lambda: _same_index(repo, names, kept.packs))
    for old in index_names:
        repo.backend.delete(f"index/{old}")
    for pack_id in damaged:
        repo.backend.delete(f"data/{pack_id.hex()}")


def _read_back(read: Callable[[], bool]) -> None:
    """Raise unless `read` finds what was written where it was written."""
    try:
        same = read()
        why = "" if same else "it reads back other than it was written"
    except (AuthenticationFailed, InvalidInput) as exc:
        same, why = False, exc.message
    if not same:
        raise BackupVaultError(
            f"what the repair wrote does not read back ({why}): it deleted nothing",
            hint="storage may be failing: run `backup repair` again",
        )


def _same_packs(repo: Repository, written: dict[bytes, list[PackEntry]]) -> bool:
    return all(sorted(repo.verify_pack(p)) == sorted(e) for p, e in written.items())


def _same_index(repo: Repository, names: list[str], packs: dict[bytes, list[PackEntry]]) -> bool:
    found: dict[bytes, list[PackEntry]] = {}
    for name in names:
        sealed = repo.backend.get(f"index/{name}", most=max_index_len(repo.config))
        found.update(IndexFile.open(repo.keys.index, bytes.fromhex(name), sealed).packs)
    return found == packs


def _name_lost_files(repo: Repository, present: Collection[bytes], result: RepairResult) -> None:
    """For each snapshot, the files that use a chunk not `present` (in no pack the index
    lists): they cannot be restored."""
    for name in repo.snapshot_names():
        try:
            snap = repo.read_snapshot(name)
        except (AuthenticationFailed, InvalidInput) as exc:
            result.warnings.append(f"snapshot {name} cannot be read: {exc.message}")
            continue
        files = _files_lost(snap, present.__contains__)
        if files is not None:
            result.damaged_files.append(files)
    result.damaged_files.sort(key=lambda d: (d.created_at, d.snapshot_id))
