"""A hostile account holder, or a hostile relay (which holds a relay key and can forward
anything, signed, to a node), against one node's service: sealed requests of every
operation, well-formed or not (fields a client's own checks would refuse, other
operations' bodies, bytes that open to nothing, other accounts' tokens, replayed
proofs), for an entry it owns. Since a broken invariant or a failed store check stops
the node (NodeService._step), whatever a request makes the node raise is a way to stop
nodes one after another: each answer must be a 200 or a 4xx with a reason, and the node
must keep serving (the entry's owner still recovers afterwards)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealed_client import ACCOUNTS, EPOCH, FLEET_ID, NODE_KEY, seal, token

from backupvault.codec import Message
from backupvault.crypto import manifest, oprf, owner
from backupvault.crypto.seal import ResponseKey, seal_share
from backupvault.fleet.channel import PeerChannel
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.node.service import ClientAnswer, NodeService
from backupvault.node.store import NodeStore
from backupvault.protocol import (
    REQUEST_TYPES,
    AckKind,
    CommitAck,
    CommitSharesRequest,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    Op,
    RegisterShareRequest,
    ShareAck,
    decode_response,
    encode_commit_acks,
)
from backupvault.sim.clients import SIM_KSF

U64_MAX = 2**64 - 1
#: What a node may answer a client request with (503 only if it stopped, or catches up).
CLIENT_STATUSES = {200, 400, 403}


TOKENS = {"alice": token("alice"), "bob": token("bob")}


def _unchecked(cls: type[Message], *fields: Any) -> Message:
    """`cls(*fields)` without its own checks: what a hostile client can encode and seal."""
    loose = type(cls.__name__, (cls,), {"__post_init__": lambda self: None})
    return loose(*fields)  # type: ignore[no-any-return]


class Owner:
    """alice's device, hostile: her entry's registrations, and the node's service."""

    def __init__(self, service: NodeService) -> None:
        self.service = service
        self.made: list[manifest.Registration] = []
        self.blinded: list[bytes] = [_element()]
        self.clock = 1_000
        self.proofs: list[tuple[Op, bytes, bytes]] = []  # (op, body, proof) sent

    def registration(self, version: int) -> manifest.Registration:
        made = manifest.register(
            b"pw",
            bytes(32),
            fleet_id=FLEET_ID,
            account="alice",
            entry="main",
            epoch=EPOCH,
            nodes=1,
            threshold_count=1,
            ksf=SIM_KSF,
            version=version,
        )
        self.made.append(made)
        return made

    async def send(
        self,
        op: Op,
        body: bytes,
        *,
        token: str = TOKENS["alice"],
        names: tuple[str, str] = ("alice", "main"),
    ) -> tuple[ClientAnswer, Message | None]:
        sealed, key, proof = seal(op, body, token)
        self.proofs.append((op, body, proof))
        answer = await self.service.client_request(op, *names, sealed)
        return answer, _opened(op, key, answer)

    def sign(
        self,
        made: manifest.Registration,
        kind: owner.StatementKind,
        version: int,
        counter: int,
        payload: bytes,
    ) -> bytes:
        statement = owner.OwnerStatement(
            kind, FLEET_ID, "alice", "main", version, counter, hashlib.sha256(payload).digest()
        )
        return owner.sign_statement(made.export_key, statement)


def _opened(op: Op, key: ResponseKey, answer: ClientAnswer) -> Message | None:
    if answer.status != 200:
        return None
    return decode_response(op, key.open(answer.body))


def _element() -> bytes:
    return oprf.scalar_mult_base(oprf.random_scalar())


def _service(tmp_path: Path) -> NodeService:
    identity = X25519PrivateKey.generate()
    store = NodeStore(tmp_path / "store.sqlite", 0, os.urandom(32))
    signing = Ed25519PrivateKey.generate()
    firmware = VaultFirmware(
        FLEET_ID,
        NodeKey(0, NODE_KEY, signing),
        ACCOUNTS,
        FleetShape(EPOCH, 1, 1, 3),
        store.get_share,
        {1: signing.public_key()},
    )
    channel = PeerChannel(0, identity.private_bytes_raw(), {0: b"\0" * 32}, FLEET_ID, os.urandom)
    return NodeService(0, {0: ("127.0.0.1", 0)}, firmware, channel, store)


async def _register(
    alice: Owner,
    made: manifest.Registration,
    authorization: bytes = b"",
    counter: int = 0,
    *,
    strict: bool = True,
) -> None:
    """Stage, then commit `made` (`strict`: both must succeed; otherwise the entry may
    have moved on, and whatever the node answers is checked by the caller's loop)."""
    encoded = made.manifest.to_bytes()
    op = Op.CHANGE_SHARE if authorization else Op.REGISTER_SHARE
    stage = RegisterShareRequest(
        "alice", "main", encoded, made.shares[0].to_bytes(), authorization, counter
    )
    answer, ack = await alice.send(op, stage.to_bytes())
    assert answer.status in CLIENT_STATUSES, answer
    if not isinstance(ack, ShareAck):
        assert not strict, ack
        return
    acks = encode_commit_acks([CommitAck(ack.index, AckKind(ack.kind), ack.signature)])
    commit = CommitSharesRequest("alice", "main", encoded, authorization, counter, acks)
    answer, held = await alice.send(Op.COMMIT_SHARES, commit.to_bytes())
    assert answer.status in CLIENT_STATUSES, answer
    assert isinstance(held, ShareAck) or not strict, held


def _body(data: st.DataObject, alice: Owner, op: Op) -> bytes:
    """A request body for `op`: the operation's request, well-formed or not, another
    operation's, or bytes."""
    kind = data.draw(st.sampled_from(["request"] * 4 + ["unchecked", "other op", "bytes"]), "kind")
    if kind == "bytes":
        return data.draw(st.binary(max_size=300), "bytes")
    if kind == "other op":
        op = data.draw(st.sampled_from(list(Op)), "as if")
    checked = kind == "request"
    made = alice.made[data.draw(st.integers(0, len(alice.made) - 1), "manifest")]
    encoded = made.manifest.to_bytes()
    version = data.draw(st.sampled_from([made.manifest.version, 0, 1, U64_MAX]), "version")
    counter = data.draw(st.sampled_from([1, 2, 0, U64_MAX]), "counter")
    account = data.draw(st.sampled_from(["alice"] * 4 + ["bob", "", "alicé", "a" * 65]), "name")
    if checked:
        account = "alice"
    if data.draw(st.booleans(), "mangle manifest") and not checked:
        cut = data.draw(st.integers(0, len(encoded)), "cut")
        encoded = encoded[:cut] + data.draw(st.binary(max_size=4), "tail")
    signature = data.draw(st.sampled_from(["owner", "zeros", "short"]), "signature")
    payload = data.draw(st.sampled_from([encoded, b"", alice.blinded[-1]]), "signed payload")
    kind = {Op.RESET: owner.StatementKind.RESET, Op.DELETE_SHARE: owner.StatementKind.DELETE}
    statement = kind.get(op, owner.StatementKind.CHANGE_PASSWORD)
    sig = {
        "owner": alice.sign(made, statement, version, counter, payload),
        "zeros": bytes(64),
        "short": bytes(63),
    }[signature]
    if checked and signature == "short":
        sig = bytes(64)
    if data.draw(st.booleans(), "fresh B"):
        alice.blinded.append(_element())
    blinded = data.draw(
        st.sampled_from([alice.blinded[-1], alice.blinded[0], bytes(32), b"\xff" * 32]), "B"
    )
    if checked and blinded in (bytes(32), b"\xff" * 32):
        blinded = alice.blinded[-1]
    alice.clock += 1000
    when = data.draw(st.sampled_from([alice.clock, 0, 2**63 - 1, U64_MAX]), "client time")
    if checked and when == U64_MAX:
        when = alice.clock
    share = made.shares[0].to_bytes()
    if not checked:
        share = data.draw(
            st.sampled_from([share, bytes(33), b"\x02" + share[1:], share[:32]]), "share"
        )
    fields: dict[Op, tuple[Any, ...]] = {
        Op.REGISTER_SHARE: (account, "main", encoded, share, b"", 0),
        Op.CHANGE_SHARE: (account, "main", encoded, share, sig, counter),
        Op.COMMIT_SHARES: (account, "main", encoded, sig if counter else b"", counter, bytes(66)),
        Op.MANIFEST: (account, "main"),
        Op.EVALUATE: (account, "main", version, blinded, when),
        Op.RESET: (account, "main", version, counter, sig),
        Op.DELETE_SHARE: (account, "main", version, counter, sig),
        Op.DELIVER_SHARE: (
            account,
            "main",
            encoded,
            seal_share(NODE_KEY.public_key(), FLEET_ID, 0, hashlib.sha256(encoded).digest(), share)
            if len(share) == 33
            else bytes(81),
        ),
    }
    cls = REQUEST_TYPES[op]
    if checked:
        try:
            return cls(*fields[op]).to_bytes()
        except Exception:
            pass
    return _unchecked(cls, *fields[op]).to_bytes()


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_no_sealed_request_makes_the_node_fail_or_stop(
    tmp_path_factory: Any, data: st.DataObject
) -> None:
    async def scenario() -> None:
        service = _service(tmp_path_factory.mktemp("node"))
        await service.start()
        try:
            alice = Owner(service)
            await _register(alice, alice.registration(1))
            for _ in range(data.draw(st.integers(1, 12), "requests")):
                op = data.draw(st.sampled_from(list(Op)), "op")
                how = data.draw(
                    st.sampled_from(
                        ["sealed"] * 6 + ["bob's token", "relay names", "replay", "bytes"]
                    ),
                    "how",
                )
                if how == "change" and alice.made:
                    # The owner's own password change to a fresh dealing (then the
                    # requests above also draw the new manifest and its statements).
                    old = alice.made[-1]
                    new = alice.registration(old.manifest.version + 1)
                    encoded = new.manifest.to_bytes()
                    counter = len(alice.made)
                    change = alice.sign(
                        old,
                        owner.StatementKind.CHANGE_PASSWORD,
                        old.manifest.version,
                        counter,
                        encoded,
                    )
                    await _register(alice, new, change, counter, strict=False)
                    continue
                if how == "bytes":
                    raw = data.draw(st.binary(max_size=200), "sealed bytes")
                    answer = await service.client_request(op, "alice", "main", raw)
                elif how == "replay" and alice.proofs:
                    sent_op, body, proof = alice.proofs[-1]
                    sealed, _, _ = seal(sent_op, body, TOKENS["alice"], proof=proof)
                    answer = await service.client_request(sent_op, "alice", "main", sealed)
                    assert answer.status == 403, answer  # a proof is good once
                else:
                    body = _body(data, alice, op)
                    token = TOKENS["bob"] if how == "bob's token" else TOKENS["alice"]
                    names = ("alice", "other") if how == "relay names" else ("alice", "main")
                    answer, _ = await alice.send(op, body, token=token, names=names)
                assert answer.status in CLIENT_STATUSES, answer
                assert service.serving, service.stopped_because
            # The owner still recovers: the node evaluates her next guess.
            alice.clock += 10_000_000
            live = await alice.send(Op.MANIFEST, ManifestRequest("alice", "main").to_bytes())
            version = getattr(live[1], "version", 1)
            guess = EvaluateRequest("alice", "main", version, _element(), alice.clock)
            answer, opened = await alice.send(Op.EVALUATE, guess.to_bytes())
            assert answer.status == 200 and isinstance(opened, EvaluateResponse | ErrorResponse)
            assert service.serving, service.stopped_because
        finally:
            await service.stop()

    asyncio.run(scenario())
