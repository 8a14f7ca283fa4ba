"""Checking a running deployment against the public log, as anyone can: what
`backupvault verify-deployment` and `backupvault witness verify-log` do.

verify-deployment, for each fleet epoch the relay serves (or one bundle file): runs every
check a client runs (`verify_bundle`), reporting each one, then asks each node of the
record for `GET /v1/measurement` and compares the node's own measurement, fleet id and
epoch with the record. For the current fleet it also asks every witness given (the
bundle's witness and any others) for the fleet's head (transparency/head.py) and checks
that each names exactly this record as the latest, recently: two witnesses that were shown
different records, or a record retired since, fail here; with no witness to ask, that
check fails as "not checked" (a retired epoch would pass for the current one).

A node or witness that does not answer (a connection error, a timeout, 502/503/504) is
reported as unreachable, not as a mismatch: the fleet's verdict is then INCOMPLETE (no
check failed, but not everything was verified), not REFUSED.

The checkpoint and each fleet's epoch are checked against the last ones remembered in a
state file (the same JSON as a client's OTA state: its "checkpoint" and
"fleets"/<id>/"epoch" keys), which is updated only when everything passed, and never
to a smaller checkpoint or an older epoch. A state file that pins a fleet (a client's:
`client.trust.pinned_fleet`) expects that fleet, as the client does, and never gets
another one added: a client's own state file given here must not unpin it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from backupvault.client.trust import (
    STATE_ATTEMPTS,
    StateMoved,
    grew_apart,
    pin_conflict,
    pinned_fleet,
)
from backupvault.codec import MAX_JSON, epoch_number, untrusted_json
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import MAX_STATE_BYTES, locked, read_at_most, replace_file
from backupvault.http_answers import SERVER_DOWN, AnswerRefused, read_answer, untrusted_client
from backupvault.transparency import (
    Checkpoint,
    FleetBundle,
    Verifier,
    check_log_growth,
    open_checkpoint,
    verify_bundle,
)
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES
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
from backupvault.transparency.note import MAX_NOTE_BYTES
from backupvault.transparency.record import DeploymentRecord


class DeploymentCheckFailed(BackupVaultError):
    """A deployment or log check failed (the report says which)."""

    exit_code = 7


class DeploymentUnreachable(BackupVaultError):
    """The relay, or a node or witness, did not answer: not everything could be checked,
    but nothing that answered failed a check (exit 5, like an unavailable fleet)."""

    exit_code = 5


class LogCheckFailed(BackupVaultError):
    exit_code = 7


def unreachable(err: httpx.HTTPError) -> bool:
    """The server did not answer (an outage), as opposed to answering something wrong."""
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code in SERVER_DOWN
    return isinstance(err, httpx.TransportError)


class ProofUnavailable(Exception):
    """No consistency proof could be had now: the server did not answer, or asked to wait
    (429: the relay's bucket per address). Not evidence of a fork."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def http_failure(err: httpx.HTTPError) -> str:
    """What went wrong, on one line: httpx's text for an error status adds a second line
    pointing at developer.mozilla.org."""
    if isinstance(err, httpx.HTTPStatusError):
        request = err.request
        return f"HTTP {err.response.status_code} for {request.method} {request.url}"
    return f"{type(err).__name__}: {err}"


def _failed_request(name: str, whom: str, err: httpx.HTTPError) -> Check:
    """The failed check of asking `whom`: unreachable (not verified), or refused."""
    if unreachable(err):
        detail = f"unreachable: not verified ({http_failure(err)})"
        return Check(name, False, detail, unreachable=True)
    return Check(name, False, f"cannot ask the {whom} ({http_failure(err)})")


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
    #: Not made: the node or witness did not answer (then `ok` is False too).
    unreachable: bool = False

    @property
    def status(self) -> str:
        return "ok" if self.ok else "unreachable" if self.unreachable else "failed"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "status": self.status, "detail": self.detail}


@dataclass
class FleetReport:
    epoch: int | None
    source: str
    checks: list[Check] = field(default_factory=list)
    record: DeploymentRecord | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        """TRUSTED (every check passed), REFUSED (one failed) or INCOMPLETE (none failed,
        but a node or witness did not answer)."""
        if self.ok:
            return "TRUSTED"
        return "INCOMPLETE" if all(c.ok or c.unreachable for c in self.checks) else "REFUSED"

    def as_dict(self) -> dict[str, Any]:
        record = self.record
        return {
            "source": self.source,
            "epoch": self.epoch,
            "fleet_id": None if record is None else record.fleet_id.hex(),
            "measurement": None if record is None else record.measurement.hex(),
            "retired_below": None if record is None else record.retired_below,
            "ok": self.ok,
            "verdict": self.verdict.lower(),
            "checks": [c.as_dict() for c in self.checks],
        }

    def text(self) -> str:
        head = f"fleet epoch {self.epoch if self.epoch is not None else '?'} ({self.source})"
        if self.record is not None:
            head += f": fleet {self.record.fleet_id.hex()}, {len(self.record.nodes)} nodes"
            if self.record.retired_below:
                head += f", retires the epochs below {self.record.retired_below}"
        lines = [head]
        for check in self.checks:
            mark = {"ok": "ok  ", "failed": "FAIL", "unreachable": "??  "}[check.status]
            lines.append(f"  {mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
        verdict = self.verdict
        if verdict == "INCOMPLETE":
            verdict += " (not every node or witness answered; nothing that answered failed)"
        lines.append(f"  verdict: {verdict}")
        return "\n".join(lines)


def read_bundle_file(path: Path) -> bytes:
    """A bundle file's bytes, read no further than the largest bundle can be: a path such
    as /dev/zero, a FIFO or a huge file took all the memory there was."""
    try:
        return read_at_most(
            path,
            MAX_BUNDLE_BYTES,
            "any fleet bundle",
            hint="give the bundle.bin that `fleet deploy --witness` wrote",
        )
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}") from None


_Result = TypeVar("_Result")

_STATE_HINT = "give the file an earlier --state run wrote, or a new path to start one"


def load_checkpoint_state(path: Path | None) -> tuple[dict[str, Any], str | None]:
    if path is None or not path.exists():
        return {}, None
    try:
        data = json.loads(read_at_most(path, MAX_STATE_BYTES, "any state file", _STATE_HINT))
    except (OSError, ValueError, RecursionError) as err:
        detail = "nested too deeply" if isinstance(err, RecursionError) else err
        raise InvalidInput(f"the state file {path} is unreadable: {detail}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the state file {path} is not a JSON object")
    note = data.get("checkpoint")
    return data, note if isinstance(note, str) else None


def state_checkpoint(path: Path | None, note: str | None, verifier: Verifier) -> Checkpoint | None:
    """The checkpoint a state file remembers, opened with the witness's key. One that does
    not open is the file's fault (another witness's state file, or a damaged one), not the
    log's: an InvalidInput naming the file, never a fork (exit 7)."""
    if note is None:
        return None
    try:
        return open_checkpoint(note, verifier)
    except (TransparencyError, InvalidInput) as err:
        raise InvalidInput(
            f"the state file {path} remembers a checkpoint that does not verify with the key of"
            f" {verifier.name}: {err.message}",
            hint="each witness needs its own --state file: give this witness's own (another"
            " witness's, or a damaged one, cannot be used), or a new path to start one",
        ) from None


def check_kept_heads(path: Path | None, state: Mapping[str, Any], trust: TrustInputs) -> None:
    """Each head the state file kept for a witness that will be asked opens with that
    witness's key: one that does not is the file's fault, said before anything is asked,
    rather than a failed witness check (exit 7, "do not trust this fleet")."""
    heads = state.get("heads")
    if not isinstance(heads, dict):
        return
    for verifier, _ in trust.witnesses:
        kept = heads.get(verifier.name)
        if not isinstance(kept, str) or (verifier.name, verifier.key_id) == (
            trust.witness.name,
            trust.witness.key_id,
        ):
            continue  # the bundle witness's head is not read from the file
        try:
            open_head(kept, verifier)
        except (TransparencyError, InvalidInput) as err:
            raise InvalidInput(
                f"the state file {path} keeps a head of {verifier.name} that does not verify"
                f" with its key: {err.message}",
                hint="give the state file that witness's heads were kept in with this key, or a"
                " new path to start one",
            ) from None


def consistency_fetcher(http: httpx.Client, url: str) -> Callable[[int, int], Sequence[bytes]]:
    """`url` is the full consistency endpoint (a witness's /v1/consistency or a relay's
    /v1/fleet/consistency)."""

    def fetch(old: int, new: int) -> Sequence[bytes]:
        try:
            answer = read_answer(
                http,
                "GET",
                url,
                params={"old": old, "new": new},
                limit=MAX_JSON,
                what="the consistency proof",
            )
            answer.raise_for_status()
            proof = untrusted_json(answer.content, "the consistency proof")["proof"]
            return [base64.b64decode(h, validate=True) for h in proof]
        except httpx.HTTPError as err:
            if unreachable(err) or (
                isinstance(err, httpx.HTTPStatusError) and err.response.status_code == 429
            ):
                raise ProofUnavailable(
                    f"no consistency proof from {old} to {new} entries now ({http_failure(err)})"
                ) from None
            raise LogForked(
                f"no consistency proof from {old} to {new} entries could be fetched"
                f" ({http_failure(err)})",
                hint="without it the newer checkpoint cannot be shown to extend the older one",
            ) from None
        except (BackupVaultError, ValueError, KeyError, TypeError) as err:
            detail = err.message if isinstance(err, BackupVaultError) else err
            raise LogForked(
                f"no consistency proof from {old} to {new} entries could be fetched ({detail})",
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
    seen: Checkpoint,
    kept_heads: Mapping[str, object] | None = None,
) -> tuple[Checkpoint, str] | None:
    """One check per witness: its head for the fleet names this record, recently; the
    bundle witness's head also extends `seen` (the larger of the bundle's checkpoint and
    the state's), and another witness's the head of it that a client's state file kept
    (`kept_heads`, by witness name), as a client checks them. Returns the bundle witness's
    head (checkpoint, note) if it passed."""
    record = report.record
    assert record is not None
    bundle_witness_head = None
    for verifier, url in trust.witnesses:
        name = f"witness {verifier.name} head"
        try:
            answer = read_answer(
                http,
                "GET",
                f"{url.rstrip('/')}/v1/head",
                params={"fleet": record.fleet_id.hex()},
                limit=MAX_NOTE_BYTES,
                what=f"the fleet head from {verifier.name}",
            )
            if answer.status_code == 404:
                raise HeadMismatch(f"{verifier.name} has logged no record of this fleet")
            answer.raise_for_status()
            head = open_head(answer.text, verifier)
            check_head(head, leaf, record.fleet_id, record.epoch, now=now, max_age=trust.max_age)
            if (verifier.name, verifier.key_id) == (trust.witness.name, trust.witness.key_id):
                # The head is of the log the bundle's receipt (and the state) came from:
                # else a record from one history passes with a head from another, both
                # signed by this witness's key.
                fetch = consistency_fetcher(http, f"{url.rstrip('/')}/v1/consistency")
                check_log_growth(head.checkpoint, seen, fetch)
                bundle_witness_head = head.checkpoint, answer.text
            elif isinstance(kept := (kept_heads or {}).get(verifier.name), str):
                try:
                    last = open_head(kept, verifier).checkpoint
                except TransparencyError as err:
                    raise InvalidInput(
                        f"the state file's head of {verifier.name} does not verify with its"
                        f" key: {err.message}"
                    ) from None
                fetch = consistency_fetcher(http, f"{url.rstrip('/')}/v1/consistency")
                check_log_growth(head.checkpoint, last, fetch)
        except httpx.HTTPError as err:
            report.checks.append(_failed_request(name, "witness", err))
            continue
        except ProofUnavailable as err:
            detail = f"unreachable: not verified ({err.detail})"
            report.checks.append(Check(name, False, detail, unreachable=True))
            continue
        except (TransparencyError, AnswerRefused, InvalidInput) as err:
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
    return bundle_witness_head


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
    except (TransparencyError, ProofUnavailable) as err:
        # An unavailable proof leaves the log-consistency check (and those after it) not
        # made: INCOMPLETE, as for a witness or node that does not answer.
        failed = _failed_check(err if isinstance(err, TransparencyError) else LogForked(""))
        for name, _ in CHECKS[:failed]:
            report.checks.append(Check(name, True))
        if isinstance(err, ProofUnavailable):
            detail = f"unreachable: not verified ({err.detail})"
            report.checks.append(Check(CHECKS[failed][0], False, detail, unreachable=True))
        else:
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
            answer = read_answer(
                http,
                "GET",
                f"{node.url}/v1/measurement",
                timeout=3.0,
                limit=MAX_JSON,
                what="its answer",
            )
            answer.raise_for_status()
        except httpx.HTTPError as err:
            report.checks.append(_failed_request(name, "node", err))
            continue
        except AnswerRefused as err:
            report.checks.append(Check(name, False, f"answers no measurement: {err.message}"))
            continue
        try:
            data = untrusted_json(answer.content, "its answer")
            if not isinstance(data, dict):
                raise InvalidInput("its answer is not a JSON object")
            own, fleet_id = data.get("measurement"), data.get("fleet_id")
            if not isinstance(own, str) or not isinstance(fleet_id, str):
                raise InvalidInput("its answer names no measurement and fleet id")
            epoch = epoch_number(data.get("epoch"), "the epoch it names")
        except InvalidInput as err:
            report.checks.append(Check(name, False, f"answers no measurement: {err.message}"))
            continue
        problems = []
        if own != record.measurement.hex():
            problems.append(f"runs {own[:64]}, the record names {record.measurement.hex()}")
        if fleet_id != record.fleet_id.hex():
            problems.append(f"belongs to fleet {fleet_id[:64]}")
        if epoch != record.epoch:
            problems.append(f"runs epoch {epoch}")
        report.checks.append(
            Check(name, not problems, "; ".join(problems) or f"matches ({own[:16]}…)")
        )


def local_measurement(record: DeploymentRecord, package_dir: Path | None = None) -> bytes:
    """This machine's package measured with the record's configuration."""
    return combine(measure_package(package_dir), FirmwareConfig.of_record(record))


def load_accepted_epochs(path: Path | None, state: dict[str, Any]) -> dict[bytes, int]:
    """Each fleet's last epoch remembered in the state file ("fleets"/<id hex>/"epoch")."""
    accepted: dict[bytes, int] = {}
    fleets = state.get("fleets", {})
    try:
        if not isinstance(fleets, dict):
            raise InvalidInput("'fleets' is not an object")
        for fid, fleet in fleets.items():
            if isinstance(fleet, dict) and "epoch" in fleet:
                accepted[bytes.fromhex(fid)] = epoch_number(fleet["epoch"], f"fleet {fid}'s epoch")
    except (InvalidInput, ValueError) as err:
        detail = err.message if isinstance(err, InvalidInput) else "a fleet id is not hex"
        raise InvalidInput(f"the state file {path} is malformed: {detail}") from None
    return accepted


def state_pin(path: Path | None, state: dict[str, Any]) -> bytes | None:
    """The fleet the state file pins (`pinned_fleet`), or None."""
    try:
        return pinned_fleet(state)
    except InvalidInput as err:
        raise InvalidInput(f"the state file {path} is malformed: {err.message}") from None


def remember(
    state: dict[str, Any],
    last: Checkpoint | None,
    newest: tuple[Checkpoint, str] | None,
    reports: Sequence[FleetReport],
    path: Path,
) -> dict[str, Any]:
    """`state` with the newest checkpoint seen if it is at least as large as the one
    remembered (never a smaller one, as TrustState.remember_checkpoint), and each current
    fleet's epoch if it is newer (the other keys, such as an OTA client's records, kept).
    No fleet but the one it pins is added to a state that pins one (InvalidInput), and a
    pin derived from a file of an older version is written as "fleet_id"."""
    pinned = state_pin(path, state)
    for report in reports:
        if report.record is not None and pinned not in (None, report.record.fleet_id):
            raise pin_conflict(path, pinned, report.record.fleet_id)
    state = dict(state)
    if pinned is not None:
        state["fleet_id"] = pinned.hex()
    if newest is not None and (last is None or newest[0].size >= last.size):
        state["checkpoint"] = newest[1]
    fleets = dict(state.get("fleets", {}))
    for report in reports:
        record = report.record
        if record is None:
            continue
        known = fleets.get(record.fleet_id.hex())
        fleet = dict(known) if isinstance(known, dict) else {}
        fleet["epoch"] = max(fleet.get("epoch", record.epoch), record.epoch)
        fleets[record.fleet_id.hex()] = fleet
    state["fleets"] = fleets
    state.setdefault("version", 1)
    return state


#: How long a save waits for another process (a client of this device) to finish with the
#: state file.
STATE_LOCK_SECONDS = 30.0


def save_state(
    path: Path,
    basis: str | None,
    new: str,
    update: Callable[[dict[str, Any], str | None], dict[str, Any]],
) -> None:
    """Save `update(state, its checkpoint note)` of the state file as it is now, under the
    file's lock (`files.locked`, as OTA clients take it): a client of this device may have
    saved a newer epoch, head or trusted time since this run loaded the file, and a copy
    loaded earlier saved over it would take them back. Durably: the checkpoint kept here
    must never go back after a crash either. StateMoved when `new`, the checkpoint this
    run verified against `basis` (the one it loaded), and the one saved meanwhile are two
    trees neither proven to hold the other (`grew_apart`): the run verifies again."""
    with locked(path, timeout=STATE_LOCK_SECONDS):
        state, note = load_checkpoint_state(path)
        if grew_apart(basis, note, new):
            raise StateMoved
        data = update(state, note)
        replace_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def again_while_moved(run: Callable[[], _Result], state_file: Path | None) -> _Result:
    """`run()`, run again (at most STATE_ATTEMPTS times in all) while its save finds that
    another process moved the state file (StateMoved)."""
    for _ in range(STATE_ATTEMPTS):
        try:
            return run()
        except StateMoved:
            continue
    raise DeploymentUnreachable(
        f"the state file {state_file} kept changing while this ran (other processes of this"
        " device saving checkpoints at the same time)",
        hint="nothing was saved; run it again",
    )


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
    return again_while_moved(
        lambda: _verify_deployment(
            trust,
            relay_url=relay_url,
            bundle_file=bundle_file,
            state_file=state_file,
            witness_url=witness_url,
            check_node_measurements=check_node_measurements,
            http=http,
        ),
        state_file,
    )


def _verify_deployment(
    trust: TrustInputs,
    *,
    relay_url: str | None,
    bundle_file: Path | None,
    state_file: Path | None,
    witness_url: str | None,
    check_node_measurements: bool,
    http: httpx.Client | None,
) -> list[FleetReport]:
    client = http or untrusted_client(10.0, trust_env=False)
    state, note = load_checkpoint_state(state_file)
    last = state_checkpoint(state_file, note, trust.witness)
    check_kept_heads(state_file, state, trust)
    accepted = load_accepted_epochs(state_file, state)
    # A client's state file pins its first fleet: that is the fleet expected, as the client
    # expects it, and a run for another one must not add it there (which unpins the client).
    pinned = state_pin(state_file, state)
    if pinned is not None:
        assert state_file is not None  # (no file: no pin)
        if trust.fleet_id is not None and trust.fleet_id != pinned:
            raise pin_conflict(state_file, pinned, trust.fleet_id)
        trust = replace(trust, fleet_id=pinned)

    # (where, bundle, is current, the epoch the relay listed it as: None for the current)
    sources: list[tuple[str, bytes, bool, int | None]] = []
    fetcher = None
    if relay_url is not None:
        relay_url = relay_url.rstrip("/")
        fetcher = consistency_fetcher(client, f"{relay_url}/v1/fleet/consistency")
        try:
            epochs = read_answer(
                client,
                "GET",
                f"{relay_url}/v1/fleet/epochs",
                limit=MAX_JSON,
                what="the relay's list of fleet epochs",
            )
            epochs.raise_for_status()
            listed = untrusted_json(epochs.content, "the relay's list of fleet epochs")
            previous = [epoch_number(e, "an epoch the relay lists") for e in listed["previous"]]
            bundles: list[tuple[str, str, int | None]] = [
                (f"{relay_url}/v1/fleet/bundle", "the fleet bundle", None)
            ]
            bundles += [
                (f"{relay_url}/v1/fleet/bundle?epoch={e}", f"the bundle of epoch {e}", e)
                for e in previous
            ]
            for url, what, listed_as in bundles:
                answer = read_answer(client, "GET", url, limit=MAX_BUNDLE_BYTES, what=what)
                answer.raise_for_status()
                sources.append((url, answer.content, listed_as is None, listed_as))
        except AnswerRefused as err:
            raise DeploymentCheckFailed(
                f"the relay at {relay_url} answered too much: {err.message}", hint=err.hint
            ) from None
        except httpx.HTTPError as err:
            if unreachable(err):
                raise DeploymentUnreachable(
                    f"cannot reach the relay at {relay_url}: {http_failure(err)}",
                    hint="nothing was checked; try again when the relay answers",
                ) from None
            raise DeploymentCheckFailed(
                f"cannot fetch the fleet bundles from the relay at {relay_url}:"
                f" {http_failure(err)}",
                hint="check that --relay is the relay's URL (a node or a witness answers 404"
                " there); the relay must serve /v1/fleet/epochs and /v1/fleet/bundle"
                " (bundle_file in relay.toml)",
            ) from None
        except (InvalidInput, KeyError, TypeError) as err:
            detail = err.message if isinstance(err, InvalidInput) else "no list 'previous'"
            raise DeploymentCheckFailed(
                f"the relay at {relay_url} lists its fleet epochs malformed: {detail}",
                hint='GET /v1/fleet/epochs must answer {"current": E, "previous": [...]}',
            ) from None
    if bundle_file is not None:
        sources.append((str(bundle_file), read_bundle_file(bundle_file), True, None))
        if witness_url is not None:
            fetcher = consistency_fetcher(client, f"{witness_url.rstrip('/')}/v1/consistency")

    reports: list[FleetReport] = []
    newest: tuple[Checkpoint, str] | None = None
    for source, bundle, is_current, listed_as in sources:
        # An older epoch's bundle is checked against the largest tree seen, this run's
        # head included, as a client checks it against the head it just accepted: a
        # witness's other history was reported TRUSTED, and its checkpoint kept (review s60).
        seen = last if is_current or newest is None else _larger(last, newest[0])
        report, checkpoint = check_bundle(
            bundle, source, trust, seen, fetcher, accepted if is_current else None
        )
        if listed_as is not None and report.record is not None:
            _check_listed_epoch(report, listed_as, reports[0].record if reports else None)
        if pinned is not None:
            _name_the_pin(report, state_file)
        if report.ok and report.record is not None and is_current:
            if trust.witnesses:
                assert checkpoint is not None  # the bundle passed
                signed = FleetBundle.from_bytes(bundle).signed_record
                seen = checkpoint if last is None or checkpoint.size > last.size else last
                heads = state.get("heads")
                head = check_heads(
                    report,
                    signed,
                    trust,
                    client,
                    int(time.time()),
                    seen,
                    heads if isinstance(heads, dict) else None,
                )
                if head is not None and (newest is None or head[0].size > newest[0].size):
                    newest = head  # the witness's tree now: what a client keeps too
            else:
                report.checks.append(Check(*NO_HEAD))
        if report.ok and report.record is not None and check_node_measurements:
            check_nodes(report, client)
        if checkpoint is not None and (newest is None or checkpoint.size > newest[0].size):
            newest = checkpoint, FleetBundle.from_bytes(bundle).checkpoint
        reports.append(report)
    _check_retired(reports, [listed_as for _, _, _, listed_as in sources])
    if state_file is not None and newest is not None and all(r.ok for r in reports):
        shown = [r for r, (_, _, now, _) in zip(reports, sources, strict=True) if now]
        witness = trust.witness
        save_state(
            state_file,
            note,
            newest[1],
            lambda now, kept: remember(
                now,
                None if kept is None else open_checkpoint(kept, witness),
                newest,
                shown,
                state_file,
            ),
        )
    return reports


def _larger(one: Checkpoint | None, other: Checkpoint) -> Checkpoint:
    return other if one is None or other.size > one.size else one


def _check_listed_epoch(
    report: FleetReport, listed_as: int, current: DeploymentRecord | None
) -> None:
    """The bundle the relay serves for an epoch it lists is that epoch's, of the current
    fleet: the current bundle served for a retired epoch passed the "not retired" check on
    the epoch inside it (review s60); a client refuses such a bundle."""
    record = report.record
    assert record is not None
    fleet_ok = current is None or record.fleet_id == current.fleet_id
    if record.epoch != listed_as or not fleet_ok:
        report.checks.append(
            Check(
                "the epoch listed",
                False,
                f"the relay lists epoch {listed_as} and serves a bundle of epoch"
                f" {record.epoch} of fleet {record.fleet_id.hex()} for it",
            )
        )


def _check_retired(reports: list[FleetReport], listed: list[int | None]) -> None:
    """An older epoch the relay lists (`listed`: the epoch each report's bundle was listed
    as, None for the current) that the current record retires fails: clients ask it
    nothing, and an honest relay refuses to route one (docs/transparency.md, "Retiring an
    epoch"); one that does is misconfigured, or sends clients to nodes that may be
    anyone's by now. The epoch listed is checked, not the one inside the bundle served."""
    retiring = [r.record for r, e in zip(reports, listed, strict=True) if e is None and r.record]
    if not retiring:
        return
    record = retiring[0]
    for report, epoch in zip(reports, listed, strict=True):
        if epoch is not None and epoch < record.retired_below:
            report.checks.append(
                Check(
                    "not retired",
                    False,
                    f"the current record (epoch {record.epoch}) retires the epochs below"
                    f" {record.retired_below}, yet the relay lists this one",
                )
            )


def _name_the_pin(report: FleetReport, state_file: Path | None) -> None:
    """A failed fleet id check says that the fleet expected is the state file's pin."""
    for check in report.checks:
        if check.name == "fleet id" and not check.ok:
            check.detail += (
                f" (the fleet the state file {state_file} pins: an OTA client using it accepts"
                " no other; to check another fleet, give another --state file)"
            )


#: The current fleet's head check when no witness URL was given: failed, for without a
#: witness's head a retired epoch passes for the current one.
NO_HEAD = (
    "fleet head at the witness",
    False,
    "not checked: give --witness-url (without a witness's head for the fleet, a retired"
    " epoch the relay still serves cannot be told from the current one)",
)


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
    return again_while_moved(lambda: _verify_log(url, verifier, state_file, http), state_file)


def _verify_log(
    url: str, verifier: Verifier, state_file: Path | None, http: httpx.Client | None
) -> LogCheck:
    # The state file first: one that cannot be used is said before the witness is asked
    # (docs/cli.md), not hidden behind an outage's "run it again" (exit 5) until it answers.
    _, note = load_checkpoint_state(state_file)
    previous = state_checkpoint(state_file, note, verifier)
    client = http or untrusted_client(10.0, trust_env=False)
    url = url.rstrip("/")
    try:
        answer = read_answer(
            client,
            "GET",
            f"{url}/v1/checkpoint",
            limit=MAX_NOTE_BYTES,
            what=f"the checkpoint from {url}",
        )
        answer.raise_for_status()
    except httpx.HTTPError as err:
        # An outage is not evidence of a fork: exit 5, as verify-deployment's unreachable
        # witness, so a monitor that alerts on 7 does not cry tampering.
        if unreachable(err):
            raise DeploymentUnreachable(
                f"the witness at {url} did not answer: {http_failure(err)}",
                hint="nothing was checked (the state file is unchanged); run it again when"
                " the witness answers, and check the URL if it never does",
            ) from None
        raise LogCheckFailed(
            f"cannot fetch the checkpoint from {url}: {http_failure(err)}",
            hint="check the witness URL (backupvault witness serve)",
        ) from None
    except AnswerRefused as err:
        raise LogCheckFailed(err.message, hint=err.hint) from None
    try:
        checkpoint = open_checkpoint(answer.text, verifier)
        check_log_growth(checkpoint, previous, consistency_fetcher(client, f"{url}/v1/consistency"))
    except ProofUnavailable as err:
        raise DeploymentUnreachable(
            f"the witness at {url} gave its checkpoint but no consistency proof: {err.detail}",
            hint="nothing was decided (the state file is unchanged); run it again later",
        ) from None
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

        def update(now: dict[str, Any], kept: str | None) -> dict[str, Any]:
            # Never a smaller checkpoint than one saved since this run loaded the file.
            larger = kept is not None and open_checkpoint(kept, verifier).size > checkpoint.size
            note = kept if larger else answer.text
            return {"version": 1, **now, "vkey": verifier.vkey(), "checkpoint": note}

        save_state(state_file, note, answer.text, update)
    return LogCheck(checkpoint, previous, verifier.vkey())
