"""Deployment records and operator signatures: canonical, strictly decoded, validated."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto.seal import FleetPrivateKey, Kem
from backupvault.errors import InvalidInput
from backupvault.transparency.errors import (
    Malformed,
    OperatorSignatureInvalid,
    UnknownOperatorKey,
)
from backupvault.transparency.record import (
    OPERATOR_CONTEXT,
    DeploymentRecord,
    NodeEntry,
    OperatorSignedRecord,
    sign_record,
)

from .conftest import FLEET_ID, HPKE_KEY, MEASUREMENT, OPAQUE_KEY, make_record


def _blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_layout_byte_by_byte() -> None:
    """The encoding docs/transparency.md specifies, rebuilt by hand."""
    record = make_record(nodes=[(0, b"\x01" * 32, "https://n0.test")], epoch=7)
    node = b"\x51" + struct.pack(">Q", 0) + _blob(b"\x01" * 32) + _blob(b"https://n0.test")
    expected = (
        b"\x50"
        + _blob(FLEET_ID)
        + struct.pack(">QQQ", 7, 1, 10)  # epoch, quorum (majority of 1), guess limit
        + struct.pack(">I", 1)
        + _blob(node)
        + _blob(HPKE_KEY)
        + _blob(OPAQUE_KEY)
        + _blob(MEASUREMENT)
        + struct.pack(">Q", 1_750_000_000)
        + struct.pack(">I", 1)  # relay keys: count, then each
        + _blob(b"\xa0" * 32)
        + _blob(b"accounts.test")  # account issuer
        + _blob(b"\xb0" * 32)  # its key
    )
    assert record.to_bytes() == expected
    assert DeploymentRecord.from_bytes(expected) == record


def test_roundtrip_and_quorum_default() -> None:
    record = make_record()
    assert record.quorum == 3
    assert [n.index for n in record.nodes] == list(range(5))
    assert DeploymentRecord.from_bytes(record.to_bytes()) == record
    assert record.fleet_public_key.kem is Kem.X25519
    mlkem = FleetPrivateKey.generate(Kem.MLKEM768_X25519).public_key().to_bytes()
    assert make_record(hpke_public_key=mlkem).fleet_public_key.kem is Kem.MLKEM768_X25519


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("empty fleet id", {"fleet_id": b""}),
    ("long fleet id", {"fleet_id": b"x" * 65}),
    ("guess limit 0", {"guess_limit": 0}),
    ("guess limit too high", {"guess_limit": 101}),
    ("minority quorum", {"quorum": 2}),
    ("quorum above n", {"quorum": 6}),
    ("no nodes", {"nodes": []}),
    ("short identity key", {"nodes": [(0, b"\x01" * 31, "https://a.test")]}),
    (
        "gap in indices",
        {"nodes": [(0, b"\x01" * 32, "https://a.test"), (2, b"\x02" * 32, "https://b.test")]},
    ),
    (
        "duplicate index",
        {"nodes": [(0, b"\x01" * 32, "https://a.test"), (0, b"\x02" * 32, "https://b.test")]},
    ),
    (
        "shared identity key",
        {"nodes": [(0, b"\x01" * 32, "https://a.test"), (1, b"\x01" * 32, "https://b.test")]},
    ),
    (
        "shared url",
        {"nodes": [(0, b"\x01" * 32, "https://a.test"), (1, b"\x02" * 32, "https://a.test")]},
    ),
    ("url scheme", {"nodes": [(0, b"\x01" * 32, "ftp://a.test")]}),
    ("url with space", {"nodes": [(0, b"\x01" * 32, "https://a.test/ x")]}),
    ("hpke unknown kem", {"hpke_public_key": b"\x00\x99" + HPKE_KEY[2:]}),
    ("hpke short key", {"hpke_public_key": HPKE_KEY[:-1]}),
    ("hpke empty", {"hpke_public_key": b""}),
    ("opaque not a point", {"opaque_server_public_key": b"\xff" * 32}),
    ("opaque identity", {"opaque_server_public_key": bytes(32)}),
    ("opaque short", {"opaque_server_public_key": OPAQUE_KEY[:31]}),
    ("measurement short", {"measurement": b"\x00" * 31}),
    ("epoch negative", {"epoch": -1}),
    ("epoch too large", {"epoch": 1 << 64}),
    ("time bool", {"time": True}),
]


@pytest.mark.parametrize(("why", "changes"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_invalid_fields_refused(why: str, changes: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        make_record(**changes)


def test_invalid_field_refused_when_decoding() -> None:
    """A record built around the constructor's checks (bytes edited) fails to decode."""
    good = make_record().to_bytes()
    bad = good.replace(OPAQUE_KEY, b"\xff" * 32)
    with pytest.raises(Malformed, match="ristretto255"):
        DeploymentRecord.from_bytes(bad)
    with pytest.raises(Malformed):
        DeploymentRecord.from_bytes(good + b"\x00")
    with pytest.raises(Malformed):
        DeploymentRecord.from_bytes(good[:-1])
    with pytest.raises(Malformed):
        DeploymentRecord.from_bytes(b"\x51" + good[1:])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_malformed(data: bytes) -> None:
    for cls in (DeploymentRecord, NodeEntry, OperatorSignedRecord):
        with contextlib.suppress(Malformed):
            cls.from_bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_records_only_raise_malformed(data: st.DataObject) -> None:
    good = bytearray(make_record().to_bytes())
    pos = data.draw(st.integers(0, len(good) - 1))
    good[pos] ^= data.draw(st.integers(1, 255))
    try:
        DeploymentRecord.from_bytes(bytes(good))
    except InvalidInput as err:
        assert isinstance(err, Malformed)


def test_operator_signature(operator_key: Ed25519PrivateKey) -> None:
    record = make_record()
    signed = sign_record(record, operator_key)
    operator_key.public_key().verify(signed.signature, OPERATOR_CONTEXT + record.to_bytes())
    assert OperatorSignedRecord.from_bytes(signed.to_bytes()) == signed
    assert signed.verify(operator_key.public_key()) == record
    assert signed.verify(signed.operator_public_key) == record


def test_operator_signature_refusals(operator_key: Ed25519PrivateKey) -> None:
    signed = sign_record(make_record(), operator_key)
    with pytest.raises(UnknownOperatorKey):
        signed.verify(Ed25519PrivateKey.generate().public_key())
    swapped_key = FleetPrivateKey.generate(Kem.X25519).public_key().to_bytes()
    altered = OperatorSignedRecord(
        make_record(hpke_public_key=swapped_key).to_bytes(),
        signed.operator_public_key,
        signed.signature,
    )
    with pytest.raises(OperatorSignatureInvalid):
        altered.verify(operator_key.public_key())
    # a signature without the domain-separation prefix is refused
    bare = OperatorSignedRecord(
        signed.record, signed.operator_public_key, operator_key.sign(signed.record)
    )
    with pytest.raises(OperatorSignatureInvalid):
        bare.verify(operator_key.public_key())
