"""OPAQUE's client-side envelope (RFC 9807) with ristretto255, SHA-512, HKDF-SHA512 and
HMAC-SHA512, from an OPRF output the client computed itself (the threshold vault,
docs/threshold.md):

    store_envelope(oprf_output, ksf, server_public_key, ...)   -> RegistrationResult
    recover_envelope(oprf_output, record, ksf, server_public_key, ...)   -> export_key

Byte-exact with RFC 9807: hardening, the randomized password, Store/Recover (§4.1),
the masking key and export_key, and the 192-byte RegistrationRecord. Not here: OPAQUE's
server side and its 3DH key exchange (KE1/KE2/KE3, the server's OPRF seed and AKE key,
fake records), which only the removed single-seed flow used (docs/crypto.md).

Sans-IO: every function takes bytes or frozen dataclasses and returns new ones; nothing
here does I/O or keeps global state. Randomness comes from `os.urandom` unless the caller
passes the value in, which the RFC vectors do. Every message checks its exact length and
validates its group elements on construction; secrets never appear in a `repr`.
"""

from __future__ import annotations

import hmac as std_hmac
import os
from dataclasses import dataclass
from typing import ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from backupvault.crypto import oprf
from backupvault.crypto.ksf import KSF
from backupvault.errors import AuthenticationFailed, InvalidInput

# RFC 9807 §7 constants for this configuration.
NN = 32  # nonce length
NSEED = 32  # key-derivation seed length
NPK = 32  # public key (ristretto255 element)
NH = 64  # SHA-512 output
NM = 64  # HMAC-SHA512 output
ENVELOPE_LEN = NN + NM

# Domain-separation label from RFC 9807 §6.4.1.
_DERIVE_DH_KEY_INFO = b"OPAQUE-DeriveDiffieHellmanKeyPair"

_SHA512 = hashes.SHA512()


# --- primitives (RFC 9807 §2.1, §4) -----------------------------------------------------


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2): HMAC-SHA512 keyed with the salt."""
    mac = crypto_hmac.HMAC(salt, _SHA512)
    mac.update(ikm)
    return mac.finalize()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    return HKDFExpand(algorithm=_SHA512, length=length, info=info).derive(prk)


def _mac(key: bytes, msg: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, _SHA512)
    mac.update(msg)
    return mac.finalize()


def _len_prefixed(data: bytes) -> bytes:
    return oprf.i2osp(len(data), 2) + data


def _random(length: int, given: bytes | None, what: str) -> bytes:
    if given is None:
        return os.urandom(length)
    if len(given) != length:
        raise InvalidInput(f"{what}: expected {length} bytes")
    return bytes(given)


def derive_diffie_hellman_key_pair(seed: bytes) -> tuple[bytes, bytes]:
    """DeriveDiffieHellmanKeyPair (RFC 9807 §6.4.1): the OPRF's DeriveKeyPair with the
    OPAQUE label."""
    return oprf.derive_key_pair(seed, _DERIVE_DH_KEY_INFO)


def _check_identity(identity: bytes | None, what: str) -> None:
    # Identities are length-prefixed with two bytes in CleartextCredentials.
    if identity is not None and len(identity) > 0xFFFF:
        raise InvalidInput(f"{what}: longer than 65535 bytes")


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise InvalidInput(f"{what}: expected {length} bytes")
    return bytes(value)


def _hidden_repr(obj: object, public: tuple[str, ...] = ()) -> str:
    shown = ", ".join(f"{name}={getattr(obj, name)!r}" for name in public)
    return f"{type(obj).__name__}({shown}{', ' if shown else ''}<secrets hidden>)"


@dataclass(frozen=True, repr=False)
class RegistrationRecord:
    """What the server stores per credential (RFC 9807 §5.1, "RegistrationRecord"; also
    the client's registration upload): client_public_key (32) || masking_key (64) ||
    envelope (envelope_nonce 32 || auth_tag 64). 192 bytes."""

    client_public_key: bytes
    masking_key: bytes
    envelope: bytes

    ENCODED_LEN: ClassVar[int] = NPK + NH + ENVELOPE_LEN

    def __post_init__(self) -> None:
        oprf.validate_element(self.client_public_key, "record client public key")
        _check_bytes(self.masking_key, NH, "record masking key")
        _check_bytes(self.envelope, ENVELOPE_LEN, "record envelope")

    def __repr__(self) -> str:
        return _hidden_repr(self, ("client_public_key",))

    def to_bytes(self) -> bytes:
        return self.client_public_key + self.masking_key + self.envelope

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationRecord:
        data = _check_bytes(data, cls.ENCODED_LEN, "registration record")
        return cls(data[:NPK], data[NPK : NPK + NH], data[NPK + NH :])


@dataclass(frozen=True, repr=False)
class RegistrationResult:
    """The record to upload to the server, and export_key for the client's own use."""

    record: RegistrationRecord
    export_key: bytes
    server_public_key: bytes

    def __repr__(self) -> str:
        return _hidden_repr(self, ("server_public_key",))


def _cleartext_credentials(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> bytes:
    """CreateCleartextCredentials (§4.1.2): identities default to the public keys."""
    server_id = server_public_key if server_identity is None else server_identity
    client_id = client_public_key if client_identity is None else client_identity
    return server_public_key + _len_prefixed(server_id) + _len_prefixed(client_id)


def _envelope_keys(randomized_password: bytes, envelope_nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(auth_key, export_key, client key seed) for one envelope nonce (§4.1.2)."""
    auth_key = _hkdf_expand(randomized_password, envelope_nonce + b"AuthKey", NH)
    export_key = _hkdf_expand(randomized_password, envelope_nonce + b"ExportKey", NH)
    seed = _hkdf_expand(randomized_password, envelope_nonce + b"PrivateKey", NSEED)
    return auth_key, export_key, seed


def _harden(oprf_output: bytes, ksf: KSF) -> bytes:
    """§5.2.3 / §6.3.2.2: randomized_password = Extract("", oprf_output || Stretch(oprf_output))."""
    stretched = ksf.stretch(oprf_output)
    return _hkdf_extract(b"", oprf_output + stretched)


def _store(
    randomized_password: bytes,
    server_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
    envelope_nonce: bytes | None,
) -> RegistrationResult:
    """Store (§4.1.2) plus the masking key (§5.2.3): the record and export_key."""
    nonce = _random(NN, envelope_nonce, "envelope nonce")
    masking_key = _hkdf_expand(randomized_password, b"MaskingKey", NH)
    auth_key, export_key, seed = _envelope_keys(randomized_password, nonce)
    _, client_public_key = derive_diffie_hellman_key_pair(seed)
    cleartext = _cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    auth_tag = _mac(auth_key, nonce + cleartext)
    record = RegistrationRecord(client_public_key, masking_key, nonce + auth_tag)
    return RegistrationResult(record, export_key, server_public_key)


def _recover(
    randomized_password: bytes,
    server_public_key: bytes,
    envelope: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> tuple[bytes, bytes, bytes]:
    """Recover (§4.1.3): (client_private_key, client_public_key, export_key), or
    AuthenticationFailed if the envelope's MAC does not verify. The MAC also authenticates
    `server_public_key`."""
    envelope_nonce, auth_tag = envelope[:NN], envelope[NN:]
    auth_key, export_key, seed = _envelope_keys(randomized_password, envelope_nonce)
    client_private_key, client_public_key = derive_diffie_hellman_key_pair(seed)
    cleartext = _cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    expected_tag = _mac(auth_key, envelope_nonce + cleartext)
    if not std_hmac.compare_digest(expected_tag, auth_tag):
        raise AuthenticationFailed(
            "login failed: wrong password, or the server's response was altered"
        )
    return client_private_key, client_public_key, export_key


# --- the envelope from a given OPRF output (threshold vault, docs/threshold.md) ----------


def _check_oprf_output(oprf_output: bytes) -> bytes:
    return _check_bytes(oprf_output, oprf.OUTPUT_LEN, "OPRF output")


def store_envelope(
    oprf_output: bytes,
    *,
    ksf: KSF,
    server_public_key: bytes,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    envelope_nonce: bytes | None = None,
) -> RegistrationResult:
    """The client side of registration (§5.2.3: hardening, masking key, Store §4.1.2) for
    an OPRF output the client computed itself, with no server response and no 3DH key
    exchange. The threshold vault deals its own OPRF key (crypto/threshold.py), so there
    is no server evaluation at registration. `envelope_nonce` only for test vectors."""
    _check_identity(client_identity, "client identity")
    _check_identity(server_identity, "server identity")
    oprf.validate_element(server_public_key, "server public key")
    return _store(
        _harden(_check_oprf_output(oprf_output), ksf),
        server_public_key,
        server_identity,
        client_identity,
        envelope_nonce,
    )


def recover_envelope(
    oprf_output: bytes,
    record: RegistrationRecord,
    *,
    ksf: KSF,
    server_public_key: bytes,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
) -> bytes:
    """The client side of login without 3DH: harden the (combined) OPRF output, open the
    record's envelope (Recover §4.1.3) and return export_key. The record must be exactly
    what `store_envelope` made for this output: its client public key and masking key are
    checked too, so no field of it goes unauthenticated. Raises AuthenticationFailed for a
    wrong password (a wrong OPRF output) or any altered field, identities included."""
    _check_identity(client_identity, "client identity")
    _check_identity(server_identity, "server identity")
    oprf.validate_element(server_public_key, "server public key")
    randomized_password = _harden(_check_oprf_output(oprf_output), ksf)
    _, client_public_key, export_key = _recover(
        randomized_password, server_public_key, record.envelope, server_identity, client_identity
    )
    masking_key = _hkdf_expand(randomized_password, b"MaskingKey", NH)
    if not (
        std_hmac.compare_digest(client_public_key, record.client_public_key)
        and std_hmac.compare_digest(masking_key, record.masking_key)
    ):
        raise AuthenticationFailed("the record's client key or masking key was altered")
    return export_key
