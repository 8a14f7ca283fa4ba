"""OPRF (RFC 9497, ristretto255-SHA512, mode 0x00): the RFC vectors and input validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pysodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import oprf
from backupvault.errors import InvalidInput

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc9497_ristretto255_sha512_oprf.json").read_text()
)
KEY = VECTORS["key"]
SK = bytes.fromhex(KEY["sk"])

# Encodings libsodium must refuse: a non-canonical field element (p = 2^255 - 19 itself)
# and one with the "negative" low bit set (RFC 9496 §4.3.1 requires it clear).
NON_CANONICAL = (2**255 - 19).to_bytes(32, "little")
NEGATIVE = (1).to_bytes(32, "little")
IDENTITY = bytes(32)
BAD_ELEMENTS = [IDENTITY, NON_CANONICAL, NEGATIVE, b"\xff" * 32, bytes(31), bytes(33), b""]
BAD_SCALARS = [
    bytes(32),
    oprf.GROUP_ORDER.to_bytes(32, "little"),
    (oprf.GROUP_ORDER + 1).to_bytes(32, "little"),
    b"\xff" * 32,
    bytes(31),
    b"",
]


def test_derive_key_pair_matches_rfc() -> None:
    sk, pk = oprf.derive_key_pair(bytes.fromhex(KEY["seed"]), bytes.fromhex(KEY["key_info"]))
    assert sk.hex() == KEY["sk"]
    assert pk == pysodium.crypto_scalarmult_ristretto255_base(sk)


def test_context_string_is_rfc_suite() -> None:
    assert oprf.CONTEXT_STRING == b"OPRFV1-\x00-ristretto255-SHA512"


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_rfc9497_oprf_vector(vector: dict[str, str]) -> None:
    data = bytes.fromhex(vector["input"])
    blind, blinded = oprf.blind(data, bytes.fromhex(vector["blind"]))
    assert blind.hex() == vector["blind"]
    assert blinded.hex() == vector["blinded_element"]
    evaluated = oprf.blind_evaluate(SK, blinded)
    assert evaluated.hex() == vector["evaluation_element"]
    assert oprf.finalize(data, blind, evaluated).hex() == vector["output"]
    # The unblinded evaluation with the key gives the same PRF output.
    assert oprf.evaluate(SK, data).hex() == vector["output"]


def test_there_are_two_vectors() -> None:
    # RFC 9497 A.1.1 has exactly two OPRF-mode vectors; guard against a truncated file.
    assert len(VECTORS["vectors"]) == 2


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=100))
def test_random_blind_round_trip(data: bytes) -> None:
    blind, blinded = oprf.blind(data)
    assert oprf.finalize(data, blind, oprf.blind_evaluate(SK, blinded)) == oprf.evaluate(SK, data)


def test_fresh_blinds_differ() -> None:
    _, first = oprf.blind(b"password")
    _, second = oprf.blind(b"password")
    assert first != second


@pytest.mark.parametrize("element", BAD_ELEMENTS, ids=lambda e: e.hex()[:16] or "empty")
def test_bad_elements_rejected(element: bytes) -> None:
    with pytest.raises(InvalidInput):
        oprf.validate_element(element)
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(SK, element)
    with pytest.raises(InvalidInput):
        oprf.finalize(b"x", bytes.fromhex(VECTORS["vectors"][0]["blind"]), element)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_a_set_bit_255_is_refused_although_libsodium_accepts_it(seed: bytes) -> None:
    """RFC 9496 §4.3.1: the top bit of a canonical encoding is 0. libsodium's validity
    check ignores it, so without our check the same point would have two encodings."""
    element = oprf.hash_to_group(seed)
    flipped = element[:31] + bytes([element[31] | 0x80])
    assert pysodium.crypto_core_ristretto255_is_valid_point(flipped)  # libsodium says yes
    with pytest.raises(InvalidInput, match="bit 255"):
        oprf.validate_element(flipped)
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(SK, flipped)
    assert oprf.validate_element(element) == element


@pytest.mark.parametrize("scalar", BAD_SCALARS, ids=lambda s: s.hex()[:16] or "empty")
def test_bad_scalars_rejected(scalar: bytes) -> None:
    good_element = bytes.fromhex(VECTORS["vectors"][0]["blinded_element"])
    with pytest.raises(InvalidInput):
        oprf.validate_scalar(scalar)
    with pytest.raises(InvalidInput):
        oprf.blind(b"x", scalar)
    with pytest.raises(InvalidInput):
        oprf.blind_evaluate(scalar, good_element)
    with pytest.raises(InvalidInput):
        oprf.finalize(b"x", scalar, good_element)


def test_derive_key_pair_needs_32_byte_seed() -> None:
    with pytest.raises(InvalidInput):
        oprf.derive_key_pair(bytes(31), b"")


def test_hash_to_group_is_valid_and_domain_separated() -> None:
    element = oprf.hash_to_group(b"abc")
    assert oprf.validate_element(element) == element
    assert oprf.hash_to_group(b"abc", b"another DST") != element


def test_expand_message_xmd_lengths() -> None:
    long = oprf.expand_message_xmd_sha512(b"msg", b"DST", 200)
    assert len(long) == 200
    # Output blocks chain on b0, so a longer output does not start with a shorter one's
    # prefix unless the length is the same: the length is an input (RFC 9380 §5.3.1).
    assert oprf.expand_message_xmd_sha512(b"msg", b"DST", 64) != long[:64]
    with pytest.raises(InvalidInput):
        oprf.expand_message_xmd_sha512(b"msg", b"D" * 256, 64)
    with pytest.raises(InvalidInput):
        oprf.expand_message_xmd_sha512(b"msg", b"DST", 64 * 256)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=40))
def test_validate_element_fuzz_only_invalid_input(data: bytes) -> None:
    try:
        validated = oprf.validate_element(data)
    except InvalidInput:
        return
    assert validated == data
    assert len(data) == 32


def test_an_input_finalize_cannot_take_is_refused_before_blind() -> None:
    """Finalize prefixes the input with its length in 2 bytes: a longer password would be
    blinded, sent and counted as a guess, and only then fail. The message leaves the
    length out (the input is a password)."""
    longest = b"x" * oprf.MAX_INPUT_LEN
    blind, blinded = oprf.blind(longest)
    sk = oprf.random_scalar()
    assert oprf.finalize(longest, blind, oprf.blind_evaluate(sk, blinded)) == oprf.evaluate(
        sk, longest
    )
    too_long = longest + b"x"
    for refuse in (
        lambda: oprf.blind(too_long),
        lambda: oprf.evaluate(sk, too_long),
        lambda: oprf.finalize(too_long, blind, blinded),
    ):
        with pytest.raises(InvalidInput) as raised:
            refuse()
        assert str(len(too_long)) not in str(raised.value)
