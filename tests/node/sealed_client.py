"""A device's side of a client request to node 0 of a one-node test fleet: the node's
key, the account issuer's tokens and the sealed copy with its request proof, as the SDK
makes them (shared by the tests that drive `NodeService.client_request` directly)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.crypto.seal import Kem, NodePrivateKey, ResponseKey, seal_request
from backupvault.protocol import AuthorizedRequest, Op
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token, sign_request_proof

FLEET_ID = b"fleet"
EPOCH = 0
NODE_KEY = NodePrivateKey.generate(Kem.X25519)
ISSUER = Ed25519PrivateKey.generate()
DEVICE = Ed25519PrivateKey.generate()
ACCOUNTS = TokenVerifier(ISSUER.public_key(), "issuer", fleet_audience(FLEET_ID))


def token(account: str) -> str:
    """An hour's account token for `account`, bound to `DEVICE`."""
    return mint_token(
        ISSUER,
        account,
        issuer="issuer",
        audience=fleet_audience(FLEET_ID),
        ttl_seconds=3600,
        device_key=DEVICE.public_key(),
    )


def seal(
    op: Op, body: bytes, account_token: str, *, proof: bytes | None = None
) -> tuple[bytes, ResponseKey, bytes]:
    """A sealed copy for node 0 as the device makes it, with `body` as the request; the
    sealed bytes, the response key and the proof (to replay it)."""
    if proof is None:
        proof = sign_request_proof(
            DEVICE,
            fleet_id=FLEET_ID,
            node_index=0,
            node_key=NODE_KEY.public_key().to_bytes(),
            token=account_token,
            request=body,
        )
    sealed, key = seal_request(
        NODE_KEY.public_key(),
        FLEET_ID,
        0,
        str(op),
        AuthorizedRequest(account_token, body, proof).to_bytes(),
    )
    return sealed, key, proof
