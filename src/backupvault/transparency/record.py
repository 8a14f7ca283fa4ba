"""The fleet deployment record and the operator's signature over it.

Encodings use `backupvault.codec` (u64 big-endian integers, u32-length-prefixed bytes and
strings, nested messages as length-prefixed blobs); docs/transparency.md spells every byte
out. Decoding is strict and validates every field, so a record that decodes is well-formed:

    DeploymentRecord (tag 88; version 4: per-node keys, no fleet-wide secret at all, and
    the older epochs it retires)
      fleet_id        bytes   1-64 bytes
      epoch           u64     monotonic per fleet id (the witness enforces it)
      quorum          u64     a majority: n//2 < quorum <= n
      threshold       u64     t, the shares needed to evaluate: n//2 < t <= n
      guess_limit     u64     1 .. MAX_GUESS_LIMIT (the default limit for new entries)
      nodes           list    1 .. MAX_NODES NodeEntry, indices 0 .. n-1 in order
      measurement     bytes   32 (see measure.py)
      time            u64     unix seconds
      relay_public_keys list  1 .. MAX_RELAYS bytes (32 each, Ed25519): relays the nodes answer
      account_issuer  str     1-256 bytes: the `iss` of account tokens
      account_issuer_public_key bytes 32 (Ed25519): checks fleet tokens inside the seal
      retired_below   u64     0 .. epoch: this fleet's epochs below it are retired, and no
                              client asks them for an entry (0: none)
    NodeEntry (tag 85)
      index           u64     the node's slot, 0 .. n-1
      share_index     u64     x_i = index + 1: the node's fixed Shamir share index
      identity_public_key bytes 32 (X25519): node-to-node channel
      hpke_public_key bytes   NodePublicKey.to_bytes(): kem id (u16) || key bytes; clients
                              seal requests for this node to it (every node the same KEM)
      signing_public_key bytes 32 (Ed25519): the node's signatures (share acknowledgements)
      url             str

Version 3 records (tag 87: the same fields without `retired_below`) are read as retiring
nothing, byte for byte (the older epochs a client migrates from were logged as such).
Older records are refused with a message saying so: version 1 (tags 80, 81: one fleet
HPKE key for every node) and version 2 (tag 86: version 3's fields plus the removed
single-seed flow's `opaque_server_public_key` after `nodes`).

    OperatorSignedRecord (tag 82): record bytes (a DeploymentRecord encoding),
      operator_public_key bytes (32, Ed25519), signature bytes (64)
      signature = Ed25519(operator key, OPERATOR_CONTEXT || record)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.codec import Message
from backupvault.crypto.ed25519 import check_public_key
from backupvault.crypto.seal import Kem, NodePublicKey
from backupvault.crypto.x25519 import check_public_key as check_x25519_key
from backupvault.errors import InvalidInput
from backupvault.transparency.errors import (
    Malformed,
    OperatorSignatureInvalid,
    UnknownOperatorKey,
)

MAX_FLEET_ID = 64
MAX_NODES = 255
MAX_URL = 2048
MAX_RELAYS = 64
MAX_ISSUER = 256
#: Same bound as the vault firmware's (hsm.state.MAX_GUESS_LIMIT); repeated, not imported,
#: because this package must not depend on hsm.
MAX_GUESS_LIMIT = 100
KEY_LEN = 32
MEASUREMENT_LEN = 32
ED25519_SIGNATURE_LEN = 64
OPERATOR_CONTEXT = b"backupvault/v1 transparency operator-signed deployment record\x00"

_URL = re.compile(r"https?://[\x21-\x7e]+")


class StrictMessage(Message):
    """Turns the codec's InvalidInput into Malformed (still an InvalidInput)."""

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise Malformed(f"a {cls.__name__} is bytes")
        try:
            return super().from_bytes(bytes(data))
        except Malformed:
            raise
        except InvalidInput as err:
            raise Malformed(f"malformed {cls.__name__}: {err.message}") from None


def _bytes(value: object, what: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, bytes) or not lo <= len(value) <= hi:
        size = str(lo) if lo == hi else f"{lo}-{hi}"
        raise Malformed(f"{what} must be {size} bytes")
    return value


def _ed25519(value: object, what: str) -> bytes:
    """An Ed25519 key the record names: a real one (crypto/ed25519.py says why)."""
    try:
        return check_public_key(_bytes(value, f"{what} (Ed25519)", KEY_LEN, KEY_LEN), what)
    except InvalidInput as err:
        raise Malformed(err.message) from None


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Malformed(f"{what} must be a whole number in {lo} .. {hi}")
    return value


U64_MAX = (1 << 64) - 1


#: Tags of older records, refused with a clear message: version 1 (one fleet-wide HPKE
#: key) and version 2 (the single-seed flow's OPAQUE server key).
_V1_RECORD_TAGS = frozenset({80, 81})
_V2_RECORD_TAG = 86
_V3_RECORD_TAG = 87


@dataclass(frozen=True)
class NodeEntry(StrictMessage):
    TAG: ClassVar[int] = 85

    index: int
    share_index: int
    identity_public_key: bytes
    hpke_public_key: bytes
    signing_public_key: bytes
    url: str

    def __post_init__(self) -> None:
        _int(self.index, "a node index", 0, MAX_NODES - 1)
        if self.share_index != self.index + 1:
            raise Malformed(f"node {self.index}'s share index must be {self.index + 1}")
        _bytes(self.identity_public_key, "a node identity public key (X25519)", KEY_LEN, KEY_LEN)
        try:
            # X25519 takes any 32 bytes as a key; a small-order point gives the all-zero
            # secret, and every other node's peer channel refused to start on it.
            check_x25519_key(self.identity_public_key, f"node {self.index}'s identity key")
        except InvalidInput as err:
            raise Malformed(err.message) from None
        _bytes(self.hpke_public_key, "a node HPKE public key", 2, 1 << 16)
        try:
            NodePublicKey.from_bytes(self.hpke_public_key)
        except InvalidInput as err:
            raise Malformed(f"node {self.index}: {err.message}") from None
        _ed25519(self.signing_public_key, f"node {self.index}'s signing key")
        if not isinstance(self.url, str) or len(self.url) > MAX_URL or not _URL.fullmatch(self.url):
            raise Malformed(
                f"node {self.index}'s URL must be http(s)://… printable ASCII without spaces,"
                f" at most {MAX_URL} characters"
            )


def majority(node_count: int) -> int:
    return node_count // 2 + 1


@dataclass(frozen=True)
class DeploymentRecord(StrictMessage):
    """What the operator claims a fleet is; see the module docstring for the fields."""

    TAG: ClassVar[int] = 88

    fleet_id: bytes
    epoch: int
    quorum: int
    threshold: int
    guess_limit: int
    nodes: list[NodeEntry]
    measurement: bytes
    time: int
    relay_public_keys: list[bytes]
    account_issuer: str
    account_issuer_public_key: bytes
    #: This fleet's epochs below this one are retired: clients never ask them for an entry
    #: (a retired epoch's nodes may be anyone's by now; docs/transparency.md, "Retiring an
    #: epoch"). 0 retires none.
    retired_below: int = 0

    def __post_init__(self) -> None:
        _bytes(self.fleet_id, "the fleet id", 1, MAX_FLEET_ID)
        if not isinstance(self.relay_public_keys, list) or not (
            1 <= len(self.relay_public_keys) <= MAX_RELAYS
        ):
            raise Malformed(f"a fleet lists 1 .. {MAX_RELAYS} relay keys")
        for key in self.relay_public_keys:
            _ed25519(key, "a relay public key")
        if not isinstance(self.account_issuer, str) or not (
            1 <= len(self.account_issuer.encode()) <= MAX_ISSUER
        ):
            raise Malformed(f"the account issuer is 1 .. {MAX_ISSUER} bytes")
        _ed25519(self.account_issuer_public_key, "the account issuer's public key")
        _int(self.epoch, "the epoch", 0, U64_MAX)
        _int(self.time, "the time", 0, U64_MAX)
        _int(self.retired_below, "the first epoch not retired (retired_below)", 0, self.epoch)
        _int(self.guess_limit, "the guess limit", 1, MAX_GUESS_LIMIT)
        if not isinstance(self.nodes, list) or not 1 <= len(self.nodes) <= MAX_NODES:
            raise Malformed(f"a fleet has 1 .. {MAX_NODES} nodes")
        n = len(self.nodes)
        for position, node in enumerate(self.nodes):
            if not isinstance(node, NodeEntry) or node.index != position:
                raise Malformed("nodes must be listed by index, 0 .. n-1, each once")
        if len({node.identity_public_key for node in self.nodes}) != n:
            raise Malformed("two nodes share an identity key")
        if len({node.hpke_public_key for node in self.nodes}) != n:
            raise Malformed("two nodes share an HPKE key")
        if len({node.signing_public_key for node in self.nodes}) != n:
            raise Malformed("two nodes share a signing key")
        if len({NodePublicKey.from_bytes(node.hpke_public_key).kem for node in self.nodes}) != 1:
            raise Malformed("every node's HPKE key must use the same KEM")
        if len({node.url for node in self.nodes}) != n:
            raise Malformed("two nodes share a URL")
        _int(self.quorum, "the quorum (a majority of the nodes)", n // 2 + 1, n)
        _int(self.threshold, "the threshold (a majority of the nodes)", n // 2 + 1, n)
        _bytes(self.measurement, "the firmware measurement", MEASUREMENT_LEN, MEASUREMENT_LEN)

    @classmethod
    def create(
        cls,
        *,
        fleet_id: bytes,
        epoch: int,
        guess_limit: int,
        nodes: Iterable[tuple[int, bytes, bytes, bytes, str]],
        measurement: bytes,
        time: int,
        relay_public_keys: Iterable[bytes],
        account_issuer: str,
        account_issuer_public_key: bytes,
        quorum: int | None = None,
        retired_below: int = 0,
    ) -> DeploymentRecord:
        """A record from plain values; `nodes` are (index, identity key, HPKE key, signing
        key, url) in any order; `quorum` defaults to a majority of the nodes, the threshold
        is always a majority."""
        entries = sorted(
            (NodeEntry(i, i + 1, ident, hpke, sign, url) for i, ident, hpke, sign, url in nodes),
            key=lambda e: e.index,
        )
        return cls(
            fleet_id=fleet_id,
            epoch=epoch,
            quorum=majority(len(entries)) if quorum is None else quorum,
            threshold=majority(len(entries)),
            guess_limit=guess_limit,
            nodes=entries,
            measurement=measurement,
            time=time,
            relay_public_keys=list(relay_public_keys),
            account_issuer=account_issuer,
            account_issuer_public_key=account_issuer_public_key,
            retired_below=retired_below,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        first = data[0] if isinstance(data, bytes | bytearray | memoryview) and data else None
        if first == _V3_RECORD_TAG and cls is DeploymentRecord:
            return DeploymentRecordV3.from_bytes(data)  # type: ignore[return-value]
        if first == _V2_RECORD_TAG:
            raise Malformed(
                "this deployment record is from an older fleet version (it names the removed"
                " single-seed flow's OPAQUE server key); clients of this version need a"
                " newer record: redeploy the fleet (`backupvault fleet deploy`)"
            )
        if first in _V1_RECORD_TAGS:
            raise Malformed(
                "this deployment record is from an older fleet version (one HPKE key for the"
                " whole fleet); clients of this version need per-node keys: redeploy the fleet"
                " (`backupvault fleet deploy`) after `backupvault node init` on every node"
            )
        return super().from_bytes(data)

    @property
    def node_public_keys(self) -> list[NodePublicKey]:
        """Each node's HPKE key, by index: a request for node i is sealed to the i-th."""
        return [NodePublicKey.from_bytes(node.hpke_public_key) for node in self.nodes]

    @property
    def kem(self) -> Kem:
        """The KEM every node's HPKE key uses (the record refuses a mix)."""
        return self.node_public_keys[0].kem

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: a short name for this exact record."""
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True)
class DeploymentRecordV3(DeploymentRecord):
    """A version 3 record (tag 87), as logged before records could retire epochs: read as
    retiring none, and encoded as it was signed (no `retired_below`), so its bytes and
    digest stay those of the logged leaf. Only ever decoded: new records are version 4."""

    TAG: ClassVar[int] = _V3_RECORD_TAG

    @classmethod
    def _field_types(cls) -> list[tuple[str, Any]]:
        return [(name, kind) for name, kind in super()._field_types() if name != "retired_below"]


def raw_public_key(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> bytes:
    """The 32-byte encoding of an Ed25519 public key (given as a key, a private key or bytes)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _bytes(key, "an Ed25519 public key", KEY_LEN, KEY_LEN)


def operator_message(record: bytes) -> bytes:
    return OPERATOR_CONTEXT + record


@dataclass(frozen=True)
class OperatorSignedRecord(StrictMessage):
    """A deployment record, the operator key that claims it, and that key's signature.

    `record` keeps the exact bytes that were signed. This encoding is what the witness
    logs: one leaf of its Merkle tree per OperatorSignedRecord.
    """

    TAG: ClassVar[int] = 82

    record: bytes
    operator_public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _bytes(self.record, "the record", 1, 1 << 20)
        # A small-order key verifies forged signatures: a first-seen witness would pin it
        # and then log whatever anyone submits for that fleet.
        _ed25519(self.operator_public_key, "the operator public key")
        _bytes(
            self.signature, "the operator signature", ED25519_SIGNATURE_LEN, ED25519_SIGNATURE_LEN
        )

    def deployment(self) -> DeploymentRecord:
        """The record, parsed and validated (its signature is NOT checked here)."""
        return DeploymentRecord.from_bytes(self.record)

    def verify(self, operator_key: Ed25519PublicKey | bytes) -> DeploymentRecord:
        """The record, if `operator_key` is the key named here and its signature verifies."""
        expected = raw_public_key(operator_key)
        if self.operator_public_key != expected:
            raise UnknownOperatorKey(
                "the record is signed by another operator key than the one we accept",
                hint=f"signed by {self.operator_public_key.hex()}, expected {expected.hex()}",
            )
        try:
            Ed25519PublicKey.from_public_bytes(expected).verify(
                self.signature, operator_message(self.record)
            )
        except InvalidSignature:
            raise OperatorSignatureInvalid(
                "the operator's signature over the deployment record does not verify",
                hint="the record was altered after signing, or signed by another key",
            ) from None
        return self.deployment()


def sign_record(record: DeploymentRecord, operator_key: Ed25519PrivateKey) -> OperatorSignedRecord:
    """The operator's signature over `record` (Ed25519, domain-separated)."""
    data = record.to_bytes()
    return OperatorSignedRecord(
        record=data,
        operator_public_key=raw_public_key(operator_key),
        signature=operator_key.sign(operator_message(data)),
    )
