"""A node's durable acceptor state: one SQLite database (WAL, full sync, secure_delete),
mode 0600 in a 0700 folder. Nothing is loaded at start: records are read one at a time,
when the replica needs them (`StoreRecords` puts a bounded cache in front). Keys derived
from the node's storage key (HKDF-SHA256, no salt, info as named):

    name_key        = HKDF(storage_key, "backupvault/v1 node store names")
    digest_key      = HKDF(storage_key, "backupvault/v1 node store digest")
    bucket_rows_key = HKDF(storage_key, "backupvault/v1 node store buckets")

and three more levels of keys for sealing, a tree: the row key (32 bytes, from the
node's token, `node.token.RowKeyRing`; HKDF(storage_key, "backupvault/v1 node store rows")
where there is no token: tests and tools); one random bucket key (32 bytes) per bucket
that holds a record, wrapped under the row key with the keys of its group of 64
buckets; and one leaf key per leaf of a bucket
(the next 8 bits of a name: 256 leaves a bucket, 2^20 in all), which seals the leaf's
rows. An erasure replaces the keys on the way from the row key to the erased row: its
leaf's key, its bucket's key and the row key (`rotate`), and re-seals only that leaf's
rows (about N / 2^20 entries) and the 64 group rows of bucket keys, so its cost does not
grow with the store.

The file's format number is SQLite's `user_version` (`STORE_FORMAT`; 0 in stores made
before it was kept, which are of format 1; 4 with leaf keys; 5 with the bucket rows under
a key of their own and summed with their digests; 6 with the `account_entries` table,
which every write of this version keeps and an earlier one would not; 7 with the bucket
keys in 64 group rows (`key_group`) where earlier formats kept a `bucket_key` row per
bucket; stores of formats 2 to 6 are read as they are and made format 7 when opened, in
one transaction). It is not authenticated,
and needs not be: it picks the message a node refuses a store with, and whether an open
converts (what the rows are read as comes from the sealed counter row), so a disk that
lies about it only makes its node refuse to start, as any damage does, or convert again
what is already current.

Tables:

    record(ver, name, row)   one per entry; ver is the SQLite rowid
      name = HMAC-SHA256(name_key, entry key)[:16]   the entry's name never sits in the clear
             (16 bytes: a collision among 10^7 names has odds below 2^-80, and would be
             refused, not served: every row is checked to hold the entry it is named for)
      ver  = the store's version when the row was last written: every written row takes
             the next one, so "what changed since version v" is a range of rowids
      row  = nonce (12) || AES-256-GCM(leaf key of the name's leaf, nonce, plain, aad)
      plain = uvarint(promised round) || uvarint(promised node) || uvarint(accepted round)
              || uvarint(accepted node) || uvarint(len(key)) || key || value (the rest)
              (uvarint: LEB128, 7 bits a byte, low first: the ballots are small numbers)
      aad  = "backupvault/v1 node store" || u16(node) || name || u64(ver)
    bucket(id, ver, row)     one per bucket of names that holds a record
      id   = the first 12 bits of the names it holds (4,096 buckets)
      ver  = the store counter of the transaction that last wrote it
      row  = nonce (12) || AES-256-GCM(bucket_rows_key, nonce, digest (32), aad)
             (bucket_rows_key = HKDF(storage_key, "backupvault/v1 node store buckets"),
             never rotated: a digest holds nothing an erasure must take from a copy; in
             stores before format 5 the row key, and opening one re-seals them)
      aad  = "backupvault/v1 node store bucket" || u16(node) || u16(id) || u64(ver)
      digest = Σ HMAC-SHA256(digest_key, name || u64(ver)) over the bucket's records, mod 2^256
    key_group(id, row)       one per group of 64 buckets of which one holds a record
      id   = the group: a bucket's id >> 6 (64 groups)
      row  = nonce (12) || AES-256-GCM(row_key, nonce, entries, aad)
      aad  = "backupvault/v1 node store key group" || u16(node) || u16(id)
      entries = for each bucket of the group that has keys, in rising order:
             u8(bucket id & 63) || u8(len(keys)) || keys
             (a group row is written again whole when one of its buckets gets its first
             keys; a rotation writes every group row under the new row key)
      (stores before format 7 kept one row per bucket instead, `bucket_key(id, row)`,
      row = nonce || AES-256-GCM(row_key, nonce, keys, "backupvault/v1 node store bucket
      key" || u16(node) || u16(bucket)); opening one groups them and drops the table)
      keys = one of three forms (`BucketKeys`):
        bucket key (32)            undivided: every row of the bucket is sealed under the
                                   bucket key itself (stores of format 3 and earlier;
                                   the bucket's first erasure re-seals it whole, divided)
        0x01 || seed (32)          derived: leaf l's key is
                                   HMAC-SHA256(seed, "backupvault/v1 node store leaf" || u8(l))
                                   (a new bucket; a bucket after a rotation of all of it)
        0x02 || bucket key (32)    listed: the leaf keys are the bucket's `leaf_key` row,
                                   sealed under this key (a bucket after an erasure in it)
      (a store written before bucket keys has neither table: every row is sealed under
      the row key itself; opening it gives every bucket its key, once)
    leaf_key(id, row)        one per bucket whose keys are listed
      id   = the bucket
      row  = nonce (12) || AES-256-GCM(bucket key, nonce, 256 × leaf key (32), aad)
      aad  = "backupvault/v1 node store leaf keys" || u16(node) || u16(id)
      (an erasure in leaf l of a bucket lists its leaf keys: a new random key for l, the
      others as they were, under a new bucket key, and the old seed or list is gone; the
      leaf keys of a derived bucket never need a row of their own: 8 KiB a bucket)
    watched(name)            a share row's name, while that row keeps a share at this
                             node's own count of L (store format 3; `at_limit`)
    unwatched(id)            no rows: present while `watched` may miss rows (below)
    staged(name, account)    a share row's name, while that row keeps staged shares and
                             no share (`NodeShare.staged_only`), with its account's tag
      account = HMAC-SHA256(name_key, "\xffaccount/" || account name)[:16]
                             (indexed: `count_staged` reads one account's names)
    account_entries(account, name)
                             the value row's name of each entry this store wrote a live
                             value or a share row of, with its account's tag as in
                             `staged`; keyed by (account, name), so `count_entries`
                             counts one account's names in one read (store format 6;
                             entries last written before it are not named until written
                             again). A name is never removed.
    meta(id = 0, row)        one row
      row  = nonce (12) || AES-256-GCM(row_key, nonce, plain, aad)
      aad  = "backupvault/v1 node store meta" || u16(node)
      plain = u64(counter) || u64(last ver) || u64(max promised round) || top (32)
              || store id (16) || u16(n) || n × (u16(peer) || u8(len) || store id || u64(upto))
              || u64(suspect through)       (absent in stores of earlier versions: 0)
              || u8(catching up)            (absent: 0)
              || u16(k) || k × u16(bucket)  (rotations owed: buckets with an erased row
                                             whose key is not yet replaced; absent: none)
              || u64(catch-up from)         (`catch_up_from`; absent: 0)
              || u8(1)                      (top sums digests, below; absent: it does not)
      top  = Σ HMAC-SHA256(digest_key, "bucket" || u16(id) || u64(ver) || digest (32))
             over every bucket, mod 2^256 (stores before format 5, without the u8(1): the
             same without the digest, so a bucket row of a forked history, one write the
             token never counted then lost to a restored disk, matched; they are summed
             again when opened)

`counter` counts transactions and is what the token's monotonic counter follows
(docs/fleet.md). The marks (peer, store id, upto) say how far this node merged each peer's
store when it last caught up; the store id is fresh whenever peers may hold marks of a
history this store no longer has (new store, or `raise_counter` after a rollback).
Versions: every written row takes the next one, and a store found behind the token
moves past every version the lost history can have used (`raise_counter`), so no (name,
version) is ever written twice in one store's life. `suspect through`: the last version
written when the node last started with its store behind the token
(`distrust_share_rows`); a share row of that version or below may hold a rolled-back
count, on every later start too, until it is written again (docs/threshold.md,
"Counters and erasure"). 0: none.

Rollback protection without reading every row: at open, the bucket rows (a few thousand)
are checked against `top`, so a rolled-back, removed or added bucket row is refused at
once. A bucket's digest is the sum of its leaves' sums (the same terms, grouped by the
leaf of each name). The first time a bucket is used, or when `verify_all` (which the node
runs in the background after start) reaches it, its (name, version) pairs, about
N / 4,096 rows, are read whole and checked against its digest, and its sums per leaf are
kept in memory (`LeafSums`: at most 256 × 33 bytes a bucket, 34 MB for a whole store of
any size; kept current by every save). From then on every read or write of a record
compares the row's version with its leaf's (name, version) pairs, about N / 2^20 rows,
read and checked against the leaf's sum: about 19 rows at 10,000,000 entries (two an
entry), where a bucket holds about 4,900. So a single row replaced by an older copy of itself, or
removed or added, is refused (`StoreCorrupted`) before the node acts on it, also while
the node runs: a check made once per bucket would let a disk that changes a row after it
was checked serve the old row (a rolled-back count) when the entry next falls out of the
caches. A flipped bit, a row moved to another entry or a row from another node's store
fails authentication when it is read. A whole database restored
from an older copy is consistent in itself: the token's counter catches it.

Share rows (the threshold flow, docs/threshold.md): this node's own `NodeShare` for an
entry (its key share k_i, its count, its last reset) is a row of the same table, under
the key `SHARE_PREFIX || entry key`, with the NodeShare encoding as its value. So it is
sealed, named and covered by the bucket digests and the counter (and the token's
counter) exactly like a record, and a rolled-back share row is caught the same way. It
never leaves the node: catching up (`changed_since`) and `load` skip it. A save that
takes a share row's share away (or replaces it with another) erases, as below.

The manifest M (about 470 bytes) is kept once per entry (store format 2). A share row's
value is either the NodeShare encoding (its first byte is the tag, 44), or, when the
row holds a share and its M is the M of the entry's value in the same store:

    0x00 || SHA-256(M) (32) || the NodeShare encoding with an empty manifest

`get_share` puts M back from the entry's value, and refuses the row if that value's M
does not hash to what the row names (`StoreCorrupted`). A save that moves an entry's
value to another M (or to none) writes such a share row again with M in full, in the
same transaction, so the reference never dangles. Format 1 stores (every share row
with M in full) are read as they are and become format 2 when opened.

Shares left at L (store format 3): a share row that keeps a share at this node's own count
of L is erased one grace later by a round of the node's own (docs/threshold.md, "Counters
and erasure"), which must still happen after a restart, when nobody asks for the entry.
Every save keeps `watched` naming exactly those rows, judged by the node's `at_limit`,
so a start reads that table, not every row. Before format 3 a start opened every row of
the store to find them (at 10,000,000 entries some 20 million AES-GCM opens per node,
minutes of CPU after every restart, while serving). A store of format 2 or below with
records has no complete table: its first start under format 3 finds those rows by that
scan once (`share_keys`), then `complete_watch` fills the table and drops the
`unwatched` table, which says the scan is owed. A save of a share row without
`at_limit` (tools) creates `unwatched` again, so the next start scans. (Until format 4
the number itself said so, 2 for owed; a store of format 4 is never numbered below, so
a version of format 3 refuses it as newer rather than misreading its keys.)

Registrations staged and never committed (review r1, finding 1): every save keeps
`staged` naming exactly the written share rows that hold staged shares and no share,
each with its account's tag, so the node counts an account's such rows with one indexed
read of a few names (`count_staged`) and refuses a new one past its cap
(`hsm/shares.py`, `STAGED_ENTRIES_PER_ACCOUNT`). The store judges the row itself, so a
tool's save keeps the table too. Rows written before the table existed (by an earlier
version) are not named until written again: the count errs toward taking a staging,
never toward refusing one. A name whose row an earlier version rewrote since is still
listed; when an account's count reaches the cap, each listed row is opened and checked,
so such a name never counts.

Entries per account (review r1, finding 4; store format 6): every save names in
`account_entries` each entry it writes a live value or a share row of, under its
account's tag, for good, so the node counts an account's entries with one indexed
read (`count_entries`) and stages no share of an entry it does not count past its cap
(`hsm/shares.py`, `ENTRIES_PER_ACCOUNT`, which says why these are counted and not a
promise or a tombstone alone). The count is taken as the table says, with no row opened: an
earlier version, which would write rows without keeping the table, refuses a store of
format 6 as newer. Rows last written before format 6 are not named until written again
(any change to the entry: a recovery, a reset, a delete): the count errs toward taking a
new entry, by at most what the account held before, never toward refusing one. The
table is not authenticated: a disk that lies in it changes only what its own node
refuses, which a disk's owner can always do (a hostile node), and the other nodes count
for themselves.

A destroyed entry must not be readable from the disk afterwards: secure_delete zeroes
freed content, and a save that erases (a live value written over as destroyed or
deleted, a share row's share taken away or replaced: `_erases`) is followed by a
checkpoint that truncates the WAL, where older page images would otherwise stay, and by
a rotation of the keys above the erased row: its leaf's, its bucket's and the row key
(`rotate`). Writing a destroyed value or
an erased row again erases nothing and rotates nothing (a peer's message about the
entry can cause such a write). What the file system or the device keeps of overwritten
blocks is below what this store controls (docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.fleet.messages import AcceptorRecord, payload_of
from backupvault.fleet.records import Changes, Mark, raised_floor
from backupvault.hsm.shares import holds_live_value
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState
from backupvault.protocol import EntryStatus

_MOD = 2**256
BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
#: Each bucket's names split by their next 8 bits into leaves, each sealed under a key of
#: its own, so an erasure re-seals one leaf (about N / 2^20 entries), not its bucket.
LEAF_BITS = 8
LEAVES = 1 << LEAF_BITS
#: Bucket keys are wrapped under the row key in groups of 64 buckets, one row a group, so
#: a rotation re-seals 64 rows where it re-sealed 4,096 (store format 7).
KEY_GROUP_BITS = 6
KEY_GROUPS = BUCKETS >> KEY_GROUP_BITS
_LEAF_INFO = b"backupvault/v1 node store leaf"
#: Leaf keys kept ready as AES-GCM objects, by the key's bytes (a rotation drops the ones
#: it replaced).
_CACHED_AEADS = 8_192
#: Rows a background scan opens between two pauses (`share_keys`).
SCAN_BATCH = 256
CACHED_RECORDS = 20_000  # records kept decrypted in memory (about 1 KB each)
NAME_LEN = 16
#: Rows one `save` may write. It bounds the versions a history can use per count of the
#: counter, so `raise_counter` can start this history's versions above all of them.
ROWS_PER_SAVE = 1 << 20
#: The counter row's catch-up byte: 0 none, 1 catching up, this one catching up since the
#: store had no record (`NodeStore.began_empty`).
_CATCHING_UP_FROM_EMPTY = 2
#: The layout above; a later version that changes it raises this (and refuses older
#: stores it cannot read, or converts them).
STORE_FORMAT = 7
#: The last format whose stores have no complete `watched` table; in later ones, this
#: table says so (a tool wrote share rows it could not judge: `_keep_watched`).
_UNWATCHED_FORMAT = 2
_UNWATCHED = "unwatched"
_UNWATCHED_TABLE = f"CREATE TABLE IF NOT EXISTS {_UNWATCHED} (id INTEGER PRIMARY KEY)"
_CORRUPT_HINT = (
    "the database was altered or partly restored; restore all of it from one backup, or "
    "wipe it so the node catches up from the fleet"
)
_ROLLED_BACK = "node store rows do not match its counter: a row was rolled back, removed or added"


_KEY_GROUP_TABLE = (
    "CREATE TABLE IF NOT EXISTS key_group (id INTEGER PRIMARY KEY, row BLOB NOT NULL)"
)
_LEAF_KEY_TABLE = "CREATE TABLE IF NOT EXISTS leaf_key (id INTEGER PRIMARY KEY, row BLOB NOT NULL)"
_WATCHED_TABLE = "CREATE TABLE IF NOT EXISTS watched (name BLOB PRIMARY KEY) WITHOUT ROWID"
_STAGED_TABLE = (
    "CREATE TABLE IF NOT EXISTS staged (name BLOB PRIMARY KEY, account BLOB NOT NULL) WITHOUT ROWID"
)
_STAGED_INDEX = "CREATE INDEX IF NOT EXISTS staged_account ON staged (account)"
_ACCOUNT_ENTRIES_TABLE = (
    "CREATE TABLE IF NOT EXISTS account_entries (account BLOB NOT NULL, name BLOB NOT NULL,"
    " PRIMARY KEY (account, name)) WITHOUT ROWID"
)

#: Share rows are kept under this prefix; entry keys (EntryId encodings) start with
#: their tag, never 0xff.
SHARE_PREFIX = b"\xffshare/"


class StoreCorrupted(BackupVaultError):
    pass


def share_record(key: bytes, row: NodeShare) -> AcceptorRecord:
    """This node's own row for entry `key`, as the store keeps it."""
    return AcceptorRecord(SHARE_PREFIX + key, value=row.to_bytes())


def is_share_record(record: AcceptorRecord) -> bool:
    return record.key.startswith(SHARE_PREFIX)


def _derive(storage_key: bytes, what: str) -> bytes:
    info = f"backupvault/v1 node store {what}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(storage_key)


def bucket_of(name: bytes) -> int:
    return int.from_bytes(name[:2], "big") >> (16 - BUCKET_BITS)


def _bucket_range(bucket: int) -> tuple[bytes, bytes]:
    """Names in the bucket are >= low and < high (high empty: no upper bound)."""
    shift = 16 - BUCKET_BITS
    low = (bucket << shift).to_bytes(2, "big")
    high = ((bucket + 1) << shift).to_bytes(2, "big") if bucket + 1 < BUCKETS else b""
    return low, high


def leaf_of(name: bytes) -> int:
    """The name's leaf within its bucket: the `LEAF_BITS` bits after the bucket's."""
    prefix = int.from_bytes(name[:3], "big")
    return (prefix >> (24 - BUCKET_BITS - LEAF_BITS)) & (LEAVES - 1)


def _leaf_range(bucket: int, leaf: int) -> tuple[bytes, bytes]:
    """Names in the leaf are >= low and < high (high empty: no upper bound)."""
    index = bucket << LEAF_BITS | leaf
    shift = 24 - BUCKET_BITS - LEAF_BITS
    low = (index << shift).to_bytes(3, "big")
    high = ((index + 1) << shift).to_bytes(3, "big") if index + 1 < BUCKETS * LEAVES else b""
    return low, high


def _in_range(db: sqlite3.Connection, columns: str, low: bytes, high: bytes) -> list[Any]:
    """`columns` of every record whose name is >= low and < high (empty: no bound), read
    to the end at once: a statement left under way would hold its connection's snapshot
    for the next one (`NodeStore._reader`)."""
    if high:
        sql = f"SELECT {columns} FROM record WHERE name >= ? AND name < ?"
        return db.execute(sql, (low, high)).fetchall()
    return db.execute(f"SELECT {columns} FROM record WHERE name >= ?", (low,)).fetchall()


def _group_entries(plain: bytes) -> Iterator[tuple[int, bytes]]:
    """(slot, wrapped keys) of each bucket in a key group row's plaintext: u8(slot) ||
    u8(length) || keys, slots rising, each keys 32 or 33 bytes (`BucketKeys.wrapped`)."""
    at, last = 0, -1
    while at < len(plain):
        if at + 2 > len(plain):
            raise StoreCorrupted("node store bucket keys are malformed", hint=_CORRUPT_HINT)
        slot, length = plain[at], plain[at + 1]
        if not last < slot < 1 << KEY_GROUP_BITS or length not in (32, 33):
            raise StoreCorrupted("node store bucket keys are malformed", hint=_CORRUPT_HINT)
        if at + 2 + length > len(plain):
            raise StoreCorrupted("node store bucket keys are malformed", hint=_CORRUPT_HINT)
        yield slot, plain[at + 2 : at + 2 + length]
        at, last = at + 2 + length, slot


def _in_bucket(db: sqlite3.Connection, columns: str, bucket: int) -> list[Any]:
    """`columns` of every record whose name falls in the bucket (an index range)."""
    return _in_range(db, columns, *_bucket_range(bucket))


@dataclasses.dataclass(frozen=True)
class BucketKeys:
    """What seals a bucket's rows, in one of three forms (the module's docstring): the
    bucket key itself (`UNDIVIDED`, stores of format 3 and earlier), a leaf key per leaf
    derived from a seed (`DERIVED`), or 256 leaf keys listed in a `leaf_key` row sealed
    under the bucket key (`LISTED`, after an erasure in the bucket)."""

    form: int
    key: bytes
    leaves: bytes = b""  # LISTED: LEAVES × 32 bytes

    UNDIVIDED: ClassVar[int] = 0
    DERIVED: ClassVar[int] = 1
    LISTED: ClassVar[int] = 2

    @classmethod
    def new(cls) -> BucketKeys:
        return cls(cls.DERIVED, os.urandom(32))

    @classmethod
    def unwrapped(cls, plain: bytes) -> BucketKeys:
        """From a `bucket_key` row's plaintext (a LISTED one's leaves still to be read)."""
        if len(plain) == 32:
            return cls(cls.UNDIVIDED, plain)
        if len(plain) == 33 and plain[0] in (cls.DERIVED, cls.LISTED):
            return cls(plain[0], plain[1:])
        raise StoreCorrupted("node store bucket key is malformed", hint=_CORRUPT_HINT)

    def wrapped(self) -> bytes:
        """The `bucket_key` row's plaintext."""
        return self.key if self.form == self.UNDIVIDED else bytes([self.form]) + self.key

    def leaf_key(self, leaf: int) -> bytes:
        if self.form == self.UNDIVIDED:
            return self.key
        if self.form == self.DERIVED:
            return hmac.digest(self.key, _LEAF_INFO + bytes([leaf]), "sha256")
        return self.leaves[32 * leaf : 32 * leaf + 32]

    def rotated(self, leaves: set[int] | None) -> BucketKeys:
        """New keys for the bucket that share no key with these on the way to `leaves`
        (None: every leaf): the bucket key is always new, and so is each of those leaves'
        key; the other leaves keep theirs (listed, so the old seed can go). An undivided
        bucket, or every leaf, gets a new seed: all its rows are then re-sealed."""
        if leaves is None or self.form == self.UNDIVIDED:
            return BucketKeys.new()
        kept = b"".join(
            os.urandom(32) if leaf in leaves else self.leaf_key(leaf) for leaf in range(LEAVES)
        )
        return BucketKeys(self.LISTED, os.urandom(32), kept)


class KeyRotation(Protocol):
    """Where a new row key comes from and where the old one is destroyed (the node's
    token: `node.token.RowKeyRing`)."""

    def begin_rotation(self) -> tuple[int, bytes]: ...

    def finish_rotation(self, generation: int) -> None: ...


_F = TypeVar("_F", bound=Callable[..., Any])


def _refuses_malformed(method: _F) -> _F:
    """What a damaged file gives SQLite or the code (not a database, a text where a number
    belongs, a NULL row) is a refusal that says so, not a traceback: only the sealed rows
    are authenticated, and the store's clear columns can hold anything."""

    @functools.wraps(method)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (sqlite3.DatabaseError, ValueError, TypeError, OverflowError, struct.error) as exc:
            raise StoreCorrupted(f"node store is malformed ({exc})", hint=_CORRUPT_HINT) from None

    return checked  # type: ignore[return-value]


@_refuses_malformed
def store_generation(path: Path) -> int:
    """The row key generation a store file records (0: none, or no store yet). Read in
    the clear: it only says which key to try, the rows authenticate under it."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = db.execute("SELECT generation FROM row_key WHERE id = 0").fetchone()
    except sqlite3.OperationalError:
        return 0  # no such table: no generation recorded
    finally:
        db.close()
    return 0 if found is None else int(found[0])


class NodeStore:
    @_refuses_malformed
    def __init__(
        self,
        path: Path,
        node: int,
        storage_key: bytes,
        row_key: bytes | None = None,
        generation: int = 0,
    ) -> None:
        """`storage_key` names and digests rows; `row_key` (of `generation`, from the
        token's `RowKeyRing`) seals the bucket keys, which seal the rows, and is replaced
        by `rotate` when a share is erased. Without a row key one derived from the storage
        key takes its place, and is never rotated (tests and tools only)."""
        if len(storage_key) != 32 or (row_key is not None and len(row_key) != 32):
            raise InvalidInput("storage and row keys must be 32 bytes")
        self._node = node
        self._path = path
        self._name_key = _derive(storage_key, "names")
        # The row key (the token's), and each bucket's key: the first seals; two only
        # while a rotation commits (a read may see either side of it).
        self._master = [AESGCM(row_key or _derive(storage_key, "rows"))]
        # The bucket rows' key: they hold digests, nothing an erasure must take from a
        # copy, so a rotation leaves them be (it re-sealed all 4,096 before format 5).
        self._bucket_rows_key = [AESGCM(_derive(storage_key, "buckets"))]
        self._bucket_keys: dict[int, BucketKeys] = {}  # wrapped again at every rotation
        #: A rotation's buckets' keys before it, tried too until it commits.
        self._keys_before: dict[int, BucketKeys] = {}
        self._aeads: dict[bytes, AESGCM] = {}
        self.generation = generation
        #: Set by the node: an erased share then re-seals the store under a new row key.
        self.key_rotation: KeyRotation | None = None
        #: Set by the node (its firmware's test): whether a share row keeps a share at
        #: this node's own count of L; every save keeps `watched` by it.
        self.at_limit: Callable[[NodeShare], bool] | None = None
        self._digest_key = _derive(storage_key, "digest")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        # Created 0600 before SQLite opens it; its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # 8 KiB pages: a row (about 530 bytes) leaves a smaller unused tail in a page
        # than with 4 KiB (measured: 575 against 630 bytes per entry, docs/performance.md).
        # Takes effect when the file is created.
        self._db.execute("PRAGMA page_size=8192")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        tables = {t for (t,) in self._db.execute("SELECT name FROM sqlite_master")}
        # Written before bucket keys: every row sealed under the row key itself.
        unbucketed = "meta" in tables and not {"bucket_key", "key_group"} & tables
        #: A store before format 7: a `bucket_key` row per bucket, grouped when opened.
        self._keys_ungrouped = "bucket_key" in tables
        (store_format,) = self._db.execute("PRAGMA user_version").fetchone()
        if store_format > STORE_FORMAT:
            self._db.close()
            raise StoreCorrupted(
                f"node store was written by a newer version of backupvault (store format"
                f" {store_format}; this version reads format {STORE_FORMAT})",
                hint="run the version that wrote it (or a newer one) on this node, or move"
                " store.sqlite* aside and restart: the node catches up from the fleet",
            )
        columns = [c[1] for c in self._db.execute("PRAGMA table_info(record)")]
        if columns and columns != ["ver", "name", "row"]:
            self._db.close()
            raise StoreCorrupted(
                "node store was written by an older version of backupvault",
                hint="move store.sqlite* aside and restart: the node catches up from the fleet",
            )
        #: Whether `watched` names every share row at L, else a scan must (`unwatched`).
        self.watch_complete = "record" not in tables or (
            store_format > _UNWATCHED_FORMAT and _UNWATCHED not in tables
        )
        if store_format < STORE_FORMAT and not self.watch_complete:
            self._db.execute(_UNWATCHED_TABLE)  # before the new number: a crash stays unwatched
        self._db.execute(_WATCHED_TABLE)
        self._db.execute(_STAGED_TABLE)
        self._db.execute(_STAGED_INDEX)
        self._db.execute(_ACCOUNT_ENTRIES_TABLE)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS record "
            "(ver INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE, row BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS bucket "
            "(id INTEGER PRIMARY KEY, ver INTEGER NOT NULL, row BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), row BLOB)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS row_key "
            "(id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER NOT NULL)"
        )
        if not unbucketed:  # else made with the keys, in one transaction
            self._db.execute(_KEY_GROUP_TABLE)
        self._db.execute(_LEAF_KEY_TABLE)
        # Reads see committed state only, while a write is under way on the writer
        # connection in another thread: each thread reads on a connection of its own
        # (`_reader`).
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        # Held while a transaction is written and the in-memory digests follow it, and
        # while a bucket is checked, so a check never sees one without the other.
        self._lock = threading.RLock()
        self.counter = 0
        self._last_ver = 0
        self._max_round = 0
        self._top = 0
        #: Whether the counter row's `top` sums the bucket rows with their digests (it
        #: says so itself, authenticated: the format number is not); a new store does.
        self._top_with_digests = True
        self.store_id = os.urandom(16)
        self._marks: dict[int, Mark] = {}
        self.suspect_through = 0
        #: A catch-up began and has not finished (`mark_catching_up`).
        self.catching_up = False
        #: That catch-up began on a store with no record (wiped, or new): every value it
        #: holds is a peer's copy, none the node's own, also after a restart in between.
        self.began_empty = False
        #: The last version written before that catch-up began (kept across restarts
        #: until it finishes): a row above it was written by the catch-up, a copy.
        self.catch_up_from = 0
        #: Buckets holding an erased row whose key rotation has not been done yet: owed
        #: in the erasing transaction itself, done by `finish_owed_rotation`.
        self.rotation_owed: set[int] = set()
        #: The leaves of owed buckets that hold the erased rows, where this process knows
        #: them (a bucket owed and not here, as after a restart, is rotated whole).
        self._owed_leaves: dict[int, set[int]] = {}
        self._check_generation()  # before anything is opened: a clearer refusal
        self._read_meta()
        #: The last version written when the store was opened: rows of a catch-up not
        #: finished before it are those above `catch_up_from` and up to this.
        self.opened_ver = self._last_ver
        # id -> (ver, digest), checked against top
        self._buckets = self._read_buckets(self._top_with_digests)
        #: Each checked bucket's sums per leaf, kept current by `save` under the lock.
        self._sums: dict[int, LeafSums] = {}
        self._closing = False
        self._rotations = 0
        #: This node's shares erased by this process's writes (the guess limit reached, the
        #: entry deleted, or a password change's new share in the old one's place).
        self.shares_erased = 0
        self._record_generation()
        if unbucketed:
            self._give_buckets_keys()
        elif self._keys_ungrouped:
            self._read_bucket_keys_before_7()
        else:
            self._read_bucket_keys()
        if store_format < STORE_FORMAT or not self._top_with_digests or self._keys_ungrouped:
            self._make_current_format()  # last: a store refused above is left as it was

    def _check_generation(self) -> None:
        """An existing store must have been sealed under the generation it is opened with."""
        found = self._db.execute("SELECT generation FROM row_key WHERE id = 0").fetchone()
        if found is not None and int(found[0]) != self.generation:
            self._db.close()
            raise StoreCorrupted(
                f"node store is sealed under row key generation {found[0]}, not {self.generation}",
                hint=_CORRUPT_HINT,
            )

    def _record_generation(self) -> None:
        """A new store records the generation of its row key."""
        found = self._db.execute("SELECT generation FROM row_key WHERE id = 0").fetchone()
        if found is None:
            if self.counter == 0:
                self._db.execute(
                    "INSERT INTO row_key (id, generation) VALUES (0, ?)", (self.generation,)
                )
            elif self.generation:
                raise StoreCorrupted(
                    "node store was written before row keys rotated",
                    hint="move store.sqlite* aside and restart: the node catches up from the fleet",
                )

    # ---- names, rows, digests -----------------------------------------------------------

    @property
    def _reader(self) -> sqlite3.Connection:
        """This thread's connection for reads. Never one for two threads: while any
        statement of a connection is under way, every other statement on it reads the
        same snapshot, so a save in the writer thread, checking its rows beside a read
        on the event loop's thread, saw rows from before the last commit against the
        sums after it, and refused the store as rolled back (review s45)."""
        reader: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if reader is None:
            reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only=ON")
            self._readers.connection = reader
            self._reader_connections.append(reader)
        return reader

    def name_of(self, key: bytes) -> bytes:
        return hmac.digest(self._name_key, key, "sha256")[:16]

    def _aad(self, name: bytes, ver: int) -> bytes:
        return b"backupvault/v1 node store" + struct.pack(">H", self._node) + name + _u64(ver)

    def _bucket_aad(self, bucket: int, ver: int) -> bytes:
        prefix = b"backupvault/v1 node store bucket"
        return prefix + struct.pack(">HH", self._node, bucket) + _u64(ver)

    def _meta_aad(self) -> bytes:
        return b"backupvault/v1 node store meta" + struct.pack(">H", self._node)

    def _bucket_key_aad(self, bucket: int) -> bytes:
        """A `bucket_key` row's, in stores before format 7."""
        return b"backupvault/v1 node store bucket key" + struct.pack(">HH", self._node, bucket)

    def _key_group_aad(self, group: int) -> bytes:
        return b"backupvault/v1 node store key group" + struct.pack(">HH", self._node, group)

    def _term(self, name: bytes, ver: int) -> int:
        return int.from_bytes(hmac.digest(self._digest_key, name + _u64(ver), "sha256"), "big")

    def _bucket_term(self, bucket: int, ver: int, digest: int) -> int:
        """A bucket row's term in `top`: its digest included, so a bucket row of another
        history with the same (id, version) (a write the token never counted, then lost
        to a restored disk) does not match."""
        message = b"bucket" + struct.pack(">H", bucket) + _u64(ver) + digest.to_bytes(32, "big")
        return int.from_bytes(hmac.digest(self._digest_key, message, "sha256"), "big")

    def _bucket_term_before_5(self, bucket: int, ver: int) -> int:
        """The term stores before format 5 summed in `top`: (id, version) only."""
        message = b"bucket" + struct.pack(">H", bucket) + _u64(ver)
        return int.from_bytes(hmac.digest(self._digest_key, message, "sha256"), "big")

    @staticmethod
    def _open(keys: list[AESGCM], sealed: bytes, aad: bytes, what: str) -> bytes:
        for aead in list(keys):
            try:
                return aead.decrypt(sealed[:12], sealed[12:], aad)
            except InvalidTag:
                continue
        raise StoreCorrupted(f"node store {what} failed authentication", hint=_CORRUPT_HINT)

    @staticmethod
    def _seal(aead: AESGCM, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, plain, aad)

    def _leaf_keys_aad(self, bucket: int) -> bytes:
        return b"backupvault/v1 node store leaf keys" + struct.pack(">HH", self._node, bucket)

    def _aead(self, key: bytes) -> AESGCM:
        aead = self._aeads.get(key)
        if aead is None:
            if len(self._aeads) >= _CACHED_AEADS:
                self._aeads.clear()
            aead = self._aeads[key] = AESGCM(key)
        return aead

    def _row_keys(self, name: bytes) -> list[AESGCM]:
        """What may seal the row named `name`: its leaf's key, and while a rotation of
        its bucket commits, the leaf's key before it."""
        bucket, leaf = bucket_of(name), leaf_of(name)
        keys = self._bucket_keys.get(bucket)
        before = self._keys_before.get(bucket)
        if keys is None:
            raise StoreCorrupted("node store bucket has rows but no key", hint=_CORRUPT_HINT)
        found = [self._aead(keys.leaf_key(leaf))]
        if before is not None:
            found.append(self._aead(before.leaf_key(leaf)))
        return found

    def _leaf_key(self, name: bytes) -> bytes:
        """The key that seals the row named `name` now (tests and tools)."""
        return self._bucket_keys[bucket_of(name)].leaf_key(leaf_of(name))

    def _key_groups(
        self, aead: AESGCM, keys: Mapping[int, BucketKeys], groups: Iterable[int]
    ) -> list[tuple[int, bytes]]:
        """(group, row) of each of `groups`: the keys of its buckets that have some in
        `keys`, wrapped under `aead` (the module docstring's `key_group`)."""
        rows = []
        for group in sorted(set(groups)):
            first = group << KEY_GROUP_BITS
            parts = []
            for slot in range(1 << KEY_GROUP_BITS):
                bucket_keys = keys.get(first + slot)
                if bucket_keys is not None:
                    wrapped = bucket_keys.wrapped()
                    parts.append(bytes([slot, len(wrapped)]) + wrapped)
            rows.append((group, self._seal(aead, b"".join(parts), self._key_group_aad(group))))
        return rows

    def _write_key_groups(
        self, aead: AESGCM, keys: Mapping[int, BucketKeys], buckets: Iterable[int]
    ) -> None:
        """The key group rows of `buckets`, wrapped under `aead` (in the caller's
        transaction)."""
        groups = {bucket >> KEY_GROUP_BITS for bucket in buckets}
        self._db.executemany(
            "INSERT OR REPLACE INTO key_group (id, row) VALUES (?, ?)",
            self._key_groups(aead, keys, groups),
        )

    def _write_leaf_keys(self, changed: Mapping[int, BucketKeys]) -> None:
        """Each changed bucket's `leaf_key` row: written if listed, else gone (in the
        caller's transaction)."""
        listed = [
            (b, self._seal(AESGCM(k.key), k.leaves, self._leaf_keys_aad(b)))
            for b, k in changed.items()
            if k.form == BucketKeys.LISTED
        ]
        self._db.executemany("INSERT OR REPLACE INTO leaf_key (id, row) VALUES (?, ?)", listed)
        gone = [(b,) for b, k in changed.items() if k.form != BucketKeys.LISTED]
        self._db.executemany("DELETE FROM leaf_key WHERE id = ?", gone)

    # ---- opening --------------------------------------------------------------------------

    def _read_meta(self) -> None:
        found = self._db.execute("SELECT row FROM meta WHERE id = 0").fetchone()
        if found is None:
            if self._db.execute("SELECT 1 FROM record LIMIT 1").fetchone() is not None:
                raise StoreCorrupted("node store has records but no counter", hint=_CORRUPT_HINT)
            return
        plain = self._open(self._master, bytes(found[0]), self._meta_aad(), "counter")
        try:
            self.counter, self._last_ver, self._max_round = struct.unpack(">QQQ", plain[:24])
            self._top = int.from_bytes(plain[24:56], "big")
            self.store_id = plain[56:72]
            (count,) = struct.unpack(">H", plain[72:74])
            at = 74
            for _ in range(count):
                peer, length = struct.unpack(">HB", plain[at : at + 3])
                store_id = plain[at + 3 : at + 3 + length]
                (upto,) = struct.unpack(">Q", plain[at + 3 + length : at + 11 + length])
                self._marks[peer] = Mark(store_id, upto)
                at += 11 + length
            if len(plain) >= at + 8:
                (self.suspect_through,) = struct.unpack(">Q", plain[at : at + 8])
            if len(plain) >= at + 9:
                self.catching_up = plain[at + 8] != 0
                self.began_empty = plain[at + 8] == _CATCHING_UP_FROM_EMPTY
            if len(plain) >= at + 11:
                (owed,) = struct.unpack(">H", plain[at + 9 : at + 11])
                end = at + 11 + 2 * owed
                self.rotation_owed = set(struct.unpack(f">{owed}H", plain[at + 11 : end]))
                if len(plain) >= end + 8:
                    (self.catch_up_from,) = struct.unpack(">Q", plain[end : end + 8])
                self._top_with_digests = len(plain) > end + 8 and plain[end + 8] == 1
            else:
                self._top_with_digests = False
        except struct.error:
            raise StoreCorrupted("node store counter is malformed", hint=_CORRUPT_HINT) from None

    def _read_buckets(self, current: bool) -> dict[int, tuple[int, int]]:
        """The bucket rows, checked against `top`: sealed under their own key and summed
        with their digests (`current`, as the counter row says: format 5), or as stores
        before format 5 kept them, under the row key (or their own: format 4 at one
        commit) and summed without. The counter row says which, not the format number,
        which a disk can change: a store made current reads the current way only."""
        buckets: dict[int, tuple[int, int]] = {}
        top = 0
        keys = self._bucket_rows_key if current else [*self._master, *self._bucket_rows_key]
        for bucket, ver, row in self._db.execute("SELECT id, ver, row FROM bucket"):
            if ver > self.counter:
                raise StoreCorrupted("node store bucket is newer than its counter")
            if not 0 <= bucket < BUCKETS or ver < 0:
                raise StoreCorrupted("node store bucket row is malformed", hint=_CORRUPT_HINT)
            plain = self._open(keys, bytes(row), self._bucket_aad(bucket, ver), "bucket")
            digest = int.from_bytes(plain, "big")
            buckets[bucket] = (ver, digest)
            if current:
                top = (top + self._bucket_term(bucket, ver, digest)) % _MOD
            else:
                top = (top + self._bucket_term_before_5(bucket, ver)) % _MOD
        if top != self._top:
            raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)
        return buckets

    def _make_current_format(self) -> None:
        """A store of an earlier format, checked the old way: its bucket rows re-sealed
        under their own key, `top` summed again with their digests, and its number made
        `STORE_FORMAT`, in one transaction (a crash leaves it as it was, to be made so
        at the next open)."""
        rows = []
        top = 0
        for bucket, (ver, digest) in self._buckets.items():
            aad = self._bucket_aad(bucket, ver)
            rows.append(
                (self._seal(self._bucket_rows_key[0], digest.to_bytes(32, "big"), aad), bucket)
            )
            top = (top + self._bucket_term(bucket, ver, digest)) % _MOD
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("UPDATE bucket SET row = ? WHERE id = ?", rows)
            if self._keys_ungrouped:
                self._write_key_groups(self._master[0], self._bucket_keys, self._bucket_keys)
                self._db.execute("DROP TABLE bucket_key")
            if self._db.execute("SELECT 1 FROM meta").fetchone() is not None:
                self._write_meta(
                    self.counter,
                    self._last_ver,
                    self._max_round,
                    top,
                    self.store_id,
                    self._marks,
                    self.catching_up,
                )
            self._db.execute(f"PRAGMA user_version={STORE_FORMAT}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._top, self._top_with_digests = top, True
        self._keys_ungrouped = False

    def _read_bucket_keys(self) -> None:
        """Every bucket key, unwrapped with the row key from its group's row; each bucket
        that holds a record must have one (a removed group row, or one put back from
        before a bucket had its key, would otherwise read as an empty bucket)."""
        for group, row in self._db.execute("SELECT id, row FROM key_group"):
            if not 0 <= group < KEY_GROUPS:
                raise StoreCorrupted("node store key group is out of range", hint=_CORRUPT_HINT)
            aad = self._key_group_aad(group)
            plain = self._open(self._master, bytes(row), aad, "bucket keys")
            for slot, wrapped in _group_entries(plain):
                bucket = (group << KEY_GROUP_BITS) + slot
                self._bucket_keys[bucket] = self._with_leaves(bucket, BucketKeys.unwrapped(wrapped))
        if not set(self._buckets) <= set(self._bucket_keys):
            raise StoreCorrupted("node store bucket has rows but no key", hint=_CORRUPT_HINT)

    def _read_bucket_keys_before_7(self) -> None:
        """As `_read_bucket_keys`, from a store of an earlier format: a `bucket_key` row
        per bucket (grouped when the store is made current)."""
        for bucket, row in self._db.execute("SELECT id, row FROM bucket_key"):
            if not 0 <= bucket < BUCKETS:
                raise StoreCorrupted("node store bucket key is out of range", hint=_CORRUPT_HINT)
            plain = self._open(self._master, bytes(row), self._bucket_key_aad(bucket), "bucket key")
            self._bucket_keys[bucket] = self._with_leaves(bucket, BucketKeys.unwrapped(plain))
        if not set(self._buckets) <= set(self._bucket_keys):
            raise StoreCorrupted("node store bucket has rows but no key", hint=_CORRUPT_HINT)

    def _with_leaves(self, bucket: int, keys: BucketKeys) -> BucketKeys:
        """A LISTED bucket's keys with its leaf keys, read from its `leaf_key` row."""
        if keys.form != BucketKeys.LISTED:
            return keys
        sealed = self._db.execute("SELECT row FROM leaf_key WHERE id = ?", (bucket,)).fetchone()
        if sealed is None:
            raise StoreCorrupted("node store leaf keys are missing", hint=_CORRUPT_HINT)
        aead = [AESGCM(keys.key)]
        leaves = self._open(aead, bytes(sealed[0]), self._leaf_keys_aad(bucket), "leaf keys")
        if len(leaves) != 32 * LEAVES:
            raise StoreCorrupted("node store leaf keys are malformed", hint=_CORRUPT_HINT)
        return dataclasses.replace(keys, leaves=leaves)

    def _reseal(
        self, bucket: int, leaves: set[int] | None, old: BucketKeys | None, new: BucketKeys
    ) -> None:
        """Re-seal the rows of `leaves` of the bucket (None: all of them) from the leaf
        keys of `old` (None: the row key, as stores before bucket keys sealed them) to
        those of `new`, inside the caller's transaction, under the lock. The rows
        re-sealed are read once and checked against their leaf's sum (or the bucket's
        digest): a row the disk put back after an earlier check is refused, never sealed
        anew under the keys that replace the ones its erasure destroys."""
        sums = self._leaf_sums(bucket, self._db)
        ranges = (
            [(_bucket_range(bucket), self._buckets.get(bucket, (0, 0))[1])]
            if leaves is None
            else [(_leaf_range(bucket, leaf), sums.get(leaf)) for leaf in sorted(leaves)]
        )
        rows = []
        for (low, high), expected in ranges:
            found = [
                (int(ver), bytes(name), bytes(row))
                for ver, name, row in _in_range(self._db, "ver, name, row", low, high)
            ]
            self._checked(((name, ver) for ver, name, _ in found), expected)
            for ver, name, sealed in found:
                aad = self._aad(name, ver)
                leaf = leaf_of(name)
                opening = self._master if old is None else [self._aead(old.leaf_key(leaf))]
                plain = self._open(opening, sealed, aad, "row")
                rows.append((self._seal(self._aead(new.leaf_key(leaf)), plain, aad), ver))
        self._db.executemany("UPDATE record SET row = ? WHERE ver = ?", rows)

    def _give_buckets_keys(self) -> None:
        """A store written before bucket keys (every row under the row key itself): each
        bucket gets its key and its rows are re-sealed under it, one bucket at a time,
        in one transaction. Once per store; every bucket is checked first."""
        with self._lock:
            for bucket in sorted(self._buckets):
                self._verify(bucket, self._db)
            fresh = {bucket: BucketKeys.new() for bucket in self._buckets}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # With the keys: a crash before the commit leaves the store as it was.
                self._db.execute(_KEY_GROUP_TABLE)
                for bucket, keys in sorted(fresh.items(), key=lambda item: item[0]):
                    self._reseal(bucket, None, None, keys)
                self._write_key_groups(self._master[0], fresh, fresh)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bucket_keys.update(fresh)

    # ---- checking buckets ---------------------------------------------------------------

    def _checked(
        self,
        found: Iterable[tuple[bytes, int]],
        expected: int,
        by_leaf: dict[int, int] | None = None,
    ) -> dict[bytes, int]:
        """The (name -> version) pairs as read, if their terms add up to `expected` (a
        bucket's digest or a leaf's sum), with each leaf's sum added to `by_leaf`. Call it
        under the lock, or be ready for a commit under way to make it fail: its rows are
        in, its sums not yet in memory."""
        total = 0
        pairs: dict[bytes, int] = {}
        for name, ver in found:
            if ver > self._last_ver:
                raise StoreCorrupted("node store row is newer than its counter")
            if ver < 1 or len(name) != NAME_LEN:
                raise StoreCorrupted("node store row is malformed", hint=_CORRUPT_HINT)
            pairs[bytes(name)] = int(ver)
            term = self._term(bytes(name), int(ver))
            total = (total + term) % _MOD
            if by_leaf is not None:
                leaf = leaf_of(name)
                by_leaf[leaf] = (by_leaf.get(leaf, 0) + term) % _MOD
        if total != expected:
            raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)
        return pairs

    @_refuses_malformed
    def _leaf_sums(self, bucket: int, db: sqlite3.Connection) -> LeafSums:
        """The bucket's sums per leaf, kept in memory once the bucket was read whole and
        checked against its digest (and kept current by every save). First without the
        lock, so that a commit under way does not stall a read; a mismatch then may be
        that commit, so it is read again under the lock, where a mismatch is the disk's."""
        kept = self._sums.get(bucket)
        if kept is not None:
            return kept
        for locked in (False, True):
            with self._lock if locked else nullcontext():
                state = self._buckets.get(bucket, (0, 0))
                sums: dict[int, int] = {}
                try:
                    self._checked(_in_bucket(db, "name, ver", bucket), state[1], sums)
                except StoreCorrupted:
                    if locked:
                        raise
                    continue
                checked = LeafSums(sums)
                with self._lock:
                    # Unless a save changed the bucket since it was read: the sums would
                    # be behind the disk, and a good row would look rolled back.
                    if self._buckets.get(bucket, (0, 0)) == state:
                        checked = self._sums.setdefault(bucket, checked)
                return checked
        raise AssertionError("unreachable")

    @_refuses_malformed
    def _leaf_versions(self, bucket: int, leaf: int, db: sqlite3.Connection) -> dict[bytes, int]:
        """The names and versions of the leaf's rows (about N / 2^20 of them) as its
        bucket's sums vouch for them: what every read or write of a row is compared with.
        Unlocked first, then under the lock, as `_leaf_sums`."""
        low, high = _leaf_range(bucket, leaf)
        for locked in (False, True):
            with self._lock if locked else nullcontext():
                expected = self._leaf_sums(bucket, db).get(leaf)
                try:
                    return self._checked(_in_range(db, "name, ver", low, high), expected)
                except StoreCorrupted:
                    if locked:
                        raise
        raise AssertionError("unreachable")

    def _verify(self, bucket: int, db: sqlite3.Connection) -> None:
        """Check the bucket whole, once (`verify_all`: damage found where nobody reads)."""
        self._leaf_sums(bucket, db)

    def verify_all(self, pause: float = 0.0) -> None:
        """Check every bucket not checked yet (the node runs this in a thread after start,
        so a damaged row is found even if nobody asks for its entry), sleeping `pause`
        seconds between buckets so that serving goes first."""
        # A connection of its own: the reader belongs to the event loop's thread.
        db = sqlite3.connect(self._path, isolation_level=None)
        try:
            db.execute("PRAGMA query_only=ON")
            for bucket in range(BUCKETS):
                if self._closing:
                    return
                if bucket not in self._sums:
                    self._verify(bucket, db)
                    time.sleep(pause)
        finally:
            db.close()

    def share_keys(self, wanted: Callable[[NodeShare], bool], pause: float = 0.0) -> list[bytes]:
        """The entry keys of this node's share rows that `wanted` picks, read on a
        connection of its own (the node runs this in a thread after start, after
        `verify_all`: a share left at L that nobody asks for again is found after a
        restart, docs/threshold.md "Counters and erasure"), sleeping `pause` seconds every
        `SCAN_BATCH` rows: every row is opened, and serving goes first. A row that does not
        open (a rotation under way, or damage) is passed over: its entry's next read checks
        it."""
        db = sqlite3.connect(self._path, isolation_level=None)
        found: list[bytes] = []
        try:
            db.execute("PRAGMA query_only=ON")
            low, high = SHARE_PREFIX, SHARE_PREFIX[:-1] + bytes([SHARE_PREFIX[-1] + 1])
            rows = db.execute("SELECT ver, name, row FROM record")
            for scanned, (ver, name, sealed) in enumerate(rows, 1):
                if self._closing:
                    break
                if scanned % SCAN_BATCH == 0:
                    time.sleep(pause)
                try:
                    record = self._decode(bytes(name), int(ver), bytes(sealed))
                    if not low <= record.key < high:
                        continue
                    if wanted(_stored_share(record.value)[0]):
                        found.append(record.key[len(SHARE_PREFIX) :])
                except StoreCorrupted:
                    continue
        finally:
            db.close()
        return found

    # ---- reading -------------------------------------------------------------------------

    def _decode(self, name: bytes, ver: int, sealed: bytes) -> AcceptorRecord:
        keys = self._row_keys(name)
        plain = self._open(keys, sealed, self._aad(name, ver), f"row {name.hex()[:16]}…")
        try:
            record = _unpack_record(plain)
        except ValueError:
            raise StoreCorrupted("node store row is malformed", hint=_CORRUPT_HINT) from None
        if not hmac.compare_digest(self.name_of(record.key), name):
            raise StoreCorrupted("node store row holds another entry's record")
        return record

    @_refuses_malformed
    def get(self, key: bytes) -> AcceptorRecord | None:
        """The entry's record, after its bucket is checked (a missing row may have been
        removed: the check says whether it ever was there)."""
        return self._named(self.name_of(key))

    def _named(self, name: bytes) -> AcceptorRecord | None:
        """`get` by the row's name."""
        while True:
            rotations = self._rotations
            row = self._checked_row(name)
            try:
                return None if row is None else self._decode(name, row[0], row[1])
            except StoreCorrupted:
                if rotations == self._rotations:
                    raise  # else: read before a rotation, opened after it: read again

    def copied_before_start(self, key: bytes) -> bool:
        """Whether `key`'s row was written by a catch-up that began before the store was
        opened and has not finished: above `catch_up_from`, up to `opened_ver` (a row
        written since is this run's; read before it is written, as the replica does)."""
        if not self.catching_up or self.catch_up_from >= self.opened_ver:
            return False
        found = self._checked_row(self.name_of(key))
        return found is not None and self.catch_up_from < found[0] <= self.opened_ver

    def _checked_row(self, name: bytes) -> tuple[int, bytes] | None:
        """(version, sealed row) of `name`, or None: the version (or its absence) must be
        what its leaf's checked rows say, else the row was changed under the node.
        Unlocked first, then under the lock (a commit may fall between the two reads)."""
        bucket, leaf = bucket_of(name), leaf_of(name)
        for locked in (False, True):
            with self._lock if locked else nullcontext():
                listed = self._leaf_versions(bucket, leaf, self._reader).get(name)
                found = self._reader.execute(
                    "SELECT ver, row FROM record WHERE name = ?", (name,)
                ).fetchone()
                row = None if found is None else (int(found[0]), bytes(found[1]))
                if (None if row is None else row[0]) == listed:
                    return row
        raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)

    def get_share(self, key: bytes) -> NodeShare | None:
        """This node's own row for entry `key` (bucket checked first, like a record), with
        its M put back from the entry's value where the row names it by hash. Unlocked
        first, then under the lock: a save may move the value to another M, and write the
        share row again with M in full, between the two reads."""
        for locked in (False, True):
            with self._lock if locked else nullcontext():
                record = self.get(SHARE_PREFIX + key)
                if record is None:
                    return None
                row, named = _stored_share(record.value)
                if named is None:
                    return row
                held = self.get(key)
                manifest = b"" if held is None else _manifest_of(held.value)
                if manifest and hashlib.sha256(manifest).digest() == named:
                    return row.with_(manifest=manifest)
        raise StoreCorrupted(
            "node store share row names a manifest its entry's value does not hold",
            hint=_CORRUPT_HINT,
        )

    @_refuses_malformed
    def changed_since(self, store_id: bytes, since: int, limit: int) -> Changes:
        """Records written after version `since` (see `RecordSource.changed_since`)."""
        with self._lock:  # no commit between the rows read and the version reported
            if store_id != self.store_id or since > self._last_ver:
                since = 0
            sql = "SELECT ver, name, row FROM record WHERE ver > ? ORDER BY ver LIMIT ?"
            rows = self._reader.execute(sql, (since, limit + 1)).fetchall()
            last = self._last_ver
            more = len(rows) > limit
            records = []
            leaves: dict[tuple[int, int], dict[bytes, int]] = {}
            for ver, found, row in rows[:limit]:
                name = bytes(found)
                at = bucket_of(name), leaf_of(name)
                if at not in leaves:
                    leaves[at] = self._leaf_versions(*at, self._reader)
                if leaves[at].get(name) != ver:
                    raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)
                record = self._decode(name, ver, bytes(row))
                if not is_share_record(record):  # a share row never leaves the node
                    records.append(record)
        upto = int(rows[limit - 1][0]) if more else last
        return Changes(self.store_id, since, upto, records, more)

    def records(self) -> Iterator[AcceptorRecord]:
        """Every record, one at a time (memory stays flat whatever the number of entries),
        after every bucket is checked."""
        self.verify_all()
        for ver, name, row in self._reader.execute("SELECT ver, name, row FROM record"):
            record = self._decode(bytes(name), ver, bytes(row))
            if not is_share_record(record):
                yield record

    def load(self) -> list[AcceptorRecord]:
        """Every record in a list (for `node inspect` and tests)."""
        return list(self.records())

    def max_round(self) -> int:
        return self._max_round

    def marks(self) -> dict[int, Mark]:
        return dict(self._marks)

    # ---- writing -------------------------------------------------------------------------

    def save(
        self,
        records: Iterable[AcceptorRecord],
        marks: dict[int, Mark] | None = None,
        *,
        caught_up: bool = False,
    ) -> None:
        """Write records (and new marks) durably, all or none, as one step of the counter.
        `caught_up`: the node had caught up when these records were made, so every copy
        it caught up with is in this write or an earlier one: the catch-up is finished."""
        latest = {r.key: (r, self.name_of(r.key)) for r in records}
        if not latest:
            return
        if len(latest) > ROWS_PER_SAVE:
            raise ValueError(f"one save writes at most {ROWS_PER_SAVE} rows")
        catching_up = self.catching_up and not caught_up
        with self._lock:
            self._keep_manifests_once(latest)
            touched = {bucket_of(name) for _, name in latest.values()}
            # Never build on a bucket not checked, nor on a row other than the checked one.
            read = sorted({(bucket_of(name), leaf_of(name)) for _, name in latest.values()})
            listed = {at: self._leaf_versions(*at, self._db) for at in read}
            deltas: dict[int, dict[int, int]] = {}  # bucket -> leaf -> change of its sum
            seq = self.counter + 1
            ver = self._last_ver
            max_round = self._max_round
            digests = {b: self._buckets.get(b, (0, 0))[1] for b in touched}
            # A bucket's first record gives it a key, kept (in memory too) before the
            # commit: a read that sees the row must find its key.
            fresh = {b: BucketKeys.new() for b in touched if b not in self._bucket_keys}
            self._bucket_keys.update(fresh)
            rows = []
            erased: dict[int, set[int]] = {}  # bucket -> its leaves with a row that erases
            shares_erased = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for record, name in latest.values():
                    bucket, leaf = bucket_of(name), leaf_of(name)
                    old = self._db.execute(
                        "SELECT ver, row FROM record WHERE name = ?", (name,)
                    ).fetchone()
                    if (None if old is None else int(old[0])) != listed[bucket, leaf].get(name):
                        raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)
                    ver += 1
                    change = self._term(name, ver)
                    if old is not None:
                        change -= self._term(name, int(old[0]))
                        if self._erases(name, int(old[0]), bytes(old[1]), record):
                            erased.setdefault(bucket, set()).add(leaf)
                            shares_erased += is_share_record(record)
                    digests[bucket] = (digests[bucket] + change) % _MOD
                    in_bucket = deltas.setdefault(bucket, {})
                    in_bucket[leaf] = in_bucket.get(leaf, 0) + change
                    plain = _pack_record(record)
                    sealed = self._seal(self._row_keys(name)[0], plain, self._aad(name, ver))
                    rows.append((ver, name, sealed))
                    max_round = raised_floor(max_round, record.promised_round)
                # The old row of a name goes (UNIQUE name), the new one takes the next rowid.
                self._db.executemany(
                    "INSERT OR REPLACE INTO record (ver, name, row) VALUES (?, ?, ?)", rows
                )
                # Each written share row, opened once for both tables.
                shares = [
                    (record, name, _stored_share(record.value)[0])
                    for record, name in latest.values()
                    if is_share_record(record)
                ]
                self._keep_watched(shares)
                self._keep_staged(shares)
                self._keep_account_entries(latest)
                self._write_key_groups(self._master[0], self._bucket_keys, fresh)
                top = self._top
                buckets = []
                for bucket, digest in digests.items():
                    if bucket in self._buckets:
                        top -= self._bucket_term(bucket, *self._buckets[bucket])
                    top = (top + self._bucket_term(bucket, seq, digest)) % _MOD
                    plain = digest.to_bytes(32, "big")
                    aad = self._bucket_aad(bucket, seq)
                    sealed = self._seal(self._bucket_rows_key[0], plain, aad)
                    buckets.append((bucket, seq, sealed))
                self._db.executemany(
                    "INSERT OR REPLACE INTO bucket (id, ver, row) VALUES (?, ?, ?)", buckets
                )
                new_marks = {**self._marks, **(marks or {})}
                # The rotation an erasure owes is recorded with the erasure: if it then
                # fails (a crash, a full disk, a squatted key file), the node does it
                # before it serves again rather than never.
                owed = self.rotation_owed | (
                    set(erased) if self.key_rotation is not None else set()
                )
                self._write_meta(
                    seq, ver, max_round, top, self.store_id, new_marks, catching_up, owed=owed
                )
                sums = {b: self._sums[b].updated(changes) for b, changes in deltas.items()}
                for bucket, kept in sums.items():  # the leaves still add up to the bucket
                    assert sum(kept.sums().values()) % _MOD == digests[bucket]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                for bucket in fresh:
                    del self._bucket_keys[bucket]
                raise
            self.counter, self._last_ver, self._max_round, self._top = seq, ver, max_round, top
            self.shares_erased += shares_erased
            self.catching_up = catching_up
            self.began_empty = self.began_empty and catching_up
            self.catch_up_from = self.catch_up_from if catching_up else 0
            self._marks = new_marks
            if self.key_rotation is not None:
                for bucket, leaves in erased.items():
                    # Owed before and not known here (a restart since): stays whole.
                    if bucket not in self.rotation_owed or bucket in self._owed_leaves:
                        self._owed_leaves.setdefault(bucket, set()).update(leaves)
            self.rotation_owed = owed
            for bucket, digest in digests.items():
                self._buckets[bucket] = (seq, digest)
            # Replaced, not changed: a reader holds a whole one.
            self._sums.update(sums)
        if erased:
            # Older page images of the entry stay in the WAL until it is checkpointed;
            # secure_delete zeroes what the checkpoint frees in the database file.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            # Copies of the data folder (backups, older disk images) still hold the erased
            # row under its leaf's key: a new key for that leaf and its bucket, every
            # bucket key wrapped under a new row key, then the token destroys the old.
            self.finish_owed_rotation()

    def _keep_manifests_once(self, latest: dict[bytes, tuple[AcceptorRecord, bytes]]) -> None:
        """Put the share rows of a save in their stored form (`_share_to_store`), and add
        the share rows on disk that name the M of a value this save moves on, with M in
        full (module docstring). Called under the lock: what is read here is what the
        save then builds on."""
        for key, (record, name) in list(latest.items()):
            if is_share_record(record):
                entry = key[len(SHARE_PREFIX) :]
                value = latest[entry][0] if entry in latest else self.get(entry)
                latest[key] = (_share_to_store(record, value), name)
                continue
            share_key = SHARE_PREFIX + key
            if share_key in latest:
                continue
            stored = self.get(share_key)
            named = None if stored is None else _stored_share(stored.value)[1]
            if stored is None or named is None:
                continue
            if hashlib.sha256(_manifest_of(record.value)).digest() == named:
                continue
            full = self.get_share(key)  # its M from the value this save replaces
            if full is None:  # not reached: `get` above found the row
                raise StoreCorrupted(_ROLLED_BACK, hint=_CORRUPT_HINT)
            latest[share_key] = (
                dataclasses.replace(stored, value=full.to_bytes()),
                self.name_of(share_key),
            )

    def finish_owed_rotation(self) -> None:
        """Rotate the keys an erasure owes (`rotation_owed`), if any and if this store has
        a token's key rotation: at once after the erasure, and at start for one that did
        not get done."""
        if self.rotation_owed and self.key_rotation is not None:
            generation, row_key = self.key_rotation.begin_rotation()
            self.rotate(row_key, generation, self.rotation_owed)
            self.key_rotation.finish_rotation(generation)

    def _keep_watched(self, shares: list[tuple[AcceptorRecord, bytes, NodeShare]]) -> None:
        """In the saving transaction: `watched` names each written share row (`shares`:
        record, name, the row opened) that keeps a share at L, and no other. Without
        `at_limit` (a tool writing) nothing can be judged: the store marks a scan owed
        (the `unwatched` table), and the next start scans."""
        if not shares:
            return
        at_limit = self.at_limit
        if at_limit is None:
            # Every time, not only when the flag says complete: a save that rolled back
            # took its mark away, and left the flag down.
            self._db.execute(_UNWATCHED_TABLE)
            self.watch_complete = False
            return
        judged = [(name, at_limit(row)) for _, name, row in shares]
        self._db.executemany(
            "INSERT OR IGNORE INTO watched (name) VALUES (?)", [(n,) for n, at in judged if at]
        )
        self._db.executemany(
            "DELETE FROM watched WHERE name = ?", [(n,) for n, at in judged if not at]
        )

    def _account_tag(self, account: str) -> bytes:
        return hmac.digest(self._name_key, b"\xffaccount/" + account.encode(), "sha256")[:16]

    def _keep_staged(self, shares: list[tuple[AcceptorRecord, bytes, NodeShare]]) -> None:
        """In the saving transaction: `staged` names each written share row (`shares`, as
        `_keep_watched`) that keeps staged shares and no share (`NodeShare.staged_only`),
        with its account's tag, and no other."""
        named: list[tuple[bytes, bytes]] = []
        others: list[tuple[bytes]] = []
        for record, name, row in shares:
            try:
                entry = EntryId.from_bytes(record.key[len(SHARE_PREFIX) :])
            except (InvalidInput, ValueError):
                entry = None  # not the node's (a tool's): counts for no account
            if entry is not None and row.staged_only:
                named.append((name, self._account_tag(entry.account)))
            else:
                others.append((name,))
        self._db.executemany("INSERT OR REPLACE INTO staged (name, account) VALUES (?, ?)", named)
        self._db.executemany("DELETE FROM staged WHERE name = ?", others)

    def _keep_account_entries(self, latest: Mapping[bytes, tuple[AcceptorRecord, bytes]]) -> None:
        """In the saving transaction: `account_entries` names, under its account's tag,
        each entry this save writes a live value or a share row of (by its value row's
        name). A name is never taken away: a delete frees none. A key that names no entry
        (a tool's) counts for no account."""
        named: list[tuple[bytes, bytes]] = []
        for key, (record, name) in latest.items():
            share_row = is_share_record(record)
            if not share_row and not holds_live_value(record):
                continue
            entry_key = key[len(SHARE_PREFIX) :] if share_row else key
            try:
                entry = EntryId.from_bytes(entry_key)
            except (InvalidInput, ValueError):
                continue
            # A value row's own name is the entry's; a share row's is computed once more.
            entry_name = self.name_of(entry_key) if share_row else name
            named.append((self._account_tag(entry.account), entry_name))
        self._db.executemany(
            "INSERT OR IGNORE INTO account_entries (account, name) VALUES (?, ?)", named
        )

    def count_entries(self, key: bytes) -> tuple[int, bool]:
        """How many entries of `key`'s account this store counts (`account_entries`: a
        live value or a share row written), and whether `key`'s entry is one of them: two
        indexed reads on the reader's thread (the event loop's), which need no lock (no
        sum or key of the store is read). Entries last written before store format 6 are
        not named until written again: the count errs toward taking a new entry, never
        toward refusing one."""
        tag = self._account_tag(EntryId.from_bytes(key).account)
        reader = self._reader
        (count,) = reader.execute(
            "SELECT COUNT(*) FROM account_entries WHERE account = ?", (tag,)
        ).fetchone()
        this_one = reader.execute(
            "SELECT 1 FROM account_entries WHERE account = ? AND name = ?",
            (tag, self.name_of(key)),
        ).fetchone()
        return int(count), this_one is not None

    def count_staged(self, account: str, overlay: Mapping[bytes, bool], limit: int) -> int:
        """How many of `account`'s entries this store keeps staged shares and no share of
        (`staged`), with `overlay` (entry key -> whether its row is staged-only) in place
        of the stored rows of those entries (rows handed out and not yet durable). One
        indexed read of the account's names; only when the count reaches `limit` is each
        stored row opened and checked (a name an earlier version's write left behind does
        not count). On the reader's thread (the event loop's), as `watched_keys`."""
        tag = self._account_tag(account)
        with self._lock:
            found = self._reader.execute("SELECT name FROM staged WHERE account = ?", (tag,))
            stored = {bytes(n) for (n,) in found}
        over = {self.name_of(SHARE_PREFIX + key): only for key, only in overlay.items()}
        names = (stored - set(over)) | {name for name, only in over.items() if only}
        if len(names) < limit:
            return len(names)
        return sum(1 for name in names if over.get(name) or self._staged_only(name))

    def _staged_only(self, name: bytes) -> bool:
        """Whether the row `name` (checked as any read) is a share row that keeps staged
        shares and no share."""
        record = self._named(name)
        return (
            record is not None
            and is_share_record(record)
            and _stored_share(record.value)[0].staged_only
        )

    def watched_keys(self) -> list[bytes]:
        """The entry keys of the share rows `watched` names (each row checked as any read
        is; one gone, or that does not open, is passed over). Complete only when
        `watch_complete`. On the reader's thread (the event loop's): a few rows."""
        with self._lock:
            names = [bytes(n) for (n,) in self._reader.execute("SELECT name FROM watched")]
        keys = []
        for name in names:
            try:
                row = self._checked_row(name)
                record = None if row is None else self._decode(name, row[0], row[1])
            except StoreCorrupted:
                continue  # as in `share_keys`: its entry's next read checks it
            if record is not None and is_share_record(record):
                keys.append(record.key[len(SHARE_PREFIX) :])
        return keys

    def complete_watch(self, keys: Iterable[bytes]) -> None:
        """After the first start's scan (`share_keys`) of a store whose `watched` table may
        miss rows: name the rows it found at L in `watched` (rows written since are there
        already) and drop the `unwatched` table, in one transaction."""
        names = [(self.name_of(SHARE_PREFIX + key),) for key in keys]
        with self._lock:
            if self._closing:
                return  # the scan may have stopped short: the next start scans again
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO watched (name) VALUES (?)", names)
                self._db.execute(f"DROP TABLE IF EXISTS {_UNWATCHED}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.watch_complete = True

    def _erases(self, name: bytes, ver: int, sealed: bytes, new: AcceptorRecord) -> bool:
        """Whether writing `new` over the row (`ver`, `sealed`) erases something: a share
        row that held a share and now holds none or another (a password change's new
        share can take the old one's place in one group commit, with no empty row
        between), or an entry's value that was live and is not. Writing an erased row or a
        destroyed value again erases nothing more, and must not rotate keys: a peer can
        cause such a write with any message about the entry. A row that does not open is
        taken to have held what `new` no longer holds."""
        share_row = is_share_record(new)
        if not share_row and not _not_live(new):
            return False
        try:
            old = self._decode(name, ver, sealed)
            if share_row:
                held = _stored_share(old.value)[0].share
                return bool(held) and held != _stored_share(new.value)[0].share
            return not _not_live(old)
        except StoreCorrupted:
            return True

    def rotate(self, row_key: bytes, generation: int, buckets: Iterable[int] | None = None) -> None:
        """Replace the row key with `row_key` (recording `generation`) and the keys of
        `buckets` (None: every bucket) with new ones, in one transaction. Of a bucket
        whose erased rows' leaves this process knows (`_owed_leaves`), those leaves get new
        keys and their rows are re-sealed; of any other, every leaf (`BucketKeys.rotated`).
        The rows are checked first, so a rolled-back row is refused rather than sealed
        anew; every bucket key is wrapped under the new row key, and so is the counter
        row (the bucket digests are under a key of their own). Then the WAL is truncated
        (secure_delete zeroes the freed pages). Names, versions, digests and the counter
        are unchanged: only what the old keys open is gone from the file. An erasure
        re-seals one leaf, about N / 2^20 entries' rows, its bucket's leaf keys and the
        64 group rows of bucket keys: its cost does not grow with the store (docs/pkcs11.md,
        "Erasure by key rotation")."""
        if len(row_key) != 32:
            raise InvalidInput("row key must be 32 bytes")
        new = AESGCM(row_key)
        with self._lock:
            rekey = sorted(self._bucket_keys if buckets is None else set(buckets))
            leaves = {b: None if buckets is None else self._owed_leaves.get(b) for b in rekey}
            for bucket in rekey:
                self._verify(bucket, self._db)
            before = {bucket: self._bucket_keys[bucket] for bucket in rekey}
            fresh = {bucket: before[bucket].rotated(leaves[bucket]) for bucket in rekey}
            before_master = self._master
            # Seal under the new keys from here on; open under either until the commit.
            self._master = [new, *before_master]
            self._keys_before.update(before)
            self._bucket_keys.update(fresh)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for bucket in rekey:
                    keys = fresh[bucket]
                    whole = keys.form == BucketKeys.DERIVED  # a new seed: every leaf is new
                    self._reseal(bucket, None if whole else leaves[bucket], before[bucket], keys)
                self._write_leaf_keys(fresh)
                self._write_key_groups(new, self._bucket_keys, self._bucket_keys)
                owed_after = self.rotation_owed - set(rekey)
                self._write_current_meta(self.catching_up, owed=owed_after)
                self._db.execute(
                    "INSERT OR REPLACE INTO row_key (id, generation) VALUES (0, ?)", (generation,)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                # Counted before the new keys go: a read that took them, and opened
                # nothing with them, then reads again (as after a commit, below).
                self._rotations += 1
                self._master = before_master
                self._bucket_keys.update(before)
                for bucket in rekey:
                    del self._keys_before[bucket]
                raise
            # Counted before the old keys go: a read that opened nothing then reads again.
            self._rotations += 1
            self._master = [new]
            for bucket in rekey:
                del self._keys_before[bucket]
                self._owed_leaves.pop(bucket, None)
                # Nor kept ready in the cache: the node holds no key it replaced.
                for leaf in range(LEAVES):
                    old = before[bucket].leaf_key(leaf)
                    if old != fresh[bucket].leaf_key(leaf):
                        self._aeads.pop(old, None)
            self.rotation_owed = owed_after
            self.generation = generation
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _write_meta(
        self,
        counter: int,
        last_ver: int,
        max_round: int,
        top: int,
        store_id: bytes,
        marks: dict[int, Mark],
        catching_up: bool,
        *,
        suspect_through: int | None = None,
        owed: set[int] | None = None,
        began_empty: bool | None = None,
        catch_up_from: int | None = None,
    ) -> None:
        """The counter row; `suspect_through`, `owed` (rotations owed), `began_empty` and
        `catch_up_from` as they stand unless given."""
        suspect = self.suspect_through if suspect_through is None else suspect_through
        owed = self.rotation_owed if owed is None else owed
        empty = self.began_empty if began_empty is None else began_empty
        since = self.catch_up_from if catch_up_from is None else catch_up_from
        plain = bytearray(struct.pack(">QQQ", counter, last_ver, max_round))
        plain += top.to_bytes(32, "big") + store_id + struct.pack(">H", len(marks))
        for peer, mark in sorted(marks.items()):
            plain += struct.pack(">HB", peer, len(mark.store_id)) + mark.store_id
            plain += _u64(mark.upto)
        plain += _u64(suspect)
        plain.append(_CATCHING_UP_FROM_EMPTY if catching_up and empty else int(catching_up))
        plain += struct.pack(f">H{len(owed)}H", len(owed), *sorted(owed))
        plain += _u64(since if catching_up else 0)
        plain.append(1)  # `top` sums the bucket rows with their digests (format 5)
        sealed = self._seal(self._master[0], bytes(plain), self._meta_aad())
        self._db.execute("INSERT OR REPLACE INTO meta (id, row) VALUES (0, ?)", (sealed,))

    def _write_current_meta(
        self,
        catching_up: bool,
        owed: set[int] | None = None,
        began_empty: bool | None = None,
        catch_up_from: int | None = None,
    ) -> None:
        """The counter row as it stands, with `catching_up` (and `owed`, `began_empty` and
        `catch_up_from`, if given)."""
        self._write_meta(
            self.counter,
            self._last_ver,
            self._max_round,
            self._top,
            self.store_id,
            self._marks,
            catching_up,
            owed=owed,
            began_empty=began_empty,
            catch_up_from=catch_up_from,
        )

    def raise_counter(self, floor: int) -> None:
        """The store is not known to hold all this node wrote (behind the token's counter
        `floor`: rolled back or wiped; or no token counter to judge by): in one write, so
        no crash can leave a part of it, move the counter to two past `floor` (or past its
        own, if higher), begin a catch-up, distrust every share row now held
        (`distrust_share_rows`), take a new store id, and move the versions past every one
        a lost history can have used.

        Why two past: a store one ahead of the token is taken as intact (its write landed,
        the token's not). Raised only to `floor`, this history's next write would carry
        the counter of such a copy of the lost history; put back once the token counted
        that write, the copy would match the token and pass as intact.

        Why the versions: a row is sealed and counted in its bucket's digest under its
        (name, version) only. Had this history written a row again at a version a lost
        one had used, a copy of the lost row put back in its place would match both and
        pass for this history's own (with a count from before the rollback). Every state
        keeps its versions at or below `counter * ROWS_PER_SAVE` (a save writes at most
        that many rows and counts one; this keeps it), and every lost history's counter is
        at most `floor + 1`, so versions above `(floor + 2) * ROWS_PER_SAVE` are new."""
        if floor < self.counter:
            floor = self.counter
        # Past every store a lost history can hold (at most one ahead of the token), so no
        # copy of one ever matches the token again; versions <= counter * ROWS_PER_SAVE
        # in every state, so the lost histories' versions are all below this one's.
        counter = floor + 2
        with self._lock:
            store_id = os.urandom(16)
            last_ver = max(self._last_ver, counter * ROWS_PER_SAVE)
            suspect = max(self.suspect_through, self._last_ver)
            began_empty, since = self._catch_up_start(last_ver)
            self._write_meta(
                counter,
                last_ver,
                self._max_round,
                self._top,
                store_id,
                self._marks,
                True,
                suspect_through=suspect,
                began_empty=began_empty,
                catch_up_from=since,
            )
            self.counter, self.store_id, self._last_ver = counter, store_id, last_ver
            self.suspect_through, self.catching_up = suspect, True
            self.began_empty, self.catch_up_from = began_empty, since

    def mark_catching_up(self) -> None:
        """The node starts catching up: recorded before it serves, so a node stopped
        before it finishes catches up again at its next start, although its counter then
        matches the token's (`save(caught_up=True)` clears it)."""
        with self._lock:
            began_empty, since = self._catch_up_start(self._last_ver)
            self._write_current_meta(catching_up=True, began_empty=began_empty, catch_up_from=since)
            self.catching_up, self.began_empty, self.catch_up_from = True, began_empty, since

    def _catch_up_start(self, last_ver: int) -> tuple[bool, int]:
        """(`began_empty`, `catch_up_from`) for a catch-up beginning now, its versions
        going on after `last_ver`; a catch-up still under way keeps where it began. It
        began empty if the store has no record, or if every record in it is a copy of
        the catch-up still under way, which began empty (a node stopped during a wiped
        store's catch-up: what it copied before is no value of its own, and checking the
        next copies against it refused the chosen value against a sibling)."""
        if self.catching_up:
            return self._max_round == 0 or self.began_empty, self.catch_up_from
        return self._max_round == 0, last_ver

    def distrust_share_rows(self) -> None:
        """Every share row now in the store may hold a rolled-back count (the store was
        found behind the token's counter): recorded in the counter row, so a clean
        restart later does not trust them again. Rows written from here on are newer."""
        with self._lock:
            self.suspect_through = max(self.suspect_through, self._last_ver)
            self._write_current_meta(self.catching_up)

    def share_suspect(self, key: bytes) -> bool:
        """Whether entry `key`'s share row was last written at or before the last detected
        rollback (`distrust_share_rows`); False for no row."""
        if not self.suspect_through:
            return False
        row = self._checked_row(self.name_of(SHARE_PREFIX + key))
        return row is not None and row[0] <= self.suspect_through

    def close(self) -> None:
        self._closing = True  # a background verify_all stops at its next bucket
        for reader in self._reader_connections:
            reader.close()
        self._db.close()


class LeafSums:
    """A checked bucket's sum per leaf (Σ HMAC(digest key, name || u64(ver)) over the
    leaf's rows, mod 2^256), for the leaves that hold rows: 33-byte records (u8 leaf ||
    sum), sorted by leaf, looked up by bisection. At most 256 records a bucket (8.4 KB),
    so at most 34 MB for every bucket of a store, whatever its number of entries."""

    __slots__ = ("_blob",)
    _SIZE = 1 + 32

    def __init__(self, sums: Mapping[int, int]) -> None:
        records = sorted((leaf, total) for leaf, total in sums.items() if total)
        self._blob = b"".join(bytes([leaf]) + total.to_bytes(32, "big") for leaf, total in records)

    def __len__(self) -> int:
        return len(self._blob) // self._SIZE

    def get(self, leaf: int) -> int:
        """The leaf's sum (0: the leaf holds no row)."""
        blob, size = self._blob, self._SIZE
        low, high = 0, len(self)
        while low < high:
            middle = (low + high) // 2
            found = blob[middle * size]
            if found < leaf:
                low = middle + 1
            elif found > leaf:
                high = middle
            else:
                return int.from_bytes(blob[middle * size + 1 : (middle + 1) * size], "big")
        return 0

    def sums(self) -> dict[int, int]:
        blob, size = self._blob, self._SIZE
        return {
            blob[at]: int.from_bytes(blob[at + 1 : at + size], "big")
            for at in range(0, len(blob), size)
        }

    def updated(self, deltas: Mapping[int, int]) -> LeafSums:
        """A new one: these sums with `deltas` (leaf -> amount, mod 2^256) added."""
        sums = self.sums()
        for leaf, delta in deltas.items():
            sums[leaf] = (sums.get(leaf, 0) + delta) % _MOD
        return LeafSums(sums)


class StoreRecords:
    """The replica's `RecordSource` in the node: records put and not yet saved, then a
    bounded cache of recently used records (least recently used goes first), then the
    store. The node's memory stays flat however many entries the store holds."""

    def __init__(self, store: NodeStore, capacity: int = CACHED_RECORDS) -> None:
        self._store = store
        self._capacity = capacity
        self._unsaved: dict[bytes, AcceptorRecord] = {}
        self._cache: OrderedDict[bytes, AcceptorRecord | None] = OrderedDict()
        self._marks: dict[int, Mark] = {}

    def get(self, key: bytes) -> AcceptorRecord | None:
        _not_a_share_row(key)
        if key in self._unsaved:
            return self._unsaved[key]
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        record = self._store.get(key)
        self._remember(key, record)
        return record

    def put(self, record: AcceptorRecord) -> None:
        _not_a_share_row(record.key)
        self._unsaved[record.key] = record

    def saved(self, records: Iterable[AcceptorRecord]) -> None:
        """These records are durable: from now on the store (and the cache) answer."""
        for record in records:
            if self._unsaved.get(record.key) is record:
                del self._unsaved[record.key]
            self._remember(record.key, record)

    def _remember(self, key: bytes, record: AcceptorRecord | None) -> None:
        self._cache[key] = record
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def max_round(self) -> int:
        return max([self._store.max_round(), *(r.promised_round for r in self._unsaved.values())])

    def mark(self, peer: int) -> Mark:
        return self._marks.get(peer) or self._store.marks().get(peer, Mark())

    def set_mark(self, peer: int, mark: Mark) -> None:
        self._marks[peer] = mark

    def take_marks(self) -> dict[int, Mark]:
        """The marks set since the last call, to be saved with the records put before
        them (the shell calls this as it starts writing a batch)."""
        marks, self._marks = self._marks, {}
        return marks

    def changed_since(self, store_id: bytes, since: int, limit: int) -> Changes:
        return self._store.changed_since(store_id, since, limit)

    def catch_up_began_empty(self) -> bool:
        return self._store.catching_up and self._store.began_empty

    def copied_before_start(self, key: bytes) -> bool:
        return self._store.copied_before_start(key)


def _not_a_share_row(key: bytes) -> None:
    """The replica's records and the node's share rows share one table; the replica must
    never read or write a share row (it would send the node's key share to a peer in a
    Promise, or overwrite it). Peers' keys are checked before they reach the replica
    (`Replica`'s key check); this stops a bug at the store's door."""
    if key.startswith(SHARE_PREFIX):
        raise ValueError("a share row's key reached the replica's records")


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pack_record(record: AcceptorRecord) -> bytes:
    """A row's plaintext (module docstring): about 35 bytes less than the wire codec's
    fixed-width integers, on every entry."""
    numbers = (
        record.promised_round,
        record.promised_node,
        record.accepted_round,
        record.accepted_node,
        len(record.key),
    )
    return b"".join(map(_uvarint, numbers)) + record.key + record.value


def _unpack_record(plain: bytes) -> AcceptorRecord:
    numbers = []
    at = 0
    for _ in range(5):
        n = shift = 0
        while True:
            if at >= len(plain) or shift > 63:
                raise ValueError("truncated number")
            byte = plain[at]
            at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        numbers.append(n)
    promised_round, promised_node, accepted_round, accepted_node, key_length = numbers
    if at + key_length > len(plain):
        raise ValueError("truncated key")
    key = plain[at : at + key_length]
    value = plain[at + key_length :]
    return AcceptorRecord(key, promised_round, promised_node, accepted_round, accepted_node, value)


def _not_live(record: AcceptorRecord) -> bool:
    """Whether an entry's record (not a share row: `_erases` judges those by their share)
    holds an entry that was destroyed or deleted."""
    try:
        payload = payload_of(record.value)
    except InvalidInput:
        return False
    # A ThresholdState's encoding starts with its tag and its status (u64): only those are
    # read, a full decode would cost more than the rest of a save.
    if len(payload) < 9 or payload[0] != ThresholdState.TAG:
        return False
    return int.from_bytes(payload[1:9], "big") != EntryStatus.LIVE


#: The first byte of a share row whose M is its entry value's (a NodeShare starts with 44).
_NAMES_MANIFEST = b"\x00"


def _stored_share(value: bytes) -> tuple[NodeShare, bytes | None]:
    """A share row's value as stored: the row (its manifest empty when named by hash) and
    the SHA-256 of the M it names, or None when it holds M in full."""
    try:
        if value[:1] == _NAMES_MANIFEST and len(value) > 33:
            return NodeShare.from_bytes(value[33:]), value[1:33]
        return NodeShare.from_bytes(value), None
    except InvalidInput:
        raise StoreCorrupted("node store share row is malformed", hint=_CORRUPT_HINT) from None


def _manifest_of(value: bytes) -> bytes:
    """The M a record's value holds: b"" for none (a tombstone, an empty value, another
    kind of payload)."""
    try:
        payload = payload_of(value)
        if payload[:1] != bytes((ThresholdState.TAG,)):
            return b""
        return ThresholdState.from_bytes(payload).manifest
    except InvalidInput:
        return b""


def _share_to_store(share: AcceptorRecord, value: AcceptorRecord | None) -> AcceptorRecord:
    """`share` (a share row with M in full) as it is stored beside `value`, its entry's
    value after the same save: M named by hash where the row holds a share and `value`
    holds that same M. An erased row keeps M in full, so that a value moving on never
    rewrites an erased row (which would count as another erasure)."""
    try:
        row = NodeShare.from_bytes(share.value)
    except InvalidInput:
        return share  # not ours to judge here: reading it refuses it
    if not row.share or not row.manifest or value is None:
        return share
    if _manifest_of(value.value) != row.manifest:
        return share
    named = _NAMES_MANIFEST + hashlib.sha256(row.manifest).digest()
    return dataclasses.replace(share, value=named + row.with_(manifest=b"").to_bytes())
