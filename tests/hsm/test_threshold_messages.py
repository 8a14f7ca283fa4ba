"""The threshold flow's messages (protocol.py, docs/protocol.md "Threshold messages"):
round trips, every length and point checked at decode, and every answer fits its padding."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

from backupvault.codec import Message
from backupvault.crypto import ksf, oprf, threshold
from backupvault.crypto.manifest import register
from backupvault.crypto.seal import SEALED_SHARE_LEN, Kem
from backupvault.errors import InvalidInput
from backupvault.protocol import (
    MAX_ERROR_DETAIL,
    MAX_MANIFEST_LEN,
    REQUEST_TYPES,
    RESPONSE_PADDED_SIZE,
    RESPONSE_TYPES,
    AckKind,
    AuthorizedRequest,
    CommitSharesRequest,
    CountReport,
    CountReportRequest,
    DeleteShareRequest,
    DeliverShareRequest,
    EntryStatus,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ResetResponse,
    SealedCopies,
    ShareAck,
    count_report_message,
    decode_response,
    pad_response,
    share_ack_message,
)

FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)
IDENTITY = bytes(32)
BIT_255 = bytes(31) + b"\x80"
NOT_A_POINT = b"\xff" * 31 + b"\x7f"  # bit 255 clear, but not a canonical field element


@pytest.fixture(scope="module")
def registration():  # type: ignore[no-untyped-def]
    return register(
        b"correct horse",
        bytes(32),
        fleet_id=b"f" * 32,
        account="alice",
        entry="chat-history-01",
        epoch=1,
        nodes=5,
        threshold_count=3,
        ksf=FAST_KSF,
    )


def _examples(registration) -> list[Message]:  # type: ignore[no-untyped-def]
    manifest = registration.manifest.to_bytes()
    share = registration.shares[0]
    blinded = oprf.hash_to_group(b"password")
    partial = threshold.evaluate_partial(share, blinded)
    return [
        RegisterShareRequest("alice", "chat-history-01", manifest, share.to_bytes(), b"", 0),
        RegisterShareRequest("alice", "chat", manifest, share.to_bytes(), b"s" * 64, 7),
        ShareAck(AckKind.HELD, 1, 1, b"a" * 64),
        ShareAck(AckKind.ERASED, 2, 5, b"a" * 64),
        ManifestRequest("alice", "chat"),
        ManifestRequest("alice", "chat", confirm=True),
        ManifestResponse(EntryStatus.LIVE, 1, manifest, 10, 9, True),
        ManifestResponse(EntryStatus.EMPTY, 3, b"", 10, 10, False),
        EvaluateRequest("alice", "chat", 1, blinded, 1_700_000_000_000),
        EvaluateResponse(4, partial.index, partial.evaluated, partial.proof, 9),
        ResetRequest("alice", "chat", 1, 4, b"r" * 64),
        ResetResponse(1, 4, 10),
        DeleteShareRequest("alice", "chat", 1, 1, b"d" * 64),
    ]


def test_every_threshold_message_round_trips(registration) -> None:  # type: ignore[no-untyped-def]
    for message in _examples(registration):
        assert type(message).from_bytes(message.to_bytes()) == message


def test_every_threshold_operation_has_a_request_and_a_response_type() -> None:
    for op in (Op.REGISTER_SHARE, Op.CHANGE_SHARE, Op.MANIFEST, Op.EVALUATE, Op.RESET):
        assert op in REQUEST_TYPES and op in RESPONSE_TYPES
    assert RESPONSE_TYPES[Op.DELETE_SHARE] is ShareAck


def test_every_answer_and_the_longest_error_fit_their_padding(registration) -> None:  # type: ignore[no-untyped-def]
    longest_error = ErrorResponse("stale_manifest", "x" * MAX_ERROR_DETAIL, 10)
    # The largest manifest a node stores fits a manifest answer.
    largest = ManifestResponse(EntryStatus.EMPTY, 2**64 - 1, b"", 100, 100, False)
    assert len(largest.to_bytes()) + MAX_MANIFEST_LEN + 1 <= RESPONSE_PADDED_SIZE[Op.MANIFEST]
    answers = [m for m in _examples(registration) if type(m) in RESPONSE_TYPES.values()]
    assert len(answers) == 6
    for op, kind in RESPONSE_TYPES.items():
        for answer in [m for m in answers if isinstance(m, kind)] + [longest_error]:
            assert decode_response(op, pad_response(op, answer.to_bytes())) == answer


def _reencode(message: Message, **changes: object) -> bytes:
    """The message's encoding with fields replaced, bypassing the constructor's checks
    (as a hostile sender would)."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}  # type: ignore[arg-type]
    fields.update(changes)
    fake = object.__new__(type(message))
    for name, value in fields.items():
        object.__setattr__(fake, name, value)
    return fake.to_bytes()


@pytest.mark.parametrize("bad", [IDENTITY, BIT_255, NOT_A_POINT, b"\x01" * 31, b"\x01" * 33])
def test_a_blinded_element_that_is_not_a_canonical_point_is_refused(bad: bytes) -> None:
    good = EvaluateRequest("alice", "chat", 1, oprf.hash_to_group(b"x"), 1)
    with pytest.raises(InvalidInput):
        EvaluateRequest.from_bytes(_reencode(good, blinded=bad))


@pytest.mark.parametrize("bad", [IDENTITY, BIT_255, NOT_A_POINT, b"\x02" * 33])
def test_a_partial_that_is_not_a_canonical_point_is_refused(registration, bad: bytes) -> None:  # type: ignore[no-untyped-def]
    blinded = oprf.hash_to_group(b"x")
    partial = threshold.evaluate_partial(registration.shares[1], blinded)
    good = EvaluateResponse(1, partial.index, partial.evaluated, partial.proof, 9)
    with pytest.raises(InvalidInput):
        EvaluateResponse.from_bytes(_reencode(good, evaluated=bad))


def test_partial_proof_index_and_scalar_checks(registration) -> None:  # type: ignore[no-untyped-def]
    blinded = oprf.hash_to_group(b"x")
    partial = threshold.evaluate_partial(registration.shares[1], blinded)
    good = EvaluateResponse(1, partial.index, partial.evaluated, partial.proof, 9)
    non_canonical = b"\xff" * 32 + partial.proof[32:]  # c >= q
    for changes in (
        {"proof": partial.proof[:63]},
        {"proof": non_canonical},
        {"index": 0},
        {"index": 256},
    ):
        with pytest.raises(InvalidInput):
            EvaluateResponse.from_bytes(_reencode(good, **changes))


def test_register_share_checks_share_manifest_and_signature(registration) -> None:  # type: ignore[no-untyped-def]
    manifest = registration.manifest.to_bytes()
    share = registration.shares[0].to_bytes()
    good = RegisterShareRequest("alice", "chat", manifest, share, b"", 0)
    zero_share = bytes([1]) + bytes(32)
    large_scalar = bytes([1]) + b"\xff" * 32
    for changes in (
        {"share": share[:32]},
        {"share": zero_share},
        {"share": large_scalar},
        {"share": bytes([0]) + share[1:]},
        {"manifest": manifest[:-1]},
        {"manifest": manifest + b"\x00"},
        {"manifest": b"BVM1" + bytes(MAX_MANIFEST_LEN)},
        {"authorization": b"s" * 63},
        {"account": "al ice"},
        {"entry": ""},
    ):
        with pytest.raises(InvalidInput):
            RegisterShareRequest.from_bytes(_reencode(good, **changes))


def test_a_share_request_keeps_the_share_out_of_its_repr(registration) -> None:  # type: ignore[no-untyped-def]
    share = registration.shares[0].to_bytes()
    request = RegisterShareRequest("alice", "chat", registration.manifest.to_bytes(), share, b"", 0)
    shown = repr(request)
    assert share.hex() not in shown and repr(share) not in shown and repr(share[1:]) not in shown
    assert "alice" in shown


def test_a_share_delivery_keeps_the_sealed_share_out_of_its_repr(registration) -> None:  # type: ignore[no-untyped-def]
    # Sealed to one node: a log that kept it would open for a later thief of that key.
    sealed = (hashlib.sha512(b"a sealed share").digest() * 2)[: SEALED_SHARE_LEN[Kem.X25519]]
    request = DeliverShareRequest("alice", "chat", registration.manifest.to_bytes(), sealed)
    shown = repr(request)
    assert sealed.hex()[:16] not in shown and repr(sealed)[2:18] not in shown
    assert "alice" in shown


def test_a_manifest_with_an_identity_commitment_is_refused(registration) -> None:  # type: ignore[no-untyped-def]
    manifest = registration.manifest.to_bytes()
    c0 = registration.manifest.commitments.public_key
    at = manifest.index(c0)
    forged = manifest[:at] + IDENTITY + manifest[at + 32 :]
    with pytest.raises(InvalidInput):
        ManifestResponse(EntryStatus.LIVE, 1, forged, 10, 10, True)


def test_short_signatures_and_unknown_kinds_are_refused() -> None:
    for message, changes in (
        (ShareAck(AckKind.HELD, 1, 1, b"a" * 64), {"signature": b"a" * 65}),
        (ShareAck(AckKind.HELD, 1, 1, b"a" * 64), {"kind": 4}),
        (ShareAck(AckKind.HELD, 1, 1, b"a" * 64), {"index": 0}),
        (ResetRequest("a", "b", 1, 1, b"r" * 64), {"signature": b""}),
        (DeleteShareRequest("a", "b", 1, 1, b"d" * 64), {"signature": b"d" * 32}),
        (ManifestResponse(EntryStatus.EMPTY, 1, b"", 10, 10, False), {"status": 7}),
        (ManifestResponse(EntryStatus.EMPTY, 1, b"", 10, 10, False), {"status": EntryStatus.LIVE}),
        (ManifestResponse(EntryStatus.EMPTY, 1, b"", 10, 10, False), {"holds_share": True}),
    ):
        with pytest.raises(InvalidInput):
            type(message).from_bytes(_reencode(message, **changes))


def test_share_ack_bytes_are_exactly_as_documented(registration) -> None:  # type: ignore[no-untyped-def]
    manifest = registration.manifest.to_bytes()
    key = registration.shares[2].public_key()
    signed = share_ack_message(AckKind.HELD, b"F" * 3, "alice", "chat", 1, key, manifest)
    assert signed == (
        b"backupvault/v1 share-ack"
        + b"\x01"
        + b"\x00\x03FFF"
        + b"\x05alice"
        + b"\x04chat"
        + struct.pack(">Q", 1)
        + key
        + hashlib.sha256(manifest).digest()
    )
    erased = share_ack_message(AckKind.ERASED, b"F" * 3, "alice", "chat", 1, key, manifest)
    assert erased != signed and erased[24] == 2
    with pytest.raises(InvalidInput):
        share_ack_message(AckKind.HELD, b"F", "alice", "chat", 1, IDENTITY, manifest)


# ---- docs/protocol.md, "Encoding" and the message tables, byte by byte ------------------


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _blob(value: bytes) -> bytes:
    """A byte string or text field: u32 big-endian length, then the bytes."""
    return struct.pack(">I", len(value)) + value


def _text(value: str) -> bytes:
    return _blob(value.encode())


def test_every_message_is_the_bytes_the_protocol_page_names(registration) -> None:  # type: ignore[no-untyped-def]
    manifest = registration.manifest.to_bytes()
    share = registration.shares[0].to_bytes()
    blinded = oprf.hash_to_group(b"password")
    partial = threshold.evaluate_partial(registration.shares[0], blinded)
    acks = bytes([1, 3]) + b"a" * 64 + bytes([2, 1]) + b"b" * 64 + bytes([4, 3]) + b"c" * 64
    sealed_share = b"s" * SEALED_SHARE_LEN[Kem.X25519]
    names = _text("alice") + _text("chat")
    documented: list[tuple[Message, bytes]] = [
        (ErrorResponse("refused", "no", 3), b"\x0d" + _text("refused") + _text("no") + _u64(3)),
        (
            AuthorizedRequest("jwt", b"req", b"p" * 88),
            b"\x0e" + _text("jwt") + _blob(b"req") + _blob(b"p" * 88),
        ),
        (
            SealedCopies([b"one", b"two"]),
            b"\x0f" + struct.pack(">I", 2) + _blob(b"one") + _blob(b"two"),
        ),
        (
            RegisterShareRequest("alice", "chat", manifest, share, b"s" * 64, 7),
            b"\x11" + names + _blob(manifest) + _blob(share) + _blob(b"s" * 64) + _u64(7),
        ),
        (
            ShareAck(AckKind.STAGED, 5, 2, b"a" * 64),
            b"\x12" + _u64(3) + _u64(5) + _u64(2) + _blob(b"a" * 64),
        ),
        (ManifestRequest("alice", "chat"), b"\x13" + names + b"\x00"),
        (ManifestRequest("alice", "chat", confirm=True), b"\x13" + names + b"\x01"),
        (
            ManifestResponse(EntryStatus.LIVE, 4, manifest, 10, 9, True),
            b"\x14" + _u64(1) + _u64(4) + _blob(manifest) + _u64(10) + _u64(9) + b"\x01",
        ),
        (
            EvaluateRequest("alice", "chat", 4, blinded, 1_700_000_000_000),
            b"\x15" + names + _u64(4) + _blob(blinded) + _u64(1_700_000_000_000),
        ),
        (
            EvaluateResponse(6, partial.index, partial.evaluated, partial.proof, 8),
            b"\x16"
            + _u64(6)
            + _u64(partial.index)
            + _blob(partial.evaluated)
            + _blob(partial.proof)
            + _u64(8),
        ),
        (
            ResetRequest("alice", "chat", 4, 6, b"r" * 64),
            b"\x17" + names + _u64(4) + _u64(6) + _blob(b"r" * 64),
        ),
        (ResetResponse(4, 6, 10), b"\x18" + _u64(4) + _u64(6) + _u64(10)),
        (
            DeleteShareRequest("alice", "chat", 4, 2, b"d" * 64),
            b"\x19" + names + _u64(4) + _u64(2) + _blob(b"d" * 64),
        ),
        (
            CommitSharesRequest("alice", "chat", manifest, b"", 0, acks),
            b"\x1a" + names + _blob(manifest) + _blob(b"") + _u64(0) + _blob(acks),
        ),
        (
            DeliverShareRequest("alice", "chat", manifest, sealed_share),
            b"\x1b" + names + _blob(manifest) + _blob(sealed_share),
        ),
        (
            CountReportRequest("alice", "chat", 4, b"n" * 32),
            b"\x4e" + names + _u64(4) + _blob(b"n" * 32),
        ),
        (
            CountReport("alice", "chat", 4, 2, 3, 9, 7, b"n" * 32, b"g" * 64),
            b"\x4f"
            + names
            + _u64(4)
            + _u64(2)
            + _u64(3)
            + _u64(9)
            + _u64(7)
            + _blob(b"n" * 32)
            + _blob(b"g" * 64),
        ),
    ]
    for message, wire in documented:
        assert message.to_bytes() == wire, type(message).__name__
        assert type(message).from_bytes(wire) == message
        with pytest.raises(InvalidInput):
            type(message).from_bytes(wire + b"\x00")  # trailing bytes
        with pytest.raises(InvalidInput):
            type(message).from_bytes(wire[:-1])  # truncation


@pytest.mark.parametrize("status", [EntryStatus.EMPTY, EntryStatus.DESTROYED])
def test_a_manifest_on_an_answer_that_is_not_live_is_refused(registration, status: int) -> None:  # type: ignore[no-untyped-def]
    """protocol.md: the manifest is "empty unless live". A node (or a relay replaying an
    old answer) that says "destroyed" or "empty" and hands a manifest with it says two
    things at once; the client counted the manifest towards agreement and the status
    towards "destroyed"/"not registered"."""
    wire = (
        b"\x14"
        + _u64(status)
        + _u64(4)
        + _blob(registration.manifest.to_bytes())
        + _u64(10)
        + _u64(10)
        + b"\x00"
    )
    with pytest.raises(InvalidInput, match="only a live entry"):
        ManifestResponse.from_bytes(wire)


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "ali ce", "al/ice", "alïce", "alice\x00", "ålice", "chat:1"]
)
def test_a_name_outside_the_documented_alphabet_is_refused_at_decode(name: str) -> None:
    """protocol.md, "Encoding": account and entry are 1-64 characters of `A-Z a-z 0-9 . _ -`."""
    assert (
        ManifestRequest.from_bytes(b"\x13" + _text("a" * 64) + _text("A.b_c-9") + b"\x00").entry
        == "A.b_c-9"
    )
    with pytest.raises(InvalidInput, match="1-64 characters"):
        ManifestRequest.from_bytes(b"\x13" + _text("alice") + _text(name) + b"\x00")
    with pytest.raises(InvalidInput, match="1-64 characters"):
        ManifestRequest.from_bytes(b"\x13" + _text(name) + _text("chat") + b"\x00")


def test_a_client_time_past_2_63_is_refused(registration) -> None:  # type: ignore[no-untyped-def]
    """protocol.md: client_time_ms is a u64 below 2^63."""
    blinded = oprf.hash_to_group(b"password")
    head = b"\x15" + _text("alice") + _text("chat") + _u64(1) + _blob(blinded)
    assert EvaluateRequest.from_bytes(head + _u64(2**63 - 1)).client_time_ms == 2**63 - 1
    with pytest.raises(InvalidInput, match="client time"):
        EvaluateRequest.from_bytes(head + _u64(2**63))


def test_count_report_signed_bytes_are_exactly_as_documented() -> None:
    """protocol.md, "Count reports": what the reporting node signs."""
    report = CountReport("alice", "chat", 4, 2, 3, 9, 7, b"n" * 32, b"g" * 64)
    assert count_report_message(b"FFF", report) == (
        b"backupvault/v1 count-report"
        + b"\x00\x03FFF"
        + b"\x02\x03"
        + b"\x05alice"
        + b"\x04chat"
        + _u64(4)
        + _u64(9)
        + _u64(7)
        + b"n" * 32
    )
