"""A fleet bundle built from docs/transparency.md alone: every byte of the record, the
operator's and the witness's signatures, the Merkle tree, the checkpoint note and the
bundle is written here from the spec's words with hashlib, struct and raw Ed25519, and
`verify_bundle` must accept it and read back exactly the fields that went in. Where the
code and the spec part ways (a field order, a context string, a key ID, the split of an
odd tree), this fails."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.transparency import Verifier, verify_bundle
from backupvault.transparency.errors import InclusionProofInvalid

NAME = "witness.spec/backupvault"


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def blob(data: bytes) -> bytes:
    return u32(len(data)) + data


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def node_entry(index: int) -> tuple[bytes, bytes]:
    """(NodeEntry encoding, its HPKE key field) of node `index`."""
    hpke = u16(0x0020) + raw(X25519PrivateKey.generate())  # kem id || X25519 key
    entry = (
        b"\x55"
        + u64(index)
        + u64(index + 1)  # share index x_i = index + 1
        + blob(raw(X25519PrivateKey.generate()))  # identity key
        + blob(hpke)
        + blob(raw(Ed25519PrivateKey.generate()))  # signing key
        + blob(f"https://node{index}.spec.test:7100".encode())
    )
    return entry, hpke


def checkpoint_note(signer: Ed25519PrivateKey, size: int, root: bytes) -> str:
    text = f"{NAME}\n{size}\n{base64.b64encode(root).decode()}\n"
    key_id = sha256(NAME.encode() + b"\x0a" + b"\x01" + raw(signer))[:4]
    signature = signer.sign(text.encode())
    return text + "\n" + f"\u2014 {NAME} {base64.b64encode(key_id + signature).decode()}\n"


@pytest.mark.parametrize(("size", "index"), [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (5, 1)])
def test_a_bundle_written_from_the_spec_alone_verifies(size: int, index: int) -> None:
    operator = Ed25519PrivateKey.generate()
    witness = Ed25519PrivateKey.generate()
    nodes = [node_entry(i) for i in range(3)]
    fleet_id = bytes.fromhex("5bec0001")
    measurement = sha256(b"the firmware")
    relay_key = raw(Ed25519PrivateKey.generate())
    issuer_key = raw(Ed25519PrivateKey.generate())
    record = (
        b"\x58"
        + blob(fleet_id)
        + u64(9)  # epoch
        + u64(2)  # quorum: a majority of 3
        + u64(2)  # threshold
        + u64(10)  # guess limit
        + u32(len(nodes))
        + b"".join(blob(entry) for entry, _ in nodes)
        + blob(measurement)
        + u64(1_790_000_000)  # time
        + u32(1)
        + blob(relay_key)
        + blob(b"accounts.spec.test")
        + blob(issuer_key)
        + u64(4)  # retired below: epochs 0 .. 3 are retired
    )
    context = b"backupvault/v1 transparency operator-signed deployment record\x00"
    leaf = b"\x52" + blob(record) + blob(raw(operator)) + blob(operator.sign(context + record))
    cosign_context = b"backupvault/v1 transparency witness cosignature\x00"
    cosignature = witness.sign(cosign_context + u16(len(NAME)) + NAME.encode() + leaf)

    # RFC 9162 §2.1: the log holds other leaves, ours at `index`.
    leaves = [f"another record {i}".encode() for i in range(size)]
    leaves[index] = leaf
    hashes = [sha256(b"\x00" + item) for item in leaves]

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return hashes[lo]
        k = 1 << ((hi - lo - 1).bit_length() - 1)  # the largest power of 2 below n
        return sha256(b"\x01" + mth(lo, lo + k) + mth(lo + k, hi))

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if m < k:
            return [*path(m, lo, lo + k), mth(lo + k, hi)]
        return [*path(m - k, lo + k, hi), mth(lo, lo + k)]

    proof = b"".join(path(index, 0, size))
    note = checkpoint_note(witness, size, mth(0, size))

    def fleet_bundle(claimed_index: int) -> bytes:
        return (
            b"\x54"
            + blob(leaf)
            + blob(cosignature)
            + u64(claimed_index)
            + u64(size)
            + blob(proof)
            + blob(note.encode())
        )

    bundle = fleet_bundle(index)

    key_id = sha256(NAME.encode() + b"\x0a\x01" + raw(witness))[:4]
    vkey = f"{NAME}+{key_id.hex()}+" + base64.b64encode(b"\x01" + raw(witness)).decode()
    verifier = Verifier.from_vkey(vkey)
    verified = verify_bundle(bundle, raw(operator), verifier.public_key, NAME, None)
    got = verified.record
    assert (got.fleet_id, got.epoch, got.quorum, got.threshold) == (fleet_id, 9, 2, 2)
    assert got.retired_below == 4
    assert (got.guess_limit, got.measurement, got.time) == (10, measurement, 1_790_000_000)
    assert [n.hpke_public_key for n in got.nodes] == [hpke for _, hpke in nodes]
    assert [n.share_index for n in got.nodes] == [1, 2, 3]
    assert got.relay_public_keys == [relay_key] and got.account_issuer_public_key == issuer_key
    assert got.account_issuer == "accounts.spec.test"
    assert got.to_bytes() == record
    assert verified.signed_record.to_bytes() == leaf
    assert (verified.checkpoint.size, verified.leaf_index) == (size, index)

    # The same bundle claiming another index (the proof kept) does not verify.
    for other in range(size):
        if other != index:
            with pytest.raises(InclusionProofInvalid):
                verify_bundle(fleet_bundle(other), raw(operator), verifier.public_key, NAME, None)
