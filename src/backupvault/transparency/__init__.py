"""Fleet transparency: deployment records, firmware measurement, operator and witness
signatures, the witness's append-only Merkle log, and the client's bundle check.

Formats and the threat model: docs/transparency.md. Only `backupvault.errors`,
`backupvault.codec` and `backupvault.crypto` are imported from the rest of the project.
The HTTP shell (`witness_http`) is not imported here, so using the formats does not pull
in Starlette.
"""

from backupvault.transparency.bundle import (
    ConsistencyProofFetcher,
    FleetBundle,
    VerifiedFleet,
    WitnessReceipt,
    check_log_growth,
    verify_bundle,
)
from backupvault.transparency.errors import (
    BadNoteSignature,
    ConsistencyProofInvalid,
    EpochReplayed,
    FleetMismatch,
    InclusionProofInvalid,
    LogForked,
    LogRolledBack,
    Malformed,
    MalformedNote,
    MeasurementNotAllowed,
    OperatorSignatureInvalid,
    TransparencyError,
    UnknownFleet,
    UnknownNoteKey,
    UnknownOperatorKey,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
    WitnessStoreCorrupt,
    WrongOrigin,
)
from backupvault.transparency.measure import FirmwareConfig, measure, measure_package
from backupvault.transparency.note import Checkpoint, Signer, Verifier, open_checkpoint
from backupvault.transparency.record import (
    DeploymentRecord,
    NodeEntry,
    OperatorSignedRecord,
    sign_record,
)
from backupvault.transparency.witness import Witness, WitnessConfig, WitnessPolicy

__all__ = [
    "BadNoteSignature",
    "Checkpoint",
    "ConsistencyProofFetcher",
    "ConsistencyProofInvalid",
    "DeploymentRecord",
    "EpochReplayed",
    "FirmwareConfig",
    "FleetBundle",
    "FleetMismatch",
    "InclusionProofInvalid",
    "LogForked",
    "LogRolledBack",
    "Malformed",
    "MalformedNote",
    "MeasurementNotAllowed",
    "NodeEntry",
    "OperatorSignatureInvalid",
    "OperatorSignedRecord",
    "Signer",
    "TransparencyError",
    "UnknownFleet",
    "UnknownNoteKey",
    "UnknownOperatorKey",
    "VerifiedFleet",
    "Verifier",
    "Witness",
    "WitnessConfig",
    "WitnessPolicy",
    "WitnessReceipt",
    "WitnessSignatureInvalid",
    "WitnessSignatureMissing",
    "WitnessStoreCorrupt",
    "WrongOrigin",
    "check_log_growth",
    "measure",
    "measure_package",
    "open_checkpoint",
    "sign_record",
    "verify_bundle",
]
