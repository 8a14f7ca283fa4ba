"""Deployment records and operator signatures: canonical, strictly decoded, validated."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto.seal import Kem
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

from .conftest import (
    FLEET_ID,
    ISSUER_KEY,
    MEASUREMENT,
    RELAY_KEY,
    hpke_key,
    make_record,
    node,
    signing_key,
)


def _blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_layout_byte_by_byte() -> None:
    """The encoding docs/transparency.md specifies, rebuilt by hand."""
    record = make_record(nodes=[node(0, "https://n0.test")], epoch=7, retired_below=5)
    entry = (
        b"\x55"
        + struct.pack(">QQ", 0, 1)  # index, share index
        + _blob(b"\x01" * 32)  # identity key
        + _blob(hpke_key(0))  # kem id || HPKE key
        + _blob(signing_key(0))
        + _blob(b"https://n0.test")
    )
    expected = (
        b"\x58"
        + _blob(FLEET_ID)
        + struct.pack(">QQQQ", 7, 1, 1, 10)  # epoch, quorum, threshold, guess limit
        + struct.pack(">I", 1)
        + _blob(entry)
        + _blob(MEASUREMENT)
        + struct.pack(">Q", 1_750_000_000)
        + struct.pack(">I", 1)  # relay keys: count, then each
        + _blob(RELAY_KEY)
        + _blob(b"accounts.test")  # account issuer
        + _blob(ISSUER_KEY)  # its key
        + struct.pack(">Q", 5)  # retired below
    )
    assert record.to_bytes() == expected
    assert DeploymentRecord.from_bytes(expected) == record


def test_a_version_3_record_reads_as_retiring_nothing_and_keeps_its_bytes() -> None:
    """Records logged before version 4 (tag 0x57, no `retired_below`) are the older
    epochs clients migrate from: they still parse, retire nothing, and encode to the very
    bytes the operator signed (the leaf the witness logged)."""
    v3 = b"\x57" + make_record(epoch=3).to_bytes()[1:-8]
    record = DeploymentRecord.from_bytes(v3)
    assert record.retired_below == 0 and record.epoch == 3
    assert record.to_bytes() == v3
    assert record.digest() == hashlib.sha256(v3).digest()
    with pytest.raises(Malformed):  # a version 3 tag over version 4's fields
        DeploymentRecord.from_bytes(b"\x57" + make_record(epoch=3).to_bytes()[1:])
    with pytest.raises(Malformed):  # and the other way round
        DeploymentRecord.from_bytes(b"\x58" + v3[1:])


@pytest.mark.parametrize("retired_below", [0, 1, 7])
def test_a_record_retires_at_most_the_epochs_below_its_own(retired_below: int) -> None:
    record = make_record(epoch=7, retired_below=retired_below)
    assert DeploymentRecord.from_bytes(record.to_bytes()).retired_below == retired_below


def test_a_record_that_retires_itself_is_malformed() -> None:
    with pytest.raises(Malformed, match="retired_below"):
        make_record(epoch=7, retired_below=8)
    forged = make_record(epoch=7, retired_below=7).to_bytes()[:-8] + struct.pack(">Q", 8)
    with pytest.raises(Malformed, match="retired_below"):
        DeploymentRecord.from_bytes(forged)


def test_roundtrip_and_quorum_default() -> None:
    record = make_record()
    assert record.quorum == 3
    assert [n.index for n in record.nodes] == list(range(5))
    assert DeploymentRecord.from_bytes(record.to_bytes()) == record
    assert record.threshold == 3
    assert [n.share_index for n in record.nodes] == [1, 2, 3, 4, 5]
    assert record.kem is Kem.X25519
    assert [k.to_bytes() for k in record.node_public_keys] == [hpke_key(i) for i in range(5)]
    mlkem = [node(i, hpke=hpke_key(i, Kem.MLKEM768_X25519)) for i in range(3)]
    assert make_record(nodes=mlkem).kem is Kem.MLKEM768_X25519


def test_older_records_are_refused_with_a_clear_message() -> None:
    """Records with one fleet-wide HPKE key (version 1, tag 0x50) or with the single-seed
    flow's OPAQUE server key (version 2, tag 0x56) are from an older fleet version."""
    rest = make_record().to_bytes()[1:]
    with pytest.raises(Malformed, match=r"older fleet version \(one HPKE key"):
        DeploymentRecord.from_bytes(b"\x50" + rest)
    with pytest.raises(Malformed, match=r"older fleet version \(it names the removed single-seed"):
        DeploymentRecord.from_bytes(b"\x56" + rest)


def test_a_share_index_other_than_slot_plus_one_is_refused() -> None:
    good = make_record(nodes=[node(0, "https://n0.test")]).to_bytes()
    bad = good.replace(struct.pack(">QQ", 0, 1), struct.pack(">QQ", 0, 2), 1)
    assert bad != good
    with pytest.raises(Malformed, match="share index"):
        DeploymentRecord.from_bytes(bad)


#: An X25519 point of order 8 (libsodium's list of small-order points).
ORDER_8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")

BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("empty fleet id", {"fleet_id": b""}),
    ("long fleet id", {"fleet_id": b"x" * 65}),
    ("guess limit 0", {"guess_limit": 0}),
    ("guess limit too high", {"guess_limit": 101}),
    ("minority quorum", {"quorum": 2}),
    ("quorum above n", {"quorum": 6}),
    ("no nodes", {"nodes": []}),
    ("short identity key", {"nodes": [node(0, identity=b"\x01" * 31)]}),
    # Every other node's peer channel refused to start on a small-order identity key: one
    # node could keep the whole fleet from starting.
    ("identity key of small order", {"nodes": [node(0, identity=bytes(32))]}),
    ("identity key of order 8", {"nodes": [node(0), node(1, identity=ORDER_8)]}),
    ("gap in indices", {"nodes": [node(0), node(2)]}),
    ("duplicate index", {"nodes": [node(0), node(0, "https://b.test", identity=b"\x09" * 32)]}),
    ("shared identity key", {"nodes": [node(0), node(1, identity=b"\x01" * 32)]}),
    ("shared HPKE key", {"nodes": [node(0), node(1, hpke=hpke_key(0))]}),
    ("shared signing key", {"nodes": [node(0), node(1, signing=signing_key(0))]}),
    ("shared url", {"nodes": [node(0, "https://a.test"), node(1, "https://a.test")]}),
    ("url scheme", {"nodes": [node(0, "ftp://a.test")]}),
    ("url with space", {"nodes": [node(0, "https://a.test/ x")]}),
    ("hpke unknown kem", {"nodes": [node(0, hpke=b"\x00\x99" + hpke_key(0)[2:])]}),
    ("hpke short key", {"nodes": [node(0, hpke=hpke_key(0)[:-1])]}),
    ("hpke empty", {"nodes": [node(0, hpke=b"")]}),
    # Sealing to a small-order X25519 key raised OpenSSL's bare ValueError at every
    # client request: one node listing one stopped the whole fleet's clients.
    ("hpke X25519 key of small order", {"nodes": [node(0, hpke=b"\x00\x20" + bytes(32))]}),
    (
        "hpke hybrid key's X25519 half of small order",
        {"nodes": [node(0, hpke=hpke_key(0, Kem.MLKEM768_X25519)[:-32] + bytes(32))]},
    ),
    (
        "mixed KEMs",
        {"nodes": [node(0), node(1, hpke=hpke_key(1, Kem.MLKEM768_X25519)), node(2)]},
    ),
    ("signing key short", {"nodes": [node(0, signing=signing_key(0)[:31])]}),
    # Small-order keys: OpenSSL's verify accepts them, and under the identity the
    # signature (identity, 0) verifies for every message.
    ("signing key the identity", {"nodes": [node(0, signing=b"\x01" + bytes(31))]}),
    ("relay key the identity", {"relay_public_keys": [b"\x01" + bytes(31)]}),
    ("issuer key of order 4", {"account_issuer_public_key": bytes(32)}),
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
    bad = good.replace(hpke_key(0), b"\x00\x99" + hpke_key(0)[2:], 1)  # an unknown KEM
    assert len(bad) == len(good)
    with pytest.raises(Malformed):
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
    # A relay or storage swapping in its own key for node 0 breaks the signature.
    swapped = [node(0, hpke=hpke_key(9)), *(node(i) for i in range(1, 5))]
    altered = OperatorSignedRecord(
        make_record(nodes=swapped).to_bytes(),
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
