"""The client's bundle check: every refusal has its own error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.transparency import merkle
from backupvault.transparency.bundle import FleetBundle, verify_bundle
from backupvault.transparency.errors import (
    BadNoteSignature,
    EpochReplayed,
    FleetMismatch,
    InclusionProofInvalid,
    LogForked,
    LogRolledBack,
    Malformed,
    MeasurementNotAllowed,
    OperatorSignatureInvalid,
    UnknownNoteKey,
    UnknownOperatorKey,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
    WrongOrigin,
)
from backupvault.transparency.note import Checkpoint, Signer, open_checkpoint
from backupvault.transparency.record import OperatorSignedRecord, sign_record
from backupvault.transparency.witness import Witness

from .conftest import (
    FLEET_ID,
    MEASUREMENT,
    WITNESS_NAME,
    WitnessFactory,
    hpke_key,
    make_record,
    node,
)


def _bundle(
    witness: Witness, operator_key: Ed25519PrivateKey, epoch: int, **kw: object
) -> FleetBundle:
    signed = sign_record(make_record(epoch=epoch, **kw), operator_key)
    return FleetBundle.from_receipt(signed, witness.submit(signed.to_bytes()))


class Client:
    """What a client ships with and remembers between bundles."""

    def __init__(self, witness: Witness, operator_key: Ed25519PrivateKey) -> None:
        self.witness = witness
        self.operator = operator_key.public_key()
        self.witness_key = witness.signer.private_key.public_key()
        self.last: Checkpoint | None = None
        self.epochs: dict[bytes, int] = {}
        self.fetched: list[tuple[int, int]] = []

    def fetch(self, old: int, new: int) -> Sequence[bytes]:
        self.fetched.append((old, new))
        return self.witness.consistency(old, new)

    def accept(self, bundle: FleetBundle | bytes, **kw: object) -> int:
        verified = verify_bundle(
            bundle,
            self.operator,
            self.witness_key,
            WITNESS_NAME,
            self.last,
            self.fetch,
            accepted_epochs=self.epochs,
            **kw,  # type: ignore[arg-type]
        )
        self.last = verified.checkpoint
        self.epochs[verified.record.fleet_id] = verified.record.epoch
        return verified.record.epoch


def test_accepts_good_bundles_and_follows_the_log(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    client = Client(witness, operator_key)
    first = _bundle(witness, operator_key, 1)
    assert client.accept(first.to_bytes()) == 1
    assert client.accept(first) == 1  # the same bundle again: same size, same root
    for epoch in (2, 3, 4):
        assert client.accept(_bundle(witness, operator_key, epoch)) == epoch
    assert client.fetched == [(1, 2), (2, 3), (3, 4)]
    verified = verify_bundle(
        _bundle(witness, operator_key, 5),
        operator_key.public_key(),
        witness.verifier.public_key,
        WITNESS_NAME,
        None,
        allowed_measurements={MEASUREMENT},
        expected_fleet_id=FLEET_ID,
    )
    assert verified.record.fleet_id == FLEET_ID and verified.leaf_index == 4


def test_only_the_operator_signature(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    bundle = replace(_bundle(witness, operator_key, 1), cosignature=b"")
    with pytest.raises(WitnessSignatureMissing):
        Client(witness, operator_key).accept(bundle)


def test_wrong_witness_key(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    client.witness_key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(WitnessSignatureInvalid):
        client.accept(bundle)


def test_cosignature_by_another_witness(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: object
) -> None:
    """A second witness (other key) cosigns and logs it: our client does not trust it."""
    from backupvault.transparency.witness import WitnessPolicy
    from backupvault.transparency.witness_store import WitnessStore

    ours = make_witness()
    rogue_key = Ed25519PrivateKey.generate()
    rogue = Witness(
        Signer(WITNESS_NAME, rogue_key),
        WitnessStore(
            ours.store.path.with_name("rogue.sqlite"),
            WITNESS_NAME,
            rogue_key.public_key().public_bytes_raw(),
        ),
        WitnessPolicy(pin_first_seen=True),
    )
    try:
        bundle = _bundle(rogue, operator_key, 1)
        with pytest.raises(WitnessSignatureInvalid):
            Client(ours, operator_key).accept(bundle)
        # even with our witness's valid cosignature pasted in, the checkpoint is the rogue's
        ours_bundle = _bundle(ours, operator_key, 1)
        mixed = replace(bundle, cosignature=ours_bundle.cosignature)
        with pytest.raises(UnknownNoteKey):
            Client(ours, operator_key).accept(mixed)
    finally:
        rogue.store.close()


def test_other_operator_key_or_fleet(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    client.operator = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(UnknownOperatorKey):
        client.accept(bundle)
    with pytest.raises(FleetMismatch):
        Client(witness, operator_key).accept(bundle, expected_fleet_id=b"another fleet")


def test_swapped_hpke_key(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    """A node's HPKE key replaced after the operator signed (and the witness logged) it."""
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    signed = bundle.operator_signed
    nodes = [node(0, hpke=hpke_key(7)), *(node(i) for i in range(1, 5))]
    record = make_record(epoch=1, nodes=nodes)
    altered = OperatorSignedRecord(record.to_bytes(), signed.operator_public_key, signed.signature)
    with pytest.raises(OperatorSignatureInvalid):
        Client(witness, operator_key).accept(replace(bundle, signed_record=altered.to_bytes()))


def test_measurement_not_allowed(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1, measurement=b"\x66" * 32)
    with pytest.raises(MeasurementNotAllowed):
        Client(witness, operator_key).accept(bundle, allowed_measurements={MEASUREMENT})


def test_replayed_older_epoch(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    client.accept(_bundle(witness, operator_key, 2))
    # the epoch-1 record resubmitted: the witness answers with its first receipt
    replayed = _bundle(witness, operator_key, 1)
    assert replayed.tree_size == 1 and replayed.leaf_index == 0
    with pytest.raises(EpochReplayed):
        client.accept(replayed)


def test_inclusion_proof_tampering(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    for epoch in (1, 2, 3):
        bundle = _bundle(witness, operator_key, epoch)
    client = Client(witness, operator_key)
    bad_proof = bytes([bundle.proof[0] ^ 1]) + bundle.proof[1:]
    for tampered in (
        replace(bundle, proof=bad_proof),
        replace(bundle, leaf_index=0),
        replace(bundle, tree_size=4, leaf_index=2),
    ):
        with pytest.raises(InclusionProofInvalid):
            client.accept(tampered)


def _forked_witness_checkpoint(witness: Witness, size: int, salt: bytes) -> str:
    """A checkpoint the witness key signs for a tree that is not its log (a fork)."""
    fake = [merkle.leaf_hash(salt + bytes([i])) for i in range(size)]
    return Checkpoint(WITNESS_NAME, size, merkle.root_from_hashes(fake)).sign(witness.signer)


def test_forked_log_same_size(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    client.accept(bundle)
    # a second view of size 1 whose single leaf is another record (validly cosigned)
    other_signed = sign_record(make_record(epoch=1, time=99), operator_key)
    from backupvault.transparency.bundle import cosign

    other = FleetBundle(
        signed_record=other_signed.to_bytes(),
        cosignature=cosign(witness.signer.private_key, WITNESS_NAME, other_signed.to_bytes()),
        leaf_index=0,
        tree_size=1,
        proof=b"",
        checkpoint=Checkpoint(WITNESS_NAME, 1, merkle.leaf_hash(other_signed.to_bytes())).sign(
            witness.signer
        ),
    )
    with pytest.raises(LogForked):
        client.accept(other)


def test_forked_log_inconsistent_larger(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    client = Client(witness, operator_key)
    client.accept(_bundle(witness, operator_key, 1))
    client.accept(_bundle(witness, operator_key, 2))
    _bundle(witness, operator_key, 3)  # the real log grows to 3
    # the witness (or someone with its key) shows a size-3 tree that does not extend ours
    signed = sign_record(make_record(epoch=3, time=7), operator_key)
    from backupvault.transparency.bundle import cosign

    leaves = [merkle.leaf_hash(b"x"), merkle.leaf_hash(b"y"), merkle.leaf_hash(signed.to_bytes())]
    forked = FleetBundle(
        signed_record=signed.to_bytes(),
        cosignature=cosign(witness.signer.private_key, WITNESS_NAME, signed.to_bytes()),
        leaf_index=2,
        tree_size=3,
        proof=b"".join(merkle.inclusion_proof(leaves, 2)),
        checkpoint=Checkpoint(WITNESS_NAME, 3, merkle.root_from_hashes(leaves)).sign(
            witness.signer
        ),
    )
    with pytest.raises(LogForked):
        client.accept(forked)  # the real log's consistency proof does not fit this root


def test_older_checkpoint_must_be_a_prefix(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    # A bundle keeps its first receipt, so its checkpoint may be older than the newest one
    # the client saw: accepted when it is a prefix of it, refused as a fork otherwise.
    witness = make_witness()
    early = _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    client.accept(_bundle(witness, operator_key, 2))
    assert client.last is not None and client.last.size == 2
    with pytest.raises(EpochReplayed):
        client.accept(early)  # consistent (size 1 is a prefix), but an older epoch
    assert client.fetched[-1] == (1, 2)
    client.epochs.clear()
    client.last = Checkpoint(WITNESS_NAME, 2, bytes(32))  # a tree early's is not a prefix of
    with pytest.raises(LogForked):
        client.accept(early)


def test_checkpoint_problems(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    client = Client(witness, operator_key)
    text = open_checkpoint(bundle.checkpoint, witness.verifier).to_text()
    body, sig = bundle.checkpoint.rsplit(" ", 1)
    flipped = body + " " + ("B" if sig[10] == "A" else "A").join([sig[:10], sig[11:]])
    with pytest.raises(BadNoteSignature):
        client.accept(replace(bundle, checkpoint=flipped))
    other_origin = Checkpoint(
        "elsewhere.test/log", 1, open_checkpoint(bundle.checkpoint, witness.verifier).root_hash
    )
    with pytest.raises(WrongOrigin):
        client.accept(replace(bundle, checkpoint=other_origin.sign(witness.signer)))
    with pytest.raises(Malformed):
        client.accept(replace(bundle, checkpoint=text))  # no signature at all
    client.last = Checkpoint("elsewhere.test/log", 1, bytes(32))
    with pytest.raises(WrongOrigin):
        client.accept(bundle)


def test_malformed_bundles(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness()
    raw = _bundle(witness, operator_key, 1).to_bytes()
    client = Client(witness, operator_key)
    for junk in (b"", raw[:-1], raw + b"\x00", b"\x54" + b"\x00" * 40):
        with pytest.raises(Malformed):
            client.accept(junk)
    with pytest.raises(Malformed):
        replace(FleetBundle.from_bytes(raw), cosignature=b"\x00" * 10)
    with pytest.raises(Malformed):
        replace(FleetBundle.from_bytes(raw), proof=b"\x00" * 31)


def test_signature_errors_are_distinct() -> None:
    errors = {
        OperatorSignatureInvalid,
        WitnessSignatureMissing,
        WitnessSignatureInvalid,
        InclusionProofInvalid,
        LogForked,
        LogRolledBack,
        EpochReplayed,
        MeasurementNotAllowed,
        UnknownOperatorKey,
        FleetMismatch,
        WrongOrigin,
        BadNoteSignature,
        UnknownNoteKey,
    }
    assert len({e.code for e in errors}) == len(errors)


def test_bundle_and_cosignature_layout(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    """The byte layouts docs/transparency.md gives, rebuilt by hand."""
    import struct

    def blob(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    witness = make_witness()
    bundle = _bundle(witness, operator_key, 1)
    assert bundle.to_bytes() == (
        b"\x54"
        + blob(bundle.signed_record)
        + blob(bundle.cosignature)
        + struct.pack(">QQ", bundle.leaf_index, bundle.tree_size)
        + blob(bundle.proof)
        + blob(bundle.checkpoint.encode())
    )
    name = WITNESS_NAME.encode()
    message = (
        b"backupvault/v1 transparency witness cosignature\x00"
        + struct.pack(">H", len(name))
        + name
        + bundle.signed_record
    )
    witness.verifier.public_key.verify(bundle.cosignature, message)
    signed = bundle.operator_signed
    assert bundle.signed_record == (
        b"\x52" + blob(signed.record) + blob(signed.operator_public_key) + blob(signed.signature)
    )
