"""The fill bench (`bench/fill.py`) writes its entries straight into the stores, as the
fleet would have written them: its bytes per entry are only a fact about real entries if
a filled entry holds what a registered one holds. Until 2026-12-05 it lacked the t commit
acknowledgements, about 200 bytes of every real value (docs/performance.md)."""

from __future__ import annotations

import dataclasses

from bench.fill import THRESHOLD, _records, commit_acks, dealing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.crypto.manifest import Manifest
from backupvault.fleet.messages import ReplicatedValue
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState
from backupvault.node.store import SHARE_PREFIX
from backupvault.protocol import decode_commit_acks, share_ack_message

KEY = EntryId("alice", "backup-root-key").to_bytes()
NAMES = len("alice") + len("backup-root-key") - len("fill") - len("root-key")


def _filled(fleet_id: bytes) -> tuple[ReplicatedValue, NodeShare, list[Ed25519PrivateKey]]:
    registration = dealing(fleet_id)
    signers = [Ed25519PrivateKey.generate() for _ in range(THRESHOLD)]
    value, share = _records(0, 7, registration, commit_acks(fleet_id, registration, signers))
    assert share.key.startswith(SHARE_PREFIX)
    return ReplicatedValue.from_bytes(value.value), NodeShare.from_bytes(share.value), signers


def _sizes(message: object) -> dict[str, int]:
    """Each field's size: bytes by length, lists by count, numbers as they are."""
    assert dataclasses.is_dataclass(message)
    return {
        field.name: len(v) if isinstance(v := getattr(message, field.name), bytes | list) else v
        for field in dataclasses.fields(message)
    }


def test_a_filled_entry_holds_what_a_registered_one_holds(fleet: InProcessFleet) -> None:
    fleet.client().register("pw", bytes(range(32)), ksf=FAST_KSF)
    registered = ReplicatedValue.from_bytes(fleet.disk[0][KEY].value)
    registered_state = ThresholdState.from_bytes(registered.payload)
    filled, filled_share, _ = _filled(fleet.fleet_id)
    filled_state = ThresholdState.from_bytes(filled.payload)

    state_sizes = _sizes(registered_state)
    state_sizes["manifest"] -= NAMES  # M names its account and entry
    assert _sizes(filled_state) == state_sizes
    assert len(filled_state.acks) == len(registered_state.acks) > 0
    assert len(filled.applied) == 1 <= len(registered.applied)

    share_sizes = _sizes(fleet.firmware[0].shares.row(KEY))  # promoted as M was accepted
    share_sizes["manifest"] -= NAMES
    assert _sizes(filled_share) == share_sizes


def test_the_filled_acknowledgements_are_signatures_that_verify() -> None:
    fleet_id = b"bench-fleet"
    filled, _, signers = _filled(fleet_id)
    state = ThresholdState.from_bytes(filled.payload)
    acks = decode_commit_acks(state.acks)
    assert [a.index for a in acks] == list(range(1, THRESHOLD + 1))
    m = Manifest.from_bytes(state.manifest)
    for ack, signer in zip(acks, signers, strict=True):
        signed = share_ack_message(
            ack.kind,
            fleet_id,
            m.account,
            m.entry,
            m.version,
            m.commitments.node_public_key(ack.index),
            state.manifest,
        )
        signer.public_key().verify(ack.signature, signed)  # raises if it does not
