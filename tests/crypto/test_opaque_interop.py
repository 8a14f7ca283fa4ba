"""Interop with opaque-ke (through opaque-snake), in both directions.

opaque-snake fixes: OPRF ristretto255-SHA512, 3DH over ristretto255, SHA-512, Argon2id
(m=19456 KiB, t=2, p=1, 16 zero bytes of salt, 64-byte output), identities = public keys,
empty context, and the `user_id` string (UTF-8) as the credential identifier.
"""

from __future__ import annotations

import opaque_snake as snake
import pytest

from backupvault.crypto import opaque
from backupvault.crypto.ksf import OPAQUE_KE_ARGON2ID
from backupvault.crypto.opaque import KE1, KE2, KE3, RegistrationRecord, RegistrationResponse
from backupvault.errors import AuthenticationFailed

PASSWORD = "correct horse battery staple"
USER_ID = "alice@example.org"


@pytest.fixture(scope="module")
def their_server_with_our_registration() -> tuple[snake.OpaqueServer, snake.PasswordFile, bytes]:
    """Their server; a password file uploaded by our client. Returns our export_key too."""
    server = snake.OpaqueServer()
    state, request = opaque.client_registration_start(PASSWORD.encode())
    response = server.create_registration_response(
        snake.RegistrationRequest.from_bytes(request.to_bytes()), USER_ID
    )
    result = opaque.client_registration_finish(
        state, RegistrationResponse.from_bytes(response.to_bytes()), ksf=OPAQUE_KE_ARGON2ID
    )
    password_file = server.finish_registration(
        snake.RegistrationUpload.from_bytes(result.record.to_bytes())
    )
    return server, password_file, result.export_key


@pytest.fixture(scope="module")
def our_server_with_their_registration() -> tuple[opaque.ServerSetup, RegistrationRecord, bytes]:
    """Our server; a record uploaded by their client. Returns their export_key too."""
    setup = opaque.create_server_setup()
    client = snake.OpaqueClient()
    request, state = client.start_registration(PASSWORD)
    response = opaque.server_registration_response(
        setup, opaque.RegistrationRequest.from_bytes(request.to_bytes()), USER_ID.encode()
    )
    result = client.finish_registration(
        snake.RegistrationResponse.from_bytes(response.to_bytes()), state, PASSWORD
    )
    assert result.server_s_pk == setup.server_public_key
    record = RegistrationRecord.from_bytes(result.upload.to_bytes())
    return setup, record, result.export_key


def test_our_client_their_server(
    their_server_with_our_registration: tuple[snake.OpaqueServer, snake.PasswordFile, bytes],
) -> None:
    server, password_file, export_key = their_server_with_our_registration
    client_state, ke1 = opaque.client_login_start(PASSWORD.encode())
    ke2, server_state = server.create_credential_response(
        snake.CredentialRequest.from_bytes(ke1.to_bytes()), USER_ID, password_file
    )
    result = opaque.client_login_finish(
        client_state, KE2.from_bytes(ke2.to_bytes()), ksf=OPAQUE_KE_ARGON2ID
    )
    keys = server.finish_login(
        snake.CredentialFinalization.from_bytes(result.ke3.to_bytes()), server_state
    )
    assert keys.session_key == result.session_key
    assert result.export_key == export_key


def test_their_client_our_server(
    our_server_with_their_registration: tuple[opaque.ServerSetup, RegistrationRecord, bytes],
) -> None:
    setup, record, export_key = our_server_with_their_registration
    client = snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    server_state, ke2 = opaque.server_login_start(
        setup, record, KE1.from_bytes(ke1.to_bytes()), USER_ID.encode()
    )
    result = client.finish_login(
        snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, PASSWORD
    )
    session_key = opaque.server_login_finish(
        server_state, KE3.from_bytes(result.finalization.to_bytes())
    )
    assert session_key == result.session_keys.session_key
    assert result.session_keys.export_key == export_key


def test_same_export_key_from_either_client() -> None:
    """Their client registers on their server; our client logs in with the same password and
    derives the same export_key: the envelope, KSF and key derivations agree."""
    server = snake.OpaqueServer()
    client = snake.OpaqueClient()
    request, state = client.start_registration(PASSWORD)
    response = server.create_registration_response(request, USER_ID)
    registration = client.finish_registration(response, state, PASSWORD)
    password_file = server.finish_registration(registration.upload)

    client_state, ke1 = opaque.client_login_start(PASSWORD.encode())
    ke2, server_state = server.create_credential_response(
        snake.CredentialRequest.from_bytes(ke1.to_bytes()), USER_ID, password_file
    )
    result = opaque.client_login_finish(
        client_state, KE2.from_bytes(ke2.to_bytes()), ksf=OPAQUE_KE_ARGON2ID
    )
    assert result.export_key == registration.export_key
    assert result.server_public_key == registration.server_s_pk
    keys = server.finish_login(
        snake.CredentialFinalization.from_bytes(result.ke3.to_bytes()), server_state
    )
    assert keys.session_key == result.session_key


def test_our_client_wrong_password_against_their_server(
    their_server_with_our_registration: tuple[snake.OpaqueServer, snake.PasswordFile, bytes],
) -> None:
    server, password_file, _ = their_server_with_our_registration
    client_state, ke1 = opaque.client_login_start(b"wrong password")
    ke2, _ = server.create_credential_response(
        snake.CredentialRequest.from_bytes(ke1.to_bytes()), USER_ID, password_file
    )
    with pytest.raises(AuthenticationFailed):
        opaque.client_login_finish(
            client_state, KE2.from_bytes(ke2.to_bytes()), ksf=OPAQUE_KE_ARGON2ID
        )


def test_their_client_wrong_password_against_our_server(
    our_server_with_their_registration: tuple[opaque.ServerSetup, RegistrationRecord, bytes],
) -> None:
    setup, record, _ = our_server_with_their_registration
    client = snake.OpaqueClient()
    ke1, client_state = client.start_login("wrong password")
    server_state, ke2 = opaque.server_login_start(
        setup, record, KE1.from_bytes(ke1.to_bytes()), USER_ID.encode()
    )
    with pytest.raises(snake.AuthenticationError):
        client.finish_login(
            snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, "wrong password"
        )
    # Their client sends nothing; anything an attacker sends instead fails on our server.
    with pytest.raises(AuthenticationFailed):
        opaque.server_login_finish(server_state, KE3(bytes(64)))


def test_their_client_against_our_fake_record_fails_cleanly() -> None:
    setup = opaque.create_server_setup()
    client = snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    _, ke2 = opaque.server_login_start(
        setup, None, KE1.from_bytes(ke1.to_bytes()), b"nobody@example.org"
    )
    with pytest.raises(snake.AuthenticationError):
        client.finish_login(
            snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, PASSWORD
        )


def test_their_ke3_replayed_against_a_new_state_fails(
    our_server_with_their_registration: tuple[opaque.ServerSetup, RegistrationRecord, bytes],
) -> None:
    setup, record, _ = our_server_with_their_registration
    client = snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    first_state, ke2 = opaque.server_login_start(
        setup, record, KE1.from_bytes(ke1.to_bytes()), USER_ID.encode()
    )
    result = client.finish_login(
        snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, PASSWORD
    )
    ke3 = KE3.from_bytes(result.finalization.to_bytes())
    assert opaque.server_login_finish(first_state, ke3) == result.session_keys.session_key
    # Same KE1 replayed too: fresh server nonce and keyshare make a new state.
    second_state, _ = opaque.server_login_start(
        setup, record, KE1.from_bytes(ke1.to_bytes()), USER_ID.encode()
    )
    with pytest.raises(AuthenticationFailed):
        opaque.server_login_finish(second_state, ke3)
