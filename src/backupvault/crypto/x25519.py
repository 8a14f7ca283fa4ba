"""The check every X25519 public key from outside passes before anything is sealed to it."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from backupvault.errors import InvalidInput

PUBLIC_KEY_LEN = 32

#: A fixed private key for the order check. Its clamped scalar is a multiple of 8 and
#: below 8 times the order of either the curve's or the twist's large subgroup, so its
#: product with a point is zero exactly when the point has small order.
_ORDER_CHECK_KEY = X25519PrivateKey.from_private_bytes(bytes(PUBLIC_KEY_LEN))


def check_public_key(public_key: bytes, what: str) -> X25519PublicKey:
    """`public_key` as a key, if it is 32 bytes and no small-order point.

    OpenSSL takes any 32 bytes as an X25519 public key, but refuses the all-zero shared
    secret a small-order point gives, with a bare ValueError at the first use: sealing a
    request to a node that lists such a key raised out of every client request."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_LEN:
        raise InvalidInput(f"{what}: expected {PUBLIC_KEY_LEN} bytes")
    key = X25519PublicKey.from_public_bytes(public_key)
    try:
        _ORDER_CHECK_KEY.exchange(key)
    except ValueError:
        raise InvalidInput(f"{what}: a small-order X25519 point, not a usable key") from None
    return key
