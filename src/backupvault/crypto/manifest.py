"""The threshold vault's per-entry manifest M, and the client's registration and opening
of an entry with it (docs/threshold.md, "Manifest").

M holds everything about an entry except the key shares: the Feldman commitments of the
entry's OPRF key, the KSF parameters, the OPAQUE record (RFC 9807 §5.1, byte-exact), the
owner's public key pk_auth and the wrapped root key. Every node stores the same M; a
client uses only an M that at least t nodes return byte-identically (`agreed_manifest`).

Encoding (integers big-endian), in this order:

    magic           4   "BVM1"
    version         8   u64, 1 for a new entry, +1 per password change
    fleet_id_len    2   u16, 1..65535
    fleet_id
    account_len     1   u8, 1..255
    account             UTF-8
    entry_len       1   u8, 1..255
    entry               UTF-8
    nodes           1   u8, N (share indices are 1..N)
    threshold       1   u8, t (1 ≤ t ≤ N)
    ksf_len         2   u16
    ksf                 Argon2idParams encoding (crypto/ksf.py)
    C_0            32   k·G
    ---- end of the bound part: binding = SHA-512("backupvault/manifest/v1" ‖ bound part)
    epoch           8   u64, the node-set epoch of the deployment record
    C_1 … C_{t−1} 32·(t−1)
    record        192   client_public_key (32) ‖ masking_key (64) ‖ envelope (96)
    pk_auth        32   Ed25519 public key (crypto/owner.py)
    wrapped_len     2   u16
    wrapped_root_key    nonce (12) ‖ AES-256-GCM(wrap key, nonce, root key, aad = binding)

The envelope is made with server_public_key = C_0 and server_identity = binding, so the
password authenticates the bound part. The epoch and C_1 … C_{t−1} stay outside it, so a
proactive refresh (new shares of the same k for a new node set) can change them without
the password; they are guarded by each node's share check and the t-identical rule. The
bound part cannot include pk_auth and the wrapped root key (both come from export_key,
which Store makes together with the envelope); the client authenticates them after
opening the envelope: pk_auth must equal the key it derives from export_key, and the
wrapped root key is AEAD under a key from export_key with the binding as associated data.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from backupvault.crypto import opaque, oprf, owner, threshold
from backupvault.crypto.ed25519 import check_public_key
from backupvault.crypto.ksf import Argon2idParams
from backupvault.crypto.opaque import RegistrationRecord
from backupvault.errors import AuthenticationFailed, InvalidInput, WrongKey

MAGIC = b"BVM1"
BINDING_LABEL = b"backupvault/manifest/v1"
WRAP_INFO = b"backupvault/v2 wrap root key"
ROOT_KEY_LEN = 32
_NONCE_LEN = 12
_U64_MAX = 2**64 - 1
MANIFESTS_PARSED = 256


def _name(value: str, what: str) -> bytes:
    encoded = value.encode() if isinstance(value, str) else b""
    if not 1 <= len(encoded) <= 255:
        raise InvalidInput(f"manifest {what}: 1..255 bytes of UTF-8")
    return encoded


@dataclass(frozen=True)
class Manifest:
    version: int
    epoch: int
    fleet_id: bytes
    account: str
    entry: str
    nodes: int
    commitments: threshold.Commitments
    ksf: Argon2idParams
    record: RegistrationRecord
    pk_auth: bytes
    wrapped_root_key: bytes

    def __post_init__(self) -> None:
        self.bound_part()  # validates the bound fields
        if (
            not isinstance(self.epoch, int)
            or isinstance(self.epoch, bool)
            or not (0 <= self.epoch <= _U64_MAX)
        ):
            raise InvalidInput("manifest epoch: an integer 0..2^64-1")
        check_public_key(self.pk_auth, "manifest pk_auth")
        if not isinstance(self.wrapped_root_key, bytes) or len(self.wrapped_root_key) != (
            _NONCE_LEN + ROOT_KEY_LEN + 16
        ):
            raise InvalidInput("manifest wrapped root key: expected 60 bytes")

    @property
    def threshold(self) -> int:
        return self.commitments.threshold

    def bound_part(self) -> bytes:
        return encode_bound_part(
            self.version,
            self.fleet_id,
            self.account,
            self.entry,
            self.nodes,
            self.commitments,
            self.ksf,
        )

    def binding(self) -> bytes:
        """H(bound part): the envelope's server_identity."""
        return binding_of(self.bound_part())

    def to_bytes(self) -> bytes:
        return (
            self.bound_part()
            + struct.pack(">Q", self.epoch)
            + b"".join(self.commitments.elements[1:])
            + self.record.to_bytes()
            + self.pk_auth
            + struct.pack(">H", len(self.wrapped_root_key))
            + self.wrapped_root_key
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return _parsed(bytes(data))


@functools.lru_cache(maxsize=MANIFESTS_PARSED)
def _parsed(data: bytes) -> Manifest:
    """`Manifest.from_bytes`, remembered for the latest manifests: a node parses the M in
    the value it holds several times for one request, and each parse validates t
    ristretto255 points. The manifest is immutable, so sharing it is safe."""
    reader = _Reader(data)
    if reader.take(4) != MAGIC:
        raise InvalidInput("manifest: wrong magic (not a BVM1 manifest)")
    version, fleet_len = struct.unpack(">QH", reader.take(10))
    fleet_id = reader.take(fleet_len)
    account = reader.text(reader.take(1)[0])
    entry = reader.text(reader.take(1)[0])
    nodes, t = reader.take(2)
    threshold.check_threshold(t, nodes)
    ksf = Argon2idParams.from_bytes(reader.take(struct.unpack(">H", reader.take(2))[0]))
    public_key = reader.take(oprf.ELEMENT_LEN)
    (epoch,) = struct.unpack(">Q", reader.take(8))
    higher = reader.take(oprf.ELEMENT_LEN * (t - 1))
    commitments = threshold.Commitments.from_bytes(public_key + higher)
    record = RegistrationRecord.from_bytes(reader.take(RegistrationRecord.ENCODED_LEN))
    pk_auth = reader.take(owner.PUBLIC_KEY_LEN)
    wrapped = reader.take(struct.unpack(">H", reader.take(2))[0])
    reader.end()
    return Manifest(
        version,
        epoch,
        fleet_id,
        account,
        entry,
        nodes,
        commitments,
        ksf,
        record,
        pk_auth,
        wrapped,
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise InvalidInput("manifest must be bytes")
        self._data = bytes(data)
        self._pos = 0

    def take(self, length: int) -> bytes:
        if self._pos + length > len(self._data):
            raise InvalidInput("manifest: truncated")
        chunk = self._data[self._pos : self._pos + length]
        self._pos += length
        return chunk

    def text(self, length: int) -> str:
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            raise InvalidInput("manifest: account or entry is not UTF-8") from None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise InvalidInput("manifest: trailing bytes")


def encode_bound_part(
    version: int,
    fleet_id: bytes,
    account: str,
    entry: str,
    nodes: int,
    commitments: threshold.Commitments,
    ksf: Argon2idParams,
) -> bytes:
    """The bound part's bytes (module docstring); InvalidInput for any field out of range."""
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= _U64_MAX:
        raise InvalidInput("manifest version: an integer 0..2^64-1")
    if not isinstance(fleet_id, bytes) or not 1 <= len(fleet_id) <= 0xFFFF:
        raise InvalidInput("manifest fleet id: 1..65535 bytes")
    threshold.check_threshold(commitments.threshold, nodes)
    account_bytes, entry_bytes, ksf_bytes = (
        _name(account, "account"),
        _name(entry, "entry"),
        ksf.to_bytes(),
    )
    return b"".join(
        (
            MAGIC,
            struct.pack(">QH", version, len(fleet_id)),
            fleet_id,
            bytes([len(account_bytes)]),
            account_bytes,
            bytes([len(entry_bytes)]),
            entry_bytes,
            bytes([nodes, commitments.threshold]),
            struct.pack(">H", len(ksf_bytes)),
            ksf_bytes,
            commitments.public_key,
        )
    )


def binding_of(bound_part: bytes) -> bytes:
    return hashlib.sha512(BINDING_LABEL + bound_part).digest()


def _wrap_key(export_key: bytes) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA512(), length=32, info=WRAP_INFO).derive(export_key)


def agreed_manifest(answers: Mapping[int, bytes], threshold_count: int) -> Manifest:
    """The t-identical rule: the manifest that at least `threshold_count` nodes (t from the
    signed deployment record, never from a manifest) returned byte for byte. Fewer than t
    hostile nodes can never reach it with a forged manifest; with 2t > N, two different
    manifests cannot both reach it."""
    tally: dict[bytes, list[int]] = {}
    for node, encoded in answers.items():
        tally.setdefault(bytes(encoded), []).append(node)
    agreed = [encoded for encoded, nodes in tally.items() if len(nodes) >= threshold_count]
    if len(agreed) != 1:
        counts = sorted((len(nodes) for nodes in tally.values()), reverse=True)
        raise AuthenticationFailed(
            f"no manifest is returned identically by {threshold_count} nodes "
            f"(agreement counts: {counts or [0]})",
            hint="try again when more vault nodes answer",
        )
    manifest = Manifest.from_bytes(agreed[0])
    if manifest.threshold != threshold_count:
        raise AuthenticationFailed(
            f"the agreed manifest has threshold {manifest.threshold}, the fleet {threshold_count}"
        )
    return manifest


@dataclass(frozen=True, repr=False)
class Registration:
    """What the client sends at registration: M for every node, share i sealed to node i
    (the caller seals), and export_key for its own use."""

    manifest: Manifest
    shares: tuple[threshold.KeyShare, ...]
    export_key: bytes

    def __repr__(self) -> str:
        return f"Registration(version={self.manifest.version}, <secrets hidden>)"


def register(
    password: bytes,
    root_key: bytes,
    *,
    fleet_id: bytes,
    account: str,
    entry: str,
    epoch: int,
    nodes: int,
    threshold_count: int,
    ksf: Argon2idParams,
    version: int = 1,
) -> Registration:
    """The client's whole registration computation: deal a fresh OPRF key, compute the OPRF
    output itself (no node evaluates at registration), make the envelope bound to the
    manifest's bound part, derive pk_auth, wrap the root key. k and the polynomial are dropped."""
    if not isinstance(password, bytes):
        raise InvalidInput("password must be bytes (encode text as UTF-8)")
    if len(root_key) != ROOT_KEY_LEN:
        raise InvalidInput(f"root key: expected {ROOT_KEY_LEN} bytes")
    dealing = threshold.deal(threshold_count, nodes)
    oprf_output = oprf.evaluate(dealing.key, password)
    binding = binding_of(
        encode_bound_part(version, fleet_id, account, entry, nodes, dealing.commitments, ksf)
    )
    stored = opaque.store_envelope(
        oprf_output,
        ksf=ksf,
        server_public_key=dealing.commitments.public_key,
        server_identity=binding,
    )
    nonce = os.urandom(_NONCE_LEN)
    wrapped = nonce + AESGCM(_wrap_key(stored.export_key)).encrypt(nonce, root_key, binding)
    manifest = Manifest(
        version,
        epoch,
        fleet_id,
        account,
        entry,
        nodes,
        dealing.commitments,
        ksf,
        stored.record,
        owner.owner_public_key(stored.export_key),
        wrapped,
    )
    return Registration(manifest, dealing.shares, stored.export_key)


def open_entry(manifest: Manifest, oprf_output: bytes) -> tuple[bytes, bytes]:
    """(export_key, root_key) from the combined OPRF output. Raises WrongKey if the
    password is wrong, AuthenticationFailed if the manifest was altered."""
    try:
        export_key = opaque.recover_envelope(
            oprf_output,
            manifest.record,
            ksf=manifest.ksf,
            server_public_key=manifest.commitments.public_key,
            server_identity=manifest.binding(),
        )
    except AuthenticationFailed:
        raise WrongKey(
            "the password is wrong, or the manifest the nodes agreed on was altered",
            hint="check the password; each wrong try uses one of the entry's guesses",
        ) from None
    if not hmac.compare_digest(owner.owner_public_key(export_key), manifest.pk_auth):
        raise AuthenticationFailed("the manifest's pk_auth is not the owner's key")
    try:
        root_key = AESGCM(_wrap_key(export_key)).decrypt(
            manifest.wrapped_root_key[:_NONCE_LEN],
            manifest.wrapped_root_key[_NONCE_LEN:],
            manifest.binding(),
        )
    except InvalidTag:
        raise AuthenticationFailed("the manifest's wrapped root key does not open") from None
    return export_key, root_key
