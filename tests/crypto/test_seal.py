import contextlib
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import seal
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.protocol import Op, unpad_response

FLEET = b"fleet-a"


@pytest.fixture(scope="module", params=list(seal.Kem), ids=lambda k: k.name)
def fleet_key(request: pytest.FixtureRequest) -> seal.NodePrivateKey:
    return seal.NodePrivateKey.generate(request.param)


def test_round_trip(fleet_key: seal.NodePrivateKey) -> None:
    public = seal.NodePublicKey.from_bytes(fleet_key.public_key().to_bytes())
    sealed, response_key = seal.seal_request(public, FLEET, 0, "recover.start", b"KE1 bytes")
    restored = seal.NodePrivateKey.from_bytes(fleet_key.to_bytes())
    body, server_response_key = seal.open_request(restored, FLEET, 0, "recover.start", sealed)
    assert body == b"KE1 bytes"
    assert response_key.open(server_response_key.seal(b"KE2 bytes")) == b"KE2 bytes"


def test_default_is_post_quantum_hybrid() -> None:
    assert seal.DEFAULT_KEM is seal.Kem.MLKEM768_X25519
    assert len(seal.NodePrivateKey.generate().public_key().to_bytes()) == 2 + 1184 + 32


def test_every_request_has_a_fresh_response_key(fleet_key: seal.NodePrivateKey) -> None:
    public = fleet_key.public_key()
    a, key_a = seal.seal_request(public, FLEET, 0, "k", b"same")
    b, key_b = seal.seal_request(public, FLEET, 0, "k", b"same")
    assert a != b
    assert key_a.key != key_b.key


@pytest.mark.parametrize(
    ("fleet_id", "node", "kind"),
    [(b"fleet-b", 0, "recover.start"), (FLEET, 0, "other"), (FLEET, 1, "recover.start")],
)
def test_request_bound_to_fleet_node_and_kind(
    fleet_key: seal.NodePrivateKey, fleet_id: bytes, node: int, kind: str
) -> None:
    sealed, _ = seal.seal_request(fleet_key.public_key(), FLEET, 0, "recover.start", b"x")
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, fleet_id, node, kind, sealed)


def test_a_node_cannot_read_a_request_sealed_to_another_node() -> None:
    """Every node has its own key: node 1, holding its own private key and told the
    index it was for, still cannot open node 0's copy, nor forge node 0's answer."""
    node0, node1 = (
        seal.NodePrivateKey.generate(seal.Kem.X25519),
        seal.NodePrivateKey.generate(seal.Kem.X25519),
    )
    sealed, client_key = seal.seal_request(node0.public_key(), FLEET, 0, "k", b"secret")
    for index in (0, 1):
        with pytest.raises(AuthenticationFailed):
            seal.open_request(node1, FLEET, index, "k", sealed)
    forged = seal.ResponseKey(b"\x00" * 32, FLEET, 0, "k").seal(b"forged answer")
    with pytest.raises(AuthenticationFailed):
        client_key.open(forged)
    # An answer node 0 really made, relabelled as node 1's, does not open either.
    _, server_key = seal.open_request(node0, FLEET, 0, "k", sealed)
    relabelled = seal.ResponseKey(server_key.key, FLEET, 1, "k")
    with pytest.raises(AuthenticationFailed):
        client_key.open(relabelled.seal(b"answer"))


def test_request_for_another_fleet_key_fails(fleet_key: seal.NodePrivateKey) -> None:
    other = seal.NodePrivateKey.generate(fleet_key.kem)
    sealed, _ = seal.seal_request(other.public_key(), FLEET, 0, "k", b"x")
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, FLEET, 0, "k", sealed)


def test_tampered_request_fails(fleet_key: seal.NodePrivateKey) -> None:
    sealed, _ = seal.seal_request(fleet_key.public_key(), FLEET, 0, "k", b"payload")
    for position in (0, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(AuthenticationFailed):
            seal.open_request(fleet_key, FLEET, 0, "k", bytes(tampered))
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, FLEET, 0, "k", sealed[:-1])


def test_response_tamper_replay_and_kind_swap(fleet_key: seal.NodePrivateKey) -> None:
    public = fleet_key.public_key()
    sealed_1, client_key_1 = seal.seal_request(public, FLEET, 0, "k", b"one")
    _, client_key_2 = seal.seal_request(public, FLEET, 0, "k", b"two")
    _, server_key_1 = seal.open_request(fleet_key, FLEET, 0, "k", sealed_1)
    response_1 = server_key_1.seal(b"answer one")
    # A response to one request is useless as the answer to another (replay by the relay).
    with pytest.raises(AuthenticationFailed):
        client_key_2.open(response_1)
    tampered = bytearray(response_1)
    tampered[-1] ^= 0x80
    with pytest.raises(AuthenticationFailed):
        client_key_1.open(bytes(tampered))
    other_kind = seal.ResponseKey(server_key_1.key, FLEET, 0, "other")
    with pytest.raises(AuthenticationFailed):
        client_key_1.open(other_kind.seal(b"answer one"))
    with pytest.raises(InvalidInput):
        client_key_1.open(b"short")


def test_private_key_never_in_repr(fleet_key: seal.NodePrivateKey) -> None:
    assert fleet_key.secret.hex() not in repr(fleet_key)
    _, response_key = seal.seal_request(fleet_key.public_key(), FLEET, 0, "k", b"")
    assert response_key.key.hex() not in repr(response_key)


@given(st.binary(max_size=1300))
def test_public_key_parser_only_raises_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        seal.NodePublicKey.from_bytes(data)


#: X25519 u-coordinates of small order (on the curve or its twist), and non-canonical
#: encodings of some (u + p): the list libsodium refuses.
SMALL_ORDER_X25519 = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", SMALL_ORDER_X25519, ids=lambda p: p.hex()[:8])
@pytest.mark.parametrize("kem", list(seal.Kem), ids=lambda k: k.name)
def test_a_small_order_x25519_node_key_is_refused_when_read(kem: seal.Kem, point: bytes) -> None:
    """A node listing a small-order X25519 key (alone, or as the hybrid key's second half)
    is refused when its key is read: sealing to it raised OpenSSL's ValueError ("Error
    computing shared key") at every request of every client, an internal error instead of
    a message, and one hostile node stopped every operation of the fleet."""
    honest = seal.NodePrivateKey.generate(kem).public_key().to_bytes()
    hostile = honest[: -len(point)] + point
    with pytest.raises(InvalidInput, match="small-order"):
        seal.NodePublicKey.from_bytes(hostile)
    seal.NodePublicKey.from_bytes(honest)  # an honest key still reads


@given(st.binary(max_size=200))
def test_private_key_parser_only_raises_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        seal.NodePrivateKey.from_bytes(data)


@settings(max_examples=50)
@given(st.binary(max_size=1300))
def test_open_request_on_garbage_only_raises_our_errors(data: bytes) -> None:
    key = seal.NodePrivateKey.from_bytes(bytes.fromhex("0020") + b"\x07" * 32)
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        seal.open_request(key, FLEET, 0, "k", data)


# ---- shares sealed to one node, kept on the device until delivered --------------------------

SHARE = bytes([3]) + bytes(range(32))
M_HASH = bytes(range(32, 64))


def test_a_sealed_share_opens_at_its_node_for_its_manifest(fleet_key: seal.NodePrivateKey) -> None:
    sealed = seal.seal_share(fleet_key.public_key(), FLEET, 2, M_HASH, SHARE)
    assert len(sealed) == seal.SEALED_SHARE_LEN[fleet_key.kem]
    assert seal.open_share(fleet_key, FLEET, 2, M_HASH, sealed) == SHARE
    assert seal.seal_share(fleet_key.public_key(), FLEET, 2, M_HASH, SHARE) != sealed


@pytest.mark.parametrize(
    ("fleet_id", "node", "manifest_hash"),
    [(b"fleet-b", 2, M_HASH), (FLEET, 1, M_HASH), (FLEET, 2, bytes(32))],
    ids=["another fleet", "another node", "another manifest"],
)
def test_a_sealed_share_is_bound_to_fleet_node_and_manifest(
    fleet_key: seal.NodePrivateKey, fleet_id: bytes, node: int, manifest_hash: bytes
) -> None:
    sealed = seal.seal_share(fleet_key.public_key(), FLEET, 2, M_HASH, SHARE)
    with pytest.raises(AuthenticationFailed):
        seal.open_share(fleet_key, fleet_id, node, manifest_hash, sealed)


def test_a_sealed_share_is_not_a_request_nor_the_reverse(fleet_key: seal.NodePrivateKey) -> None:
    """The two seals' contexts differ ("share" against "request"): neither opens as the
    other, even for the same fleet, node and kind."""
    share = seal.seal_share(fleet_key.public_key(), FLEET, 0, M_HASH, SHARE)
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, FLEET, 0, seal.SHARE_KIND, share)
    request, _ = seal.seal_request(fleet_key.public_key(), FLEET, 0, seal.SHARE_KIND, SHARE)
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        seal.open_share(fleet_key, FLEET, 0, M_HASH, request)


def test_an_altered_sealed_share_is_refused(fleet_key: seal.NodePrivateKey) -> None:
    sealed = seal.seal_share(fleet_key.public_key(), FLEET, 0, M_HASH, SHARE)
    for at in (0, len(sealed) // 2, len(sealed) - 1):
        altered = sealed[:at] + bytes([sealed[at] ^ 0x01]) + sealed[at + 1 :]
        with pytest.raises(AuthenticationFailed):
            seal.open_share(fleet_key, FLEET, 0, M_HASH, altered)


@settings(max_examples=50)
@given(st.binary(max_size=200))
def test_open_share_on_garbage_only_raises_our_errors(data: bytes) -> None:
    key = seal.NodePrivateKey.from_bytes(bytes.fromhex("0020") + b"\x07" * 32)
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        seal.open_share(key, FLEET, 0, M_HASH, data)


def _spec_context(role: bytes, fleet_id: bytes, node: int, op: bytes) -> bytes:
    """docs/protocol.md, "Sealing": context(role)."""
    return (
        b"backupvault/v2 "
        + role
        + b"\x00"
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + struct.pack(">H", node)
        + struct.pack(">H", len(op))
        + op
    )


def test_the_sealing_is_the_one_the_protocol_page_names() -> None:
    """A request the client seals for node 2 (its place in the fleet, 0-based) opens with
    plain RFC 9180 HPKE (X25519, HKDF-SHA256, AES-256-GCM) and the documented info, as
    response key (32) ‖ body; an answer sealed by hand, `nonce ‖ AES-256-GCM(response_key,
    nonce, padded, context("response"))`, opens with the client's response key."""
    node_key = seal.NodePrivateKey.generate(seal.Kem.X25519)
    public = node_key.public_key().to_bytes()
    assert public[:2] == b"\x00\x20" and len(public) == 2 + 32
    sealed, response_key = seal.seal_request(
        seal.NodePublicKey.from_bytes(public), FLEET, 2, "evaluate", b"the request"
    )
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    raw_key = x25519.X25519PrivateKey.from_private_bytes(node_key.to_bytes()[2:])
    plaintext = suite.decrypt(sealed, raw_key, _spec_context(b"request", FLEET, 2, b"evaluate"))
    assert len(sealed) == 32 + len(plaintext) + 16  # enc ‖ ciphertext
    assert plaintext[32:] == b"the request"
    with pytest.raises(InvalidTag):  # the share index (3) is not what the info names
        suite.decrypt(sealed, raw_key, _spec_context(b"request", FLEET, 3, b"evaluate"))

    padded = b"answer" + b"\x80" + bytes(384 - len(b"answer") - 1)
    nonce = b"\x07" * 12
    aad = _spec_context(b"response", FLEET, 2, b"evaluate")
    answer = nonce + AESGCM(plaintext[:32]).encrypt(nonce, padded, aad)
    assert response_key.open(answer) == padded
    assert unpad_response(Op.EVALUATE, padded) == b"answer"
