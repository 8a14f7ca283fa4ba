"""OPAQUE-3DH (RFC 9807): the Appendix C vectors, the protocol's properties, and attacks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import opaque, oprf
from backupvault.crypto.ksf import IDENTITY_KSF, Argon2idParams
from backupvault.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerLoginState,
    ServerSetup,
)
from backupvault.errors import AuthenticationFailed, InvalidInput

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc9807_opaque_ristretto255.json").read_text()
)["vectors"]
REAL = [v for v in VECTORS if v["kind"] == "real"]
FAKE = [v for v in VECTORS if v["kind"] == "fake"]

TINY_ARGON2 = Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt=bytes(16))
PASSWORD = b"correct horse battery staple"
CRED_ID = b"alice@example"


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(vector[key]) if key in vector else None


def _req(vector: dict[str, Any], key: str) -> bytes:
    value = _hex(vector, key)
    assert value is not None, key
    return value


def test_vector_file_has_the_ristretto255_vectors() -> None:
    assert [v["name"].split()[0] for v in VECTORS] == ["C.1.1", "C.1.2", "C.2.1"]
    for vector in VECTORS:
        assert vector["oprf"] == "ristretto255-SHA512"
        assert vector["group"] == "ristretto255"
        assert vector["ksf"] == "Identity"


def _setup_from(vector: dict[str, Any]) -> ServerSetup:
    setup = opaque.create_server_setup(
        oprf_seed=_req(vector, "oprf_seed"),
        server_private_key=_req(vector, "server_private_key"),
    )
    assert setup.server_public_key == _req(vector, "server_public_key")
    return setup


@pytest.mark.parametrize("vector", REAL, ids=lambda v: v["name"])
def test_rfc9807_real_vector(vector: dict[str, Any]) -> None:
    setup = _setup_from(vector)
    cred_id = _req(vector, "credential_identifier")
    password = _req(vector, "password")
    identities = {
        "client_identity": _hex(vector, "client_identity"),
        "server_identity": _hex(vector, "server_identity"),
    }
    context = _req(vector, "context")

    # Registration.
    reg_state, request = opaque.client_registration_start(
        password, blind=_req(vector, "blind_registration")
    )
    assert request.to_bytes() == _req(vector, "registration_request")
    response = opaque.server_registration_response(
        setup, RegistrationRequest.from_bytes(request.to_bytes()), cred_id
    )
    assert response.to_bytes() == _req(vector, "registration_response")
    registration = opaque.client_registration_finish(
        reg_state,
        RegistrationResponse.from_bytes(response.to_bytes()),
        ksf=IDENTITY_KSF,
        envelope_nonce=_req(vector, "envelope_nonce"),
        **identities,
    )
    assert registration.record.to_bytes() == _req(vector, "registration_upload")
    assert registration.record.client_public_key == _req(vector, "client_public_key")
    assert registration.record.envelope == _req(vector, "envelope")
    assert registration.export_key == _req(vector, "export_key")

    # Login.
    login_state, ke1 = opaque.client_login_start(
        password,
        blind=_req(vector, "blind_login"),
        client_nonce=_req(vector, "client_nonce"),
        client_keyshare_seed=_req(vector, "client_keyshare_seed"),
    )
    assert ke1.to_bytes() == _req(vector, "KE1")
    server_state, ke2 = opaque.server_login_start(
        setup,
        RegistrationRecord.from_bytes(registration.record.to_bytes()),
        KE1.from_bytes(ke1.to_bytes()),
        cred_id,
        context=context,
        masking_nonce=_req(vector, "masking_nonce"),
        server_nonce=_req(vector, "server_nonce"),
        server_keyshare_seed=_req(vector, "server_keyshare_seed"),
        **identities,
    )
    assert ke2.to_bytes() == _req(vector, "KE2")
    result = opaque.client_login_finish(
        login_state, KE2.from_bytes(ke2.to_bytes()), ksf=IDENTITY_KSF, context=context, **identities
    )
    assert result.ke3.to_bytes() == _req(vector, "KE3")
    assert result.session_key == _req(vector, "session_key")
    assert result.export_key == _req(vector, "export_key")
    assert opaque.server_login_finish(server_state, KE3.from_bytes(result.ke3.to_bytes())) == (
        _req(vector, "session_key")
    )


@pytest.mark.parametrize("vector", REAL, ids=lambda v: v["name"])
def test_rfc9807_real_vector_intermediates(vector: dict[str, Any]) -> None:
    """The listed intermediates, recomputed from the module's internal steps."""
    cred_id = _req(vector, "credential_identifier")
    password = _req(vector, "password")
    oprf_key = opaque._derive_oprf_key(_req(vector, "oprf_seed"), cred_id)
    assert oprf_key == _req(vector, "oprf_key")

    blind = _req(vector, "blind_registration")
    _, blinded = oprf.blind(password, blind)
    evaluated = oprf.blind_evaluate(oprf_key, blinded)
    randomized_password = opaque._randomized_password(password, blind, evaluated, IDENTITY_KSF)
    assert randomized_password == _req(vector, "randomized_password")
    auth_key, _, _ = opaque._envelope_keys(randomized_password, _req(vector, "envelope_nonce"))
    assert auth_key == _req(vector, "auth_key")

    # 3DH key schedule from the server's side of the vector's KE1/KE2.
    ke1 = KE1.from_bytes(_req(vector, "KE1"))
    ke2 = KE2.from_bytes(_req(vector, "KE2"))
    server_secret, _ = opaque.derive_diffie_hellman_key_pair(_req(vector, "server_keyshare_seed"))
    client_public_key = _req(vector, "client_public_key")
    server_public_key = _req(vector, "server_public_key")
    preamble = opaque._preamble(
        _hex(vector, "client_identity") or client_public_key,
        ke1,
        _hex(vector, "server_identity") or server_public_key,
        ke2.credential_response_bytes(),
        ke2.server_nonce,
        ke2.server_public_keyshare,
        _req(vector, "context"),
    )
    ikm = (
        oprf.scalar_mult(server_secret, ke1.client_public_keyshare)
        + oprf.scalar_mult(_req(vector, "server_private_key"), ke1.client_public_keyshare)
        + oprf.scalar_mult(server_secret, client_public_key)
    )
    keys = opaque._derive_keys(ikm, opaque._hash(preamble))
    assert keys.handshake_secret == _req(vector, "handshake_secret")
    assert keys.server_mac_key == _req(vector, "server_mac_key")
    assert keys.client_mac_key == _req(vector, "client_mac_key")
    assert keys.session_key == _req(vector, "session_key")


@pytest.mark.parametrize("vector", FAKE, ids=lambda v: v["name"])
def test_rfc9807_fake_vector(vector: dict[str, Any]) -> None:
    setup = _setup_from(vector)
    client_private_key = _req(vector, "client_private_key")
    client_public_key = _req(vector, "client_public_key")
    assert oprf.scalar_mult_base(client_private_key) == client_public_key
    record = opaque.make_fake_record(client_public_key, _req(vector, "masking_key"))
    _, ke2 = opaque.server_login_start(
        setup,
        record,
        KE1.from_bytes(_req(vector, "KE1")),
        _req(vector, "credential_identifier"),
        client_identity=_hex(vector, "client_identity"),
        server_identity=_hex(vector, "server_identity"),
        context=_req(vector, "context"),
        masking_nonce=_req(vector, "masking_nonce"),
        server_nonce=_req(vector, "server_nonce"),
        server_keyshare_seed=_req(vector, "server_keyshare_seed"),
    )
    assert ke2.to_bytes() == _req(vector, "KE2")


# --- round trips with random values -----------------------------------------------------


def _register(
    setup: ServerSetup,
    password: bytes = PASSWORD,
    cred_id: bytes = CRED_ID,
    **identities: bytes | None,
) -> opaque.RegistrationResult:
    state, request = opaque.client_registration_start(password)
    response = opaque.server_registration_response(setup, request, cred_id)
    return opaque.client_registration_finish(state, response, ksf=TINY_ARGON2, **identities)


def _login(
    setup: ServerSetup,
    record: RegistrationRecord | None,
    password: bytes = PASSWORD,
    cred_id: bytes = CRED_ID,
) -> tuple[opaque.ClientLoginState, ServerLoginState, KE2]:
    client_state, ke1 = opaque.client_login_start(password)
    server_state, ke2 = opaque.server_login_start(setup, record, ke1, cred_id)
    return client_state, server_state, ke2


@pytest.fixture(scope="module")
def setup() -> ServerSetup:
    return opaque.create_server_setup()


@pytest.fixture(scope="module")
def registration(setup: ServerSetup) -> opaque.RegistrationResult:
    return _register(setup)


def test_round_trip_with_argon2(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, server_state, ke2 = _login(setup, registration.record)
    result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    assert result.export_key == registration.export_key
    assert result.server_public_key == setup.server_public_key
    assert opaque.server_login_finish(server_state, result.ke3) == result.session_key
    assert len(result.session_key) == 64


def test_sessions_differ_but_export_key_is_stable(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    results = []
    for _ in range(2):
        client_state, _, ke2 = _login(setup, registration.record)
        results.append(opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2))
    assert results[0].session_key != results[1].session_key
    assert results[0].export_key == results[1].export_key == registration.export_key


def test_message_sizes(setup: ServerSetup, registration: opaque.RegistrationResult) -> None:
    _, request = opaque.client_registration_start(PASSWORD)
    assert len(request.to_bytes()) == 32
    assert len(opaque.server_registration_response(setup, request, CRED_ID).to_bytes()) == 64
    assert len(registration.record.to_bytes()) == 192
    client_state, server_state, ke2 = _login(setup, registration.record)
    assert len(client_state.ke1.to_bytes()) == 96
    assert len(ke2.to_bytes()) == 320
    result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    assert len(result.ke3.to_bytes()) == 64
    assert len(setup.to_bytes()) == 128
    assert len(server_state.to_bytes()) == 128


def test_identities_and_context_must_match() -> None:
    setup = opaque.create_server_setup()
    ids = {"client_identity": b"alice", "server_identity": b"vault.example"}
    registration = _register(setup, **ids)

    def attempt(client_kwargs: dict[str, bytes], server_kwargs: dict[str, bytes]) -> bytes:
        client_state, ke1 = opaque.client_login_start(PASSWORD)
        server_state, ke2 = opaque.server_login_start(
            setup, registration.record, ke1, CRED_ID, **server_kwargs
        )
        result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2, **client_kwargs)
        return opaque.server_login_finish(server_state, result.ke3)

    both = {**ids, "context": b"backupvault v1"}
    assert len(attempt(both, both)) == 64
    # Wrong client identity at login: the envelope MAC does not verify.
    with pytest.raises(AuthenticationFailed):
        attempt({**both, "client_identity": b"mallory"}, both)
    # Identity mismatch between client and server: the server MAC does not verify.
    with pytest.raises(AuthenticationFailed):
        attempt(both, {**both, "server_identity": b"other"})
    # Different contexts: the server MAC does not verify.
    with pytest.raises(AuthenticationFailed):
        attempt(both, {**both, "context": b"other"})
    # Default identities differ from explicit ones, so leaving them out also fails.
    with pytest.raises(AuthenticationFailed):
        attempt({"context": both["context"]}, {"context": both["context"]})


def test_oversized_identity_or_context_rejected(setup: ServerSetup) -> None:
    state, request = opaque.client_registration_start(PASSWORD)
    response = opaque.server_registration_response(setup, request, CRED_ID)
    with pytest.raises(InvalidInput):
        opaque.client_registration_finish(
            state, response, ksf=IDENTITY_KSF, client_identity=bytes(70000)
        )
    _, ke1 = opaque.client_login_start(PASSWORD)
    with pytest.raises(InvalidInput):
        opaque.server_login_start(setup, None, ke1, CRED_ID, context=bytes(70000))


def test_password_must_be_bytes() -> None:
    with pytest.raises(InvalidInput):
        opaque.client_registration_start("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        opaque.client_login_start("text")  # type: ignore[arg-type]


def test_wrong_password_fails_on_client(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, _, ke2 = _login(setup, registration.record, password=b"wrong password")
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)


def test_wrong_ksf_fails_like_a_wrong_password(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, _, ke2 = _login(setup, registration.record)
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=IDENTITY_KSF)


def test_wrong_credential_identifier_fails(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    # A different identifier means a different OPRF key, as for a wrong password.
    client_state, _, ke2 = _login(setup, registration.record, cred_id=b"bob")
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)


def test_other_server_fails(registration: opaque.RegistrationResult) -> None:
    other = opaque.create_server_setup()
    client_state, _, ke2 = _login(other, registration.record)
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)


def test_server_key_pinning(setup: ServerSetup, registration: opaque.RegistrationResult) -> None:
    other_key = opaque.create_server_setup().server_public_key
    state, request = opaque.client_registration_start(PASSWORD)
    response = opaque.server_registration_response(setup, request, CRED_ID)
    with pytest.raises(AuthenticationFailed):
        opaque.client_registration_finish(
            state, response, ksf=TINY_ARGON2, expected_server_public_key=other_key
        )
    pinned = opaque.client_registration_finish(
        state, response, ksf=TINY_ARGON2, expected_server_public_key=setup.server_public_key
    )
    assert pinned.server_public_key == setup.server_public_key

    client_state, _, ke2 = _login(setup, registration.record)
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(
            client_state, ke2, ksf=TINY_ARGON2, expected_server_public_key=other_key
        )
    result = opaque.client_login_finish(
        client_state, ke2, ksf=TINY_ARGON2, expected_server_public_key=setup.server_public_key
    )
    assert result.export_key == registration.export_key


# --- fake records -------------------------------------------------------------------------


def test_unknown_identifier_gets_a_plausible_ke2(setup: ServerSetup) -> None:
    client_state, server_state, ke2 = _login(setup, None, cred_id=b"nobody")
    assert len(ke2.to_bytes()) == KE2.ENCODED_LEN
    assert KE2.from_bytes(ke2.to_bytes()) == ke2
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    # And a KE3 guessed by the client cannot pass on the server.
    with pytest.raises(AuthenticationFailed):
        opaque.server_login_finish(server_state, KE3(bytes(64)))


def test_fake_record_is_stable_per_identifier(setup: ServerSetup) -> None:
    first = opaque.fake_registration_record(setup, b"nobody")
    assert first == opaque.fake_registration_record(setup, b"nobody")
    assert first != opaque.fake_registration_record(setup, b"somebody else")
    assert first != opaque.fake_registration_record(opaque.create_server_setup(), b"nobody")
    assert first.envelope == bytes(opaque.ENVELOPE_LEN)
    # One fake client key per setup, a valid point, restored with the setup.
    assert first.client_public_key == setup.fake_client_public_key
    assert oprf.validate_element(first.client_public_key) == first.client_public_key
    restored = ServerSetup.from_bytes(setup.to_bytes())
    assert restored == setup
    assert restored.fake_client_public_key == setup.fake_client_public_key
    assert opaque.fake_registration_record(restored, b"nobody") == first
    # Distinct from what the OPRF key derivation gives for the same identifier.
    assert first.masking_key[:32] != opaque._derive_oprf_key(setup.oprf_seed, b"nobody")


def test_fake_and_real_ke2_are_built_the_same_way(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    # Same KE1, same nonces: the only difference is the record, which an observer without
    # the password cannot see through the masking.
    _, ke1 = opaque.client_login_start(b"guess")
    fixed = {
        "masking_nonce": bytes(32),
        "server_nonce": bytes(32),
        "server_keyshare_seed": bytes(32),
    }
    _, real = opaque.server_login_start(setup, registration.record, ke1, CRED_ID, **fixed)
    _, fake = opaque.server_login_start(setup, None, ke1, CRED_ID, **fixed)
    assert real.evaluated_message == fake.evaluated_message
    assert real.server_public_keyshare == fake.server_public_keyshare
    assert real.masked_response != fake.masked_response
    assert real.server_mac != fake.server_mac


# --- attacks: tampering, replay, malformed input -----------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _ke2_offsets() -> dict[str, tuple[int, int]]:
    lengths = [
        ("evaluated_message", 32),
        ("masking_nonce", 32),
        ("masked_response", 128),
        ("server_nonce", 32),
        ("server_public_keyshare", 32),
        ("server_mac", 64),
    ]
    offsets, start = {}, 0
    for name, length in lengths:
        offsets[name] = (start, start + length)
        start += length
    return offsets


@pytest.mark.parametrize("field_name", list(_ke2_offsets()))
def test_tampered_ke2_fails_on_client(
    setup: ServerSetup, registration: opaque.RegistrationResult, field_name: str
) -> None:
    start, end = _ke2_offsets()[field_name]
    client_state, _, ke2 = _login(setup, registration.record)
    original = ke2.to_bytes()
    for index in sorted({start, (start + end) // 2, end - 1}):
        tampered = _flip(original, index)
        try:
            parsed = KE2.from_bytes(tampered)
        except InvalidInput:
            # Only a point field can fail to decode; every other field parses and then
            # fails authentication below.
            assert field_name in ("evaluated_message", "server_public_keyshare")
            continue
        with pytest.raises(AuthenticationFailed):
            opaque.client_login_finish(client_state, parsed, ksf=TINY_ARGON2)


def test_ke2_with_swapped_valid_points_fails(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, _, ke2 = _login(setup, registration.record)
    other_point = oprf.hash_to_group(b"some other point")
    for name in ("evaluated_message", "server_public_keyshare"):
        tampered = dataclasses.replace(ke2, **{name: other_point})
        with pytest.raises(AuthenticationFailed):
            opaque.client_login_finish(client_state, tampered, ksf=TINY_ARGON2)


def test_tampered_ke3_fails_on_server(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, server_state, ke2 = _login(setup, registration.record)
    result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    for index in (0, 31, 63):
        with pytest.raises(AuthenticationFailed):
            opaque.server_login_finish(server_state, KE3(_flip(result.ke3.to_bytes(), index)))
    assert opaque.server_login_finish(server_state, result.ke3) == result.session_key


def test_replayed_ke3_fails_against_another_server_state(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, _, ke2 = _login(setup, registration.record)
    old = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    # A new login attempt for the same credential; the attacker replays the old KE3.
    _, new_server_state, _ = _login(setup, registration.record)
    with pytest.raises(AuthenticationFailed):
        opaque.server_login_finish(new_server_state, old.ke3)


def test_ke3_from_wrong_password_fails_on_server(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    # A client that guesses has no valid KE3 to send; the best it can do is garbage.
    _, server_state, _ = _login(setup, registration.record, password=b"guess")
    with pytest.raises(AuthenticationFailed):
        opaque.server_login_finish(server_state, KE3(bytes(64)))


@pytest.mark.parametrize("field_name", ["masking_key", "envelope"])
def test_tampered_record_fails_on_client(
    setup: ServerSetup, registration: opaque.RegistrationResult, field_name: str
) -> None:
    value: bytes = getattr(registration.record, field_name)
    record = dataclasses.replace(registration.record, **{field_name: _flip(value, 5)})
    client_state, _, ke2 = _login(setup, record)
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)


def test_record_with_other_client_key_fails(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    other_key = oprf.hash_to_group(b"not the client's key")
    record = dataclasses.replace(registration.record, client_public_key=other_key)
    client_state, _, ke2 = _login(setup, record)
    # The server used the wrong key in 3DH (and as the client identity): its MAC fails.
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)


def test_record_bytes_with_invalid_point_rejected(registration: opaque.RegistrationResult) -> None:
    data = registration.record.to_bytes()
    for bad in (bytes(32), b"\xff" * 32):
        with pytest.raises(InvalidInput):
            RegistrationRecord.from_bytes(bad + data[32:])


def test_identity_and_invalid_points_rejected_everywhere(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, _, ke2 = _login(setup, registration.record)
    ke1 = client_state.ke1.to_bytes()
    ke2_bytes = ke2.to_bytes()
    for bad in (bytes(32), b"\xff" * 32, (1).to_bytes(32, "little")):
        with pytest.raises(InvalidInput):
            RegistrationRequest.from_bytes(bad)
        with pytest.raises(InvalidInput):
            RegistrationResponse.from_bytes(bad + setup.server_public_key)
        with pytest.raises(InvalidInput):
            RegistrationResponse.from_bytes(setup.server_public_key + bad)
        with pytest.raises(InvalidInput):
            KE1.from_bytes(bad + ke1[32:])
        with pytest.raises(InvalidInput):
            KE1.from_bytes(ke1[:64] + bad)
        with pytest.raises(InvalidInput):
            KE2.from_bytes(bad + ke2_bytes[32:])
        with pytest.raises(InvalidInput):
            KE2.from_bytes(ke2_bytes[:224] + bad + ke2_bytes[256:])


MESSAGE_TYPES: list[Any] = [
    RegistrationRequest,
    RegistrationResponse,
    RegistrationRecord,
    KE1,
    KE2,
    KE3,
    ServerSetup,
    ServerLoginState,
]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_wrong_lengths_rejected(cls: Any) -> None:
    for length in (0, cls.ENCODED_LEN - 1, cls.ENCODED_LEN + 1, 2 * cls.ENCODED_LEN):
        with pytest.raises(InvalidInput):
            cls.from_bytes(bytes(length))


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_from_bytes_fuzz_only_invalid_input(cls: Any) -> None:
    length: int = cls.ENCODED_LEN

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.binary(max_size=400), st.binary(min_size=length, max_size=length)))
    def check(data: bytes) -> None:
        try:
            parsed = cls.from_bytes(data)
        except InvalidInput:
            return
        assert parsed.to_bytes() == data

    check()


def test_valid_messages_survive_the_round_trip(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    client_state, server_state, ke2 = _login(setup, registration.record)
    result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    parse: list[tuple[Callable[[bytes], Any], bytes]] = [
        (KE1.from_bytes, client_state.ke1.to_bytes()),
        (KE2.from_bytes, ke2.to_bytes()),
        (KE3.from_bytes, result.ke3.to_bytes()),
        (RegistrationRecord.from_bytes, registration.record.to_bytes()),
        (ServerSetup.from_bytes, setup.to_bytes()),
        (ServerLoginState.from_bytes, server_state.to_bytes()),
    ]
    for from_bytes, data in parse:
        assert from_bytes(data).to_bytes() == data
    restored = ServerLoginState.from_bytes(server_state.to_bytes())
    assert opaque.server_login_finish(restored, result.ke3) == result.session_key


def test_server_setup_checks_its_key_pair(setup: ServerSetup) -> None:
    data = setup.to_bytes()
    other = opaque.create_server_setup()
    with pytest.raises(InvalidInput, match="does not match"):
        ServerSetup.from_bytes(data[:96] + other.server_public_key)
    with pytest.raises(InvalidInput):
        ServerSetup.from_bytes(data[:64] + bytes(32) + data[96:])
    with pytest.raises(InvalidInput):
        opaque.create_server_setup(oprf_seed=bytes(10))


def test_explicit_randomness_lengths_checked() -> None:
    with pytest.raises(InvalidInput):
        opaque.client_login_start(PASSWORD, client_nonce=bytes(31))
    with pytest.raises(InvalidInput):
        opaque.client_login_start(PASSWORD, client_keyshare_seed=bytes(33))
    with pytest.raises(InvalidInput):
        opaque.client_login_start(PASSWORD, blind=bytes(32))


def test_secrets_do_not_appear_in_repr(
    setup: ServerSetup, registration: opaque.RegistrationResult
) -> None:
    reg_state, _ = opaque.client_registration_start(PASSWORD)
    client_state, server_state, ke2 = _login(setup, registration.record)
    result = opaque.client_login_finish(client_state, ke2, ksf=TINY_ARGON2)
    secrets = [
        PASSWORD,
        setup.oprf_seed,
        setup.server_private_key,
        registration.export_key,
        registration.record.masking_key,
        result.session_key,
        server_state.expected_client_mac,
        client_state.client_secret,
        client_state.blind,
    ]
    for obj in (setup, reg_state, registration, registration.record, client_state,
                server_state, result):  # fmt: skip
        text = repr(obj) + str(obj)
        assert "hidden" in text
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
