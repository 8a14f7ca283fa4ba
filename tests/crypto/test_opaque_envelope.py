"""OPAQUE's client side without 3DH, from a given OPRF output (opaque.store_envelope and
opaque.recover_envelope, used by the threshold vault): byte-exact with the RFC 9807
vectors, and every altered field or wrong output refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import opaque, oprf
from backupvault.crypto.ksf import IDENTITY_KSF, Argon2idParams
from backupvault.crypto.opaque import RegistrationRecord
from backupvault.errors import AuthenticationFailed, InvalidInput

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc9807_opaque_ristretto255.json").read_text()
)["vectors"]
REAL = [v for v in VECTORS if v["kind"] == "real"]
TINY_ARGON2 = Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt=bytes(16))
SERVER_KEY = oprf.scalar_mult_base(oprf.random_scalar())


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(vector[key]) if key in vector else None


@pytest.mark.parametrize("vector", REAL, ids=lambda v: v["name"])
def test_store_and_recover_match_rfc9807_vectors(vector: dict[str, Any]) -> None:
    # The vectors' OPRF output, computed with the server's per-credential key directly.
    oprf_key = bytes.fromhex(vector["oprf_key"])
    password = bytes.fromhex(vector["password"])
    output = oprf.evaluate(oprf_key, password)
    identities = {
        "client_identity": _hex(vector, "client_identity"),
        "server_identity": _hex(vector, "server_identity"),
    }
    server_public_key = bytes.fromhex(vector["server_public_key"])
    result = opaque.store_envelope(
        output,
        ksf=IDENTITY_KSF,
        server_public_key=server_public_key,
        envelope_nonce=bytes.fromhex(vector["envelope_nonce"]),
        **identities,
    )
    assert result.record.to_bytes().hex() == vector["registration_upload"]
    assert result.export_key.hex() == vector["export_key"]
    export_key = opaque.recover_envelope(
        output,
        RegistrationRecord.from_bytes(result.record.to_bytes()),
        ksf=IDENTITY_KSF,
        server_public_key=server_public_key,
        **identities,
    )
    assert export_key.hex() == vector["export_key"]


def _registered(
    server_identity: bytes = b"manifest-hash",
) -> tuple[bytes, opaque.RegistrationResult]:
    output = oprf.evaluate(oprf.random_scalar(), b"password")
    result = opaque.store_envelope(
        output, ksf=TINY_ARGON2, server_public_key=SERVER_KEY, server_identity=server_identity
    )
    return output, result


def test_round_trip_with_argon2() -> None:
    output, result = _registered()
    export_key = opaque.recover_envelope(
        output,
        result.record,
        ksf=TINY_ARGON2,
        server_public_key=SERVER_KEY,
        server_identity=b"manifest-hash",
    )
    assert export_key == result.export_key


def test_wrong_output_key_identity_or_ksf_is_refused() -> None:
    output, result = _registered()
    good = {
        "ksf": TINY_ARGON2,
        "server_public_key": SERVER_KEY,
        "server_identity": b"manifest-hash",
    }
    other_output = oprf.evaluate(oprf.random_scalar(), b"password")
    with pytest.raises(AuthenticationFailed, match="wrong password"):
        opaque.recover_envelope(other_output, result.record, **good)
    for changes in (
        {"server_identity": b"another-manifest"},
        {"server_public_key": oprf.scalar_mult_base(oprf.random_scalar())},
        {"ksf": IDENTITY_KSF},
        {"client_identity": b"someone"},
    ):
        with pytest.raises(AuthenticationFailed):
            opaque.recover_envelope(output, result.record, **{**good, **changes})


def test_every_altered_record_field_is_refused() -> None:
    output, result = _registered()
    record = result.record
    other = _registered()[1].record
    for altered in (
        RegistrationRecord(other.client_public_key, record.masking_key, record.envelope),
        RegistrationRecord(record.client_public_key, bytes(64), record.envelope),
        RegistrationRecord(record.client_public_key, record.masking_key, other.envelope),
        RegistrationRecord(
            record.client_public_key,
            record.masking_key,
            record.envelope[:40] + bytes([record.envelope[40] ^ 1]) + record.envelope[41:],
        ),
    ):
        with pytest.raises(AuthenticationFailed):
            opaque.recover_envelope(
                output,
                altered,
                ksf=TINY_ARGON2,
                server_public_key=SERVER_KEY,
                server_identity=b"manifest-hash",
            )


def test_bad_inputs_are_refused() -> None:
    output, result = _registered()
    with pytest.raises(InvalidInput):
        opaque.store_envelope(output[:63], ksf=TINY_ARGON2, server_public_key=SERVER_KEY)
    with pytest.raises(InvalidInput):
        opaque.store_envelope(output, ksf=TINY_ARGON2, server_public_key=bytes(32))
    with pytest.raises(InvalidInput):
        opaque.store_envelope(
            output, ksf=TINY_ARGON2, server_public_key=SERVER_KEY, server_identity=bytes(70000)
        )
    with pytest.raises(InvalidInput):
        opaque.recover_envelope(
            output + b"\x00", result.record, ksf=TINY_ARGON2, server_public_key=SERVER_KEY
        )


def test_record_bytes_are_checked() -> None:
    """A record decodes only at its exact length and with a valid client public key; any
    record that decodes encodes back to the same bytes; its secrets stay out of repr."""
    output = oprf.evaluate(oprf.random_scalar(), b"pw")
    result = opaque.store_envelope(output, ksf=IDENTITY_KSF, server_public_key=SERVER_KEY)
    data = result.record.to_bytes()
    for bad in (bytes(32), b"\xff" * 32, (1).to_bytes(32, "little")):
        with pytest.raises(InvalidInput):
            RegistrationRecord.from_bytes(bad + data[32:])
    for length in (0, len(data) - 1, len(data) + 1):
        with pytest.raises(InvalidInput):
            RegistrationRecord.from_bytes(bytes(length))
    assert RegistrationRecord.from_bytes(data).to_bytes() == data
    for obj in (result, result.record):
        text = repr(obj) + str(obj)
        assert "hidden" in text
        for secret in (result.export_key, result.record.masking_key):
            assert secret.hex() not in text and repr(secret) not in text


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.binary(min_size=192, max_size=192)))
def test_record_from_bytes_fuzz_only_invalid_input(data: bytes) -> None:
    try:
        parsed = RegistrationRecord.from_bytes(data)
    except InvalidInput:
        return
    assert parsed.to_bytes() == data
