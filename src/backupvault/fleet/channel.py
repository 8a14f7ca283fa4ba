"""The authenticated, encrypted channel between the nodes of one fleet.

Each node has an X25519 identity key, listed in the deployment record. Two nodes share a
pairwise key derived from their static Diffie-Hellman secret, so a message opens only at
its receiver and proves its sender. Paxos tolerates delayed and duplicated messages, so
the channel needs no replay window; the AAD names sender and receiver so a message cannot
be reflected back or redirected.

    envelope = sender (u16) || receiver (u16) || nonce (12) || AES-256-GCM(k, nonce, msg, aad)
    k        = HKDF-SHA256(ikm = X25519(mine, theirs), salt = fleet_id,
                           info = "backupvault/v1 peer " || u16(min id) || u16(max id))
    aad      = "backupvault/v1 peer message" || fleet_id || sender (u16) || receiver (u16)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.codec import Message, decode_any
from backupvault.errors import AuthenticationFailed, InvalidInput

_HEADER = struct.Struct(">HH")
_NONCE = 12


class PeerChannel:
    def __init__(
        self,
        node: int,
        identity_key: bytes,
        peer_keys: dict[int, bytes],
        fleet_id: bytes,
        rng: Callable[[int], bytes],
    ) -> None:
        self.node = node
        self._fleet_id = fleet_id
        self._rng = rng
        private = X25519PrivateKey.from_private_bytes(identity_key)
        self._keys: dict[int, AESGCM] = {}
        for peer, public in peer_keys.items():
            if peer == node:
                continue
            if len(public) != 32:
                raise InvalidInput(f"node {peer}'s identity key is not 32 bytes")
            shared = private.exchange(X25519PublicKey.from_public_bytes(public))
            low, high = sorted((node, peer))
            key = HKDF(
                hashes.SHA256(),
                32,
                salt=fleet_id,
                info=b"backupvault/v1 peer " + _HEADER.pack(low, high),
            ).derive(shared)
            self._keys[peer] = AESGCM(key)

    def _aad(self, sender: int, receiver: int) -> bytes:
        return b"backupvault/v1 peer message" + self._fleet_id + _HEADER.pack(sender, receiver)

    def seal(self, to: int, message: Message) -> bytes:
        nonce = self._rng(_NONCE)
        header = _HEADER.pack(self.node, to)
        return (
            header
            + nonce
            + self._keys[to].encrypt(nonce, message.to_bytes(), self._aad(self.node, to))
        )

    def open(self, envelope: bytes, choices: Iterable[type[Message]]) -> tuple[int, Message]:
        if len(envelope) < _HEADER.size + _NONCE + 16:
            raise InvalidInput("peer message too short")
        sender, receiver = _HEADER.unpack_from(envelope)
        if receiver != self.node or sender not in self._keys:
            raise AuthenticationFailed(f"peer message from {sender} to {receiver} is not for us")
        nonce = envelope[_HEADER.size : _HEADER.size + _NONCE]
        try:
            plaintext = self._keys[sender].decrypt(
                nonce, envelope[_HEADER.size + _NONCE :], self._aad(sender, receiver)
            )
        except InvalidTag:
            raise AuthenticationFailed(
                f"peer message claiming to be from {sender} is forged"
            ) from None
        return sender, decode_any(plaintext, choices)
