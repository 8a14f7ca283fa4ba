"""Which fleet a client talks to: pinned keys, or over-the-air fleet bundles (invariant 7).

**Pinned**: the fleet id, each node's HPKE and signing key and the node-set epoch are in
`client.toml`; the client talks to that fleet and no other.

**OTA** (`trust = "ota"`): the client ships with the operator's Ed25519 key and the
witness's note verifier key, and learns the fleet from the relay's `GET /v1/fleet/bundle`.
It accepts the fleet only if `transparency.verify_bundle` passes (operator signature,
witness cosignature, witness checkpoint, inclusion proof, a checkpoint consistent with the
last one it saw, an epoch not older than the last one it accepted, and an allowed
measurement when it has an allow-list) and if every witness it is configured with (the
bundle's witness at `witness_url`, and any `[[witnesses]]`) answers with a fleet head
(transparency/head.py) that names exactly this record as the fleet's latest, signed at
most `max_bundle_age` seconds ago, on a log that extends the last one seen from that
witness. So a client with no state still refuses a retired epoch, a relay cannot freeze it
on an old bundle, and one witness with the operator cannot show it a fork the other
witnesses did not log. When a witness cannot be reached, the last head it gave (kept in the
state) stands in for it while it is younger than `max_bundle_age`. Ages are measured at the
later of the device's clock and the trusted time in the state (the newest head time, or
clock reading, it accepted), so a clock set back cannot make an old head fresh again.

Only then does it build the VaultClient, so no password-derived message ever goes to a
fleet it has not accepted. What it accepted is kept in a state file (JSON, written
atomically and fsync'ed) only after acceptance, each acceptance read, applied and saved
under the file's lock (`files.locked`), to the file as it is then (another process may
have accepted more meanwhile), and only if what it proved extends the checkpoint and heads
in the file then (else it verifies again: `StateMoved`):

    {"version": 1,
     "fleet_id": "<the fleet this file pins, hex: the first one accepted with it>",
     "checkpoint": "<the newest checkpoint seen from the bundle's witness, a signed note>",
     "heads": {"<witness name>": "<the last fleet head from that witness>"},
     "fleets": {"<fleet id hex>": {"epoch": 2,
                                   "records": {"1": "<OperatorSignedRecord hex>", "2": ...}}},
     "time": <the trusted time, unix seconds>,
     "prefixes": {"<tree size>": "<base64 root>"}}

"prefixes" names the checkpoints of the bundles this client accepted: each was proven a
prefix of "checkpoint" then, and so of every later one (each extends the one before), so a
bundle carrying one needs no consistency proof again. Without it every run asked the bundle
witness for one (through the relay), and that witness out of reach stopped the client at
once, its kept head standing in for nothing (review s61).

A state file keeps one fleet: the first one accepted with it is pinned ("fleet_id"), is the
fleet expected when the config names none, and no other fleet is ever added to the file,
by the client or by `verify-deployment --state` (`pinned_fleet`; a file of an older
version without "fleet_id" pins the one fleet a client accepted there, if there is one).

Rotation: a new epoch is accepted like any bundle. When the account's entry is empty on
the current fleet, `FleetSession.recover_or_migrate` looks for it on older epochs (the
records it accepted before, and the older epochs the relay lists at `/v1/fleet/epochs`,
each verified the same way), reached through the relay's
`/v1/epochs/{epoch}/vault/{entry}/{op}`; it recovers there, registers the same root key
behind the same password on the current fleet, and then deletes the old entry (that delete
is kept and sent again at later runs until it lands: docs/threshold.md, "Per live copy").
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    EpochNotRouted,
    FleetNotTrusted,
    FleetUnavailable,
    NotRegistered,
    RelayUnreachable,
    VaultError,
    one_line,
    relay_says,
)
from backupvault.client.pending import PendingStore
from backupvault.client.threshold import FleetKeys, Registered, ThresholdVault
from backupvault.client.vault import Recovery, VaultClient, VaultStatus
from backupvault.codec import MAX_JSON, epoch_number, untrusted_json
from backupvault.crypto import ksf
from backupvault.errors import InvalidInput
from backupvault.files import MAX_STATE_BYTES, locked, read_at_most, replace_file
from backupvault.http_answers import SERVER_DOWN, AnswerRefused, read_answer, untrusted_client
from backupvault.protocol import EntryStatus
from backupvault.transparency import (
    Checkpoint,
    FleetBundle,
    OperatorSignedRecord,
    TransparencyError,
    VerifiedFleet,
    Verifier,
    open_checkpoint,
    verify_bundle,
)
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES, check_log_growth
from backupvault.transparency.errors import Malformed, MalformedNote, StaleHead
from backupvault.transparency.head import (
    DEFAULT_MAX_AGE,
    NONCE_LEN,
    FleetHead,
    check_head,
    open_head,
)
from backupvault.transparency.merkle import leaf_hash, verify_inclusion
from backupvault.transparency.note import MAX_NOTE_BYTES
from backupvault.transparency.record import DeploymentRecord, raw_public_key

STATE_VERSION = 1
_Kept = TypeVar("_Kept")


def load_operator_key(value: str, base: Path) -> bytes:
    """The operator's raw Ed25519 public key: 64 hex characters, or a PEM file."""
    text = value.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    path = base / text
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise InvalidInput(
            f"operator_public_key is neither 64 hex characters nor a readable file ({path}:"
            f" {err.strerror})"
        ) from None
    except ValueError:
        raise InvalidInput(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path}: the operator key must be Ed25519")
    return raw_public_key(key)


def load_witness_verifier(value: str, name: str | None) -> Verifier:
    """The witness's key: a note verifier key (`name+id+base64`, as `GET /v1/witness` and
    `backupvault witness keygen` show it), or 64 hex characters with `witness_name`."""
    text = value.strip()
    try:
        if "+" in text:
            verifier = Verifier.from_vkey(text)
        else:
            if name is None:
                raise InvalidInput("a raw witness_public_key needs witness_name")
            verifier = Verifier(name, Ed25519PublicKey.from_public_bytes(bytes.fromhex(text)))
    except (TransparencyError, ValueError) as err:
        raise InvalidInput(f"witness_public_key is not a witness key: {err}") from None
    if name is not None and verifier.name != name:
        raise InvalidInput(
            f"witness_name {name!r} differs from the name in witness_public_key ({verifier.name!r})"
        )
    return verifier


#: `VKEY@URL`: the URL starts at the last `@` an `http://` or `https://` follows.
_VKEY_AT_URL = re.compile(r"(.+)@(https?://.*)", re.S | re.I)


def split_vkey_at_url(given: str) -> tuple[str, str] | None:
    """`--also-witness VKEY@URL` as (vkey, URL), or None if it is not of that form. A
    witness's name may hold an `@` (`ops@example.org/witness`, which `witness keygen`
    takes) and its vkey starts with it: split at the first `@`, such a vkey never
    parsed, and the witness could be given as the first witness only."""
    match = _VKEY_AT_URL.fullmatch(given)
    if match is not None:
        return match.group(1), match.group(2)
    vkey, at, url = given.partition("@")  # a URL of another scheme is refused by name
    return (vkey, url) if at and vkey and url else None


# ---- the state file -----------------------------------------------------------------------


@dataclass
class TrustState:
    """What an OTA client accepted so far; see the module docstring."""

    path: Path
    checkpoint: str | None = None
    fleets: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)
    #: The latest time (unix seconds) this device knows has passed: the newest witness head
    #: it accepted, or its clock when it accepted one. A clock set back later counts from
    #: here, so it cannot make a head older than what was already seen look fresh.
    trusted_time: int = 0
    #: The fleet this file pins (`pinned_fleet`): the first one accepted with it.
    fleet_id: bytes | None = None
    #: Tree size (decimal) -> base64 root of the bundle checkpoints accepted, each proven
    #: a prefix of `checkpoint` (see the module docstring).
    prefixes: dict[str, str] = field(default_factory=dict)
    #: How long `accept` waits for another process of this device to finish with the file.
    LOCK_TIMEOUT: ClassVar[float] = 30.0

    @classmethod
    def load(cls, path: Path) -> TrustState:
        try:
            data = json.loads(
                read_at_most(
                    path,
                    MAX_STATE_BYTES,
                    "any trust state file",
                    hint="it holds the last witness checkpoint this client saw; restore it"
                    " from a backup, or name the right file as the config's state_file",
                )
            )
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, RecursionError) as err:
            detail = "nested too deeply" if isinstance(err, RecursionError) else err
            raise InvalidInput(
                f"the trust state file {path} is unreadable: {detail}",
                hint="it holds the last witness checkpoint this client saw; restore it from a"
                " backup (deleting it makes the client trust the next bundle it sees)",
            ) from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InvalidInput(f"the trust state file {path} is not a version 1 state file")
        checkpoint = data.get("checkpoint")
        fleets = data.get("fleets", {})
        heads = data.get("heads", {})
        prefixes = data.get("prefixes", {})  # absent in files of older versions
        trusted_time = data.get("time", 0)  # absent in files of older versions
        if (
            not (checkpoint is None or isinstance(checkpoint, str))
            or not isinstance(fleets, dict)
            or not isinstance(heads, dict)
            or not all(isinstance(v, str) for v in heads.values())
            or not isinstance(prefixes, dict)
            or not all(
                _RECORD_EPOCH.fullmatch(k) and isinstance(v, str) for k, v in prefixes.items()
            )
        ):
            raise InvalidInput(f"the trust state file {path} is malformed")
        try:
            check_state_fleets(fleets)
            epoch_number(trusted_time, "the trusted time")  # a u64, as a head's time
            pinned = pinned_fleet(data)  # derived in a file of an older version: saved next
        except InvalidInput as err:
            raise InvalidInput(f"the trust state file {path} is malformed: {err.message}") from None
        return cls(path, checkpoint, fleets, heads, trusted_time, pinned, prefixes)

    def save(self) -> None:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "checkpoint": self.checkpoint,
            "fleets": self.fleets,
            "heads": self.heads,
            "time": self.trusted_time,
        }
        if self.prefixes:
            data["prefixes"] = self.prefixes
        if self.fleet_id is not None:
            data["fleet_id"] = self.fleet_id.hex()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidInput(f"cannot write {self.path}: {err.strerror}") from None
        # Never half a state, and never an older one back after a power loss.
        replace_file(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def last_checkpoint(self, verifier: Verifier) -> Checkpoint | None:
        note = self.checkpoint
        if note is None:
            return None
        return self._kept("the checkpoint", lambda: open_checkpoint(note, verifier))

    def last_head(self, verifier: Verifier) -> FleetHead | None:
        """The last fleet head kept from the witness of `verifier`, checked with its key."""
        note = self.heads.get(verifier.name)
        if note is None:
            return None
        return self._kept(f"the head of {verifier.name}", lambda: open_head(note, verifier))

    def _kept(self, what: str, opened: Callable[[], _Kept]) -> _Kept:
        """What this file kept, opened: one that no longer verifies is this file's problem
        (an InvalidInput naming it), not a refusal of what the relay serves now."""
        try:
            return opened()
        except TransparencyError as err:
            raise InvalidInput(
                f"{what} in {self.path} does not verify with the witness key: {err.message}",
                hint="the witness key in the config changed, or the state file was altered",
            ) from None

    def accepted_epochs(self) -> dict[bytes, int]:
        return {bytes.fromhex(fid): int(fleet["epoch"]) for fid, fleet in self.fleets.items()}

    def records(self, fleet_id: bytes) -> dict[int, bytes]:
        fleet = self.fleets.get(fleet_id.hex(), {})
        return {int(e): bytes.fromhex(r) for e, r in fleet.get("records", {}).items()}

    def remember_checkpoint(self, note: str) -> None:
        """Keep `note` as the bundle witness's newest checkpoint if it is at least as large."""
        last = self.checkpoint
        size = Checkpoint.from_text(note_text(note)).size
        if last is None or size >= Checkpoint.from_text(note_text(last)).size:
            self.checkpoint = note

    def proven_prefix(self, bundle: bytes, last: Checkpoint) -> bool:
        """Whether the checkpoint of `bundle` (not yet verified: verify_bundle does) is one
        this client already proved a prefix of `last`, its kept checkpoint: that of a bundle
        it accepted before. False for one that does not parse (verify_bundle says why)."""
        try:
            note = FleetBundle.from_bytes(bundle).checkpoint
            checkpoint = Checkpoint.from_text(note_text(note))
        except TransparencyError:
            return False
        root = base64.b64encode(checkpoint.root_hash).decode()
        return (
            checkpoint.origin == last.origin
            and checkpoint.size < last.size
            and self.prefixes.get(str(checkpoint.size)) == root
        )

    def remember_head(self, name: str, note: str) -> None:
        """Keep `note` as the last head of witness `name` unless the one kept is newer (a
        larger tree, or as large and later): another process may have kept a newer one
        since this one was checked, and going back to an older head would let a retired
        epoch stand in longer while that witness is out of reach."""
        kept = self.heads.get(name)
        if kept is None or _head_order(note) >= _head_order(kept):
            self.heads[name] = note

    def accept(
        self,
        verified: VerifiedFleet,
        notes: Sequence[str],
        *,
        current: bool,
        heads: Sequence[tuple[str, str]] = (),
        seen_time: int = 0,
        proven: Sequence[str] = (),
    ) -> None:
        """Remember a verified fleet (after acceptance only): the largest of the checkpoints
        `notes` when newer, its record, (for the current fleet) its epoch, the heads that
        vouched for it, `seen_time` if later than the trusted time kept, and the checkpoints
        `proven` a prefix of the checkpoint kept (the bundle's)."""
        # Read, applied and saved under the file's lock, to the file as it is now rather
        # than as it was when this state was loaded: another process of this client (or
        # `older()` between two epochs) may have accepted more since, and a staler copy
        # saved over it would take the epoch, the checkpoint and the heads back.
        with locked(self.path, timeout=self.LOCK_TIMEOUT):
            on_disk = TrustState.load(self.path)
            # What this process verified extends the checkpoint and heads it loaded: if
            # another process saved a different growth of them since, neither tree was
            # proven to hold the other. Keeping the larger by size alone would let a
            # witness showing two commands of this device two histories go unseen.
            for note in notes:
                if grew_apart(self.checkpoint, on_disk.checkpoint, note):
                    raise StateMoved
            for name, head in heads:
                if grew_apart(self.heads.get(name), on_disk.heads.get(name), head):
                    raise StateMoved
            self.checkpoint, self.fleets = on_disk.checkpoint, on_disk.fleets
            self.heads, self.trusted_time = on_disk.heads, on_disk.trusted_time
            self.prefixes = on_disk.prefixes
            # The file keeps one fleet: the first accepted with it, pinned from then on
            # (checked again here: another process may have pinned one since the load).
            record = verified.record
            self.fleet_id = on_disk.fleet_id or record.fleet_id
            if record.fleet_id != self.fleet_id:
                raise pin_conflict(self.path, self.fleet_id, record.fleet_id)
            for note in notes:
                self.remember_checkpoint(note)
            for note in proven:
                checkpoint = Checkpoint.from_text(note_text(note))
                self.prefixes[str(checkpoint.size)] = base64.b64encode(
                    checkpoint.root_hash
                ).decode()
            for name, head in heads:
                self.remember_head(name, head)
            self.trusted_time = max(self.trusted_time, seen_time)
            fleet = self.fleets.setdefault(record.fleet_id.hex(), {"epoch": record.epoch})
            if current:
                fleet["epoch"] = max(int(fleet["epoch"]), record.epoch)
            records = fleet.setdefault("records", {})
            records[str(record.epoch)] = verified.signed_record.to_bytes().hex()
            self.save()


class StateMoved(Exception):
    """The state file took, since this process loaded it, a checkpoint or a witness's head
    that differs from what this process verified: verify again from the file as it is now
    (`TrustState.accept`, `deploy.verify.save_state`)."""


#: How many times a verification starts again when another process moved the state file.
STATE_ATTEMPTS = 3


def grew_apart(basis: str | None, on_disk: str | None, new: str) -> bool:
    """Whether `new`, a note verified against `basis` (a prefix of it, or a tree extending
    it), and `on_disk`, a note another process saved meanwhile in place of `basis` (after
    proving it extends `basis`), are two trees neither of which was proven to hold the
    other: `new` grew past `basis`, and the file moved elsewhere."""
    start, moved, grown = _tree(basis), _tree(on_disk), _tree(new)
    if moved == start or grown == moved:
        return False
    return start is None or (grown is not None and grown[0] > start[0])


def _tree(note: str | None) -> tuple[int, bytes] | None:
    """(size, root hash) of a note's checkpoint: which tree it names, whoever signed it and
    whenever. One that does not parse names a tree of its own (equal only to itself)."""
    if note is None:
        return None
    try:
        checkpoint = Checkpoint.from_text(note_text(note))
    except TransparencyError:
        return (-1, note.encode())
    return (checkpoint.size, checkpoint.root_hash)


def _head_order(note: str) -> tuple[int, int]:
    """(tree size, time) of a kept head note, to tell which of two is newer; (-1, -1) for
    one that does not parse (it never wins over one that does)."""
    try:
        checkpoint = Checkpoint.from_text(note_text(note))
        time_line = checkpoint.extensions[-1] if checkpoint.extensions else ""
        when = int(time_line.removeprefix("time ")) if time_line.startswith("time ") else -1
    except (TransparencyError, ValueError):
        return (-1, -1)
    return (checkpoint.size, when)


_RECORD_EPOCH = re.compile(r"0|[1-9][0-9]{0,19}")


def pinned_fleet(state: dict[str, Any]) -> bytes | None:
    """The fleet a state file (its JSON `state`) pins: its "fleet_id",
    or, in a file of an older version without one, the one fleet an OTA client accepted
    there (the only one with "records": a client keeps every record it accepts, while
    `verify-deployment --state` keeps only epochs, and may have added another fleet to a
    client's file before this was checked). None: the file pins no fleet yet. InvalidInput
    if "fleet_id" is not a fleet id."""
    fleet_id = state.get("fleet_id")
    if fleet_id is not None:
        try:
            if not isinstance(fleet_id, str) or not bytes.fromhex(fleet_id):
                raise ValueError
        except ValueError:
            raise InvalidInput(f"the pinned fleet id {str(fleet_id)[:80]!r} is not hex") from None
        return bytes.fromhex(fleet_id)
    fleets = state.get("fleets", {})
    if not isinstance(fleets, dict):
        raise InvalidInput("'fleets' is not an object")
    accepted = [
        fid for fid, fleet in fleets.items() if isinstance(fleet, dict) and "records" in fleet
    ]
    try:
        return bytes.fromhex(accepted[0]) if len(accepted) == 1 else None
    except ValueError:
        raise InvalidInput(f"the fleet id {accepted[0][:80]!r} is not hex") from None


def pin_conflict(path: Path, pinned: bytes, other: bytes) -> InvalidInput:
    """The refusal to add fleet `other` to the state file `path`, which pins `pinned`."""
    return InvalidInput(
        f"the state file {path} pins fleet {pinned.hex()} (the first fleet accepted with"
        f" it); fleet {other.hex()} is another fleet, and is not added to it",
        hint=f"a state file keeps one fleet: to check or use fleet {other.hex()}, give it a"
        " state file of its own (state_file in the client config, or verify-deployment"
        " --state); keep this one, which an OTA client uses to refuse any other fleet",
    )


def check_state_fleets(fleets: dict[str, Any]) -> None:
    """Refuse (InvalidInput) a state's "fleets" that `accepted_epochs` and `records` could
    not read: checked when the file is loaded, so a damaged or edited file is one clear
    error, never a TypeError in the middle of a check (or an epoch read as something else)."""
    for fid, fleet in fleets.items():
        try:
            if not bytes.fromhex(fid):
                raise ValueError
        except ValueError:
            raise InvalidInput(f"the fleet id {fid!r} is not hex") from None
        if not isinstance(fleet, dict) or "epoch" not in fleet:
            raise InvalidInput(f"fleet {fid} has no epoch")
        epoch_number(fleet["epoch"], f"fleet {fid}'s epoch")
        records = fleet.get("records", {})
        if not isinstance(records, dict):
            raise InvalidInput(f"fleet {fid}'s records are not an object")
        for epoch, record in records.items():
            if not _RECORD_EPOCH.fullmatch(epoch):
                raise InvalidInput(f"fleet {fid} keeps a record under {epoch!r}, not an epoch")
            epoch_number(int(epoch), f"fleet {fid}'s record epoch")
            try:
                raw = bytes.fromhex(record)
            except (TypeError, ValueError):
                raise InvalidInput(f"fleet {fid}'s record of epoch {epoch} is not hex") from None
            # `older` moves an entry from a kept record without asking the log again: it
            # must be the one it is kept as.
            try:
                kept = OperatorSignedRecord.from_bytes(raw).deployment()
            except InvalidInput as err:
                raise InvalidInput(
                    f"fleet {fid}'s record of epoch {epoch} is not a deployment record:"
                    f" {err.message}"
                ) from None
            if kept.fleet_id != bytes.fromhex(fid) or kept.epoch != int(epoch):
                raise InvalidInput(
                    f"fleet {fid}'s record of epoch {epoch} is epoch {kept.epoch} of fleet"
                    f" {kept.fleet_id.hex()}"
                )


#: What the user is to do about any refusal, said after the reason's own hint (why it may
#: have happened), which alone left them with no next step.
_WHAT_TO_DO = (
    "nothing derived from your password was sent; keep the state file and report this to"
    " the operator"
)


def _refused(reason: TransparencyError) -> FleetNotTrusted:
    """The refusal of the fleet for `reason`, saying why and what to do."""
    error = FleetNotTrusted.because(reason)
    if reason.hint is not None:
        error.hint = f"{reason.hint}; {_WHAT_TO_DO}"
    return error


def note_text(note: str) -> str:
    """The text of a signed note (above the blank line before the signatures)."""
    return note[: note.rindex("\n\n") + 1] if "\n\n" in note else note


def proof_hashes(answer: httpx.Response, source: str) -> list[bytes]:
    """The hashes of a consistency proof (`{"proof": [base64, ...]}`) from `source`, parsed
    as untrusted JSON: at most MAX_JSON bytes and bounded nesting, so a hostile answer
    costs no more than a refusal."""
    try:
        proof = untrusted_json(answer.content, f"the consistency proof from {source}")["proof"]
        return [base64.b64decode(h, validate=True) for h in proof]
    except InvalidInput as err:
        raise FleetNotTrusted(err.message) from None
    except (ValueError, KeyError, TypeError):
        raise FleetNotTrusted(f"the consistency proof from {source} is malformed") from None


# ---- OTA ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the client asks for fleet heads: its key and where it answers."""

    verifier: Verifier
    url: str


@dataclass(frozen=True)
class OtaTrust:
    """The keys an OTA client ships with, and where it keeps what it accepted. `witness` is
    the one whose cosignature and log the bundle carries; `others` must agree with it."""

    operator_key: bytes
    witness: Verifier
    state_file: Path
    witness_url: str
    others: tuple[WitnessEndpoint, ...] = ()
    fleet_id: bytes | None = None
    allowed_measurements: frozenset[bytes] | None = None
    max_age: int = DEFAULT_MAX_AGE
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        # The state file keeps each witness's last head under its name: two witnesses of
        # one name would stand in for each other, and "every witness agrees" would count
        # one log twice.
        names = [self.witness.name, *(e.verifier.name for e in self.others)]
        if len(set(names)) != len(names):
            raise InvalidInput(
                "two witnesses in the config have the same name",
                hint="each [[witnesses]] entry must be another witness (its own key and name)",
            )

    @property
    def witnesses(self) -> tuple[WitnessEndpoint, ...]:
        endpoints = (WitnessEndpoint(self.witness, self.witness_url), *self.others)
        # A URL written with a trailing slash would ask for "//v1/head", another path.
        return tuple(replace(e, url=e.url.rstrip("/")) for e in endpoints)

    def _fetch_head(
        self, http: httpx.Client, endpoint: WitnessEndpoint, fleet_id: bytes, nonce: bytes = b""
    ) -> str | None:
        name = endpoint.verifier.name
        params = {"fleet": fleet_id.hex(), **({"nonce": nonce.hex()} if nonce else {})}
        try:
            answer = read_answer(
                http,
                "GET",
                f"{endpoint.url}/v1/head",
                params=params,
                limit=MAX_NOTE_BYTES,
                what=f"the fleet head from the witness {name}",
            )
        except httpx.HTTPError:
            return None
        except AnswerRefused as err:  # no note is that large: as one that does not parse
            raise _refused(MalformedNote(err.message, hint=err.hint)) from None
        if answer.status_code == 404:
            raise FleetNotTrusted(
                f"the witness {name} has logged no record of fleet {fleet_id.hex()}",
                hint="every witness this client trusts must log the fleet's records",
            )
        return answer.text if answer.status_code == 200 else None

    def _check_heads(
        self, http: httpx.Client, state: TrustState, verified: VerifiedFleet, now: int
    ) -> tuple[list[tuple[str, str]], int]:
        """Every witness's head for the fleet, checked at `now`: (witness name, head note)
        each, and the latest time one of them was signed."""
        record = verified.record
        leaf = verified.signed_record.to_bytes()
        checked = []
        newest = 0
        for endpoint in self.witnesses:
            name = endpoint.verifier.name
            note = self._fetch_head(http, endpoint, record.fleet_id)
            standing_in = note is None
            if note is None:  # unreachable: its last head stands in while young enough
                kept = state.last_head(endpoint.verifier)
                if kept is None:
                    raise FleetUnavailable(
                        f"the witness {name} ({endpoint.url}) cannot be reached to confirm"
                        " that this fleet is current"
                    )
                if kept.fleet_id == record.fleet_id and kept.epoch < record.epoch:
                    # A rotation since that head: this witness has not confirmed the new
                    # epoch, yet nothing it said contradicts it. Not to be used until it
                    # does, but an outage, not evidence of a split view.
                    raise FleetUnavailable(
                        f"the witness {name} ({endpoint.url}) cannot be reached to confirm"
                        f" epoch {record.epoch} of this fleet: the last head it gave names"
                        f" epoch {kept.epoch}",
                        hint="try again when the witness answers; nothing was trusted or saved",
                    )
                note = state.heads[name]
            head = self._checked_head(
                http, state, endpoint, note, leaf, record, now, verified.checkpoint,
                kept=standing_in,
            )  # fmt: skip
            checked.append((name, note))
            newest = max(newest, head.time)
        return checked, newest

    def _checked_head(
        self,
        http: httpx.Client,
        state: TrustState,
        endpoint: WitnessEndpoint,
        note: str,
        leaf: bytes,
        record: DeploymentRecord,
        now: int,
        bundle_checkpoint: Checkpoint | None,
        nonce: bytes = b"",
        *,
        kept: bool = False,
    ) -> FleetHead:
        """`note`, a head from `endpoint`'s witness, opened and checked: it names `record`
        (signed `leaf`) as the fleet's latest, is fresh at `now`, answers `nonce` if one was
        sent, and its tree extends the last one seen from that witness, unless it is the
        head this device `kept` from it: its growth was checked when it was kept, and a
        checkpoint seen since (a newer bundle's, or one `witness verify-log --state` saved)
        extends it. Checked again, it made an outage of that witness look like a log that
        shrank (exit 7; review s60)."""
        try:
            head = open_head(note, endpoint.verifier)
            if nonce and head.nonce != nonce:
                raise StaleHead(
                    f"the witness {endpoint.verifier.name}'s head does not answer this"
                    " client's challenge: an older answer, replayed",
                    hint="something between you and the witness replays old answers; try"
                    " again later",
                )
            check_head(head, leaf, record.fleet_id, record.epoch, now=now, max_age=self.max_age)
            if not kept:
                self._check_growth(http, state, endpoint, head, bundle_checkpoint)
        except TransparencyError as err:
            raise _refused(err) from None
        return head

    def _check_growth(
        self,
        http: httpx.Client,
        state: TrustState,
        endpoint: WitnessEndpoint,
        head: FleetHead,
        bundle_checkpoint: Checkpoint | None,
    ) -> None:
        """The head's tree must extend the newest one seen from that witness."""
        if endpoint.verifier.name == self.witness.name:
            last = state.last_checkpoint(self.witness)
            # The bundle's checkpoint is of this witness's log too, and verify_bundle found
            # it consistent with `last`: the head must extend the larger of the two. Else a
            # device with no (or an older) checkpoint takes a record from one history and
            # the head from another, both signed by this witness's key, without a word.
            if bundle_checkpoint is not None and (
                last is None or bundle_checkpoint.size > last.size
            ):
                last = bundle_checkpoint
        else:
            seen = state.last_head(endpoint.verifier)
            last = None if seen is None else seen.checkpoint

        source = f"the witness {endpoint.verifier.name}"

        def fetch(old: int, new: int) -> Sequence[bytes]:
            answer = _ask_witness(
                http,
                f"{endpoint.url}/v1/consistency",
                {"old": str(old), "new": str(new)},
                f"consistency proof from {source}",
            )
            if answer.status_code != 200:
                raise FleetNotTrusted(
                    f"no consistency proof from {source} ({answer.status_code}): a witness"
                    " that signed both checkpoints must prove the log grew between them"
                )
            return proof_hashes(answer, source)

        check_log_growth(head.checkpoint, last, fetch)

    def _get(self, http: httpx.Client, url: str, what: str, *, bundle: bool) -> httpx.Response:
        """The relay's answer for `what`: a fleet bundle (`bundle`) or JSON, read up to the
        most an honest one can be (http_answers), and refused unread past that."""
        limit = MAX_BUNDLE_BYTES if bundle else MAX_JSON
        try:
            answer = read_answer(http, "GET", url, limit=limit, what=f"{what} from the relay")
        except httpx.ConnectError as err:
            raise RelayUnreachable(str(httpx.URL(url).copy_with(path="/")), str(err)) from None
        except httpx.HTTPError as err:
            raise FleetUnavailable(f"cannot fetch {what} from the relay ({err})") from None
        except AnswerRefused as err:
            if bundle:  # no bundle is that large: refused as one that does not parse is
                raise _refused(Malformed(err.message, hint=err.hint)) from None
            raise FleetNotTrusted(err.message, hint=err.hint) from None
        refusal = (
            f"the relay did not serve {what} ({answer.status_code}; {relay_says(answer.text)})"
        )
        if answer.status_code in SERVER_DOWN:  # an outage (exit 5), not a refusal to trust
            raise FleetUnavailable(
                refusal, hint="the relay (or a proxy in front of it) is down; try again later"
            )
        if answer.status_code == 429:  # its bucket per address (witness proofs): not now
            wait = answer.headers.get("retry-after", "")
            raise FleetUnavailable(
                f"the relay refused {what} for now: it asks to wait"
                f" {wait if wait.isdigit() and len(wait) < 7 else 'a few'} s",
                hint="too many requests from this address (many devices behind one, or a"
                " loop); try again then",
            )
        if answer.status_code != 200:
            raise FleetNotTrusted(
                refusal,
                hint="the relay must serve the fleet bundle (bundle_file in relay.toml)",
            )
        return answer

    def _consistency(self, http: httpx.Client, relay_url: str) -> Any:
        def fetch(old: int, new: int) -> Sequence[bytes]:
            answer = self._get(
                http,
                f"{relay_url}/v1/fleet/consistency?old={old}&new={new}",
                f"the consistency proof between log sizes {old} and {new}",
                bundle=False,
            )
            return proof_hashes(answer, "the relay")

        return fetch

    def _verify(
        self,
        http: httpx.Client,
        relay_url: str,
        state: TrustState,
        bundle: bytes,
        *,
        current: bool,
    ) -> VerifiedFleet:
        # The fleet the state pins (the first accepted with it) is the one expected when
        # the config names none; a config naming another is not added to that state.
        if self.fleet_id is not None and state.fleet_id not in (None, self.fleet_id):
            raise pin_conflict(state.path, state.fleet_id, self.fleet_id)
        expected = self.fleet_id or state.fleet_id
        last = state.last_checkpoint(self.witness)
        try:
            # A bundle checkpoint this client already proved a prefix of the kept one needs
            # no proof again (and the bundle witness's outage then stops nothing while its
            # kept head stands in).
            if last is not None and state.proven_prefix(bundle, last):
                last = None
            return verify_bundle(
                bundle,
                self.operator_key,
                self.witness.public_key,
                self.witness.name,
                last,
                self._consistency(http, relay_url),
                accepted_epochs=state.accepted_epochs() if current else None,
                allowed_measurements=self.allowed_measurements,
                expected_fleet_id=expected,
            )
        except TransparencyError as err:
            raise _refused(err) from None

    def current(self, http: httpx.Client, relay_url: str) -> VerifiedFleet:
        """Fetch and verify the relay's current fleet bundle; remember it once accepted.
        Verified again, from the state file as it is then, when another process of this
        device saved a different checkpoint or head meanwhile (`StateMoved`)."""
        for _ in range(STATE_ATTEMPTS):
            try:
                return self._current(http, relay_url)
            except StateMoved:
                continue
        raise _kept_moving(self.state_file)

    def _current(self, http: httpx.Client, relay_url: str) -> VerifiedFleet:
        state = TrustState.load(self.state_file)
        bundle = self._get(
            http, f"{relay_url}/v1/fleet/bundle", "the fleet bundle", bundle=True
        ).content
        verified = self._verify(http, relay_url, state, bundle, current=True)
        # Heads are judged against the device's clock, but never against a time earlier
        # than one it already knows has passed: a clock set back cannot make a head older
        # than those seen before look fresh (max_bundle_age would stretch without end).
        reading = int(self.clock())
        now = max(reading, state.trusted_time)
        heads, newest = self._check_heads(http, state, verified, now)
        # The bundle witness's head (its newest tree), then the bundle's checkpoint: of one
        # size, the last is kept (as before the two were given together).
        checkpoints = (heads[0][1], FleetBundle.from_bytes(bundle).checkpoint)
        # The clock is kept only now that every head was found fresh by it: so it is at
        # most max_bundle_age past a witness's signed time, and a clock set forward cannot
        # push the trusted time further than that.
        state.accept(
            verified,
            checkpoints,
            current=True,
            heads=heads,
            seen_time=max(reading, newest),
            proven=checkpoints[1:],
        )
        return verified

    def retired_seen(self, current: DeploymentRecord) -> tuple[int, ...]:
        """The epochs of the current fleet this client accepted before and the current
        record retires: a key this device left on one is not asked for (`older`)."""
        state = TrustState.load(self.state_file)
        seen = state.records(current.fleet_id)
        return tuple(sorted(e for e in seen if e < current.retired_below))

    def _confirm_live(
        self, http: httpx.Client, state: TrustState, current: DeploymentRecord
    ) -> dict[str, FleetHead]:
        """Every witness confirms, now, that `current` is still the fleet's latest record:
        a head that signs back a nonce drawn here, never a kept head standing in. Asked
        before any older epoch, since the latest record's `retired_below` says which are
        retired: heads are public and good for `max_age`, so heads recorded just before a
        retirement was logged, replayed with the record they named (which retired
        nothing), sent a device that had not seen the retirement to the retired nodes for
        a day (review s39-B)."""
        leaf = state.records(current.fleet_id).get(current.epoch)
        if leaf is None:
            raise FleetNotTrusted(
                f"epoch {current.epoch} of fleet {current.fleet_id.hex()} was never accepted"
                " here as current"
            )
        now = max(int(self.clock()), state.trusted_time)
        heads = {}
        for endpoint in self.witnesses:
            name = endpoint.verifier.name
            nonce = os.urandom(NONCE_LEN)
            note = self._fetch_head(http, endpoint, current.fleet_id, nonce)
            if note is None:
                raise FleetUnavailable(
                    f"the witness {name} ({endpoint.url}) cannot be reached to confirm that"
                    f" epoch {current.epoch} is still this fleet's latest record, which an"
                    " older epoch is asked only after",
                    hint="try again when the witness answers; nothing was asked of an older epoch",
                )
            heads[name] = self._checked_head(
                http, state, endpoint, note, leaf, current, now, None, nonce
            )
        return heads

    def _logged_everywhere(
        self, http: httpx.Client, heads: dict[str, FleetHead], record: bytes, epoch: int
    ) -> None:
        """Every witness proves that its log, in the tree of the head it just signed for
        this client (`_confirm_live`), holds `record`, an older epoch's signed record: the
        operator and one witness cannot show a client an older record the other witnesses
        did not log. Until review s60 only the bundle's witness vouched for one, so an
        operator could log nodes of its own as an epoch at that witness alone, and a device
        whose entry was not on the current fleet asked those nodes for its password."""
        wanted = leaf_hash(record)
        for endpoint in self.witnesses:
            source = f"the witness {endpoint.verifier.name}"
            tree = heads[endpoint.verifier.name].checkpoint
            what = f"proof that {source} logged epoch {epoch}'s record"
            params = {"leaf_hash": wanted.hex(), "size": str(tree.size)}
            answer = _ask_witness(http, f"{endpoint.url}/v1/inclusion", params, what)
            if answer.status_code == 404:
                raise FleetNotTrusted(
                    f"{source} has not logged the record of epoch {epoch} that the relay"
                    " offers: the operator showed this client an epoch that not every"
                    " witness logged",
                    hint="nothing was asked of that epoch's nodes; report it to the fleet's"
                    " operator and the witness's",
                )
            if answer.status_code != 200:
                raise FleetNotTrusted(
                    f"{source} gave no proof that it logged the record of epoch {epoch}"
                    f" ({answer.status_code}: {one_line(answer.text)})",
                    hint="nothing was asked of that epoch's nodes; a witness of a version"
                    " before 2026-12-07 answers no inclusion by leaf hash: its operator"
                    " upgrades it",
                )
            try:
                proof = untrusted_json(answer.content, f"the {what}")
                index = proof["index"]
                if not isinstance(index, int) or isinstance(index, bool):
                    raise TypeError
                hashes = [base64.b64decode(h, validate=True) for h in proof["proof"]]
                verify_inclusion(wanted, index, tree.size, hashes, tree.root_hash)
            except InvalidInput as err:
                raise FleetNotTrusted(err.message) from None
            except TransparencyError as err:
                raise _refused(err) from None
            except (ValueError, KeyError, TypeError):
                raise FleetNotTrusted(f"the {what} is malformed") from None

    def older(
        self, http: httpx.Client, relay_url: str, current: DeploymentRecord
    ) -> Iterator[DeploymentRecord]:
        """Older epochs of the current fleet, newest first: those this client accepted
        before (from its state) and those the relay lists, each verified like a bundle.
        None the current record retires (`retired_below`): a retired epoch's nodes may be
        anyone's by now, and one that answered "live" for a manifest of theirs would get
        an online guess at the password, and on a right one the key this device then
        registers here (docs/transparency.md, "Retiring an epoch"). So every witness first
        confirms, live, that `current` is still the latest record (`_confirm_live`)."""
        state = TrustState.load(self.state_file)
        known = {
            epoch: OperatorSignedRecord.from_bytes(raw)
            for epoch, raw in state.records(current.fleet_id).items()
            if current.retired_below <= epoch < current.epoch
        }
        answer = self._get(
            http, f"{relay_url}/v1/fleet/epochs", "the list of fleet epochs", bundle=False
        )
        try:
            epochs = untrusted_json(answer.content, "the relay's list of fleet epochs")
            previous = epochs.get("previous", []) if isinstance(epochs, dict) else None
            if not isinstance(previous, list):
                raise InvalidInput("the relay's list of fleet epochs has no list 'previous'")
            listed = {epoch_number(e, "an epoch the relay lists") for e in previous}
        except InvalidInput as err:
            raise FleetNotTrusted(err.message) from None
        # An epoch on the nodes of a newer one (an upgrade: new code, the same nodes and
        # keys) holds nothing apart from it: its entries are those nodes', found there. The
        # relay no longer routes it once the upgrade's bundle replaced its own.
        searched = {_node_keys(current)}
        listed = {e for e in listed if current.retired_below <= e < current.epoch}
        heads = {}
        if known or listed:  # with no older epoch to ask, no retirement to be sure of
            heads = self._confirm_live(http, state, current)
        for epoch in sorted(set(known) | listed, reverse=True):
            if epoch in known:
                try:
                    record = known[epoch].verify(self.operator_key)
                except TransparencyError as err:
                    raise _refused(err) from None
                if _node_keys(record) not in searched:
                    self._logged_everywhere(http, heads, known[epoch].to_bytes(), epoch)
                    searched.add(_node_keys(record))
                    yield record
                continue
            bundle = self._get(
                http,
                f"{relay_url}/v1/fleet/bundle?epoch={epoch}",
                f"the bundle of epoch {epoch}",
                bundle=True,
            ).content
            for _ in range(STATE_ATTEMPTS):
                verified = self._verify(http, relay_url, state, bundle, current=False)
                if verified.record.fleet_id != current.fleet_id or verified.record.epoch != epoch:
                    raise FleetNotTrusted(
                        f"the relay's bundle for epoch {epoch} is for epoch"
                        f" {verified.record.epoch} of fleet {verified.record.fleet_id.hex()}"
                    )
                self._logged_everywhere(http, heads, verified.signed_record.to_bytes(), epoch)
                checkpoint = FleetBundle.from_bytes(bundle).checkpoint
                try:
                    state.accept(verified, (checkpoint,), current=False, proven=(checkpoint,))
                    break
                except StateMoved:  # verified again against what another process saved
                    state = TrustState.load(self.state_file)
            else:
                raise _kept_moving(self.state_file)
            if _node_keys(verified.record) not in searched:
                searched.add(_node_keys(verified.record))
                yield verified.record


def _kept_moving(path: Path) -> FleetUnavailable:
    return FleetUnavailable(
        f"the trust state file {path} kept changing while this command verified the fleet"
        " (other commands of this device accepting fleet bundles at the same time)",
        hint="nothing was sent to the fleet; run the command again",
    )


def _ask_witness(http: httpx.Client, url: str, params: dict[str, str], what: str) -> httpx.Response:
    """A witness's answer with `what` (a proof): no answer in time, a 5xx or a 429 is an
    outage (`FleetUnavailable`, exit 5); "not trusted" (exit 7) is kept for what the
    answer says, and for an answer larger than any honest one."""
    try:
        answer = read_answer(http, "GET", url, params=params, limit=MAX_JSON, what=f"the {what}")
    except httpx.HTTPError as err:
        raise FleetUnavailable(
            f"no {what}: it did not answer ({err})",
            hint="try again later; nothing was trusted or saved",
        ) from None
    except AnswerRefused as err:
        raise FleetNotTrusted(err.message, hint=err.hint) from None
    if answer.status_code in SERVER_DOWN or answer.status_code == 429:
        raise FleetUnavailable(
            f"no {what} for now ({answer.status_code})",
            hint="the witness is busy or down; try again later; nothing was trusted",
        )
    return answer


def _node_keys(record: DeploymentRecord) -> tuple[tuple[bytes, bytes], ...]:
    """The keys of a record's nodes, by index: which nodes hold its entries."""
    return tuple((n.hpke_public_key, n.signing_public_key) for n in record.nodes)


# ---- sessions -----------------------------------------------------------------------------


class FleetSession:
    """The vault as a client sees it: the threshold vault (docs/threshold.md) on the
    current (verified or pinned) fleet, and for OTA clients the older epochs their entry
    may still be on."""

    def __init__(
        self,
        threshold: ThresholdVault,
        epoch: int | None = None,
        older: Iterator[tuple[int, FleetSession]] | None = None,
        retired: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        self.threshold = threshold
        self.epoch = epoch
        self._older = older
        #: The older epochs this device used that the current record retires (never
        #: asked), read only when a migration finds nothing.
        self._retired = retired
        #: What `older` found so far: each older epoch is verified (and asked) once.
        self._older_seen: list[tuple[int, FleetSession]] = []
        #: Called before a recovery sends the password when one guess is left (a wrong
        #: one destroys the key); it raises to send nothing (the CLI asks the user).
        self.before_last_guess: Callable[[bool], None] | None = None

    def older(self) -> Iterator[tuple[int, FleetSession]]:
        """The older epochs, newest first; each call starts again from the newest."""
        yield from list(self._older_seen)
        if self._older is None:
            return
        for found in self._older:
            self._older_seen.append(found)
            yield found

    def _finish_older_erasures(self) -> tuple[str, ...]:
        """Send again the erasures this device owes older epochs (a migration's delete of
        the old copy that did not land: docs/threshold.md, "Per live copy"), and say what
        is still owed. Nothing is asked of the relay unless one is owed; a failure is told
        in the lines, never raised (the current epoch's operation went on)."""
        vault = self.threshold
        if self.epoch is None or self._older is None:
            return ()  # pinned: no older epoch to reach (nor to call retired)
        try:
            owed = {
                e
                for e in vault.pending.epochs_owed(vault.vault.fleet_id, vault.account, vault.entry)
                if e < self.epoch
            }
        except VaultError as err:
            return (f"pending deliveries not read: {err.message}",)
        lines: list[str] = []
        retired: set[int] = set()
        try:
            for epoch, old in self.older():
                if epoch not in owed:
                    continue
                owed.discard(epoch)
                try:
                    lines += [f"epoch {epoch}: {line}" for line in old.threshold.status().pending]
                except EpochNotRouted:
                    retired.add(epoch)
                if not owed:
                    break
            else:
                # Neither accepted before nor listed by the relay: retired.
                retired |= owed
                owed = set()
        except VaultError as err:
            lines.append(f"older epochs {sorted(owed)}: not reached ({err.message})")
        # A retired epoch's copy is gone with its nodes: nothing is owed to it any more.
        # (A relay that only says so keeps the old copy no livelier than one that drops
        # every delete, which it could do anyway.)
        for epoch in retired:
            self._forget_owed(epoch)
        return tuple(lines)

    def _forget_owed(self, epoch: int) -> None:
        vault = self.threshold
        with contextlib.suppress(VaultError):
            vault.pending.drop_epoch(vault.vault.fleet_id, vault.account, vault.entry, epoch)

    @property
    def _ksf(self) -> ksf.Argon2idParams:
        return self.threshold.vault.ksf_params

    def status(self) -> VaultStatus:
        """The entry as the nodes hold it; erasures still owed are sent again on the way."""
        current = self.threshold.status()
        return VaultStatus(
            current.status,
            current.guess_limit,
            current.guesses_remaining,
            current.version,
            nodes_without=current.other,
            pending=current.pending + self._finish_older_erasures(),
            guesses_remaining_up_to=current.guesses_remaining_up_to,
        )

    def needs_password_to_finish(self) -> bool:
        """Whether finishing this device's deliveries needs the password (a recovery)."""
        return self.threshold.needs_password_to_finish()

    def register(self, password: str, root_key: bytes) -> Registered:
        """A new entry (the version after any deleted one's). AlreadyRegistered if the
        vault holds one."""
        current = self.threshold.status()
        if current.status == EntryStatus.LIVE:
            raise AlreadyRegistered("the vault already holds a key for this entry")
        return self.threshold.register(
            password, root_key, ksf=self._ksf, version=current.version + 1
        )

    def recover(self, password: str) -> Recovery:
        """The root key behind `password`."""
        found = self.threshold.recover(
            password, ksf_floor=self._ksf, before_last_guess=self.before_last_guess
        )
        return Recovery(found.root_key, found.wrong_guesses_before, found)

    def change_password(self, recovered: Recovery, new_password: str) -> Registered:
        return self.threshold.change_password(recovered.threshold, new_password, ksf=self._ksf)

    def delete(self, recovered: Recovery) -> tuple[int, tuple[str, ...]]:
        return self.threshold.delete(recovered.threshold)

    def migrate(self, password: str) -> Recovery | None:
        """If the entry is on an older epoch, recover it there, register the same root key
        behind the same password here, and delete the old entry. None if there is none."""
        for epoch, old in self.older():
            try:
                status = old.status()
            except VaultError as err:
                raise VaultError(
                    f"cannot check epoch {epoch} for this entry: {err.message}",
                    hint="the key may still be on that epoch; ask the operator to keep routing"
                    " it until clients have migrated (no new key was registered)",
                ) from None
            if status.status == EntryStatus.DESTROYED:
                raise Destroyed()
            if status.status != EntryStatus.LIVE:
                continue
            old.before_last_guess = self.before_last_guess
            recovered = old.recover(password)
            try:
                self.register(password, recovered.root_key)
            except AlreadyRegistered:
                # Another device migrated it meanwhile: it is the same key, behind the same
                # password, on the current fleet.
                return replace(self.recover(password), migrated_from=epoch)
            # Until the old copy is deleted it counts guesses of its own: the delete is
            # kept and sent again at later runs until its nodes erase (or the epoch is
            # retired with it), whatever the relay does to this one.
            with contextlib.suppress(VaultError):
                old.threshold.delete(recovered.threshold, resend_until_erased=True)
            return replace(self.recover(password), migrated_from=epoch)
        retired = () if self._retired is None else self._retired()
        if retired:
            epochs = ", ".join(map(str, retired))
            self.threshold.notify(
                f"note: this device used epoch {epochs} of this fleet, which the operator has"
                " retired: a key left there is not asked for (its nodes may be anyone's now);"
                " if this entry's key was there, restore with your recovery code"
            )
        return None

    def recover_or_migrate(self, password: str) -> Recovery:
        """The root key behind `password`, from the current fleet, or migrated to it."""
        try:
            recovered = self.recover(password)
        except NotRegistered:
            migrated = self.migrate(password)
            if migrated is None:
                raise
            return migrated
        for line in self._finish_older_erasures():
            self.threshold.notify(f"note: {line}")
        return recovered


def threshold_vault(
    vault: VaultClient,
    record: DeploymentRecord,
    notify: Callable[[str], None] | None = None,
    pending: PendingStore | None = None,
) -> ThresholdVault:
    """The threshold flows on the fleet of a verified deployment record."""
    keys = FleetKeys(
        tuple(node.signing_public_key for node in record.nodes), record.threshold, record.epoch
    )
    return ThresholdVault(vault, keys, notify=notify, pending=pending)


def ota_session(
    trust: OtaTrust,
    relay_url: str,
    token: str,
    account: str,
    *,
    entry: str = DEFAULT_ENTRY,
    ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
    http: httpx.Client | None = None,
    fleet_token: str = "",
    notify: Callable[[str], None] | None = None,
    device_key: Ed25519PrivateKey | None = None,
    pending: PendingStore | None = None,
) -> FleetSession:
    """Verify the relay's fleet bundle (nothing else is sent before it is accepted) and
    return a session on that fleet."""
    relay_url = relay_url.rstrip("/")
    client = http or untrusted_client(httpx.Timeout(30.0, connect=5.0))
    verified = trust.current(client, relay_url)

    def vault_for(record: DeploymentRecord) -> VaultClient:
        return VaultClient(
            relay_url,
            token,
            account,
            record.fleet_id,
            record.node_public_keys,
            entry=entry,
            ksf_params=ksf_params,
            http=client,
            epoch=record.epoch,
            fleet_token=fleet_token,
            device_key=device_key,
            notify=notify,
        )

    def session_for(record: DeploymentRecord) -> FleetSession:
        return FleetSession(
            threshold_vault(vault_for(record), record, notify, pending), record.epoch
        )

    def older() -> Iterator[tuple[int, FleetSession]]:
        for record in trust.older(client, relay_url, verified.record):
            yield record.epoch, session_for(record)

    current = vault_for(verified.record)
    return FleetSession(
        threshold_vault(current, verified.record, notify, pending),
        verified.record.epoch,
        older(),
        lambda: trust.retired_seen(verified.record),
    )
