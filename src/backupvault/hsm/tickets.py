"""Tickets: small state the fleet hands the client between two steps of a flow.

A ticket is sealed (AES-256-GCM) under a key derived from the fleet-wide ticket key, so
any node can check it and the client can neither read nor alter it. It carries what a
node would otherwise have to remember between KE2 and KE3, so the next step may land on
any node. Every ticket gets its own key from a random salt, so the fleet's ticket key
never meets the GCM limits on random nonces, however many tickets it seals.

    ticket = salt (32) || AES-256-GCM(key, 0^12, codec(body), aad)
    key    = HKDF-SHA256(ikm = ticket_key, salt = salt, info = "backupvault/v1 ticket key")
    aad    = "backupvault/v1 ticket " || body type name
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.codec import Message
from backupvault.errors import AuthenticationFailed, InvalidInput

TICKET_LIFETIME_SECONDS = 120
GRANT_LIFETIME_SECONDS = 600


@dataclass(frozen=True)
class RegistrationTicket(Message):
    TAG = 50
    account: str
    entry: str
    registration_nonce: bytes
    expires_at: int


@dataclass(frozen=True, repr=False)
class RecoveryTicket(Message):
    TAG = 51
    account: str
    entry: str
    attempt_seq: int
    expected_client_mac: bytes = field(repr=False)
    session_key: bytes = field(repr=False)
    expires_at: int

    def __repr__(self) -> str:
        return f"RecoveryTicket({self.account}/{self.entry} attempt {self.attempt_seq})"


@dataclass(frozen=True)
class Grant(Message):
    """Proof of a successful recovery: allows a password change on that entry."""

    TAG = 52
    account: str
    entry: str
    generation: int
    success_seq: int
    expires_at: int


T = TypeVar("T", bound=Message)


_SALT_LEN = 32
_ZERO_NONCE = bytes(12)  # each key seals exactly one ticket


class TicketSealer:
    def __init__(self, ticket_key: bytes, rng: Callable[[int], bytes]) -> None:
        if len(ticket_key) != 32:
            raise InvalidInput("ticket key must be 32 bytes")
        self._ticket_key = ticket_key
        self._rng = rng

    def _aead(self, salt: bytes) -> AESGCM:
        key = HKDF(hashes.SHA256(), 32, salt=salt, info=b"backupvault/v1 ticket key")
        return AESGCM(key.derive(self._ticket_key))

    def seal(self, body: Message) -> bytes:
        salt = self._rng(_SALT_LEN)
        aad = b"backupvault/v1 ticket " + type(body).__name__.encode()
        return salt + self._aead(salt).encrypt(_ZERO_NONCE, body.to_bytes(), aad)

    def open(self, kind: type[T], sealed: bytes, now: float) -> T:
        if len(sealed) < _SALT_LEN + 16:
            raise InvalidInput("ticket too short")
        aad = b"backupvault/v1 ticket " + kind.__name__.encode()
        try:
            plaintext = self._aead(sealed[:_SALT_LEN]).decrypt(_ZERO_NONCE, sealed[_SALT_LEN:], aad)
        except InvalidTag:
            raise AuthenticationFailed("ticket failed authentication") from None
        body = kind.from_bytes(plaintext)
        expires_at = getattr(body, "expires_at")  # noqa: B009 - every ticket type has it
        if now > expires_at:
            raise TicketExpired(f"{kind.__name__} expired")
        return body


class TicketExpired(InvalidInput):
    pass
