"""Why a transparency check refused something: one class per reason.

Every class has a machine-readable `code` (the witness's HTTP answers carry it) and a
message for a person. `Malformed` is also an `InvalidInput`, so code that catches
malformed input in general catches it too.
"""

from __future__ import annotations

from typing import ClassVar

from backupvault.errors import BackupVaultError, InvalidInput


class TransparencyError(BackupVaultError):
    """Base of every refusal by the transparency package."""

    code: ClassVar[str] = "transparency_error"


class Malformed(TransparencyError, InvalidInput):
    """A record, signed record, receipt, bundle or proof does not parse or has a bad field."""

    code = "malformed"


# --- signed notes and checkpoints -------------------------------------------------------


class MalformedNote(Malformed):
    """A signed note or checkpoint does not follow the C2SP format."""

    code = "malformed_note"


class UnknownNoteKey(TransparencyError):
    """No signature on the note is from a key the verifier knows."""

    code = "unknown_key"


class BadNoteSignature(TransparencyError):
    """A signature from a known key on the note does not verify."""

    code = "bad_signature"


class WrongOrigin(TransparencyError):
    """The checkpoint is from another log than the one expected."""

    code = "wrong_origin"


# --- Merkle proofs ------------------------------------------------------------------------


class InclusionProofInvalid(TransparencyError):
    """The inclusion proof does not lead from the leaf to the checkpoint's root."""

    code = "bad_inclusion_proof"


class ConsistencyProofInvalid(TransparencyError):
    """The consistency proof does not show the older tree is a prefix of the newer one."""

    code = "bad_consistency_proof"


# --- records, signatures, log state -------------------------------------------------------


class UnknownFleet(TransparencyError):
    """The witness has no operator key for this fleet id and does not pin on first sight."""

    code = "unknown_fleet"


class NotLogged(TransparencyError):
    """The witness's log holds no such leaf (in the tree of the size asked about)."""

    code = "not_logged"


class UnknownOperatorKey(TransparencyError):
    """The record names an operator key other than the one accepted for this fleet."""

    code = "unknown_operator_key"


class OperatorSignatureInvalid(TransparencyError):
    """The operator's signature over the deployment record does not verify."""

    code = "bad_operator_signature"


class WitnessSignatureMissing(TransparencyError):
    """The bundle carries no witness co-signature (only the operator signed it)."""

    code = "missing_witness_signature"


class WitnessSignatureInvalid(TransparencyError):
    """The witness co-signature does not verify against the witness key we trust."""

    code = "bad_witness_signature"


class MeasurementNotAllowed(TransparencyError):
    """The record's firmware measurement is not one of the allowed (expected) ones."""

    code = "measurement_not_allowed"


class FleetMismatch(TransparencyError):
    """The record is for another fleet id than the one expected."""

    code = "fleet_mismatch"


class EpochReplayed(TransparencyError):
    """The record's epoch is older than (or, at the witness, not newer than) the last one."""

    code = "stale_epoch"


class RetirementWithdrawn(TransparencyError):
    """The record retires fewer epochs than the last one logged for its fleet: a retired
    epoch's nodes may be anyone's by now, so once retired, an epoch stays retired."""

    code = "retirement_withdrawn"


class LogRolledBack(TransparencyError):
    """The log's checkpoint is smaller than one already seen: the log lost entries."""

    code = "log_rolled_back"


class LogForked(TransparencyError):
    """The log showed two views that cannot both be true (same size, different roots; or
    a newer checkpoint that is not an extension of the older one)."""

    code = "log_forked"


class WitnessStoreCorrupt(TransparencyError):
    """The witness's database does not match what the witness signed before."""

    code = "store_corrupt"


class WitnessStoreInUse(TransparencyError):
    """Another witness process (or store) has the database open: one log, one writer."""

    code = "store_in_use"


class WitnessRolledBack(WitnessStoreCorrupt):
    """The witness's database is older than the last tree it signed (restored from a copy)."""

    code = "store_rolled_back"


class EpochRetired(TransparencyError):
    """A witness has logged a newer epoch of the fleet than the one offered."""

    code = "epoch_retired"


class HeadMismatch(TransparencyError):
    """A witness's fleet head names another record than the one offered."""

    code = "head_mismatch"


class StaleHead(TransparencyError):
    """The witness's statement that a record is current is too old (or from the future)."""

    code = "stale_head"
