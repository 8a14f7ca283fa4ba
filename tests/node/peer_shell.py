"""One node's shell (`NodeService` on a real `NodeStore` and `VaultFirmware`, no sockets)
that tests talk to as its peers would: real sealed channel frames in through
`peer_frame`, and every frame it sends kept per peer. Node 0 of a fleet of 3."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.codec import Message
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.fleet.channel import PeerChannel
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.node.peers import join_frame
from backupvault.node.service import NodeService
from backupvault.node.store import NodeStore
from backupvault.tokens import TokenVerifier, fleet_audience

FLEET_ID = b"fleet"
SIGNING = {i: Ed25519PrivateKey.generate() for i in range(3)}
IDENTITIES = {i: X25519PrivateKey.generate() for i in range(3)}
PUBLIC = {i: k.public_key().public_bytes_raw() for i, k in IDENTITIES.items()}
ACCOUNTS = TokenVerifier(
    Ed25519PrivateKey.generate().public_key(), "issuer", fleet_audience(FLEET_ID)
)
STORAGE_KEY = b"k" * 32


def channel(node: int) -> PeerChannel:
    return PeerChannel(node, IDENTITIES[node].private_bytes_raw(), PUBLIC, FLEET_ID, os.urandom)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def open_store(tmp_path: Path) -> NodeStore:
    return NodeStore(tmp_path / "store.sqlite", 0, STORAGE_KEY)


def firmware(store: NodeStore) -> VaultFirmware:
    """Node 0's firmware, on `store`."""
    return VaultFirmware(
        FLEET_ID,
        NodeKey(0, NodePrivateKey.generate(Kem.X25519), SIGNING[0]),
        ACCOUNTS,
        FleetShape(0, 3, 2),
        store.get_share,
        peer_signing_keys={i + 1: k.public_key() for i, k in SIGNING.items()},
    )


def node_service(
    tmp_path: Path, clock: Clock, store: NodeStore | None = None
) -> tuple[NodeService, dict[int, list[bytes]]]:
    """Node 0, started intact (ready at once), and what it sends to nodes 1 and 2."""
    store = store or open_store(tmp_path)
    addresses = {i: ("127.0.0.1", 1) for i in range(3)}
    service = NodeService(
        0, addresses, firmware(store), channel(0), store, clock=clock, intact=True
    )
    sent: dict[int, list[bytes]] = {1: [], 2: []}

    def send_frame(to: int, envelopes: list[bytes]) -> None:
        sent[to].extend(envelopes)

    service._send_frame = send_frame  # type: ignore[method-assign]
    service._step(lambda: service.replica.start(clock(), intact=True))  # start without sockets
    return service, sent


def frame(sender: int, messages: Iterable[Message]) -> bytes:
    """A frame of `messages` from `sender` to node 0, sealed as the sender's stream would."""
    sealing = channel(sender)
    return join_frame([sealing.seal(0, m) for m in messages])


def opened(at: int, envelopes: list[bytes], choices: tuple[type[Message], ...]) -> list[object]:
    """What node 0 sent to node `at`, opened there."""
    opening = channel(at)
    return [opening.open(e, choices)[1] for e in envelopes]
