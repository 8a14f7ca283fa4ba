"""Account tokens: EdDSA (Ed25519) JWTs signed by the account issuer.

The operator (or the app that owns the accounts) holds the issuer's private key and mints
short-lived tokens per account. Each account holds two, with different audiences:

- the relay token (audience: the relay's), sent in the Authorization header; the relay
  forwards a request for that account and no other;
- the fleet token (audience: `fleet_audience(fleet_id)`), carried only inside the sealed
  request, so the relay never sees it; the vault firmware checks it, so a relay alone
  cannot act for an account (docs/relay.md, "What a compromised relay can do").

A fleet token is bound to the device that asked for it (proof of possession, in the style
of DPoP, RFC 9449): its `cnf` claim (RFC 7800) holds the device's Ed25519 public key, and
every sealed copy carries a request proof, signed by the device for that copy alone: over
the fleet, the node's index, H(the node's public key), H(token), H(request), a random
`jti` and the time. A node that opens its copy therefore holds nothing it can replay to
another node, of its own epoch or another (docs/relay.md,
"Fleet tokens bound to the request"). Nodes refuse a fleet token without `cnf`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import math
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.crypto.ed25519 import check_public_key
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.files import write_new_file
from backupvault.protocol import is_valid_name

ALGORITHM = "EdDSA"
#: Longer Authorization values are refused before any parsing.
MAX_TOKEN_CHARS = 4096
VERIFIED_TOKENS = 4096  # verified tokens remembered per verifier (`TokenVerifier._verified`)


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
        what = "this" if isinstance(source, bytes) else str(source)
        raise InvalidInput(
            f"{what} is not a readable PEM private key (or a wrong passphrase)",
            hint="give the private key file: operator.key from `relay keygen`, deploy.key from"
            " `fleet keygen` (not the .pub beside it)",
        ) from None
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
    device_key: Ed25519PublicKey | None = None,
) -> str:
    """A signed token that lets `account` use the vault through the relay for `ttl_seconds`.
    `device_key`: bind the token to that device (the `cnf` claim); fleet tokens need it."""
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
    if device_key is not None:
        claims["cnf"] = {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw(device_key))}}
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class TokenRejected(AuthenticationFailed):
    """A bearer token was missing or did not verify; `code` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Claim times beyond this (about 3 × 10^11 years in seconds) are refused as malformed.
MAX_CLAIM_TIME = 1 << 63


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("invalid_token", f"the token's '{name}' claim is not a number")
    # JSON allows integers of any length and the parser takes NaN and Infinity: an `exp` of
    # NaN never expires, and a 400-digit one does not fit a float.
    if isinstance(value, int) and not -MAX_CLAIM_TIME <= value <= MAX_CLAIM_TIME:
        raise TokenRejected("invalid_token", f"the token's '{name}' claim is out of range")
    if not math.isfinite(value):
        raise TokenRejected("invalid_token", f"the token's '{name}' claim is not a finite number")
    return float(value)


@dataclass(frozen=True)
class TokenVerifier:
    """Checks signature (EdDSA only), issuer, audience, exp/nbf/iat and `sub`."""

    public_key: Ed25519PublicKey
    issuer: str
    audience: str
    leeway_seconds: float = 30.0
    clock: Callable[[], float] = time.time
    #: Account -> a time (Unix seconds): the account's tokens issued before it are refused
    #: (a leaked token, whose holder could spend the account's request budget).
    revoked_before: Mapping[str, float] = field(default_factory=dict)
    #: Claims of the latest tokens whose signature verified, by token: a device sends the
    #: same token with every request, and each node and the relay checked its signature
    #: every time. Times are still checked at every use. Used from one thread (the
    #: service's event loop).
    _verified: OrderedDict[str, dict[str, Any]] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )

    def verify(self, token: str, now: float | None = None) -> str:
        """The account the token was issued to; raises TokenRejected otherwise. `now`
        replaces the clock (the firmware is given the time rather than reading it)."""
        account, _claims = self._check(token, now)
        return account

    def verify_bound(
        self,
        token: str,
        proof: bytes,
        *,
        request: bytes,
        fleet_id: bytes,
        node_index: int,
        node_key: bytes,
        seen: SeenProofs,
        now: float,
    ) -> str:
        """A fleet token and the request proof of one sealed copy: the account, once the
        token verifies, names a device key (`cnf`), and the proof is that device's
        signature for this fleet, this node index, this node's public key (`node_key`,
        serialized: the fleet's later epochs reuse the fleet id and the indices), this
        token and this request, fresh (PROOF_LIFETIME_SECONDS, with the leeway) and with
        a `jti` not seen before."""
        account, claims = self._check(token, now)
        device = _confirmation_key(claims)
        if len(proof) != PROOF_LEN:
            raise TokenRejected("invalid_proof", "the request carries no request proof")
        jti, issued = proof[:JTI_LEN], struct.unpack(">Q", proof[JTI_LEN : JTI_LEN + 8])[0]
        signed = proof_message(fleet_id, node_index, node_key, token, request, jti, issued)
        try:
            device.verify(proof[JTI_LEN + 8 :], signed)
        except InvalidSignature:
            raise TokenRejected(
                "invalid_proof",
                "the request proof does not verify for this node, request and device key",
            ) from None
        # Expiry is judged against the highest clock reading the seen-set has had, as the
        # set forgets by it: a clock stepped forward, then back, must not let a proof
        # whose `jti` was forgotten in between count as fresh again.
        # A device makes its proof just before it sends it: one out of these bounds was
        # dated by a clock far from this node's, most likely the device's, which a new
        # token would not change (the message must say so: the client shows it).
        newest = seen.newest(now)
        if not newest - PROOF_LIFETIME_SECONDS - self.leeway_seconds <= issued:
            raise TokenRejected(
                "invalid_proof",
                f"the request proof has expired (dated {newest - issued:.0f} s before this"
                " node's clock): is the device's clock behind?",
            )
        if issued > now + self.leeway_seconds:
            raise TokenRejected(
                "invalid_proof",
                f"the request proof was made in the future (dated {issued - now:.0f} s after"
                " this node's clock): is the device's clock ahead?",
            )
        seen.add(jti, issued + PROOF_LIFETIME_SECONDS + self.leeway_seconds, newest)
        return account

    def _check(self, token: str, now: float | None) -> tuple[str, dict[str, Any]]:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected("invalid_token", "the bearer token is empty or too long")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            self._verified[token] = claims
            while len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
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
        cutoff = self.revoked_before.get(account)
        if cutoff is not None and (iat is None or iat < cutoff):
            raise TokenRejected(
                "token_revoked",
                "this account's tokens issued before"
                f" {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(cutoff))} were revoked;"
                " get a new one",
            )
        return account, claims

    def _decode(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and required claims
        verify (its times are checked at every use, in `_check`)."""
        try:
            return dict(
                jwt.decode(
                    token,
                    self.public_key,
                    algorithms=[ALGORITHM],
                    audience=self.audience,
                    issuer=self.issuer,
                    options={
                        "require": ["exp", "iss", "aud", "sub"],
                        # Time claims are checked in `_check`, against the injectable clock.
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
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
        except (jwt.PyJWTError, RecursionError):
            # Older PyJWT releases let json's RecursionError out on a deeply nested
            # header, which they parse before any signature.
            raise TokenRejected("invalid_token", "the bearer token is malformed") from None


# --- request proofs (proof of possession of the token's device key) --------------------

#: How long a request proof is good for after it was made (plus the verifier's leeway):
#: long enough for a relay's fan-out and a node's queue, short enough that the set of
#: proofs a node has seen stays small.
PROOF_LIFETIME_SECONDS = 60
JTI_LEN = 16
#: jti (16) ‖ iat (u64, seconds) ‖ Ed25519 signature (64).
PROOF_LEN = JTI_LEN + 8 + 64
PROOF_CONTEXT = b"backupvault/request-proof/v2"  # v2: names the node's key
#: The most unexpired proofs a node remembers; past it new requests are refused (fail
#: closed, "busy") rather than forgetting a proof that could then be replayed.
MAX_SEEN_PROOFS = 1 << 18


def generate_device_key() -> Ed25519PrivateKey:
    """A fresh device key: the client keeps it; the issuer binds fleet tokens to its public
    half."""
    return Ed25519PrivateKey.generate()


def device_key_from_hex(value: str) -> Ed25519PrivateKey:
    """A device key as client.toml stores it: 64 hex digits (the Ed25519 seed)."""
    try:
        seed = bytes.fromhex(value)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise InvalidInput("device_key must be 64 hexadecimal digits (an Ed25519 seed)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def device_key_hex(key: Ed25519PrivateKey) -> str:
    """The form `device_key_from_hex` reads."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()


def proof_message(
    fleet_id: bytes,
    node_index: int,
    node_key: bytes,
    token: str,
    request: bytes,
    jti: bytes,
    issued: int,
) -> bytes:
    """What a request proof signs (docs/relay.md, "Fleet tokens bound to the request").
    `node_key`: the node's serialized HPKE public key. A rotation to a new epoch keeps
    the fleet id and the node indices, and the old epoch's nodes keep serving while
    clients migrate: without the key, a node of one epoch could replay a proof it opened
    to the node of the same index of the other."""
    return (
        PROOF_CONTEXT
        + struct.pack(">H", len(fleet_id))
        + fleet_id
        + struct.pack(">I", node_index)
        + hashlib.sha256(node_key).digest()
        + hashlib.sha256(token.encode()).digest()
        + hashlib.sha256(request).digest()
        + jti
        + struct.pack(">Q", issued)
    )


def sign_request_proof(
    device_key: Ed25519PrivateKey,
    *,
    fleet_id: bytes,
    node_index: int,
    node_key: bytes,
    token: str,
    request: bytes,
    now: float | None = None,
) -> bytes:
    """A fresh proof for one sealed copy: only node `node_index`, holding the key whose
    serialized public half is `node_key`, accepts it, for this request and token, once."""
    jti = secrets.token_bytes(JTI_LEN)
    issued = int(time.time() if now is None else now)
    signed = proof_message(fleet_id, node_index, node_key, token, request, jti, issued)
    return jti + struct.pack(">Q", issued) + device_key.sign(signed)


def _confirmation_key(claims: dict[str, Any]) -> Ed25519PublicKey:
    """The device key a fleet token is bound to (`cnf.jwk`, an OKP Ed25519 key)."""
    cnf = claims.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    if not isinstance(jwk, dict):
        raise TokenRejected(
            "invalid_token",
            "the fleet token is not bound to a device key (no 'cnf' claim); ask the"
            " operator for a token minted for this device's key",
        )
    x = jwk.get("x")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(x, str):
        raise TokenRejected("invalid_token", "the token's 'cnf' key is not an Ed25519 key")
    try:
        key_bytes = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    except ValueError:
        key_bytes = b""
    if len(key_bytes) != 32:
        raise TokenRejected("invalid_token", "the token's 'cnf' key is not 32 bytes")
    return _device_key(key_bytes)


@functools.lru_cache(maxsize=VERIFIED_TOKENS)
def _device_key(key_bytes: bytes) -> Ed25519PublicKey:
    """The key object for 32 raw bytes, made once per device (at every request before)."""
    try:
        check_public_key(key_bytes, "the token's 'cnf' key")
    except InvalidInput as err:
        raise TokenRejected("invalid_token", err.message) from None
    return Ed25519PublicKey.from_public_bytes(key_bytes)


class SeenProofs:
    """The `jti`s of the unexpired request proofs a node has accepted, so each is accepted
    once. Held in memory: a restarted node starts empty, so a sealed copy it answered
    before the restart could be answered once more within its proof's lifetime; that is
    what a replaying relay could get anyway, and the threshold flow refuses it on its own
    (attempt clock, single-use owner statements: docs/relay.md).

    A `jti` is forgotten once the highest clock reading so far (`newest`) is past its
    expiry, and proofs are judged fresh against that reading too (`verify_bound`), so a
    clock stepped back (NTP, an operator) cannot make a forgotten proof fresh again."""

    def __init__(self, capacity: int = MAX_SEEN_PROOFS) -> None:
        self.capacity = capacity
        self._expiries: list[tuple[float, bytes]] = []
        self._seen: set[bytes] = set()
        self._latest = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def newest(self, now: float) -> float:
        """The highest clock reading seen so far, `now` included."""
        self._latest = max(self._latest, now)
        return self._latest

    def add(self, jti: bytes, expires: float, now: float) -> None:
        """Remember `jti` until `expires`; TokenRejected if it is already remembered, or
        if the set is full of unexpired proofs."""
        now = self.newest(now)
        while self._expiries and self._expiries[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiries)[1])
        if jti in self._seen:
            raise TokenRejected("replayed_proof", "this request proof was used before")
        if len(self._seen) >= self.capacity:
            raise TokenRejected("busy", "the node is busy; send again in a minute")
        self._seen.add(jti)
        heapq.heappush(self._expiries, (expires, jti))
