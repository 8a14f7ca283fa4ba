"""What a witness returns, the fleet-key bundle a client receives, and the client's check.

    cosignature message = COSIGN_CONTEXT || u16(len(witness name)) || witness name
                          || leaf            (leaf = the OperatorSignedRecord encoding)
    cosignature         = Ed25519(witness key, cosignature message)

    WitnessReceipt (tag 83): leaf_index u64, tree_size u64, proof bytes (32 × k hashes),
                             checkpoint str (signed note), cosignature bytes (64)
    FleetBundle    (tag 84): signed_record bytes (OperatorSignedRecord encoding),
                             cosignature bytes (64, or empty when the witness never signed),
                             leaf_index u64, tree_size u64, proof bytes (32 × k),
                             checkpoint str (the witness's signed checkpoint)

`verify_bundle` accepts a bundle only if every check passes, each failure its own error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.transparency import merkle
from backupvault.transparency.errors import (
    ConsistencyProofInvalid,
    EpochReplayed,
    FleetMismatch,
    InclusionProofInvalid,
    LogForked,
    LogRolledBack,
    Malformed,
    MeasurementNotAllowed,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
    WrongOrigin,
)
from backupvault.transparency.note import (
    MAX_NOTE_BYTES,
    Checkpoint,
    Verifier,
    check_key_name,
    open_checkpoint,
)
from backupvault.transparency.record import (
    ED25519_SIGNATURE_LEN,
    DeploymentRecord,
    OperatorSignedRecord,
    StrictMessage,
    raw_public_key,
)

COSIGN_CONTEXT = b"backupvault/v1 transparency witness cosignature\x00"

#: The most a FleetBundle's encoding can take: a record of at most 1 MiB, keys and
#: signatures, a proof of at most MAX_PROOF_HASHES hashes, a checkpoint of at most
#: MAX_NOTE_BYTES, and framing (the last 64 KiB are margin). A client reads no more of an
#: answer that claims to be one.
MAX_BUNDLE_BYTES = (1 << 20) + MAX_NOTE_BYTES + 64 * 1024

#: (old size, new size) -> the witness's consistency proof between them.
ConsistencyProofFetcher = Callable[[int, int], Sequence[bytes]]


def cosignature_message(witness_name: str, leaf: bytes) -> bytes:
    name = check_key_name(witness_name).encode()
    return COSIGN_CONTEXT + struct.pack(">H", len(name)) + name + leaf


def cosign(witness_key: Ed25519PrivateKey, witness_name: str, leaf: bytes) -> bytes:
    return witness_key.sign(cosignature_message(witness_name, leaf))


def split_hashes(blob: bytes) -> list[bytes]:
    if len(blob) % merkle.HASH_LEN or len(blob) > merkle.MAX_PROOF_HASHES * merkle.HASH_LEN:
        raise Malformed("a proof is at most 128 hashes of 32 bytes each")
    return [blob[i : i + merkle.HASH_LEN] for i in range(0, len(blob), merkle.HASH_LEN)]


def _check_common(proof: bytes, checkpoint: str, leaf_index: int, tree_size: int) -> None:
    split_hashes(proof)
    if len(checkpoint.encode()) > MAX_NOTE_BYTES:
        raise Malformed("the checkpoint note is too long")
    if leaf_index >= tree_size:
        raise Malformed("the leaf index is outside the tree")


@dataclass(frozen=True)
class WitnessReceipt(StrictMessage):
    """The witness's answer to a submission."""

    TAG: ClassVar[int] = 83

    leaf_index: int
    tree_size: int
    proof: bytes
    checkpoint: str
    cosignature: bytes

    def __post_init__(self) -> None:
        _check_common(self.proof, self.checkpoint, self.leaf_index, self.tree_size)
        if len(self.cosignature) != ED25519_SIGNATURE_LEN:
            raise Malformed("a witness cosignature is 64 bytes")


@dataclass(frozen=True)
class FleetBundle(StrictMessage):
    """A deployment record with everything a client needs to accept it."""

    TAG: ClassVar[int] = 84

    signed_record: bytes
    cosignature: bytes
    leaf_index: int
    tree_size: int
    proof: bytes
    checkpoint: str

    def __post_init__(self) -> None:
        OperatorSignedRecord.from_bytes(self.signed_record)
        _check_common(self.proof, self.checkpoint, self.leaf_index, self.tree_size)
        if len(self.cosignature) not in (0, ED25519_SIGNATURE_LEN):
            raise Malformed("a witness cosignature is 64 bytes (or absent)")

    @classmethod
    def from_receipt(cls, signed: OperatorSignedRecord, receipt: WitnessReceipt) -> FleetBundle:
        return cls(
            signed_record=signed.to_bytes(),
            cosignature=receipt.cosignature,
            leaf_index=receipt.leaf_index,
            tree_size=receipt.tree_size,
            proof=receipt.proof,
            checkpoint=receipt.checkpoint,
        )

    @property
    def operator_signed(self) -> OperatorSignedRecord:
        return OperatorSignedRecord.from_bytes(self.signed_record)

    @property
    def proof_hashes(self) -> list[bytes]:
        return split_hashes(self.proof)


@dataclass(frozen=True)
class VerifiedFleet:
    """A record the client may use. Remember `checkpoint` (as the next `last_checkpoint`)
    and `record.epoch` for `record.fleet_id` (in `accepted_epochs`)."""

    record: DeploymentRecord
    signed_record: OperatorSignedRecord
    checkpoint: Checkpoint
    leaf_index: int


def check_log_growth(
    checkpoint: Checkpoint,
    last_checkpoint: Checkpoint | None,
    consistency_proof_fetcher: ConsistencyProofFetcher | None,
) -> None:
    """Refuse `checkpoint` unless it extends `last_checkpoint` (the newest one seen)."""
    if last_checkpoint is None:
        return
    if last_checkpoint.origin != checkpoint.origin:
        raise WrongOrigin(
            f"the last checkpoint seen is from log {last_checkpoint.origin!r}, this one from"
            f" {checkpoint.origin!r}"
        )
    if checkpoint.size < last_checkpoint.size:
        raise LogRolledBack(
            f"the log shrank from {last_checkpoint.size} to {checkpoint.size} entries",
            hint="the witness lost or hid entries; keep the evidence (both checkpoints)",
        )
    if checkpoint.size == last_checkpoint.size:
        if checkpoint.root_hash != last_checkpoint.root_hash:
            raise LogForked(
                f"two checkpoints of size {checkpoint.size} with different roots",
                hint="the witness showed two histories; keep both signed checkpoints",
            )
        return
    if consistency_proof_fetcher is None:
        raise LogForked("the log grew but there is no way to fetch a consistency proof")
    proof = list(consistency_proof_fetcher(last_checkpoint.size, checkpoint.size))
    try:
        merkle.verify_consistency(
            last_checkpoint.size,
            checkpoint.size,
            last_checkpoint.root_hash,
            checkpoint.root_hash,
            proof,
        )
    except ConsistencyProofInvalid as err:
        raise LogForked(
            f"the checkpoint of size {checkpoint.size} does not extend the one of size"
            f" {last_checkpoint.size}: {err.message}",
            hint="the witness showed two histories (or the proof was altered)",
        ) from None


def check_consistent(
    checkpoint: Checkpoint,
    last_checkpoint: Checkpoint | None,
    consistency_proof_fetcher: ConsistencyProofFetcher | None,
) -> None:
    """Refuse `checkpoint` unless one of it and `last_checkpoint` extends the other. A
    bundle keeps the receipt the witness first gave, so its checkpoint may be older than
    the newest one seen; whether the log went backwards is the fleet head's check."""
    if last_checkpoint is not None and checkpoint.size < last_checkpoint.size:
        check_log_growth(last_checkpoint, checkpoint, consistency_proof_fetcher)
    else:
        check_log_growth(checkpoint, last_checkpoint, consistency_proof_fetcher)


def verify_bundle(
    bundle: FleetBundle | bytes,
    operator_key: Ed25519PublicKey | bytes,
    witness_key: Ed25519PublicKey | bytes,
    witness_name: str,
    last_checkpoint: Checkpoint | None,
    consistency_proof_fetcher: ConsistencyProofFetcher | None = None,
    *,
    accepted_epochs: Mapping[bytes, int] | None = None,
    allowed_measurements: Collection[bytes] | None = None,
    expected_fleet_id: bytes | None = None,
) -> VerifiedFleet:
    """Accept a fleet bundle only if (in this order):

    the operator key named in it is `operator_key` and its signature verifies
    (UnknownOperatorKey, OperatorSignatureInvalid); the record is for `expected_fleet_id`
    (FleetMismatch); a witness cosignature is present and verifies with `witness_key`
    (WitnessSignatureMissing, WitnessSignatureInvalid); the checkpoint is signed by the
    witness for its own origin (UnknownNoteKey, BadNoteSignature, MalformedNote,
    WrongOrigin); the inclusion proof puts the record in that checkpoint's tree
    (InclusionProofInvalid); the checkpoint and `last_checkpoint` are one a prefix of the
    other (WrongOrigin, LogForked; a consistency proof is fetched when they differ in
    size); the measurement is allowed
    (MeasurementNotAllowed); and the epoch is not older than `accepted_epochs[fleet_id]`
    (EpochReplayed). Malformed bytes raise Malformed.
    """
    if isinstance(bundle, bytes | bytearray | memoryview):
        bundle = FleetBundle.from_bytes(bytes(bundle))
    if not isinstance(bundle, FleetBundle):
        raise Malformed("not a fleet bundle")
    signed = bundle.operator_signed
    record = signed.verify(operator_key)
    if expected_fleet_id is not None and record.fleet_id != expected_fleet_id:
        raise FleetMismatch(
            f"the bundle is for fleet {record.fleet_id.hex()}, expected {expected_fleet_id.hex()}"
        )

    if not bundle.cosignature:
        raise WitnessSignatureMissing(
            "the bundle has no witness cosignature: only the operator vouches for it",
            hint="a fleet key must be checked and logged by the witness before clients use it",
        )
    witness_raw = raw_public_key(witness_key)
    witness_public = Ed25519PublicKey.from_public_bytes(witness_raw)
    try:
        witness_public.verify(
            bundle.cosignature, cosignature_message(witness_name, bundle.signed_record)
        )
    except InvalidSignature:
        raise WitnessSignatureInvalid(
            f"the witness cosignature does not verify with the key of {witness_name}",
            hint="the bundle was cosigned by another witness, or altered",
        ) from None

    checkpoint = open_checkpoint(bundle.checkpoint, Verifier(witness_name, witness_public))
    if bundle.tree_size != checkpoint.size:
        raise InclusionProofInvalid(
            f"the inclusion proof is for a tree of {bundle.tree_size} leaves, the checkpoint"
            f" has {checkpoint.size}"
        )
    merkle.verify_inclusion(
        merkle.leaf_hash(bundle.signed_record),
        bundle.leaf_index,
        bundle.tree_size,
        bundle.proof_hashes,
        checkpoint.root_hash,
    )
    check_consistent(checkpoint, last_checkpoint, consistency_proof_fetcher)

    if allowed_measurements is not None and record.measurement not in allowed_measurements:
        raise MeasurementNotAllowed(
            f"the fleet runs firmware {record.measurement.hex()}, which is not an allowed one",
            hint="recompute the measurement of the release you expect (docs/transparency.md)",
        )
    last_epoch = (accepted_epochs or {}).get(record.fleet_id)
    if last_epoch is not None and record.epoch < last_epoch:
        raise EpochReplayed(
            f"the bundle is for epoch {record.epoch} of fleet {record.fleet_id.hex()}, older"
            f" than the epoch {last_epoch} already accepted",
            hint="an old deployment record was replayed",
        )
    return VerifiedFleet(record, signed, checkpoint, bundle.leaf_index)
