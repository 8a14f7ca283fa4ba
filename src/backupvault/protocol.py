"""The client ↔ fleet protocol: the messages inside the HPKE seal (docs/protocol.md).

Clients and vault nodes both import this module, and nothing else of each other. Each
operation has a request and a response message; any operation may instead be answered
with `ErrorResponse`. The HPKE `kind` of a sealed request is the operation's name, so a
request sealed for one operation cannot be replayed as another. The client seals each
request once to every node's own key (`SealedCopies`); the relay hands node i only its
copy, and names the node that answered in `NODE_HEADER`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TypeGuard

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.codec import Message, decode_any
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
    REGISTER_START = "register-start"
    REGISTER_FINISH = "register-finish"
    RECOVER_START = "recover-start"
    RECOVER_FINISH = "recover-finish"
    CHANGE_PASSWORD = "change-password"
    DELETE = "delete"
    STATUS = "status"


OPERATIONS: tuple[str, ...] = tuple(str(op) for op in Op)


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
    WRONG_PASSWORD = "wrong_password"
    DESTROYED = "destroyed"
    STALE_ATTEMPT = "stale_attempt"  # a newer attempt started, or this one was already used
    EXPIRED = "expired"
    FLEET_UNAVAILABLE = "fleet_unavailable"


@dataclass(frozen=True)
class RegisterStartRequest(Message):
    TAG = 1
    account: str
    entry: str
    registration_request: bytes


@dataclass(frozen=True)
class RegisterStartResponse(Message):
    TAG = 2
    registration_response: bytes
    registration_ticket: bytes  # opaque to the client; names the OPRF key used


@dataclass(frozen=True)
class RegisterFinishRequest(Message):
    """Used by register-finish (a new entry) and change-password (with a grant)."""

    TAG = 3
    account: str
    entry: str
    registration_ticket: bytes
    record: bytes  # OPAQUE RegistrationRecord
    ksf_params: bytes
    wrapped_root_key: bytes
    guess_limit: int
    grant: bytes  # empty for register-finish; from a recovery for change-password


@dataclass(frozen=True)
class RegisterFinishResponse(Message):
    TAG = 4
    version: int
    guess_limit: int


@dataclass(frozen=True)
class RecoverStartRequest(Message):
    """`client_time_ms`: the client's clock. A new attempt must be later than the entry's
    latest, so a recover-start replayed by the relay is refused without costing a guess;
    a resend of the latest attempt's own KE1 is answered again, also without a charge."""

    TAG = 5
    account: str
    entry: str
    ke1: bytes
    client_time_ms: int


@dataclass(frozen=True)
class RecoverStartResponse(Message):
    TAG = 6
    ke2: bytes
    ksf_params: bytes
    recovery_ticket: bytes  # opaque to the client; carries the attempt's server state
    guesses_remaining: int  # after this attempt
    guess_limit: int


@dataclass(frozen=True)
class RecoverFinishRequest(Message):
    TAG = 7
    account: str
    entry: str
    recovery_ticket: bytes
    ke3: bytes


@dataclass(frozen=True)
class RecoverFinishResponse(Message):
    TAG = 8
    sealed_wrapped_root_key: bytes  # AES-256-GCM under a key derived from the session key
    grant: bytes  # lets this client change the password shortly after


@dataclass(frozen=True)
class DeleteRequest(Message):
    """`grant`: from a successful recovery; needed to delete a live key. A destroyed entry
    (nothing left to protect) is cleared with the fleet token alone."""

    TAG = 9
    account: str
    entry: str
    grant: bytes


@dataclass(frozen=True)
class DeleteResponse(Message):
    TAG = 10
    version: int


@dataclass(frozen=True)
class StatusRequest(Message):
    TAG = 11
    account: str
    entry: str


@dataclass(frozen=True)
class StatusResponse(Message):
    TAG = 12
    status: int  # EntryStatus
    guess_limit: int
    guesses_remaining: int
    version: int


@dataclass(frozen=True)
class ErrorResponse(Message):
    TAG = 13
    code: str  # ErrorCode
    detail: str
    guesses_remaining: int


@dataclass(frozen=True, repr=False)
class AuthorizedRequest(Message):
    """What is sealed (after the response key): the account's fleet token, which the relay
    never sees and the firmware checks, and the operation's request."""

    TAG = 14
    fleet_token: str
    request: bytes

    def __repr__(self) -> str:
        return "AuthorizedRequest(...)"


@dataclass(frozen=True)
class SealedCopies(Message):
    """The body a client posts to the relay: the same request sealed to each node's own
    HPKE key, by node index (`copies[i]` opens only at node i). Each copy carries its own
    response key, so no node can read another's copy or forge another's answer."""

    TAG = 15
    copies: list[bytes]

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


#: The relay names the node whose answer it returns (its index), so the client opens the
#: answer with that copy's response key. A relay that lies only makes the answer fail to
#: open.
NODE_HEADER = "X-Backupvault-Answered-By"

#: Every sealed response of an operation has the same size, so the relay cannot tell a
#: success, a wrong password and an unknown entry apart by length (docs/protocol.md).
RESPONSE_PADDED_SIZE: dict[Op, int] = {
    Op.REGISTER_START: 384,
    Op.REGISTER_FINISH: 384,
    Op.RECOVER_START: 768,
    Op.RECOVER_FINISH: 384,
    Op.CHANGE_PASSWORD: 384,
    Op.DELETE: 384,
    Op.STATUS: 384,
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
    Op.REGISTER_START: RegisterStartRequest,
    Op.REGISTER_FINISH: RegisterFinishRequest,
    Op.RECOVER_START: RecoverStartRequest,
    Op.RECOVER_FINISH: RecoverFinishRequest,
    Op.CHANGE_PASSWORD: RegisterFinishRequest,
    Op.DELETE: DeleteRequest,
    Op.STATUS: StatusRequest,
}

RESPONSE_TYPES: dict[Op, type[Message]] = {
    Op.REGISTER_START: RegisterStartResponse,
    Op.REGISTER_FINISH: RegisterFinishResponse,
    Op.RECOVER_START: RecoverStartResponse,
    Op.RECOVER_FINISH: RecoverFinishResponse,
    Op.CHANGE_PASSWORD: RegisterFinishResponse,
    Op.DELETE: DeleteResponse,
    Op.STATUS: StatusResponse,
}


def decode_response(op: Op, data: bytes) -> Message:
    """A padded response body (`pad_response`), decoded."""
    return decode_any(unpad_response(op, data), (RESPONSE_TYPES[op], ErrorResponse))


def release_key(session_key: bytes, account: str, entry: str) -> bytes:
    """The key that seals wrapped_RK on its way out, derived from the OPAQUE session key."""
    info = b"backupvault/v1 release " + account.encode() + b"\x00" + entry.encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(session_key)


def opaque_context(fleet_id: bytes) -> bytes:
    """The OPAQUE context: binds every login transcript to one fleet."""
    return b"backupvault/v1 fleet " + fleet_id
