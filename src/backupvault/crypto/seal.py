"""Sealing for the client-to-node channel (HPKE, RFC 9180, from `cryptography`).

Every node has its own HPKE key pair (made by the node, sealed by its token; the public
half is in the signed deployment record). A request is HPKE-sealed (base mode, single
shot) to the public key of the one node it is for. Its plaintext starts with a fresh
32-byte response key; that node answers with AES-256-GCM under that key, so only the
client that made the request can read the answer, and neither the relay nor any other
node can read the request or forge the answer. The HPKE `info` (bound into the key
schedule, so it acts as associated data) and the response's AAD both name the fleet id,
the node index and the message kind: a request sealed for one fleet, node or kind of
operation cannot be passed off as another.

Wire formats (all integers big-endian):
  node public key    = kem_id (2) || public key bytes (X25519: 32; ML-KEM-768+X25519: 1184 + 32)
  sealed request     = enc || ciphertext, as HPKE's single-shot Seal returns them
  request plaintext  = response_key (32) || body
  sealed response    = nonce (12) || AES-256-GCM(response_key, nonce, body, aad)
  context            = "backupvault/v2 " || role || 0x00 || u16(len fleet_id) || fleet_id
                       || u16(node index) || u16(len kind) || kind
                                                         (role is "request" or "response")

A share the device still owes a node (docs/threshold.md, "Finishing later") is sealed
the same way to that node alone, kept on the device, and put inside a `deliver-share`
request when the node is next in reach:
  sealed share       = enc || ciphertext of (index u8 || k_i 32)
  its HPKE info      = context("share", fleet id, node index, "deliver-share")
                       || SHA-256(manifest)
"""

from __future__ import annotations

import enum
import functools
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.crypto.x25519 import check_public_key as x25519_key
from backupvault.errors import AuthenticationFailed, InvalidInput

RESPONSE_KEY_LEN = 32
_NONCE_LEN = 12
_X25519_LEN = 32
_MLKEM768_PUBLIC_LEN = 1184
_MLKEM_SEED_LEN = 64


class Kem(enum.IntEnum):
    """HPKE KEM identifiers (IANA HPKE registry)."""

    X25519 = 0x0020
    MLKEM768_X25519 = 0x647A

    @property
    def _hpke(self) -> hpke.KEM:
        return hpke.KEM.X25519 if self is Kem.X25519 else hpke.KEM.MLKEM768_X25519

    def suite(self) -> hpke.Suite:
        return hpke.Suite(self._hpke, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


DEFAULT_KEM = Kem.MLKEM768_X25519


def _context(role: str, fleet_id: bytes, node: int, kind: str) -> bytes:
    kind_bytes = kind.encode()
    if len(fleet_id) > 0xFFFF or len(kind_bytes) > 0xFFFF:
        raise InvalidInput("fleet id or message kind too long")
    if not 0 <= node <= 0xFFFF:
        raise InvalidInput("node index out of range")
    return (
        b"backupvault/v2 "
        + role.encode()
        + b"\x00"
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + struct.pack(">H", node)
        + struct.pack(">H", len(kind_bytes))
        + kind_bytes
    )


@dataclass(frozen=True)
class NodePublicKey:
    kem: Kem
    key_bytes: bytes

    def to_bytes(self) -> bytes:
        return struct.pack(">H", self.kem) + self.key_bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> NodePublicKey:
        if len(data) < 2:
            raise InvalidInput("node public key too short")
        (kem_id,) = struct.unpack(">H", data[:2])
        try:
            kem = Kem(kem_id)
        except ValueError:
            raise InvalidInput(f"unknown node key type 0x{kem_id:04x}") from None
        key = cls(kem, bytes(data[2:]))
        _ = key._hpke_key  # parsing it validates length and encoding
        return key

    @functools.cached_property
    def _hpke_key(self) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        # Parsed once per key object: a client seals to each node's key at every request.
        try:
            if self.kem is Kem.X25519:
                if len(self.key_bytes) != _X25519_LEN:
                    raise InvalidInput("an X25519 node key is 32 bytes")
                return x25519_key(self.key_bytes, "the node's X25519 key")
            if len(self.key_bytes) != _MLKEM768_PUBLIC_LEN + _X25519_LEN:
                raise InvalidInput("an ML-KEM-768+X25519 node key is 1216 bytes")
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.key_bytes[:_MLKEM768_PUBLIC_LEN]),
                x25519_key(self.key_bytes[_MLKEM768_PUBLIC_LEN:], "the node key's X25519 half"),
            )
        except ValueError as err:
            raise InvalidInput(f"malformed node public key: {err}") from None


@dataclass(frozen=True)
class NodePrivateKey:
    """One node's HPKE private key. Serialized form: kem_id (2) || seed material."""

    kem: Kem
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, kem: Kem = DEFAULT_KEM) -> NodePrivateKey:
        if kem is Kem.X25519:
            return cls(kem, os.urandom(_X25519_LEN))
        return cls(kem, os.urandom(_MLKEM_SEED_LEN + _X25519_LEN))

    def to_bytes(self) -> bytes:
        return struct.pack(">H", self.kem) + self.secret

    @classmethod
    def from_bytes(cls, data: bytes) -> NodePrivateKey:
        if len(data) < 2:
            raise InvalidInput("node private key too short")
        (kem_id,) = struct.unpack(">H", data[:2])
        try:
            kem = Kem(kem_id)
        except ValueError:
            raise InvalidInput(f"unknown node key type 0x{kem_id:04x}") from None
        want = _X25519_LEN if kem is Kem.X25519 else _MLKEM_SEED_LEN + _X25519_LEN
        if len(data) - 2 != want:
            raise InvalidInput("node private key has the wrong length")
        return cls(kem, bytes(data[2:]))

    @functools.cached_property
    def _hpke_key(self) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        # Expanded once per key object, not at every request a node opens (ML-KEM's key
        # expansion from its seed is about 0.1 ms).
        if self.kem is Kem.X25519:
            return x25519.X25519PrivateKey.from_private_bytes(self.secret)
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self.secret[:_MLKEM_SEED_LEN]),
            x25519.X25519PrivateKey.from_private_bytes(self.secret[_MLKEM_SEED_LEN:]),
        )

    def public_key(self) -> NodePublicKey:
        if self.kem is Kem.X25519:
            pub = x25519.X25519PrivateKey.from_private_bytes(self.secret).public_key()
            return NodePublicKey(self.kem, pub.public_bytes_raw())
        ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.secret[:_MLKEM_SEED_LEN])
        x = x25519.X25519PrivateKey.from_private_bytes(self.secret[_MLKEM_SEED_LEN:])
        return NodePublicKey(
            self.kem, ml.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        )


@dataclass(frozen=True, eq=False)
class ResponseKey:
    """The one-time key a response is sealed under. Never logged."""

    key: bytes = field(repr=False)
    fleet_id: bytes
    node: int
    kind: str

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        aad = _context("response", self.fleet_id, self.node, self.kind)
        return nonce + AESGCM(self.key).encrypt(nonce, body, aad)

    def open(self, sealed: bytes) -> bytes:
        if len(sealed) < _NONCE_LEN + 16:
            raise InvalidInput("sealed response too short")
        aad = _context("response", self.fleet_id, self.node, self.kind)
        try:
            return AESGCM(self.key).decrypt(sealed[:_NONCE_LEN], sealed[_NONCE_LEN:], aad)
        except InvalidTag:
            raise AuthenticationFailed(
                f"vault node {self.node}'s response failed authentication: it was altered"
                " in transit, or came from another node"
            ) from None


def seal_request(
    node_key: NodePublicKey, fleet_id: bytes, node: int, kind: str, body: bytes
) -> tuple[bytes, ResponseKey]:
    """Seal `body` to node `node` (whose public key is `node_key`); returns the sealed
    request and the key its answer comes under."""
    response_key = ResponseKey(os.urandom(RESPONSE_KEY_LEN), fleet_id, node, kind)
    info = _context("request", fleet_id, node, kind)
    sealed = node_key.kem.suite().encrypt(response_key.key + body, node_key._hpke_key, info)
    return sealed, response_key


def _hpke_open(node_key: NodePrivateKey, info: bytes, sealed: bytes, refused: str) -> bytes:
    try:
        return node_key.kem.suite().decrypt(sealed, node_key._hpke_key, info)
    except (InvalidTag, ValueError):
        raise AuthenticationFailed(refused) from None


def open_request(
    node_key: NodePrivateKey, fleet_id: bytes, node: int, kind: str, sealed: bytes
) -> tuple[bytes, ResponseKey]:
    """Open a request sealed to node `node`; raises AuthenticationFailed if it was not
    sealed for this fleet, node and kind, or was altered."""
    plaintext = _hpke_open(
        node_key,
        _context("request", fleet_id, node, kind),
        sealed,
        "sealed request failed to open: altered, or sealed for another fleet, node or kind",
    )
    if len(plaintext) < RESPONSE_KEY_LEN:
        raise InvalidInput("sealed request carries no response key")
    key = ResponseKey(plaintext[:RESPONSE_KEY_LEN], fleet_id, node, kind)
    return plaintext[RESPONSE_KEY_LEN:], key


SHARE_KIND = "deliver-share"
_SHARE_LEN = 33  # index u8 || k_i
_HPKE_TAG_LEN = 16
#: The sealed share's length per KEM: HPKE's enc, then the share and the AEAD tag.
SEALED_SHARE_LEN = {
    Kem.X25519: _X25519_LEN + _SHARE_LEN + _HPKE_TAG_LEN,
    Kem.MLKEM768_X25519: 1088 + _X25519_LEN + _SHARE_LEN + _HPKE_TAG_LEN,
}


def _share_info(fleet_id: bytes, node: int, manifest_hash: bytes) -> bytes:
    if len(manifest_hash) != 32:
        raise InvalidInput("a manifest hash is 32 bytes")
    return _context("share", fleet_id, node, SHARE_KIND) + manifest_hash


def seal_share(
    node_key: NodePublicKey, fleet_id: bytes, node: int, manifest_hash: bytes, share: bytes
) -> bytes:
    """Seal node `node`'s share of the manifest whose SHA-256 is `manifest_hash` to that
    node alone: no other node, nor the relay, nor whoever copies the device can open it,
    and it opens only as this fleet's, this node's share of this manifest."""
    if len(share) != _SHARE_LEN:
        raise InvalidInput(f"a share is {_SHARE_LEN} bytes")
    info = _share_info(fleet_id, node, manifest_hash)
    return node_key.kem.suite().encrypt(share, node_key._hpke_key, info)


def open_share(
    node_key: NodePrivateKey, fleet_id: bytes, node: int, manifest_hash: bytes, sealed: bytes
) -> bytes:
    """The share (index u8 || k_i) sealed by `seal_share` to this node for this manifest;
    AuthenticationFailed if it was sealed for another fleet, node or manifest, or altered."""
    if len(sealed) != SEALED_SHARE_LEN[node_key.kem]:
        raise InvalidInput(f"a sealed share is {SEALED_SHARE_LEN[node_key.kem]} bytes here")
    share = _hpke_open(
        node_key,
        _share_info(fleet_id, node, manifest_hash),
        sealed,
        "the delivered share does not open: altered, or sealed for another node or manifest",
    )
    if len(share) != _SHARE_LEN:
        raise InvalidInput("the delivered share has the wrong length")
    return share
