"""`backup restore` for the repository format.

Nothing becomes visible in `dest` before every chunk written was authenticated: the copy
is built in a private hidden folder next to `dest` (as for single-blob backups) and
renamed onto `dest` at the end. Every name comes from an authenticated tree whose names
were validated (relative, no "..", no empty parts); files are created with O_EXCL and
O_NOFOLLOW relative to the staging folder's descriptor (or, for a path longer than the
kernel takes in one call, a folder's on its way: `safe.reached`); symbolic links are created
last, after every file, and a tree names nothing inside what is not an earlier folder, so no
write ever goes through one. A link is restored as it was stored, wherever it leads (as
restic and tar do): it is only a name, and a home folder's absolute links (dotfiles,
`~/.local/bin`) were lost on every restore while they were skipped (review s40-R2).

A chunk that fails authentication does not stop the reading: nothing more is written, but
every other chunk is still read and authenticated, and the restore then fails naming every
file that uses a damaged chunk (backup/repo/damage.py).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupvault.backup.errors import Altered, BackupNotFound, Corrupt, DestinationError
from backupvault.backup.flows import RestoreInfo
from backupvault.backup.progress import NoProgress, Progress
from backupvault.backup.repo.damage import (
    DamagedFiles,
    NotingChunkSource,
    damaged_files_error,
    files_using,
    listed,
)
from backupvault.backup.repo.index import Index
from backupvault.backup.repo.repository import (
    ANY_SNAPSHOT,
    Repository,
    SnapshotFilter,
    cpu_workers,
    cycle_collector_paused,
    is_latest,
)
from backupvault.backup.repo.snapshots import AHEAD_SLACK, Snapshot
from backupvault.backup.repo.state import DeviceState, another_repository, place_of
from backupvault.backup.repo.tree import DIR, FILE, ROOT, SYMLINK, Entry
from backupvault.backup.safe import (
    Limits,
    Staging,
    check_destination,
    check_space,
    full_disk,
    reached,
    remove_abandoned,
)
from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


_INCLUDE_HINT = (
    "--include takes a path relative to the folder that was backed up: for"
    " /home/me/chats/db/a.sqlite in a backup of /home/me/chats, db/a.sqlite"
)


def select(
    entries: list[Entry],
    include: tuple[str, ...],
    *,
    hint: str = _INCLUDE_HINT,
    source: str | None = None,
) -> list[Entry]:
    """The entries under any path of `include` (paths inside the snapshot), with their
    parent folders; all of them if `include` is empty. `hint`: what to do when a path is
    in none of them (BackupNotFound); an absolute one inside `source`, the folder that
    was backed up, is told the path to give instead (review s40-R2)."""
    if isinstance(include, str):  # a str is a tuple of one-letter paths to the type checker
        raise TypeError("include is a tuple of paths")
    wanted = wanted_paths(include)
    if not wanted or wanted.keys() & {b"", b"."}:
        return entries
    parents: set[bytes] = set()
    for path in wanted:
        parts = path.split(b"/")
        parents.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
    chosen = [
        e
        for e in entries
        if e.path == ROOT or under(e.path, wanted) or (e.kind == DIR and e.path in parents)
    ]
    found = {e.path for e in chosen}
    missing = [shown for path, shown in wanted.items() if path not in found]
    if missing:
        inside = [(m, inside_source(m, source)) for m in missing]
        relative = [(m, r) for m, r in inside if r is not None]
        if relative:
            hint = "--include takes a path relative to the folder that was backed up: " + (
                ", ".join(f"{r} for {m}" for m, r in relative)
            )
        elif hint is _INCLUDE_HINT and not any(m.startswith("/") for m in missing):
            # Already relative: the example does not help, the snapshot's own list does
            # (new-user walkthrough s47).
            hint = (
                "`backupvault backup ls latest` (or the snapshot's id) lists the paths it"
                " holds, as --include takes them: relative to the folder that was backed up,"
                " without that folder's own name"
            )
        raise BackupNotFound(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in this snapshot",
            hint=hint,
        )
    return chosen


def inside_source(path: str, source: str | None) -> str | None:
    """`path`, an absolute path inside `source` (the folder backed up), relative to it; None
    for any other path. What `--include` and `--exclude` say or do with an absolute path."""
    if source is None or not path.startswith("/") or not source.startswith("/"):
        return None
    relative = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(source))
    outside = relative in (".", "..") or relative.startswith("../")
    return None if outside else relative


def wanted_paths(include: tuple[str, ...]) -> dict[bytes, str]:
    """Each path of `include` as the snapshot names it, to the path as given. "./docs",
    "docs//a", "docs/./a": the path a shell completes or a user types names the same
    entry; a ".." left over matches nothing, so it is named as not in the snapshot."""
    return {os.fsencode(posixpath.normpath(path).strip("/")): path for path in include}


def under(path: bytes, wanted: Mapping[bytes, str]) -> bool:
    """Whether `path` is one of `wanted` or inside one."""
    return any(path == w or path.startswith(w + b"/") for w in wanted)


def plan(snapshot: Snapshot, entries: list[Entry], index: Index) -> None:
    """Fail before anything is written if a chunk is in no index (naming every file of
    `entries`, those of `snapshot` to restore, that uses one) or sizes disagree."""
    absent = {c for e in entries if e.kind == FILE for c in e.chunks if c not in index.chunks}
    if absent:
        paths = files_using(entries, absent)
        error = Altered(
            f"{len(absent)} chunk{'s' * (len(absent) > 1)} of this snapshot "
            f"{'are' if len(absent) > 1 else 'is'} in no pack the index lists (a pack or "
            "an index object is missing, or `backup repair` dropped damaged chunks); "
            f"{len(paths)} file{'s' * (len(paths) > 1)} cannot be restored: {listed(paths)}",
            hint="nothing was written; to restore the other files, name each file or folder "
            "to restore with --include; the next `backupvault backup create` stores these "
            "files again if they are still in its source; `backupvault backup check` lists "
            "all damage",
        )
        error.details["damaged_files"] = [DamagedFiles.of(snapshot, paths).row()]
        raise error
    for entry in entries:
        if (
            entry.kind == FILE
            and sum(index.chunks[c].raw_length for c in entry.chunks) != entry.size
        ):
            raise Corrupt(f"{os.fsdecode(entry.path)}: its chunks do not add up to its size")


_SMALL_FILE = 1 << 20
#: Small files handed to a writer at once: at most this many, or past this many bytes;
#: and batches handed over and not yet written, at most (so at most about 100 MiB of
#: plaintext waits for the writers, where 256 files of up to 1 MiB did before).
_BATCH_FILES = 32
_BATCH_BYTES = 4 << 20
_BATCHES_AHEAD = 16
_WRITERS = 8  # file creation waits on the file system more than on the CPU
#: What a write says when the tree itself cannot be laid out (a name used twice over).
_TREE_CONTRADICTIONS = frozenset({errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ELOOP})


class RestoreFailed(BackupVaultError):
    """The file system refused the restore's writes (not the user's command, nor damage)."""


@cycle_collector_paused()
def restore_snapshot(
    storage_url: str,
    root_key: bytes,
    dest: str | os.PathLike[str],
    snapshot_id: str | None = None,
    progress: Progress | None = None,
    *,
    include: tuple[str, ...] = (),
    storage_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    key: str = "password",
    state_dir: Path | None = None,
    only: SnapshotFilter = ANY_SNAPSHOT,
) -> RestoreInfo:
    """Restore a snapshot (the latest if `snapshot_id` is None, of those `only` lets
    through; a prefix is enough), or only the files and folders `include` names inside it,
    into the new or empty folder `dest`.

    With `state_dir`, a restore of the latest warns of each last snapshot this device made
    there that storage no longer shows (a rollback makes an older one the latest)."""
    dest_path = Path(dest).absolute()
    check_destination(dest_path)
    storage = Storage(storage_url, storage_options)
    repo = Repository.open(storage, root_key)
    with repo.reading_lock() as unlocked:
        # A shared lock, as `backup check` takes: a prune elsewhere deleted packs this
        # restore had planned to read, and it said "damaged" (review s60).
        info = _restore_locked(
            repo, storage, dest, dest_path, snapshot_id, progress,
            include=include, workers=workers, key=key, state_dir=state_dir, only=only,
        )  # fmt: skip
    if unlocked:
        info.warnings.append(
            f"restored without a lock ({unlocked}): a prune, forget or repair that ran"
            " meanwhile may show here as damage"
        )
    return info


def _restore_locked(
    repo: Repository,
    storage: Storage,
    dest: str | os.PathLike[str],
    dest_path: Path,
    snapshot_id: str | None,
    progress: Progress | None,
    *,
    include: tuple[str, ...],
    workers: int | None,
    key: str,
    state_dir: Path | None,
    only: SnapshotFilter,
) -> RestoreInfo:
    snapshot = repo.find_snapshot(snapshot_id, only)
    latest = snapshot_id is None or is_latest(snapshot_id)
    warnings: list[str] = []
    if state_dir is not None and latest:
        state = DeviceState(state_dir, repo.keys.repo_id, place_of(storage))
        before = state.held_before()
        if before is not None:  # as `backup create` warns (review s42, F5)
            warnings.append(another_repository(repo.backend.display_url, before, repo.keys.repo_id))
        # What `find_snapshot` just listed for the latest; one there but damaged is passed
        # over and said so, one unserved is warned of below (review s42-B, B6).
        known = set(repo.listed) | set(repo.damaged) | repo.unserved
        for source, last in sorted(state.all_made().items()):
            if last not in known:
                what = f"the last snapshot this device made of {source},"
                warnings.extend(m for m in repo.why_gone(last, what) if m)
    warnings.extend(repo.leftover_warnings())
    if latest:
        warnings.extend(_dated_ahead(repo, snapshot, only))
    assert snapshot.entries is not None
    entries = select(snapshot.entries, include, source=snapshot.summary.source)
    listed_index, packs, _ = repo.load_index(adopt_unindexed=False)
    # Chunks are read only from packs storage still holds: where a chunk was stored
    # again after its pack was lost, the copy that exists is the one used.
    index, _lost = listed_index.present(packs)
    plan(snapshot, entries, index)
    reporter = progress or NoProgress()
    total = sum(e.size for e in entries if e.kind == FILE)
    limits = Limits(max_entries=len(entries), max_bytes=total)
    warnings.extend(remove_abandoned(dest_path))  # before the space they hold is checked
    check_space(dest_path.parent, limits)
    reporter.start(total, "restoring")
    try:
        with Staging(dest_path) as staging:
            dir_fd = staging.fd
            links = sum(e.kind == SYMLINK for e in entries)
            if links:
                _check_links_possible(dir_fd, links, dest)
            try:
                _fill(
                    repo,
                    snapshot,
                    entries,
                    dir_fd,
                    reporter,
                    index,
                    workers or cpu_workers(),
                    dest,
                )
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise full_disk(dest_path.parent, limits, exc) from None
                name = os.fsdecode(exc.filename) if exc.filename else None
                if exc.errno in _TREE_CONTRADICTIONS:
                    # A tree whose entries contradict each other (a file under a name that
                    # is not a folder): nothing of it stays.
                    what = name or "the snapshot's files"
                    raise DestinationError(f"cannot restore {what}: {exc.strerror}") from None
                # The system refused a write (a file size limit, a failing disk): not a
                # usage error, and not the snapshot's fault.
                raise RestoreFailed(
                    f"writing the restored files failed: {exc.strerror}"
                    + (f" ({name})" if name else ""),
                    hint=f"nothing was written into {dest}; remove the cause (a file size "
                    "limit, a quota, a failing disk) and run it again",
                ) from None
            root = next((e for e in entries if e.path == ROOT), None)
            if root is not None:
                staging.finish(root.mode & 0o777, root.mtime_ns)
            else:
                staging.finish(staging.default_mode)  # a single-file snapshot: a new folder
    finally:
        reporter.finish()
    files = [e for e in entries if e.kind == FILE]
    chosen_among = list(repo.listed.values()) if latest and not only else []
    others = {s.summary.source for s in chosen_among}
    other_hosts = {s.summary.host for s in chosen_among}
    return RestoreInfo(
        backup_id=snapshot.id_hex,
        created_at=snapshot.header.created_at,
        dest=dest_path,
        files=len(files),
        folders=sum(e.kind == DIR and e.path != ROOT for e in entries),
        links=sum(e.kind == SYMLINK for e in entries),
        bytes=sum(e.size for e in files),
        key=key,
        source=snapshot.summary.source,
        other_folders=len(others - {snapshot.summary.source}),
        other_hosts=len(other_hosts - {snapshot.summary.host}),
        passed_over=dict(sorted(repo.damaged.items())),
        warnings=warnings,
    )


def _dated_ahead(repo: Repository, latest: Snapshot, only: SnapshotFilter) -> list[str]:
    """A warning if `latest`, the latest by its date, is dated ahead of this device's
    clock: it stays the latest until then, and every snapshot made since is passed over."""
    now = datetime.now(UTC)
    if latest.header.created_at <= now + AHEAD_SLACK:
        return []
    before = [
        s
        for s in repo.listed.values()  # what choosing the latest listed, oldest first
        if only.matches(s.summary) and s.header.created_at <= now + AHEAD_SLACK
    ]
    newest = f"; the newest dated before that is {before[-1].id_hex}" if before else ""
    return [
        f"snapshot {latest.id_hex}, restored as the latest, is dated "
        f"{latest.header.created_at:%Y-%m-%d %H:%M} UTC, more than a day ahead of this "
        "device's clock (a device whose clock was ahead made it, or this one's is behind):"
        f" it is the latest by its date until then{newest}; `backup list` shows them all,"
        " and a snapshot restores by its id"
    ]


#: What symlink(2) says on a file system that holds no symbolic links (FAT, exFAT: a USB
#: drive as it comes), or one that refuses them (some FUSE and network file systems).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})
_LINK_PROBE = b".backupvault-link-probe"


def _check_links_possible(dir_fd: int, links: int, dest: str | os.PathLike[str]) -> None:
    """Refuse, before any file is written, a restore of `links` symbolic links into the
    empty staging folder `dir_fd` where its file system holds none: links are made last,
    so a restore onto a FAT or exFAT drive wrote every file (hours of them), then failed
    at the first link, removed it all, and blamed "a file size limit, a quota, a failing
    disk" (review s62)."""
    try:
        os.symlink(".", _LINK_PROBE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        raise RestoreFailed(
            f"the disk of {dest} cannot hold symbolic links ({exc.strerror}; FAT and exFAT,"
            f" as USB drives come, hold none), and this restore has {links:,}",
            hint="nothing was written; restore onto a disk formatted for Linux (ext4, btrfs,"
            " xfs), or only what holds no link: `backup ls` shows them, `--include` chooses",
        ) from None
    os.unlink(_LINK_PROBE, dir_fd=dir_fd)


def _write_file(dir_fd: int, entry: Entry, data: Iterator[bytes | bytearray]) -> None:
    with reached(dir_fd, entry.path) as (folder, name):
        fd = os.open(name, _CREATE, 0o600, dir_fd=folder)
    try:
        for piece in data:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, entry.mode & 0o777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def _write_files(dir_fd: int, batch: list[tuple[Entry, list[bytes | bytearray]]]) -> None:
    for entry, pieces in batch:
        _write_file(dir_fd, entry, iter(pieces))


def _fill(
    repo: Repository,
    snapshot: Snapshot,
    entries: list[Entry],
    dir_fd: int,
    reporter: Progress,
    index: Index,
    workers: int,
    dest: str | os.PathLike[str],
) -> None:
    for entry in entries:
        if entry.kind == DIR and entry.path != ROOT:
            with reached(dir_fd, entry.path) as (folder, name):
                os.mkdir(name, 0o700, dir_fd=folder)
    files = [e for e in entries if e.kind == FILE]
    source = NotingChunkSource(repo, index, [e.chunks for e in files], workers)
    # Small files are written on writer threads (their syscalls overlap); large ones here,
    # streamed chunk by chunk.
    # One thread per writer, each folder's files always on the same one: threads creating
    # files in one folder wait on its lock in the kernel (spinning on it cost more system
    # time than the writes themselves).
    writers = [ThreadPoolExecutor(1, thread_name_prefix="restore-write") for _ in range(_WRITERS)]
    pending: deque[Future[None]] = deque()
    # Each writer's next small files, handed over together: one hand-over a file woke a
    # writer thread, and had it wait for the GIL, 38,000 times in a restore of the bench's
    # folder (a fifth of its CPU samples in the scheduler).
    batches: list[list[tuple[Entry, list[bytes | bytearray]]]] = [[] for _ in writers]
    batch_bytes = [0] * len(writers)

    def hand_over(number: int) -> None:
        if batches[number]:
            pending.append(writers[number].submit(_write_files, dir_fd, batches[number]))
            batches[number], batch_bytes[number] = [], 0

    # Once a chunk failed authentication nothing more is written (the restore fails), but
    # every other chunk is still read and authenticated, so the error names every file
    # that cannot be restored.
    try:
        for entry in files:
            pieces = _authenticated(source, entry.chunks, reporter)
            try:
                if source.damaged:
                    for _ in pieces:
                        pass
                elif entry.size > _SMALL_FILE:
                    _write_file(dir_fd, entry, pieces)
                else:
                    number = hash(os.path.dirname(entry.path)) % len(writers)
                    batches[number].append((entry, list(pieces)))
                    batch_bytes[number] += entry.size
                    if len(batches[number]) >= _BATCH_FILES or batch_bytes[number] >= _BATCH_BYTES:
                        hand_over(number)
            except _Damaged:
                pass
            while pending and (pending[0].done() or len(pending) > _BATCHES_AHEAD):
                pending.popleft().result()
        for number in range(len(writers)):
            hand_over(number)
        while pending:
            pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for writer in writers:
            writer.shutdown(wait=True, cancel_futures=True)
        source.close()
    if source.damaged:
        paths = files_using(files, source.damaged)
        raise damaged_files_error(source.damaged, DamagedFiles.of(snapshot, paths), dest)
    for entry in entries:
        if entry.kind == SYMLINK:
            ns = (entry.mtime_ns, entry.mtime_ns)
            with reached(dir_fd, entry.path) as (folder, name):
                os.symlink(entry.target, name, dir_fd=folder)
                os.utime(name, ns=ns, dir_fd=folder, follow_symlinks=False)
    folders = [e for e in entries if e.kind == DIR and e.path != ROOT]
    for entry in sorted(folders, key=lambda e: e.path.count(b"/"), reverse=True):
        with reached(dir_fd, entry.path) as (folder, name):
            os.chmod(name, entry.mode & 0o777, dir_fd=folder)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=folder)


class _Damaged(Exception):
    """A chunk of the file being read failed authentication (the source noted why)."""


def _authenticated(
    source: NotingChunkSource, chunk_ids: list[bytes], reporter: Progress
) -> Iterator[bytes | bytearray]:
    """The plaintext of a file's chunks, in order. If one is damaged, the file's other
    chunks are still read (so authenticated, and released by the source) before this
    raises `_Damaged`."""
    damaged = False
    for chunk_id, piece in zip(chunk_ids, source.chunks(chunk_ids), strict=True):
        if damaged or source.is_damaged(chunk_id):
            damaged = True
            continue
        yield piece
        reporter.advance(len(piece))
    if damaged:
        raise _Damaged
