"""Simulated vault clients on the threshold flow (docs/threshold.md): the real client-side
crypto (`crypto.manifest`, `crypto.threshold`, `crypto.oprf`, `crypto.owner`) speaking the
threshold messages (`protocol.py`) to every node at once.

Each flow is a generator that yields a `Call` (one request per node, as the relay's
fan-out delivers them) and receives the answers that came back, by node (a node that did
not answer in time is missing). The seeded world (`world.py`) runs flows as events; the
same flows run synchronously for the hostile-node tests (`world.ThresholdClient`). Retries
follow the SDK (`client/threshold.py`): a fan-out with too few answers is resent with the
same bytes (a resent (attempt, B) is answered again without a second charge). Each
client is one device: like the SDK it keeps what it owes the fleet (`client.pending`,
in memory) and finishes it as the SDK does (`finish`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backupvault.client.pending import Due, Pending, PendingStore
from backupvault.client.threshold import (
    EMPTY_REREADS,
    EVALUATE_PATIENCE_SECONDS,
    EVALUATE_RESENDS,
    STALE_ATTEMPT_RETRIES,
    elsewhere,
    empty_to_read_again,
    superseded,
    undecided,
    version_spent,
)
from backupvault.codec import Message
from backupvault.crypto import ksf, manifest, oprf, owner, threshold
from backupvault.crypto.seal import NodePublicKey
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    DeleteShareRequest,
    DeliverShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ResetResponse,
    ShareAck,
    encode_commit_acks,
    share_ack_message,
)

# Argon2id at its cheapest: the manifest carries real KSF parameters.
SIM_KSF = ksf.Argon2idParams(
    memory_kib=8, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)

OPS = ("register", "recover_right", "recover_wrong", "change_password", "delete", "status")

#: Fan-outs of one call while too few nodes gave a usable answer (the SDK's resends).
TRIES = 3


@dataclass(frozen=True)
class Call:
    op: Op
    requests: tuple[Message, ...]  # request i goes to node i
    resend: bool = False  # the same call again (the world waits a little first)
    #: A new attempt after an overtaken one (the world waits a little first, as for a resend).
    again: bool = False


Answers = dict[int, Message]
Flow = Generator[Call, Answers, "Outcome"]


class ClientViolation(Exception):
    """A client saw something the vault must never do (a wrong password opened the entry,
    or the entry opened to a root key other than the registered one)."""


@dataclass
class Outcome:
    text: str
    acks: int = 0
    registration: manifest.Registration | None = None
    export_key: bytes = b""
    root_key: bytes = b""
    agreed: manifest.Manifest | None = None
    #: Share indices whose partial did not verify (the client names those nodes).
    rejected: tuple[int, ...] = ()
    #: Why the flow could not go on (re-raised by the synchronous client).
    error: AuthenticationFailed | None = None
    #: Another attempt was counted in between and took the partials this one lacked.
    superseded: bool = False


@dataclass
class Credentials:
    """Ghost knowledge: which password and root key each manifest was registered with."""

    by_manifest: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)

    def add(self, encoded: bytes, password: bytes, root_key: bytes) -> None:
        self.by_manifest[encoded] = (password, root_key)


@dataclass
class FlowContext:
    account: str
    entry: str
    fleet_id: bytes
    epoch: int
    nodes: int
    threshold: int
    signing_keys: tuple[Ed25519PublicKey, ...]  # each node's, from the deployment record
    credentials: Credentials
    rng: random.Random
    current_password: Callable[[], bytes | None]  # of the committed manifest, if live
    now_ms: Callable[[], int]  # the client's clock (evaluate carries it)
    #: The observer's hook: the owner opened the entry (version, SHA-256(B)).
    on_success: Callable[[int, bytes], None] = lambda version, blinded: None
    #: Each node's HPKE key, from the deployment record (owed shares are sealed to it).
    sealing_keys: tuple[NodePublicKey, ...] = ()
    #: What this device still owes the fleet, as the SDK's pending file (in memory).
    pending: PendingStore = field(default_factory=lambda: PendingStore(None))
    #: The simulated time, in seconds: how long an evaluation has been resent (without
    #: one, its patience is spent at once: the EVALUATE_RESENDS resends only).
    now: Callable[[], float] = lambda: math.inf

    def fresh_password(self) -> bytes:
        return f"pw-{self.rng.getrandbits(40):010x}".encode()


def _transient(answer: Message | None) -> bool:
    return answer is None or (
        isinstance(answer, ErrorResponse) and answer.code == ErrorCode.FLEET_UNAVAILABLE
    )


def _codes(answers: Answers) -> list[str]:
    return [a.code for a in answers.values() if isinstance(a, ErrorResponse)]


def _changed(ctx: FlowContext, codes: list[str]) -> bool:
    """Whether fewer than t nodes are left at the version read, because the others moved
    to another one (a password change or delete from another device)."""
    return codes.count(ErrorCode.STALE_MANIFEST) > ctx.nodes - ctx.threshold


def fetch_manifest(
    ctx: FlowContext, again: bool = False, reread: bool = False, confirm: bool = False
) -> Generator[Call, Answers, tuple[Answers, Outcome]]:
    """The manifest answers, and an Outcome holding the agreed manifest (t identical), or
    the reason there is none (no entry, destroyed, or not enough agreeing nodes). `again`:
    the first read starts a new attempt after an overtaken one; `reread`: it asks again
    (both after a pause). As the SDK's `_manifests`, one read may ask each node for a
    round first: with `confirm` the first, else the first resend after t or more answers."""
    answers: Answers = {}
    failure = AuthenticationFailed("no manifest fetched")
    ask = confirm
    empty_rereads = 0
    for attempt in itertools.count():
        if attempt == TRIES + empty_rereads:  # as the SDK: the rereads come on top
            break
        request = ManifestRequest(ctx.account, ctx.entry, confirm=ask)
        answers = yield Call(
            Op.MANIFEST,
            (request,) * ctx.nodes,
            resend=attempt > 0 or reread,
            again=again and not attempt,
        )
        answered = sum(not _transient(a) for a in answers.values())
        ask = attempt == 0 and not confirm and answered >= ctx.threshold  # once, the first resend
        live = {
            slot: a.manifest
            for slot, a in answers.items()
            if isinstance(a, ManifestResponse) and a.manifest
        }
        try:
            agreed = manifest.agreed_manifest(live, ctx.threshold)
        except AuthenticationFailed as err:
            failure = err
            status = _status_of(ctx, answers)
            responses = (a for a in answers.values() if isinstance(a, ManifestResponse))
            if (
                status == "empty"
                and empty_rereads < EMPTY_REREADS
                and empty_to_read_again(responses)
            ):
                # As the SDK: t say "empty" but not of one version, or beside a live
                # manifest; read again, the first time asking for a round (reviews s58, s62).
                ask = empty_rereads == 0 and not request.confirm
                empty_rereads += 1
                continue
            if status != "unavailable":
                break  # enough nodes say there is no live entry
            continue
        return answers, Outcome("manifest", agreed=agreed)
    return answers, Outcome(_status_of(ctx, answers), error=failure)


def _status_of(ctx: FlowContext, answers: Answers) -> str:
    statuses = [a.status for a in answers.values() if isinstance(a, ManifestResponse)]
    for status, name in ((EntryStatus.DESTROYED, "destroyed"), (EntryStatus.EMPTY, "empty")):
        if statuses.count(status) >= ctx.threshold:
            return name
    return "unavailable"


def _version_after(ctx: FlowContext, answers: Answers) -> int:
    """The version a new registration takes: above the t-th highest version answered
    (fewer than t hostile nodes cannot raise it)."""
    versions = sorted(
        (a.version for a in answers.values() if isinstance(a, ManifestResponse)), reverse=True
    )
    return (versions[ctx.threshold - 1] if len(versions) >= ctx.threshold else 0) + 1


def _ack_verifies(
    ctx: FlowContext, slot: int, answer: Message | None, kind: AckKind, held: manifest.Manifest
) -> bool:
    if not isinstance(answer, ShareAck) or answer.index != slot + 1 or answer.kind != kind:
        return False
    if answer.version != held.version:
        return False
    signed = share_ack_message(
        kind,
        ctx.fleet_id,
        ctx.account,
        ctx.entry,
        held.version,
        held.commitments.node_public_key(slot + 1),
        held.to_bytes(),
    )
    try:
        ctx.signing_keys[slot].verify(answer.signature, signed)
    except InvalidSignature:
        return False
    return True


def deal(ctx: FlowContext, password: bytes, root_key: bytes, version: int) -> manifest.Registration:
    """A fresh k dealt to this fleet's shape: the manifest and every node's share."""
    made = manifest.register(
        password,
        root_key,
        fleet_id=ctx.fleet_id,
        account=ctx.account,
        entry=ctx.entry,
        epoch=ctx.epoch,
        nodes=ctx.nodes,
        threshold_count=ctx.threshold,
        ksf=SIM_KSF,
        version=version,
    )
    ctx.credentials.add(made.manifest.to_bytes(), password, root_key)
    return made


def deliver(
    ctx: FlowContext,
    op: Op,
    made: manifest.Registration,
    authorization: bytes = b"",
    counter: int = 0,
) -> Flow:
    """Stage share i with M on node i, then commit M with t staged acknowledgements
    (docs/threshold.md, "Stage, then commit"); counts the nodes that acknowledge holding
    their share after the commit."""
    encoded = made.manifest.to_bytes()
    requests = tuple(
        RegisterShareRequest(
            ctx.account, ctx.entry, encoded, share.to_bytes(), authorization, counter
        )
        for share in made.shares
    )
    staged: dict[int, ShareAck] = {}
    codes: list[str] = []
    for attempt in range(TRIES):
        answers = yield Call(op, requests, resend=attempt > 0)
        for slot, answer in answers.items():
            if (
                slot not in staged
                and isinstance(answer, ShareAck)
                and any(
                    _ack_verifies(ctx, slot, answer, kind, made.manifest)
                    for kind in (AckKind.STAGED, AckKind.HELD)
                )
            ):
                staged[slot] = answer
        codes = _codes(answers)
        if all(slot in staged or not _transient(answers.get(slot)) for slot in range(ctx.nodes)):
            break
    if len(staged) < ctx.threshold:
        if ErrorCode.ALREADY_REGISTERED in codes:
            return Outcome("already registered", acks=0, registration=made)
        if _changed(ctx, codes):
            # As the SDK (`EntryChanged`): another device changed or deleted the key.
            return Outcome("entry changed", acks=0, registration=made)
        return Outcome(f"unavailable ({len(staged)} staged)", acks=0, registration=made)
    chosen = [staged[slot] for slot in sorted(staged)[: ctx.threshold]]
    acks = encode_commit_acks([CommitAck(a.index, AckKind(a.kind), a.signature) for a in chosen])
    commit = CommitSharesRequest(ctx.account, ctx.entry, encoded, authorization, counter, acks)
    # As the SDK (`_deliver`): every node's share, sealed to it, kept before the commit
    # goes out (M may land unseen); what the nodes then acknowledge is struck off.
    owed = Pending.of_shares(
        fleet_id=ctx.fleet_id,
        account=ctx.account,
        entry=ctx.entry,
        manifest=encoded,
        version=made.manifest.version,
        shares=made.shares,
        node_keys=ctx.sealing_keys,
        nodes=tuple(range(ctx.nodes)),
    )
    _keep(ctx, owed)
    acked: set[int] = set()
    for attempt in range(TRIES):
        answers = yield Call(Op.COMMIT_SHARES, (commit,) * ctx.nodes, resend=attempt > 0)
        acked |= {
            slot
            for slot, answer in answers.items()
            if _ack_verifies(ctx, slot, answer, AckKind.HELD, made.manifest)
        }
        if all(slot in acked or not _transient(answers.get(slot)) for slot in range(ctx.nodes)):
            break
    unacked = tuple(slot for slot in range(ctx.nodes) if slot not in acked)
    if len(acked) >= ctx.threshold:
        # Committed: t nodes staged their share, and promote it as they take M.
        _keep(ctx, replace(owed, nodes=unacked))
        text = "registered" if len(acked) == ctx.nodes else "registered (degraded)"
        return Outcome(text, acks=len(acked), registration=made)
    # As the SDK (`_commit_shares`): fewer than t HELD may all be hostile nodes', so the
    # agreed manifest tells whether M is in effect; another device's M of this version in
    # effect means this one never will be (seeds 10335034, 10335079 with a hostile node).
    answers, found = yield from fetch_manifest(ctx)
    if found.agreed is not None and found.agreed.to_bytes() == encoded:
        _keep(ctx, replace(owed, nodes=unacked))
        return Outcome("registered (degraded)", acks=len(acked), registration=made)
    if found.agreed is not None and found.agreed.version >= made.manifest.version:
        text = "entry changed" if authorization else "already registered"
        return Outcome(text, acks=0, registration=made)
    if found.agreed is None and authorization and found.text in ("empty", "destroyed"):
        # As the SDK: the key this change was authorized on was deleted or destroyed
        # (seeds 10610087, 10610234 with a hostile node).
        text = "entry changed" if found.text == "empty" else "destroyed"
        return Outcome(text, acks=0, registration=made)
    held = ((a.version, a.manifest) for a in answers.values() if isinstance(a, ManifestResponse))
    if not authorization and version_spent(held, encoded, made.manifest.version, ctx.threshold):
        # As the SDK: another device's registration of this version
        # took effect and was deleted since (seed 10363016).
        return Outcome("entry changed", acks=0, registration=made)
    return Outcome(f"unavailable ({len(acked)} acks)", acks=len(acked), registration=made)


def _keep(ctx: FlowContext, record: Pending) -> None:
    """As the SDK's `_keep_pending`: what some nodes did not acknowledge is kept; a record
    every node acknowledged is forgotten."""
    if record.nodes:
        ctx.pending.put(record)
    else:
        ctx.pending.drop(record.key)


def _forget_changes_of(ctx: FlowContext, version: int) -> None:
    """As the SDK's: `version` is deleted, so the shares kept for a later version (a
    password change of it that never committed) can never take effect."""
    for record in ctx.pending.owed(ctx.fleet_id, ctx.account, ctx.entry, ctx.epoch):
        if record.op is Op.REGISTER_SHARE and record.version > version:
            ctx.pending.drop(record.key)


def finish(
    ctx: FlowContext,
    live: manifest.Manifest | None,
    answered: set[int],
    *,
    status: EntryStatus = EntryStatus.LIVE,
    version: int = 0,
    tries: int = TRIES,
) -> Generator[Call, Answers, None]:
    """As the SDK's `finish`: what this device owes the entry, sent again (by rising
    version) where `Pending.due` says so, to nodes of which one answered just now
    (`answered`); what is acknowledged is struck off, what the entry moved past dropped.
    The sim's records are all sealed to their nodes (none needs the export_key)."""
    for record in ctx.pending.owed(ctx.fleet_id, ctx.account, ctx.entry, ctx.epoch):
        due = record.due(live, status, version)
        if due is Due.DROP:
            ctx.pending.drop(record.key)
            continue
        if due is Due.HELD_BACK or not set(record.nodes) & answered:
            continue
        held = manifest.Manifest.from_bytes(record.manifest)
        if record.op is Op.DELETE_SHARE:
            # As the SDK's `_finish_erasure`: one fan-out, no resend.
            request = DeleteShareRequest(
                ctx.account, ctx.entry, record.version, record.counter, record.authorization
            )
            answers = yield Call(Op.DELETE_SHARE, (request,) * ctx.nodes)
            kind = AckKind.ERASED
        else:
            requests = tuple(
                DeliverShareRequest(ctx.account, ctx.entry, record.manifest, sealed)
                for sealed in record.shares
            )
            answers = {}
            for attempt in range(tries):
                got = yield Call(Op.DELIVER_SHARE, requests, resend=attempt > 0)
                answers.update(
                    (slot, a)
                    for slot, a in got.items()
                    if _ack_verifies(ctx, slot, a, AckKind.HELD, held)
                )
                if not any(_transient(got.get(s)) for s in record.nodes if s not in answers):
                    break
            kind = AckKind.HELD
        done = {s for s in record.nodes if _ack_verifies(ctx, s, answers.get(s), kind, held)}
        ctx.pending.acknowledged(record, done)


def register(ctx: FlowContext, password: bytes, root_key: bytes, version: int = 0) -> Flow:
    """A new entry; `version` 0: the one after what the nodes report."""
    if not version:
        answers, found = yield from fetch_manifest(ctx)
        if found.agreed is not None:
            return Outcome("already registered")
        version = _version_after(ctx, answers)
    made = deal(ctx, password, root_key, version)
    return (yield from deliver(ctx, Op.REGISTER_SHARE, made))


def _answered(answers: Answers) -> set[int]:
    return {slot for slot, a in answers.items() if isinstance(a, ManifestResponse)}


Live = tuple[Answers, Outcome, set[int]]


def _live(
    ctx: FlowContext, again: bool = False, reads: range = range(TRIES), before: Live | None = None
) -> Generator[Call, Answers, Live]:
    """As the SDK's `_live`: the agreed manifest and the nodes that answered holding a share
    of it, read again (the first fan-out of each read asking the nodes to confirm with a
    round) while fewer than t did and some other node gave no answer or one that may
    soon join the others (`elsewhere`: a node about to take M and promote its staged
    share, or a delete one node holds already; seeds 10342053, 11100072, 11100324,
    11300256). `reads`, `before`: the reads left after `before`."""
    answers, found, holders = before or ({}, Outcome("no manifest fetched"), set())
    holders = set(holders)
    agreed_before = found.agreed.to_bytes() if found.agreed is not None else b""
    for attempt in reads:
        confirm = attempt > 0 and sum(not _transient(a) for a in answers.values()) >= ctx.threshold
        answers, found = yield from fetch_manifest(ctx, again and not attempt, attempt > 0, confirm)
        if found.agreed is None:
            return answers, found, set()
        encoded = found.agreed.to_bytes()
        if encoded != agreed_before:
            holders, agreed_before = set(), encoded
        holders |= {
            slot
            for slot, a in answers.items()
            if isinstance(a, ManifestResponse) and a.manifest == encoded and a.holds_share
        }
        if not _waiting(ctx, answers, holders, found.agreed):
            break
    return answers, found, holders


def _waiting(
    ctx: FlowContext, answers: Answers, holders: set[int], agreed: manifest.Manifest
) -> bool:
    """Fewer than t holders, and some other node gave no answer or one that may soon join
    the others (the SDK's `elsewhere`): worth reading again."""
    return len(holders) < ctx.threshold and any(
        _transient(answer := answers.get(s))
        or (isinstance(answer, ManifestResponse) and elsewhere(answer, agreed))
        for s in range(ctx.nodes)
        if s not in holders
    )


def _fetch_after_owed_deliveries(
    ctx: FlowContext, again: bool = False
) -> Generator[Call, Answers, Live]:
    """As the SDK's `_deliver_owed_first`: after the first read and after each read that
    follows while fewer than t holders answered and a node was silent, shares owed for
    the agreed manifest go out (one try each) to owed nodes that answered it and were not
    sent theirs yet, not after the reads that wait (another device's recovery may wait
    on them too: seed 10451914); once a node took its share, the manifests are read
    again, so this recovery can use it."""
    live = yield from _live(ctx, again, range(1))
    sent: set[tuple[bytes, int]] = set()  # (M, node) sent its share in this recovery
    for attempt in range(1, TRIES + 1):
        answers, found, holders = live
        if found.agreed is None:
            return live
        encoded = found.agreed.to_bytes()
        owed = _owed_register_shares(ctx, encoded)
        answered = _answered(answers)
        due = {n for r in owed for n in r.nodes if n in answered} - {
            n for m, n in sent if m == encoded
        }
        if due:
            sent |= {(encoded, n) for n in due}
            yield from finish(ctx, found.agreed, due, tries=1)
            if _owed_register_shares(ctx, encoded) != owed:
                return (yield from _live(ctx))  # taken: read again
        if not _waiting(ctx, answers, holders, found.agreed) or attempt == TRIES:
            return live
        live = yield from _live(ctx, reads=range(attempt, attempt + 1), before=live)
    raise AssertionError("unreachable")


def _owed_register_shares(ctx: FlowContext, manifest: bytes) -> list[Pending]:
    return [
        r
        for r in ctx.pending.owed(ctx.fleet_id, ctx.account, ctx.entry, ctx.epoch)
        if r.op is Op.REGISTER_SHARE and r.manifest == manifest
    ]


def recover(ctx: FlowContext, password: bytes) -> Flow:
    """The root key behind `password`: agreed manifest, every node's partial checked
    against K_i from it, combined, opened, and a signed reset to every node. As the SDK's
    `recover`: an attempt overtaken by another one is made again, after a pause."""
    for retry in range(STALE_ATTEMPT_RETRIES + 1):
        outcome = yield from _recover_once(ctx, password, again=retry > 0)
        if not outcome.superseded:
            break
    return outcome


def _recover_once(ctx: FlowContext, password: bytes, again: bool) -> Flow:
    answers, found, holding = yield from _fetch_after_owed_deliveries(ctx, again)
    if found.agreed is None:
        return found
    agreed = found.agreed
    answered = _answered(answers)
    holders = len(holding)
    if holders < ctx.threshold:
        # As the SDK: an attempt that could only fail is not sent, so no guess is counted.
        failure = threshold.NotEnoughPartials(
            f"{holders} nodes hold a share; nothing was sent for evaluation", rejected=()
        )
        return Outcome(f"unavailable ({holders} share holders)", agreed=agreed, error=failure)
    blind, blinded = oprf.blind(password)
    request = EvaluateRequest(ctx.account, ctx.entry, agreed.version, blinded, ctx.now_ms())
    good: dict[int, EvaluateResponse] = {}
    rejected: set[int] = set()
    codes: list[str] = []
    # Resent as the SDK resends it: at least EVALUATE_RESENDS times, and while its patience
    # lasts (the attempt is counted: giving up on a slow node spends the guess for nothing).
    # With three tries only, a delete after the heal gave up with two partials while the
    # third was on its way (seed 11821457, session 60).
    give_up = ctx.now() + EVALUATE_PATIENCE_SECONDS
    for attempt in itertools.count():
        answers = yield Call(Op.EVALUATE, (request,) * ctx.nodes, resend=attempt > 0)
        codes = _codes(answers)
        for slot, answer in answers.items():
            if not isinstance(answer, EvaluateResponse) or answer.index != slot + 1:
                continue
            try:
                verifies = threshold.verify_partial(agreed.commitments, blinded, answer.partial())
            except InvalidInput:
                verifies = False
            if verifies:
                good[slot] = answer
                rejected.discard(slot + 1)
            elif slot not in good:
                rejected.add(slot + 1)
        # Resend while t good partials can still come (as the SDK does): one node's
        # refusal (no share, destroyed) does not stop the others' resend.
        waiting = sum(
            1
            for slot in range(ctx.nodes)
            if slot not in good and slot + 1 not in rejected and _transient(answers.get(slot))
        )
        stale = codes.count(ErrorCode.STALE_ATTEMPT)
        if (
            len(good) >= ctx.threshold
            or (
                len(good) + waiting < ctx.threshold
                and not undecided(len(good), stale, waiting, ctx.threshold)
            )
            or (attempt >= EVALUATE_RESENDS and ctx.now() >= give_up)
        ):
            break
    try:
        combination = threshold.combine(
            agreed.commitments, blinded, [a.partial() for a in good.values()]
        )
    except threshold.NotEnoughPartials as err:
        failure = threshold.NotEnoughPartials(err.message, rejected=tuple(sorted(rejected)))
        if _changed(ctx, codes):
            # As the SDK (`EntryChanged`): the manifest read is out of date, no guess used.
            return Outcome("entry changed", agreed=agreed, rejected=failure.rejected, error=failure)
        if ErrorCode.NOT_REGISTERED in codes or ErrorCode.STALE_MANIFEST in codes:
            # As the SDK (`_moved_since`): a node that held a share at the read holds none
            # now, or a later value; if another device deleted or changed the key
            # meanwhile, say so (seeds 10363041, 10363059, 10377367 with two hostile
            # nodes). Reading costs no guess.
            _, now = yield from fetch_manifest(ctx, reread=True)
            if now.agreed is None and now.text in ("empty", "destroyed"):
                text = "entry changed" if now.text == "empty" else "destroyed"
                return Outcome(text, agreed=agreed, rejected=failure.rejected, error=failure)
            if now.agreed is not None and now.agreed.to_bytes() != agreed.to_bytes():
                return Outcome(
                    "entry changed", agreed=agreed, rejected=failure.rejected, error=failure
                )
        text = "destroyed" if ErrorCode.DESTROYED in codes else "unavailable"
        return Outcome(
            f"{text} ({len(good)} partials)",
            rejected=failure.rejected,
            error=failure,
            # Before the liars count, as the SDK (seeds 10347053, 10347203 with a hostile node).
            superseded=superseded(len(good), codes.count(ErrorCode.STALE_ATTEMPT), ctx.threshold),
        )
    output = oprf.finalize(password, blind, combination.evaluated)
    registered = ctx.credentials.by_manifest.get(agreed.to_bytes())
    try:
        export_key, root_key = manifest.open_entry(agreed, output)
    except AuthenticationFailed:
        if registered is not None and registered[0] == password:
            raise ClientViolation("the registered password did not open its entry") from None
        left = sorted((a.guesses_remaining for a in good.values()), reverse=True)
        return Outcome(
            f"wrong password ({left[ctx.threshold - 1]} left)",
            agreed=agreed,
            rejected=tuple(sorted(rejected)),
        )
    if registered is None or registered[0] != password:
        raise ClientViolation("a password that was never registered opened the entry")
    if root_key != registered[1]:
        raise ClientViolation("the entry opened to a root key other than the registered one")
    ctx.on_success(agreed.version, owner.payload_hash(blinded))
    # Prove the password to every node, each with its own attempt number.
    default = sorted(a.attempt for a in good.values())[len(good) // 2]
    resets = []
    for slot in range(ctx.nodes):
        attempt = good[slot].attempt if slot in good else default
        statement = owner.OwnerStatement(
            owner.StatementKind.RESET,
            ctx.fleet_id,
            ctx.account,
            ctx.entry,
            agreed.version,
            attempt,
            owner.payload_hash(blinded),
        )
        signature = owner.sign_statement(export_key, statement)
        resets.append(ResetRequest(ctx.account, ctx.entry, agreed.version, attempt, signature))
    done: set[int] = set()
    for attempt in range(TRIES):
        answers = yield Call(Op.RESET, tuple(resets), resend=attempt > 0)
        done |= {slot for slot, a in answers.items() if isinstance(a, ResetResponse)}
        if all(slot in done or not _transient(answers.get(slot)) for slot in range(ctx.nodes)):
            break
    # As the SDK: one try, and only if an owed node answered the manifest read.
    yield from finish(ctx, agreed, answered, tries=1)
    return Outcome(
        "recovered",
        export_key=export_key,
        root_key=root_key,
        agreed=agreed,
        rejected=tuple(sorted(rejected)),
    )


def change_password(
    ctx: FlowContext, recovered: Outcome, new_password: bytes, counter: int = 0
) -> Flow:
    """A fresh k for version + 1, authorized by the old owner's CHANGE_PASSWORD statement
    over the new manifest."""
    assert recovered.agreed is not None
    made = deal(ctx, new_password, recovered.root_key, recovered.agreed.version + 1)
    counter = counter or ctx.now_ms()
    statement = owner.OwnerStatement(
        owner.StatementKind.CHANGE_PASSWORD,
        ctx.fleet_id,
        ctx.account,
        ctx.entry,
        recovered.agreed.version,
        counter,
        owner.payload_hash(made.manifest.to_bytes()),
    )
    signature = owner.sign_statement(recovered.export_key, statement)
    return (yield from deliver(ctx, Op.CHANGE_SHARE, made, signature, counter))


def delete(ctx: FlowContext, recovered: Outcome, counter: int = 0) -> Flow:
    """The owner's DELETE statement over M to every node; counts verified erasures."""
    agreed = recovered.agreed
    assert agreed is not None
    counter = counter or ctx.now_ms()
    statement = owner.OwnerStatement(
        owner.StatementKind.DELETE,
        ctx.fleet_id,
        ctx.account,
        ctx.entry,
        agreed.version,
        counter,
        owner.payload_hash(agreed.to_bytes()),
    )
    signature = owner.sign_statement(recovered.export_key, statement)
    request = DeleteShareRequest(ctx.account, ctx.entry, agreed.version, counter, signature)
    erased: set[int] = set()
    codes: list[str] = []
    for attempt in range(TRIES):
        answers = yield Call(Op.DELETE_SHARE, (request,) * ctx.nodes, resend=attempt > 0)
        erased |= {
            slot
            for slot, answer in answers.items()
            if _ack_verifies(ctx, slot, answer, AckKind.ERASED, agreed)
        }
        codes = _codes(answers)
        if all(slot in erased or not _transient(answers.get(slot)) for slot in range(ctx.nodes)):
            break
    # As the SDK: the statement is public, kept for the nodes that did not confirm.
    erasure = Pending(
        ctx.fleet_id,
        ctx.account,
        ctx.entry,
        agreed.version,
        Op.DELETE_SHARE,
        agreed.to_bytes(),
        signature,
        counter,
        tuple(slot for slot in range(ctx.nodes) if slot not in erased),
    )
    if len(erased) >= ctx.threshold:
        _keep(ctx, erasure)
        _forget_changes_of(ctx, agreed.version)
        return Outcome("deleted", acks=len(erased))
    # As the SDK (`_deleted`): the entry empty now is deleted, whichever device's delete
    # of this version committed (seed 10610206 with a hostile node).
    now = yield from status(ctx)
    if now.text == "status: empty":
        _keep(ctx, erasure)
        _forget_changes_of(ctx, agreed.version)
        return Outcome("deleted", acks=len(erased))
    if now.text == "status: destroyed":
        # As the SDK: wrong guesses destroyed the key since this device recovered it
        # (seed 10610144 with a hostile node).
        _keep(ctx, replace(erasure, nodes=()))
        return Outcome("destroyed", acks=len(erased))
    if _changed(ctx, codes) or (
        now.agreed is not None and now.agreed.to_bytes() != agreed.to_bytes()
    ):
        # As the SDK (`EntryChanged`): another device changed the key since this one
        # recovered it (a password change; or wrong guesses destroyed it and a new key
        # was registered, the nodes answering "not registered" for this version: seed
        # 10408977 with a hostile node), so there is no version left for this statement.
        _keep(ctx, replace(erasure, nodes=()))
        return Outcome("entry changed", acks=len(erased))
    return Outcome(f"unavailable ({len(erased)} erasures)", acks=len(erased))


def status(ctx: FlowContext) -> Flow:
    """The entry's status; as the SDK's `status`, what this device owes it is finished on
    the way (with the manifest read's answers)."""
    answers, found = yield from fetch_manifest(ctx)
    answered = _answered(answers)
    if found.agreed is not None:
        yield from finish(ctx, found.agreed, answered)
    elif found.text in ("destroyed", "empty"):
        kind = EntryStatus.DESTROYED if found.text == "destroyed" else EntryStatus.EMPTY
        yield from finish(
            ctx, None, answered, status=kind, version=_version_after(ctx, answers) - 1, tries=1
        )
    return Outcome(f"status: {'live' if found.agreed else found.text}", agreed=found.agreed)


def run_op(ctx: FlowContext, name: str) -> Flow:
    """One operation of the seeded workload, with passwords from the ghost."""
    if name == "register":
        return (yield from register(ctx, ctx.fresh_password(), ctx.rng.randbytes(32)))
    if name == "status":
        return (yield from status(ctx))
    password = ctx.current_password()
    if name == "recover_wrong" or password is None:
        wrong = f"wrong-{ctx.rng.getrandbits(32):08x}".encode()
        return (yield from recover(ctx, wrong))
    got = yield from recover(ctx, password)
    if name == "recover_right" or got.text != "recovered":
        return got
    if name == "change_password":
        changed = yield from change_password(ctx, got, ctx.fresh_password())
        return Outcome(f"password changed: {changed.text}")
    deleted = yield from delete(ctx, got)
    return Outcome(f"delete: {deleted.text}")
