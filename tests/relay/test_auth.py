"""Only a valid operator-signed token for the right issuer and audience gets through."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from backupvault.errors import InvalidInput
from backupvault.relay import (
    TokenRejected,
    TokenVerifier,
    generate_operator_key,
    load_operator_private_key,
    load_operator_public_key,
    mint_token,
    public_key_pem,
    save_operator_key,
)
from backupvault.tokens import VERIFIED_TOKENS

from .conftest import AUDIENCE, ISSUER, StubNode, copies


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _bad_tokens(operator_key: Ed25519PrivateKey) -> dict[str, str]:
    other_key = Ed25519PrivateKey.generate()
    good = mint_token(operator_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=300)
    header, payload, signature = good.split(".")
    forged_payload = _b64(json.dumps(_claims(sub="bob")).encode())
    rsa = generate_private_key(public_exponent=65537, key_size=2048)
    none_header = _b64(b'{"alg":"none","typ":"JWT"}')
    return {
        "malformed": "not-a-jwt",
        "garbage-segments": "a.b.c",
        "wrong-signature": mint_token(
            other_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=300
        ),
        "payload-swapped": f"{header}.{forged_payload}.{signature}",
        "expired": mint_token(
            operator_key,
            "alice",
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl_seconds=60,
            now=time.time() - 3600,
        ),
        "not-yet-valid": jwt.encode(
            _claims(nbf=int(time.time()) + 3600, exp=int(time.time()) + 7200),
            operator_key,
            algorithm="EdDSA",
        ),
        "wrong-issuer": mint_token(
            operator_key, "alice", issuer="https://evil.test", audience=AUDIENCE, ttl_seconds=300
        ),
        "wrong-audience": mint_token(
            operator_key, "alice", issuer=ISSUER, audience="another-service", ttl_seconds=300
        ),
        "alg-none": f"{none_header}.{payload}.",
        "alg-none-signed": jwt.encode(_claims(), "", algorithm="none"),
        "hs256-with-public-key-as-secret": _b64(b'{"alg":"HS256","typ":"JWT"}')
        + "."
        + payload
        + "."
        + _b64(b"\x00" * 32),
        "rs256": jwt.encode(_claims(), rsa, algorithm="RS256"),
        "no-exp": jwt.encode(_claims(exp=None), operator_key, algorithm="EdDSA"),
        "no-sub": jwt.encode(_claims(sub=None), operator_key, algorithm="EdDSA"),
        "bad-sub": jwt.encode(_claims(sub="alice\nbob"), operator_key, algorithm="EdDSA"),
        "numeric-sub": jwt.encode(_claims(sub=42), operator_key, algorithm="EdDSA"),
        "string-exp": jwt.encode(_claims(exp="never"), operator_key, algorithm="EdDSA"),
        # Signed by the issuer, but malformed: a 401-digit time made the relay answer 502
        # and a node 500; NaN never expired.
        "huge-exp": jwt.encode(_claims(exp=10**400), operator_key, algorithm="EdDSA"),
        "huge-nbf": jwt.encode(_claims(nbf=-(10**400)), operator_key, algorithm="EdDSA"),
        "nan-exp": jwt.encode(_claims(exp=float("nan")), operator_key, algorithm="EdDSA"),
        "infinite-exp": jwt.encode(_claims(exp=float("inf")), operator_key, algorithm="EdDSA"),
        "too-long": "a" * 5000,
    }


def test_bad_tokens_are_401_with_a_bearer_challenge_and_never_forwarded(
    stubs: list[StubNode], start_relay: Callable[..., str], operator_key: Ed25519PrivateKey
) -> None:
    # More refused tokens than one address is allowed by default (test_limits.py).
    relay = start_relay([stubs[0].url], refused_tokens_burst=100)
    url = f"{relay}/v1/vault/laptop/manifest"
    octet = {"Content-Type": "application/octet-stream"}
    cases: dict[str, dict[str, str]] = {
        "missing": octet,
        "not-bearer": {**octet, "Authorization": "Basic YWxpY2U6cGFzcw=="},
        "bare-scheme": {**octet, "Authorization": "Bearer"},
    }
    for name, token in _bad_tokens(operator_key).items():
        cases[name] = {**octet, "Authorization": f"Bearer {token}"}
    for name, headers in cases.items():
        response = httpx.post(url, content=copies(relay, b"sealed"), headers=headers)
        assert response.status_code == 401, name
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        body = response.json()
        assert body["error"] in {"missing_token", "invalid_token", "token_expired"}, name
        assert body["detail"], name
    assert stubs[0].seen == []


def test_a_good_token_passes(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url])
    response = httpx.post(
        f"{relay}/v1/vault/laptop/manifest",
        content=copies(relay, b"sealed"),
        headers={"Content-Type": "application/octet-stream", "Authorization": f"bearer {token()}"},
    )
    assert response.status_code == 200


def test_verifier_uses_its_clock_with_leeway(operator_key: Ed25519PrivateKey) -> None:
    token = mint_token(
        operator_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60, now=1_000_000
    )
    now = [1_000_000.0]
    verifier = TokenVerifier(
        operator_key.public_key(), ISSUER, AUDIENCE, leeway_seconds=5, clock=lambda: now[0]
    )
    assert verifier.verify(token) == "alice"
    now[0] = 1_000_064.0
    assert verifier.verify(token) == "alice"
    now[0] = 1_000_065.0
    with pytest.raises(TokenRejected) as err:
        verifier.verify(token)
    assert err.value.code == "token_expired"
    now[0] = 999_990.0  # before nbf/iat, beyond the leeway
    with pytest.raises(TokenRejected):
        verifier.verify(token)


def test_a_remembered_token_does_not_vouch_for_another(operator_key: Ed25519PrivateKey) -> None:
    """A verified token's claims are remembered by its verifier (its signature is not
    checked again; its times are, see above). Only that exact token, at that verifier:
    the same claims under a forged signature are refused, another verifier (another
    key) refuses the token, and the memory is bounded."""
    token = mint_token(operator_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=600)
    verifier = TokenVerifier(operator_key.public_key(), ISSUER, AUDIENCE)
    assert verifier.verify(token) == "alice"
    head, claims, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(TokenRejected):
        verifier.verify(f"{head}.{claims}.{flipped}")
    other = TokenVerifier(Ed25519PrivateKey.generate().public_key(), ISSUER, AUDIENCE)
    with pytest.raises(TokenRejected):
        other.verify(token)
    assert verifier.verify(token) == "alice"
    for i in range(VERIFIED_TOKENS + 10):
        verifier.verify(
            mint_token(operator_key, f"user{i}", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
        )
    assert len(verifier._verified) == VERIFIED_TOKENS
    assert token not in verifier._verified
    assert verifier.verify(token) == "alice"  # verified again from scratch


def _recursing(*args: object, **kwargs: object) -> dict[str, object]:
    """`jwt.decode` as older PyJWT releases behave on a deeply nested header: their header
    parse catches ValueError only, and json raises RecursionError."""
    raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")


@pytest.mark.parametrize("decode", [jwt.decode, _recursing], ids=["installed", "older pyjwt"])
def test_a_deeply_nested_token_header_is_invalid_whatever_pyjwt_lets_out(
    operator_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch, decode: object
) -> None:
    """The header is parsed before any signature is checked, and older PyJWT releases let
    json's RecursionError out of `jwt.decode`: the relay answered such an Authorization
    header with 502 relay_error, and a node such a sealed fleet token with 500."""
    nested = _b64(b'{"alg":"EdDSA","x":' + b"[" * 1400 + b"]" * 1400 + b"}")
    token = f"{nested}.{_b64(b'{}')}.{_b64(bytes(64))}"
    monkeypatch.setattr(jwt, "decode", decode)
    with pytest.raises(TokenRejected) as err:
        TokenVerifier(operator_key.public_key(), ISSUER, AUDIENCE).verify(token)
    assert err.value.code == "invalid_token"


def test_mint_token_checks_its_arguments(operator_key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidInput):
        mint_token(operator_key, "a/b", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    with pytest.raises(InvalidInput):
        mint_token(operator_key, "a" * 65, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)
    with pytest.raises(InvalidInput):
        mint_token(operator_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=0)
    claims = jwt.decode(
        mint_token(
            operator_key, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60, now=100
        ),
        options={"verify_signature": False},
    )
    assert claims["sub"] == "alice" and claims["iat"] == 100 and claims["exp"] == 160


def test_operator_key_files_round_trip(tmp_path: Path) -> None:
    key = generate_operator_key()
    private, public = tmp_path / "op.key", tmp_path / "op.pub"
    save_operator_key(key, private, public)
    assert private.stat().st_mode & 0o777 == 0o600
    loaded = load_operator_private_key(private)
    assert public_key_pem(loaded) == public_key_pem(key)
    verify = load_operator_public_key(public)
    token = mint_token(loaded, "bob", issuer="i", audience="a", ttl_seconds=60)
    assert TokenVerifier(verify, "i", "a").verify(token) == "bob"
    with pytest.raises(InvalidInput, match="refusing to overwrite"):
        save_operator_key(generate_operator_key(), private, tmp_path / "other.pub")
    assert load_operator_private_key(private.read_bytes()).public_key() == key.public_key()


def test_encrypted_operator_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = generate_operator_key()
    save_operator_key(key, tmp_path / "k", tmp_path / "p", passphrase=b"correct horse")
    with pytest.raises(InvalidInput):
        load_operator_private_key(tmp_path / "k")
    with pytest.raises(InvalidInput):
        load_operator_private_key(tmp_path / "k", passphrase=b"wrong")
    loaded = load_operator_private_key(tmp_path / "k", passphrase=b"correct horse")
    assert public_key_pem(loaded) == public_key_pem(key)


def test_key_loaders_refuse_wrong_keys(tmp_path: Path) -> None:
    rsa = generate_private_key(public_exponent=65537, key_size=2048)
    rsa_public = rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidInput, match="Ed25519"):
        load_operator_public_key(rsa_public)
    with pytest.raises(InvalidInput):
        load_operator_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(InvalidInput):
        load_operator_public_key(tmp_path / "missing.pem")


def test_a_revoked_account_s_older_tokens_are_refused_and_a_new_one_passes(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """A leaked relay token let whoever held it spend the account's request budget (the
    owner then got 429) until it expired, with nothing to revoke it but the issuer key.
    `revoked_before` refuses the account's tokens issued before a time; other accounts'
    and newer tokens pass."""
    cutoff = time.time() - 60
    relay = start_relay([stubs[0].url], revoked_before=(("alice", cutoff),))
    url = f"{relay}/v1/vault/laptop/manifest"

    def post(bearer: str) -> httpx.Response:
        headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {bearer}"}
        return httpx.post(url, content=copies(relay, b"sealed"), headers=headers)

    leaked = post(token("alice", now=cutoff - 1))
    assert leaked.status_code == 401
    assert leaked.json()["error"] == "token_revoked"
    assert "get a new one" in leaked.json()["detail"]
    assert len(stubs[0].seen) == 0  # never forwarded
    assert post(token("alice")).status_code == 200  # minted after the cutoff
    assert post(token("bob", now=cutoff - 1)).status_code == 200  # another account


def test_revoked_before_is_read_from_relay_toml_as_times_with_an_offset() -> None:
    from datetime import UTC, datetime

    from backupvault.relay.config import _revoked_before

    when = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)
    assert _revoked_before({"alice": when}) == (("alice", when.timestamp()),)
    with pytest.raises(InvalidInput, match="with its offset"):
        _revoked_before({"alice": datetime(2026, 12, 4, 17, 0)})  # local time: ambiguous
    with pytest.raises(InvalidInput, match="with its offset"):
        _revoked_before({"alice": 1764867600})
    with pytest.raises(InvalidInput, match="not an account name"):
        _revoked_before({"al ice": when})
    with pytest.raises(InvalidInput, match="table of account"):
        _revoked_before(["alice"])
