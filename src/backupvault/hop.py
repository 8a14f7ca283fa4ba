"""The relay → node hop: every forwarded request carries the relay's Ed25519 signature.

A node answers client operations only when they come from a relay whose public key its
fleet file lists (and the deployment record names, through the firmware measurement).
Whoever else reaches a node's port gets 401 and changes nothing.

    signed message = "backupvault/v1 relay-to-node" || 0x00
                     || u8 node index || u16 len(op) || op
                     || u16 len(account) || account || u16 len(entry) || entry
                     || SHA-256(body) (32) || u64 unix time || nonce (16)

    headers        X-Backupvault-Node       the node index, decimal
                   X-Backupvault-Time       unix seconds, decimal
                   X-Backupvault-Nonce      32 hex digits
                   X-Backupvault-Body-Sha256  64 hex digits: SHA-256(body), as signed
                   X-Backupvault-Signature  128 hex digits (Ed25519)

The node index binds a signature to one node, so a request sent to node 1 cannot be
replayed to node 2; the time and a per-node record of recent nonces refuse a replay to
the same node. Integers are big-endian; strings are ASCII (names are checked first).

The body's digest travels in a header as well as in the signed message, so a node checks
the signature before it reads the body (`check_headers`): a stranger is refused after the
headers, and only a request a listed relay signed gets its body read, then compared with
the signed digest (`check_body`). The signed message is unchanged from before the header.

Replays, and clocks that go back: `replay.ReplayWindow` (the window is judged against
the highest clock reading this verifier has seen, so a node clock stepped back cannot
bring a request whose nonce was already forgotten back inside it; requests signed before
`not_before`, the node's start, are refused: the nonces a previous process saw are gone).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.errors import AuthenticationFailed
from backupvault.protocol import is_valid_name
from backupvault.replay import ReplayWindow, Stale

CONTEXT = b"backupvault/v1 relay-to-node\x00"
NODE_HEADER = "X-Backupvault-Node"
TIME_HEADER = "X-Backupvault-Time"
NONCE_HEADER = "X-Backupvault-Nonce"
DIGEST_HEADER = "X-Backupvault-Body-Sha256"
SIGNATURE_HEADER = "X-Backupvault-Signature"
NONCE_LEN = 16
#: How far a request's time may be from the node's clock.
WINDOW_SECONDS = 60
#: Nonces remembered per node; beyond it the node refuses rather than forgets (see below).
MAX_REMEMBERED = 200_000
#: What an operator's signed `GET /v1/metrics` names in place of an operation, account and
#: entry (node/http.py); no client operation has this name, so neither signature passes
#: for the other.
METRICS_OP = "metrics"
METRICS_NAME = "operator"


class HopRefused(AuthenticationFailed):
    """The request did not come, verifiably and freshly, from a listed relay."""


class ReplayWindowFull(HopRefused):
    """A fresh request from a listed relay, refused only because the replay window holds
    as many nonces as it may: the node is busy (503), the relay's signature is fine."""


class SignedBeforeStart(HopRefused):
    """Signed before this node started (its previous process may have taken it): the node
    answers "not ready", as while it catches up, and the relay asks again."""


def _field(value: str) -> bytes:
    data = value.encode("ascii")
    return struct.pack(">H", len(data)) + data


def signed_message(
    node: int, op: str, account: str, entry: str, body: bytes, at: int, nonce: bytes
) -> bytes:
    return _signed(node, op, account, entry, hashlib.sha256(body).digest(), at, nonce)


def _signed(
    node: int, op: str, account: str, entry: str, digest: bytes, at: int, nonce: bytes
) -> bytes:
    if not (0 <= node < 256 and len(nonce) == NONCE_LEN and 0 <= at < 1 << 64):
        raise ValueError("node index, time or nonce out of range")
    return (
        CONTEXT
        + bytes([node])
        + _field(op)
        + _field(account)
        + _field(entry)
        + digest
        + struct.pack(">Q", at)
        + nonce
    )


def sign_headers(
    key: Ed25519PrivateKey,
    node: int,
    op: str,
    account: str,
    entry: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that prove to node `node` that this relay sends this request now."""
    at = int(time.time() if now is None else now)
    nonce = os.urandom(NONCE_LEN)
    signature = key.sign(signed_message(node, op, account, entry, body, at, nonce))
    return {
        NODE_HEADER: str(node),
        TIME_HEADER: str(at),
        NONCE_HEADER: nonce.hex(),
        DIGEST_HEADER: hashlib.sha256(body).hexdigest(),
        SIGNATURE_HEADER: signature.hex(),
    }


def metrics_headers(key: Ed25519PrivateKey, node: int, now: float | None = None) -> dict[str, str]:
    """The headers of a `GET /v1/metrics` to node `node`, signed with a relay key."""
    return sign_headers(key, node, METRICS_OP, METRICS_NAME, METRICS_NAME, b"", now)


def _decimal(value: str | None, what: str) -> int:
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise HopRefused(f"missing or malformed {what} header")
    return int(value)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _hex(value: str | None, length: int, what: str) -> bytes:
    # Digits only: `bytes.fromhex` skips whitespace, so a header of the right length with
    # spaces in it would give fewer bytes than the signed message expects.
    if value is None or len(value) != 2 * length or not _HEX_DIGITS.issuperset(value):
        raise HopRefused(f"missing or malformed {what} header")
    return bytes.fromhex(value)


@dataclass(frozen=True)
class SignedHeaders:
    """A request whose headers a listed relay signed; its body is not checked yet."""

    nonce: bytes
    at: int
    digest: bytes


@dataclass
class HopVerifier:
    """One node's check of the relay hop: signature by a listed relay key, addressed to
    this node, within the time window, nonce never seen before."""

    node: int
    relay_keys: Iterable[bytes]
    clock: Callable[[], float] = time.time
    #: Requests signed before this time are refused: the node passes its start, since the
    #: nonces an earlier process remembered are lost (0: no such bound).
    not_before: float = 0.0
    _keys: list[Ed25519PublicKey] = field(init=False)
    _window: ReplayWindow = field(init=False)

    def __post_init__(self) -> None:
        self._keys = [Ed25519PublicKey.from_public_bytes(bytes(k)) for k in self.relay_keys]
        if not self._keys:
            raise ValueError("a node needs at least one relay public key")
        self._window = ReplayWindow(WINDOW_SECONDS, MAX_REMEMBERED, self.not_before)

    def verify(
        self, headers: Mapping[str, str], op: str, account: str, entry: str, body: bytes
    ) -> None:
        """Raises HopRefused unless the request is fresh, for this node, and signed."""
        self.check_body(self.check_headers(headers, op, account, entry), body)

    def check_headers(
        self, headers: Mapping[str, str], op: str, account: str, entry: str
    ) -> SignedHeaders:
        """Everything but the body: the signature over the declared digest, the node, the
        window and the nonce. Raises HopRefused; nothing is remembered yet."""
        if not (is_valid_name(account) and is_valid_name(entry)):
            raise HopRefused("account and entry must be valid names")
        named = {k.lower(): v for k, v in headers.items()}  # header names ignore case
        node = _decimal(named.get(NODE_HEADER.lower()), NODE_HEADER)
        at = _decimal(named.get(TIME_HEADER.lower()), TIME_HEADER)
        nonce = _hex(named.get(NONCE_HEADER.lower()), NONCE_LEN, NONCE_HEADER)
        digest = _hex(named.get(DIGEST_HEADER.lower()), 32, DIGEST_HEADER)
        signature = _hex(named.get(SIGNATURE_HEADER.lower()), 64, SIGNATURE_HEADER)
        if node != self.node:
            raise HopRefused(f"the request is signed for node {node}, not this node")
        # The signature before the time: what the window says of a request (too old, from
        # the future, before this node's start) tells when the node started and where its
        # clock stands, which only a listed relay is told.
        message = _signed(node, op, account, entry, digest, at, nonce)
        for key in self._keys:
            try:
                key.verify(signature, message)
                break
            except InvalidSignature:
                continue
        else:
            raise HopRefused("the request is not signed by a relay this fleet lists")
        now = self.clock()
        stale = self._window.staleness(at, now)
        if stale is Stale.FUTURE:
            raise HopRefused("the relay's signature is from the future; check clocks")
        if stale is Stale.OLD:
            back = self._window.clock_went_back(now)
            raise HopRefused(
                "the relay's signature is too old; check clocks"
                + (f" (this node's clock went back {back:.0f} s)" if back > 1 else "")
            )
        if stale is Stale.BEFORE_START:
            raise SignedBeforeStart(
                "the request was signed before this node started; send it again"
            )
        if self._window.seen(nonce):
            raise HopRefused("this signed request was already used (a replay)")
        return SignedHeaders(nonce, at, digest)

    def check_body(self, signed: SignedHeaders, body: bytes) -> None:
        """The body is the one signed; then its nonce is spent."""
        if hashlib.sha256(body).digest() != signed.digest:
            raise HopRefused("the request body is not the one the relay signed")
        # Again: another request with this nonce may have been spent while the body came.
        if self._window.seen(signed.nonce):
            raise HopRefused("this signed request was already used (a replay)")
        if self._window.full():
            # Forgetting a nonce still inside the window would let its request be replayed.
            raise ReplayWindowFull("too many requests in the replay window; try again shortly")
        self._window.remember(signed.nonce, signed.at, self.clock())
