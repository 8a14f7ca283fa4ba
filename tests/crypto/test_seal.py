import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import seal
from backupvault.errors import AuthenticationFailed, InvalidInput

FLEET = b"fleet-a"


@pytest.fixture(scope="module", params=list(seal.Kem), ids=lambda k: k.name)
def fleet_key(request: pytest.FixtureRequest) -> seal.FleetPrivateKey:
    return seal.FleetPrivateKey.generate(request.param)


def test_round_trip(fleet_key: seal.FleetPrivateKey) -> None:
    public = seal.FleetPublicKey.from_bytes(fleet_key.public_key().to_bytes())
    sealed, response_key = seal.seal_request(public, FLEET, "recover.start", b"KE1 bytes")
    restored = seal.FleetPrivateKey.from_bytes(fleet_key.to_bytes())
    body, server_response_key = seal.open_request(restored, FLEET, "recover.start", sealed)
    assert body == b"KE1 bytes"
    assert response_key.open(server_response_key.seal(b"KE2 bytes")) == b"KE2 bytes"


def test_default_is_post_quantum_hybrid() -> None:
    assert seal.DEFAULT_KEM is seal.Kem.MLKEM768_X25519
    assert len(seal.FleetPrivateKey.generate().public_key().to_bytes()) == 2 + 1184 + 32


def test_every_request_has_a_fresh_response_key(fleet_key: seal.FleetPrivateKey) -> None:
    public = fleet_key.public_key()
    a, key_a = seal.seal_request(public, FLEET, "k", b"same")
    b, key_b = seal.seal_request(public, FLEET, "k", b"same")
    assert a != b
    assert key_a.key != key_b.key


@pytest.mark.parametrize(("fleet_id", "kind"), [(b"fleet-b", "recover.start"), (FLEET, "other")])
def test_request_bound_to_fleet_and_kind(
    fleet_key: seal.FleetPrivateKey, fleet_id: bytes, kind: str
) -> None:
    sealed, _ = seal.seal_request(fleet_key.public_key(), FLEET, "recover.start", b"x")
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, fleet_id, kind, sealed)


def test_request_for_another_fleet_key_fails(fleet_key: seal.FleetPrivateKey) -> None:
    other = seal.FleetPrivateKey.generate(fleet_key.kem)
    sealed, _ = seal.seal_request(other.public_key(), FLEET, "k", b"x")
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, FLEET, "k", sealed)


def test_tampered_request_fails(fleet_key: seal.FleetPrivateKey) -> None:
    sealed, _ = seal.seal_request(fleet_key.public_key(), FLEET, "k", b"payload")
    for position in (0, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(AuthenticationFailed):
            seal.open_request(fleet_key, FLEET, "k", bytes(tampered))
    with pytest.raises(AuthenticationFailed):
        seal.open_request(fleet_key, FLEET, "k", sealed[:-1])


def test_response_tamper_replay_and_kind_swap(fleet_key: seal.FleetPrivateKey) -> None:
    public = fleet_key.public_key()
    sealed_1, client_key_1 = seal.seal_request(public, FLEET, "k", b"one")
    _, client_key_2 = seal.seal_request(public, FLEET, "k", b"two")
    _, server_key_1 = seal.open_request(fleet_key, FLEET, "k", sealed_1)
    response_1 = server_key_1.seal(b"answer one")
    # A response to one request is useless as the answer to another (replay by the relay).
    with pytest.raises(AuthenticationFailed):
        client_key_2.open(response_1)
    tampered = bytearray(response_1)
    tampered[-1] ^= 0x80
    with pytest.raises(AuthenticationFailed):
        client_key_1.open(bytes(tampered))
    other_kind = seal.ResponseKey(server_key_1.key, FLEET, "other")
    with pytest.raises(AuthenticationFailed):
        client_key_1.open(other_kind.seal(b"answer one"))
    with pytest.raises(InvalidInput):
        client_key_1.open(b"short")


def test_private_key_never_in_repr(fleet_key: seal.FleetPrivateKey) -> None:
    assert fleet_key.secret.hex() not in repr(fleet_key)
    _, response_key = seal.seal_request(fleet_key.public_key(), FLEET, "k", b"")
    assert response_key.key.hex() not in repr(response_key)


@given(st.binary(max_size=1300))
def test_public_key_parser_only_raises_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        seal.FleetPublicKey.from_bytes(data)


@given(st.binary(max_size=200))
def test_private_key_parser_only_raises_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        seal.FleetPrivateKey.from_bytes(data)


@settings(max_examples=50)
@given(st.binary(max_size=1300))
def test_open_request_on_garbage_only_raises_our_errors(data: bytes) -> None:
    key = seal.FleetPrivateKey.from_bytes(bytes.fromhex("0020") + b"\x07" * 32)
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        seal.open_request(key, FLEET, "k", data)
