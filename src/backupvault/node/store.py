"""A node's durable acceptor state: one SQLite database (WAL, full sync, secure_delete),
mode 0600 in a 0700 folder. Keys derived from the node's storage key (HKDF-SHA256, no
salt, info as named):

    name_key   = HKDF(storage_key, "backupvault/v1 node store names")
    row_key    = HKDF(storage_key, "backupvault/v1 node store rows")
    digest_key = HKDF(storage_key, "backupvault/v1 node store digest")

Tables:

    record(name, seq, row)   one per entry
      name = HMAC-SHA256(name_key, entry key)      the entry's name never sits in the clear
      seq  = the store counter of the transaction that last wrote the row
      row  = nonce (12) || AES-256-GCM(row_key, nonce, codec(AcceptorRecord), aad)
      aad  = "backupvault/v1 node store" || u16(node) || name || u64(seq)
    meta(id = 0, row)        one row
      row  = nonce (12) || AES-256-GCM(row_key, nonce, u64(counter) || digest (32), aad)
      aad  = "backupvault/v1 node store meta" || u16(node)
      digest = Σ HMAC-SHA256(digest_key, name || u64(seq)) over every record, mod 2^256

Every save is one transaction that advances the counter by one and updates the digest
incrementally. At load, a flipped bit, a row moved to another entry, a row from another
node's store, **and a single row replaced by an older copy of itself** (its seq no longer
matches the digest) are refused (`StoreCorrupted`): the node does not start from them.
A whole database restored from an older copy is consistent in itself; the fleet catches
it (every start catches up from peers, docs/fleet.md).

A destroyed entry must not be readable from the disk afterwards: secure_delete zeroes
freed content, and a save that writes a record no longer live (destroyed or deleted)
is followed by a checkpoint that truncates the WAL, where older page images would
otherwise stay. What the file system or the device keeps of overwritten blocks is below
what this store controls (docs/operations.md).
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.fleet.messages import AcceptorRecord, payload_of
from backupvault.hsm.state import EntryState
from backupvault.protocol import EntryStatus

_MOD = 2**256
_CORRUPT_HINT = (
    "the database was altered or partly restored; restore all of it from one backup, or "
    "wipe it so the node catches up from the fleet"
)


class StoreCorrupted(BackupVaultError):
    pass


def _derive(storage_key: bytes, what: str) -> bytes:
    info = f"backupvault/v1 node store {what}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(storage_key)


class NodeStore:
    def __init__(self, path: Path, node: int, storage_key: bytes) -> None:
        if len(storage_key) != 32:
            raise InvalidInput("storage key must be 32 bytes")
        self._node = node
        self._name_key = _derive(storage_key, "names")
        self._aead = AESGCM(_derive(storage_key, "rows"))
        self._digest_key = _derive(storage_key, "digest")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        # Created 0600 before SQLite opens it; its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        columns = [c[1] for c in self._db.execute("PRAGMA table_info(record)")]
        if columns and columns != ["name", "seq", "row"]:
            self._db.close()
            raise StoreCorrupted(
                "node store was written by an older version (entry names in the clear)",
                hint="move store.sqlite* aside and restart: the node catches up from the fleet",
            )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS record "
            "(name BLOB PRIMARY KEY, seq INTEGER NOT NULL, row BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), row BLOB)"
        )
        self.counter, self._digest = self._read_meta()

    # ---- names, rows, digest ------------------------------------------------------------

    def name_of(self, key: bytes) -> bytes:
        return hmac.new(self._name_key, key, sha256).digest()

    def _aad(self, name: bytes, seq: int) -> bytes:
        return b"backupvault/v1 node store" + struct.pack(">H", self._node) + name + _u64(seq)

    def _meta_aad(self) -> bytes:
        return b"backupvault/v1 node store meta" + struct.pack(">H", self._node)

    def _term(self, name: bytes, seq: int) -> int:
        mac = hmac.new(self._digest_key, name + _u64(seq), sha256).digest()
        return int.from_bytes(mac, "big")

    def _read_meta(self) -> tuple[int, int]:
        found = self._db.execute("SELECT row FROM meta WHERE id = 0").fetchone()
        if found is None:
            if self._db.execute("SELECT 1 FROM record LIMIT 1").fetchone() is not None:
                raise StoreCorrupted("node store has records but no counter", hint=_CORRUPT_HINT)
            return 0, 0
        row = bytes(found[0])
        try:
            plain = self._aead.decrypt(row[:12], row[12:], self._meta_aad())
        except InvalidTag:
            raise StoreCorrupted(
                "node store counter failed authentication", hint=_CORRUPT_HINT
            ) from None
        return int.from_bytes(plain[:8], "big"), int.from_bytes(plain[8:], "big")

    # ---- reading -------------------------------------------------------------------------

    def load(self) -> list[AcceptorRecord]:
        """Every record, checked row by row and all together against the counter."""
        return list(self._iterate())

    def _iterate(self) -> Iterator[AcceptorRecord]:
        digest = 0
        for name, seq, row in self._db.execute("SELECT name, seq, row FROM record"):
            name, row = bytes(name), bytes(row)
            if seq > self.counter:
                raise StoreCorrupted("node store row is newer than its counter", hint=_CORRUPT_HINT)
            try:
                plaintext = self._aead.decrypt(row[:12], row[12:], self._aad(name, seq))
                record = AcceptorRecord.from_bytes(plaintext)
            except (InvalidTag, InvalidInput):
                raise StoreCorrupted(
                    f"node store row {name.hex()[:16]}… failed authentication",
                    hint=_CORRUPT_HINT,
                ) from None
            if not hmac.compare_digest(self.name_of(record.key), name):
                raise StoreCorrupted("node store row holds another entry's record")
            digest = (digest + self._term(name, seq)) % _MOD
            yield record
        if digest != self._digest:
            raise StoreCorrupted(
                "node store rows do not match its counter: a row was rolled back, removed or added",
                hint=_CORRUPT_HINT,
            )

    # ---- writing -------------------------------------------------------------------------

    def save(self, records: Iterable[AcceptorRecord]) -> None:
        """Write records durably, all or none, as one step of the counter."""
        latest = {r.key: r for r in records}
        if not latest:
            return
        seq = self.counter + 1
        digest = self._digest
        rows = []
        erased = False
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for record in latest.values():
                name = self.name_of(record.key)
                old = self._db.execute("SELECT seq FROM record WHERE name = ?", (name,)).fetchone()
                if old is not None:
                    digest -= self._term(name, int(old[0]))
                digest = (digest + self._term(name, seq)) % _MOD
                nonce = os.urandom(12)
                sealed = self._aead.encrypt(nonce, record.to_bytes(), self._aad(name, seq))
                rows.append((name, seq, nonce + sealed))
                erased = erased or _not_live(record)
            self._db.executemany(
                "INSERT OR REPLACE INTO record (name, seq, row) VALUES (?, ?, ?)", rows
            )
            nonce = os.urandom(12)
            meta = _u64(seq) + digest.to_bytes(32, "big")
            sealed = nonce + self._aead.encrypt(nonce, meta, self._meta_aad())
            self._db.execute("INSERT OR REPLACE INTO meta (id, row) VALUES (0, ?)", (sealed,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.counter, self._digest = seq, digest
        if erased:
            # Older page images of the entry stay in the WAL until it is checkpointed;
            # secure_delete zeroes what the checkpoint frees in the database file.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def raise_counter(self, floor: int) -> None:
        """Move the counter up to `floor` (the token's count, when the store is behind it:
        rolled back or wiped), so the token's counter and the store's agree again."""
        if floor <= self.counter:
            return
        nonce = os.urandom(12)
        meta = _u64(floor) + self._digest.to_bytes(32, "big")
        sealed = nonce + self._aead.encrypt(nonce, meta, self._meta_aad())
        self._db.execute("INSERT OR REPLACE INTO meta (id, row) VALUES (0, ?)", (sealed,))
        self.counter = floor

    def close(self) -> None:
        self._db.close()


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _not_live(record: AcceptorRecord) -> bool:
    """Whether the record holds an entry that was destroyed or deleted."""
    try:
        payload = payload_of(record.value)
        return bool(payload) and EntryState.from_bytes(payload).status != EntryStatus.LIVE
    except InvalidInput:
        return False
