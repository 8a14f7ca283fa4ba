"""The witness: checks operator-signed deployment records, logs them, and vouches for them.

`Witness.submit(bytes)` is the whole protocol: parse an OperatorSignedRecord, check it
against the policy, append it to the log, and answer with a WitnessReceipt (cosignature,
inclusion proof, signed checkpoint). The witness takes its store and keys as arguments and
does no network I/O; `witness_http` is the HTTP shell around it.

Policy, in order:
1. the record parses and every field is valid (Malformed);
2. the operator key: if `operators` names the fleet id, the record must carry that key
   (UnknownOperatorKey). Otherwise, with `pin_first_seen`, the key of the first record
   accepted for the fleet id is pinned in the store and every later record must carry it;
   without it the fleet is refused (UnknownFleet);
3. the operator signature verifies (OperatorSignatureInvalid);
4. the measurement is in `allowed_measurements`, when that is set (MeasurementNotAllowed);
5. the epoch is strictly greater than the last one logged for the fleet id
   (EpochReplayed). Submitting the exact same signed record again is not an error: it
   answers with the receipt first given for that leaf, byte for byte (a resubmission
   never refreshes anything: whether a record is still a fleet's current one, and how
   recently, is what the witness's signed fleet heads say; see `head`);
6. the record retires at least the epochs the last one logged for the fleet id retired
   (`retired_below` does not go down: RetirementWithdrawn). A retired epoch's nodes may
   be anyone's by now; a record that listed it again would send clients back to them.
"""

from __future__ import annotations

import ipaddress
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.config_fields import Fields, check_fields
from backupvault.crypto.ed25519 import check_public_key
from backupvault.errors import InvalidInput
from backupvault.transparency import merkle
from backupvault.transparency.bundle import WitnessReceipt, cosign
from backupvault.transparency.errors import (
    EpochReplayed,
    Malformed,
    MeasurementNotAllowed,
    NotLogged,
    RetirementWithdrawn,
    UnknownFleet,
)
from backupvault.transparency.head import sign_head
from backupvault.transparency.note import Checkpoint, Signer, Verifier, parse_note
from backupvault.transparency.record import (
    MAX_FLEET_ID,
    MEASUREMENT_LEN,
    OperatorSignedRecord,
    raw_public_key,
)
from backupvault.transparency.witness_store import WitnessStore

MAX_LEAVES_PAGE = 256
#: The most leaf bytes one page carries (at least one leaf, whatever its size). A
#: `pin_first_seen` witness logs anyone's records, up to about 850 KB each: 256 of them
#: made one free request build an answer of hundreds of MB (review s48).
MAX_LEAVES_PAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class WitnessPolicy:
    """Which operators a witness vouches for, and which firmware it accepts."""

    #: fleet id -> the raw 32-byte Ed25519 operator key accepted for it
    operators: Mapping[bytes, bytes] = field(default_factory=dict)
    pin_first_seen: bool = False
    #: None accepts any measurement
    allowed_measurements: frozenset[bytes] | None = None


class Witness:
    """One witness log. Thread-safe: submissions are serialized."""

    def __init__(self, signer: Signer, store: WitnessStore, policy: WitnessPolicy) -> None:
        self.signer = signer
        self.store = store
        self.policy = policy
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.signer.name

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    # --- submissions -----------------------------------------------------------------------

    def submit(self, data: bytes) -> WitnessReceipt:
        signed = OperatorSignedRecord.from_bytes(data)
        leaf = signed.to_bytes()
        if leaf != bytes(data):
            raise Malformed("the signed record is not canonically encoded")
        record = signed.deployment()
        with self._lock:
            configured = self.policy.operators.get(record.fleet_id)
            state = self.store.fleet(record.fleet_id)
            if configured is not None:
                expected = configured
            elif state is not None and self.policy.pin_first_seen:
                expected = state.operator_key
            elif self.policy.pin_first_seen:
                expected = signed.operator_public_key
            else:
                raise UnknownFleet(
                    f"this witness does not vouch for fleet {record.fleet_id.hex()}",
                    hint="ask the witness to add the fleet id and its operator key",
                )
            signed.verify(expected)
            allowed = self.policy.allowed_measurements
            if allowed is not None and record.measurement not in allowed:
                raise MeasurementNotAllowed(
                    f"firmware measurement {record.measurement.hex()} is not on the allow-list"
                )
            existing = self.store.index_of(merkle.leaf_hash(leaf))
            if existing is not None:
                first = self.store.receipt(existing)
                if first is not None:
                    return WitnessReceipt.from_bytes(first)
                return self._receipt(existing, leaf)
            if state is not None and record.epoch <= state.last_epoch:
                raise EpochReplayed(
                    f"fleet {record.fleet_id.hex()} is at epoch {state.last_epoch}; a new record"
                    f" needs a larger epoch than that, not {record.epoch}"
                )
            retired = 0 if state is None else self._retired_below(state.last_index)
            if record.retired_below < retired:
                raise RetirementWithdrawn(
                    f"fleet {record.fleet_id.hex()} retired its epochs below {retired} at epoch"
                    f" {state.last_epoch if state else 0}; this record retires only those below"
                    f" {record.retired_below}",
                    hint=f"a retired epoch stays retired: deploy with --retire-below {retired}"
                    " or higher",
                )
            index = self.store.append(leaf, record.fleet_id, expected, record.epoch)
            return self._receipt(index, leaf)

    def _retired_below(self, index: int) -> int:
        """What the record logged at `index` retires; 0 for one of an older version (a
        version 2 record, logged before records could retire epochs, no longer parses)."""
        try:
            leaf = self.store.leaves(index, index + 1)[0]
            return OperatorSignedRecord.from_bytes(leaf).deployment().retired_below
        except Malformed:
            return 0

    def _receipt(self, index: int, leaf: bytes) -> WitnessReceipt:
        note, checkpoint = self._current_checkpoint()
        receipt = WitnessReceipt(
            leaf_index=index,
            tree_size=checkpoint.size,
            proof=b"".join(self.store.inclusion_proof(index, checkpoint.size)),
            checkpoint=note,
            cosignature=cosign(self.signer.private_key, self.name, leaf),
        )
        self.store.save_receipt(index, receipt.to_bytes())
        return receipt

    # --- checkpoints and proofs --------------------------------------------------------------

    def _current_checkpoint(self) -> tuple[str, Checkpoint]:
        size = self.store.size
        latest = self.store.latest_checkpoint()
        if latest is not None and latest[0] == size:
            note = latest[1]
            checkpoint = Checkpoint.from_text(parse_note(note)[0])
        else:
            checkpoint = Checkpoint(self.name, size, self.store.root(size))
            note = checkpoint.sign(self.signer)
            self.store.save_checkpoint(checkpoint.size, checkpoint.root_hash, note)
        # Durably, before the checkpoint leaves: a restored database is then refused.
        self.store.advance_head(checkpoint.size)
        return note, checkpoint

    def checkpoint(self) -> str:
        """The signed checkpoint of the whole log (a C2SP signed note)."""
        with self._lock:
            return self._current_checkpoint()[0]

    def head(self, fleet_id: bytes, now: int, nonce: bytes = b"") -> str:
        """The fleet's head (transparency/head.py), signed now: its latest record in the
        current tree, answering the client's `nonce` if it sent one. UnknownFleet when the
        log holds no record of the fleet."""
        with self._lock:
            state = self.store.fleet(fleet_id)
            if state is None:
                raise UnknownFleet(f"this witness has logged no record of fleet {fleet_id.hex()}")
            _, checkpoint = self._current_checkpoint()
            leaf_hash = self.store.leaf_hash(state.last_index)
            return sign_head(
                self.signer,
                checkpoint.size,
                checkpoint.root_hash,
                fleet_id,
                state.last_epoch,
                state.last_index,
                leaf_hash,
                now,
                nonce,
            )

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.store.size:
            raise Malformed(f"the log has {self.store.size} entries; no tree of size {size}")

    def consistency(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        if not 0 <= old <= new:
            raise Malformed("a consistency proof needs 0 <= old <= new")
        return self.store.consistency_proof(old, new)

    def inclusion(self, index: int, size: int) -> tuple[bytes, list[bytes]]:
        """(leaf hash, proof) for leaf `index` in the tree of `size` leaves."""
        self._check_size(size)
        if not 0 <= index < size:
            raise Malformed(f"no leaf {index} in a tree of {size}")
        return self.store.leaf_hash(index), self.store.inclusion_proof(index, size)

    def inclusion_of(self, leaf_hash: bytes, size: int) -> tuple[int, list[bytes]]:
        """(index, proof) of the leaf whose hash is `leaf_hash` in the tree of `size`
        leaves: how a client asks every witness whether it logged an older epoch's record
        (its index differs from log to log)."""
        self._check_size(size)
        index = self.store.index_of(leaf_hash)
        if index is None or index >= size:
            raise NotLogged(f"no leaf with that hash in the tree of {size}")
        return index, self.store.inclusion_proof(index, size)

    def leaves(self, start: int, end: int) -> tuple[int, list[bytes]]:
        """(end, leaves[start:end]); `end` is clamped to the log, to MAX_LEAVES_PAGE leaves
        and to MAX_LEAVES_PAGE_BYTES of them."""
        if not 0 <= start <= end:
            raise Malformed("leaves need 0 <= start <= end")
        end = min(end, self.store.size, start + MAX_LEAVES_PAGE)
        if start > end:
            raise Malformed(f"the log has {self.store.size} entries")
        found = self.store.leaves(start, end, MAX_LEAVES_PAGE_BYTES)
        return start + len(found), found


# --- configuration ---------------------------------------------------------------------------


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise InvalidInput(f"cannot read the witness key {path}: {err.strerror}") from None
    except (ValueError, TypeError):
        raise InvalidInput(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path}: the witness key must be Ed25519")
    return key


def _operator_key(value: Any, base: Path) -> bytes:
    """Hex of the raw 32-byte key, or the path of a PEM public key (as `relay keygen` writes)."""
    text = str(value)
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            pass
        else:
            return check_public_key(raw, f"the operator key of a fleet in {base}")
    path = base / text
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise InvalidInput(f"cannot read the operator key {path}: {err.strerror}") from None
    except ValueError:
        raise InvalidInput(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path}: operator keys are Ed25519")
    return check_public_key(raw_public_key(key), str(path))


#: What witness.toml holds (`listen` is read by `witness serve`).
_WITNESS_FIELDS: Fields = {
    **dict.fromkeys(["name", "listen", "key_file", "database", "head_file"]),
    **dict.fromkeys(["pin_first_seen", "allowed_measurements", "unlimited_addresses"]),
    "trusted_proxies": None,
    "fleets": frozenset({"fleet_id", "operator_key"}),
}
_WITNESS_GUIDE = 'docs/transparency.md ("Configuration and serving") lists every field'


@dataclass(frozen=True)
class WitnessConfig:
    """Everything a witness server needs. `witness.toml` (paths relative to the file):

    name = "witness.example/backupvault"     # key name and checkpoint origin
    key_file = "witness.key"                 # Ed25519 PEM (PKCS#8, unencrypted)
    database = "witness.sqlite"
    head_file = "witness.sqlite.head"         # default <database>.head; keep it off the
                                             # database's backups (witness_store.py)
    pin_first_seen = false
    allowed_measurements = ["<hex>", …]      # optional
    unlimited_addresses = ["10.0.0.5", …]    # optional: relays, not limited per address
    trusted_proxies = ["127.0.0.1"]          # optional: proxies whose X-Forwarded-For counts
    [[fleets]]
    fleet_id = "<hex>"
    operator_key = "<64 hex chars, or a PEM public key file>"
    """

    name: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    database: Path
    policy: WitnessPolicy = field(default_factory=WitnessPolicy)
    head_file: Path | None = None
    #: Networks whose requests the HTTP face does not limit per address (the relays: they
    #: pass on many clients' requests and limit each client themselves).
    unlimited_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Networks of the proxies in front of the witness (a TLS proxy) whose X-Forwarded-For
    #: names the client; from any other address (none by default) the header is ignored,
    #: else a client could name its own address per request, or a relay's.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> WitnessConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise InvalidInput(f"cannot read {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidInput(f"{path} is not valid TOML: {err}") from None
        check_fields(path, "witness config", data, _WITNESS_FIELDS, _WITNESS_GUIDE)
        base = path.parent
        try:
            operators = {}
            for fleet in data.get("fleets", []):
                fleet_id = bytes.fromhex(str(fleet["fleet_id"]))
                if not 1 <= len(fleet_id) <= MAX_FLEET_ID:
                    raise InvalidInput(f"a fleet id is 1 to {MAX_FLEET_ID} bytes, in hex")
                if fleet_id in operators:
                    # The key decides what is logged for the fleet: never by the file's order.
                    raise InvalidInput(
                        f"fleet {fleet_id.hex()} is listed twice in [[fleets]]: keep one table,"
                        " with the operator key its operator uses"
                    )
                operators[fleet_id] = _operator_key(fleet["operator_key"], base)
            allowed = data.get("allowed_measurements")
            measurements = (
                None if allowed is None else frozenset(bytes.fromhex(str(m)) for m in allowed)
            )
            if measurements is not None and any(len(m) != MEASUREMENT_LEN for m in measurements):
                # One cut short matches no record: every submission would be refused.
                raise InvalidInput(
                    f"allowed_measurements are {MEASUREMENT_LEN} bytes each, in hex (as"
                    " `backupvault fleet measure` prints them)"
                )
            networks = {}
            for setting in ("unlimited_addresses", "trusted_proxies"):
                listed = data.get(setting, [])
                if not isinstance(listed, list):
                    raise InvalidInput(f"{setting} is a list of addresses or networks")
                networks[setting] = tuple(
                    ipaddress.ip_network(str(a), strict=False) for a in listed
                )
            pin = data.get("pin_first_seen", False)
            if not isinstance(pin, bool):
                raise InvalidInput("pin_first_seen is true or false")
            return cls(
                name=str(data["name"]),
                signing_key=_load_private(base / str(data["key_file"])),
                database=base / str(data.get("database", "witness.sqlite")),
                policy=WitnessPolicy(operators, pin, measurements),
                head_file=None if "head_file" not in data else base / str(data["head_file"]),
                unlimited_addresses=networks["unlimited_addresses"],
                trusted_proxies=networks["trusted_proxies"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInput(f"witness config {path} is incomplete or invalid: {err}") from None

    def open(self) -> Witness:
        signer = Signer(self.name, self.signing_key)
        store = WitnessStore(
            self.database, self.name, raw_public_key(self.signing_key), self.head_file
        )
        return Witness(signer, store, self.policy)
