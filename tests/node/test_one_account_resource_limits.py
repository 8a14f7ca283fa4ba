"""What one ordinary account can make a node store (review r1): sealed requests to one
node's service over its real store, as a device with a fleet token sends them.

Finding 2: evaluate, reset and delete-share for entry names nobody registered each ran a
consensus round and left a record row on the node for good; now they are answered
`not_registered` with no round and no row."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.codec import Message
from backupvault.crypto import oprf
from backupvault.crypto.seal import Kem, NodePrivateKey, ResponseKey, seal_request
from backupvault.fleet.channel import PeerChannel
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.node.service import NodeService
from backupvault.node.store import NodeStore
from backupvault.protocol import (
    AuthorizedRequest,
    DeleteShareRequest,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    Op,
    ResetRequest,
    decode_response,
)
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token, sign_request_proof

FLEET_ID = b"fleet"
EPOCH = 0
NODE_KEY = NodePrivateKey.generate(Kem.X25519)
SIGNING = Ed25519PrivateKey.generate()
STORAGE_KEY = os.urandom(32)
ISSUER = Ed25519PrivateKey.generate()
DEVICE = Ed25519PrivateKey.generate()
ACCOUNTS = TokenVerifier(ISSUER.public_key(), "issuer", fleet_audience(FLEET_ID))
TOKEN = mint_token(
    ISSUER,
    "mallory",
    issuer="issuer",
    audience=fleet_audience(FLEET_ID),
    ttl_seconds=3600,
    device_key=DEVICE.public_key(),
)


def _service(path: Path) -> NodeService:
    store = NodeStore(path, 0, STORAGE_KEY)
    firmware = VaultFirmware(
        FLEET_ID,
        NodeKey(0, NODE_KEY, SIGNING),
        ACCOUNTS,
        FleetShape(EPOCH, 1, 1, 3),
        store.get_share,
        {1: SIGNING.public_key()},
    )
    channel = PeerChannel(
        0, X25519PrivateKey.generate().private_bytes_raw(), {0: b"\0" * 32}, FLEET_ID, os.urandom
    )
    return NodeService(0, {0: ("127.0.0.1", 0)}, firmware, channel, store, intact=True)


def _sealed(op: Op, request: Message) -> tuple[bytes, ResponseKey]:
    body = request.to_bytes()
    proof = sign_request_proof(
        DEVICE,
        fleet_id=FLEET_ID,
        node_index=0,
        node_key=NODE_KEY.public_key().to_bytes(),
        token=TOKEN,
        request=body,
    )
    return seal_request(
        NODE_KEY.public_key(),
        FLEET_ID,
        0,
        str(op),
        AuthorizedRequest(TOKEN, body, proof).to_bytes(),
    )


async def _send(service: NodeService, op: Op, entry: str, request: Message) -> Message:
    sealed, key = _sealed(op, request)
    answer = await service.client_request(op, "mallory", entry, sealed)
    assert answer.status == 200, answer
    return decode_response(op, key.open(answer.body))


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM record").fetchone()
    return int(count)


@pytest.mark.parametrize("op", [Op.EVALUATE, Op.RESET, Op.DELETE_SHARE])
def test_requests_for_made_up_entries_leave_no_row_and_run_no_round(tmp_path: Path, op: Op) -> None:
    async def scenario() -> None:
        path = tmp_path / "store.sqlite"
        service = _service(path)
        await service.start()
        try:
            for n in range(20):
                entry = f"made-up-{n}"
                request: Message
                if op is Op.EVALUATE:
                    blinded = oprf.blind(b"guess")[1]
                    request = EvaluateRequest("mallory", entry, 1, blinded, 1_000 + n)
                elif op is Op.RESET:
                    request = ResetRequest("mallory", entry, 1, 1, os.urandom(64))
                else:
                    request = DeleteShareRequest("mallory", entry, 1, 1_000 + n, os.urandom(64))
                answer = await _send(service, op, entry, request)
                assert isinstance(answer, ErrorResponse)
                assert answer.code == ErrorCode.NOT_REGISTERED
            assert service.metrics["committed"] == 0  # not one round
        finally:
            await service.stop()
        assert _rows(path) == 0  # before: 20, one per request, for good

    asyncio.run(scenario())
