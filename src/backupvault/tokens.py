"""Account tokens: EdDSA (Ed25519) JWTs signed by the account issuer.

The operator (or the app that owns the accounts) holds the issuer's private key and mints
short-lived tokens per account. Each account holds two, with different audiences:

- the relay token (audience: the relay's), sent in the Authorization header; the relay
  forwards a request for that account and no other;
- the fleet token (audience: `fleet_audience(fleet_id)`), carried only inside the sealed
  request, so the relay never sees it; the vault firmware checks it, so a relay alone
  cannot act for an account (docs/relay.md, "What a compromised relay can do").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.files import write_new_file
from backupvault.protocol import is_valid_name

ALGORITHM = "EdDSA"
#: Longer Authorization values are refused before any parsing.
MAX_TOKEN_CHARS = 4096


# --- operator key pair ---------------------------------------------------------------


def generate_operator_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for signing account tokens."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of the private key, encrypted under `passphrase` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half (what the relay is configured with)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def save_operator_key(
    key: Ed25519PrivateKey,
    private_path: str | Path,
    public_path: str | Path,
    *,
    passphrase: bytes | None = None,
) -> None:
    """Write the private key (mode 0600) and the public key (0644) as PEM; never overwrites."""
    write_new_file(private_path, private_key_pem(key, passphrase), 0o600)
    write_new_file(public_path, public_key_pem(key), 0o644)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidInput(f"cannot read the {what} {path}: {err.strerror}") from None


def load_operator_private_key(
    source: str | Path | bytes, *, passphrase: bytes | None = None
) -> Ed25519PrivateKey:
    """The operator's signing key from a PEM file (a path) or PEM bytes."""
    pem = source if isinstance(source, bytes) else _read(source, "operator private key")
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise InvalidInput(
            "the operator private key is encrypted"
            if passphrase is None
            else "the operator private key is not encrypted; give no passphrase"
        ) from None
    except ValueError:
        raise InvalidInput("not a readable PEM private key (or a wrong passphrase)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput("the operator private key must be an Ed25519 key")
    return key


def load_operator_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    """The operator's verification key from a PEM file (a path) or PEM bytes."""
    pem = source if isinstance(source, bytes) else _read(source, "operator public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise InvalidInput("not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("the operator public key must be an Ed25519 key")
    return key


# --- tokens ----------------------------------------------------------------------------


def fleet_audience(fleet_id: bytes) -> str:
    """The audience of fleet tokens: names one fleet, so a token for one fleet is refused by
    every other."""
    return "backupvault-fleet:" + fleet_id.hex()


def mint_token(
    private_key: Ed25519PrivateKey,
    account: str,
    *,
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: float | None = None,
) -> str:
    """A signed token that lets `account` use the vault through the relay for `ttl_seconds`."""
    if not is_valid_name(account):
        raise InvalidInput("account must be 1-64 characters of letters, digits, '.', '_' or '-'")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise InvalidInput("ttl_seconds must be a positive whole number of seconds")
    if not issuer or not audience:
        raise InvalidInput("issuer and audience must not be empty")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": account,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


class TokenRejected(AuthenticationFailed):
    """A bearer token was missing or did not verify; `code` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("invalid_token", f"the token's '{name}' claim is not a number")
    return float(value)


@dataclass(frozen=True)
class TokenVerifier:
    """Checks signature (EdDSA only), issuer, audience, exp/nbf/iat and `sub`."""

    public_key: Ed25519PublicKey
    issuer: str
    audience: str
    leeway_seconds: float = 30.0
    clock: Callable[[], float] = time.time

    def verify(self, token: str, now: float | None = None) -> str:
        """The account the token was issued to; raises TokenRejected otherwise. `now`
        replaces the clock (the firmware is given the time rather than reading it)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected("invalid_token", "the bearer token is empty or too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    # Time claims are checked below against the injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRejected("invalid_token", "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("invalid_token", "the token is from an unknown issuer") from None
        except jwt.MissingRequiredClaimError as err:
            raise TokenRejected("invalid_token", f"the token has no '{err.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("invalid_token", "the token's signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected("invalid_token", "tokens must be signed with EdDSA") from None
        except jwt.PyJWTError:
            raise TokenRejected("invalid_token", "the bearer token is malformed") from None
        if now is None:
            now = self.clock()
        exp = _number(claims, "exp")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        if exp is None or now >= exp + self.leeway_seconds:
            raise TokenRejected("token_expired", "the token has expired; get a new one")
        if nbf is not None and now < nbf - self.leeway_seconds:
            raise TokenRejected("invalid_token", "the token is not valid yet")
        if iat is not None and iat > now + self.leeway_seconds:
            raise TokenRejected("invalid_token", "the token was issued in the future")
        account = claims.get("sub")
        if not is_valid_name(account):
            raise TokenRejected(
                "invalid_token",
                "the token's subject is not an account name (1-64 of [A-Za-z0-9._-])",
            )
        return account
