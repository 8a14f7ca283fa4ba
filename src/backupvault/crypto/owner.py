"""The entry owner's signing key and the statements it signs (docs/threshold.md).

Only someone who knows the password can compute export_key (RFC 9807), so a key derived
from it proves ownership to every node without a shared secret: each node checks the
signature itself and acts on nothing else.

    sk_auth = Ed25519 private key from HKDF-Expand-SHA512(export_key, AUTH_KEY_INFO, 32)
    pk_auth = its 32-byte public key, stored in the entry's manifest

export_key is already a uniformly random 64-byte HKDF output, so Expand alone is a sound
KDF here (RFC 5869 §3.3), as in RFC 9807's own key schedule.

A statement is signed over this exact encoding (integers big-endian):

    label          30 bytes  "backupvault/owner-statement/v1"
    kind            1 byte   1 = reset, 2 = change-password, 3 = delete
    fleet_id_len    2 bytes  u16, 1..65535
    fleet_id       fleet_id_len bytes
    account_len     1 byte   u8, 1..255
    account        account_len bytes (UTF-8)
    entry_len       1 byte   u8, 1..255
    entry          entry_len bytes (UTF-8)
    version         8 bytes  u64: the manifest version the statement is about
    counter         8 bytes  u64: reset → the attempt a; change/delete → a sequence number
    payload_hash   32 bytes  SHA-256 of the payload (see `payload_hash`)

What the payload is: reset → the blinded element B_a the node accepted with attempt a;
change-password → the new manifest M'; delete → the manifest M being deleted.

Single use (the verifier's rules, `verify_statement`): a node rebuilds the statement from
its own state (its fleet, account, entry, current version, and the B it accepted for that
attempt), so a signature for another fleet, entry, version or B never verifies; and it
accepts a counter only above the last one it acted on for this (entry, version), which it
persists before acting. A reset for attempt a thus works once; a change-password or delete
moves the version, which retires every statement about the old one.

The node-set epoch is not named: a rotation's migration registers the key afresh, so the
new epoch's copy has another pk_auth and no statement signed for the old copy verifies
there; a delete also hashes the old M, epoch included (docs/threshold.md, "Owner
statements": whatever keeps pk_auth across epochs must add the epoch first).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from backupvault.crypto.ed25519 import check_public_key
from backupvault.errors import AuthenticationFailed, InvalidInput

EXPORT_KEY_LEN = 64  # RFC 9807 Nh for SHA-512
AUTH_KEY_INFO = b"backupvault/v1 entry auth"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
PAYLOAD_HASH_LEN = 32
STATEMENT_LABEL = b"backupvault/owner-statement/v1"
_U64_MAX = 2**64 - 1


class StatementKind(enum.IntEnum):
    RESET = 1
    CHANGE_PASSWORD = 2
    DELETE = 3


def derive_owner_key(export_key: bytes) -> Ed25519PrivateKey:
    """sk_auth from export_key."""
    if not isinstance(export_key, bytes | bytearray) or len(export_key) != EXPORT_KEY_LEN:
        raise InvalidInput(f"export_key: expected {EXPORT_KEY_LEN} bytes")
    seed = HKDFExpand(algorithm=hashes.SHA512(), length=32, info=AUTH_KEY_INFO).derive(
        bytes(export_key)
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def owner_public_key(export_key: bytes) -> bytes:
    """pk_auth (32 bytes) for the manifest."""
    return derive_owner_key(export_key).public_key().public_bytes_raw()


def payload_hash(payload: bytes) -> bytes:
    """H(payload) as statements carry it: SHA-256."""
    return hashlib.sha256(payload).digest()


def _name_bytes(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    encoded = value.encode()
    if not 1 <= len(encoded) <= 255:
        raise InvalidInput(f"{what}: 1..255 bytes of UTF-8")
    return encoded


@dataclass(frozen=True)
class OwnerStatement:
    """One signed instruction of the entry owner; see the module docstring for the bytes."""

    kind: StatementKind
    fleet_id: bytes
    account: str
    entry: str
    version: int
    counter: int
    payload_hash: bytes

    MIN_LEN: ClassVar[int] = len(STATEMENT_LABEL) + 1 + 2 + 1 + 1 + 1 + 1 + 8 + 8 + 32

    def __post_init__(self) -> None:
        if not isinstance(self.kind, StatementKind):
            raise InvalidInput(f"statement kind: unknown {self.kind!r}")
        if not isinstance(self.fleet_id, bytes) or not 1 <= len(self.fleet_id) <= 0xFFFF:
            raise InvalidInput("statement fleet id: 1..65535 bytes")
        _name_bytes(self.account, "statement account")
        _name_bytes(self.entry, "statement entry")
        for name in ("version", "counter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
                raise InvalidInput(f"statement {name}: an integer 0..2^64-1")
        if not isinstance(self.payload_hash, bytes) or len(self.payload_hash) != PAYLOAD_HASH_LEN:
            raise InvalidInput(f"statement payload hash: expected {PAYLOAD_HASH_LEN} bytes")

    def to_bytes(self) -> bytes:
        account = _name_bytes(self.account, "statement account")
        entry = _name_bytes(self.entry, "statement entry")
        return (
            STATEMENT_LABEL
            + bytes([self.kind])
            + struct.pack(">H", len(self.fleet_id))
            + self.fleet_id
            + bytes([len(account)])
            + account
            + bytes([len(entry)])
            + entry
            + struct.pack(">QQ", self.version, self.counter)
            + self.payload_hash
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OwnerStatement:
        if not isinstance(data, bytes | bytearray) or len(data) < cls.MIN_LEN:
            raise InvalidInput("owner statement: too short")
        data = bytes(data)
        if data[: len(STATEMENT_LABEL)] != STATEMENT_LABEL:
            raise InvalidInput("owner statement: wrong label")
        pos = len(STATEMENT_LABEL)
        try:
            kind = StatementKind(data[pos])
        except ValueError:
            raise InvalidInput(f"owner statement: unknown kind {data[pos]}") from None
        pos += 1
        fields: list[bytes] = []
        for prefix in (2, 1, 1):
            if pos + prefix > len(data):
                raise InvalidInput("owner statement: truncated")
            length = int.from_bytes(data[pos : pos + prefix], "big")
            pos += prefix
            fields.append(data[pos : pos + length])
            pos += length
        tail = data[pos:]
        if len(tail) != 16 + PAYLOAD_HASH_LEN:
            raise InvalidInput("owner statement: wrong length")
        version, counter = struct.unpack(">QQ", tail[:16])
        try:
            account, entry = fields[1].decode(), fields[2].decode()
        except UnicodeDecodeError:
            raise InvalidInput("owner statement: account or entry is not UTF-8") from None
        return cls(kind, fields[0], account, entry, version, counter, tail[16:])


def sign_statement(export_key: bytes, statement: OwnerStatement) -> bytes:
    """The owner's signature (64 bytes) over `statement.to_bytes()`."""
    return derive_owner_key(export_key).sign(statement.to_bytes())


def verify_statement(
    public_key: bytes, statement: OwnerStatement, signature: bytes, *, last_counter: int | None
) -> None:
    """A node's check of an owner statement it rebuilt from its own state.

    `last_counter` is the highest counter this node has already acted on for this
    (entry, version) and statement kind, or None if none: a counter at or below it is a
    replay. Raises AuthenticationFailed if the signature is not pk_auth's over exactly
    these fields, or on a replay."""
    if not (isinstance(public_key, bytes) and _real_key(public_key)):
        check_public_key(public_key, "owner public key")  # raises, saying why
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise AuthenticationFailed(f"owner signature: expected {SIGNATURE_LEN} bytes")
    if last_counter is not None and statement.counter <= last_counter:
        raise AuthenticationFailed(
            f"owner statement {statement.kind.name.lower()} #{statement.counter} was already "
            f"used (this node has acted on #{last_counter})"
        )
    if not _signed_by(public_key, statement.to_bytes(), signature):
        raise AuthenticationFailed(
            f"the owner's {statement.kind.name.lower()} signature does not verify for "
            f"{statement.account}/{statement.entry} version {statement.version}"
        )


#: Owner keys and signatures checked lately, remembered with their outcome: every acceptor
#: checks the reset statement a value carries on each Accept of the entry, the same
#: statement with the same signature each time, and a check took about 165 µs (the key's
#: point check 50 µs of it; docs/performance.md, "What was changed"). Each answer is a
#: function of the exact bytes it was asked about, so remembering it changes no outcome.
CHECKS_REMEMBERED = 1024


@functools.lru_cache(maxsize=CHECKS_REMEMBERED)
def _real_key(public_key: bytes) -> bool:
    try:
        check_public_key(public_key, "owner public key")
    except InvalidInput:
        return False
    return True


@functools.lru_cache(maxsize=CHECKS_REMEMBERED)
def _signed_by(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public_key`'s over `message` (a key `_real_key` took)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
