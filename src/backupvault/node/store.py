"""A node's durable acceptor state: one SQLite database (WAL, full sync).

Each row is encrypted under the node's storage key and bound to the node and the entry:

    row   = nonce (12) || AES-256-GCM(storage_key, nonce, codec(AcceptorRecord), aad)
    aad   = "backupvault/v1 node store" || u16(node) || key

A flipped bit, a row copied from another entry or another node fails to open and the node
refuses to start (`StoreCorrupted`) instead of answering from it. An older copy of a row
(a rolled-back disk) does open: that case is handled by catching up after every start.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.fleet.messages import AcceptorRecord


class StoreCorrupted(BackupVaultError):
    pass


class NodeStore:
    def __init__(self, path: Path, node: int, storage_key: bytes) -> None:
        if len(storage_key) != 32:
            raise InvalidInput("storage key must be 32 bytes")
        self._node = node
        self._aead = AESGCM(storage_key)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS record (key BLOB PRIMARY KEY, row BLOB)")

    def _aad(self, key: bytes) -> bytes:
        return b"backupvault/v1 node store" + struct.pack(">H", self._node) + key

    def load(self) -> list[AcceptorRecord]:
        records = []
        for key, row in self._db.execute("SELECT key, row FROM record"):
            try:
                plaintext = self._aead.decrypt(row[:12], row[12:], self._aad(key))
                record = AcceptorRecord.from_bytes(plaintext)
            except (InvalidTag, InvalidInput):
                raise StoreCorrupted(
                    f"node store row for key {bytes(key).hex()[:16]}… failed authentication",
                    hint="the database was altered; restore it from a backup or wipe it so "
                    "the node catches up from the fleet",
                ) from None
            if record.key != key:
                raise StoreCorrupted("node store row holds another entry's record")
            records.append(record)
        return records

    def save(self, records: Iterable[AcceptorRecord]) -> None:
        """Write records durably, all or none, before returning."""
        rows = []
        for record in records:
            nonce = os.urandom(12)
            sealed = self._aead.encrypt(nonce, record.to_bytes(), self._aad(record.key))
            rows.append((record.key, nonce + sealed))
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO record (key, row) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
