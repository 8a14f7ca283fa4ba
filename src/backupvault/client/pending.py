"""Deliveries the client still owes the fleet (docs/threshold.md, "Finishing later"): the
shares of a degraded registration or password change, and an owner's delete that some
nodes did not acknowledge. Kept in a small file next to the client's config
(docs/format.md, "Pending deliveries") and sent again at the device's next contact with
the fleet, until every node has acknowledged or the entry's version moved on.

Shares are never kept in the clear: each is HPKE-sealed to the one node it is for
(`crypto.seal.seal_share`), so it is sent at any contact, no password needed, and only
that node can open it; a copy of this file together with c < t hostile nodes yields
their own shares, which they were dealt anyway, and nothing more. Files of earlier
builds kept every share under a key derived from the entry's export_key instead; such
records are still delivered, after a successful recovery. The delete statement is
public (the owner's signature) and is kept as it is.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from backupvault.client.errors import VaultError
from backupvault.crypto import manifest as manifests
from backupvault.crypto import threshold
from backupvault.crypto.seal import SEALED_SHARE_LEN, NodePublicKey, seal_share
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.files import locked, replace_file
from backupvault.protocol import EntryStatus, Op, check_name

FORMAT = "backupvault pending deliveries v2"
#: Files of earlier builds: every record's shares wrapped under the export_key.
FORMAT_V1 = "backupvault pending deliveries v1"
_WRAP_INFO = b"backupvault/v1 pending share"
_NONCE_LEN = 12
#: A wrapped share (v1): nonce, AES-256-GCM of (index u8 ‖ k_i 32), tag.
_WRAPPED_LEN = _NONCE_LEN + 33 + 16
_SEALED_LENS = frozenset(SEALED_SHARE_LEN.values())
#: How a record's shares are kept: sealed to each node, or wrapped under the export_key.
SEALED_TO_NODES = "node-key"
WRAPPED = "export-key"
_SIGNATURE_LEN = 64  # Ed25519
#: The operations a pending record re-sends.
OPS = (Op.REGISTER_SHARE, Op.DELETE_SHARE)
#: Whose deliveries a record is: fleet id, account, entry, epoch, version.
Key = tuple[bytes, str, str, int, int]


class Due(enum.Enum):
    """What finishing does with a record, given what the entry is now (`Pending.due`)."""

    SEND = "send"  # sent to the nodes it names, when one of them is in reach
    HELD_BACK = "held back"  # shares of a version not in effect (yet): kept, not sent
    DROP = "drop"  # the entry moved on: forgotten, never sent


class PendingFileDamaged(VaultError):
    """The pending-deliveries file does not parse. It is left as it is: the vault entry
    itself does not depend on it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"the pending-deliveries file {path} is damaged ({why}); it was left as it is",
            hint=f"your key in the vault is not affected. Move the file away (mv {path}"
            f" {path}.bad) to go on; the deliveries it held are then not finished, and"
            " `backupvault vault status` names the nodes without a share (a password change"
            " deals fresh shares to every node)",
        )


def _wrap_key(export_key: bytes) -> bytes:
    return HKDFExpand(hashes.SHA512(), 32, _WRAP_INFO).derive(export_key)


def _aad(fleet_id: bytes, account: str, entry: str, version: int, index: int, m: bytes) -> bytes:
    names = b"".join(bytes([len(n)]) + n for n in (account.encode(), entry.encode()))
    return (
        _WRAP_INFO
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + names
        + struct.pack(">QB", version, index)
        + hashlib.sha256(m).digest()
    )


@dataclass(frozen=True)
class Pending:
    """What one entry (fleet, account, entry) is still owed, for one manifest version.

    `op` register-share: `shares[i]` is node i's share (index ‖ k_i), HPKE-sealed to
    node i (`sealing` SEALED_TO_NODES: sent in a deliver-share at any contact) or, in
    records of earlier builds, wrapped under the export_key (WRAPPED: sent as a
    register-share after a recovery); either way taken as a register-share of M (of a
    new entry or of a password change alike); `authorization` empty, `counter` 0. `op`
    delete-share: `authorization` and `counter` are the owner's DELETE statement; no
    shares. `nodes`: the nodes that have not acknowledged yet."""

    fleet_id: bytes
    account: str
    entry: str
    version: int
    op: Op
    manifest: bytes = field(repr=False)
    authorization: bytes
    counter: int
    nodes: tuple[int, ...]
    shares: tuple[bytes, ...] = field(default=(), repr=False)
    sealing: str = SEALED_TO_NODES

    @property
    def needs_export_key(self) -> bool:
        """Whether delivering it needs a recovery first (shares of an earlier build)."""
        return self.op is Op.REGISTER_SHARE and self.sealing == WRAPPED

    @functools.cached_property
    def epoch(self) -> int:
        """The node-set epoch the record's manifest was dealt for."""
        return manifests.Manifest.from_bytes(self.manifest).epoch

    @property
    def key(self) -> Key:
        """An entry's deliveries are kept per epoch and version. Per epoch: while a
        rotation moves the key (registered on the new epoch, then deleted on the old),
        each epoch may be owed something, and one record per entry let the old epoch's
        erasure push out the new epoch's shares (or drop them once confirmed). Per
        version: a change's shares are kept before its commit goes out, which may not
        land; they pushed out the shares the version still in effect was owed."""
        return self.fleet_id, self.account, self.entry, self.epoch, self.version

    def due(self, live: manifests.Manifest | None, status: EntryStatus, version: int) -> Due:
        """What to do with this record now. `live`: the agreed manifest (None when the
        entry is not live: then `status` and `version` say what it is). A share delivery
        is only ever sent for the live version's own manifest; an erasure while the entry
        is still the version it deletes. Kept apart from the sending so the simulator's
        clients follow the same rules (sim/clients.py)."""
        current = live.version if live is not None else version
        if self.op is Op.DELETE_SHARE:
            # Sent while the entry is the version it deletes: committed (empty now, some
            # nodes not yet told) or, for a delete kept before it went out, not yet.
            not_yet = live is not None and live.to_bytes() == self.manifest
            committed = live is None and status == EntryStatus.EMPTY
            return Due.SEND if (not_yet or committed) and current == self.version else Due.DROP
        if current < self.version:
            # A registration or change whose commit went out unconfirmed (its shares are
            # kept first), which may still land: owed to no node while not in effect.
            return Due.HELD_BACK
        if live is None or current > self.version or live.to_bytes() != self.manifest:
            return Due.DROP  # moved on, or replaced
        return Due.SEND

    def without(self, acknowledged: set[int]) -> Pending | None:
        left = tuple(n for n in self.nodes if n not in acknowledged)
        return replace(self, nodes=left) if left else None

    @classmethod
    def of_shares(
        cls,
        *,
        fleet_id: bytes,
        account: str,
        entry: str,
        manifest: bytes,
        version: int,
        shares: tuple[threshold.KeyShare, ...],
        node_keys: Sequence[NodePublicKey],
        nodes: tuple[int, ...],
    ) -> Pending:
        """Every node's share, each sealed to its own node (all of them: a late delivery
        is the original one again, which the nodes that hold theirs acknowledge a second
        time)."""
        if len(shares) != len(node_keys):
            raise InvalidInput("one share per node")
        digest = hashlib.sha256(manifest).digest()
        sealed = tuple(
            seal_share(
                node_keys[share.index - 1], fleet_id, share.index - 1, digest, share.to_bytes()
            )
            for share in shares
        )
        return cls(
            fleet_id,
            account,
            entry,
            version,
            Op.REGISTER_SHARE,
            manifest,
            b"",
            0,
            nodes,
            sealed,
        )

    def unwrap(self, export_key: bytes) -> list[bytes]:
        """The shares (index ‖ k_i) of a WRAPPED record, in the clear only in memory for
        the delivery."""
        if self.sealing != WRAPPED:
            raise InvalidInput("these shares are sealed to their nodes, not wrapped")
        key = AESGCM(_wrap_key(export_key))
        out = []
        for slot, wrapped in enumerate(self.shares):
            aad = _aad(
                self.fleet_id, self.account, self.entry, self.version, slot + 1, self.manifest
            )
            try:
                out.append(key.decrypt(wrapped[:_NONCE_LEN], wrapped[_NONCE_LEN:], aad))
            except InvalidTag:
                raise AuthenticationFailed(
                    "a pending share does not open under this entry's key"
                ) from None
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet_id": self.fleet_id.hex(),
            "account": self.account,
            "entry": self.entry,
            "version": self.version,
            "op": str(self.op),
            "manifest": self.manifest.hex(),
            "authorization": self.authorization.hex(),
            "counter": self.counter,
            "nodes": list(self.nodes),
            "shares": [s.hex() for s in self.shares],
            "sealing": self.sealing,
        }

    @classmethod
    def from_json(cls, data: Any, file_format: str = FORMAT) -> Pending:
        """A record of a v2 file, or of a v1 one (`file_format`: whose shares are all
        WRAPPED)."""
        if not isinstance(data, dict):
            raise ValueError("a record is not an object")
        sealing = WRAPPED if file_format == FORMAT_V1 else data["sealing"]
        if sealing not in (SEALED_TO_NODES, WRAPPED):
            raise ValueError(f"unknown sealing {sealing!r}")
        op = Op(str(data["op"]))
        if op not in OPS:
            raise ValueError(f"unknown operation {op}")
        version, counter = data["version"], data["counter"]
        nodes = data["nodes"]
        if not (isinstance(version, int) and isinstance(counter, int) and isinstance(nodes, list)):
            raise ValueError("version, counter and nodes have the wrong type")
        if not all(isinstance(n, int) and 0 <= n < threshold.MAX_NODES for n in nodes):
            raise ValueError("a node index is out of range")
        shares = tuple(bytes.fromhex(str(s)) for s in data["shares"])
        if (op is Op.DELETE_SHARE) == bool(shares):
            raise ValueError("shares belong to a share delivery, and only to one")
        record = cls(
            bytes.fromhex(str(data["fleet_id"])),
            check_name("account", str(data["account"])),
            check_name("entry", str(data["entry"])),
            version,
            op,
            bytes.fromhex(str(data["manifest"])),
            bytes.fromhex(str(data["authorization"])),
            counter,
            tuple(nodes),
            shares,
            sealing,
        )
        record._check_against_manifest()
        return record

    def _check_against_manifest(self) -> None:
        """The record agrees with its own manifest (ValueError if not): the same fleet,
        account, entry and version, nodes of that fleet, and one wrapped share per node."""
        try:
            m = manifests.Manifest.from_bytes(self.manifest)
        except InvalidInput as err:
            raise ValueError(f"its manifest does not decode: {err.message}") from None
        if (m.fleet_id, m.account, m.entry, m.version) != (
            self.fleet_id,
            self.account,
            self.entry,
            self.version,
        ):
            raise ValueError("a record's fleet, account, entry or version is not its manifest's")
        if not all(n < m.nodes for n in self.nodes):
            raise ValueError(f"a node index is not in the manifest's fleet of {m.nodes}")
        lengths = {_WRAPPED_LEN} if self.sealing == WRAPPED else _SEALED_LENS
        if self.op is Op.REGISTER_SHARE and (
            len(self.shares) != m.nodes or any(len(s) not in lengths for s in self.shares)
        ):
            raise ValueError("a share delivery holds one sealed or wrapped share per node")
        if self.op is Op.REGISTER_SHARE and (self.authorization or self.counter):
            raise ValueError("a share delivery carries no owner statement")
        if self.op is Op.DELETE_SHARE and (
            len(self.authorization) != _SIGNATURE_LEN or not 0 <= self.counter < 2**64
        ):
            raise ValueError("an erasure carries the owner's signature and its counter")


class PendingStore:
    """The device's pending deliveries: in the file at `path` (written whole: a fresh
    file, fsync, rename, then the folder synced), or only in memory with None.

    Each change reads, changes and saves the file under its lock (`files.locked`), so two
    commands of this device at once (a cron backup and a `vault finish`) never save over
    each other: one that read the file before the other saved would write back what it
    read, and a delivery the other had just kept (or an acknowledgement it had just
    recorded) was lost."""

    #: How long a change waits for another process of this device to finish with the file.
    LOCK_TIMEOUT = 30.0

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: dict[Key, Pending] = {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """This process's lock, then (with a file) the file's."""
        with self._lock:
            if self.path is None:
                yield
                return
            with locked(self.path, timeout=self.LOCK_TIMEOUT):
                yield

    def _load(self) -> dict[Key, Pending]:
        if self.path is None:
            return dict(self._memory)
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            raise PendingFileDamaged(self.path, str(err)) from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_V1):
                raise ValueError(f"not a {FORMAT!r} file")
            records = [Pending.from_json(r, data["format"]) for r in data["records"]]
        except (ValueError, KeyError, TypeError, InvalidInput) as err:
            # InvalidInput: a name the wire does not take (check_name), among others;
            # uncaught, it stopped every recovery with a message naming no file.
            raise PendingFileDamaged(self.path, str(err) or type(err).__name__) from None
        return {r.key: r for r in records}

    def _save(self, records: dict[Key, Pending]) -> None:
        if self.path is None:
            self._memory = dict(records)
            return
        if records:  # replace_file syncs the folder too
            body = {"format": FORMAT, "records": [r.to_json() for r in records.values()]}
            replace_file(self.path, json.dumps(body, indent=1).encode())
            return
        self.path.unlink(missing_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def owed(self, fleet_id: bytes, account: str, entry: str, epoch: int) -> tuple[Pending, ...]:
        """What the entry is owed on `epoch`, by rising version."""
        with self._lock:
            found = [
                r for k, r in self._load().items() if k[:4] == (fleet_id, account, entry, epoch)
            ]
        return tuple(sorted(found, key=lambda r: r.version))

    def epochs_owed(self, fleet_id: bytes, account: str, entry: str) -> frozenset[int]:
        """The epochs on which the entry is owed something."""
        with self._lock:
            return frozenset(k[3] for k in self._load() if k[:3] == (fleet_id, account, entry))

    def put(self, record: Pending) -> None:
        """Keep `record` in place of whatever its version was owed (the deliveries of
        another version are left: `ThresholdVault.finish` drops them once the entry moved
        past them)."""
        with self._changing():
            records = self._load()
            records[record.key] = record
            self._save(records)

    def drop(self, key: Key) -> None:
        """Forget the deliveries of `key`."""
        with self._changing():
            records = self._load()
            if records.pop(key, None) is not None:
                self._save(records)

    def drop_epoch(self, fleet_id: bytes, account: str, entry: str, epoch: int) -> None:
        """Forget everything the entry is owed on `epoch` (retired: its nodes are gone)."""
        with self._changing():
            records = self._load()
            left = {k: r for k, r in records.items() if k[:4] != (fleet_id, account, entry, epoch)}
            if len(left) != len(records):
                self._save(left)

    def acknowledged(self, record: Pending, nodes: set[int]) -> Pending | None:
        """These nodes acknowledged `record`'s delivery: what is left of it, kept."""
        left = record.without(nodes)
        with self._changing():
            records = self._load()
            if records.get(record.key) != record:
                return records.get(record.key)  # replaced meanwhile: leave it
            if left is None:
                del records[record.key]
            else:
                records[record.key] = left
            self._save(records)
        return left
