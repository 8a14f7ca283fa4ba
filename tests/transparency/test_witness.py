"""The witness core and its SQLite store: policy checks, persistence, append-only history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.crypto.seal import Kem
from backupvault.errors import InvalidInput
from backupvault.transparency import merkle
from backupvault.transparency.bundle import FleetBundle, split_hashes
from backupvault.transparency.errors import (
    EpochReplayed,
    Malformed,
    MeasurementNotAllowed,
    OperatorSignatureInvalid,
    RetirementWithdrawn,
    UnknownFleet,
    UnknownOperatorKey,
    WitnessRolledBack,
    WitnessStoreCorrupt,
    WitnessStoreInUse,
)
from backupvault.transparency.note import open_checkpoint
from backupvault.transparency.record import (
    OperatorSignedRecord,
    operator_message,
    raw_public_key,
    sign_record,
)
from backupvault.transparency.witness import (
    MAX_LEAVES_PAGE,
    MAX_LEAVES_PAGE_BYTES,
    WitnessConfig,
    WitnessPolicy,
)
from backupvault.transparency.witness_store import WitnessStore

from .conftest import (
    FLEET_ID,
    MEASUREMENT,
    WITNESS_NAME,
    WitnessFactory,
    hpke_key,
    make_record,
    node,
)


def test_submit_returns_a_receipt_that_checks(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    for epoch in (1, 2, 5):
        signed = sign_record(make_record(epoch=epoch), operator_key)
        receipt = witness.submit(signed.to_bytes())
        checkpoint = open_checkpoint(receipt.checkpoint, witness.verifier)
        assert checkpoint.size == receipt.tree_size == receipt.leaf_index + 1
        merkle.verify_inclusion(
            merkle.leaf_hash(signed.to_bytes()),
            receipt.leaf_index,
            receipt.tree_size,
            split_hashes(receipt.proof),
            checkpoint.root_hash,
        )
        FleetBundle.from_receipt(signed, receipt)  # well-formed
    assert witness.store.size == 3
    # the same signed record again: no new entry, and the receipt first given, byte for
    # byte (a resubmission refreshes nothing)
    first = witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    assert first.leaf_index == 1 and first.tree_size == 2 and witness.store.size == 3
    witness.store.close()
    reopened = make_witness()
    again = reopened.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    assert again.to_bytes() == first.to_bytes()


def test_a_retired_epoch_stays_retired(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    """Once a record retires the epochs below R, no later record of the fleet may retire
    fewer: it would send clients back to nodes that may be anyone's by now. Other fleets
    are not held to it, and a fleet whose last record is of version 3 retired nothing."""
    witness = make_witness(
        policy=WitnessPolicy(
            operators={
                FLEET_ID: raw_public_key(operator_key),
                b"other": raw_public_key(operator_key),
            }
        )
    )
    v3 = make_record(epoch=1).to_bytes()
    v3 = b"\x57" + v3[1:-8]
    witness.submit(
        OperatorSignedRecord(
            v3, raw_public_key(operator_key), operator_key.sign(operator_message(v3))
        ).to_bytes()
    )
    witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    witness.submit(sign_record(make_record(epoch=4, retired_below=3), operator_key).to_bytes())
    size = witness.store.size
    for retired_below in (0, 2):
        with pytest.raises(RetirementWithdrawn, match="retired its epochs below 3"):
            witness.submit(
                sign_record(
                    make_record(epoch=5, retired_below=retired_below), operator_key
                ).to_bytes()
            )
    assert witness.store.size == size  # nothing logged
    witness.submit(sign_record(make_record(epoch=5, retired_below=3), operator_key).to_bytes())
    witness.submit(sign_record(make_record(epoch=6, retired_below=6), operator_key).to_bytes())
    other = make_record(fleet_id=b"other", epoch=9)
    witness.submit(sign_record(other, operator_key).to_bytes())


def test_policy_refusals(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness(allowed_measurements=frozenset({MEASUREMENT}))
    witness.submit(sign_record(make_record(epoch=3), operator_key).to_bytes())
    with pytest.raises(EpochReplayed):
        witness.submit(sign_record(make_record(epoch=3, time=5), operator_key).to_bytes())
    with pytest.raises(EpochReplayed):
        witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    with pytest.raises(MeasurementNotAllowed):
        witness.submit(
            sign_record(make_record(epoch=4, measurement=b"\x07" * 32), operator_key).to_bytes()
        )
    mallory = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownOperatorKey):
        witness.submit(sign_record(make_record(epoch=9), mallory).to_bytes())
    with pytest.raises(UnknownFleet):
        witness.submit(sign_record(make_record(fleet_id=b"other"), operator_key).to_bytes())
    good = sign_record(make_record(epoch=10), operator_key)
    forged = OperatorSignedRecord(
        make_record(epoch=10, guess_limit=100).to_bytes(), good.operator_public_key, good.signature
    )
    with pytest.raises(OperatorSignatureInvalid):
        witness.submit(forged.to_bytes())
    for junk in (b"", b"\x52", good.to_bytes()[:-1], good.to_bytes() + b"\x00"):
        with pytest.raises(Malformed):
            witness.submit(junk)
    assert witness.store.size == 1  # nothing refused was logged


def test_first_seen_pinning(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness(policy=WitnessPolicy(pin_first_seen=True))
    witness.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    with pytest.raises(UnknownOperatorKey):
        witness.submit(sign_record(make_record(epoch=2), Ed25519PrivateKey.generate()).to_bytes())
    witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    state = witness.store.fleet(FLEET_ID)
    assert state is not None and state.operator_key == raw_public_key(operator_key)
    assert state.last_epoch == 2 and state.last_index == 1


def test_large_epochs_compare_as_u64(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    witness = make_witness()
    witness.submit(sign_record(make_record(epoch=(1 << 63) + 5), operator_key).to_bytes())
    with pytest.raises(EpochReplayed):
        witness.submit(sign_record(make_record(epoch=7), operator_key).to_bytes())
    witness.submit(sign_record(make_record(epoch=(1 << 64) - 1), operator_key).to_bytes())


def test_store_persists_across_reopen(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey
) -> None:
    first = make_witness()
    for epoch in range(1, 6):
        first.submit(sign_record(make_record(epoch=epoch), operator_key).to_bytes())
    note = first.checkpoint()
    first.store.close()
    second = make_witness()
    assert second.store.size == 5
    assert second.checkpoint() == note
    with pytest.raises(EpochReplayed):
        second.submit(sign_record(make_record(epoch=5, time=1), operator_key).to_bytes())
    receipt = second.submit(sign_record(make_record(epoch=6), operator_key).to_bytes())
    assert receipt.leaf_index == 5
    old = open_checkpoint(note, second.verifier)
    new = open_checkpoint(receipt.checkpoint, second.verifier)
    merkle.verify_consistency(5, 6, old.root_hash, new.root_hash, second.consistency(5, 6))


def test_store_refuses_to_rewrite_history(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    witness = make_witness()
    for epoch in (1, 2, 3):
        witness.submit(sign_record(make_record(epoch=epoch), operator_key).to_bytes())
    db = sqlite3.connect(tmp_path / "witness.sqlite")
    statements = [
        "UPDATE leaves SET data = x'00' WHERE idx = 1",
        "DELETE FROM leaves WHERE idx = 2",
        "INSERT INTO leaves VALUES (7, x'00', x'11')",
        "DELETE FROM checkpoints",
        "UPDATE checkpoints SET root = x'00'",
        "UPDATE fleets SET last_epoch = x'0000000000000001'",
        "UPDATE fleets SET operator_key = x'00'",
        "DELETE FROM fleets",
    ]
    for statement in statements:
        with pytest.raises(sqlite3.DatabaseError):
            db.execute(statement)
    db.close()
    assert witness.store.size == 3
    # A store that really lost entries (triggers dropped by hand) is refused on open.
    witness.store.close()
    db = sqlite3.connect(tmp_path / "witness.sqlite")
    db.execute("DROP TRIGGER leaves_no_delete")
    db.execute("DELETE FROM leaves WHERE idx = 2")
    db.commit()
    db.close()
    with pytest.raises(WitnessStoreCorrupt):
        WitnessStore(tmp_path / "witness.sqlite", WITNESS_NAME, b"\x00" * 32)  # wrong key too
    with pytest.raises(WitnessStoreCorrupt):
        make_witness()


def test_altered_leaf_refused_on_open(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    witness = make_witness()
    witness.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    witness.store.close()
    db = sqlite3.connect(tmp_path / "witness.sqlite")
    db.execute("DROP TRIGGER leaves_no_update")
    db.execute("UPDATE leaves SET data = x'00'")
    db.commit()
    db.close()
    with pytest.raises(WitnessStoreCorrupt):
        make_witness()


def test_store_bound_to_its_witness(
    make_witness: WitnessFactory, tmp_path: Path, witness_key: Ed25519PrivateKey
) -> None:
    make_witness().store.close()
    with pytest.raises(WitnessStoreCorrupt):
        WitnessStore(tmp_path / "witness.sqlite", "another.test/w", raw_public_key(witness_key))
    with pytest.raises(WitnessStoreCorrupt):
        WitnessStore(tmp_path / "witness.sqlite", WITNESS_NAME, b"\x01" * 32)


def test_proof_queries(make_witness: WitnessFactory, operator_key: Ed25519PrivateKey) -> None:
    witness = make_witness()
    for epoch in range(1, 8):
        witness.submit(sign_record(make_record(epoch=epoch), operator_key).to_bytes())
    end, leaves = witness.leaves(2, 100)
    assert end == 7 and len(leaves) == 5
    assert OperatorSignedRecord.from_bytes(leaves[0]).deployment().epoch == 3
    leaf, proof = witness.inclusion(3, 6)
    merkle.verify_inclusion(leaf, 3, 6, proof, merkle.root_from_hashes(witness.store.hashes(6)))
    for bad in ((0, 8), (5, 4)):
        with pytest.raises(Malformed):
            witness.consistency(*bad)
    for bad in ((6, 6), (0, 8)):
        with pytest.raises(Malformed):
            witness.inclusion(*bad)
    with pytest.raises(Malformed):
        witness.leaves(9, 10)


def test_a_page_of_leaves_is_bounded_in_bytes(make_witness: WitnessFactory) -> None:
    """Attack (review s48): a `pin_first_seen` witness logs anyone's record for a fleet id
    not seen before, and a record may be some 850 KB (255 nodes, ML-KEM keys, 2000-character
    URLs): one free `GET /v1/leaves` of 256 of them built an answer of hundreds of MB. A
    page now stops at MAX_LEAVES_PAGE_BYTES (its first leaf always), and paging on from
    its `end` gives every leaf, in order."""
    witness = make_witness(policy=WitnessPolicy(pin_first_seen=True))
    stranger = Ed25519PrivateKey.generate()
    mlkem = [hpke_key(i, Kem.MLKEM768_X25519) for i in range(255)]
    signing = [Ed25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(255)]
    submitted = []
    for n in range(3):
        long = "a" * 2000
        nodes = [
            node(i, url=f"https://{n}-{i}-{long}.test:7100", hpke=mlkem[i], signing=signing[i])
            for i in range(255)
        ]
        record = sign_record(make_record(fleet_id=bytes([n]) * 16, nodes=nodes), stranger)
        witness.submit(record.to_bytes())  # logged: a stranger's record
        submitted.append(record.to_bytes())
    assert all(MAX_LEAVES_PAGE_BYTES // 2 < len(leaf) < MAX_LEAVES_PAGE_BYTES for leaf in submitted)
    end, page = witness.leaves(0, MAX_LEAVES_PAGE)
    assert (end, page) == (1, submitted[:1])  # two would pass the bound
    paged, start = [], 0
    while start < 3:
        start, page = witness.leaves(start, MAX_LEAVES_PAGE)
        assert sum(map(len, page)) <= MAX_LEAVES_PAGE_BYTES
        paged += page
    assert paged == submitted


def test_config_file(tmp_path: Path, operator_key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    other = raw_public_key(Ed25519PrivateKey.generate())
    (tmp_path / "w.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "op.pub").write_bytes(
        operator_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "witness.toml").write_text(
        f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\ndatabase = "w.sqlite"\n'
        f'allowed_measurements = ["{MEASUREMENT.hex()}"]\n'
        'unlimited_addresses = ["10.0.0.5", "2001:db8::/48"]\n'
        'trusted_proxies = ["127.0.0.1"]\n'
        f'[[fleets]]\nfleet_id = "{FLEET_ID.hex()}"\noperator_key = "op.pub"\n'
        f'[[fleets]]\nfleet_id = "00"\noperator_key = "{other.hex()}"\n'
    )
    config = WitnessConfig.load(tmp_path / "witness.toml")
    assert [str(n) for n in config.unlimited_addresses] == ["10.0.0.5/32", "2001:db8::/48"]
    assert [str(n) for n in config.trusted_proxies] == ["127.0.0.1/32"]
    assert config.policy.operators == {
        FLEET_ID: raw_public_key(operator_key),
        b"\x00": other,
    }
    assert config.policy.allowed_measurements == frozenset({MEASUREMENT})
    witness = config.open()
    try:
        witness.submit(sign_record(make_record(), operator_key).to_bytes())
    finally:
        witness.store.close()
    assert (tmp_path / "w.sqlite").exists()
    (tmp_path / "bad.toml").write_text('name = "x"\n')
    with pytest.raises(InvalidInput, match="incomplete"):
        WitnessConfig.load(tmp_path / "bad.toml")
    text = (tmp_path / "witness.toml").read_text()
    for bad in ('"10.0.0.500"', '["relay.example"]'):
        (tmp_path / "bad.toml").write_text(text.replace('["10.0.0.5", "2001:db8::/48"]', bad))
        with pytest.raises(InvalidInput, match=r"unlimited_addresses|invalid"):
            WitnessConfig.load(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text(text.replace('["127.0.0.1"]', '"127.0.0.1"'))
    with pytest.raises(InvalidInput, match="trusted_proxies is a list"):
        WitnessConfig.load(tmp_path / "bad.toml")


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (as a backup tool would take)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()


def test_restored_database_refuses_to_start_and_signs_nothing(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    witness = make_witness()
    witness.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    _copy_database(tmp_path / "witness.sqlite", tmp_path / "backup.sqlite")
    witness.submit(sign_record(make_record(epoch=2), operator_key).to_bytes())
    signed = witness.checkpoint()
    witness.store.close()
    # The operator restores the older copy: consistent with itself (its own checkpoints
    # stop at size 1), but behind the tree of size 2 the witness already signed.
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"witness.sqlite{suffix}").unlink(missing_ok=True)
    (tmp_path / "backup.sqlite").rename(tmp_path / "witness.sqlite")
    head_before = (tmp_path / "witness.sqlite.head").read_bytes()
    with pytest.raises(WitnessRolledBack) as refused:
        make_witness()
    assert "older than the tree of size 2" in refused.value.message
    # Nothing was signed: the head is unchanged and the database holds no new checkpoint.
    assert (tmp_path / "witness.sqlite.head").read_bytes() == head_before
    db = sqlite3.connect(tmp_path / "witness.sqlite")
    assert db.execute("SELECT MAX(size) FROM checkpoints").fetchone() == (1,)
    db.close()
    assert open_checkpoint(signed, witness.verifier).size == 2


def test_missing_head_file_refuses_a_log_with_leaves(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    witness = make_witness()
    witness.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    witness.store.close()
    (tmp_path / "witness.sqlite.head").unlink()
    with pytest.raises(WitnessRolledBack):
        make_witness()
    (tmp_path / "witness.sqlite.head").write_text("backupvault witness head v1\n1\nnot-b64\n")
    with pytest.raises(WitnessRolledBack):
        make_witness()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "a folder"])
def test_a_damaged_database_is_refused_with_a_reason_not_a_crash(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path, damage: str
) -> None:
    # A torn or truncated file after a crash, or a disk that lost pages: sqlite3's own
    # DatabaseError reached `witness serve`, which called it a bug in backupvault.
    witness = make_witness()
    for epoch in range(1, 40):
        witness.submit(sign_record(make_record(epoch=epoch), operator_key).to_bytes())
    witness.store.close()
    database = tmp_path / "witness.sqlite"
    data = database.read_bytes()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"witness.sqlite{suffix}").unlink(missing_ok=True)
    if damage == "truncated":
        database.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        database.write_bytes(b"\xa5" * len(data))
    else:
        database.unlink()
        database.mkdir()
    head_before = (tmp_path / "witness.sqlite.head").read_bytes()
    with pytest.raises(WitnessStoreCorrupt) as refused:
        make_witness()
    assert "cannot be read" in refused.value.message
    assert "restore it from a copy" in (refused.value.hint or "")
    assert (tmp_path / "witness.sqlite.head").read_bytes() == head_before
    # The lock was released: once the database is put right, the witness starts.
    if database.is_dir():
        database.rmdir()
    database.write_bytes(data)
    assert make_witness().store.size == 39


def test_the_head_is_never_written_through_a_planted_link(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The head went through the fixed name `<head>.tmp`: a symlink planted there (by
    whoever can write to the folder) made the witness write its head into the file the
    link names. It now goes through a fresh, exclusively created temporary file."""
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "witness.sqlite.head.tmp").symlink_to(victim)
    witness = make_witness()
    witness.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    witness.checkpoint()
    assert victim.read_text() == "untouched"
    assert (tmp_path / "witness.sqlite.head").read_text().splitlines()[1] == "1"


# Small-order Ed25519 points: under such a key, OpenSSL accepts a forged signature (R the
# identity, S = 0) for every message, so whoever pinned one could not be told from anyone.
IDENTITY_POINT = bytes([1]) + bytes(31)
SMALL_ORDER_KEYS = [
    IDENTITY_POINT,
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # order 2
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
]


@pytest.mark.parametrize("key", SMALL_ORDER_KEYS, ids=["identity", "order2", "order8"])
def test_small_order_operator_key_is_never_pinned_or_logged(
    make_witness: WitnessFactory, key: bytes
) -> None:
    """Attack: on a first-seen witness, submit a record for a new fleet id under a
    small-order key with a forged signature. It was logged and the key pinned, after which
    anyone could log any epoch of that fleet."""
    witness = make_witness(policy=WitnessPolicy(pin_first_seen=True))
    forged = b"\x52" + b"".join(
        len(part).to_bytes(4, "big") + part
        for part in (make_record(epoch=1).to_bytes(), key, IDENTITY_POINT + bytes(32))
    )
    with pytest.raises(Malformed):
        witness.submit(forged)
    assert witness.store.size == 0 and witness.store.fleet(FLEET_ID) is None


def test_small_order_operator_key_refused_in_config(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "w.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "witness.toml").write_text(
        f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\n'
        f'[[fleets]]\nfleet_id = "00"\noperator_key = "{IDENTITY_POINT.hex()}"\n'
    )
    with pytest.raises(InvalidInput, match="prime-order"):
        WitnessConfig.load(tmp_path / "witness.toml")


def test_second_process_on_one_store_is_refused(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Attack (or mistake): two `witness serve` on one database. Each kept its own view of
    the tree in memory: the second's submissions broke the append trigger (a 500), and it
    could write its smaller head over the first's, weakening the rollback check."""
    first = make_witness()
    first.submit(sign_record(make_record(epoch=1), operator_key).to_bytes())
    with pytest.raises(WitnessStoreInUse):
        make_witness()
    with pytest.raises(WitnessStoreInUse):
        WitnessStore(tmp_path / "witness.sqlite", WITNESS_NAME, raw_public_key(operator_key))
    first.store.close()
    first.store.close()  # closing twice is harmless
    second = make_witness()  # the lock goes with the store that held it
    assert second.submit(sign_record(make_record(epoch=2), operator_key).to_bytes()).leaf_index == 1


def test_proofs_and_checkpoints_cost_logarithmic_hashing(
    make_witness: WitnessFactory, operator_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: anyone may GET /v1/consistency or /v1/inclusion, and each rebuilt the tree
    from the leaf hashes (O(n) SHA-256 per request: 0.1 s of CPU at 200,000 leaves, with
    256 requests at once). Complete subtrees are now kept, so a proof costs O(log² n)."""
    witness = make_witness(policy=WitnessPolicy(pin_first_seen=True))
    size = 3000
    for i in range(size):  # straight into the store: the witness's checks are not the point
        witness.store.append(b"leaf %d" % i, FLEET_ID, raw_public_key(operator_key), i + 1)
    leaves = [b"leaf %d" % i for i in range(size)]
    calls = 0
    real = merkle.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    root = open_checkpoint(witness.checkpoint(), witness.verifier).root_hash
    assert root == merkle.root(leaves)
    for old, new in ((1, size), (1234, 2999), (2048, size), (7, 13)):
        calls = 0
        proof = witness.consistency(old, new)
        assert calls < 300, (old, new, calls)
        old_root, new_root = merkle.root(leaves[:old]), merkle.root(leaves[:new])
        merkle.verify_consistency(old, new, old_root, new_root, proof)
    for index, tree in ((0, size), (2999, size), (1500, 2001)):
        calls = 0
        leaf, proof = witness.inclusion(index, tree)
        assert calls < 300, (index, tree, calls)
        merkle.verify_inclusion(leaf, index, tree, proof, merkle.root(leaves[:tree]))
    calls = 0
    witness.store.append(b"one more", FLEET_ID, raw_public_key(operator_key), size + 1)
    open_checkpoint(witness.checkpoint(), witness.verifier)
    witness.head(FLEET_ID, 1_800_000_000)
    assert calls < 300, calls


@pytest.mark.parametrize(
    ("line", "named", "meant"),
    [
        ('head_fiel = "other-volume/w.head"\n', "head_fiel", "head_file"),
        ("pin_first_sen = true\n", "pin_first_sen", "pin_first_seen"),
        ('[[fleets]]\nfleet_id = "00"\noperator = "op.pub"\n', "operator", "operator_key"),
    ],
    ids=["head_fiel", "pin_first_sen", "[[fleets]] operator"],
)
def test_a_field_witness_toml_does_not_take_is_named(
    tmp_path: Path, line: str, named: str, meant: str
) -> None:
    """A misspelt `head_file` was ignored: the head file stayed beside the database,
    inside its backups, where docs/operations.md says it must not be (a database restored
    with its head file is not caught)."""
    (tmp_path / "witness.toml").write_text(f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\n{line}')
    with pytest.raises(InvalidInput) as refused:
        WitnessConfig.load(tmp_path / "witness.toml")
    assert f"unknown field {named!r}" in refused.value.message
    assert refused.value.hint is not None and repr(meant) in refused.value.hint


@pytest.mark.parametrize("second", ["00FF", "00ff"], ids=["upper case", "same spelling"])
def test_a_fleet_listed_twice_in_the_config_is_refused(tmp_path: Path, second: str) -> None:
    """Two [[fleets]] tables for one fleet id (by hand, or spelt in another case) with two
    keys: the last was taken without a word, so what the witness logs for that fleet
    depended on the order of the file. An empty fleet id (no record can have one) too."""
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "w.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    first, other = (raw_public_key(Ed25519PrivateKey.generate()).hex() for _ in range(2))
    head = f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\n'
    (tmp_path / "witness.toml").write_text(
        head
        + f'[[fleets]]\nfleet_id = "00ff"\noperator_key = "{first}"\n'
        + f'[[fleets]]\nfleet_id = "{second}"\noperator_key = "{other}"\n'
    )
    with pytest.raises(InvalidInput, match="fleet 00ff is listed twice"):
        WitnessConfig.load(tmp_path / "witness.toml")
    (tmp_path / "witness.toml").write_text(
        head + f'[[fleets]]\nfleet_id = ""\noperator_key = "{first}"\n'
    )
    with pytest.raises(InvalidInput, match="1 to 64 bytes"):
        WitnessConfig.load(tmp_path / "witness.toml")


def test_an_allowed_measurement_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    """One cut short matched no record: the witness refused every submission as
    `measurement_not_allowed`, blaming the operator's firmware."""
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "w.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for measurement, refused in ((MEASUREMENT.hex(), False), (MEASUREMENT.hex()[:-2], True)):
        (tmp_path / "witness.toml").write_text(
            f'name = "{WITNESS_NAME}"\nkey_file = "w.key"\n'
            f'allowed_measurements = ["{measurement}"]\n'
        )
        if refused:
            with pytest.raises(InvalidInput, match="32 bytes each"):
                WitnessConfig.load(tmp_path / "witness.toml")
        else:
            policy = WitnessConfig.load(tmp_path / "witness.toml").policy
            assert policy.allowed_measurements == frozenset({MEASUREMENT})
