"""The authenticated, encrypted channel between the nodes of one fleet.

Each node has an X25519 identity key, listed in the deployment record. Two nodes share a
pairwise key per fleet epoch, derived from their static Diffie-Hellman secret, so a
message opens only at its receiver, proves its sender, and is refused by the nodes of any
other epoch (a rotation makes every older message useless):

    envelope = sender (u16) || receiver (u16) || epoch (u64) || sent (u64, unix ms)
               || nonce (12) || AES-256-GCM(k, nonce, msg, aad)
    nonce    = prefix (8) || counter (u32)
    k        = HKDF-SHA256(ikm = X25519(mine, theirs), salt = fleet_id,
                           info = "backupvault/v2 peer " || u16(min id) || u16(max id)
                                  || u64(epoch))
    aad      = "backupvault/v2 peer message" || fleet_id || the 20 header bytes

Both directions of a pair use the same key, for the whole epoch (which may last years),
so nonces are not drawn at random per message: past about 2^32 messages under one key,
96-bit random nonces exceed the 2^-32 collision bound of NIST SP 800-38D, section 8.3.
A channel draws a random 64-bit prefix when it starts and counts messages in the last
32 bits; when the counter wraps it draws a fresh prefix (never one it used before). The
prefix's top bit is forced to 1 for messages to a higher node id, 0 to a lower one, so the
two directions of a pair can never produce the same nonce, whatever the rng. A repeat
needs two prefixes of the same sender to coincide (one drawn per process start and per
2^32 messages): with P prefixes drawn in one epoch, at most P^2 / 2^64 (below 2^-32 while
P < 2^16, that is up to 2^48 messages per node per epoch). The rng must differ between
processes (os.urandom in a node). Receivers treat the nonce as opaque (the replay window
keys on (sender, nonce)), so envelopes from nodes that still use random nonces open.

A stream between two nodes opens with a hello: the same envelope around an empty message,
with "backupvault/v2 peer hello" in place of "backupvault/v2 peer message" in its aad, so a
hello never opens as a message nor a message as a hello.

The header (sender, receiver, epoch, send time) is authenticated, so a message cannot be
reflected, redirected, moved to another epoch or re-dated. Replays are refused with a
window (`replay.ReplayWindow`, one per sender): a message sent more than `WINDOW` seconds
before the highest clock reading the channel has seen (or after its clock) is refused,
and within the window each (sender, nonce) opens once (nonces of authenticated messages
only, forgotten as they leave the window), so a clock stepped back cannot let a
forgotten message open again; after a backward step of more than the window, peer
messages are refused until the clock has caught up (Paxos takes them as lost). Nodes
need clocks within a few seconds of each other (NTP). A channel also refuses messages
sent before `not_before`, the node's start, whose nonces the previous process remembered
and this one does not.

Paxos itself tolerates duplicates; the window is here because some messages cost work: a
replayed `SyncRequest` would make a node send its store again. Beyond the replay window,
`SyncRequest`s are limited per peer (`PeerRateLimit`: a token bucket; each answers one
page of records), so even a compromised peer cannot make another node dump its store in a
loop.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.codec import Message, decode_any
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.messages import SyncRequest
from backupvault.invariants import require
from backupvault.replay import ReplayWindow, Stale

_HEADER = struct.Struct(">HHQQ")
_PAIR = struct.Struct(">HH")
_NONCE = 12
_NONCE_PARTS = struct.Struct(">QI")
_TAG = 16
_MESSAGE = b"backupvault/v2 peer message"
_HELLO = b"backupvault/v2 peer hello"
#: A stream's hello: the 20 header bytes, the nonce and the tag of an empty message.
HELLO_SIZE = _HEADER.size + _NONCE + _TAG
#: How far a message's send time may be from the receiver's clock (seconds).
WINDOW = 30.0
#: Authenticated nonces remembered per sender inside the window; beyond it the sender is
#: refused until older ones expire (a flood from a peer must not exhaust memory).
MAX_SEEN_PER_PEER = 1_000_000


class PeerRateLimited(InvalidInput):
    """A peer asked for costly work (a store sync) too often."""


class SentBeforeStart(InvalidInput):
    """Authentic, but sent before this node started: peers flush what they queued while
    it was down, so this is dropped (Paxos takes it as lost), not refused as an attack."""


class PeerRateLimit:
    """A token bucket per peer: `burst` requests at once, then `per_second`. A request
    costs at most one page of records (fleet/replica.py, SYNC_PAGE), so the defaults bound
    the work one peer can ask for to about 8,000 rows a second while letting a node that
    catches up page through a peer's store (docs/fleet.md, "Records and catch-up")."""

    def __init__(self, per_second: float = 4.0, burst: int = 8) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[int, tuple[float, float]] = {}  # peer -> (tokens, at)

    def allow(self, peer: int, now: float) -> bool:
        tokens, at = self._buckets.get(peer, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.per_second)
        if tokens < 1.0:
            self._buckets[peer] = (tokens, now)
            return False
        self._buckets[peer] = (tokens - 1.0, now)
        return True


class NonceSequence:
    """The nonces one channel seals with: prefix (8) || counter (u32), the prefix redrawn
    (never to one this sequence used before) when the counter wraps, its top bit set to the
    direction so the two ends of a pair, which share a key, never meet (module docstring)."""

    #: Messages per prefix before it is redrawn.
    PER_PREFIX = 1 << 32
    #: How often a fresh prefix may come out as one already used before the rng is deemed
    #: broken: a working 63-bit rng repeats with negligible probability.
    REDRAWS = 8

    def __init__(self, rng: Callable[[int], bytes], *, start: int = 0) -> None:
        require(0 <= start < self.PER_PREFIX, "a nonce counter starts inside its 32 bits")
        self._rng = rng
        self._used: set[int] = set()
        self._prefix = self._fresh_prefix()
        self._counter = start

    def _fresh_prefix(self) -> int:
        for _ in range(self.REDRAWS):
            drawn = self._rng(8)
            require(len(drawn) == 8, "the channel's rng returns the bytes asked for")
            # The top bit carries the direction; only the other 63 are drawn.
            prefix = int.from_bytes(drawn, "big") & ~(1 << 63)
            if prefix not in self._used:
                self._used.add(prefix)
                return prefix
        raise RuntimeError(
            "the peer channel's random source keeps repeating itself; refusing to seal"
            " (check the node's entropy source)"
        )

    def next(self, upward: bool) -> bytes:
        """The next nonce, for a message to a higher node id (`upward`) or a lower one."""
        if self._counter == self.PER_PREFIX:
            self._prefix = self._fresh_prefix()
            self._counter = 0
        nonce = _NONCE_PARTS.pack(self._prefix | (int(upward) << 63), self._counter)
        self._counter += 1
        return nonce


class PeerChannel:
    def __init__(
        self,
        node: int,
        identity_key: bytes,
        peer_keys: dict[int, bytes],
        fleet_id: bytes,
        rng: Callable[[int], bytes],
        *,
        epoch: int = 0,
        clock: Callable[[], float] = time.time,
        sync_limit: PeerRateLimit | None = None,
        not_before: float = 0.0,
    ) -> None:
        self.node = node
        self.epoch = epoch
        self._fleet_id = fleet_id
        self._nonces = NonceSequence(rng)
        self._clock = clock
        self._sync_limit = PeerRateLimit() if sync_limit is None else sync_limit
        self._windows: dict[int, ReplayWindow] = {}
        private = X25519PrivateKey.from_private_bytes(identity_key)
        self._keys: dict[int, AESGCM] = {}
        for peer, public in peer_keys.items():
            if peer == node:
                continue
            if len(public) != 32:
                raise InvalidInput(f"node {peer}'s identity key is not 32 bytes")
            try:
                shared = private.exchange(X25519PublicKey.from_public_bytes(public))
            except ValueError:  # a small-order point: the shared secret would be zero
                raise InvalidInput(
                    f"node {peer}'s identity key is not a usable X25519 public key (a"
                    " small-order point); check the fleet file's identity_public_key"
                ) from None
            low, high = sorted((node, peer))
            key = HKDF(
                hashes.SHA256(),
                32,
                salt=fleet_id,
                info=b"backupvault/v2 peer " + _PAIR.pack(low, high) + struct.pack(">Q", epoch),
            ).derive(shared)
            self._keys[peer] = AESGCM(key)
            self._windows[peer] = ReplayWindow(WINDOW, MAX_SEEN_PER_PEER, not_before)

    @property
    def not_before(self) -> float:
        """Messages sent before this time are dropped (`SentBeforeStart`)."""
        return min((w.not_before for w in self._windows.values()), default=0.0)

    @not_before.setter
    def not_before(self, value: float) -> None:
        for window in self._windows.values():
            window.not_before = value

    def _aad(self, label: bytes, header: bytes) -> bytes:
        return label + self._fleet_id + header

    def _seal(self, to: int, label: bytes, plaintext: bytes) -> bytes:
        nonce = self._nonces.next(upward=to > self.node)
        sent = int(self._clock() * 1000)
        header = _HEADER.pack(self.node, to, self.epoch, sent)
        return header + nonce + self._keys[to].encrypt(nonce, plaintext, self._aad(label, header))

    def seal(self, to: int, message: Message) -> bytes:
        return self._seal(to, _MESSAGE, message.to_bytes())

    def hello(self, to: int) -> bytes:
        """The first thing a node sends on a new stream to `to` (docs/fleet.md, "Peer
        streams"): an envelope with an empty message under its own label, so it can never
        be taken for a message, nor a message for it. `open_hello` tells the receiver who
        is at the other end before it reads anything larger."""
        return self._seal(to, _HELLO, b"")

    def open_hello(self, envelope: bytes) -> int:
        """The authenticated sender of a stream's hello; refused like a message when
        forged, replayed, re-dated, misdirected or from another epoch."""
        if len(envelope) != HELLO_SIZE:
            raise InvalidInput(f"a peer hello is {HELLO_SIZE} bytes, not {len(envelope)}")
        sender, nonce, sent, now, _ = self._open(envelope, _HELLO)
        self._remember(sender, nonce, sent, now)
        return sender

    def open(self, envelope: bytes, choices: Iterable[type[Message]]) -> tuple[int, Message]:
        sender, nonce, sent, now, plaintext = self._open(envelope, _MESSAGE)
        message = decode_any(plaintext, choices)
        if isinstance(message, SyncRequest) and not self._sync_limit.allow(sender, now):
            raise PeerRateLimited(f"node {sender} asks for store syncs too often")
        self._remember(sender, nonce, sent, now)
        return sender, message

    def _open(self, envelope: bytes, label: bytes) -> tuple[int, bytes, float, float, bytes]:
        """(sender, nonce, sent, now, plaintext) of an authentic envelope that is inside
        the window and not seen before; not yet remembered as seen."""
        if len(envelope) < _HEADER.size + _NONCE + _TAG:
            raise InvalidInput("peer message too short")
        sender, receiver, epoch, sent_ms = _HEADER.unpack_from(envelope)
        if receiver != self.node or sender not in self._keys:
            raise AuthenticationFailed(f"peer message from {sender} to {receiver} is not for us")
        if epoch != self.epoch:
            raise AuthenticationFailed(
                f"peer message from node {sender} is for epoch {epoch}; this node is at epoch"
                f" {self.epoch}"
            )
        header = envelope[: _HEADER.size]
        nonce = envelope[_HEADER.size : _HEADER.size + _NONCE]
        try:
            plaintext = self._keys[sender].decrypt(
                nonce, envelope[_HEADER.size + _NONCE :], self._aad(label, header)
            )
        except InvalidTag:
            raise AuthenticationFailed(
                f"peer message claiming to be from {sender} is forged"
            ) from None
        now = self._clock()
        window = self._windows[sender]
        sent = sent_ms / 1000
        stale = window.staleness(sent, now)
        if stale is Stale.BEFORE_START:
            raise SentBeforeStart(
                f"peer message from node {sender} was sent before this node started"
            )
        if stale is not None:
            back = window.clock_went_back(now)
            raise AuthenticationFailed(
                f"peer message from node {sender} was sent {now - sent:.0f} s from now, outside"
                f" the {WINDOW:.0f} s window (a replay, or the clocks differ: check NTP)"
                + (f"; this node's clock went back {back:.0f} s" if back > 1 else "")
            )
        if window.seen(nonce):
            raise AuthenticationFailed(f"peer message from node {sender} is a replay")
        if window.full():
            raise PeerRateLimited(f"node {sender} sends more messages than the window holds")
        return sender, nonce, sent, now, plaintext

    def _remember(self, sender: int, nonce: bytes, sent: float, now: float) -> None:
        self._windows[sender].remember(nonce, sent, now)
