"""The key ceremony: the single-seed OPAQUE flow's shared secrets (OPRF seed, OPAQUE
server key, ticket key; docs/threshold.md removes them) are made once and reach each node
only encrypted to that node's identity key (HPKE, X25519), so they are never written
anywhere in the clear. Every other node key (HPKE, signing, storage) is made by the node
itself, and the ceremony only collects its public half. The shared secrets are in the
clear in the memory of the process that makes them (the ceremony machine must be trusted
while it runs) and of each node that uses them. The node
seals them under its PKCS#11 token and deletes its transfer copy; the copies the ceremony
wrote (`fleet ceremony --out`) stay until the operator deletes them (docs/operations.md).

    transfer = HPKE-Seal(pk = node identity key, info = "backupvault/v1 ceremony" || fleet_id
                         || u16(node), plaintext = codec(FleetSecrets))
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from backupvault.crypto import opaque
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.firmware import FleetSecrets

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def make_fleet_secrets(fleet_id: bytes, rng: Callable[[int], bytes]) -> FleetSecrets:
    setup = opaque.create_server_setup(oprf_seed=rng(64))
    return FleetSecrets(
        fleet_id=fleet_id,
        oprf_seed=setup.oprf_seed,
        server_private_key=setup.server_private_key,
        server_public_key=setup.server_public_key,
        ticket_key=rng(32),
    )


def _info(fleet_id: bytes, node: int) -> bytes:
    return b"backupvault/v1 ceremony" + fleet_id + struct.pack(">H", node)


def seal_for_node(secrets: FleetSecrets, node: int, identity_public_key: bytes) -> bytes:
    public = X25519PublicKey.from_public_bytes(identity_public_key)
    return _SUITE.encrypt(secrets.to_bytes(), public, _info(secrets.fleet_id, node))


def open_for_node(
    transfer: bytes, fleet_id: bytes, node: int, identity_private_key: bytes
) -> FleetSecrets:
    private = X25519PrivateKey.from_private_bytes(identity_private_key)
    try:
        plaintext = _SUITE.decrypt(transfer, private, _info(fleet_id, node))
    except (InvalidTag, ValueError):
        raise AuthenticationFailed(
            "the fleet secrets transfer does not open with this node's identity key",
            hint="it was made for another node or fleet, or altered",
        ) from None
    secrets = FleetSecrets.from_bytes(plaintext)
    if secrets.fleet_id != fleet_id:
        raise InvalidInput("fleet secrets are for another fleet")
    return secrets
