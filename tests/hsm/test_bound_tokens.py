"""Fleet tokens bound to the request (issue 9 §2): a hostile node opens its own sealed copy
and gets the fleet token, the request and a proof; it tries to replay them to the other
nodes, with a request of its own, or again later. Every node refuses what its own check
cannot tie to the device, this node and this request, once."""

from __future__ import annotations

import hashlib
import struct

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from inprocess_fleet import FAST_KSF, FLEET_ID, ISSUER, LIMIT, InProcessFleet

from backupvault.client.errors import Unauthorized
from backupvault.crypto.seal import Kem, NodePrivateKey, open_request, seal_request
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.protocol import (
    AuthorizedRequest,
    ErrorResponse,
    ManifestRequest,
    Op,
    SealedCopies,
)
from backupvault.tokens import (
    PROOF_LIFETIME_SECONDS,
    SeenProofs,
    TokenRejected,
    TokenVerifier,
    fleet_audience,
    mint_token,
    sign_request_proof,
)

ROOT_KEY = bytes(range(32))
#: A node's serialized public key, for the tests of the proof alone.
NODE_KEY = b"\x00\x20" + bytes(range(32))


def _node_key(fleet: InProcessFleet, node: int) -> bytes:
    """What a request proof names node `node` by (its serialized HPKE public key)."""
    return fleet.node_keys[node].public_key().to_bytes()


def _copy_seen_by(fleet: InProcessFleet, node: int) -> tuple[Op, AuthorizedRequest]:
    """What a hostile node `node` reads in its copy of the client's last request."""
    op_name, body = fleet.requests[-1]
    copy = SealedCopies.from_bytes(body).copies[node]
    opened, _ = open_request(fleet.node_keys[node], FLEET_ID, node, op_name, copy)
    return Op(op_name), AuthorizedRequest.from_bytes(opened)


def _send(fleet: InProcessFleet, node: int, op: Op, authorized: AuthorizedRequest) -> str:
    """Seal `authorized` to node `node` and have it open it: "" if it was taken, else why
    it was refused."""
    public = fleet.node_keys[node].public_key()
    sealed, _ = seal_request(public, FLEET_ID, node, str(op), authorized.to_bytes())
    opened = fleet.firmware[node].open(op, "alice", "backup-root-key", sealed, fleet.now)
    return opened.detail if isinstance(opened, ErrorResponse) else ""


@pytest.fixture
def seen_by_node_0(fleet: InProcessFleet) -> tuple[Op, AuthorizedRequest]:
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    client.recover("pw", ksf_floor=FAST_KSF)
    return _copy_seen_by(fleet, 0)


def test_a_node_cannot_replay_the_token_and_proof_it_opened_to_another_node(
    fleet: InProcessFleet, seen_by_node_0: tuple[Op, AuthorizedRequest]
) -> None:
    op, authorized = seen_by_node_0
    for other in range(1, 5):
        assert "request proof does not verify" in _send(fleet, other, op, authorized)


def test_a_node_cannot_replay_what_it_opened_to_its_index_in_another_epoch(
    fleet: InProcessFleet, seen_by_node_0: tuple[Op, AuthorizedRequest]
) -> None:
    """A rotation keeps the fleet id and the node indices, and the old epoch's nodes keep
    serving while clients migrate. Node 0 of the old epoch (hostile) seals what it opened
    to node 0 of the new one, whose public key is in the new bundle, and a hostile relay
    forwards it: that node has its own seen-set, and the proof named only the fleet and
    the index. It now names the node's key too, so the new node refuses it."""
    op, authorized = seen_by_node_0
    hpke = NodePrivateKey.generate(Kem.X25519)
    new_node_0 = VaultFirmware(
        FLEET_ID,
        NodeKey(0, hpke, Ed25519PrivateKey.generate()),
        TokenVerifier(fleet.issuer.public_key(), ISSUER, fleet_audience(FLEET_ID)),
        FleetShape(2, 5, 3, LIMIT),
        {}.get,
    )

    def send(request: AuthorizedRequest) -> str:
        sealed, _ = seal_request(hpke.public_key(), FLEET_ID, 0, str(op), request.to_bytes())
        opened = new_node_0.open(op, "alice", "backup-root-key", sealed, fleet.now)
        return opened.detail if isinstance(opened, ErrorResponse) else ""

    assert "request proof does not verify" in send(authorized)
    fresh = sign_request_proof(
        fleet.device,
        fleet_id=FLEET_ID,
        node_index=0,
        node_key=hpke.public_key().to_bytes(),
        token=authorized.fleet_token,
        request=authorized.request,
        now=fleet.now,
    )  # the device's own request to the new node is taken
    assert send(AuthorizedRequest(authorized.fleet_token, authorized.request, fresh)) == ""


def test_a_node_cannot_use_the_token_for_a_request_of_its_own(
    fleet: InProcessFleet, seen_by_node_0: tuple[Op, AuthorizedRequest]
) -> None:
    _, authorized = seen_by_node_0
    forged = ManifestRequest("alice", "backup-root-key").to_bytes()
    mine = AuthorizedRequest(authorized.fleet_token, forged, authorized.proof)
    for node in range(5):
        assert "request proof does not verify" in _send(fleet, node, Op.MANIFEST, mine)


def test_a_proof_is_taken_once(
    fleet: InProcessFleet, seen_by_node_0: tuple[Op, AuthorizedRequest]
) -> None:
    """The client's copy already reached node 0: the same copy again is refused, while a
    fresh proof from the device (what a client's resend carries) is taken."""
    op, authorized = seen_by_node_0
    assert "used before" in _send(fleet, 0, op, authorized)
    fresh = sign_request_proof(
        fleet.device,
        fleet_id=FLEET_ID,
        node_index=0,
        node_key=_node_key(fleet, 0),
        token=authorized.fleet_token,
        request=authorized.request,
        now=fleet.now,
    )
    assert (
        _send(fleet, 0, op, AuthorizedRequest(authorized.fleet_token, authorized.request, fresh))
        == ""
    )


def test_an_expired_proof_is_refused(
    fleet: InProcessFleet, seen_by_node_0: tuple[Op, AuthorizedRequest]
) -> None:
    op, authorized = seen_by_node_0
    old = sign_request_proof(
        fleet.device,
        fleet_id=FLEET_ID,
        node_index=1,
        node_key=_node_key(fleet, 1),
        token=authorized.fleet_token,
        request=authorized.request,
        now=fleet.now - PROOF_LIFETIME_SECONDS - 31,
    )
    stale = AuthorizedRequest(authorized.fleet_token, authorized.request, old)
    assert "expired" in _send(fleet, 1, op, stale)


def _alice_token(fleet: InProcessFleet, device_key: Ed25519PublicKey | None) -> str:
    return mint_token(
        fleet.issuer,
        "alice",
        issuer=ISSUER,
        audience=fleet_audience(FLEET_ID),
        ttl_seconds=3600,
        now=fleet.now,
        device_key=device_key,
    )


@pytest.mark.parametrize("problem", ["another device", "no cnf", "no proof"])
def test_a_token_not_bound_to_the_signing_device_is_refused(
    fleet: InProcessFleet, problem: str
) -> None:
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    thief = Ed25519PrivateKey.generate()
    token = _alice_token(fleet, None if problem == "no cnf" else fleet.device.public_key())
    request = ManifestRequest("alice", "backup-root-key").to_bytes()
    signer = thief if problem == "another device" else fleet.device
    proof = sign_request_proof(
        signer,
        fleet_id=FLEET_ID,
        node_index=2,
        node_key=_node_key(fleet, 2),
        token=token,
        request=request,
        now=fleet.now,
    )
    if problem == "no proof":
        proof = b""
    why = _send(fleet, 2, Op.MANIFEST, AuthorizedRequest(token, request, proof))
    assert why.startswith("fleet token refused")
    assert {
        "another device": "does not verify",
        "no cnf": "not bound to a device key",
        "no proof": "no request proof",
    }[problem] in why


def test_a_token_bound_to_a_small_order_key_is_refused(fleet: InProcessFleet) -> None:
    # Bound to the identity, a stolen token's proofs could be made by anyone: the signature
    # (identity, 0) verifies for every message under OpenSSL.
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    identity = Ed25519PublicKey.from_public_bytes(b"\x01" + bytes(31))
    token = _alice_token(fleet, identity)
    request = ManifestRequest("alice", "backup-root-key").to_bytes()
    jti = bytes(16)
    proof = jti + struct.pack(">Q", int(fleet.now)) + b"\x01" + bytes(31) + bytes(32)
    why = _send(fleet, 2, Op.MANIFEST, AuthorizedRequest(token, request, proof))
    assert why.startswith("fleet token refused")
    assert "prime-order subgroup" in why


def test_a_client_resend_signs_afresh_and_is_answered(fleet: InProcessFleet) -> None:
    """An answer lost on the way: the SDK sends again, with new proofs, and the nodes that
    took the first copies take the second (a resend costs nothing twice)."""
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    lost = [True]

    def lose_first_answer(request: httpx.Request) -> httpx.Response:
        answer = fleet.handle(request)
        if lost[0]:
            lost[0] = False
            raise httpx.ReadTimeout("answer lost", request=request)
        return answer

    client = fleet.client()
    client.vault._http = httpx.Client(transport=httpx.MockTransport(lose_first_answer))
    start = len(fleet.requests)
    assert client.recover("pw", ksf_floor=FAST_KSF).root_key == ROOT_KEY
    (op, sent), (op_again, resent) = fleet.requests[start : start + 2]
    assert op == op_again
    first, second = (
        AuthorizedRequest.from_bytes(
            open_request(fleet.node_keys[0], FLEET_ID, 0, op, SealedCopies.from_bytes(b).copies[0])[
                0
            ]
        )
        for b in (sent, resent)
    )
    assert first.request == second.request and first.proof != second.proof


# ---- the seen-set ---------------------------------------------------------------------------


def test_the_seen_set_forgets_expired_proofs_and_fails_closed_when_full() -> None:
    seen = SeenProofs(capacity=2)
    seen.add(b"a" * 16, expires=100.0, now=0.0)
    seen.add(b"b" * 16, expires=200.0, now=0.0)
    with pytest.raises(TokenRejected, match="busy"):
        seen.add(b"c" * 16, expires=300.0, now=50.0)  # full of unexpired proofs
    with pytest.raises(TokenRejected, match="used before"):
        seen.add(b"b" * 16, expires=300.0, now=150.0)
    seen.add(b"c" * 16, expires=300.0, now=150.0)  # "a" expired and was forgotten
    assert len(seen) == 2


class _OneRequest:
    """A node's check of one request's proofs, with no fleet: alice's token (issued at
    `token_at`) bound to a device, that device's proofs for the request at a time of its
    choosing, and the verifier taking them at a node clock's reading."""

    def __init__(self, token_at: int) -> None:
        issuer, self.device = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.verifier = TokenVerifier(issuer.public_key(), "iss", fleet_audience(FLEET_ID))
        self.token = mint_token(
            issuer,
            "alice",
            issuer="iss",
            audience=fleet_audience(FLEET_ID),
            ttl_seconds=3600,
            now=token_at,
            device_key=self.device.public_key(),
        )

    def proof(self, at: int) -> bytes:
        return sign_request_proof(
            self.device,
            fleet_id=FLEET_ID,
            node_index=0,
            node_key=NODE_KEY,
            token=self.token,
            request=b"r",
            now=at,
        )

    def take(self, proof: bytes, at: int, seen: SeenProofs) -> str:
        return self.verifier.verify_bound(
            self.token,
            proof,
            request=b"r",
            fleet_id=FLEET_ID,
            node_index=0,
            node_key=NODE_KEY,
            seen=seen,
            now=at,
        )


def test_a_proof_from_the_future_is_refused() -> None:
    request = _OneRequest(token_at=1000)
    proof = request.proof(1100)
    with pytest.raises(TokenRejected, match="future"):
        request.take(proof, 1000, SeenProofs())
    assert request.take(proof, 1100, SeenProofs()) == "alice"


def test_a_clock_stepped_forward_then_back_does_not_bring_a_forgotten_proof_back() -> None:
    """Whoever sets a node's clock (NTP on the network, an operator) steps it 85 s ahead:
    an honest client's fresh proof is still taken there, and makes the node forget every
    proof whose expiry that clock passed. Stepped back, a hostile relay (which signs the
    hop afresh) replays one of those: judged against the clock as it is now it would look
    fresh, and its `jti` is gone. It is refused as expired."""
    now = 10_000
    request = _OneRequest(token_at=now - 100)
    seen = SeenProofs()
    replayed = request.proof(now - 60)
    assert request.take(replayed, now, seen) == "alice"
    # The clock ahead: "replayed" is forgotten.
    assert request.take(request.proof(now), now + 85, seen) == "alice"
    assert len(seen) == 1
    with pytest.raises(TokenRejected, match="expired"):
        request.take(replayed, now + 1, seen)  # the clock back where it was


def test_a_request_proof_is_the_bytes_relay_md_names() -> None:
    """docs/relay.md, "Fleet tokens bound to the request": `jti (16) ‖ iat (u64) ‖
    Ed25519(device key, signed)` with `signed` spelled out there. A proof built by hand from
    the page is taken by a node; the client's own proof verifies over the page's bytes."""
    request = _OneRequest(token_at=1000)

    def signed(node_index: int, jti: bytes, iat: int) -> bytes:
        return (
            b"backupvault/request-proof/v2"
            + struct.pack(">H", len(FLEET_ID))
            + FLEET_ID
            + struct.pack(">I", node_index)
            + hashlib.sha256(NODE_KEY).digest()
            + hashlib.sha256(request.token.encode()).digest()
            + hashlib.sha256(b"r").digest()
            + jti
            + struct.pack(">Q", iat)
        )

    jti, iat = b"j" * 16, 1010
    by_hand = jti + struct.pack(">Q", iat) + request.device.sign(signed(0, jti, iat))
    assert len(by_hand) == 88
    assert request.take(by_hand, 1010, SeenProofs()) == "alice"
    other_node = jti + struct.pack(">Q", iat) + request.device.sign(signed(1, jti, iat))
    with pytest.raises(TokenRejected):
        request.take(other_node, 1010, SeenProofs())

    made = request.proof(1020)
    (made_iat,) = struct.unpack(">Q", made[16:24])
    assert made_iat == 1020
    request.device.public_key().verify(made[24:], signed(0, made[:16], made_iat))


@pytest.mark.parametrize(("skew", "said"), [(-600, "behind"), (600, "ahead")])
def test_a_device_clock_far_off_is_named_not_the_token(
    fleet: InProcessFleet, skew: float, said: str
) -> None:
    """A device whose clock is 10 minutes off (a laptop after a dual boot's time zone, a
    resumed VM) dates every proof outside the nodes' bounds. It was told "the request
    proof has expired; send again" and to ask the operator for a new token, which every
    node would refuse alike: the error now names the device's clock."""
    client = fleet.client()
    client.vault._clock = lambda: fleet.now + skew
    with pytest.raises(Unauthorized) as refused:
        client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    assert f"is the device's clock {said}?" in refused.value.message
    assert refused.value.hint is not None and "clock" in refused.value.hint
    assert "new one" not in refused.value.hint
    client.vault._clock = lambda: fleet.now  # set right, the same token is taken
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
