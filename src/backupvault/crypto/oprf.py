"""OPRF (RFC 9497), suite ristretto255-SHA512, OPRF mode (0x00), on libsodium's ristretto255.

This module is the base mode, which OPAQUE (RFC 9807) needs. The VOPRF proofs of the
threshold OPRF (one per node's partial evaluation) are in `crypto/threshold.py`.

Elements and scalars travel as bytes: a group element is its 32-byte ristretto255 encoding,
a scalar its 32-byte little-endian encoding (RFC 9497 §4.1). Every element and scalar that
comes from outside is validated before use (RFC 9497 §2.1, §4.1): an element must be a
canonical encoding of a point other than the identity, a scalar must be canonical (< L)
and non-zero. Anything else raises `InvalidInput`.
"""

from __future__ import annotations

import hashlib

import pysodium

from backupvault.errors import InvalidInput

ELEMENT_LEN = 32  # Noe
SCALAR_LEN = 32  # Nok
OUTPUT_LEN = 64  # Nh, SHA-512
SEED_LEN = 32  # DeriveKeyPair takes Ns = 32 bytes of seed

MODE_OPRF = 0x00
SUITE_ID = b"ristretto255-SHA512"
# RFC 9497 §3.1: contextString = "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE_ID

# Order of the ristretto255 group (RFC 9496 §4.1).
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493

_IDENTITY = bytes(ELEMENT_LEN)
_SHA512_BLOCK = 128
# RFC 9497 §3.3.1: Finalize prefixes the input with its length in 2 bytes, so a longer
# input is an error there. Checked before Blind, so a client never sends a blinded
# element whose answer it cannot finalize (and so never spends a guess on it).
MAX_INPUT_LEN = 0xFFFF


def i2osp(value: int, length: int) -> bytes:
    """Big-endian encoding of `value` in `length` bytes (RFC 8017 §4.1)."""
    if value < 0 or value >= 1 << (8 * length):
        raise InvalidInput(f"value {value} does not fit in {length} bytes")
    return value.to_bytes(length, "big")


def expand_message_xmd_sha512(msg: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-512 (RFC 9380 §5.3.1)."""
    if len(dst) > 255:
        raise InvalidInput("domain separation tag longer than 255 bytes")
    ell = -(-length // 64)
    if ell > 255 or length > 65535:
        raise InvalidInput(f"cannot expand to {length} bytes")
    dst_prime = dst + i2osp(len(dst), 1)
    msg_prime = bytes(_SHA512_BLOCK) + msg + i2osp(length, 2) + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    b_i = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    blocks = [b_i]
    for i in range(2, ell + 1):
        b_i = hashlib.sha512(
            bytes(x ^ y for x, y in zip(b0, b_i, strict=True)) + i2osp(i, 1) + dst_prime
        ).digest()
        blocks.append(b_i)
    return b"".join(blocks)[:length]


def validate_element(element: bytes, what: str = "group element") -> bytes:
    """Return `element` if it is a canonical ristretto255 encoding of a non-identity point."""
    if not isinstance(element, bytes | bytearray) or len(element) != ELEMENT_LEN:
        raise InvalidInput(f"{what}: expected {ELEMENT_LEN} bytes")
    element = bytes(element)
    # RFC 9496 §4.3.1: a canonical encoding is a field element below p, so bit 255 is
    # clear; libsodium's check ignores that bit, so it is refused here first.
    if element[31] & 0x80:
        raise InvalidInput(f"{what}: not a canonical ristretto255 encoding (bit 255 set)")
    # libsodium rejects other non-canonical encodings and the identity (RFC 9497 §4.1: the
    # identity is never a valid input or output element).
    if element == _IDENTITY or not pysodium.crypto_core_ristretto255_is_valid_point(element):
        raise InvalidInput(f"{what}: not a valid ristretto255 point (or the identity)")
    return element


def validate_scalar(scalar: bytes, what: str = "scalar") -> bytes:
    """Return `scalar` if it is a canonical, non-zero ristretto255 scalar."""
    if not isinstance(scalar, bytes | bytearray) or len(scalar) != SCALAR_LEN:
        raise InvalidInput(f"{what}: expected {SCALAR_LEN} bytes")
    value = int.from_bytes(scalar, "little")
    if value == 0 or value >= GROUP_ORDER:
        raise InvalidInput(f"{what}: not a canonical non-zero scalar")
    return bytes(scalar)


def scalar_mult(scalar: bytes, element: bytes) -> bytes:
    """`scalar` * `element` for already validated inputs; the product of a non-zero scalar
    and a non-identity point in a prime-order group is never the identity."""
    try:
        return bytes(pysodium.crypto_scalarmult_ristretto255(scalar, element))
    except ValueError as exc:  # libsodium refuses an invalid point or an identity result
        raise InvalidInput("scalar multiplication gave the identity or had a bad point") from exc


def scalar_mult_base(scalar: bytes) -> bytes:
    """`scalar` * G for a validated scalar."""
    try:
        return bytes(pysodium.crypto_scalarmult_ristretto255_base(scalar))
    except ValueError as exc:
        raise InvalidInput("base-point multiplication gave the identity") from exc


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar (libsodium's CSPRNG)."""
    while True:
        scalar = bytes(pysodium.crypto_core_ristretto255_scalar_random())
        if any(scalar):
            return scalar


def hash_to_group(msg: bytes, dst: bytes | None = None) -> bytes:
    """HashToGroup: hash_to_ristretto255 (RFC 9380 appendix B / RFC 9496 §4.3.4)."""
    if dst is None:
        dst = b"HashToGroup-" + CONTEXT_STRING
    uniform = expand_message_xmd_sha512(msg, dst, 64)
    return bytes(pysodium.crypto_core_ristretto255_from_hash(uniform))


def hash_to_scalar(msg: bytes, dst: bytes | None = None) -> bytes:
    """HashToScalar: 64 uniform bytes reduced modulo the group order (RFC 9497 §4.1)."""
    if dst is None:
        dst = b"HashToScalar-" + CONTEXT_STRING
    uniform = expand_message_xmd_sha512(msg, dst, 64)
    return bytes(pysodium.crypto_core_ristretto255_scalar_reduce(uniform))


def derive_private_key(seed: bytes, info: bytes) -> bytes:
    """The skS half of DeriveKeyPair, for callers that never need pkS (it costs a
    base-point multiplication): the OPRF server evaluating with a per-user key."""
    if len(seed) != SEED_LEN:
        raise InvalidInput(f"DeriveKeyPair seed: expected {SEED_LEN} bytes")
    derive_input = seed + i2osp(len(info), 2) + info
    dst = b"DeriveKeyPair" + CONTEXT_STRING
    for counter in range(256):
        sk = hash_to_scalar(derive_input + i2osp(counter, 1), dst)
        if any(sk):
            return sk
    # Probability about 2^-2000; the RFC names it DeriveKeyPairError.
    raise InvalidInput("DeriveKeyPair: no non-zero scalar after 256 tries")


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair (RFC 9497 §3.2.1): a deterministic (skS, pkS) from a 32-byte seed."""
    sk = derive_private_key(seed, info)
    return sk, scalar_mult_base(sk)


def check_input(password_input: bytes) -> bytes:
    """`password_input` if Finalize can take it; the message leaves its length out, as the
    input is a password."""
    if len(password_input) > MAX_INPUT_LEN:
        raise InvalidInput(f"OPRF input: at most {MAX_INPUT_LEN} bytes")
    return password_input


def blind(password_input: bytes, blind_scalar: bytes | None = None) -> tuple[bytes, bytes]:
    """Blind (RFC 9497 §3.3.1): return (blind, blinded_element).

    `blind_scalar` is for test vectors; by default a fresh random scalar is used.
    """
    check_input(password_input)
    r = random_scalar() if blind_scalar is None else validate_scalar(blind_scalar, "blind")
    input_element = hash_to_group(password_input)
    if input_element == _IDENTITY:  # InvalidInputError in the RFC; negligible probability
        raise InvalidInput("OPRF input hashes to the identity element")
    return r, scalar_mult(r, input_element)


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """BlindEvaluate (RFC 9497 §3.3.1): skS * blindedElement, both validated."""
    validate_scalar(sk, "OPRF private key")
    validate_element(blinded_element, "blinded element")
    return scalar_mult(sk, blinded_element)


def finalize(password_input: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """Finalize (RFC 9497 §3.3.1): unblind and hash to the 64-byte OPRF output."""
    check_input(password_input)
    validate_scalar(blind_scalar, "blind")
    validate_element(evaluated_element, "evaluated element")
    inverse = bytes(pysodium.crypto_core_ristretto255_scalar_invert(blind_scalar))
    unblinded = scalar_mult(inverse, evaluated_element)
    hash_input = (
        i2osp(len(password_input), 2)
        + password_input
        + i2osp(len(unblinded), 2)
        + unblinded
        + b"Finalize"
    )
    return hashlib.sha512(hash_input).digest()


def evaluate(sk: bytes, password_input: bytes) -> bytes:
    """Evaluate (RFC 9497 §3.3.1): the unblinded PRF output, computed with the key directly."""
    check_input(password_input)
    validate_scalar(sk, "OPRF private key")
    input_element = hash_to_group(password_input)
    if input_element == _IDENTITY:
        raise InvalidInput("OPRF input hashes to the identity element")
    issued = scalar_mult(sk, input_element)
    hash_input = i2osp(len(password_input), 2) + password_input + i2osp(len(issued), 2) + issued
    return hashlib.sha512(hash_input + b"Finalize").digest()
