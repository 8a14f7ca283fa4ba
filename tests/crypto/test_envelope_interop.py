"""What the threshold vault keeps of OPAQUE, checked against opaque-ke (through
opaque-snake), an independent implementation, in both directions.

The threshold flow drops OPAQUE's 3DH (docs/threshold.md), so what is left to agree on is
the OPRF output, the envelope (Store/Recover, RFC 9807 §4.1), the masking key and
export_key. opaque-snake fixes ristretto255-SHA512, Argon2id (OPAQUE_KE_ARGON2ID) and
identities equal to the public keys, which is what these tests use too.
"""

from __future__ import annotations

import opaque_snake as snake
import pytest

from backupvault.crypto import opaque, oprf, threshold
from backupvault.crypto.ksf import OPAQUE_KE_ARGON2ID
from backupvault.crypto.opaque import RegistrationRecord
from backupvault.errors import AuthenticationFailed

PASSWORD = "correct horse battery staple"
USER_ID = "alice@example.org"
THRESHOLD, NODES = 3, 5


def _threshold_evaluation(dealing: threshold.Dealing, blinded: bytes, nodes: list[int]) -> bytes:
    """k·B combined from the partials of `nodes` (1-based), each checked against its K_i."""
    partials = [threshold.evaluate_partial(dealing.shares[i - 1], blinded) for i in nodes]
    combination = threshold.combine(dealing.commitments, blinded, partials)
    assert combination.rejected == ()
    return combination.evaluated


def test_their_envelope_on_our_threshold_evaluation_opens_with_their_export_key() -> None:
    """Their client registers against k·B combined from three of five shares, with server
    public key C_0 = k·G; our client recovers their envelope from an evaluation by three
    other nodes and derives their export_key."""
    dealing = threshold.deal(THRESHOLD, NODES)
    server_public_key = dealing.commitments.public_key
    client = snake.OpaqueClient()
    request, state = client.start_registration(PASSWORD)
    evaluated = _threshold_evaluation(dealing, request.to_bytes(), [1, 2, 3])
    response = snake.RegistrationResponse.from_bytes(evaluated + server_public_key)
    theirs = client.finish_registration(response, state, PASSWORD)
    assert theirs.server_s_pk == server_public_key
    record = RegistrationRecord.from_bytes(theirs.upload.to_bytes())

    blinded_scalar, blinded = oprf.blind(PASSWORD.encode())
    output = oprf.finalize(
        PASSWORD.encode(), blinded_scalar, _threshold_evaluation(dealing, blinded, [2, 4, 5])
    )
    export_key = opaque.recover_envelope(
        output, record, ksf=OPAQUE_KE_ARGON2ID, server_public_key=server_public_key
    )
    assert export_key == theirs.export_key

    wrong = oprf.evaluate(dealing.key, b"wrong password")
    with pytest.raises(AuthenticationFailed):
        opaque.recover_envelope(
            wrong, record, ksf=OPAQUE_KE_ARGON2ID, server_public_key=server_public_key
        )


def test_our_envelope_opens_in_their_client_with_the_same_export_key() -> None:
    """Our client stores its envelope from an OPRF output their server evaluated; their
    server keeps our record, and their client logs in with it: same export_key."""
    server = snake.OpaqueServer()
    blind_scalar, blinded = oprf.blind(PASSWORD.encode())
    response = server.create_registration_response(
        snake.RegistrationRequest.from_bytes(blinded), USER_ID
    ).to_bytes()
    evaluated, server_public_key = response[: oprf.ELEMENT_LEN], response[oprf.ELEMENT_LEN :]
    output = oprf.finalize(PASSWORD.encode(), blind_scalar, evaluated)
    ours = opaque.store_envelope(
        output, ksf=OPAQUE_KE_ARGON2ID, server_public_key=server_public_key
    )
    password_file = server.finish_registration(
        snake.RegistrationUpload.from_bytes(ours.record.to_bytes())
    )

    client = snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    ke2, _ = server.create_credential_response(ke1, USER_ID, password_file)
    result = client.finish_login(ke2, client_state, PASSWORD)
    assert result.session_keys.export_key == ours.export_key

    ke1, client_state = client.start_login("wrong password")
    ke2, _ = server.create_credential_response(ke1, USER_ID, password_file)
    with pytest.raises(snake.AuthenticationError):
        client.finish_login(ke2, client_state, "wrong password")
