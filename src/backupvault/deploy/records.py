"""Deployment records for a fleet: make one from `fleet.toml`, sign it with the operator's
key, have the witness log it, and keep the bundle clients receive.

Files next to `fleet.toml`:

    deployment.bin   the OperatorSignedRecord (docs/transparency.md, tag 0x52)
    bundle.bin       the FleetBundle (record + operator signature + witness cosignature +
                     inclusion proof + checkpoint), which the relay serves to clients
    deployment.pending.bin
                     the record signed by a deploy that has not finished (a witness
                     could not be reached or refused): the next deploy of the same
                     fleet.toml sends it again rather than a new one (`sign_deployment`)

`fleet.toml` gets the record's `epoch` and `measurement` (hex), which each node checks
against its own measurement when it starts.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.codec import untrusted_json
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import read_at_most, replace_file
from backupvault.http_answers import AnswerRefused, read_answer, untrusted_client
from backupvault.node.config import FleetDescription
from backupvault.transparency import (
    DeploymentRecord,
    FleetBundle,
    OperatorSignedRecord,
    TransparencyError,
    Verifier,
    WitnessReceipt,
    sign_record,
    verify_bundle,
)
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES
from backupvault.transparency.record import raw_public_key

RECORD_FILE = "deployment.bin"
BUNDLE_FILE = "bundle.bin"
PENDING_FILE = "deployment.pending.bin"


class WitnessRefused(BackupVaultError):
    """The witness did not log the record (or could not be reached)."""


class ReceiptInvalid(InvalidInput):
    """The witness's receipt does not prove that it cosigned and logged the record: clients
    would refuse the bundle (exit 7, as a fleet that is not trusted)."""

    exit_code = 7


def check_receipt(bundle: FleetBundle, witness: Verifier, witness_url: str) -> None:
    """Refuse (ReceiptInvalid) a bundle whose cosignature or checkpoint is not by `witness`,
    or whose record is not in that checkpoint's tree: the checks a client makes, before the
    bundle is published rather than after every client refused it."""
    signed = bundle.operator_signed
    try:
        verify_bundle(bundle, signed.operator_public_key, witness.public_key, witness.name, None)
    except TransparencyError as err:
        raise ReceiptInvalid(
            f"the receipt from the witness at {witness_url} does not check out with the key of"
            f" {witness.name}: {err.message}",
            hint="nothing was written; check that --witness-key is that witness's vkey (`GET"
            " /v1/witness` shows it), and that nothing between you and the witness alters"
            " its answers",
        ) from None


def deployment_record(
    fleet: FleetDescription, epoch: int, measurement: bytes, now: int
) -> DeploymentRecord:
    return DeploymentRecord.create(
        fleet_id=fleet.fleet_id,
        epoch=epoch,
        guess_limit=fleet.guess_limit,
        quorum=fleet.quorum,
        nodes=[
            (n.index, n.identity_public_key, n.hpke_public_key, n.signing_public_key, n.url)
            for n in fleet.nodes
        ],
        measurement=measurement,
        time=now,
        relay_public_keys=fleet.relay_public_keys,
        account_issuer=fleet.account_issuer,
        account_issuer_public_key=fleet.account_issuer_public_key,
        retired_below=fleet.retired_below,
    )


def retirement(
    fleet: FleetDescription, previous: FleetDescription | None, retire_below: int | None, epoch: int
) -> int:
    """The epochs the new record retires (those below the number returned): what the fleet
    file (and, in a rotation, the previous one) retired already, or `retire_below`, which
    may only add to it. A retired epoch stays retired: its nodes may be anyone's by now."""
    retired = max(fleet.retired_below, 0 if previous is None else previous.retired_below)
    if retire_below is None:
        return retired
    if retire_below < retired:
        raise InvalidInput(
            f"this fleet's epochs below {retired} are retired already; a retired epoch stays"
            " retired",
            hint=f"give --retire-below {retired} or higher, or leave it out",
        )
    if retire_below > epoch:
        raise InvalidInput(
            f"--retire-below {retire_below} would retire the new record itself (epoch {epoch})",
            hint=f"retire at most the epochs below {epoch}",
        )
    return retire_below


def next_epoch(fleet: FleetDescription, previous: FleetDescription | None) -> int:
    """1 for a fleet never deployed; the previous deployment's epoch + 1 otherwise (a
    rotation to new keys names the old fleet file; an upgrade re-deploys the same one)."""
    if previous is not None:
        if previous.fleet_id != fleet.fleet_id:
            raise InvalidInput(
                "the previous fleet file is for another fleet id",
                hint="a rotation keeps the fleet id: copy fleet_id into the new fleet.toml",
            )
        if previous.epoch is None:
            raise InvalidInput(
                "the previous fleet file has no epoch: it was never deployed",
                hint="run `backupvault fleet deploy` on it first, or give --epoch",
            )
        return previous.epoch + 1
    return 1 if fleet.epoch is None else fleet.epoch + 1


def deploy(
    fleet_file: Path,
    operator_key: Ed25519PrivateKey,
    *,
    epoch: int,
    package_dir: Path | None = None,
    now: int | None = None,
    retired_below: int | None = None,
) -> OperatorSignedRecord:
    """Measure, make and sign the deployment record; write `deployment.bin` next to
    `fleet_file` and the epoch and measurement into it."""
    signed, fleet = sign_deployment(
        fleet_file,
        operator_key,
        epoch=epoch,
        package_dir=package_dir,
        now=now,
        retired_below=retired_below,
    )
    write_deployment(fleet_file, signed, fleet)
    return signed


def sign_deployment(
    fleet_file: Path,
    operator_key: Ed25519PrivateKey,
    *,
    epoch: int,
    package_dir: Path | None = None,
    now: int | None = None,
    retired_below: int | None = None,
) -> tuple[OperatorSignedRecord, FleetDescription]:
    """The signed record and the fleet description with its epoch, measurement and
    retirement (`retired_below`; default: the fleet file's), both in memory only
    (`write_deployment` saves them): a deploy whose witness submission fails changes no
    file the nodes, the relay or clients read.

    The signed record is kept in `PENDING_FILE` until then, and a later deploy whose record
    is the same but for its time sends that one again: a witness that logged it answers
    with the receipt it gave. A new record of the epoch (another time, so other bytes) was
    refused by every witness that had logged the first (`EpochReplayed`), so a deploy
    that one of several witnesses failed could not be run again: only with --epoch one
    higher (an epoch burnt), and `local upgrade`, which takes none, never."""
    fleet = FleetDescription.load(fleet_file)
    if retired_below is not None:
        fleet = replace(fleet, retired_below=retired_below)
    measurement = fleet.measure(package_dir)
    record = deployment_record(fleet, epoch, measurement, int(time.time()) if now is None else now)
    signed = _pending(fleet_file, record, operator_key) or sign_record(record, operator_key)
    replace_file(fleet_file.parent / PENDING_FILE, signed.to_bytes(), mode=0o644)  # public
    return signed, replace(fleet, epoch=epoch, measurement=measurement)


def _pending(
    fleet_file: Path, record: DeploymentRecord, operator_key: Ed25519PrivateKey
) -> OperatorSignedRecord | None:
    """The record an unfinished deploy signed (`PENDING_FILE`), if `operator_key` signed
    it and it is `record` but for its time; None otherwise (none, damaged, another)."""
    try:
        data = read_at_most(
            fleet_file.parent / PENDING_FILE, MAX_BUNDLE_BYTES, "any deployment record", hint=""
        )
        signed = OperatorSignedRecord.from_bytes(data)
        earlier = signed.verify(raw_public_key(operator_key))
    except (OSError, BackupVaultError):
        return None
    return signed if replace(earlier, time=record.time) == record else None


def write_deployment(
    fleet_file: Path, signed: OperatorSignedRecord, fleet: FleetDescription
) -> None:
    # Whole or not at all, as the bundle beside it: `fleet deploy --resubmit` and auditors
    # read it, and a crash mid-write left it cut short.
    replace_file(fleet_file.parent / RECORD_FILE, signed.to_bytes(), mode=0o644)
    fleet.save(fleet_file)
    (fleet_file.parent / PENDING_FILE).unlink(missing_ok=True)  # deployed: nothing pending


def deployed_record(fleet_file: Path) -> OperatorSignedRecord:
    """The `deployment.bin` beside `fleet_file`, checked to be the record that fleet.toml
    was last deployed with (its fleet id, epoch and measurement): `fleet deploy
    --resubmit` sends it to a new witness, which logs whatever epoch it is given, and an
    older epoch's record (a copy from another folder, or restored from a backup) ended in
    a bundle.bin of a retired epoch, which every client refuses."""
    path = fleet_file.parent / RECORD_FILE
    fleet = FleetDescription.load(fleet_file)
    redeploy = f"`backupvault fleet deploy --fleet-file {fleet_file}` writes it"
    if fleet.epoch is None or fleet.measurement is None:
        raise InvalidInput(
            f"{fleet_file} was never deployed: it names no epoch, so there is no record to"
            " resubmit",
            hint=f"{redeploy} (with --witness for each witness)",
        )
    try:
        data = read_at_most(path, MAX_BUNDLE_BYTES, "any deployment record", hint=redeploy)
        signed = OperatorSignedRecord.from_bytes(data)
        record = signed.deployment()
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}", hint=redeploy) from None
    except (TransparencyError, InvalidInput) as err:
        raise InvalidInput(
            f"{path} is not a deployment record: {err.message}",
            hint=f"restore the deployment.bin that `fleet deploy` wrote beside {fleet_file}",
        ) from None
    deployed = (fleet.fleet_id, fleet.epoch, fleet.measurement)
    if (record.fleet_id, record.epoch, record.measurement) != deployed:
        raise InvalidInput(
            f"{path} is not the record {fleet_file} was deployed with: it is fleet"
            f" {record.fleet_id.hex()} epoch {record.epoch}, measurement"
            f" {record.measurement.hex()[:16]}…; {fleet_file} names fleet {fleet.fleet_id.hex()}"
            f" epoch {fleet.epoch}, measurement {fleet.measurement.hex()[:16]}…; nothing was sent",
            hint="give the fleet.toml and deployment.bin that the last `fleet deploy` wrote"
            " together: a new witness logs an older epoch it is given, and a bundle of a"
            " retired one is refused by every client",
        )
    return signed


def submit(
    witness_url: str,
    signed: OperatorSignedRecord,
    http: httpx.Client | None = None,
    witness: Verifier | None = None,
) -> FleetBundle:
    """Have the witness check and log `signed`; the bundle for clients, checked with the
    witness's key when one is given (`check_receipt`)."""
    client = http or untrusted_client(10.0, trust_env=False)
    url = f"{witness_url.rstrip('/')}/v1/submit"
    try:
        answer = read_answer(
            client,
            "POST",
            url,
            limit=MAX_BUNDLE_BYTES,  # a receipt is far smaller than a bundle
            what="the witness's answer",
            content=signed.to_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
    except AnswerRefused as err:
        raise WitnessRefused(
            err.message,
            hint="nothing was written; the witness (or what answers in its place) is broken",
        ) from None
    except httpx.HTTPError as err:
        raise WitnessRefused(
            f"cannot reach the witness at {witness_url}: {err}",
            hint="check that `backupvault witness serve` runs there",
        ) from None
    finally:
        if http is None:
            client.close()
    if answer.status_code != 200:
        # The witness's JSON error, or whatever a proxy in its place said (any shape).
        try:
            body = untrusted_json(answer.content, "the witness's answer")
        except InvalidInput:
            body = None
        said = body.get("detail") if isinstance(body, dict) else None
        # Cut short either way: whatever answers in the witness's place chooses its length.
        detail = (answer.text if said is None else str(said))[:200]
        raise WitnessRefused(
            f"the witness refused the deployment record ({answer.status_code}): {detail}",
            hint="the witness must know this fleet id and operator key (its witness.toml), "
            "and the epoch must be larger than the last one it logged",
        )
    try:
        receipt = WitnessReceipt.from_bytes(answer.content)
    except TransparencyError as err:  # no receipt at all (a missing cosignature included)
        raise ReceiptInvalid(
            f"the witness at {witness_url} answered with no valid receipt: {err.message}",
            hint="nothing was written; the witness (or what answers in its place) is broken",
        ) from None
    bundle = FleetBundle.from_receipt(signed, receipt)
    if witness is not None:
        check_receipt(bundle, witness, witness_url)
    return bundle


def save_bundle(fleet_file: Path, bundle: FleetBundle) -> Path:
    path = fleet_file.parent / BUNDLE_FILE
    replace_file(path, bundle.to_bytes(), mode=0o644)  # public: the relay serves it
    return path
