"""The witness's append-only log on SQLite.

Tables (history is never rewritten; triggers refuse UPDATE and DELETE on leaves and
checkpoints, an INSERT that is not the next index, and a fleet update that does not
raise the epoch or that changes the pinned operator key):

    meta(key, value)                  origin and witness public key this log belongs to
    leaves(idx, data, hash)           idx = 0, 1, 2, … ; data = OperatorSignedRecord bytes
    fleets(fleet_id, operator_key, last_epoch, last_index)
                                      last_epoch is u64 big-endian (SQLite integers are i64)
    checkpoints(size, root, note)     every checkpoint the witness signed
    receipts(idx, receipt)            the WitnessReceipt first given for leaf idx; a
                                      resubmission gets exactly this one back

On open the store recomputes every leaf hash and checks the tree against the largest
checkpoint it signed; a database that lost or changed entries is refused
(`WitnessStoreCorrupt`). Leaf hashes are kept in memory (with every complete subtree's
hash, so a root or proof costs O(log² n) hashes, not O(n)): fine for the number of
deployments a witness sees (millions of records would want a tiled store).

A database restored from an older copy is consistent with itself, so it is also checked
against the **head file**, kept outside the database (by default `<database>.head`; put it
on another volume than the database's backups):

    "backupvault witness head v1\n" <tree size, decimal> "\n" base64(root hash) "\n"

The head names the largest tree the witness has signed a checkpoint for. It is written
(temporary file, fsync, rename, fsync of the folder) after the leaves are committed and
before a checkpoint of that size leaves the witness. On open, the database must hold that
tree (its first `size` leaves hash to `root`); otherwise the witness refuses to start
(`WitnessRolledBack`) and signs nothing. A database without a head file is accepted only
while it is empty (a new log).

One store per database at a time: it holds an exclusive flock on `<database>.lock` while
open, and a second one (another `witness serve` on the same file) is refused
(`WitnessStoreInUse`) before it reads anything.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from backupvault.files import replace_durably, try_lock
from backupvault.transparency import merkle
from backupvault.transparency.errors import (
    EpochReplayed,
    WitnessRolledBack,
    WitnessStoreCorrupt,
    WitnessStoreInUse,
)

HEAD_MAGIC = "backupvault witness head v1\n"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY, data BLOB NOT NULL, hash BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS fleets (
    fleet_id BLOB PRIMARY KEY, operator_key BLOB NOT NULL,
    last_epoch BLOB NOT NULL, last_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (idx INTEGER PRIMARY KEY, receipt BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS receipts_no_update BEFORE UPDATE ON receipts
    BEGIN SELECT RAISE(ABORT, 'receipts are kept as first given'); END;
CREATE TRIGGER IF NOT EXISTS leaves_append_only BEFORE INSERT ON leaves
    WHEN NEW.idx IS NOT (SELECT COUNT(*) FROM leaves)
    BEGIN SELECT RAISE(ABORT, 'leaves are appended at the next index'); END;
CREATE TRIGGER IF NOT EXISTS leaves_no_update BEFORE UPDATE ON leaves
    BEGIN SELECT RAISE(ABORT, 'leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS leaves_no_delete BEFORE DELETE ON leaves
    BEGIN SELECT RAISE(ABORT, 'leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS fleets_no_delete BEFORE DELETE ON fleets
    BEGIN SELECT RAISE(ABORT, 'fleets are never forgotten'); END;
CREATE TRIGGER IF NOT EXISTS fleets_monotonic BEFORE UPDATE ON fleets
    WHEN NEW.last_epoch <= OLD.last_epoch OR NEW.operator_key IS NOT OLD.operator_key
      OR NEW.fleet_id IS NOT OLD.fleet_id
    BEGIN SELECT RAISE(ABORT, 'a fleet epoch only grows and its operator key is pinned'); END;
"""


def _lock_exclusively(database: Path) -> int:
    """An exclusive lock (`files.try_lock`) on `<database>.lock`, held until the store
    closes; WitnessStoreInUse if another store holds it (one log, one writer; no waiting,
    unlike `files.locked`)."""
    lock_path = database.with_name(database.name + ".lock")
    try:
        fd = try_lock(lock_path)
    except OSError as err:
        raise WitnessStoreCorrupt(
            f"cannot open the lock file {lock_path}: {err.strerror}"
        ) from None
    if fd is None:
        raise WitnessStoreInUse(
            f"{database} is in use by another witness process ({lock_path} is locked)",
            hint="one log has one witness process; stop the other one first",
        )
    return fd


def _epoch(value: int) -> bytes:
    return struct.pack(">Q", value)


@dataclass(frozen=True)
class FleetState:
    operator_key: bytes
    last_epoch: int
    last_index: int


class WitnessStore:
    """One witness log in one SQLite file. Thread-safe (one lock around the connection)."""

    def __init__(
        self, path: str | Path, origin: str, public_key: bytes, head_file: str | Path | None = None
    ) -> None:
        self.path = Path(path)
        self.head_file = (
            self.path.with_name(self.path.name + ".head") if head_file is None else Path(head_file)
        )
        self._lock = threading.RLock()
        # Before anything is read: the tree is kept in memory, so a second store on this
        # database would append from a stale view and write its smaller head over ours.
        self._lock_fd: int | None = _lock_exclusively(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException as err:
            self._unlock()
            if isinstance(err, sqlite3.DatabaseError):
                raise self._unreadable(err) from None
            raise
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._bind(origin, public_key)
            self._tree = self._load()
            self._head = self._check_head()
        except BaseException as err:
            self._db.close()
            self._unlock()
            if isinstance(err, sqlite3.DatabaseError):
                raise self._unreadable(err) from None
            raise

    def _unreadable(self, err: sqlite3.DatabaseError) -> WitnessStoreCorrupt:
        """A database SQLite cannot open or read (a torn or truncated file, another file
        at the path): the witness signs nothing, and says so rather than crashing."""
        return WitnessStoreCorrupt(
            f"the witness database {self.path} cannot be read: {err}",
            hint="it is damaged or is not a witness database; restore it from a copy at least"
            f" as new as the head file {self.head_file} (the witness signs nothing until then)",
        )

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _bind(self, origin: str, public_key: bytes) -> None:
        expected = {"origin": origin.encode(), "public_key": public_key}
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", expected.items())
            self._db.execute("COMMIT")
            return
        for key, value in expected.items():
            if rows.get(key) != value:
                raise WitnessStoreCorrupt(
                    f"{self.path} is the log of another witness ({key} differs)",
                    hint="each witness name and key has its own database",
                )

    def _load(self) -> merkle.Tree:
        hashes = merkle.Tree()
        for idx, data, stored in self._db.execute(
            "SELECT idx, data, hash FROM leaves ORDER BY idx"
        ):
            if idx != len(hashes) or merkle.leaf_hash(data) != stored:
                raise WitnessStoreCorrupt(f"{self.path}: leaf {idx} is missing or altered")
            hashes.append(stored)
        row = self._db.execute(
            "SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            size, root = row
            if size > len(hashes) or hashes.root(size) != root:
                raise WitnessStoreCorrupt(
                    f"{self.path} no longer holds the tree of size {size} this witness signed",
                    hint="restore the database from a copy at least as new as the last checkpoint",
                )
        return hashes

    def _read_head(self) -> tuple[int, bytes] | None:
        try:
            text = self.head_file.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise WitnessRolledBack(f"cannot read the head file {self.head_file}: {err}") from None
        lines = text[len(HEAD_MAGIC) :].split("\n")
        try:
            if not text.startswith(HEAD_MAGIC) or len(lines) != 3 or lines[2]:
                raise ValueError("layout")
            size, root = int(lines[0]), base64.b64decode(lines[1], validate=True)
            if size < 0 or len(root) != merkle.HASH_LEN:
                raise ValueError("values")
        except (ValueError, binascii.Error):
            raise WitnessRolledBack(f"the head file {self.head_file} is malformed") from None
        return size, root

    def _check_head(self) -> int:
        """The size of the largest tree signed for (from the head file), after checking that
        the database holds it."""
        head = self._read_head()
        if head is None:
            if len(self._tree):
                raise WitnessRolledBack(
                    f"{self.path} holds {len(self._tree)} leaves but the head file"
                    f" {self.head_file} is missing, so a restored copy cannot be told apart",
                    hint="put the head file back (it is never restored with the database)",
                )
            self._write_head(0, merkle.root_from_hashes([]))
            return 0
        size, root = head
        if size > len(self._tree) or self._tree.root(size) != root:
            raise WitnessRolledBack(
                f"{self.path} holds {len(self._tree)} leaves, older than the tree of size"
                f" {size} this witness already signed (head file {self.head_file})",
                hint="the database was restored from an older copy; signing now could fork the"
                " log. Restore a copy at least as new as the head, or retire this log",
            )
        return size

    def _write_head(self, size: int, root: bytes) -> None:
        text = f"{HEAD_MAGIC}{size}\n{base64.b64encode(root).decode()}\n"
        replace_durably(self.head_file, text.encode(), mode=0o644)

    def advance_head(self, size: int) -> None:
        """Record (durably) that a checkpoint of `size` is about to be handed out."""
        with self._lock:
            if size <= self._head:
                return
            self._write_head(size, self._tree.root(size))
            self._head = size

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._unlock()

    # --- reads ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._tree)

    def hashes(self, size: int | None = None) -> list[bytes]:
        """The leaf hashes of the tree of `size` leaves (default: the whole log); O(n), so
        for audits and tests, not for answering requests (the methods below are)."""
        with self._lock:
            end = self.size if size is None else min(size, self.size)
            return [self._tree.leaf(i) for i in range(end)]

    def leaf_hash(self, index: int) -> bytes:
        with self._lock:
            return self._tree.leaf(index)

    def root(self, size: int) -> bytes:
        """The root of the tree of the first `size` leaves (size <= self.size)."""
        with self._lock:
            return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        with self._lock:
            return self._tree.consistency_proof(old, new)

    def leaves(self, start: int, end: int, max_bytes: int | None = None) -> list[bytes]:
        """leaves[start:end] in order; with `max_bytes`, only the first ones that fit in it
        together (the first always), read no further."""
        found: list[bytes] = []
        size = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
            )
            for (data,) in rows:
                if found and max_bytes is not None and size + len(data) > max_bytes:
                    break
                found.append(bytes(data))
                size += len(data)
        return found

    def index_of(self, leaf_hash: bytes) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT idx FROM leaves WHERE hash = ?", (leaf_hash,)).fetchone()
        return None if row is None else int(row[0])

    def fleet(self, fleet_id: bytes) -> FleetState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT operator_key, last_epoch, last_index FROM fleets WHERE fleet_id = ?",
                (fleet_id,),
            ).fetchone()
        if row is None:
            return None
        return FleetState(bytes(row[0]), struct.unpack(">Q", row[1])[0], int(row[2]))

    def latest_checkpoint(self) -> tuple[int, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def receipt(self, index: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT receipt FROM receipts WHERE idx = ?", (index,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    # --- writes -----------------------------------------------------------------------------

    def append(self, data: bytes, fleet_id: bytes, operator_key: bytes, epoch: int) -> int:
        """Append a leaf and advance its fleet's epoch, atomically; the new leaf's index."""
        leaf = merkle.leaf_hash(data)
        with self._lock:
            index = len(self._tree)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT operator_key, last_epoch FROM fleets WHERE fleet_id = ?", (fleet_id,)
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO fleets VALUES (?, ?, ?, ?)",
                        (fleet_id, operator_key, _epoch(epoch), index),
                    )
                else:
                    if struct.unpack(">Q", row[1])[0] >= epoch:
                        raise EpochReplayed(
                            "the fleet already has a record of this or a later epoch"
                        )
                    self._db.execute(
                        "UPDATE fleets SET last_epoch = ?, last_index = ? WHERE fleet_id = ?",
                        (_epoch(epoch), index, fleet_id),
                    )
                self._db.execute("INSERT INTO leaves VALUES (?, ?, ?)", (index, data, leaf))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._tree.append(leaf)
            return index

    def save_receipt(self, index: int, receipt: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO receipts VALUES (?, ?)", (index, receipt))

    def save_checkpoint(self, size: int, root: bytes, note: str) -> None:
        with self._lock:
            if size > len(self._tree) or self._tree.root(size) != root:
                raise WitnessStoreCorrupt("refusing to save a checkpoint that is not of this log")
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?)", (size, root, note)
            )
