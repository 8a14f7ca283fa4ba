"""Tickets: small state the fleet hands the client between two steps of a flow.

A ticket is sealed (AES-256-GCM) under a fleet-wide ticket key, so any node can check
it and the client can neither read nor alter it. It carries what a node would otherwise
have to remember between KE2 and KE3, so the next step may land on any node.

    ticket = nonce (12) || AES-256-GCM(ticket_key, nonce, codec(body), aad)
    aad    = "backupvault/v1 ticket " || body type name
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


class TicketSealer:
    def __init__(self, ticket_key: bytes, rng: Callable[[int], bytes]) -> None:
        if len(ticket_key) != 32:
            raise InvalidInput("ticket key must be 32 bytes")
        self._aead = AESGCM(ticket_key)
        self._rng = rng

    def seal(self, body: Message) -> bytes:
        nonce = self._rng(12)
        aad = b"backupvault/v1 ticket " + type(body).__name__.encode()
        return nonce + self._aead.encrypt(nonce, body.to_bytes(), aad)

    def open(self, kind: type[T], sealed: bytes, now: float) -> T:
        if len(sealed) < 12 + 16:
            raise InvalidInput("ticket too short")
        aad = b"backupvault/v1 ticket " + kind.__name__.encode()
        try:
            plaintext = self._aead.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag:
            raise AuthenticationFailed("ticket failed authentication") from None
        body = kind.from_bytes(plaintext)
        expires_at = getattr(body, "expires_at")  # noqa: B009 - every ticket type has it
        if now > expires_at:
            raise TicketExpired(f"{kind.__name__} expired")
        return body


class TicketExpired(InvalidInput):
    pass
