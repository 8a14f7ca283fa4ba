"""A repository in storage: its config and keys, the chunk index, snapshots, packs, locks.

Objects (docs/format.md, "Repository layout"):
  config                 the repository key RMK wrapped under RK, chunker/pack parameters
  data/<pack id>         chunk blobs in random order, then the sealed pack header
  index/<index id>       where chunks are: pack, offset, length (sealed under the index key)
  snapshots/<snap id>    one backup: header (DK wrapped under RK), summary, tree
  locks/<lock id>        who is at work (shared: backup, check; exclusive: prune, forget,
                         repair)
  forgotten/<snap id>    `backup forget` removed this snapshot (so its absence is no rollback)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hmac
import logging
import os
import platform
import secrets
import struct
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

from backupvault.backup.errors import Altered, BackupNotFound, Corrupt, StorageError
from backupvault.backup.repo import snapshots
from backupvault.backup.repo.backend import Backend, Filled, MissingObject, TooLarge
from backupvault.backup.repo.chunks import Chunker, Prepared, Sealer
from backupvault.backup.repo.index import (
    OBJECT_ID_LEN,
    PACK_TRAILER_LEN,
    Index,
    IndexFile,
    PackEntry,
    max_index_len,
    max_pack_len,
    open_object,
    open_pack_header,
    seal_object,
    seal_pack_header,
    split_index,
)
from backupvault.backup.repo.keys import (
    CONFIG_LEN,
    NONCE_LEN,
    TAG_LEN,
    RepoConfig,
    RepoKeys,
    new_config,
    open_config,
)
from backupvault.backup.repo.state import default_dir
from backupvault.backup.storage import Storage
from backupvault.errors import (
    AuthenticationFailed,
    BackupVaultError,
    InvalidInput,
    UsageError,
    WrongKey,
)

CONFIG_NAME: Final = "config"
LOCK_AAD: Final = b"BVLOCK02"
FORGOTTEN_AAD: Final = b"BVFORGT2"
_FORGOTTEN = struct.Struct(">Q")  # when, in µs since the epoch
SHARED: Final = 1
EXCLUSIVE: Final = 2
LOCK_EXPIRY_S: Final = 30 * 60
LOCK_REFRESH_S: Final = 5 * 60
# A lock last refreshed this long ago may already be taken for stale by a machine whose
# clock is ahead: the backup holding it writes no index or snapshot any more (as restic).
LOCK_TRUST_S: Final = LOCK_EXPIRY_S // 2
_LOCK = struct.Struct(">BQQI")
MACHINE_ID_LEN: Final = 16
#: The largest lock and forget record written (a host name of 255 bytes); storage may
#: hold anything under their names, and they are read whole.
LOCK_MAX_LEN: Final = NONCE_LEN + TAG_LEN + _LOCK.size + 255 + 1 + MACHINE_ID_LEN
FORGOTTEN_LEN: Final = NONCE_LEN + TAG_LEN + _FORGOTTEN.size
# Where storage cannot create an object only if it is absent, how long a new repository's
# config is left before it is read back (a racing device's config has landed by then).
CREATE_SETTLE_S: Final = 2.0
log = logging.getLogger("backupvault.backup")
_SUMMARY_READ: Final = 8192
_INDEX_READ_BUDGET: Final = 256 << 20  # bytes of index objects read at once, at most
# Four packs are written at once: while some are on their way to the disk, the others are
# sealed into their aligned buffers (docs/performance.md: fewer upload threads left the
# disk idle while they sealed, and were the slowest stage of a first backup).
_UPLOAD_THREADS: Final = 4
_UPLOADS_AHEAD: Final = 5  # packs handed to the upload threads and not yet written


#: `backup prune --max-unused`'s default (maintenance.REPACK_UNUSED_FRACTION): here, as
#: the CLI reads it without loading maintenance.
REPACK_UNUSED_PERCENT: Final = 10

#: What a snapshot id argument may be instead of an id, as in restic: the latest snapshot.
LATEST = "latest"


def is_latest(snapshot_id: str) -> bool:
    """Whether a snapshot id argument names the latest snapshot ("latest", any case): ids
    are hex, so no id is taken for it."""
    return snapshot_id.strip().lower() == LATEST


class MadeWhere(Protocol):
    """A snapshot's summary, as far as a filter reads it."""

    @property
    def host(self) -> str: ...

    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class SnapshotFilter:
    """Which snapshots "latest" and a listing are taken from, as restic's --host and
    --path: those made on one of `hosts` of one of `paths` (either empty: any). A path
    may be relative, or start with `~`."""

    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hosts or self.paths)

    def matches(self, summary: MadeWhere) -> bool:
        if self.hosts and summary.host not in self.hosts:
            return False
        return not self.paths or summary.source in self._sources

    @functools.cached_property
    def _recorded(self) -> frozenset[str]:
        """Each path as `backup create` records the path typed (Path.absolute(): "x/../y"
        kept, as `backup forget` groups it)."""
        return frozenset(str(Path(p).expanduser().absolute()) for p in self.paths)

    @functools.cached_property
    def _named(self) -> frozenset[str]:
        """The folder each path names ("x/../y" is "y")."""
        return frozenset(os.path.normpath(p) for p in self._recorded)

    @functools.cached_property
    def _sources(self) -> frozenset[str]:
        return self._recorded | self._named

    def described(self) -> str:
        """What the filter lets through, for messages: " of PATH from host HOST" ("" for
        none), each path as the absolute one it names."""
        of = f" of {' or '.join(sorted(self._named))}" if self.paths else ""
        hosts = [h or '""' for h in self.hosts]  # a machine with no name records ""
        return of + (f" from host {' or '.join(hosts)}" if hosts else "")


#: No filter: every snapshot.
ANY_SNAPSHOT: Final = SnapshotFilter()


class RepositoryLocked(BackupVaultError):
    """Another backup or prune holds a lock that conflicts with ours."""


class LockLost(BackupVaultError):
    """Our lock is gone from storage, or went unrefreshed so long that another machine may
    have taken it for stale (and a prune deleted what we were about to name)."""


def new_id() -> bytes:
    return secrets.token_bytes(OBJECT_ID_LEN)


@dataclass(frozen=True)
class LockInfo:
    lock_id: str
    kind: int
    created_us: int
    refreshed_us: int
    pid: int
    host: str
    #: the machine id of the lock's writer; None in locks of versions before it
    machine: bytes | None = None
    #: why the object does not open as a lock, if it does not (then it counts as an
    #: exclusive lock written when storage says: `Repository.locks`)
    damaged: str | None = None

    def stale(self, now: float, stored_age: float | None = None) -> bool:
        """Expired, or held by a process of this machine that no longer runs. Another
        machine may have the same host name (cloned VMs, containers), so the process
        rule needs the same machine id too; a lock without one (an older version's) is
        taken for another machine's, stale only once expired.

        Expired means: last refreshed a lock expiry ago by the holder's clock against
        ours, and, when storage gives times (`stored_age`: seconds between its last write
        and the youngest lock's, by storage's clock), by storage's too. A clock ahead of
        the holder's by more than the expiry took a live lock for stale: a backup beside
        a running prune, or a prune deleting a running backup's lock."""
        age = now - self.refreshed_us / 1e6
        if stored_age is None:
            if age >= LOCK_EXPIRY_S:
                return True
        # A time ahead of ours says nothing of the lock's age (a holder's clock years
        # ahead kept its lock live for years after a crash): storage's alone decides.
        elif stored_age >= LOCK_EXPIRY_S and (age >= LOCK_EXPIRY_S or age < 0):
            return True
        if self.machine is None or self.machine != machine_id() or self.host != host_name():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class Lock:
    """A lock object, refreshed in the background while held; `purpose` names the
    command holding it in messages ("backup", "prune", ...)."""

    def __init__(self, repo: Repository, kind: int, purpose: str = "backup") -> None:
        self.repo = repo
        self.kind = kind
        self.purpose = purpose
        self.lock_id = new_id().hex()
        self.created_us = time.time_ns() // 1000
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: wall-clock time (time.time(), which counts a suspension) of the last write
        #: that succeeded; why the lock is lost, once it is
        self.refreshed = 0.0
        self._lost: str | None = None

    @property
    def name(self) -> str:
        return f"locks/{self.lock_id}"

    def _write(self) -> None:
        started = time.time()
        now = time.time_ns() // 1000
        plain = _LOCK.pack(self.kind, self.created_us, now, os.getpid()) + lock_owner()
        self.repo.backend.put(
            self.name,
            seal_object(self.repo.keys.index, LOCK_AAD + bytes.fromhex(self.lock_id), plain),
        )
        self.refreshed = started  # what others compare against is at least this old

    def acquire(self) -> None:
        self._write()
        try:
            for other in self.repo.locks():
                if other.lock_id == self.lock_id or other.kind == SHARED == self.kind:
                    continue
                if other.damaged is not None:
                    raise RepositoryLocked(
                        f"the repository holds an object that does not open as a lock: "
                        f"{other.damaged}",
                        hint="a backupvault of another version may be at work, or it is "
                        f"damage: it is ignored {LOCK_EXPIRY_S // 60} minutes after storage "
                        "last wrote it, and `backup prune` then removes it (or delete "
                        f"locks/{other.lock_id} by hand, once you know nothing is at work)",
                    )
                what = (
                    "a prune, forget or repair" if other.kind == EXCLUSIVE else "a backup or check"
                )
                age = int(time.time() - other.refreshed_us / 1e6)
                raise RepositoryLocked(
                    f"the repository is in use by {what} on {other.host} (lock {other.lock_id}, "
                    + (
                        f"refreshed {age} s ago)"
                        if age >= 0
                        else f"its time {-age} s ahead of this device's clock)"
                    ),
                    hint="wait for it to finish; a lock left by a crash on this host is "
                    f"ignored at once, from another host after {LOCK_EXPIRY_S // 60} minutes"
                    + (
                        ""
                        if age >= 0
                        else " by storage's time (where storage gives none, delete "
                        f"locks/{other.lock_id} by hand once you know nothing is at work)"
                    ),
                )
        except BaseException as error:
            self._release_beside(error)
            raise
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        """Rewrite the lock every LOCK_REFRESH_S, as long as it is held: never once it is
        lost (a lock a prune deleted is not made again, so `verify` sees it gone)."""
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                self.verify()
                self._write()
            except LockLost:
                return
            except BackupVaultError:
                continue  # storage away for a while: `verify` tells once it is too long

    def verify(self, *, read: bool = True) -> None:
        """Raise LockLost unless the lock is still in storage and was refreshed recently
        enough that no other machine may take it for stale (LOCK_TRUST_S: half the
        expiry, for clocks that disagree); without `read`, only the second (no storage
        read: before each of many deletions). A backup calls this before it writes its
        index and again before its snapshot: a prune that took the lock for stale (after a
        suspension, or with its clock ahead) deletes it before any data, so the backup
        then stops rather than name packs the prune deleted. A prune calls it before it
        writes its index and before it deletes: a backup that took the prune's lock for
        stale (the prune was suspended) may use chunks the prune found unused."""
        if self._lost is None:
            age = time.time() - self.refreshed
            if age >= LOCK_TRUST_S:
                self._lost = (
                    f"was last refreshed {int(age // 60)} minutes ago (the process was "
                    "suspended, or storage could not be written), so another machine may "
                    f"have taken it for stale after {LOCK_EXPIRY_S // 60} minutes"
                )
            elif read:
                try:
                    sealed = self.repo.backend.get(self.name, most=LOCK_MAX_LEN)
                except MissingObject:
                    self._lost = (
                        "is gone from storage (a prune on another machine took it for "
                        "stale: its clock may be ahead of this one's)"
                    )
                else:
                    aad = LOCK_AAD + bytes.fromhex(self.lock_id)
                    open_object(self.repo.keys.index, aad, sealed, f"lock {self.lock_id}")
        if self._lost is not None and self.kind == SHARED:
            raise LockLost(
                f"this backup's lock {self.lock_id} {self._lost}: a prune may have deleted "
                "data it uses, so it saved no snapshot",
                hint="run the backup again: earlier snapshots are intact",
            )
        if self._lost is not None:
            raise LockLost(
                f"this {self.purpose}'s lock {self.lock_id} {self._lost}: a backup may "
                "have started meanwhile and use what it was about to delete, so it "
                "stopped, deleting nothing more",
                hint=f"run `backupvault backup {self.purpose}` again: what it deleted "
                "was unused, and it starts afresh",
            )

    def release(self) -> None:
        """Stop refreshing and delete the lock (tried twice: storage may be failing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.repo.backend.delete(self.name)
        except StorageError:
            self.repo.backend.delete(self.name)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, kind: object, error: BaseException | None, _tb: object) -> None:
        self._release_beside(error)

    def _release_beside(self, error: BaseException | None) -> None:
        """Release while `error` is on its way out (often storage going away, which also
        fails the delete): it is what the user must see. A lock left behind is only said,
        once: in the error's hint (its name in `details["lock_left"]`), else as a warning.
        With no error (None) the work is done: a lock storage would not delete (storage
        that refuses deletes, or fails then) is a warning, not the command's failure (a
        backup's snapshot was stored, a restore's copy moved into place)."""
        try:
            self.release()
        except StorageError as exc:
            left = (
                f"its lock {self.name} could not be removed ({exc.message}): it does not "
                "keep prune or forget on this machine out (its process no longer runs; "
                "prune removes it), on another machine only until it expires, "
                f"{LOCK_EXPIRY_S // 60} minutes after it was last refreshed"
            )
            if isinstance(error, BackupVaultError):
                error.hint = f"{error.hint}; {left}" if error.hint else left
                error.details["lock_left"] = self.name
            elif error is None:
                log.warning("the command finished, but %s", left)
            else:
                log.warning("%s", left)


def lost_config(backend: Backend) -> MissingObject | None:
    """The error for storage that holds a repository's objects but no `config`, or None.
    RMK is in the config alone: without it none of them opens, and a new repository made
    there (its config in the old one's place) took them for another's, to be forgotten
    and pruned, while the old config might still be put back from storage's versions."""
    held = [folder for folder in ("snapshots", "index", "data") if backend.list(folder)]
    if not held:
        return None
    return MissingObject(
        f"{backend.display_url} holds a repository's {' and '.join(held)} but no config: "
        "it was deleted or lost (by storage, a sync tool or a rollback), and the key "
        "that opens them is in it alone",
        hint="put it back (from storage's versions of `config`, or a copy of this folder) "
        "and run the command again; nothing was written. To start anew, give another "
        "--storage folder (or move this one away)",
    )


class Repository:
    def __init__(self, backend: Backend, config: RepoConfig, keys: RepoKeys, root_key: bytes):
        self.backend = backend
        self.config = config
        self.keys = keys
        self.root_key = root_key
        self.sealer = Sealer(config, keys)
        #: Snapshot objects this handle found damaged (name -> why): they fail
        #: authentication or are no snapshot at all. Left out of every listing, so one bad
        #: object never stops list, restore, backup or forget; the commands warn of each.
        self.damaged: dict[str, str] = {}
        #: Index objects this handle found damaged (name -> why): see `index_files`.
        self.damaged_indexes: dict[str, str] = {}
        #: Snapshots storage still holds that an authentic forget record says `backup
        #: forget` removed: a forget cut short between its record and the delete, or
        #: storage bringing a forgotten snapshot back (review s42, F3). Left out of every
        #: listing as forgotten; the next `backup forget` deletes them.
        self.leftovers: set[str] = set()
        #: Snapshots storage lists but answers "not there" for, with no forget record:
        #: storage that lists and serves apart (S3, WebDAV) hid the newest so, unseen by
        #: the rollback checks, which compared the device's record with the listing (review
        #: s42, F1). Not damaged (`forget --damaged` would make the trick stick: review
        #: s42-B, B7): warned of, and the device's record of it stays.
        self.unserved: set[str] = set()
        #: The snapshots (summaries) the last `list_snapshots` found, by id: what a
        #: command reports of those it acted on (forget's dates and sources).
        self.listed: dict[str, snapshots.Snapshot] = {}
        #: Whether `open(create=True)` made this repository (its config is ours).
        self.created = False

    # ---- opening --------------------------------------------------------------------

    @staticmethod
    def exists(storage: Storage) -> bool:
        return Backend(storage).exists(CONFIG_NAME)

    @classmethod
    def open(
        cls, storage: Storage, root_key: bytes, *, create: bool = False, **params: int
    ) -> Repository:
        """The repository in `storage`; with `create`, made if there is none (then
        `created` is set if the config stored is the one this call made)."""
        backend = Backend(storage)
        try:
            raw = backend.get(CONFIG_NAME, most=CONFIG_LEN)
        except MissingObject as missing:
            lost = lost_config(backend)
            if lost is None and create:
                return cls._create(backend, root_key, params)
            if lost is None:
                raise missing from None
            try:  # another device's first backup may have stored it since we looked
                raw = backend.get(CONFIG_NAME, most=CONFIG_LEN)
            except MissingObject:
                raise lost from None
        config = RepoConfig.from_bytes(raw)
        return cls(backend, config, keys=open_config(config, root_key), root_key=root_key)

    @classmethod
    def _create(cls, backend: Backend, root_key: bytes, params: dict[str, int]) -> Repository:
        """Store a new config only if there is none, then use the config that is stored:
        two first backups at once must not each use a config of their own (the one
        replaced would leave packs, an index and a snapshot no key opens)."""
        config, keys = new_config(root_key, **params)
        ours = config.to_bytes()
        if backend.put_new(CONFIG_NAME, ours) is None:
            # Storage could not refuse an existing object: whichever config lands last is
            # the repository's; give a racing device's time to land, then read it back.
            time.sleep(CREATE_SETTLE_S)
        stored = backend.get(CONFIG_NAME, most=CONFIG_LEN)
        if stored == ours:
            repo = cls(backend, config, keys, root_key)
            repo.created = True
            return repo
        # Another device made the repository at the same moment: its config it is.
        config = RepoConfig.from_bytes(stored)
        try:
            keys = open_config(config, root_key)
        except WrongKey as exc:
            raise WrongKey(
                f"another device created the repository at {backend.display_url} at the "
                "same moment, with another key: this backup wrote nothing into it",
                hint="back up there with that device's key (its recovery code or "
                "password), or into another folder; " + (exc.hint or ""),
            ) from None
        return cls(backend, config, keys, root_key)

    def chunker(self) -> Chunker:
        return Chunker(self.config, self.keys)

    # ---- index ------------------------------------------------------------------------

    def index_files(self) -> dict[str, IndexFile]:
        """Every live index object (those superseded by another are left out).

        An index object that fails authentication (damaged, or written under another
        config by a device that lost a race to create the repository) is left out and
        noted in `damaged_indexes`, rather than failing every command for good: its packs
        are then unindexed, and `load_index` reads them back from their own
        authenticated headers, so nothing they hold is lost or taken for garbage (prune
        keeps what snapshots use, and its new index replaces the damaged one); packs
        whose header does not open either are unreadable anyway."""
        listed = self.backend.list("index")
        names = list(listed)
        most = max_index_len(self.config)

        def read_one(name: str) -> IndexFile | str | None:
            if listed[name] > most:  # not read at all, as a pack listed larger than any
                return _oversized_index(f"listed at {listed[name]} bytes", most)
            return self._read_index(name)

        # As many at once as fit in a budget: each may be `most` bytes of planted data
        # (1.6 GB with 1 GiB packs), and 8 of those at once were 13 GB.
        workers = max(1, min(8, _INDEX_READ_BUDGET // most))
        with ThreadPoolExecutor(workers) as pool:
            read = list(pool.map(read_one, names))
        files: dict[str, IndexFile] = {}
        for name, found in zip(names, read, strict=True):
            if isinstance(found, IndexFile):
                files[name] = found
            elif found is not None:
                self.damaged_indexes[name] = found
        superseded = {s.hex() for f in files.values() for s in f.supersedes}
        return {name: f for name, f in files.items() if name not in superseded}

    def _read_index(self, name: str) -> IndexFile | str | None:
        """The index object, why it cannot be read, or None if it is gone (a prune)."""
        most = max_index_len(self.config)
        try:
            sealed = self.backend.get(f"index/{name}", most=most)
        except MissingObject:
            return None
        except TooLarge:
            return _oversized_index(f"longer than {most} bytes", most)
        except InvalidInput as exc:  # no file (a FIFO, a device)
            return exc.message
        try:
            return IndexFile.open(self.keys.index, bytes.fromhex(name), sealed)
        except (AuthenticationFailed, InvalidInput) as exc:
            return exc.message

    def load_index(
        self, *, adopt_unindexed: bool = True
    ) -> tuple[Index, dict[str, int], list[str]]:
        """(index, {pack name: size} of every pack in storage, unindexed packs adopted).

        Packs that no index names (left by an interrupted backup) are read whole and every
        blob in them verified (a crash may have left them torn), so their chunks are
        reused; damaged ones are ignored (prune removes them)."""
        index = Index()
        for index_file in self.index_files().values():
            for pack_id, entries in index_file.packs.items():
                index.add_pack(pack_id, entries)
        packs = self.backend.list("data")
        adopted: list[str] = []
        if self.damaged_indexes and not adopt_unindexed:
            # Packs a damaged index named may hold chunks snapshots use: indexed from
            # their own headers (two ranged reads each, authenticated under the index key).
            for name, size in packs.items():
                if bytes.fromhex(name) in index.packs:
                    continue
                try:
                    index.add_pack(bytes.fromhex(name), self.read_pack_header(name, size))
                except (AuthenticationFailed, InvalidInput):
                    continue  # not a pack of this key (a race's loser's), or torn
                # A storage error goes up: a pack skipped for a failed read would look
                # unindexed, and prune would delete chunks snapshots use.
        if adopt_unindexed:
            for name, size in packs.items():
                pack_id = bytes.fromhex(name)
                if pack_id in index.packs or size > max_pack_len(self.config):
                    continue  # indexed, or larger than any pack: not read at all
                try:
                    # The header first (two small reads): an object planted under a
                    # pack's name was read whole, up to max_pack_len, by every backup.
                    self.read_pack_header(name, size)
                    entries = self.verify_pack(pack_id)
                except BackupVaultError:
                    continue
                index.add_pack(pack_id, entries)
                adopted.append(name)
        return index, packs, adopted

    def verify_pack(self, pack_id: bytes) -> list[PackEntry]:
        """Read a whole pack, open its header and every blob; its entries if all are good."""
        data = self.backend.get(f"data/{pack_id.hex()}", most=max_pack_len(self.config))
        entries = open_pack_header(self.keys.index, pack_id, data)
        view = memoryview(data)
        for entry in entries:
            blob = view[entry.offset : entry.offset + entry.length]
            self.sealer.open(entry.chunk_id, blob, entry.raw_length)
        return entries

    def write_index(
        self, packs: dict[bytes, list[PackEntry]], supersedes: Iterable[bytes] = ()
    ) -> tuple[list[str], int]:
        """(names, total size) of new index objects for `packs`, naming `supersedes` as
        superseded: as many objects as keep each within `max_index_len`, written one
        after another in `split_index`'s order (each durable before the next)."""
        names: list[str] = []
        stored = 0
        for part in split_index(dict(packs), supersedes):
            index_id = new_id()
            sealed = part.seal(self.keys.index, index_id)
            self.backend.put(f"index/{index_id.hex()}", sealed)
            names.append(index_id.hex())
            stored += len(sealed)
        return names, stored

    def read_pack_header(self, name: str, size: int) -> list[PackEntry]:
        """A pack's entries from its trailer alone (two ranged reads); `size` is what
        storage lists, which remote storage may make up."""
        pack_id = bytes.fromhex(name)
        if not PACK_TRAILER_LEN <= size <= max_pack_len(self.config):
            raise Corrupt(f"pack {name} is listed with a size no pack has ({size} bytes)")
        trailer = self.backend.get(f"data/{name}", size - PACK_TRAILER_LEN, size)
        if len(trailer) != PACK_TRAILER_LEN:
            raise Corrupt(f"pack {name} is shorter than storage lists it")
        (sealed_len,) = struct.unpack(">I", trailer)
        start = size - PACK_TRAILER_LEN - sealed_len
        if start < 0:
            raise Corrupt(f"pack {name} is cut off, or has bytes added after its end")
        tail = self.backend.get(f"data/{name}", start, size)
        if len(tail) != size - start:
            raise Corrupt(f"pack {name} is shorter than storage lists it")
        return open_pack_header(self.keys.index, pack_id, tail, start)

    # ---- snapshots --------------------------------------------------------------------

    def snapshot_names(self) -> dict[str, int]:
        return self.backend.list("snapshots")

    def read_snapshot(
        self, name: str, *, with_tree: bool = True, most: int = snapshots.MAX_LEN
    ) -> snapshots.Snapshot:
        """`most`: read no more than this (the size storage listed: one that serves more
        than it lists is refused, review s42-B, B5)."""
        path = f"snapshots/{name}"
        if with_tree:
            # Its header and summary authenticated first (a small read): an object planted
            # under a snapshot's name is then never read whole (up to MAX_LEN, 2 GiB, by
            # check and repair, and by prune on 8 threads at once).
            self.read_snapshot(name, with_tree=False)
            data = self.backend.get(path, most=min(most, snapshots.MAX_LEN))
        else:
            data = self.backend.get(path, 0, _SUMMARY_READ)
            if len(data) >= snapshots.HEADER_LEN + 4:
                (n,) = struct.unpack_from(">I", data, snapshots.HEADER_LEN)
                if n > snapshots.MAX_SEALED_SUMMARY:
                    raise Corrupt(f"snapshot {name} declares a summary of {n} bytes")
                if snapshots.HEADER_LEN + 4 + n > len(data):
                    data = self.backend.get(path, 0, snapshots.HEADER_LEN + 4 + n)
        return snapshots.open_snapshot(
            data, self.root_key, self.keys.repo_id, bytes.fromhex(name), with_tree=with_tree
        )

    def list_snapshots(self, names: Iterable[str] | None = None) -> list[snapshots.Snapshot]:
        """Every snapshot (summaries only), oldest first, each authenticated; `names`: the
        snapshot objects' names, if already listed."""
        names = list(self.snapshot_names() if names is None else names)
        # One listing of the forget records, read only for snapshots storage still lists.
        recorded = set(self.backend.list("forgotten")) & set(names) if names else set()

        def summary(name: str) -> snapshots.Snapshot | None:
            if name in recorded and self.is_forgotten(name):
                self.leftovers.add(name)
                return None
            try:
                return self.read_snapshot(name, with_tree=False)
            except MissingObject:
                if self.is_forgotten(name):
                    return None  # forgotten since it was listed (forget on another device)
                # Listed, but not there when read: storage that lists and serves apart
                # (S3, WebDAV) can hide the newest so; the rollback checks must see it
                # (review s42, F1).
                self.unserved.add(name)
                return None
            except (AuthenticationFailed, InvalidInput) as exc:
                self.found_damaged(name, exc)
                return None

        with ThreadPoolExecutor(8) as pool:
            found = [s for s in pool.map(summary, names) if s is not None]
        found.sort(key=lambda s: (s.header.created_at_us, s.id_hex))
        self.listed = {s.id_hex: s for s in found}
        return found

    def is_forgotten(self, name: str) -> bool:
        """`was_forgotten`, a damaged record counting as none (the snapshot stays listed:
        storage cannot hide one by spoiling its record)."""
        try:
            return self.was_forgotten(name)
        except BackupVaultError:
            return False

    def leftover_warnings(self) -> list[str]:
        """One warning per snapshot `leftovers` or `unserved` holds (found by
        `list_snapshots`)."""
        return [leftover_warning(name) for name in sorted(self.leftovers)] + [
            unserved_warning(name) for name in sorted(self.unserved)
        ]

    def found_damaged(self, name: str, exc: BackupVaultError) -> None:
        """Note snapshot object `name` as damaged, `exc` saying why."""
        self.damaged[name] = exc.message.removeprefix(f"snapshot {name} ")

    def find_snapshot(
        self, prefix: str | None, only: SnapshotFilter = ANY_SNAPSHOT
    ) -> snapshots.Snapshot:
        """The latest snapshot (`prefix` None or "latest", as restic names it) of those
        `only` lets through, or the one whose id starts with `prefix`, with its tree."""
        names = sorted(self.snapshot_names())
        if prefix is None or is_latest(prefix):
            listed = [s for s in self.list_snapshots() if only.matches(s.summary)]
            hidden = sorted(self.damaged.keys() | self.unserved)
            if not listed and only and hidden:
                # A snapshot whose header does not open, or that storage lists and does not
                # serve, hides its host and folder: it may be the one asked for, so its
                # absence is not said (reviews s43).
                raise Altered(
                    f"no readable snapshot{only.described()} at {self.backend.display_url}:"
                    f" {len(hidden)} snapshot{'s' * (len(hidden) != 1)} cannot be read"
                    f" ({', '.join(hidden)})",
                    hint="run `backupvault backup check` to see what is damaged or missing; a"
                    " snapshot id restores one of the others",
                )
            if not listed and (only or not self.damaged):
                raise BackupNotFound(
                    f"no snapshots{only.described()} at {self.backend.display_url}",
                    hint="`backupvault backup list` shows each snapshot's host and source"
                    if only
                    else None,
                )
            # The newest whose tree opens too: a tree damaged (or an object grown by a byte)
            # is passed over as a damaged header is, not a restore of the latest stopped
            # (storage review s42, F7).
            newest_failure: BackupVaultError | None = None
            for candidate in reversed(listed):
                try:
                    return self.read_snapshot(candidate.id_hex)
                except (AuthenticationFailed, InvalidInput) as exc:
                    self.found_damaged(candidate.id_hex, exc)
                    newest_failure = newest_failure or exc
            if newest_failure is not None:
                raise newest_failure  # none opens: what stops the newest
            name, why = next(iter(self.damaged.items()))
            raise Altered(
                f"no snapshot at {self.backend.display_url} can be read: {name}: {why}",
                hint="run `backupvault backup check` to see what is damaged",
            )
        return self.read_snapshot(self.snapshot_id(prefix, names))

    def snapshot_id(self, prefix: str, names: Collection[str] | None = None) -> str:
        """The one snapshot object whose id starts with `prefix` (among `names`, or those
        storage lists); BackupNotFound if none does, UsageError if several do."""
        wanted = prefix.strip().lower()
        listed = self.snapshot_names() if names is None else names
        matches = sorted(n for n in listed if n.startswith(wanted))
        if not wanted or not matches:
            raise BackupNotFound(
                f"no snapshot with id {wanted} at {self.backend.display_url}",
                hint="`backupvault backup list` shows the snapshots and their ids",
            )
        if len(matches) > 1:
            raise UsageError(
                f"snapshot id prefix {wanted} matches {len(matches)} snapshots",
                hint="give more of the id (`backupvault backup list` shows them)",
            )
        return matches[0]

    def mark_forgotten(self, snapshot_id: str) -> None:
        """Record that `backup forget` removes this snapshot (before it does): a snapshot
        naming it as parent then tells a forgotten parent from one storage hides."""
        plain = _FORGOTTEN.pack(time.time_ns() // 1000)
        aad = FORGOTTEN_AAD + bytes.fromhex(snapshot_id)
        self.backend.put(f"forgotten/{snapshot_id}", seal_object(self.keys.index, aad, plain))

    def why_gone(self, snapshot_id: str, what: str) -> tuple[str | None, str | None]:
        """For a snapshot that is gone: (what is wrong with its forget record, if it is
        forged or damaged; the warning to give, None if `backup forget` removed it)."""
        try:
            if self.was_forgotten(snapshot_id):
                return None, None
            bad_record = None
        except BackupVaultError as exc:
            bad_record = exc.message
        return bad_record, (
            f"{what} {snapshot_id} is gone, and no `backup forget` removed it: storage may be"
            " hiding it (a rollback), or it was deleted by hand or by a backupvault older"
            " than forget records"
        )

    def was_forgotten(self, snapshot_id: str) -> bool:
        """Whether an authentic record says `backup forget` removed this snapshot. Storage
        cannot make one (sealed under the index key, bound to this repository's snapshot
        id); a record that fails authentication raises."""
        try:
            sealed = self.backend.get(f"forgotten/{snapshot_id}", most=FORGOTTEN_LEN)
        except MissingObject:
            return False
        what = f"the forget record of snapshot {snapshot_id}"
        aad = FORGOTTEN_AAD + bytes.fromhex(snapshot_id)
        if len(open_object(self.keys.index, aad, sealed, what)) != _FORGOTTEN.size:
            raise Corrupt(f"{what} has the wrong length")
        return True

    # ---- locks ------------------------------------------------------------------------

    def lock(self, kind: int, purpose: str = "backup") -> Lock:
        return Lock(self, kind, purpose)

    @contextlib.contextmanager
    def reading_lock(self) -> Iterator[str]:
        """A shared lock for work that only reads (check, restore): no prune, forget or
        repair deletes what is being read (backups may run beside it). On storage this
        device cannot write to, none: then it yields why (else "")."""
        try:
            lock = self.lock(SHARED)
            lock.acquire()
        except StorageError as exc:
            yield exc.message
            return
        # As a lock's `with` ends: a failed removal neither hides the error on its way out
        # (damage was reported as the delete refused) nor fails work that is done.
        try:
            yield ""
        except BaseException as error:
            lock._release_beside(error)
            raise
        lock._release_beside(None)

    def locks(self, *, include_expired: bool = False) -> list[LockInfo]:
        """Live locks (and stale ones too with `include_expired`).

        Each lock's age by storage's clock is how long before the youngest lock listed
        storage last wrote it: every caller holds a lock of its own, written at most a
        refresh ago, so that is at most a refresh less than its age, and no clock of a
        device enters it (`LockInfo.stale`)."""
        found = []
        now = time.time()
        ages = self.backend.ages("locks")
        youngest = min((a for a in ages.values() if a is not None), default=None)

        def stored_age(name: str) -> float | None:
            age = ages.get(name)
            return None if age is None or youngest is None else age - youngest

        for name in self.backend.list("locks"):
            try:
                sealed = self.backend.get(f"locks/{name}", most=LOCK_MAX_LEN)
                plain = open_object(
                    self.keys.index, LOCK_AAD + bytes.fromhex(name), sealed, f"lock {name}"
                )
                if len(plain) < _LOCK.size:
                    raise Corrupt(f"lock {name} is truncated")
                if plain[0] not in (SHARED, EXCLUSIVE):
                    # A later version's kind: what it excludes is unknown, so it is held
                    # as any lock that does not open, not named as a backup's.
                    raise Corrupt(f"lock {name} has an unknown kind {plain[0]}")
            except MissingObject:
                continue
            except (AuthenticationFailed, InvalidInput) as exc:
                # Damage, or a lock of another version: it counts as an exclusive lock (it
                # may be one) until storage says it was written a lock expiry ago; a live
                # holder rewrites its lock every few minutes. Else it stopped every
                # command, prune's removal of stale locks included, for good.
                age = stored_age(name)
                written = int((now - (age or 0.0)) * 1e6)
                info = LockInfo(name, EXCLUSIVE, written, written, 0, "", damaged=exc.message)
                if include_expired or not info.stale(now):
                    found.append(info)
                continue
            kind, created, refreshed, pid = _LOCK.unpack_from(plain)
            owner = plain[_LOCK.size :]
            machine: bytes | None = None
            if len(owner) > MACHINE_ID_LEN and owner[-MACHINE_ID_LEN - 1] == 0:
                owner, machine = owner[: -MACHINE_ID_LEN - 1], owner[-MACHINE_ID_LEN:]
            host = owner.decode(errors="replace")
            info = LockInfo(name, kind, created, refreshed, pid, host, machine)
            if include_expired or not info.stale(now, stored_age(name)):
                found.append(info)
        return found


def _oversized_index(size: str, most: int) -> str:
    """Why an index object longer than any this version writes is left out: planted, or
    written by a version before index objects were split (one object per prune)."""
    return (
        f"{size}, larger than any index object this version writes ({most} bytes): "
        "planted by storage, or written whole by a version before the index was split, "
        "which `backup repair` rewrites in parts"
    )


class Holder(Protocol):
    """Something a pending blob's bytes live in (a read window), let go once the blob is
    sealed into its pack."""

    def release(self) -> None: ...


_Item = TypeVar("_Item")
_Value = TypeVar("_Value")


def shuffled(items: list[_Item]) -> list[_Item]:
    """`items` in an order drawn from the system's CSPRNG: sorted by 64-bit keys from one
    os.urandom call (ties, about n**2 / 2**65 likely, only keep the order between two).
    SystemRandom.shuffle asked the kernel once per item: 0.3 s of the main thread's time
    in a backup of 50,000 small files (docs/performance.md)."""
    keys = struct.unpack(f"<{len(items)}Q", os.urandom(8 * len(items)))
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]


class PackWriter:
    """Collects chunk blobs into packs of about the configured size; each pack's blobs go
    out in random order, its header last. Blobs come sealed (prune copies them) or
    `Prepared` (a backup's): those are sealed straight into the pack's buffer on the
    upload threads that write the packs."""

    def __init__(self, repo: Repository, index: Index) -> None:
        self.repo = repo
        self.index = index
        self.pending: dict[bytes, tuple[bytes | bytearray | memoryview | Prepared, int]] = {}
        self._pending_size = 0
        self._holders: list[Holder] = []
        self.written: dict[bytes, list[PackEntry]] = {}
        self.stored = 0
        self._uploader = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="pack-upload")
        self._uploads: list[Future[None]] = []

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self.pending or chunk_id in self.index.chunks

    def add(
        self,
        chunk_id: bytes,
        blob: bytes | bytearray | memoryview | Prepared,
        raw_length: int,
        holder: Holder | None = None,
    ) -> None:
        """Add a blob unless its chunk is stored or pending; `holder` (what the blob's
        bytes live in) is released once they are no longer needed."""
        if chunk_id in self:
            if holder is not None:
                holder.release()
            return
        self.pending[chunk_id] = (blob, raw_length)
        if holder is not None:
            self._holders.append(holder)
        self._pending_size += blob.size if isinstance(blob, Prepared) else len(blob)
        if self._pending_size >= self.repo.config.pack_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        items = shuffled(list(self.pending.items()))
        pack_id = new_id()
        entries: list[PackEntry] = []
        offset = 0
        for chunk_id, (blob, raw_length) in items:
            length = blob.size if isinstance(blob, Prepared) else len(blob)
            entries.append(PackEntry(chunk_id, offset, length, raw_length))
            offset += length
        header = seal_pack_header(self.repo.keys.index, pack_id, entries)
        self.index.add_pack(pack_id, entries)
        self.written[pack_id] = entries
        holders = self._holders
        self.pending, self._pending_size, self._holders = {}, 0, []
        self.stored += offset + len(header)
        sealer = self.repo.sealer
        blobs_end = offset

        def let_go() -> None:
            """The blobs' sources freed for reuse (once, by whichever comes first)."""
            items.clear()
            while holders:
                holders.pop().release()

        def fill(out: memoryview) -> None:
            for (chunk_id, (blob, _raw)), entry in zip(items, entries, strict=True):
                with out[entry.offset : entry.offset + entry.length] as room:
                    if isinstance(blob, Prepared):
                        sealer.seal_into(chunk_id, blob, room)
                    else:
                        room[:] = blob
            out[blobs_end:] = header
            # Sealed: the read windows go back to the reader now, not after the write
            # and fsync, so fewer are ever made (each fresh page costs a fault).
            let_go()

        self._wait_uploads(_UPLOADS_AHEAD - 1)  # bounded memory
        self._uploads.append(
            # Each pack is synced on the upload thread, so the disk writes while the next
            # packs are made, rather than in one sync at the end; their folder once, in
            # finish.
            self._uploader.submit(
                self.repo.backend.put,
                f"data/{pack_id.hex()}",
                Filled(offset + len(header), fill),
                sync_folder=False,
            )
        )

        # Written, or failed before or while sealing: nobody reads the blobs again.
        self._uploads[-1].add_done_callback(lambda _upload: let_go())

    def _wait_uploads(self, most: int) -> None:
        """Wait until at most `most` uploads are unfinished, raising the error of any that
        failed (each finished one is checked before it is let go)."""
        while True:
            unfinished: list[Future[None]] = []
            for upload in self._uploads:
                if upload.done():
                    upload.result()
                else:
                    unfinished.append(upload)
            self._uploads = unfinished
            if len(unfinished) <= most:
                return
            wait(unfinished, return_when=FIRST_COMPLETED)

    def finish(self) -> None:
        """Flush and wait for every upload, raising the first error; then every pack
        written is durable, name included."""
        try:
            self.flush()
            self._wait_uploads(0)
        finally:
            self._uploader.shutdown(wait=True, cancel_futures=True)
        if self.written:
            self.repo.backend.sync_folder("data")

    def abort(self) -> None:
        self._uploader.shutdown(wait=True, cancel_futures=True)


def host_name() -> str:
    """This machine's name (as `hostname` prints it; platform, unlike socket, is already
    loaded at start-up)."""
    return platform.node()


_machine_id: bytes | None = None
_MACHINE_ID_FILE = "machine-id"
#: The inode of Linux's initial PID namespace (PROC_PID_INIT_INO): a process in no
#: container or sandbox.
_INIT_PID_NAMESPACE: Final = 0xEFFFFFFC


def machine_id() -> bytes:
    """16 bytes naming this machine in locks, so that the rule "a lock of this host whose
    process no longer runs is stale" never applies to another machine that has the same
    host name. Derived from /etc/machine-id (keyed, as systemd asks: the raw id is not
    shown to anyone else); else a random id kept in the state folder; else one for this
    process alone (its locks are then only ever stale once expired).

    In a PID namespace of its own (a container sharing the host's name and machine-id,
    with --uts=host or --network=host; a flatpak sandbox), the namespace is part of the
    id: its process ids are not this machine's, and a running prune outside it, whose
    process a backup inside could not see, was taken for a crash (review s61)."""
    global _machine_id
    if _machine_id is None:
        found = _read_machine_id()
        namespace = _pid_namespace()
        if namespace is not None and namespace != _INIT_PID_NAMESPACE:
            label = b"backupvault lock pid namespace %d" % namespace
            found = hmac.digest(found, label, "sha256")[:MACHINE_ID_LEN]
        _machine_id = found
    return _machine_id


def _pid_namespace() -> int | None:
    """The inode of this process's PID namespace, where there is one to read (Linux)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _read_machine_id() -> bytes:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, "rb") as handle:
                raw = handle.read(64).strip()
        except OSError:
            continue
        if raw:
            return hmac.digest(raw, b"backupvault lock machine id", "sha256")[:MACHINE_ID_LEN]
    kept = default_dir() / _MACHINE_ID_FILE
    with contextlib.suppress(OSError, ValueError):
        found = bytes.fromhex(kept.read_text().strip())
        if len(found) == MACHINE_ID_LEN:
            return found
    made = secrets.token_bytes(MACHINE_ID_LEN)
    with contextlib.suppress(OSError):
        kept.parent.mkdir(parents=True, exist_ok=True)
        temp = kept.with_name(f".{_MACHINE_ID_FILE}.{secrets.token_hex(8)}")
        temp.write_text(made.hex() + "\n")
        try:
            os.link(temp, kept)  # two first runs at once: both use the one kept
        except FileExistsError:
            pass
        finally:
            temp.unlink()
        found = bytes.fromhex(kept.read_text().strip())
        if len(found) == MACHINE_ID_LEN:
            return found
    return made


def lock_owner() -> bytes:
    """Who holds a lock, as its object says: host name (at most 255 bytes, no NUL),
    0x00, machine id."""
    host = host_name().encode().replace(b"\0", b"")[:255]
    return host + b"\0" + machine_id()


def cpu_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


class _ProcessSetting(Generic[_Value]):
    """A process-wide setting held at `during` while at least one backup or restore runs.
    Runs are counted, as the setting is the process's (runs in threads of one process
    overlap): its value before the first comes back after the last ends."""

    def __init__(
        self, read: Callable[[], _Value], write: Callable[[_Value], object], during: _Value
    ) -> None:
        self._read, self._write, self._during = read, write, during
        self._lock = threading.Lock()
        self._runs = 0
        self._before = during

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._runs:
                self._before = self._read()
                self._write(self._during)
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if not self._runs:
                    self._write(self._before)


#: Python's cycle collector off. Backups and restores make almost no reference cycles (13
#: unreachable objects after a backup of 50,000 files, the same after one of 512 MiB), but
#: their growing lists of entries had the collector scan the heap again and again with the
#: GIL held: 0.29 s of a 4 s backup of 50,000 small files, 0.14 s of its restore
#: (docs/performance.md).
cycle_collector_paused = _ProcessSetting(
    gc.isenabled, lambda on: gc.enable() if on else gc.disable(), False
)

#: The GIL handed over every 0.5 ms rather than every 5 ms, while a backup runs: its
#: workers make a few short system calls a small file (open, fstat, read, close), each
#: letting go of the GIL and then waiting for it; with the default, up to 5 ms behind a
#: thread running Python. A backup of 50,000 small files took about 7 % less time; one of
#: large files the same; a restore of the small files 6 % more, so it keeps the default
#: (docs/performance.md, "Eighth pass").
short_gil_turns = _ProcessSetting(sys.getswitchinterval, sys.setswitchinterval, 0.0005)


def leftover_warning(name: str) -> str:
    """The warning for a snapshot storage holds that `backup forget` removed."""
    return (
        f"snapshot {name} was removed by `backup forget`, yet storage still holds it (a forget"
        " cut short, or storage bringing it back): it is left out as forgotten, and the next"
        " `backup forget` deletes it"
    )


def unserved_warning(name: str) -> str:
    """The warning for a snapshot storage lists but answers "not there" for."""
    return (
        f"snapshot {name} is listed, but storage answers that it is not there, and no"
        " `backup forget` removed it: storage may be hiding it (a rollback)"
    )
