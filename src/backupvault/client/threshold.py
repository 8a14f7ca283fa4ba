"""The client side of the threshold vault (docs/threshold.md): register, recover, change
the password, delete, status.

No node ever holds the entry's whole OPRF key. At registration the client deals a fresh key
k into N shares (`manifest.register`), seals share i to node i's key from the pinned config
or the verified deployment record (never a key the relay serves), and checks each node's
signed acknowledgement against that node's signing key and K_i from the manifest's
commitments. At recovery it takes the manifest that t nodes return byte for byte, asks every
node for its partial evaluation of the blinded password, checks each against K_i from that
manifest, drops and names bad ones, combines t good ones, opens the entry, and proves the
password to every node with a signed reset statement.

Every request goes to all nodes at once through the relay's fan-out (`VaultClient.call_each`);
each node's answer is sealed to the client with its own copy's response key.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backupvault.client.errors import (
    EVALUATION_UNANSWERED_HINT,
    AlreadyRegistered,
    Destroyed,
    EntryChanged,
    FleetUnavailable,
    NotRegistered,
    RelayUnreachable,
    Unauthorized,
    VaultError,
    WrongPassword,
)
from backupvault.client.pending import Due, Pending, PendingStore
from backupvault.client.vault import NodeOutcome, VaultClient
from backupvault.codec import Message
from backupvault.crypto import manifest as manifests
from backupvault.crypto import oprf, owner, threshold
from backupvault.crypto.ed25519 import check_public_key
from backupvault.crypto.ksf import Argon2idParams
from backupvault.errors import AuthenticationFailed, InvalidInput, WrongKey
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    DeleteShareRequest,
    DeliverShareRequest,
    EntryStatus,
    ErrorCode,
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

#: While fewer than t partials came back and enough nodes gave no answer yet, an evaluate
#: fan-out is resent (the same B and client time: a node answers a resent (attempt, B)
#: again without a second charge) at least EVALUATE_RESENDS times, and more for up to
#: EVALUATE_PATIENCE_SECONDS: the attempt may already be counted, so giving up early
#: would spend a guess for nothing, and faults last a few seconds. A fan-out nobody
#: answers lasts the relay's request timeout (6-10 s), so the count comes first.
EVALUATE_RESENDS = 2
EVALUATE_PATIENCE_SECONDS = 5.0
#: Reset and share-delivery fan-outs while some node gave no answer or could not commit in
#: time (several nodes commit the same entry at once), RETRY_BACKOFF_SECONDS apart (doubling).
RESET_TRIES = 3
#: An attempt that lacks t partials only because nodes refused it as stale (another
#: recovery of the same entry, from this or another device, was counted in between) is
#: made again, with a new B and clock, up to this many times, after a random pause.
STALE_ATTEMPT_RETRIES = 2
#: Why attempts keep being refused as stale, and what to do.
STALE_ATTEMPT_HINT = (
    "the vault orders attempts by the clock of the device that makes them: another recovery"
    " of this key ran at the same moment (another device or script), or one came from a"
    " device whose clock is ahead of this one's, and until this device's clock passes that"
    " time its attempts are refused. Check the clocks of your devices, then try again. A"
    " node that says it answered this attempt for another request, while no other recovery"
    " ran, numbered it apart from the others, which a hostile vault node can cause: report"
    " it to the operator. A refused attempt is not counted as a guess by the node that"
    " refused it (one that another recovery overtook, or that other nodes answered, may be)"
)
DELIVERY_TRIES = 3
#: With fewer than t acknowledgements and some node silent, a delivery is sent again (the
#: same shares: nodes that hold theirs acknowledge again) for up to this long: M may have
#: been committed already, and its shares exist only in this process until t nodes hold
#: them.
DELIVERY_PATIENCE_SECONDS = 20.0
#: With t or more but not every acknowledgement, the silent nodes are asked again for up
#: to this long before the rest is left to finish later (most faults are short, and a
#: pending share waits for the device's next success).
DELIVERY_SETTLE_SECONDS = 5.0
RETRY_BACKOFF_CAP_SECONDS = 2.0
FETCH_TRIES = 3
#: Manifest fan-outs while the nodes that answer disagree or too few answer: a node one
#: change behind holds the old M until settling brings it the new one (3 s after the
#: commit, docs/fleet.md), so the reads are spread over ~3.4 s (backoff capped at 1 s).
MANIFEST_TRIES = 6
MANIFEST_BACKOFF_CAP_SECONDS = 1.0
#: Reads after t "empty" answers of different versions (`_manifests`): one that asks for a
#: round, one that sees what it wrote.
EMPTY_REREADS = 2
RETRY_BACKOFF_SECONDS = 0.2


def password_bytes(password: str) -> bytes:
    """The password as the OPRF takes it: the UTF-8 of its NFC form (the normalization of
    RFC 8265's OpaqueString profile). Without it "é" as one code point (most keyboards)
    and as e + U+0301 (a paste from a PDF, some input methods) were two passwords, and
    the right one typed on another device counted as a wrong guess. Refused, without
    naming it, if it is no text (a lone surrogate: a byte that was no UTF-8)."""
    try:
        return unicodedata.normalize("NFC", password).encode()
    except UnicodeEncodeError:
        # The codec's message names the character and where it sits in the password.
        raise InvalidInput("the password is not valid Unicode text (a lone surrogate)") from None


def _owed_lines(record: Pending) -> list[str]:
    """A line per node `record` is still owed to: "node 4: share of version 2"."""
    what = "erasure of version" if record.op is Op.DELETE_SHARE else "share of version"
    return [f"node {n}: {what} {record.version}" for n in record.nodes]


def _back_off(attempt: int, cap: float = RETRY_BACKOFF_CAP_SECONDS) -> None:
    """Before fan-out `attempt` (counted from 0): nothing first, then a pause that doubles
    from RETRY_BACKOFF_SECONDS up to `cap`."""
    if attempt:
        time.sleep(min(cap, RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)))


def elsewhere(answer: ManifestResponse, agreed: manifests.Manifest) -> bool:
    """A node whose answer may soon join the others': a live manifest other than the
    agreed one (a commit of the agreed M still on its way to it: it will take M and
    promote the share it staged), or the end of a version (a delete or tombstone of the
    agreed version committing, which the others will take; or an earlier version's end,
    with a registration of the agreed one on its way). Asked to confirm, such a node
    commits and answers the newest value. A node that holds nothing of the entry
    (version 0: wiped, or it missed every registration) answers neither: no round
    changes its answer."""
    if answer.manifest:
        return answer.manifest != agreed.to_bytes()
    return answer.version > 0


def empty_at_other_versions(responses: Iterable[ManifestResponse]) -> bool:
    """Whether nodes answered "empty" for different versions of the entry."""
    return len({r.version for r in responses if r.status == EntryStatus.EMPTY}) > 1


def empty_to_read_again(responses: Iterable[ManifestResponse]) -> bool:
    """Whether t "empty" answers settle nothing yet (`_manifests` reads again, the first
    time asking for a round): nodes answered "empty" of different versions (one never saw
    the entry, or missed its delete: review s58), or beside a live manifest. A node down
    through a registration and past its repair answers "empty" of version 0 for good (it
    holds nothing, so runs no round of its own), and c hostile nodes saying the same made
    up t: the client said no key was registered, though a majority's values hold it
    (review s62). A round run by a node that holds the entry reaches it as an acceptor,
    and the read after it sees the entry."""
    answers = list(responses)
    return empty_at_other_versions(answers) or any(r.status == EntryStatus.LIVE for r in answers)


def _transient(outcome: NodeOutcome[Any]) -> bool:
    """No answer, or the node could not reach a majority in time: worth asking again."""
    if outcome.refused:
        return False
    if outcome.error is not None:
        return outcome.error.code == ErrorCode.FLEET_UNAVAILABLE
    return outcome.response is None


def _may_have_counted(err: VaultError) -> VaultError:
    """`err` raised once an evaluation was handed to the relay: told as one that may have
    been counted as a guess (a RelayUnreachable's "no guess was used" is then untrue)."""
    if isinstance(err, RelayUnreachable):
        return FleetUnavailable(err.message, hint=EVALUATION_UNANSWERED_HINT)
    err.hint = (
        EVALUATION_UNANSWERED_HINT
        if err.hint is None or isinstance(err, FleetUnavailable)
        else f"{EVALUATION_UNANSWERED_HINT} ({err.hint})"
    )
    return err


class _Superseded(Exception):
    """This attempt was refused as stale by the nodes it lacked (`superseded`; `recover`
    tries again)."""

    def __init__(self, error: FleetUnavailable) -> None:
        super().__init__(error.message)
        self.error = error


def _tth_largest(values: list[int], t: int) -> int:
    """The t-th largest of what the nodes report (the smallest, with fewer than t): fewer
    than t hostile nodes cannot raise it above what the honest ones say (one node's guess
    limit of 10^9 made every recovery warn of 10^9 wrong guesses)."""
    ordered = sorted(values, reverse=True)
    return ordered[t - 1] if len(ordered) >= t else min(ordered, default=0)


def _guesses_left(reported: Sequence[int], t: int) -> tuple[int, int | None]:
    """What the nodes that answered say is left: (figure, up_to). `figure` is the t-th
    largest (`_tth_largest`): fewer than t hostile nodes cannot raise it above what an
    honest node says. With 2t − 1 reports or more it is also at least what some honest node
    says; with fewer, hostile nodes' low figures can be all of the t lowest, so `up_to` is
    then the highest figure reported (what is left lies between), or None when the
    reports agree (review s34: one node's "0 left" and two honest answers hidden by the
    relay made a wrong password read as a destroyed key)."""
    figure = _tth_largest(list(reported), t)
    most = max(reported, default=0)
    return figure, (most if most != figure and len(reported) < 2 * t - 1 else None)


def _none_left(reported: Sequence[int], t: int) -> bool:
    """Whether t nodes say no guess is left: then at least one honest node erases its
    share at its next request (fewer may all be hostile nodes' word)."""
    return sum(1 for left in reported if left == 0) >= t


def _may_be_last(reported: Sequence[int], t: int) -> bool:
    """Whether the next wrong password may destroy the key: the t-th largest count reported
    is at most one, whatever higher counts were reported beside it (too few answers to
    outvote fewer than t hostile nodes). The relay alone, with every node honest, can make
    honest counts differ (it drops some nodes' copies of each wrong guess) and then hide
    the higher answers (review s47, finding 1); a hostile node's "0 left" among too few
    answers makes it 0 where honest ones said 1 (the review of that fix). A question asked
    needlessly costs a confirmation; one not asked cost the key. Not when t nodes say none
    is left: no password opens that key any more, and the evaluation says it is destroyed."""
    return _tth_largest(list(reported), t) <= 1 and not _none_left(reported, t)


def _agreed_attempt(good: dict[int, EvaluateResponse], t: int) -> int | None:
    """The attempt number at least t verified partials report, or None. The fleet commits
    one number per B, so honest nodes agree on it, and fewer than t hostile nodes cannot
    make another number reach t (two numbers with t votes each would need 2t > N
    answers). A number one node reports is never signed: a hostile node could report a
    later attempt, keep the owner's signed RESET(that attempt, SHA-256(B)), have the same
    B counted again at that number after wrong guesses, and then wipe every honest
    node's count with the signature (review s23)."""
    votes = Counter(r.attempt for r in good.values()).most_common(1)
    return votes[0][0] if votes and votes[0][1] >= t else None


def superseded(good: int, stale: int, t: int) -> bool:
    """Whether an attempt that got `good` (< t) verified partials lost them to another
    attempt counted after it: the `stale` nodes would have made t. Then the attempt is made
    again, with a new B and clock (`STALE_ATTEMPT_RETRIES`). The sim's clients use it too."""
    return good < t <= good + stale


def undecided(good: int, stale: int, waiting: int, t: int) -> bool:
    """Whether the `waiting` nodes (no answer yet) could still make an attempt with too
    few partials `superseded`: they are asked again rather than the attempt given up as
    unavailable (sim seed 10432010: two hostile nodes' bad partials, one node's
    `stale_attempt` and one node not yet answering; it would have said `stale_attempt`
    too, and the attempt, made again, would have opened the key)."""
    return not superseded(good, stale, t) and superseded(good, stale + waiting, t)


def _unanswered(problems: dict[int, str], held: set[int], nodes: int, err: VaultError) -> None:
    """Every node not yet holding its share named as not answering, with why."""
    for index in range(nodes):
        if index not in held:
            problems[index] = f"node {index}: no answer ({err.message})"


def _moved_on(codes: Sequence[str], nodes: int, t: int) -> bool:
    """Fewer than t nodes are left at the version this device read, because the others
    answered `stale_manifest`: another device changed the password or deleted the key."""
    return codes.count(ErrorCode.STALE_MANIFEST) > nodes - t


def version_spent(held: Iterable[tuple[int, bytes]], encoded: bytes, version: int, t: int) -> bool:
    """Whether t nodes hold the entry at M's version or later with another manifest than
    M (or none: deleted, destroyed); `held` is each answering node's (version, manifest).
    A version takes one manifest, so M's is spent. t answers include an honest node's, so
    fewer than t hostile nodes cannot make a version look spent on their own word (as t
    identical manifests, `agreed`). The sim's clients ask the same."""
    return sum(1 for v, m in held if v > version or (v == version and m != encoded)) >= t


def _token_refused(outcomes: Sequence[NodeOutcome[Any]], t: int) -> Unauthorized | None:
    """The nodes refused the fleet token (403) so widely that fewer than t are left to take
    the request: asking again cannot help, the user needs a new token."""
    refused = [o for o in outcomes if o.status == 403]
    if refused and len(outcomes) - len(refused) < t:
        error = Unauthorized(refused[0].failure or "refused", by_vault=True)
        if "the device's clock" in (refused[0].failure or ""):
            # The request proofs were dated too far from the nodes' clocks (tokens.py): a
            # new token, as the hint says otherwise, would be refused alike.
            error.hint = (
                "set this device's clock right (its time and time zone; NTP): nodes take a"
                " request proof only when it is dated within about a minute of their clock"
            )
        return error
    return None


def _sealed_to_other_keys(
    outcomes: Sequence[NodeOutcome[Any]], t: int, nodes: int
) -> FleetUnavailable | None:
    """So many nodes could not open their sealed copy (400 bad_sealed_request) that fewer
    than t are left: the keys the client sealed to are not the nodes' (a pinned config
    from before a rotation, or another fleet's), or the relay altered every copy. Asking
    again cannot help; it said "try again later"."""
    unopened = [
        o for o in outcomes if o.status == 400 and "bad_sealed_request" in (o.failure or "")
    ]
    if not unopened or len(outcomes) - len(unopened) >= t:
        return None
    return FleetUnavailable(
        f"{len(unopened)} of {nodes} vault nodes could not open the requests sealed to the"
        f" keys in your client config ({unopened[0].describe()})",
        hint="the config pins keys these nodes do not hold: after a fleet rotation a pinned"
        " config needs the new epoch's keys (a local deployment's `local rotate` rewrites"
        " DIR/client.toml: use that one; an operator's `fleet client-config --previous"
        " OLD/fleet.toml` writes one that also moves the key from the old epoch), or"
        " use an over-the-air config; if the fleet was not rotated, the relay altered the"
        " requests. Nothing was counted as a guess",
    )


@dataclass(frozen=True)
class FleetKeys:
    """What the client trusts about the fleet, from the pinned config or the verified
    deployment record: each node's signing key (for acknowledgements), the threshold t and
    the node-set epoch its shares are dealt for. Node i's share index is i + 1."""

    signing_keys: tuple[bytes, ...]
    threshold: int
    epoch: int

    def __post_init__(self) -> None:
        threshold.check_threshold(self.threshold, len(self.signing_keys))
        if 2 * self.threshold <= len(self.signing_keys):
            # The t-identical manifest and the t verified partials rest on 2t > N: with less,
            # t hostile nodes are a minority that can make their own manifest agreed.
            raise InvalidInput(
                f"a threshold of {self.threshold} of {len(self.signing_keys)} nodes is no majority",
                hint="a fleet's threshold is a majority of its nodes (N//2 + 1), as its"
                " deployment record says",
            )
        for index, key in enumerate(self.signing_keys):
            # Each verifies a node's share acknowledgements: a small-order key would take
            # a signature anyone can forge (crypto/ed25519.py).
            check_public_key(key, f"node {index}'s signing key")


@dataclass(frozen=True)
class Registered:
    """A registration: done when every node acknowledged its share, degraded with t..N-1
    (`missing` names the nodes without a share, and why)."""

    version: int
    acknowledged: tuple[int, ...]
    missing: tuple[str, ...]

    @property
    def degraded(self) -> bool:
        return bool(self.missing)


@dataclass(frozen=True)
class ThresholdRecovery:
    root_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)
    manifest: manifests.Manifest = field(repr=False)
    attempt: int
    wrong_guesses_before: int
    #: Nodes whose partial evaluation did not verify (named to the user).
    rejected: tuple[int, ...] = ()
    #: Nodes that did not take the reset (they count this attempt until they see the
    #: replicated reset).
    reset_missing: tuple[str, ...] = ()
    #: Deliveries still owed after this recovery finished what it could (`pending`).
    pending: tuple[str, ...] = ()
    #: Whether more than N − t nodes took the reset, so an honest one did (then it is
    #: committed, and reaches the others in the replicated value). False: the guesses
    #: counted so far may still count, this one too.
    reset_confirmed: bool = True
    #: With too few partials to outvote a hostile figure, and figures that differ: the
    #: fewest wrong guesses the reports allow (the count lies between it and
    #: `wrong_guesses_before`); None when they agree.
    wrong_guesses_at_least: int | None = None


@dataclass(frozen=True)
class ThresholdStatus:
    status: EntryStatus
    version: int
    guess_limit: int
    guesses_remaining: int
    #: Nodes that answered with the agreed manifest; the others, and why.
    agreeing: tuple[int, ...]
    other: tuple[str, ...]
    #: Deliveries this device still owes the fleet (docs/threshold.md, "Finishing later").
    pending: tuple[str, ...] = ()
    #: With too few nodes answering to outvote a hostile figure, and figures that differ:
    #: the highest reported (what is left lies between it and `guesses_remaining`).
    guesses_remaining_up_to: int | None = None


@dataclass(frozen=True)
class _Live:
    manifest: manifests.Manifest
    guess_limit: int
    #: Nodes that agree on the manifest and say they hold a live share for it.
    holders: tuple[int, ...]
    #: The other nodes, and why.
    without: tuple[str, ...]
    #: Nodes that answered the manifest request at all.
    answered: frozenset[int]
    #: Fewer than t holders, and some other node gave no answer: worth reading again.
    waiting: bool
    #: The next wrong password may destroy the key (`_may_be_last`, from the agreeing
    #: nodes' counts): the CLI asks before it is sent.
    last_guess: bool = False


@dataclass
class _Manifests:
    answers: list[NodeOutcome[ManifestResponse]]
    agreed: manifests.Manifest | None


class ThresholdVault:
    """The threshold flows for one entry, over a `VaultClient`'s fan-out transport."""

    def __init__(
        self,
        vault: VaultClient,
        keys: FleetKeys,
        *,
        notify: Callable[[str], None] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        pending: PendingStore | None = None,
        delivery_patience: float = DELIVERY_PATIENCE_SECONDS,
    ) -> None:
        """`pending`: where this device keeps the deliveries it still owes (in memory
        only with None). `delivery_patience`: how long a registration's delivery is sent
        again while fewer than t nodes acknowledged and some are silent."""
        if len(keys.signing_keys) != len(vault.node_keys):
            raise InvalidInput("one signing key per node")
        self.vault = vault
        self.keys = keys
        self.nodes = len(vault.node_keys)
        self.t = keys.threshold
        self._notify = notify or (lambda _message: None)
        self._clock_ms = clock_ms
        self.pending = pending if pending is not None else PendingStore(None)
        #: Owed deliveries a node confirmed through this object, a line each ("node 4:
        #: share of version 2"): what `vault finish` says it delivered.
        self.confirmed: list[str] = []
        self.delivery_patience = delivery_patience

    def notify(self, message: str) -> None:
        """Tell the user something on the side (stderr in the CLI)."""
        self._notify(message)

    @property
    def account(self) -> str:
        return self.vault.account

    @property
    def entry(self) -> str:
        return self.vault.entry

    def _statement(
        self, kind: owner.StatementKind, version: int, counter: int, payload: bytes
    ) -> owner.OwnerStatement:
        return owner.OwnerStatement(
            kind,
            self.vault.fleet_id,
            self.account,
            self.entry,
            version,
            counter,
            owner.payload_hash(payload),
        )

    # ---- manifest and status -------------------------------------------------------------

    def _moved_since(self, manifest: manifests.Manifest) -> VaultError | None:
        """After an evaluation where a node that held a share of `manifest` when it was
        read answered holding none, or holding a later value (too few of them to say the
        key changed on their own): whether the key was deleted, destroyed or changed in
        the meantime (on another device), by the manifests, which cost no guess. Said as
        the fleet being unavailable, the user asked again for a key that was gone (sim
        seeds 10363041, 10363059 and 10377367, a recovery racing another device's delete). None when
        the read settles nothing, or fails: the evaluation's own error then stands, with
        what it says of the guess it may have counted."""
        try:
            found = self._manifests()
        except VaultError:
            return None
        if found.agreed is None:
            gone = self._no_manifest(found)
            if isinstance(gone, Destroyed):
                return gone
            return EntryChanged(manifest.version) if isinstance(gone, NotRegistered) else None
        return (
            None
            if found.agreed.to_bytes() == manifest.to_bytes()
            else EntryChanged(manifest.version)
        )

    def _manifests(self, confirm: bool = False) -> _Manifests:
        """The nodes' manifest answers and the manifest t of them agree on, if any, read
        again while they settle nothing. One of the reads may ask each node that holds
        the entry to confirm its value with a round first: with `confirm` the first, else
        the first resend after t or more nodes answered without agreeing (a node back from
        a restart may hold a value it missed a change to). One, not every resend, and not
        after fewer than t answers: with no majority in reach a round waits out its
        deadline (6 s), where a plain read is answered at once, and the promises it leaves
        make the nodes that ran it refuse the next change's Accept (a restarted node then
        missed an attempt: tests/integration/test_restart_liveness.py)."""
        answers: list[NodeOutcome[ManifestResponse]] = []
        agreed: manifests.Manifest | None = None
        ask = confirm
        empty_rereads = 0
        for attempt in itertools.count():
            if attempt == MANIFEST_TRIES + empty_rereads:  # the rereads come on top
                break
            _back_off(attempt, MANIFEST_BACKOFF_CAP_SECONDS)
            request = ManifestRequest(self.account, self.entry, confirm=ask)
            answers = self.vault.call_each(
                Op.MANIFEST, [request] * self.nodes, ManifestResponse, resends=1
            )
            answered = sum(1 for a in answers if not _transient(a))
            ask = attempt == 0 and not confirm and answered >= self.t  # once, the first resend
            live = {
                a.index: a.response.manifest
                for a in answers
                if a.response is not None and a.response.manifest
            }
            try:
                agreed = manifests.agreed_manifest(live, self.t) if len(live) >= self.t else None
            except AuthenticationFailed:
                agreed = None
            # Nodes answer from the value they hold (no consensus round), so answers that
            # settle nothing are caught mid-change: t that hold a manifest but disagree, or
            # a node that has not yet taken a tombstone or a registration the others hold
            # (a laggard catching up). Ask again until t agree on something.
            found = None if agreed is not None else self._no_manifest(_Manifests(answers, None))
            settled = answered >= self.t and not isinstance(found, FleetUnavailable)
            if (
                settled
                and isinstance(found, NotRegistered)
                and empty_rereads < EMPTY_REREADS
                and empty_to_read_again(a.response for a in answers if a.response)
            ):
                # t nodes say "empty" but not of one version: one of them never saw the
                # entry, or missed its delete, and a registration over the t-th highest
                # version would stage at too few nodes for good (review s58). Or beside a
                # live manifest: one that missed the registration, with hostile nodes
                # (review s62). A round on a node that holds the delete (or the entry)
                # writes it to a majority: read again, the first time asking for one, then
                # once more plainly.
                ask = empty_rereads == 0 and not request.confirm
                empty_rereads += 1
                continue
            if settled:
                break
        if agreed is not None and (
            agreed.fleet_id != self.vault.fleet_id
            or agreed.account != self.account
            or agreed.entry != self.entry
            or agreed.nodes != self.nodes
        ):
            raise VaultError(
                "the manifest the nodes agree on is for another fleet, account or entry",
                hint="report this to the operator; nothing was sent",
            )
        return _Manifests(answers, agreed)

    def _no_manifest(self, found: _Manifests) -> VaultError:
        """Why there is no agreed manifest: no entry, destroyed, or not enough nodes. The
        last (FleetUnavailable) is what answers that settle nothing say: a fleet caught
        mid-change (two nodes destroyed and one live, say), worth asking again."""
        statuses = [a.response.status for a in found.answers if a.response is not None]
        if statuses.count(EntryStatus.DESTROYED) >= self.t:
            return Destroyed()
        if statuses.count(EntryStatus.EMPTY) >= self.t:
            return NotRegistered()
        refused = _token_refused(found.answers, self.t)
        if refused is not None:
            return refused
        unopened = _sealed_to_other_keys(found.answers, self.t, self.nodes)
        if unopened is not None:
            return unopened
        silent = [a.describe() for a in found.answers if a.response is None]
        return FleetUnavailable(
            f"need {self.t} of {self.nodes} vault nodes to agree on this entry, "
            f"{len(statuses)} answered" + (f" ({'; '.join(silent)})" if silent else "")
        )

    def status(self) -> ThresholdStatus:
        found = self._manifests()
        responses = [a.response for a in found.answers if a.response is not None]
        if found.agreed is None:
            error = self._no_manifest(found)
            if isinstance(error, FleetUnavailable | Unauthorized):
                raise error
            kind = EntryStatus.DESTROYED if isinstance(error, Destroyed) else EntryStatus.EMPTY
            # The t-th highest: fewer than t hostile nodes cannot raise it (a version too
            # high would make the next registration fail at every honest node).
            versions = sorted((r.version for r in responses), reverse=True)
            version = versions[self.t - 1] if len(versions) >= self.t else 0
            limit = _tth_largest([r.guess_limit for r in responses], self.t)
            answered = {a.index for a in found.answers if a.response is not None}
            pending = self._finish_quietly(
                None, status=kind, version=version, answered=answered, tries=1
            )
            return ThresholdStatus(kind, version, limit, 0, (), (), pending)
        encoded = found.agreed.to_bytes()
        agreeing = [
            a for a in found.answers if a.response is not None and a.response.manifest == encoded
        ]
        # The client needs t nodes with guesses left: the t-th largest count is what is left.
        reported = [a.response.guesses_remaining for a in agreeing if a.response]
        remaining, up_to = _guesses_left(reported, self.t)
        limit = _tth_largest([a.response.guess_limit for a in agreeing if a.response], self.t)
        # No guess left on t nodes: no recovery can succeed again, and each node erases its
        # share at its next request; the key is as good as destroyed, so say so.
        status = EntryStatus.DESTROYED if _none_left(reported, self.t) else EntryStatus.LIVE
        owed_before = self._nodes_owed_shares(encoded)
        pending = self._finish_quietly(
            found.agreed, answered={a.index for a in found.answers if a.response is not None}
        )
        delivered = owed_before - self._nodes_owed_shares(encoded)  # just now, by this device
        # A node that holds the manifest and no share of it (it missed its delivery, which
        # another device may still owe it) is named too: the key then survives fewer node
        # failures, which the user of any device should hear (review s61: only the device
        # owing the share said so, in its pending lines).
        other = tuple(
            a.describe()
            if a.response is None
            else f"node {a.index}: holds another manifest"
            if a not in agreeing
            else f"node {a.index}: holds the key's manifest but no share of it"
            for a in found.answers
            if a not in agreeing
            or (a.response is not None and not a.response.holds_share and a.index not in delivered)
        )
        return ThresholdStatus(
            status,
            found.agreed.version,
            limit,
            remaining,
            tuple(a.index for a in agreeing),
            other,
            pending,
            up_to,
        )

    # ---- registration ----------------------------------------------------------------------

    def register(
        self, password: str, root_key: bytes, *, ksf: Argon2idParams, version: int = 1
    ) -> Registered:
        """A new entry (version 1, or the version after a deleted one's)."""
        made = manifests.register(
            password_bytes(password),
            root_key,
            fleet_id=self.vault.fleet_id,
            account=self.account,
            entry=self.entry,
            epoch=self.keys.epoch,
            nodes=self.nodes,
            threshold_count=self.t,
            ksf=ksf,
            version=version,
        )
        return self._deliver(Op.REGISTER_SHARE, made, b"", 0)

    def _deliver(
        self, op: Op, made: manifests.Registration, authorization: bytes, counter: int
    ) -> Registered:
        """docs/threshold.md "Stage, then commit": share i to node i with M, which keeps it
        aside and signs that it does; with t such acknowledgements, a commit of M that
        carries them. Done (every node holds its share), degraded (the rest is kept to
        finish later, `finish`), or failed with nothing changed (fewer than t staged:
        VaultError naming the nodes)."""
        encoded = made.manifest.to_bytes()
        shares = [share.to_bytes() for share in made.shares]
        staged, problems, outcomes = self._send_shares(
            op,
            made.manifest,
            self._share_requests(encoded, shares, authorization, counter),
            (),
            # With t staged, one resend for slow nodes (their answer lost), then the commit:
            # a node that still missed its share gets it late.
            2,
            kinds=(AckKind.STAGED, AckKind.HELD),
            patience=self.delivery_patience,
            settle=0.0,
        )
        what = "password was not changed" if authorization else "entry was not registered"
        if len(staged) < self.t:
            codes = [o.error.code for o in outcomes if o.error is not None]
            # More than N − t nodes saying so include an honest one (one hostile node's
            # word, with honest acknowledgements hidden, made an empty entry look taken).
            if codes.count(ErrorCode.ALREADY_REGISTERED) > self.nodes - self.t:
                raise AlreadyRegistered("the vault already holds a key for this entry")
            capped = self._cap_refusal(codes, what)
            if capped is not None:
                raise capped
            if _moved_on(codes, self.nodes, self.t):  # not a fleet that is down (10196044)
                raise EntryChanged(made.manifest.version - 1, registration=not authorization)
            refused = _token_refused(outcomes, self.t)
            if refused is not None:
                raise refused
            missing = [problems[i] for i in sorted(problems)]
            raise FleetUnavailable(
                f"only {len(staged)} of {self.nodes} vault nodes took their share, "
                f"{self.t} are needed; the {what} ({'; '.join(missing)})"
            )
        chosen = [staged[i] for i in sorted(staged)[: self.t]]
        acks = encode_commit_acks(
            [CommitAck(a.index, AckKind(a.kind), a.signature) for a in chosen]
        )
        request = CommitSharesRequest(
            self.account, self.entry, encoded, authorization, counter, acks
        )
        # Sent later as a register-share of M whatever made it: by then M is the entry's
        # committed value (its change statement checked by the acceptors that committed
        # it), so a node takes its share of M even when it missed several changes and
        # holds a share too old to check this change's statement against. Kept before the
        # commit goes out: from then on M may land without this process seeing it (a
        # SIGINT or SIGTERM, a crash, the relay failing after passing it on, an answer
        # lost), and the shares of the nodes that staged none exist nowhere else; kept
        # after it, such a commit left M on the stagers alone for good. While M is not in
        # effect the record is never sent (`finish`), and the next change replaces it.
        owed = Pending.of_shares(
            fleet_id=self.vault.fleet_id,
            account=self.account,
            entry=self.entry,
            manifest=encoded,
            version=made.manifest.version,
            shares=made.shares,
            node_keys=self.vault.node_keys,
            nodes=tuple(range(self.nodes)),
        )
        self._keep_pending(owed)
        held, problems = self._commit_shares(request, made.manifest, what)
        self._keep_pending(replace(owed, nodes=tuple(sorted(problems))))
        missing = [problems[i] for i in sorted(problems)]
        return Registered(made.manifest.version, tuple(sorted(held)), tuple(missing))

    def _commit_shares(
        self, request: CommitSharesRequest, manifest: manifests.Manifest, what: str
    ) -> tuple[set[int], dict[int, str]]:
        """Send the commit to every node, again while fewer than t confirmed it and some
        were silent (up to the delivery patience): the nodes that acknowledged holding
        their share, and why the others did not. With fewer than t acknowledgements, the
        agreed manifest says whether M is in effect: one HELD could be a hostile node's
        (it signs with its own key over public K_i and M), which proves nothing."""
        held: set[int] = set()
        problems: dict[int, str] = {}
        deadline = time.monotonic() + self.delivery_patience
        attempt = 0
        while True:
            _back_off(attempt)
            attempt += 1
            try:
                outcomes = self.vault.call_each(
                    Op.COMMIT_SHARES, [request] * self.nodes, ShareAck, resends=1
                )
            except RelayUnreachable as err:
                if attempt == 1:
                    raise  # no try reached the relay: nothing of it reached a node
                # An earlier try reached the relay, which may have passed it on (review
                # s47, finding 3): the manifests below tell what is in effect.
                _unanswered(problems, held, self.nodes, err)
                break
            except FleetUnavailable:
                if time.monotonic() < deadline and len(held) < self.t:
                    continue
                outcomes = []
            except VaultError as err:
                # The relay's 500, 429, 401 or a malformed answer: an untrusted relay may
                # have passed the commit on all the same, so the manifests below tell what
                # is in effect. Raised as it was, it said the change failed when it had
                # landed, and the user retried with the old password: a wrong guess.
                _unanswered(problems, held, self.nodes, err)
                break
            for outcome in outcomes:
                if outcome.index in held:
                    continue
                problem = self._check_ack(outcome, (AckKind.HELD,), manifest, request.manifest)
                if problem is None:
                    held.add(outcome.index)
                    problems.pop(outcome.index, None)
                else:
                    problems[outcome.index] = problem
            # t held acknowledgements (one of them an honest node's): M is committed, and
            # every node that staged its share promotes it as it takes M; the others are
            # owed a late delivery (`finish`). Fewer may all be hostile nodes' (review s25).
            silent = [o for o in outcomes if o.index not in held and _transient(o)]
            if len(held) >= self.t or not silent:
                break
            if attempt >= DELIVERY_TRIES and time.monotonic() >= deadline:
                break
        for index in range(self.nodes):
            if index not in held and index not in problems:
                problems[index] = f"node {index}: no answer"
        if len(held) >= self.t:
            return held, problems
        # Fewer than t nodes said they hold their share of M: whether M is in effect, t
        # identical manifests tell (any t nodes include one that accepted M, had a
        # majority committed it, and c < t hostile nodes cannot make up t).
        try:
            found = self._manifests()
        except VaultError as err:
            # The commit reached the relay (a first refused connection raised above), which
            # may have passed it on before it went away or failed the read (503, garbage):
            # the read's own error ("try again later", "no guess was used") of a change in
            # effect sent the user to the old password, a wrong guess (reviews s47, s49).
            change = "password change" if request.authorization else "registration"
            # Named by version: `vault status` says "live" for either (review s61).
            shows = (
                f"version {manifest.version} if it did (the new password opens the key),"
                f" version {manifest.version - 1} if not (the old one still does)"
                if request.authorization
                else f"a live key at version {manifest.version} if it did"
            )
            raise FleetUnavailable(
                f"the relay took this {change}, which may have taken effect, then could not"
                f" show whether it did: {err.message}",
                hint="once the relay answers again, `backupvault vault status` shows whether"
                f" it did (asking uses no guess): {shows}; check before you type either"
                " password",
            ) from None
        if found.agreed is not None and found.agreed.to_bytes() == request.manifest:
            return held, problems
        if found.agreed is not None and found.agreed.version >= manifest.version:
            # Another device's M of this version (or a later one) is in effect: a version
            # takes one M, so this one never will. Said as the fleet being unsure, the
            # user retried a registration that could only be refused again.
            if request.authorization:
                raise EntryChanged(manifest.version - 1)
            raise AlreadyRegistered(
                "another device registered this entry first: the vault holds its key, and"
                " nothing of this registration took effect",
                hint="recover with that device's password (or its recovery code)",
            )
        if found.agreed is None and request.authorization:
            # The key this change was authorized on is gone (another device deleted it, or
            # wrong guesses destroyed it): the change never takes effect, and the old
            # password opens nothing either (sim seeds 10610087, 10610234).
            gone = self._no_manifest(found)
            if isinstance(gone, Destroyed):
                raise gone
            if isinstance(gone, NotRegistered):
                raise EntryChanged(manifest.version - 1)
        versions = [(a.response.version, a.response.manifest) for a in found.answers if a.response]
        if not request.authorization and version_spent(
            versions, request.manifest, manifest.version, self.t
        ):
            # Another device's registration of this version took effect and was deleted
            # (or destroyed) since: the version is spent, so M never takes effect. Said as
            # the fleet being unsure, the user waited on a registration that could not
            # land (sim seed 10363016, a register racing another's register and delete).
            raise EntryChanged(manifest.version - 1, registration=True)
        older = [
            a.index
            for a in found.answers
            if a.response is not None and a.response.version < manifest.version
        ]
        if len(older) >= self.t:
            now = (
                "the old password still opens the key"
                if request.authorization
                else ("the entry is not registered yet")
            )
            raise FleetUnavailable(
                f"no vault node confirmed version {manifest.version} and {len(older)} still"
                f" answer an older one, so {now}; the commit was sent and may still take"
                f" effect (t nodes keep their shares of it, so the key is safe either way):"
                f" run 'vault status' to see the version in effect"
                f" ({'; '.join(problems[i] for i in sorted(problems))})"
            )
        raise VaultError(
            f"could not tell whether version {manifest.version} took effect: no node"
            " confirmed it and the nodes do not agree on the entry's manifest",
            hint="run 'vault status' when the vault answers again; if the new version is in"
            " effect, it opens with the new password (t nodes keep their shares of it)",
        )

    def _share_requests(
        self, manifest: bytes, shares: Sequence[bytes], authorization: bytes, counter: int
    ) -> list[Message]:
        return [
            RegisterShareRequest(self.account, self.entry, manifest, share, authorization, counter)
            for share in shares
        ]

    def _send_shares(
        self,
        op: Op,
        manifest: manifests.Manifest,
        requests: Sequence[Message],
        skip: Collection[int],
        tries: int = DELIVERY_TRIES,
        *,
        kinds: Collection[AckKind] = (AckKind.HELD,),
        patience: float = 0.0,
        settle: float = DELIVERY_SETTLE_SECONDS,
    ) -> tuple[dict[int, ShareAck], dict[int, str], list[NodeOutcome[ShareAck]]]:
        """One delivery (with resends): the nodes whose acknowledgement (of one of `kinds`)
        verifies, why the others did not, and the last fan-out's outcomes. Nodes that keep
        their share already acknowledge the same delivery again; those in `skip` (done
        before) are not waited for. With fewer than t acknowledgements, silent nodes are
        asked again for up to `patience` seconds, with t or more for up to `settle`."""
        encoded = manifest.to_bytes()
        taken: dict[int, ShareAck] = {}
        problems: dict[int, str] = {}
        outcomes: list[NodeOutcome[ShareAck]] = []
        deadline = time.monotonic() + patience
        settle_until = time.monotonic() + min(patience, settle)
        attempt = 0
        while True:
            _back_off(attempt)
            attempt += 1
            try:
                outcomes = self.vault.call_each(op, requests, ShareAck, resends=1)
            except RelayUnreachable:
                raise
            except FleetUnavailable:
                if time.monotonic() < deadline and len(taken) + len(skip) < self.t:
                    continue  # no node answered at all (the relay's 503)
                raise
            for outcome in outcomes:
                if outcome.index in taken or outcome.index in skip:
                    continue
                problem = self._check_ack(outcome, kinds, manifest, encoded)
                if problem is None and outcome.response is not None:
                    taken[outcome.index] = outcome.response
                    problems.pop(outcome.index, None)
                else:
                    problems[outcome.index] = problem or outcome.describe()
            silent = [
                o
                for o in outcomes
                if o.index not in taken and o.index not in skip and _transient(o)
            ]
            if not silent:
                break
            # Past the first tries, wait only for nodes that got the request (slow, or
            # their answer lost): one the relay could not reach stored nothing.
            wait_until = deadline if len(taken) + len(skip) < self.t else settle_until
            if attempt >= tries and (
                time.monotonic() >= wait_until or all(o.unreachable for o in silent)
            ):
                break
        return taken, problems, outcomes

    # ---- finishing later -------------------------------------------------------------------

    def _keep_pending(self, record: Pending) -> None:
        """Keep what some nodes did not acknowledge (or forget its version's debts when
        every node did; older versions' go at the next `finish`). A damaged file is left
        as it is, and the user is told."""
        try:
            if record.nodes:
                self.pending.put(record)
            else:
                self.pending.drop(record.key)
        except VaultError as err:
            self._notify(f"warning: could not keep the undelivered part: {err.message}")

    def _owed(self) -> tuple[Pending, ...]:
        return self.pending.owed(self.vault.fleet_id, self.account, self.entry, self.keys.epoch)

    def _cap_refusal(self, codes: list[str], what: str) -> VaultError | None:
        """The error for stagings refused by a node's cap per account, when more than
        N − t nodes refused (so an honest one did: review r1, findings 1 and 4), else None.
        Nodes that count differently (one behind its peers) may refuse by either cap."""
        pending = codes.count(ErrorCode.TOO_MANY_PENDING)
        names = codes.count(ErrorCode.TOO_MANY_ENTRIES)
        if pending + names <= self.nodes - self.t:
            return None
        started = (
            "register again an entry whose registration was cut off (that finishes it and"
            " takes no new place)"
        )
        named = (
            "register under an entry name this account had before (a deleted or destroyed"
            " entry's name takes no new place)"
        )
        if names > self.nodes - self.t:
            message = "as many entry names of this account as they keep for one account"
            hint = named
        elif pending > self.nodes - self.t:
            message = (
                "as many registrations of this account as they allow that were started and"
                " never finished (staged, never committed)"
            )
            hint = started
        else:
            message = (
                "as many entry names, or unfinished registrations, of this account as they"
                " keep for one account"
            )
            hint = f"{named}, or {started}"
        return VaultError(
            f"the {what}: the vault nodes already keep {message}, and take no new one",
            hint=f"{hint}, or ask the vault's operator",
        )

    def needs_password_to_finish(self) -> bool:
        """Whether this device keeps shares whose delivery needs a recovery first (shares
        kept by an earlier build, wrapped under the export_key)."""
        return any(record.needs_export_key for record in self._owed())

    @staticmethod
    def describe_pending(
        record: Pending | None, why: Mapping[int, str] | None = None
    ) -> tuple[str, ...]:
        """One line per node still owed `record`; `why`: what each node answered to the
        delivery just sent (as `_send_shares` names it), said after its line."""
        if record is None:
            return ()
        lines = []
        for n, owed in zip(record.nodes, _owed_lines(record), strict=True):
            line = f"{owed} not yet confirmed"
            reason = (why or {}).get(n, "").removeprefix(f"node {n}: ")
            lines.append(f"{line} ({reason})" if reason else line)
        return tuple(lines)

    def _note_confirmed(self, record: Pending, nodes: Collection[int]) -> None:
        owed = dict(zip(record.nodes, _owed_lines(record), strict=True))
        self.confirmed += [owed[n] for n in sorted(owed.keys() & set(nodes))]

    def finish(
        self,
        live: manifests.Manifest | None,
        export_key: bytes | None = None,
        *,
        status: EntryStatus = EntryStatus.LIVE,
        version: int = 0,
        answered: Collection[int] | None = None,
        tries: int = DELIVERY_TRIES,
    ) -> tuple[str, ...]:
        """Send again what this device still owes the entry, and return what is still
        owed. `live`: the agreed manifest (None when the entry is not live: then `status`
        and `version` say what it is). A share delivery needs the export_key (after a
        recovery); it is only ever sent for the live version's own manifest, so a share of
        a version the entry moved past is dropped, never sent. An erasure is sent while
        the entry is still the deleted version. `answered`: the nodes that answered just
        now; when none of those owed answered, nothing is sent (it would only wait for
        them); `tries`: fan-outs while some owed node gives no answer."""
        return tuple(
            line
            for record in self._owed()
            for line in self._finish_one(
                record,
                live,
                export_key,
                status=status,
                version=version,
                answered=answered,
                tries=tries,
            )
        )

    def _finish_one(
        self,
        record: Pending,
        live: manifests.Manifest | None,
        export_key: bytes | None,
        *,
        status: EntryStatus,
        version: int,
        answered: Collection[int] | None,
        tries: int,
    ) -> tuple[str, ...]:
        """`finish` for one version's record."""
        in_reach = answered is None or bool(set(record.nodes) & set(answered))
        due = record.due(live, status, version)
        if due is Due.DROP:
            self.pending.drop(record.key)  # moved on, or replaced
            return ()
        if due is Due.HELD_BACK:
            # Dropped when the entry was seen without it, `vault status` run at once, as
            # its message says, lost them when it then landed.
            current = live.version if live is not None else version
            now = f"version {current} is in effect" if live else "no key is in effect yet"
            return (
                f"version {record.version} (a registration or password change whose commit"
                f" was not confirmed): its shares are kept in case it still takes effect;"
                f" {now}, and the next registration or password change replaces them",
            )
        if not in_reach:
            return self.describe_pending(record)  # not yet
        if record.op is Op.DELETE_SHARE:
            try:
                return self.describe_pending(*self._finish_erasure(record))
            except VaultError as err:  # still owed, and said so
                self._notify(f"warning: erasure not sent again: {err.message}")
                return self.describe_pending(record)
        assert live is not None  # a share delivery is due only for the live manifest
        op: Op
        requests: list[Message]
        if not record.needs_export_key:
            op = Op.DELIVER_SHARE
            requests = [
                DeliverShareRequest(self.account, self.entry, record.manifest, sealed)
                for sealed in record.shares
            ]
        elif export_key is None:
            return self.describe_pending(record)  # wait for the next recovery
        else:
            op = Op.REGISTER_SHARE
            requests = self._share_requests(record.manifest, record.unwrap(export_key), b"", 0)
        acked, problems, _ = self._send_shares(
            op, live, requests, set(range(self.nodes)) - set(record.nodes), tries
        )
        self._note_confirmed(record, acked)
        # Each node's own answer is said (until review s40 it was dropped, and a node
        # that answered with a refusal read like one that was down).
        return self.describe_pending(self.pending.acknowledged(record, set(acked)), problems)

    def _finish_erasure(self, record: Pending) -> tuple[Pending | None, dict[int, str]]:
        """The erasure sent again: what is still owed, and what each node that did not
        confirm answered."""
        manifest = manifests.Manifest.from_bytes(record.manifest)
        request = DeleteShareRequest(
            self.account, self.entry, record.version, record.counter, record.authorization
        )
        outcomes = self.vault.call_each(Op.DELETE_SHARE, [request] * self.nodes, ShareAck)
        erased: set[int] = set()
        why: dict[int, str] = {}
        for outcome in outcomes:
            problem = self._check_ack(outcome, (AckKind.ERASED,), manifest, record.manifest)
            if problem is None:
                erased.add(outcome.index)
            else:
                why[outcome.index] = problem
        self._note_confirmed(record, erased)
        return self.pending.acknowledged(record, erased), why

    def _finish_quietly(
        self, live: manifests.Manifest | None, export_key: bytes | None = None, **kw: Any
    ) -> tuple[str, ...]:
        """`finish` as a side job of another operation: a failure is told, never raised
        (the operation itself succeeded)."""
        try:
            return self.finish(live, export_key, **kw)
        except (VaultError, AuthenticationFailed) as err:
            self._notify(f"warning: pending deliveries not finished: {err.message}")
            return ()

    def _check_ack(
        self,
        outcome: NodeOutcome[ShareAck],
        kinds: Collection[AckKind],
        manifest: manifests.Manifest,
        encoded: bytes,
    ) -> str | None:
        """None if node `outcome.index` signed exactly this acknowledgement (of one of
        `kinds`); else why not."""
        ack = outcome.response
        if ack is None:
            return outcome.describe()
        index = outcome.index
        if ack.kind not in kinds or ack.version != manifest.version or ack.index != index + 1:
            return f"node {index}: its acknowledgement is for something else"
        message = share_ack_message(
            AckKind(ack.kind),
            self.vault.fleet_id,
            self.account,
            self.entry,
            manifest.version,
            manifest.commitments.node_public_key(index + 1),
            encoded,
        )
        try:
            Ed25519PublicKey.from_public_bytes(self.keys.signing_keys[index]).verify(
                ack.signature, message
            )
        except InvalidSignature:
            return f"node {index}: its acknowledgement's signature does not verify"
        return None

    # ---- recovery --------------------------------------------------------------------------

    def live_manifest(self) -> tuple[manifests.Manifest, int]:
        """The agreed manifest and the entry's guess limit (from the nodes that agree)."""
        live = self._live()
        return live.manifest, live.guess_limit

    def _live(self, reads: range = range(FETCH_TRIES), before: _Live | None = None) -> _Live:
        """The agreed manifest and which nodes hold a share of it. Asked again (as
        `_manifests` does), each read's first fan-out asking the nodes to confirm their
        values with a round, while fewer than t holders answered and some other node
        gave no answer or one that may soon join the others (`elsewhere`): a manifest
        read is cheap, the relay stops waiting for the slowest nodes once a majority
        answered, a node behind may be about to take M and promote its staged share (sim
        seeds 11100072 and 11300256, recoveries racing another device's password change
        or registration), and the others may be about to take a delete one node holds
        already (11100324). `reads`, `before`: the reads left after `before`."""
        holders = set(before.holders) if before is not None else set()
        agreed_before = before.manifest.to_bytes() if before is not None else b""
        # Confirmed only after t or more answers (as in `_manifests`).
        answering = len(before.answered) if before is not None else 0
        for attempt in reads:
            if attempt:
                time.sleep(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1))
            found = self._manifests(confirm=attempt > 0 and answering >= self.t)
            answering = sum(1 for a in found.answers if not _transient(a))
            if found.agreed is None:
                raise self._no_manifest(found)
            agreed = found.agreed
            encoded = agreed.to_bytes()
            if encoded != agreed_before:
                holders, agreed_before = set(), encoded
            holders |= {
                a.index
                for a in found.answers
                if a.response is not None
                and a.response.manifest == encoded
                and a.response.holds_share
            }
            waiting = len(holders) < self.t and any(
                _transient(a) or (a.response is not None and elsewhere(a.response, agreed))
                for a in found.answers
                if a.index not in holders
            )
            if not waiting:
                break
        agreeing = [
            a.response
            for a in found.answers
            if a.response is not None and a.response.manifest == encoded
        ]
        without = tuple(
            a.describe()
            if a.response is None
            else f"node {a.index}: holds no share of this key"
            + ("" if a.response.manifest == encoded else " (it holds another manifest)")
            for a in found.answers
            if a.index not in holders
        )
        answered = frozenset(a.index for a in found.answers if a.response is not None)
        return _Live(
            agreed,
            _tth_largest([r.guess_limit for r in agreeing], self.t),
            tuple(sorted(holders)),
            without,
            answered,
            waiting,
            _may_be_last([r.guesses_remaining for r in agreeing], self.t),
        )

    def _deliver_owed_first(self, live: _Live) -> _Live:
        """Shares this device still owes for the live manifest, delivered before the
        evaluation to owed nodes in reach (they need no password): a node that missed its
        share at registration then holds it, and this recovery, like every later one, can
        use it (docs/threshold.md, "Finishing later"). `live` is one read; after it and
        after each read that follows while `waiting`, the shares go out to owed nodes that
        answered it and were not sent theirs yet (one try each: a recovery must not wait
        for nodes that are down), so they go out at once, not after the reads that wait
        for silent nodes: another device's recovery may be waiting on them too (sim seed
        10451914). Once a node took its share, the manifests are read again."""
        sent: set[tuple[bytes, int]] = set()  # (M, node) sent its share in this recovery
        for attempt in range(1, FETCH_TRIES + 1):
            encoded = live.manifest.to_bytes()
            owed = self._owed_register_shares(encoded)
            due = {n for r in owed for n in r.nodes if n in live.answered} - {
                n for m, n in sent if m == encoded
            }
            if due:
                sent |= {(encoded, n) for n in due}
                self._finish_quietly(live.manifest, answered=frozenset(due), tries=1)
                if self._owed_register_shares(encoded) != owed:
                    return self._live()  # taken: read again, so this recovery can use it
            if not live.waiting or attempt == FETCH_TRIES:
                return live
            live = self._live(range(attempt, attempt + 1), live)
        raise AssertionError("unreachable")

    def _nodes_owed_shares(self, manifest: bytes) -> set[int]:
        """The nodes this device owes a share of `manifest` (none if the file is damaged)."""
        return {n for r in self._owed_register_shares(manifest) for n in r.nodes}

    def _owed_register_shares(self, manifest: bytes) -> list[Pending]:
        """The share deliveries this device owes for `manifest` that need no password."""
        try:
            records = self._owed()
        except VaultError:
            return []  # a damaged file: told after the recovery, which goes on
        return [
            r
            for r in records
            if r.op is Op.REGISTER_SHARE and not r.needs_export_key and r.manifest == manifest
        ]

    def recover(
        self,
        password: str,
        *,
        ksf_floor: Argon2idParams,
        before_last_guess: Callable[[bool], None] | None = None,
    ) -> ThresholdRecovery:
        """The root key behind `password` (WrongPassword with the guesses left, Destroyed,
        FleetUnavailable naming the nodes that did not answer). `before_last_guess` is
        called, before anything is sent for evaluation, when the nodes say one guess is
        left (a wrong password then destroys the key): it raises to send nothing. Its
        argument says whether an earlier try of this recovery was sent (overtaken, it may
        have counted). Asked at most once: a try made again after one the user let go
        sends the same password, but a try that finds one left only after an earlier one
        asks then (two cron jobs: review s42-B, B1)."""
        asked: list[bool] = []

        def ask_once(after_a_try: bool) -> None:
            if before_last_guess is not None and not asked:
                asked.append(True)
                before_last_guess(after_a_try)

        for retry in itertools.count():
            try:
                ask = functools.partial(ask_once, retry > 0)
                return self._recover_once(password, ksf_floor, ask)
            except (WrongPassword, Destroyed, EntryChanged):
                raise  # each says what became of the guesses
            except VaultError as err:
                if not retry:
                    raise
                # An earlier try's evaluation went out and may have been counted, whatever
                # stopped this one: a manifest read that failed on the retry said nothing
                # of it (review s41-C), nor "no guess was used" of the relay's silence.
                raise _may_have_counted(err) from None
            except _Superseded as superseded:
                if retry >= STALE_ATTEMPT_RETRIES:
                    raise superseded.error from None
                # Two recoveries at once (two cron jobs, two devices): the one counted
                # later makes the nodes refuse the other. Spread the next try out.
                time.sleep(RETRY_BACKOFF_SECONDS * (1 + secrets.randbelow(1000) / 250))
        raise AssertionError("unreachable")

    def _made_here(self) -> set[bytes]:
        """The manifests this device made and still keeps shares of: a registration or
        password change here whose delivery it has not seen finish (kept before the commit
        goes out, so also one cut off by a crash before "password changed")."""
        try:
            records = self._owed()
        except VaultError:
            return set()  # a damaged file: told elsewhere
        return {r.manifest for r in records if r.op is Op.REGISTER_SHARE}

    def _recover_once(
        self,
        password: str,
        ksf_floor: Argon2idParams,
        before_last_guess: Callable[[], None],
    ) -> ThresholdRecovery:
        # Read before the owed shares go out (which may forget a record), and asked of the
        # manifest finally evaluated, which a read after them may change (review s42-A).
        made_here = self._made_here()
        live = self._deliver_owed_first(self._live(range(1)))
        set_here = live.manifest.to_bytes() in made_here
        manifest, guess_limit = live.manifest, live.guess_limit
        if len(live.holders) < self.t:
            # The fleet counts an attempt before any node evaluates: with fewer than t
            # share holders in reach it could only fail, so it is not sent at all.
            raise FleetUnavailable(
                f"need {self.t} vault nodes that hold a share of this key, {len(live.holders)}"
                f" answered ({'; '.join(live.without)})",
                hint="no guess was used: nothing was sent for evaluation; try again when"
                " the named nodes are back",
            )
        weaker = manifest.ksf.weaker_than(ksf_floor)
        if weaker is not None:
            # Before a guess is spent: the stretch is what an offline guesser pays.
            raise VaultError(
                f"the vault's entry asks for weaker password stretching than this client"
                f" allows ({weaker}); no guess was used",
                hint="if this entry was registered with other stretching settings, recover it"
                " with those; otherwise do not use it and register the key again",
            )
        if live.last_guess:
            before_last_guess()
        secret = password_bytes(password)
        blind, blinded = oprf.blind(secret)
        request = EvaluateRequest(
            self.account, self.entry, manifest.version, blinded, self._clock_ms()
        )
        good: dict[int, EvaluateResponse] = {}  # partials that verify, by node
        rejected: list[int] = []  # nodes whose partial does not verify
        problems: dict[int, str] = {}
        errors: list[str] = []
        give_up = time.monotonic() + EVALUATE_PATIENCE_SECONDS
        for round_number in itertools.count():
            try:
                outcomes = self.vault.call_each(
                    Op.EVALUATE, [request] * self.nodes, EvaluateResponse
                )
            except RelayUnreachable as err:
                if not round_number:
                    raise  # no connection: nothing reached the relay, no guess used
                raise _may_have_counted(err) from None
            except FleetUnavailable:
                # The relay's 503 (no node answered before its timeout) or its answer lost:
                # every node may still answer this attempt, which may be counted already.
                outcomes = [
                    NodeOutcome(index, failure="no answer (the relay heard from no node)")
                    for index in range(self.nodes)
                ]
            except VaultError as err:
                # The relay's 429, 401, 403 or a malformed answer: an untrusted relay may
                # have passed the request on all the same, so the user hears it may count
                # (invariant 10; review s25).
                raise _may_have_counted(err) from None
            for outcome in outcomes:
                index = outcome.index
                if index in good or index in rejected:
                    continue
                if outcome.response is None:
                    problems[index] = outcome.describe()
                    if outcome.error is not None:
                        errors.append(outcome.error.code)
                    continue
                if outcome.response.index != index + 1:
                    # Named as the node whose sealed channel it came back on.
                    problems[index] = f"node {index}: answered for another node's share"
                    continue
                problems.pop(index, None)
                if self._verifies(manifest, blinded, index, outcome.response):
                    good[index] = outcome.response
                else:
                    rejected.append(index)
                    problems[index] = f"node {index}: its partial evaluation does not verify"
            # A resend of the same B is answered again without a second charge, so nodes
            # that were too slow or could not commit in time, or a partial too few after
            # a bad one, are worth another round; refusals (destroyed, stale, no share)
            # are final, but one node's refusal does not stop the others' resend.
            waiting = sum(
                1
                for o in outcomes
                if o.index not in good and o.index not in rejected and _transient(o)
            )
            pause = min(RETRY_BACKOFF_CAP_SECONDS / 2, RETRY_BACKOFF_SECONDS * 2**round_number)
            # t partials that verify but do not agree on the attempt's number (hostile
            # nodes reporting their own) get no reset signed, and the right password's
            # attempt stays counted; nodes still silent may make t agree.
            stale = errors.count(ErrorCode.STALE_ATTEMPT)
            if (
                (len(good) >= self.t and (_agreed_attempt(good, self.t) is not None or not waiting))
                or (
                    len(good) + waiting < self.t
                    and not undecided(len(good), stale, waiting, self.t)
                )
                or (round_number >= EVALUATE_RESENDS and time.monotonic() + pause > give_up)
            ):
                break
            errors.clear()
            time.sleep(pause)
        if rejected:
            self._notify(
                f"warning: vault {threshold.named_nodes(sorted(rejected))} sent a partial"
                " evaluation that does not verify; it was ignored (report this to the operator)"
            )
        if len(good) < self.t:
            # t nodes saying so: at least one honest node erased its share on its own count
            # (one hostile node saying so alone made a live key look destroyed).
            if errors.count(ErrorCode.DESTROYED) >= self.t:
                raise Destroyed()
            if _moved_on(errors, self.nodes, self.t):
                # Not retried here: the password typed may be the one just replaced, and
                # asking again would spend a guess of the new version on it.
                raise EntryChanged(manifest.version)
            if ErrorCode.NOT_REGISTERED in errors or ErrorCode.STALE_MANIFEST in errors:
                moved = self._moved_since(manifest)
                if moved is not None:
                    raise moved
            stale = errors.count(ErrorCode.STALE_ATTEMPT)
            unavailable = FleetUnavailable(
                f"need {self.t} partial evaluations, {len(good)} nodes gave one "
                f"({'; '.join(problems[i] for i in sorted(problems))})",
                hint=EVALUATION_UNANSWERED_HINT,
            )
            if stale > self.nodes - self.t:
                # More than N − t refusals include an honest node's. Told as what they are:
                # "too few answered, try again later" named neither the refusal nor its
                # likely lasting cause, a device with its clock ahead (review s34).
                # With each node's own words: "older" and "answered for another B" call
                # for different steps (review s55b: the second was told as a clock).
                unavailable = FleetUnavailable(
                    f"{stale} of {self.nodes} vault nodes refused this attempt as older"
                    " than the latest one they counted"
                    f" ({'; '.join(problems[i] for i in sorted(problems))})",
                    hint=STALE_ATTEMPT_HINT,
                )
            # Before the liars are named: a node whose partial does not verify must not
            # keep the others' attempt, overtaken by another one, from being made again.
            if superseded(len(good), stale, self.t):
                raise _Superseded(unavailable)
            if rejected:
                raise VaultError(
                    f"need {self.t} partial evaluations that verify, have {len(good)};"
                    f" {threshold.named_nodes(sorted(rejected))} sent a partial that does not"
                    " verify against the entry's commitments",
                    hint="report the named nodes to the operator; try again later",
                )
            raise unavailable
        partials = [threshold.Partial(index + 1, r.evaluated, r.proof) for index, r in good.items()]
        combination = threshold.combine(manifest.commitments, blinded, partials)
        used = [good[i - 1] for i in combination.used]
        # Over every partial that verified, not only the t combined (one of which may be a
        # hostile node's 0).
        reported = [r.guesses_remaining for r in good.values()]
        remaining, up_to = _guesses_left(reported, self.t)
        output = oprf.finalize(secret, blind, combination.evaluated)
        try:
            export_key, root_key = manifests.open_entry(manifest, output)
        except WrongKey:
            if _none_left(reported, self.t):
                # No node will evaluate again: each erases its share at the next request.
                raise Destroyed() from None
            refused = WrongPassword(remaining, up_to=up_to)
            if set_here and manifest.version > 1:
                # The old password after a change whose end the user may not have seen (a
                # version 1 has no older password to mix up).
                refused.hint = (
                    f"this device set the password now in effect (version {manifest.version}:"
                    " the last registration or password change made here, even one that was"
                    f" cut off before it said so): give that password, not an older one;"
                    f" {refused.hint}"
                )
            raise refused from None
        agreed = _agreed_attempt(good, self.t)
        attempt = agreed if agreed is not None else sorted(r.attempt for r in used)[len(used) // 2]
        reset_missing = self._reset(export_key, manifest, blinded, good, agreed)
        # A ResetResponse is not signed: more than N − t of them include an honest node's.
        reset_confirmed = self.nodes - len(reset_missing) > self.nodes - self.t
        # This attempt used one guess; any other counted since the last reset was wrong.
        # With too few figures to outvote a hostile one, what is left lies between them, and
        # so does what was counted (review s62: a hostile "0 left" among t partials made a
        # first recovery warn of L − 1 wrong guesses, as it made a wrong password read as a
        # destroyed key before review s34).
        wrong = max(0, guess_limit - remaining - 1)
        at_least = None if up_to is None else max(0, guess_limit - up_to - 1)
        # One try, and only if an owed node answered just now: this is a side job of the
        # recovery, which must not wait for nodes that are down.
        pending = self._finish_quietly(manifest, export_key, answered=live.answered, tries=1)
        return ThresholdRecovery(
            root_key,
            export_key,
            manifest,
            attempt,
            wrong,
            tuple(sorted(rejected)),
            reset_missing,
            pending,
            reset_confirmed,
            None if at_least == wrong else at_least,
        )

    @staticmethod
    def _verifies(
        manifest: manifests.Manifest, blinded: bytes, index: int, answer: EvaluateResponse
    ) -> bool:
        """The node's partial verifies against K_i from the agreed manifest (never a key
        the node sends)."""
        partial = threshold.Partial(index + 1, answer.evaluated, answer.proof)
        try:
            return threshold.verify_partial(manifest.commitments, blinded, partial)
        except InvalidInput:
            return False

    def _reset(
        self,
        export_key: bytes,
        manifest: manifests.Manifest,
        blinded: bytes,
        good: dict[int, EvaluateResponse],
        attempt: int | None,
    ) -> tuple[str, ...]:
        """Prove the password to every node: one RESET statement over (version, attempt,
        SHA-256(B)) for all of them, with the attempt number t verified partials agree on
        (`_agreed_attempt`); with none agreed, nothing is signed and every node is named
        as missing the reset."""
        if attempt is None:
            why = "the nodes did not agree on this attempt's number; report it to the operator"
            return tuple(f"node {index}: {why}" for index in range(self.nodes))
        statement = self._statement(owner.StatementKind.RESET, manifest.version, attempt, blinded)
        signature = owner.sign_statement(export_key, statement)
        request = ResetRequest(self.account, self.entry, manifest.version, attempt, signature)
        requests: list[Message] = [request] * self.nodes
        done: set[int] = set()
        missing: dict[int, str] = {}
        for attempt in range(RESET_TRIES):
            if attempt:
                time.sleep(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                outcomes = self.vault.call_each(Op.RESET, requests, ResetResponse, resends=1)
            except VaultError as err:
                # The key is open and this attempt counted: a relay failing the reset (503,
                # 429, 403, no connection, garbage) must not fail the recovery, or each retry
                # of the right password would count another guess until the key is
                # destroyed (review s25). Told as a reset not confirmed.
                outcomes = [
                    NodeOutcome(index, failure=f"no answer ({err.message})")
                    for index in range(self.nodes)
                ]
            for outcome in outcomes:
                if outcome.index in done:
                    continue  # a node that took the reset refuses it a second time
                if outcome.response is not None:
                    done.add(outcome.index)
                    missing.pop(outcome.index, None)
                else:
                    missing[outcome.index] = outcome.describe()
            # Once an honest node took it, the reset is committed and travels in the
            # replicated value: a node that missed it verifies and applies it from there
            # (and answers a resend as done), so a slow or stalled node is not waited for.
            # One node's word is not enough: its answer is not signed, and a hostile node
            # could claim a reset the relay kept from every honest node (review s34). Until
            # more than N − t took it, a node that could not commit in time (several nodes
            # commit resets of one entry at once) is asked again; one that refused the
            # statement would refuse it again.
            if len(done) > self.nodes - self.t or not any(
                _transient(o) for o in outcomes if o.index not in done
            ):
                break
        return tuple(missing[i] for i in sorted(missing))

    def _status_now(self) -> EntryStatus | None:
        """The entry's status as `status` reads it, or None if it cannot be read now."""
        try:
            return self.status().status
        except VaultError:
            return None

    # ---- password change and delete --------------------------------------------------------

    def change_password(
        self, recovery: ThresholdRecovery, new_password: str, *, ksf: Argon2idParams
    ) -> Registered:
        """A fresh k and a new manifest (version + 1), authorized by the old owner's
        CHANGE_PASSWORD statement over the new manifest."""
        old = recovery.manifest
        made = manifests.register(
            password_bytes(new_password),
            recovery.root_key,
            fleet_id=self.vault.fleet_id,
            account=self.account,
            entry=self.entry,
            epoch=self.keys.epoch,
            nodes=self.nodes,
            threshold_count=self.t,
            ksf=ksf,
            version=old.version + 1,
        )
        counter = self._clock_ms()
        statement = self._statement(
            owner.StatementKind.CHANGE_PASSWORD, old.version, counter, made.manifest.to_bytes()
        )
        signature = owner.sign_statement(recovery.export_key, statement)
        return self._deliver(Op.CHANGE_SHARE, made, signature, counter)

    def delete(
        self, recovery: ThresholdRecovery, *, resend_until_erased: bool = False
    ) -> tuple[int, tuple[str, ...]]:
        """Erase the entry on every node: the owner's DELETE statement over M. Returns the
        deleted version and the nodes that did not acknowledge the erasure (and why).
        `resend_until_erased`: the statement is kept before it goes out, and sent again at
        later contacts even if this delete does not commit (a migration's old copy, which
        must go whatever the relay does to this one: docs/threshold.md, "Per live copy")."""
        manifest = recovery.manifest
        encoded = manifest.to_bytes()
        counter = self._clock_ms()
        statement = self._statement(owner.StatementKind.DELETE, manifest.version, counter, encoded)
        signature = owner.sign_statement(recovery.export_key, statement)
        erasure = Pending(
            self.vault.fleet_id,
            self.account,
            self.entry,
            manifest.version,
            Op.DELETE_SHARE,
            encoded,
            signature,
            counter,
            tuple(range(self.nodes)),
        )
        if resend_until_erased:
            self._keep_pending(erasure)
        request = DeleteShareRequest(self.account, self.entry, manifest.version, counter, signature)
        outcomes = self.vault.call_each(Op.DELETE_SHARE, [request] * self.nodes, ShareAck)
        pending: list[str] = []
        erased = 0
        unconfirmed: list[int] = []
        for outcome in outcomes:
            problem = self._check_ack(outcome, (AckKind.ERASED,), manifest, encoded)
            if problem is None:
                erased += 1
            else:
                pending.append(problem)
                unconfirmed.append(outcome.index)
        # The delete committed when t nodes confirmed it, or when the entry is empty now
        # though fewer confirmed erasing their own share.
        now = self._status_now() if erased < self.t else EntryStatus.EMPTY
        if now == EntryStatus.DESTROYED:
            # Wrong guesses (on another device) destroyed the key since this one recovered
            # it: nothing is left to delete, and "unavailable" sent the user to try again
            # (sim seed 10610144).
            self._keep_pending(replace(erasure, nodes=()))  # forget it, if kept
            raise Destroyed()
        if now != EntryStatus.EMPTY:
            codes = [o.error.code for o in outcomes if o.error is not None]
            moved: VaultError | None = (
                EntryChanged(manifest.version)
                if _moved_on(codes, self.nodes, self.t)
                else self._moved_since(manifest)
            )
            if moved is not None:
                # Another device changed the password since this one recovered the key
                # (sim seed 10241660), or its wrong guesses destroyed the key and a new
                # one was registered, the nodes answering "not registered" for this
                # version (sim seed 10408977): no version is left for this statement.
                self._keep_pending(replace(erasure, nodes=()))  # forget it, if kept
                raise moved
            raise FleetUnavailable(
                f"only {erased} of {self.nodes} vault nodes confirmed the erasure; "
                f"{self.t} are needed ({'; '.join(pending)})"
            )
        # The statement is public: kept, and sent again until every node confirms.
        self._keep_pending(replace(erasure, nodes=tuple(unconfirmed)))
        self._forget_changes_of(manifest.version)
        return manifest.version, tuple(pending)

    def _forget_changes_of(self, version: int) -> None:
        """`version` is deleted: the shares kept for a later version (a password change of
        it whose commit was not confirmed) can never take effect, the change's statement
        being of a version that is gone. Kept, they were "kept in case it still takes
        effect" at every `vault status`, and `vault finish` failed (exit 5, "the fleet is
        unavailable") until the next registration (review s61)."""
        try:
            for record in self._owed():
                if record.op is Op.REGISTER_SHARE and record.version > version:
                    self.pending.drop(record.key)
        except VaultError as err:
            self._notify(f"warning: could not forget the deleted key's shares: {err.message}")
