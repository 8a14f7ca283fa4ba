"""The client ↔ fleet protocol: the messages inside the HPKE seal (docs/protocol.md).

Clients and vault nodes both import this module, and nothing else of each other. Each
operation has a request and a response message; any operation may instead be answered
with `ErrorResponse`. The HPKE `kind` of a sealed request is the operation's name, so a
request sealed for one operation cannot be replayed as another. The client seals each
request once to every node's own key (`SealedCopies`); the relay hands node i only its
copy, and returns every node's answer labelled with its index (`fanout.FanoutAnswers`).
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import TypeGuard

from backupvault.codec import Message, decode_any
from backupvault.crypto import oprf, threshold
from backupvault.crypto.manifest import Manifest
from backupvault.crypto.seal import SEALED_SHARE_LEN
from backupvault.errors import InvalidInput

NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_NAME = re.compile(NAME_PATTERN)


def is_valid_name(value: object) -> TypeGuard[str]:
    """Accounts and entry ids: 1-64 characters of letters, digits, '.', '_' or '-'."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(what: str, value: str) -> str:
    """`value` if it is a valid account or entry id; the relay and the nodes both check."""
    if not is_valid_name(value):
        raise InvalidInput(f"{what} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


class Op(enum.StrEnum):
    """The threshold flow's operations (docs/threshold.md)."""

    REGISTER_SHARE = "register-share"
    CHANGE_SHARE = "change-share"
    COMMIT_SHARES = "commit-shares"
    MANIFEST = "manifest"
    EVALUATE = "evaluate"
    RESET = "reset"
    DELETE_SHARE = "delete-share"
    DELIVER_SHARE = "deliver-share"


OPERATIONS: tuple[str, ...] = tuple(str(op) for op in Op)

#: The single-seed flow's operations, removed with it: the relay and the nodes answer them
#: 410 `removed_operation` with this detail, so an old client says what to do.
REMOVED_OPERATIONS = frozenset(
    {
        "register-start",
        "register-finish",
        "recover-start",
        "recover-finish",
        "change-password",
        "delete",
        "status",
    }
)
REMOVED_OPERATION_DETAIL = (
    "this vault no longer has the single-seed flow (removed: every entry uses the threshold"
    " vault, docs/threshold.md); update the client"
)


class EntryStatus(enum.IntEnum):
    EMPTY = 0
    LIVE = 1
    DESTROYED = 2


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"  # the fleet token inside the seal was refused
    MISMATCH = "mismatch"  # the sealed account/entry differ from what the relay asserted
    NOT_REGISTERED = "not_registered"
    ALREADY_REGISTERED = "already_registered"
    DESTROYED = "destroyed"
    STALE_ATTEMPT = "stale_attempt"  # a newer attempt started, or this one was already used
    FLEET_UNAVAILABLE = "fleet_unavailable"
    STALE_MANIFEST = "stale_manifest"  # the request names another version than this node holds
    REFUSED = "refused"  # an owner signature or a share did not verify against this node's state
    #: The account has as many registrations staged and never committed on this node as it
    #: may keep (`STAGED_ENTRIES_PER_ACCOUNT`, hsm/shares.py): no new one is staged.
    TOO_MANY_PENDING = "too_many_pending"
    #: The account keeps as many entries on this node as it may (`ENTRIES_PER_ACCOUNT`,
    #: hsm/shares.py): no share of a new entry is staged.
    TOO_MANY_ENTRIES = "too_many_entries"


# Tags 1-12 were the single-seed flow's messages (register-start/finish, recover-start/
# finish, change-password, delete, status), removed with it: they stay reserved, and a
# body carrying one is refused as an unknown message (docs/protocol.md).


@dataclass(frozen=True)
class ErrorResponse(Message):
    TAG = 13
    code: str  # ErrorCode
    detail: str
    guesses_remaining: int


@dataclass(frozen=True, repr=False)
class AuthorizedRequest(Message):
    """What is sealed (after the response key): the account's fleet token, which the relay
    never sees and the firmware checks, the operation's request, and the device's proof
    binding the token to this request and this node (`tokens.sign_request_proof`)."""

    TAG = 14
    fleet_token: str
    request: bytes
    proof: bytes

    def __repr__(self) -> str:
        return "AuthorizedRequest(...)"


@dataclass(frozen=True)
class SealedCopies(Message):
    """The body a client posts to the relay: the same request sealed to each node's own
    HPKE key, by node index (`copies[i]` opens only at node i). Each copy carries its own
    response key, so no node can read another's copy or forge another's answer."""

    TAG = 15
    copies: list[bytes] = field(repr=False)  # sealed: never printed

    @classmethod
    def for_nodes(cls, data: bytes, nodes: int) -> SealedCopies:
        """Decode the relay's view of a body: one non-empty copy per node."""
        copies = cls.from_bytes(data)
        if len(copies.copies) != nodes:
            raise InvalidInput(
                f"the request holds {len(copies.copies)} sealed copies; this fleet has"
                f" {nodes} nodes (is the client's fleet configuration current?)"
            )
        if not all(copies.copies):
            raise InvalidInput("a sealed copy is empty")
        return copies


# ---- the threshold flow (docs/threshold.md, docs/protocol.md "Threshold messages") ------

#: The largest manifest a node stores: it must fit, sealed and padded, in a `manifest`
#: answer (RESPONSE_PADDED_SIZE).
MAX_MANIFEST_LEN = 896
#: The most nodes a fleet has: a manifest holds t − 1 commitments (t = N // 2 + 1) and
#: must fit MAX_MANIFEST_LEN with the longest account and entry names; at 24 nodes it no
#: longer does, and no registration could be made (`tests/relay/test_body_budget.py`).
MAX_FLEET_NODES = 23
#: What one node's sealed copy of a client's request takes at most, with room to spare: a
#: 4,096-character fleet token and its proof, the largest manifest, every node's
#: acknowledgement, the hybrid KEM's ciphertext (7,259 bytes at 23 nodes, a password
#: change's commit, the largest: `tests/relay/test_body_budget.py`). The relay takes a
#: body of at least this much per node.
COPY_BUDGET = 8 * 1024


def fleet_size_refused(nodes: int) -> str | None:
    """Why a fleet cannot have `nodes` nodes, or None when it can."""
    if nodes < 1 or nodes % 2 == 0:
        return "a fleet has an odd number of nodes (1, 3, 5, ...)"
    if nodes > MAX_FLEET_NODES:
        return (
            f"a fleet has at most {MAX_FLEET_NODES} nodes (an entry's manifest names a"
            " commitment for each share a recovery needs, and must fit a node's answer)"
        )
    return None


SIGNATURE_LEN = 64  # Ed25519: owner statements and node acknowledgements


def _check_u64(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise InvalidInput(f"{what}: an integer 0..2^64-1")


def _check_signature(what: str, value: bytes, *, optional: bool = False) -> None:
    if optional and value == b"":
        return
    if not isinstance(value, bytes) or len(value) != SIGNATURE_LEN:
        raise InvalidInput(f"{what}: expected {SIGNATURE_LEN} bytes")


def check_manifest_bytes(data: bytes) -> Manifest:
    """A manifest as a request or an answer carries it: it decodes (every point canonical
    and non-identity) and fits a `manifest` answer."""
    if not isinstance(data, bytes) or len(data) > MAX_MANIFEST_LEN:
        raise InvalidInput(f"manifest: at most {MAX_MANIFEST_LEN} bytes")
    return Manifest.from_bytes(data)


@dataclass(frozen=True)
class RegisterShareRequest(Message):
    """Deliver node i's share of a new entry (`register-share`, `authorization` and
    `counter` empty/0) or of a password change (`change-share`: the old owner's
    CHANGE_PASSWORD signature over SHA-256(manifest), for the old version and `counter`)."""

    TAG = 17
    account: str
    entry: str
    manifest: bytes
    share: bytes = field(repr=False)  # index u8 || k_i (32, little-endian scalar); never printed
    authorization: bytes  # 64-byte owner signature, or empty for a new entry
    counter: int  # the change statement's sequence number; 0 for a new entry

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        check_manifest_bytes(self.manifest)
        threshold.KeyShare.from_bytes(self.share)
        _check_signature("authorization", self.authorization, optional=True)
        _check_u64("counter", self.counter)


@dataclass(frozen=True)
class DeliverShareRequest(Message):
    """Deliver node i's share of the entry's committed manifest late (`deliver-share`,
    docs/threshold.md "Finishing later"): `sealed_share` is the share HPKE-sealed to node
    i alone when it was dealt (`crypto.seal.seal_share`), kept on the device since. The
    node opens it and takes it as a register-share of `manifest`."""

    TAG = 27
    account: str
    entry: str
    manifest: bytes
    sealed_share: bytes = field(repr=False)  # a key share, sealed: never printed

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        check_manifest_bytes(self.manifest)
        if not isinstance(self.sealed_share, bytes) or len(self.sealed_share) not in set(
            SEALED_SHARE_LEN.values()
        ):
            raise InvalidInput("sealed_share: not a sealed share's length")


class AckKind(enum.IntEnum):
    HELD = 1  # "I hold the share for K_i of this version"
    ERASED = 2  # "I erased the share for K_i of this version"
    STAGED = 3  # "I keep the share for K_i of this version, ready for its commit"


#: One node's acknowledgement inside a commit and the value it makes: index u8 || kind u8
#: (held or staged) || Ed25519 signature (64).
COMMIT_ACK_LEN = 66


@dataclass(frozen=True)
class CommitAck:
    """A node's signed word that it holds (or keeps staged) its share of M."""

    index: int
    kind: AckKind
    signature: bytes


def encode_commit_acks(acks: list[CommitAck]) -> bytes:
    """The acknowledgements of a commit, by rising share index (one per node)."""
    ordered = sorted(acks, key=lambda a: a.index)
    if len({a.index for a in ordered}) != len(ordered):
        raise InvalidInput("two acknowledgements from one node")
    return b"".join(bytes([a.index, a.kind]) + a.signature for a in ordered)


def decode_commit_acks(data: bytes) -> list[CommitAck]:
    """`encode_commit_acks`' bytes: whole entries, rising distinct indices, held or staged.
    Signatures are not checked here (`shares.count_commit_acks` does, with the node keys)."""
    if len(data) % COMMIT_ACK_LEN or len(data) > COMMIT_ACK_LEN * threshold.MAX_NODES:
        raise InvalidInput(f"commit acknowledgements: a multiple of {COMMIT_ACK_LEN} bytes")
    acks: list[CommitAck] = []
    for at in range(0, len(data), COMMIT_ACK_LEN):
        index, kind = data[at], data[at + 1]
        if kind not in (AckKind.HELD, AckKind.STAGED):
            raise InvalidInput("a commit acknowledgement is held or staged")
        if not 1 <= index <= threshold.MAX_NODES or (acks and index <= acks[-1].index):
            raise InvalidInput("commit acknowledgements: distinct share indices, rising")
        acks.append(CommitAck(index, AckKind(kind), data[at + 2 : at + COMMIT_ACK_LEN]))
    return acks


@dataclass(frozen=True)
class CommitSharesRequest(Message):
    """Make M the entry's version (`commit-shares`), once at least t nodes acknowledged
    they keep their share of it (`acks`, `encode_commit_acks`): a registration
    (`authorization` empty, counter 0) or a password change (the old owner's
    CHANGE_PASSWORD signature over SHA-256(M), as in `change-share`). It carries no share:
    each node promotes the one it staged (docs/threshold.md, "Stage, then commit")."""

    TAG = 26
    account: str
    entry: str
    manifest: bytes
    authorization: bytes
    counter: int
    acks: bytes

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        check_manifest_bytes(self.manifest)
        _check_signature("authorization", self.authorization, optional=True)
        _check_u64("counter", self.counter)
        decode_commit_acks(self.acks)


@dataclass(frozen=True)
class ShareAck(Message):
    """A node's signed acknowledgement (`share_ack_message`), checked by the client against
    the node's signing key from the deployment record and K_i from the agreed manifest."""

    TAG = 18
    kind: int  # AckKind
    version: int
    index: int  # the node's share index
    signature: bytes

    def __post_init__(self) -> None:
        if self.kind not in tuple(AckKind):
            raise InvalidInput(f"acknowledgement kind: unknown {self.kind!r}")
        _check_u64("version", self.version)
        if not 1 <= self.index <= threshold.MAX_NODES:
            raise InvalidInput(f"share index: 1..{threshold.MAX_NODES}")
        _check_signature("acknowledgement signature", self.signature)


def share_ack_message(
    kind: AckKind,
    fleet_id: bytes,
    account: str,
    entry: str,
    version: int,
    node_public_key: bytes,
    manifest: bytes,
) -> bytes:
    """The bytes a node signs with its Ed25519 key (docs/protocol.md): K_i is the share's
    public key k_i·G, `manifest` the M it belongs to."""
    names = [
        check_name(what, value).encode() for what, value in (("account", account), ("entry", entry))
    ]
    if not 1 <= len(fleet_id) <= 0xFFFF:
        raise InvalidInput("fleet id: 1..65535 bytes")
    oprf.validate_element(node_public_key, "share public key")
    return (
        b"backupvault/v1 share-ack"
        + bytes([kind])
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + b"".join(bytes([len(name)]) + name for name in names)
        + struct.pack(">Q", version)
        + node_public_key
        + hashlib.sha256(manifest).digest()
    )


@dataclass(frozen=True)
class ManifestRequest(Message):
    TAG = 19
    account: str
    entry: str
    #: Answer only after a round that leaves the entry as it is, so that a node that
    #: missed a change (back from a restart before settling reached it) answers the
    #: newest value a majority holds. Clients set it on the first resend after t or more
    #: answers that did not agree (docs/threshold.md, "A read that asks for a round").
    confirm: bool = False

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)


@dataclass(frozen=True)
class ManifestResponse(Message):
    """The entry as this node holds it. `manifest` is empty unless the entry is live;
    `version` is the entry's latest version even when it is empty (a new registration
    takes version + 1, so no statement about a deleted version can be replayed)."""

    TAG = 20
    status: int  # EntryStatus
    version: int
    manifest: bytes
    guess_limit: int
    guesses_remaining: int  # this node's own count: L - count
    #: This node holds a live share for this version (it checked it against `manifest`):
    #: the client sends no evaluate, so no guess is counted, unless t of the nodes that
    #: agree on M say so.
    holds_share: bool

    def __post_init__(self) -> None:
        if self.status not in tuple(EntryStatus):
            raise InvalidInput(f"entry status: unknown {self.status!r}")
        for name in ("version", "guess_limit", "guesses_remaining"):
            _check_u64(name, getattr(self, name))
        if self.manifest and self.status != EntryStatus.LIVE:
            # "empty unless live" (docs/protocol.md): else one answer would count both
            # towards agreeing on M and towards "destroyed" or "not registered".
            raise InvalidInput("only a live entry's answer holds a manifest")
        if self.manifest:
            check_manifest_bytes(self.manifest)
        elif self.status == EntryStatus.LIVE:
            raise InvalidInput("a live entry's answer without its manifest")
        if self.holds_share and self.status != EntryStatus.LIVE:
            raise InvalidInput("only a live entry's answer holds a share")


@dataclass(frozen=True)
class EvaluateRequest(Message):
    """Recovery step 1: ask for k_i·B for one attempt. `client_time_ms`: the client's
    clock; a new attempt must be later than the entry's latest, so a request replayed by
    the relay is refused without costing a guess (a resend of the latest attempt's own B
    is answered again, also without a charge)."""

    TAG = 21
    account: str
    entry: str
    version: int
    blinded: bytes  # B, canonical non-identity ristretto255
    client_time_ms: int

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        _check_u64("version", self.version)
        oprf.validate_element(self.blinded, "blinded element")
        if not isinstance(self.client_time_ms, int) or not 0 <= self.client_time_ms < 1 << 63:
            raise InvalidInput("client time out of range")


@dataclass(frozen=True)
class EvaluateResponse(Message):
    """Node `index`'s partial evaluation for attempt `attempt`, with its proof, and the
    guesses this node has left for the entry's version."""

    TAG = 22
    attempt: int
    index: int
    evaluated: bytes  # Z_i = k_i·B
    proof: bytes  # c || s, 64 bytes
    guesses_remaining: int

    def __post_init__(self) -> None:
        _check_u64("attempt", self.attempt)
        _check_u64("guesses remaining", self.guesses_remaining)
        self.partial()  # validates the index, the point and the proof's length
        for half, name in ((self.proof[:32], "c"), (self.proof[32:], "s")):
            if int.from_bytes(half, "little") >= oprf.GROUP_ORDER:
                raise InvalidInput(f"proof scalar {name}: not canonical")

    def partial(self) -> threshold.Partial:
        if not 1 <= self.index <= threshold.MAX_NODES:
            raise InvalidInput(f"share index: 1..{threshold.MAX_NODES}")
        return threshold.Partial(self.index, self.evaluated, self.proof)


@dataclass(frozen=True)
class ResetRequest(Message):
    """The owner's proof of the password: a RESET statement signed with sk_auth over
    (fleet, account, entry, version, attempt, SHA-256(B of that attempt))."""

    TAG = 23
    account: str
    entry: str
    version: int
    attempt: int
    signature: bytes

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        _check_u64("version", self.version)
        _check_u64("attempt", self.attempt)
        _check_signature("owner signature", self.signature)


@dataclass(frozen=True)
class ResetResponse(Message):
    TAG = 24
    version: int
    attempt: int  # the reset this node now holds (its reset_at)
    guesses_remaining: int

    def __post_init__(self) -> None:
        for name in ("version", "attempt", "guesses_remaining"):
            _check_u64(name, getattr(self, name))


@dataclass(frozen=True)
class DeleteShareRequest(Message):
    """Delete a live entry: the owner's DELETE statement over (version, counter,
    SHA-256(M)). Answered with an ERASED `ShareAck`."""

    TAG = 25
    account: str
    entry: str
    version: int
    counter: int
    signature: bytes

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        _check_u64("version", self.version)
        _check_u64("counter", self.counter)
        _check_signature("owner signature", self.signature)


# ---- count reports: node to node, over the peer channel (fleet/channel.py) -------------

COUNT_NONCE_LEN = 32


@dataclass(frozen=True)
class CountReportRequest(Message):
    """A node that found its store rolled back asks a peer how far an entry's attempts
    went (docs/threshold.md, "Counters and erasure"). `nonce`: fresh, chosen by the
    asking node, so an old report cannot be replayed to it."""

    TAG = 78
    account: str
    entry: str
    version: int
    nonce: bytes

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        _check_u64("version", self.version)
        if len(self.nonce) != COUNT_NONCE_LEN:
            raise InvalidInput(f"count report nonce: expected {COUNT_NONCE_LEN} bytes")


@dataclass(frozen=True)
class CountReport(Message):
    """A peer's answer to `CountReportRequest`, signed with its Ed25519 signing key (from
    the deployment record) over `count_report_message`. `attempt`: the highest attempt
    number it has accepted for the entry's version; `reset_at`: the latest attempt of an
    owner-signed reset it holds."""

    TAG = 79
    account: str
    entry: str
    version: int
    reporter: int  # the reporting node's share index
    requester: int  # the asking node's share index
    attempt: int
    reset_at: int
    nonce: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_name("account", self.account)
        check_name("entry", self.entry)
        for name in ("version", "attempt", "reset_at"):
            _check_u64(name, getattr(self, name))
        for name in ("reporter", "requester"):
            if not 1 <= getattr(self, name) <= threshold.MAX_NODES:
                raise InvalidInput(f"{name}: a share index 1..{threshold.MAX_NODES}")
        if len(self.nonce) != COUNT_NONCE_LEN:
            raise InvalidInput(f"count report nonce: expected {COUNT_NONCE_LEN} bytes")
        _check_signature("count report signature", self.signature)


def count_report_message(fleet_id: bytes, report: CountReport) -> bytes:
    """The bytes a reporting node signs (docs/protocol.md, "Count reports")."""
    names = [
        check_name(what, value).encode()
        for what, value in (("account", report.account), ("entry", report.entry))
    ]
    if not 1 <= len(fleet_id) <= 0xFFFF:
        raise InvalidInput("fleet id: 1..65535 bytes")
    return (
        b"backupvault/v1 count-report"
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + bytes([report.reporter, report.requester])
        + b"".join(bytes([len(name)]) + name for name in names)
        + struct.pack(">QQQ", report.version, report.attempt, report.reset_at)
        + report.nonce
    )


COUNT_MESSAGES: tuple[type[Message], ...] = (CountReportRequest, CountReport)


#: Every sealed response of an operation has the same size, so the relay cannot tell a
#: success, a wrong password and an unknown entry apart by length (docs/protocol.md).
RESPONSE_PADDED_SIZE: dict[Op, int] = {
    Op.REGISTER_SHARE: 384,
    Op.CHANGE_SHARE: 384,
    Op.COMMIT_SHARES: 384,
    Op.MANIFEST: 1024,
    Op.EVALUATE: 384,
    Op.RESET: 384,
    Op.DELETE_SHARE: 384,
    Op.DELIVER_SHARE: 384,
}
#: Error details are cut to this many characters, so every error fits the padded size.
MAX_ERROR_DETAIL = 160


def pad_response(op: Op, body: bytes) -> bytes:
    """`body || 0x80 || 0x00...` to the operation's size (ISO/IEC 7816-4 padding)."""
    size = RESPONSE_PADDED_SIZE[op]
    if len(body) + 1 > size:
        raise ValueError(f"a {op} response of {len(body)} bytes does not fit {size}")
    return body + b"\x80" + bytes(size - len(body) - 1)


def unpad_response(op: Op, data: bytes) -> bytes:
    if len(data) != RESPONSE_PADDED_SIZE[op]:
        raise InvalidInput("the vault's answer has the wrong size")
    body = data.rstrip(b"\x00")
    if not body.endswith(b"\x80"):
        raise InvalidInput("the vault's answer is not padded correctly")
    return body[:-1]


REQUEST_TYPES: dict[Op, type[Message]] = {
    Op.REGISTER_SHARE: RegisterShareRequest,
    Op.CHANGE_SHARE: RegisterShareRequest,
    Op.COMMIT_SHARES: CommitSharesRequest,
    Op.MANIFEST: ManifestRequest,
    Op.EVALUATE: EvaluateRequest,
    Op.RESET: ResetRequest,
    Op.DELETE_SHARE: DeleteShareRequest,
    Op.DELIVER_SHARE: DeliverShareRequest,
}

RESPONSE_TYPES: dict[Op, type[Message]] = {
    Op.REGISTER_SHARE: ShareAck,
    Op.CHANGE_SHARE: ShareAck,
    Op.COMMIT_SHARES: ShareAck,
    Op.MANIFEST: ManifestResponse,
    Op.EVALUATE: EvaluateResponse,
    Op.RESET: ResetResponse,
    Op.DELETE_SHARE: ShareAck,
    Op.DELIVER_SHARE: ShareAck,
}


def decode_response(op: Op, data: bytes) -> Message:
    """A padded response body (`pad_response`), decoded."""
    return decode_any(unpad_response(op, data), (RESPONSE_TYPES[op], ErrorResponse))
