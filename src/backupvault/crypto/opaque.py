"""OPAQUE-3DH (RFC 9807) with ristretto255, SHA-512, HKDF-SHA512 and HMAC-SHA512.

Sans-IO: every function takes bytes or frozen dataclasses and returns new ones; nothing
here does I/O or keeps global state. Randomness comes from `os.urandom` (and libsodium's
CSPRNG for blinds) unless the caller passes the value in, which the RFC vectors do.

Flow (RFC 9807 §5 and §6):

    client_registration_start(password)               -> state, RegistrationRequest
    server_registration_response(setup, request, id)  -> RegistrationResponse
    client_registration_finish(state, response, ksf)  -> RegistrationResult(record, export_key)

    client_login_start(password)                       -> state, KE1
    server_login_start(setup, record | None, ke1, id)  -> ServerLoginState, KE2
    client_login_finish(state, ke2, ksf)               -> ClientLoginResult(ke3, session_key, ...)
    server_login_finish(server_state, ke3)             -> session_key

`server_login_start` with `record=None` answers with a fake record (RFC 9807 §10.9) so
that a KE2 for an unknown credential identifier looks like any other.

Every message checks its exact length and validates its group elements on construction,
so `from_bytes` never yields an object holding a bad point. Secrets never appear in a
`repr`. A server state is single-use: the caller must discard it after
`server_login_finish`, whatever the outcome.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
from dataclasses import dataclass, field
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
NSK = 32  # private key (scalar)
NH = 64  # SHA-512 output
NX = 64  # HKDF-SHA512 Extract output
NM = 64  # HMAC-SHA512 output
NOK = oprf.SCALAR_LEN  # OPRF private key
NOE = oprf.ELEMENT_LEN  # OPRF element
ENVELOPE_LEN = NN + NM

# Domain-separation labels from RFC 9807 (§4.1, §5.2.2, §6.4.2, ...).
_DERIVE_OPRF_KEY_INFO = b"OPAQUE-DeriveKeyPair"
_DERIVE_DH_KEY_INFO = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_PREAMBLE_LABEL = b"OPAQUEv1-"
# Our own labels for deterministic fake records (not in the RFC; see fake_registration_record).
_FAKE_MASKING_KEY_INFO = b"BackupVault-FakeRecord-MaskingKey"
_FAKE_CLIENT_KEY_INFO = b"BackupVault-FakeRecord-ClientPublicKey"
_FAKE_CLIENT_KEY_DST = b"BackupVault-FakeRecord-HashToGroup-ristretto255-SHA512"

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


def _hash(msg: bytes) -> bytes:
    return hashlib.sha512(msg).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


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


def _derive_oprf_key(oprf_seed: bytes, credential_identifier: bytes) -> bytes:
    """RFC 9807 §5.2.2: per-credential OPRF key from the server's oprf_seed."""
    seed = _hkdf_expand(oprf_seed, credential_identifier + b"OprfKey", NOK)
    return oprf.derive_private_key(seed, _DERIVE_OPRF_KEY_INFO)


def _check_identity(identity: bytes | None, what: str) -> None:
    # Identities are length-prefixed with two bytes in CleartextCredentials and the preamble.
    if identity is not None and len(identity) > 0xFFFF:
        raise InvalidInput(f"{what}: longer than 65535 bytes")


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise InvalidInput(f"{what}: expected {length} bytes")
    return bytes(value)


def _hidden_repr(obj: object, public: tuple[str, ...] = ()) -> str:
    shown = ", ".join(f"{name}={getattr(obj, name)!r}" for name in public)
    return f"{type(obj).__name__}({shown}{', ' if shown else ''}<secrets hidden>)"


# --- server setup -----------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ServerSetup:
    """The server's long-term secrets: oprf_seed (Nh bytes) and its AKE key pair.

    Encoding (128 bytes): oprf_seed (64) || server_private_key (32) || server_public_key (32).
    """

    oprf_seed: bytes
    server_private_key: bytes
    server_public_key: bytes

    # Derived, not encoded: the client public key of every fake record (see
    # fake_registration_record), a hash to the group of a secret derived from oprf_seed.
    fake_client_public_key: bytes = field(init=False, repr=False, compare=False)

    ENCODED_LEN: ClassVar[int] = NH + NSK + NPK

    def __post_init__(self) -> None:
        _check_bytes(self.oprf_seed, NH, "oprf_seed")
        oprf.validate_scalar(self.server_private_key, "server private key")
        oprf.validate_element(self.server_public_key, "server public key")
        if oprf.scalar_mult_base(self.server_private_key) != self.server_public_key:
            raise InvalidInput("server public key does not match the server private key")
        key_input = _hkdf_expand(self.oprf_seed, _FAKE_CLIENT_KEY_INFO, NH)
        fake_key = oprf.hash_to_group(key_input, _FAKE_CLIENT_KEY_DST)
        object.__setattr__(self, "fake_client_public_key", fake_key)  # frozen: set once here

    def __repr__(self) -> str:
        return _hidden_repr(self, ("server_public_key",))

    def to_bytes(self) -> bytes:
        return self.oprf_seed + self.server_private_key + self.server_public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerSetup:
        data = _check_bytes(data, cls.ENCODED_LEN, "server setup")
        return cls(data[:NH], data[NH : NH + NSK], data[NH + NSK :])


def create_server_setup(
    *, oprf_seed: bytes | None = None, server_private_key: bytes | None = None
) -> ServerSetup:
    """New server secrets; both may be given (RFC vectors, restoring from a backup)."""
    seed = _random(NH, oprf_seed, "oprf_seed")
    if server_private_key is None:
        private_key, public_key = derive_diffie_hellman_key_pair(os.urandom(NSEED))
    else:
        private_key = oprf.validate_scalar(server_private_key, "server private key")
        public_key = oprf.scalar_mult_base(private_key)
    return ServerSetup(seed, private_key, public_key)


# --- messages (RFC 9807 §5.1, §6.1) ---------------------------------------------------


@dataclass(frozen=True)
class RegistrationRequest:
    """Client → server: the blinded password (Noe = 32 bytes)."""

    blinded_message: bytes

    ENCODED_LEN: ClassVar[int] = NOE

    def __post_init__(self) -> None:
        oprf.validate_element(self.blinded_message, "registration request blinded message")

    def to_bytes(self) -> bytes:
        return self.blinded_message

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationRequest:
        return cls(_check_bytes(data, cls.ENCODED_LEN, "registration request"))


@dataclass(frozen=True)
class RegistrationResponse:
    """Server → client: evaluated_message (32) || server_public_key (32)."""

    evaluated_message: bytes
    server_public_key: bytes

    ENCODED_LEN: ClassVar[int] = NOE + NPK

    def __post_init__(self) -> None:
        oprf.validate_element(self.evaluated_message, "registration response evaluated message")
        oprf.validate_element(self.server_public_key, "registration response server public key")

    def to_bytes(self) -> bytes:
        return self.evaluated_message + self.server_public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationResponse:
        data = _check_bytes(data, cls.ENCODED_LEN, "registration response")
        return cls(data[:NOE], data[NOE:])


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


@dataclass(frozen=True)
class KE1:
    """Client → server, login start: blinded_message (32) || client_nonce (32) ||
    client_public_keyshare (32). 96 bytes."""

    blinded_message: bytes
    client_nonce: bytes
    client_public_keyshare: bytes

    ENCODED_LEN: ClassVar[int] = NOE + NN + NPK

    def __post_init__(self) -> None:
        oprf.validate_element(self.blinded_message, "KE1 blinded message")
        _check_bytes(self.client_nonce, NN, "KE1 client nonce")
        oprf.validate_element(self.client_public_keyshare, "KE1 client public keyshare")

    def to_bytes(self) -> bytes:
        return self.blinded_message + self.client_nonce + self.client_public_keyshare

    @classmethod
    def from_bytes(cls, data: bytes) -> KE1:
        data = _check_bytes(data, cls.ENCODED_LEN, "KE1")
        return cls(data[:NOE], data[NOE : NOE + NN], data[NOE + NN :])


_MASKED_RESPONSE_LEN = NPK + NN + NM


@dataclass(frozen=True)
class KE2:
    """Server → client: credential_response (evaluated_message 32 || masking_nonce 32 ||
    masked_response 128) || auth_response (server_nonce 32 || server_public_keyshare 32 ||
    server_mac 64). 320 bytes."""

    evaluated_message: bytes
    masking_nonce: bytes
    masked_response: bytes
    server_nonce: bytes
    server_public_keyshare: bytes
    server_mac: bytes

    ENCODED_LEN: ClassVar[int] = NOE + NN + _MASKED_RESPONSE_LEN + NN + NPK + NM

    def __post_init__(self) -> None:
        oprf.validate_element(self.evaluated_message, "KE2 evaluated message")
        _check_bytes(self.masking_nonce, NN, "KE2 masking nonce")
        _check_bytes(self.masked_response, _MASKED_RESPONSE_LEN, "KE2 masked response")
        _check_bytes(self.server_nonce, NN, "KE2 server nonce")
        oprf.validate_element(self.server_public_keyshare, "KE2 server public keyshare")
        _check_bytes(self.server_mac, NM, "KE2 server MAC")

    def credential_response_bytes(self) -> bytes:
        return self.evaluated_message + self.masking_nonce + self.masked_response

    def to_bytes(self) -> bytes:
        return (
            self.credential_response_bytes()
            + self.server_nonce
            + self.server_public_keyshare
            + self.server_mac
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KE2:
        data = _check_bytes(data, cls.ENCODED_LEN, "KE2")
        offsets = [NOE, NN, _MASKED_RESPONSE_LEN, NN, NPK, NM]
        parts: list[bytes] = []
        start = 0
        for length in offsets:
            parts.append(data[start : start + length])
            start += length
        return cls(*parts)


@dataclass(frozen=True)
class KE3:
    """Client → server, login finish: client_mac (64 bytes)."""

    client_mac: bytes

    ENCODED_LEN: ClassVar[int] = NM

    def __post_init__(self) -> None:
        _check_bytes(self.client_mac, NM, "KE3 client MAC")

    def to_bytes(self) -> bytes:
        return self.client_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> KE3:
        return cls(_check_bytes(data, cls.ENCODED_LEN, "KE3"))


# --- states and results (secret; hidden from repr) -------------------------------------


@dataclass(frozen=True, repr=False)
class ClientRegistrationState:
    password: bytes
    blind: bytes

    def __repr__(self) -> str:
        return _hidden_repr(self)


@dataclass(frozen=True, repr=False)
class RegistrationResult:
    """The record to upload to the server, and export_key for the client's own use."""

    record: RegistrationRecord
    export_key: bytes
    server_public_key: bytes

    def __repr__(self) -> str:
        return _hidden_repr(self, ("server_public_key",))


@dataclass(frozen=True, repr=False)
class ClientLoginState:
    password: bytes
    blind: bytes
    client_secret: bytes
    ke1: KE1

    def __repr__(self) -> str:
        return _hidden_repr(self)


@dataclass(frozen=True, repr=False)
class ClientLoginResult:
    ke3: KE3
    session_key: bytes
    export_key: bytes
    server_public_key: bytes

    def __repr__(self) -> str:
        return _hidden_repr(self, ("server_public_key",))


@dataclass(frozen=True, repr=False)
class ServerLoginState:
    """What the server keeps between KE2 and KE3 (RFC 9807 §6.4.3). Secret and
    single-use. Encoding (128 bytes): expected_client_mac (64) || session_key (64), so a
    sans-IO node can keep it wherever it keeps per-attempt state."""

    expected_client_mac: bytes
    session_key: bytes

    ENCODED_LEN: ClassVar[int] = NM + NX

    def __post_init__(self) -> None:
        _check_bytes(self.expected_client_mac, NM, "server state client MAC")
        _check_bytes(self.session_key, NX, "server state session key")

    def __repr__(self) -> str:
        return _hidden_repr(self)

    def to_bytes(self) -> bytes:
        return self.expected_client_mac + self.session_key

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerLoginState:
        data = _check_bytes(data, cls.ENCODED_LEN, "server login state")
        return cls(data[:NM], data[NM:])


@dataclass(frozen=True, repr=False)
class _AkeKeys:
    session_key: bytes
    server_mac_key: bytes
    client_mac_key: bytes
    handshake_secret: bytes


# --- envelope (RFC 9807 §4.1) -----------------------------------------------------------


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


def _randomized_password(password: bytes, blind: bytes, evaluated: bytes, ksf: KSF) -> bytes:
    return _harden(oprf.finalize(password, blind, evaluated), ksf)


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


# --- registration (RFC 9807 §5.2) -------------------------------------------------------


def client_registration_start(
    password: bytes, *, blind: bytes | None = None
) -> tuple[ClientRegistrationState, RegistrationRequest]:
    """CreateRegistrationRequest (§5.2.1). `blind` only for test vectors."""
    if not isinstance(password, bytes):
        raise InvalidInput("password must be bytes (encode text as UTF-8)")
    r, blinded = oprf.blind(password, blind)
    return ClientRegistrationState(password, r), RegistrationRequest(blinded)


def server_registration_response(
    setup: ServerSetup, request: RegistrationRequest, credential_identifier: bytes
) -> RegistrationResponse:
    """CreateRegistrationResponse (§5.2.2)."""
    oprf_key = _derive_oprf_key(setup.oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, request.blinded_message)
    return RegistrationResponse(evaluated, setup.server_public_key)


def client_registration_finish(
    state: ClientRegistrationState,
    response: RegistrationResponse,
    *,
    ksf: KSF,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    expected_server_public_key: bytes | None = None,
    envelope_nonce: bytes | None = None,
) -> RegistrationResult:
    """FinalizeRegistrationRequest (§5.2.3) and Store (§4.1.2).

    `expected_server_public_key`, if given, must equal the key in the response (pinning).
    `envelope_nonce` only for test vectors.
    """
    _check_identity(client_identity, "client identity")
    _check_identity(server_identity, "server identity")
    if expected_server_public_key is not None and not std_hmac.compare_digest(
        expected_server_public_key, response.server_public_key
    ):
        raise AuthenticationFailed("registration response carries an unexpected server key")
    randomized_password = _randomized_password(
        state.password, state.blind, response.evaluated_message, ksf
    )
    return _store(
        randomized_password,
        response.server_public_key,
        server_identity,
        client_identity,
        envelope_nonce,
    )


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


# --- fake records (RFC 9807 §6.3.2.2, §10.9) --------------------------------------------


def make_fake_record(client_public_key: bytes, masking_key: bytes) -> RegistrationRecord:
    """A fake record as the RFC describes it: a real-looking client public key, a random
    masking key and an all-zero envelope (never opened: nobody knows a password for it)."""
    return RegistrationRecord(client_public_key, masking_key, bytes(ENVELOPE_LEN))


def fake_registration_record(
    setup: ServerSetup, credential_identifier: bytes
) -> RegistrationRecord:
    """The fake record for an unknown credential identifier (RFC 9807 §6.3.2.2, §10.9).

    Its masking key is derived from oprf_seed and the identifier, so the same unknown
    identifier always gets the same record, as a real one would. The fake client public
    key is the setup's (one for all unknown identifiers, as in opaque-ke): it never appears
    on the wire, only inside 3DH and the MACs. Both together cost about as much as loading
    and decoding a real record, so the answer time does not tell known from unknown.

    The label ends differently from "OprfKey", so this derivation cannot collide with the
    per-credential OPRF key derivation."""
    masking_key = _hkdf_expand(setup.oprf_seed, credential_identifier + _FAKE_MASKING_KEY_INFO, NH)
    return make_fake_record(setup.fake_client_public_key, masking_key)


# --- 3DH key schedule (RFC 9807 §6.4.2) -------------------------------------------------


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full_label = b"OPAQUE-" + label
    custom_label = (
        oprf.i2osp(length, 2)
        + oprf.i2osp(len(full_label), 1)
        + full_label
        + oprf.i2osp(len(context), 1)
        + context
    )
    return _hkdf_expand(secret, custom_label, length)


def _derive_keys(ikm: bytes, preamble_hash: bytes) -> _AkeKeys:
    prk = _hkdf_extract(b"", ikm)
    handshake_secret = _expand_label(prk, b"HandshakeSecret", preamble_hash, NX)
    session_key = _expand_label(prk, b"SessionKey", preamble_hash, NX)
    server_mac_key = _expand_label(handshake_secret, b"ServerMAC", b"", NM)
    client_mac_key = _expand_label(handshake_secret, b"ClientMAC", b"", NM)
    return _AkeKeys(session_key, server_mac_key, client_mac_key, handshake_secret)


def _preamble(
    client_identity: bytes,
    ke1: KE1,
    server_identity: bytes,
    credential_response: bytes,
    server_nonce: bytes,
    server_public_keyshare: bytes,
    context: bytes,
) -> bytes:
    return (
        _PREAMBLE_LABEL
        + _len_prefixed(context)
        + _len_prefixed(client_identity)
        + ke1.to_bytes()
        + _len_prefixed(server_identity)
        + credential_response
        + server_nonce
        + server_public_keyshare
    )


def _check_context(context: bytes) -> None:
    if len(context) > 0xFFFF:
        raise InvalidInput("context: longer than 65535 bytes")


# --- login (RFC 9807 §6) ----------------------------------------------------------------


def client_login_start(
    password: bytes,
    *,
    blind: bytes | None = None,
    client_nonce: bytes | None = None,
    client_keyshare_seed: bytes | None = None,
) -> tuple[ClientLoginState, KE1]:
    """GenerateKE1 (§6.2.1, §6.4.3 Start). The keyword arguments only for test vectors."""
    if not isinstance(password, bytes):
        raise InvalidInput("password must be bytes (encode text as UTF-8)")
    r, blinded = oprf.blind(password, blind)
    nonce = _random(NN, client_nonce, "client nonce")
    seed = _random(NSEED, client_keyshare_seed, "client keyshare seed")
    client_secret, client_keyshare = derive_diffie_hellman_key_pair(seed)
    ke1 = KE1(blinded, nonce, client_keyshare)
    return ClientLoginState(password, r, client_secret, ke1), ke1


def server_login_start(
    setup: ServerSetup,
    record: RegistrationRecord | None,
    ke1: KE1,
    credential_identifier: bytes,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    context: bytes = b"",
    masking_nonce: bytes | None = None,
    server_nonce: bytes | None = None,
    server_keyshare_seed: bytes | None = None,
) -> tuple[ServerLoginState, KE2]:
    """GenerateKE2 (§6.2.2): CreateCredentialResponse (§6.3.2.1) and the 3DH Response
    (§6.4.3). `record=None` means the identifier is unknown: answer with its fake record.
    The nonce and seed arguments only for test vectors."""
    _check_identity(client_identity, "client identity")
    _check_identity(server_identity, "server identity")
    _check_context(context)
    if record is None:
        record = fake_registration_record(setup, credential_identifier)

    # Credential response: OPRF evaluation and the masked (server key, envelope).
    oprf_key = _derive_oprf_key(setup.oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, ke1.blinded_message)
    mask_nonce = _random(NN, masking_nonce, "masking nonce")
    pad = _hkdf_expand(
        record.masking_key, mask_nonce + b"CredentialResponsePad", _MASKED_RESPONSE_LEN
    )
    masked_response = _xor(pad, setup.server_public_key + record.envelope)
    credential_response = evaluated + mask_nonce + masked_response

    # 3DH: dh1 = eph_s*eph_c, dh2 = static_s*eph_c, dh3 = eph_s*static_c.
    nonce = _random(NN, server_nonce, "server nonce")
    seed = _random(NSEED, server_keyshare_seed, "server keyshare seed")
    server_secret, server_keyshare = derive_diffie_hellman_key_pair(seed)
    client_id = record.client_public_key if client_identity is None else client_identity
    server_id = setup.server_public_key if server_identity is None else server_identity
    preamble = _preamble(
        client_id, ke1, server_id, credential_response, nonce, server_keyshare, context
    )
    ikm = (
        oprf.scalar_mult(server_secret, ke1.client_public_keyshare)
        + oprf.scalar_mult(setup.server_private_key, ke1.client_public_keyshare)
        + oprf.scalar_mult(server_secret, record.client_public_key)
    )
    preamble_hash = _hash(preamble)
    keys = _derive_keys(ikm, preamble_hash)
    server_mac = _mac(keys.server_mac_key, preamble_hash)
    expected_client_mac = _mac(keys.client_mac_key, _hash(preamble + server_mac))
    ke2 = KE2(evaluated, mask_nonce, masked_response, nonce, server_keyshare, server_mac)
    return ServerLoginState(expected_client_mac, keys.session_key), ke2


def client_login_finish(
    state: ClientLoginState,
    ke2: KE2,
    *,
    ksf: KSF,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    context: bytes = b"",
    expected_server_public_key: bytes | None = None,
) -> ClientLoginResult:
    """GenerateKE3 (§6.2.3): RecoverCredentials (§6.3.2.2) and the 3DH Finalize.

    Raises AuthenticationFailed for a wrong password, a tampered KE2, a server that does
    not hold the record, or (if `expected_server_public_key` is given) a different server.
    """
    _check_identity(client_identity, "client identity")
    _check_identity(server_identity, "server identity")
    _check_context(context)
    randomized_password = _randomized_password(
        state.password, state.blind, ke2.evaluated_message, ksf
    )
    masking_key = _hkdf_expand(randomized_password, b"MaskingKey", NH)
    pad = _hkdf_expand(
        masking_key, ke2.masking_nonce + b"CredentialResponsePad", _MASKED_RESPONSE_LEN
    )
    unmasked = _xor(pad, ke2.masked_response)
    server_public_key = unmasked[:NPK]

    # Recover (§4.1.3): the envelope MAC also authenticates the unmasked server key.
    client_private_key, client_public_key, export_key = _recover(
        randomized_password, server_public_key, unmasked[NPK:], server_identity, client_identity
    )
    if expected_server_public_key is not None and not std_hmac.compare_digest(
        expected_server_public_key, server_public_key
    ):
        raise AuthenticationFailed("login failed: the record names an unexpected server key")
    oprf.validate_element(server_public_key, "server public key in the envelope")

    client_id = client_public_key if client_identity is None else client_identity
    server_id = server_public_key if server_identity is None else server_identity
    preamble = _preamble(
        client_id,
        state.ke1,
        server_id,
        ke2.credential_response_bytes(),
        ke2.server_nonce,
        ke2.server_public_keyshare,
        context,
    )
    ikm = (
        oprf.scalar_mult(state.client_secret, ke2.server_public_keyshare)
        + oprf.scalar_mult(state.client_secret, server_public_key)
        + oprf.scalar_mult(client_private_key, ke2.server_public_keyshare)
    )
    preamble_hash = _hash(preamble)
    keys = _derive_keys(ikm, preamble_hash)
    expected_server_mac = _mac(keys.server_mac_key, preamble_hash)
    if not std_hmac.compare_digest(expected_server_mac, ke2.server_mac):
        raise AuthenticationFailed("login failed: the server's MAC does not verify")
    client_mac = _mac(keys.client_mac_key, _hash(preamble + ke2.server_mac))
    return ClientLoginResult(KE3(client_mac), keys.session_key, export_key, server_public_key)


def server_login_finish(state: ServerLoginState, ke3: KE3) -> bytes:
    """ServerFinish (§6.2.4, §6.4.3): check the client's MAC in constant time and return
    the session key. Raises AuthenticationFailed if it does not verify."""
    if not std_hmac.compare_digest(state.expected_client_mac, ke3.client_mac):
        raise AuthenticationFailed("login failed: the client's MAC does not verify")
    return state.session_key
