"""Fleet heads: a witness's signed, timestamped word on a fleet's latest record. A
stateless client refuses a retired epoch, a stale or future head is refused, and a head
that names another record (a split view between witnesses) is refused."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from backupvault.transparency import merkle
from backupvault.transparency.errors import (
    BadNoteSignature,
    EpochRetired,
    HeadMismatch,
    MalformedNote,
    StaleHead,
    UnknownFleet,
)
from backupvault.transparency.head import (
    DEFAULT_MAX_AGE,
    MAX_CLOCK_SKEW,
    NONCE_LEN,
    check_head,
    open_head,
    sign_head,
)
from backupvault.transparency.note import Checkpoint, Signer, open_checkpoint
from backupvault.transparency.record import OperatorSignedRecord, sign_record
from backupvault.transparency.witness_http import create_app

from .conftest import FLEET_ID, WitnessFactory, make_record

NOW = 1_800_000_000


def _check(note: str, witness_signer: Signer, signed: OperatorSignedRecord, now: int) -> None:
    head = open_head(note, witness_signer.verifier)
    record = signed.deployment()
    check_head(
        head, signed.to_bytes(), record.fleet_id, record.epoch, now=now, max_age=DEFAULT_MAX_AGE
    )


def test_head_names_the_latest_record(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    first = sign_record(make_record(epoch=1), operator_key)
    witness.submit(first.to_bytes())
    note = witness.head(FLEET_ID, NOW)
    head = open_head(note, witness.verifier)
    assert (head.fleet_id, head.epoch, head.leaf_index, head.time) == (FLEET_ID, 1, 0, NOW)
    assert head.leaf_hash == merkle.leaf_hash(first.to_bytes())
    # A head is a checkpoint of the whole log (with extension lines), signed by the witness.
    assert open_checkpoint(note, witness.verifier).root_hash == head.checkpoint.root_hash
    _check(note, witness.signer, first, NOW)
    with pytest.raises(UnknownFleet):
        witness.head(b"never logged", NOW)


def test_stateless_client_refuses_a_retired_epoch(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    # Epoch 1 was retired (say, after a compromise) by logging epoch 2. A client with no
    # state is offered epoch 1's perfectly valid bundle: the witness's head refuses it.
    witness = make_witness()
    old = sign_record(make_record(epoch=1), operator_key)
    witness.submit(old.to_bytes())
    witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    with pytest.raises(EpochRetired, match=r"epoch 1 of fleet .* is retired"):
        _check(witness.head(FLEET_ID, NOW), witness.signer, old, NOW)


def test_stale_bundle_older_than_the_maximum_age_is_refused(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    signed = sign_record(make_record(epoch=1), operator_key)
    witness.submit(signed.to_bytes())
    replayed = witness.head(FLEET_ID, NOW - DEFAULT_MAX_AGE - 1)  # frozen by a relay
    with pytest.raises(StaleHead, match="more than the 86400 s"):
        _check(replayed, witness.signer, signed, NOW)
    _check(witness.head(FLEET_ID, NOW - DEFAULT_MAX_AGE), witness.signer, signed, NOW)
    with pytest.raises(StaleHead, match="in the future"):
        _check(witness.head(FLEET_ID, NOW + MAX_CLOCK_SKEW + 1), witness.signer, signed, NOW)


def test_head_naming_another_record_is_refused(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    # The operator showed this witness another record of the same epoch (a split view).
    witness = make_witness()
    shown = sign_record(make_record(epoch=1, time=5), operator_key)
    witness.submit(shown.to_bytes())
    offered = sign_record(make_record(epoch=1), operator_key)
    with pytest.raises(HeadMismatch, match="names another record"):
        _check(witness.head(FLEET_ID, NOW), witness.signer, offered, NOW)
    # … or never saw the offered (newer) record at all.
    newer = sign_record(make_record(epoch=2), operator_key)
    with pytest.raises(HeadMismatch):
        _check(witness.head(FLEET_ID, NOW), witness.signer, newer, NOW)


def test_altered_or_malformed_heads_are_refused(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    signed = sign_record(make_record(epoch=1), operator_key)
    witness.submit(signed.to_bytes())
    note = witness.head(FLEET_ID, NOW)
    redated = note.replace(f"time {NOW}", f"time {NOW + 1000}")
    with pytest.raises(BadNoteSignature):
        open_head(redated, witness.verifier)
    plain = Checkpoint(witness.name, 1, merkle.leaf_hash(signed.to_bytes())).sign(witness.signer)
    with pytest.raises(MalformedNote, match="two extension lines"):
        open_head(plain, witness.verifier)
    bad_index = sign_head(
        witness.signer, 1, bytes(32), FLEET_ID, 1, 1, bytes(32), NOW
    )  # leaf 1 of a tree of 1
    with pytest.raises(MalformedNote, match="out of range"):
        open_head(bad_index, witness.verifier)


def test_a_head_signs_back_the_clients_nonce(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    """A client that must know the record is current now sends a nonce (client/trust.py,
    `_confirm_live`): the head carries it as a third line, under the signature, so a head
    signed earlier cannot answer a later challenge."""
    witness = make_witness()
    signed = sign_record(make_record(epoch=1), operator_key)
    witness.submit(signed.to_bytes())
    nonce = bytes(range(NONCE_LEN))
    note = witness.head(FLEET_ID, NOW, nonce)
    assert f"\nnonce {nonce.hex()}\n" in note
    head = open_head(note, witness.verifier)
    assert head.nonce == nonce and head.epoch == 1
    _check(note, witness.signer, signed, NOW)  # otherwise a head like any other
    assert open_head(witness.head(FLEET_ID, NOW), witness.verifier).nonce == b""
    swapped = note.replace(nonce.hex(), bytes(NONCE_LEN).hex())
    with pytest.raises(BadNoteSignature):
        open_head(swapped, witness.verifier)
    with pytest.raises(MalformedNote):
        witness.head(FLEET_ID, NOW, b"short")
    lines = head.extensions()
    for third in ("nonce " + "AB" * NONCE_LEN, "nonce " + "ab" * (NONCE_LEN + 1), "time 5"):
        odd = Checkpoint(
            witness.name, head.checkpoint.size, head.checkpoint.root_hash, (*lines[:2], third)
        )
        with pytest.raises(MalformedNote, match="not a fleet head"):
            open_head(odd.sign(witness.signer), witness.verifier)
    four = Checkpoint(witness.name, head.checkpoint.size, head.checkpoint.root_hash, (*lines, "x"))
    with pytest.raises(MalformedNote, match="two extension lines"):
        open_head(four.sign(witness.signer), witness.verifier)


def test_head_over_http(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness()
    signed = sign_record(make_record(epoch=1), operator_key)
    witness.submit(signed.to_bytes())
    with TestClient(create_app(witness), raise_server_exceptions=False) as http:
        answer = http.get("/v1/head", params={"fleet": FLEET_ID.hex()})
        assert answer.status_code == 200
        _check(answer.text, witness.signer, signed, int(time.time()))
        assert http.get("/v1/head", params={"fleet": "00"}).status_code == 404
        for bad in ("", "XYZ", "abc", "0" * 130):
            refused = http.get("/v1/head", params={"fleet": bad})
            assert refused.status_code == 400 and refused.json()["error"] == "bad_query"
        assert http.get("/v1/head").status_code == 400
        nonce = bytes(range(NONCE_LEN)).hex()
        answer = http.get("/v1/head", params={"fleet": FLEET_ID.hex(), "nonce": nonce})
        assert answer.status_code == 200
        assert open_head(answer.text, witness.verifier).nonce.hex() == nonce
        for bad in ("XYZ", "ab", nonce.upper(), nonce + "00", "g" * 32):
            refused = http.get("/v1/head", params={"fleet": FLEET_ID.hex(), "nonce": bad})
            assert refused.status_code == 400 and refused.json()["error"] == "bad_query"


def test_a_head_with_a_non_canonical_leaf_hash_is_refused(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    """Base64 in a note must be canonical (docs/transparency.md), as the checkpoint's root
    hash is: a leaf hash whose unused low bits are set decodes to the same 32 bytes, so
    two texts (and signatures) would say the same thing."""
    import base64

    witness = make_witness()
    signed = sign_record(make_record(epoch=1), operator_key)
    witness.submit(signed.to_bytes())
    head = open_head(witness.head(FLEET_ID, NOW), witness.verifier)
    canonical = base64.b64encode(head.leaf_hash).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(canonical[-2])
    assert last & 3 == 0  # 32 bytes: the last character's 2 low bits are unused
    loose = canonical[:-2] + alphabet[last | 1] + "="
    assert base64.b64decode(loose) == head.leaf_hash
    lines = head.extensions()
    extensions = (lines[0].replace(canonical, loose), lines[1])
    note = Checkpoint(witness.name, head.checkpoint.size, head.checkpoint.root_hash, extensions)
    with pytest.raises(MalformedNote, match="canonical"):
        open_head(note.sign(witness.signer), witness.verifier)
