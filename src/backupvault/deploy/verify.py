"""Checking a running deployment against the public log, as anyone can: what
`backupvault verify-deployment` and `backupvault witness verify-log` do.

verify-deployment, for each fleet epoch the relay serves (or one bundle file): runs every
check a client runs (`verify_bundle`), reporting each one, then asks each node of the
record for `GET /v1/measurement` and compares the node's own measurement, fleet id and
epoch with the record. For the current fleet it also asks every witness given (the
bundle's witness and any others) for the fleet's head (transparency/head.py) and checks
that each names exactly this record as the latest, recently: two witnesses that were shown
different records, or a record retired since, fail here. The checkpoint is checked
against the last one remembered in a state file (the same JSON as a client's OTA state:
its "checkpoint" key), which is updated only when everything passed.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.transparency import (
    Checkpoint,
    FleetBundle,
    Verifier,
    check_log_growth,
    open_checkpoint,
    verify_bundle,
)
from backupvault.transparency.errors import (
    BadNoteSignature,
    EpochReplayed,
    FleetMismatch,
    HeadMismatch,
    InclusionProofInvalid,
    LogForked,
    LogRolledBack,
    MalformedNote,
    MeasurementNotAllowed,
    OperatorSignatureInvalid,
    TransparencyError,
    UnknownNoteKey,
    UnknownOperatorKey,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
    WrongOrigin,
)
from backupvault.transparency.head import DEFAULT_MAX_AGE, check_head, open_head
from backupvault.transparency.measure import FirmwareConfig, combine, measure_package
from backupvault.transparency.record import DeploymentRecord


class DeploymentCheckFailed(BackupVaultError):
    """A deployment or log check failed (the report says which)."""

    exit_code = 7


class LogCheckFailed(BackupVaultError):
    exit_code = 7


#: The client's checks in the order verify_bundle makes them, and what refuses each.
CHECKS: tuple[tuple[str, tuple[type[TransparencyError], ...]], ...] = (
    ("the bundle and record parse", ()),
    ("operator signature", (UnknownOperatorKey, OperatorSignatureInvalid)),
    ("fleet id", (FleetMismatch,)),
    ("witness cosignature", (WitnessSignatureMissing, WitnessSignatureInvalid)),
    (
        "witness checkpoint signature",
        (MalformedNote, UnknownNoteKey, BadNoteSignature, WrongOrigin),
    ),
    ("inclusion proof", (InclusionProofInvalid,)),
    ("log consistency with the last checkpoint seen", (LogRolledBack, LogForked)),
    ("measurement allow-list", (MeasurementNotAllowed,)),
    ("epoch not older than the last accepted", (EpochReplayed,)),
)


def _failed_check(err: TransparencyError) -> int:
    for position, (_, kinds) in enumerate(CHECKS):
        if kinds and isinstance(err, kinds):
            return position
    return 0  # Malformed (or anything else): the parsing step


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class FleetReport:
    epoch: int | None
    source: str
    checks: list[Check] = field(default_factory=list)
    record: DeploymentRecord | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        return {
            "source": self.source,
            "epoch": self.epoch,
            "fleet_id": None if record is None else record.fleet_id.hex(),
            "measurement": None if record is None else record.measurement.hex(),
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
        }

    def text(self) -> str:
        head = f"fleet epoch {self.epoch if self.epoch is not None else '?'} ({self.source})"
        if self.record is not None:
            head += f": fleet {self.record.fleet_id.hex()}, {len(self.record.nodes)} nodes"
        lines = [head]
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            lines.append(f"  {mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
        lines.append(f"  verdict: {'TRUSTED' if self.ok else 'REFUSED'}")
        return "\n".join(lines)


def load_checkpoint_state(path: Path | None) -> tuple[dict[str, Any], str | None]:
    if path is None or not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InvalidInput(f"the state file {path} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the state file {path} is not a JSON object")
    note = data.get("checkpoint")
    return data, note if isinstance(note, str) else None


def save_checkpoint_state(path: Path, data: dict[str, Any], note: str) -> None:
    data = {**data, "checkpoint": note}
    data.setdefault("version", 1)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def consistency_fetcher(http: httpx.Client, url: str) -> Callable[[int, int], Sequence[bytes]]:
    """`url` is the full consistency endpoint (a witness's /v1/consistency or a relay's
    /v1/fleet/consistency)."""

    def fetch(old: int, new: int) -> Sequence[bytes]:
        try:
            answer = http.get(url, params={"old": old, "new": new})
            answer.raise_for_status()
            return [base64.b64decode(h, validate=True) for h in answer.json()["proof"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            raise LogForked(
                f"no consistency proof from {old} to {new} entries could be fetched ({err})",
                hint="without it the newer checkpoint cannot be shown to extend the older one",
            ) from None

    return fetch


@dataclass(frozen=True)
class TrustInputs:
    operator_key: bytes
    witness: Verifier
    allowed_measurements: frozenset[bytes] | None = None
    fleet_id: bytes | None = None
    #: (key, base URL) of each witness asked for the current fleet's head; the first
    #: should be the bundle's witness.
    witnesses: tuple[tuple[Verifier, str], ...] = ()
    max_age: int = DEFAULT_MAX_AGE


def check_heads(
    report: FleetReport,
    leaf: bytes,
    trust: TrustInputs,
    http: httpx.Client,
    now: int,
) -> None:
    """One check per witness: its head for the fleet names this record, recently."""
    record = report.record
    assert record is not None
    for verifier, url in trust.witnesses:
        name = f"witness {verifier.name} head"
        try:
            answer = http.get(f"{url.rstrip('/')}/v1/head", params={"fleet": record.fleet_id.hex()})
            if answer.status_code == 404:
                raise HeadMismatch(f"{verifier.name} has logged no record of this fleet")
            answer.raise_for_status()
            head = open_head(answer.text, verifier)
            check_head(head, leaf, record.fleet_id, record.epoch, now=now, max_age=trust.max_age)
        except httpx.HTTPError as err:
            report.checks.append(Check(name, False, f"cannot ask the witness ({err})"))
            continue
        except TransparencyError as err:
            report.checks.append(Check(name, False, err.message))
            continue
        report.checks.append(
            Check(
                name,
                True,
                f"names this record (epoch {head.epoch}, leaf {head.leaf_index}) in its tree of"
                f" {head.checkpoint.size}, {now - head.time} s ago",
            )
        )


def check_bundle(
    bundle: bytes,
    source: str,
    trust: TrustInputs,
    last_checkpoint: Checkpoint | None,
    fetcher: Callable[[int, int], Sequence[bytes]] | None,
    accepted_epochs: dict[bytes, int] | None,
) -> tuple[FleetReport, Checkpoint | None]:
    report = FleetReport(None, source)
    try:
        parsed = FleetBundle.from_bytes(bundle)
        record = parsed.operator_signed.deployment()
        report.epoch, report.record = record.epoch, record
    except (TransparencyError, InvalidInput) as err:
        report.checks.append(Check(CHECKS[0][0], False, err.message))
        return report, None
    try:
        verified = verify_bundle(
            parsed,
            trust.operator_key,
            trust.witness.public_key,
            trust.witness.name,
            last_checkpoint,
            fetcher,
            accepted_epochs=accepted_epochs,
            allowed_measurements=trust.allowed_measurements,
            expected_fleet_id=trust.fleet_id,
        )
    except TransparencyError as err:
        failed = _failed_check(err)
        for name, _ in CHECKS[:failed]:
            report.checks.append(Check(name, True))
        report.checks.append(Check(CHECKS[failed][0], False, err.message))
        return report, None
    details = {
        "operator signature": f"key {trust.operator_key.hex()}",
        "witness cosignature": f"by {trust.witness.name}",
        "witness checkpoint signature": f"tree size {verified.checkpoint.size}",
        "inclusion proof": f"leaf {verified.leaf_index} of {verified.checkpoint.size}",
        "log consistency with the last checkpoint seen": (
            "no earlier checkpoint given (first use)"
            if last_checkpoint is None
            else f"extends the one of size {last_checkpoint.size}"
        ),
        "measurement allow-list": (
            "no allow-list given" if trust.allowed_measurements is None else "allowed"
        ),
        "epoch not older than the last accepted": (
            f"epoch {record.epoch}" + ("" if accepted_epochs is not None else " (older epoch)")
        ),
    }
    for name, _ in CHECKS:
        report.checks.append(Check(name, True, details.get(name, "")))
    return report, verified.checkpoint


def check_nodes(report: FleetReport, http: httpx.Client) -> None:
    """Ask every node of the record for its own measurement and compare."""
    record = report.record
    assert record is not None
    for node in record.nodes:
        name = f"node {node.index} measurement ({node.url})"
        try:
            answer = http.get(f"{node.url}/v1/measurement", timeout=3.0)
            answer.raise_for_status()
            data = answer.json()
            own = str(data["measurement"])
            fleet_id, epoch = str(data["fleet_id"]), data.get("epoch")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            report.checks.append(
                Check(name, False, f"cannot ask the node ({type(err).__name__}: {err})")
            )
            continue
        problems = []
        if own != record.measurement.hex():
            problems.append(f"runs {own}, the record names {record.measurement.hex()}")
        if fleet_id != record.fleet_id.hex():
            problems.append(f"belongs to fleet {fleet_id}")
        if epoch != record.epoch:
            problems.append(f"runs epoch {epoch}")
        report.checks.append(
            Check(name, not problems, "; ".join(problems) or f"matches ({own[:16]}…)")
        )


def local_measurement(record: DeploymentRecord, package_dir: Path | None = None) -> bytes:
    """This machine's package measured with the record's configuration."""
    return combine(measure_package(package_dir), FirmwareConfig.of_record(record))


def verify_deployment(
    trust: TrustInputs,
    *,
    relay_url: str | None = None,
    bundle_file: Path | None = None,
    state_file: Path | None = None,
    witness_url: str | None = None,
    check_node_measurements: bool = True,
    http: httpx.Client | None = None,
) -> list[FleetReport]:
    """Every fleet epoch the relay serves (or the one bundle file), checked."""
    client = http or httpx.Client(timeout=10.0, trust_env=False)
    state, note = load_checkpoint_state(state_file)
    last = None if note is None else open_checkpoint(note, trust.witness)
    accepted: dict[bytes, int] = {}
    for fid, fleet in state.get("fleets", {}).items():
        if isinstance(fleet, dict) and isinstance(fleet.get("epoch"), int):
            accepted[bytes.fromhex(fid)] = fleet["epoch"]

    sources: list[tuple[str, bytes, bool]] = []  # (where, bundle, is current)
    fetcher = None
    if relay_url is not None:
        relay_url = relay_url.rstrip("/")
        fetcher = consistency_fetcher(client, f"{relay_url}/v1/fleet/consistency")
        try:
            epochs = client.get(f"{relay_url}/v1/fleet/epochs")
            epochs.raise_for_status()
            previous = [int(e) for e in epochs.json()["previous"]]
            current = client.get(f"{relay_url}/v1/fleet/bundle")
            current.raise_for_status()
            sources.append((f"{relay_url}/v1/fleet/bundle", current.content, True))
            for epoch in previous:
                url = f"{relay_url}/v1/fleet/bundle?epoch={epoch}"
                answer = client.get(url)
                answer.raise_for_status()
                sources.append((url, answer.content, False))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            raise DeploymentCheckFailed(
                f"cannot fetch the fleet bundles from the relay at {relay_url}: {err}",
                hint="the relay must serve /v1/fleet/bundle (bundle_file in relay.toml)",
            ) from None
    if bundle_file is not None:
        try:
            sources.append((str(bundle_file), bundle_file.read_bytes(), True))
        except OSError as err:
            raise InvalidInput(f"cannot read {bundle_file}: {err.strerror}") from None
        if witness_url is not None:
            fetcher = consistency_fetcher(client, f"{witness_url.rstrip('/')}/v1/consistency")

    reports = []
    newest: Checkpoint | None = None
    newest_note: str | None = None
    for source, bundle, is_current in sources:
        report, checkpoint = check_bundle(
            bundle, source, trust, last, fetcher, accepted if is_current else None
        )
        if report.ok and report.record is not None and is_current and trust.witnesses:
            signed = FleetBundle.from_bytes(bundle).signed_record
            check_heads(report, signed, trust, client, int(time.time()))
        if report.ok and report.record is not None and check_node_measurements:
            check_nodes(report, client)
        if checkpoint is not None and (newest is None or checkpoint.size > newest.size):
            newest, newest_note = checkpoint, FleetBundle.from_bytes(bundle).checkpoint
        reports.append(report)
    if state_file is not None and newest_note is not None and all(r.ok for r in reports):
        save_checkpoint_state(state_file, state, newest_note)
    return reports


# ---- witness verify-log ---------------------------------------------------------------------


@dataclass(frozen=True)
class LogCheck:
    checkpoint: Checkpoint
    previous: Checkpoint | None
    vkey: str


def verify_log(
    url: str,
    verifier: Verifier,
    state_file: Path | None,
    http: httpx.Client | None = None,
) -> LogCheck:
    """Fetch the witness's checkpoint, verify it, and check that it extends the last one
    remembered in `state_file` (then remember it)."""
    client = http or httpx.Client(timeout=10.0, trust_env=False)
    url = url.rstrip("/")
    try:
        answer = client.get(f"{url}/v1/checkpoint")
        answer.raise_for_status()
    except httpx.HTTPError as err:
        raise LogCheckFailed(
            f"cannot fetch the checkpoint from {url}: {err}",
            hint="check the witness URL (backupvault witness serve)",
        ) from None
    state, note = load_checkpoint_state(state_file)
    try:
        checkpoint = open_checkpoint(answer.text, verifier)
        previous = None if note is None else open_checkpoint(note, verifier)
        check_log_growth(checkpoint, previous, consistency_fetcher(client, f"{url}/v1/consistency"))
    except (LogForked, LogRolledBack) as err:
        raise LogCheckFailed(
            f"the witness log is not consistent with what we saw before: {err.message}",
            hint=(err.hint or "")
            + f"; the state file {state_file} keeps the earlier checkpoint as evidence",
        ) from None
    except TransparencyError as err:
        raise LogCheckFailed(
            f"the witness checkpoint does not verify: {err.message}",
            hint="check the witness key (--vkey) and URL",
        ) from None
    if state_file is not None:
        state["vkey"] = verifier.vkey()
        save_checkpoint_state(state_file, state, answer.text)
    return LogCheck(checkpoint, previous, verifier.vkey())
