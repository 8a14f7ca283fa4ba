"""The entry owner's key and signed statements (crypto/owner.py): exact bytes, and the
forgeries, field swaps and replays a node must refuse."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import struct

import pytest
from pysodium import sodium

from backupvault.crypto import owner
from backupvault.crypto.ed25519 import check_public_key
from backupvault.crypto.owner import OwnerStatement, StatementKind, sign_statement
from backupvault.errors import AuthenticationFailed, InvalidInput

EXPORT_KEY = bytes(range(64))
FLEET = bytes.fromhex("f1" * 32)
B_A = bytes.fromhex("e2" * 32)


def _reset(**changes: object) -> OwnerStatement:
    base = OwnerStatement(
        kind=StatementKind.RESET,
        fleet_id=FLEET,
        account="alice",
        entry="backup-root-key",
        version=3,
        counter=7,
        payload_hash=owner.payload_hash(B_A),
    )
    return dataclasses.replace(base, **changes)


def _verify(statement: OwnerStatement, signature: bytes, last: int | None = None) -> None:
    owner.verify_statement(
        owner.owner_public_key(EXPORT_KEY), statement, signature, last_counter=last
    )


def test_owner_key_is_derived_from_export_key() -> None:
    first = owner.owner_public_key(EXPORT_KEY)
    assert first == owner.owner_public_key(EXPORT_KEY)
    assert len(first) == 32
    assert first != owner.owner_public_key(bytes(64))
    for bad in (bytes(32), bytes(65), b""):
        with pytest.raises(InvalidInput):
            owner.derive_owner_key(bad)


def test_statement_bytes_are_exact() -> None:
    statement = _reset()
    expected = (
        b"backupvault/owner-statement/v1"
        + b"\x01"
        + b"\x00\x20"
        + FLEET
        + b"\x05alice"
        + b"\x0fbackup-root-key"
        + struct.pack(">Q", 3)
        + struct.pack(">Q", 7)
        + owner.payload_hash(B_A)
    )
    assert statement.to_bytes() == expected
    assert OwnerStatement.from_bytes(expected) == statement


def test_a_signed_statement_verifies_and_round_trips() -> None:
    statement = _reset()
    signature = sign_statement(EXPORT_KEY, statement)
    assert len(signature) == 64
    _verify(OwnerStatement.from_bytes(statement.to_bytes()), signature)
    _verify(statement, signature, last=6)


def test_forgeries_are_refused() -> None:
    statement = _reset()
    genuine = sign_statement(EXPORT_KEY, statement)
    other_owner = sign_statement(os.urandom(64), statement)
    flipped = bytes([genuine[0] ^ 1]) + genuine[1:]
    for signature in (other_owner, flipped, os.urandom(64), bytes(64)):
        with pytest.raises(AuthenticationFailed, match="does not verify"):
            _verify(statement, signature)
    with pytest.raises(AuthenticationFailed, match="64 bytes"):
        _verify(statement, genuine[:63])


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 7, "counter": 3},  # version and attempt swapped
        {"account": "backup-root-key", "entry": "alice"},  # account and entry swapped
        {"account": "alicebackup-root-ke", "entry": "y"},  # same bytes, other split
        {"kind": StatementKind.DELETE},  # a reset used as a delete
        {"kind": StatementKind.CHANGE_PASSWORD},
    ],
    ids=["version-attempt", "account-entry", "split", "as-delete", "as-change"],
)
def test_field_swaps_are_refused(changes: dict[str, object]) -> None:
    signature = sign_statement(EXPORT_KEY, _reset())
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        _verify(_reset(**changes), signature)


@pytest.mark.parametrize(
    "changes",
    [
        {"entry": "other-entry"},
        {"account": "bob"},
        {"version": 4},
        {"version": 2},
        {"fleet_id": bytes(32)},
        {"payload_hash": owner.payload_hash(bytes.fromhex("e3" * 32))},  # another B
    ],
    ids=["entry", "account", "next-version", "old-version", "fleet", "blinded-element"],
)
def test_replay_across_entries_versions_and_blinded_elements_is_refused(
    changes: dict[str, object],
) -> None:
    # The node rebuilds the statement from its own state, so a signature made for another
    # entry, version, fleet or B never verifies there.
    signature = sign_statement(EXPORT_KEY, _reset())
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        _verify(_reset(**changes), signature)


def test_a_used_counter_is_refused() -> None:
    statement = _reset(counter=7)
    signature = sign_statement(EXPORT_KEY, statement)
    _verify(statement, signature, last=None)
    for last in (7, 8, 100):
        with pytest.raises(AuthenticationFailed, match="already used"):
            _verify(statement, signature, last=last)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"x" + b[1:],
        lambda b: b[:30] + b"\x09" + b[31:],  # unknown kind
        lambda b: b[:30] + b"\x01\x00\x00" + b[33:],  # empty fleet id
        lambda b: b"",
    ],
    ids=["short", "long", "label", "kind", "empty-fleet", "empty"],
)
def test_malformed_statement_bytes_are_refused(mangle: object) -> None:
    encoded = _reset().to_bytes()
    assert callable(mangle)
    with pytest.raises(InvalidInput):
        OwnerStatement.from_bytes(mangle(encoded))


def test_invalid_fields_are_refused() -> None:
    for changes in (
        {"version": -1},
        {"counter": 2**64},
        {"payload_hash": bytes(31)},
        {"account": ""},
        {"entry": "x" * 256},
        {"fleet_id": b""},
    ):
        with pytest.raises(InvalidInput):
            _reset(**changes)
    with pytest.raises(InvalidInput):
        owner.verify_statement(bytes(31), _reset(), bytes(64), last_counter=None)


# Small-order points of edwards25519 (the identity, order 2, 4 and 8 points), and one
# non-canonical encoding: OpenSSL's verify accepts each as a key.
_SMALL_ORDER_KEYS = [
    bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("key", _SMALL_ORDER_KEYS, ids=lambda k: k.hex()[:8])
def test_a_small_order_owner_key_is_refused(key: bytes) -> None:
    # Under the identity as pk_auth, R = identity and S = 0 "sign" every statement: a
    # reset anyone could make. The check must refuse the key, not trust OpenSSL's verify.
    forged = bytes.fromhex("01" + "00" * 31) + bytes(32)
    with pytest.raises(InvalidInput, match="prime-order subgroup"):
        owner.verify_statement(key, _reset(), forged, last_counter=None)
    with pytest.raises(InvalidInput, match="prime-order subgroup"):
        check_public_key(key, "key")


def test_a_mixed_order_owner_key_is_refused() -> None:
    # A real key plus a point of order 8 (an encoding of a point off the main subgroup).
    real = owner.owner_public_key(EXPORT_KEY)
    mixed = ctypes.create_string_buffer(32)
    assert sodium.crypto_core_ed25519_add(mixed, real, _SMALL_ORDER_KEYS[4]) == 0
    mixed = mixed.raw
    with pytest.raises(InvalidInput, match="prime-order subgroup"):
        check_public_key(mixed, "key")
    assert check_public_key(real, "key") == real


def test_a_remembered_check_answers_only_for_the_same_key_statement_and_signature() -> None:
    # Nodes remember the checks they made (`owner._signed_by`, `owner._real_key`): one
    # that passed must not let a forgery, another statement, another key or a replay pass.
    statement = _reset(counter=11)
    genuine = sign_statement(EXPORT_KEY, statement)
    for _ in range(2):  # the second time from memory
        _verify(statement, genuine)
    assert owner._signed_by.cache_info().hits >= 1
    flipped = bytes([genuine[0] ^ 1]) + genuine[1:]
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        _verify(statement, flipped)
    for changes in ({"counter": 12}, {"entry": "other-entry"}, {"version": 4}):
        with pytest.raises(AuthenticationFailed, match="does not verify"):
            _verify(_reset(**changes), genuine)
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        owner.verify_statement(
            owner.owner_public_key(os.urandom(64)), statement, genuine, last_counter=None
        )
    with pytest.raises(AuthenticationFailed, match="already used"):
        _verify(statement, genuine, last=11)
    with pytest.raises(InvalidInput, match="prime-order subgroup"):
        owner.verify_statement(_SMALL_ORDER_KEYS[0], statement, genuine, last_counter=None)
    with pytest.raises(InvalidInput, match="expected 32 bytes"):
        owner.verify_statement(bytearray(32), statement, genuine, last_counter=None)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationFailed, match="64 bytes"):
        _verify(statement, bytearray(genuine))  # type: ignore[arg-type]
    _verify(statement, genuine)  # and the genuine one still passes
