"""The check every Ed25519 public key from outside passes before it verifies anything."""

from __future__ import annotations

import ctypes

from pysodium import sodium

from backupvault.errors import InvalidInput

PUBLIC_KEY_LEN = 32


def check_public_key(public_key: bytes, what: str) -> bytes:
    """`public_key` if it is a canonical Ed25519 point of the prime-order subgroup.

    OpenSSL's verify takes any 32 bytes as a key. Under a small-order key (the identity,
    say) anyone can make signatures that verify for a share of all messages (for every
    message, under the identity), so a key that guards anything must be a real one.
    libsodium's check refuses small-order, mixed-order and non-canonical encodings."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_LEN:
        raise InvalidInput(f"{what}: expected {PUBLIC_KEY_LEN} bytes")
    if sodium.crypto_core_ed25519_is_valid_point(ctypes.c_char_p(public_key)) != 1:
        raise InvalidInput(f"{what}: not an Ed25519 public key of the prime-order subgroup")
    return public_key
