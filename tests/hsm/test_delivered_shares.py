"""Shares delivered late, sealed to their node (docs/threshold.md, "Finishing later"), on
the real SDK, firmware and replicas: a device that registered while a node was down
keeps that node's share HPKE-sealed to it and delivers it at its next contact, before
any evaluation and without the password; the share opens only at its own node and only
for its own manifest, and a copy of the device's file with the keys of c < t hostile
nodes yields their own shares, nothing more."""

from __future__ import annotations

import hashlib

from inprocess_fleet import FAST_KSF, FLEET_ID, InProcessFleet

from backupvault.client.pending import Pending, PendingStore
from backupvault.client.threshold import ThresholdVault
from backupvault.crypto import threshold
from backupvault.crypto.manifest import Manifest
from backupvault.crypto.seal import open_share
from backupvault.errors import AuthenticationFailed
from backupvault.hsm.firmware import Reply
from backupvault.hsm.shares import ThresholdRead
from backupvault.hsm.state import EntryId
from backupvault.protocol import (
    AckKind,
    DeliverShareRequest,
    ErrorCode,
    ErrorResponse,
    Op,
    ShareAck,
)

ROOT_KEY = bytes(range(32))
ENTRY = "backup-root-key"
KEY = EntryId("alice", ENTRY).to_bytes()


def _degraded(fleet: InProcessFleet, down: int = 3) -> tuple[ThresholdVault, Pending]:
    """A registration with node `down` down: its share is owed, and kept."""
    fleet.crash(down)
    vault = fleet.client()
    vault.pending = PendingStore(None)
    assert vault.register("pw", ROOT_KEY, ksf=FAST_KSF).degraded
    fleet.restart(down)
    (owed,) = vault.pending.owed(FLEET_ID, "alice", ENTRY, vault.keys.epoch)
    assert owed.nodes == (down,) and not owed.needs_export_key
    return vault, owed


def _deliver(fleet: InProcessFleet, node: int, request: DeliverShareRequest) -> object:
    """Node `node`'s firmware's answer to a deliver-share (after its seal was opened)."""
    action = fleet.firmware[node].handle(Op.DELIVER_SHARE, request)
    if isinstance(action, Reply):
        return action.response
    assert isinstance(action, ThresholdRead)
    read = action.answer(fleet.replicas[node].held_payload(action.key))
    for write in read.writes:
        fleet.shares[node][write.key] = write.row
    fleet.firmware[node].shares.durable(read.writes)
    return read.response


def test_a_share_owed_since_registration_is_delivered_at_the_next_status(
    fleet: InProcessFleet,
) -> None:
    vault, _owed = _degraded(fleet)
    assert KEY not in fleet.shares[3] or not fleet.shares[3][KEY].share
    assert not vault.needs_password_to_finish()
    assert vault.status().pending == ()  # no password asked
    assert fleet.shares[3][KEY].share
    assert [op for op, _ in fleet.requests].count("evaluate") == 0
    # Every node holds a share now: two others may be down.
    fleet.crash(0)
    fleet.crash(1)
    assert fleet.client().recover("pw", ksf_floor=FAST_KSF).root_key == ROOT_KEY


def test_an_owed_share_is_delivered_before_the_evaluation_that_needs_it(
    fleet: InProcessFleet,
) -> None:
    """The soak's commonest failure (docs/soak.md, run X): shares on exactly t nodes, two
    of them down. The device delivers node 3's share first, then recovers with it."""
    vault, _owed = _degraded(fleet)
    fleet.crash(0)
    fleet.crash(1)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == ROOT_KEY and recovered.pending == ()
    ops = [op for op, _ in fleet.requests]
    assert ops.index("deliver-share") < ops.index("evaluate")


def test_a_sealed_share_opens_only_at_its_node_for_its_manifest(fleet: InProcessFleet) -> None:
    _vault, owed = _degraded(fleet)
    sealed = owed.shares
    right = DeliverShareRequest("alice", ENTRY, owed.manifest, sealed[3])
    # At another node, or for another manifest, or altered: refused, nothing kept.
    flipped = sealed[3][:-1] + bytes([sealed[3][-1] ^ 1])
    wrong = {
        "another node's share": (3, DeliverShareRequest("alice", ENTRY, owed.manifest, sealed[2])),
        "at another node": (2, right),
        "altered": (3, DeliverShareRequest("alice", ENTRY, owed.manifest, flipped)),
    }
    for what, (node, request) in wrong.items():
        rows = dict(fleet.shares[node])
        answer = _deliver(fleet, node, request)
        assert isinstance(answer, ErrorResponse), what
        assert answer.code == ErrorCode.BAD_REQUEST and "does not open" in answer.detail, what
        assert fleet.shares[node] == rows, what
    # Its own node takes it, and takes it again as the same delivery.
    for _ in range(2):
        answer = _deliver(fleet, 3, right)
        assert isinstance(answer, ShareAck) and answer.kind == AckKind.HELD
    assert fleet.shares[3][KEY].manifest == owed.manifest


def test_a_share_sealed_for_one_manifest_does_not_open_for_another(
    fleet: InProcessFleet,
) -> None:
    """After a password change the device's old record is void: its share, sent with the
    new manifest, does not open (the manifest's hash is in the seal)."""
    vault, owed = _degraded(fleet)
    assert vault.status().pending == ()
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    vault.change_password(recovered, "new", ksf=FAST_KSF)
    live = vault.live_manifest()[0].to_bytes()
    assert live != owed.manifest
    answer = _deliver(fleet, 3, DeliverShareRequest("alice", ENTRY, live, owed.shares[3]))
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.BAD_REQUEST


def test_a_copied_pending_file_and_c_hostile_nodes_yield_only_their_own_shares(
    fleet: InProcessFleet,
) -> None:
    """Whoever copies the device's file and holds the keys of c = t - 1 nodes opens those
    nodes' shares, which they were dealt anyway, and no other: c shares, fewer than the t
    that interpolate k, so no password can be tested offline."""
    _vault, owed = _degraded(fleet)
    hostile = range(fleet.shape.threshold - 1)
    digest = hashlib.sha256(owed.manifest).digest()
    opened: dict[int, bytes] = {}
    for node, sealed in enumerate(owed.shares):
        for key_of in hostile:
            try:
                opened[node] = open_share(fleet.node_keys[key_of], FLEET_ID, key_of, digest, sealed)
            except AuthenticationFailed:
                continue
    assert sorted(opened) == list(hostile)
    commitments = Manifest.from_bytes(owed.manifest).commitments
    for node, share in opened.items():
        key_share = threshold.KeyShare.from_bytes(share)
        assert key_share.index == node + 1  # the share that node was dealt
        threshold.verify_share(key_share, commitments)
    assert len(opened) < fleet.shape.threshold


def test_a_password_change_a_node_missed_is_finished_after_the_whole_fleet_restarted(
    fleet: InProcessFleet,
) -> None:
    """Review s40 (M1): a password change with node 4 down, then the whole fleet restarted
    intact (`local down` and `local up`, a reboot). What would have brought node 4 the new
    version (the committing node's repair, settling) lived in the other nodes' memory, and
    an intact restart asks nobody, so node 4 came back holding version 1, refused the late
    share as `already_registered`, and `vault finish` failed (exit 5) until the next
    recovery. The late delivery now brings the node up to date (a round that commits the
    entry's newest value) before it takes the share."""
    vault = fleet.client()
    vault.pending = PendingStore(None)
    vault.register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.crash(4)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    changed = vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert changed.version == 2 and changed.acknowledged == (0, 1, 2, 3)
    for node in range(5):
        fleet.crash(node)
    for node in range(5):
        fleet.restart(node, intact=True)
    assert fleet.state(4, KEY).version == 1  # behind, and nobody will tell it otherwise
    assert fleet.shares[4][KEY].version == 1

    assert vault.status().pending == ()  # as `vault finish` does
    assert fleet.state(4, KEY).version == 2
    row = fleet.shares[4][KEY]
    assert row.version == 2 and row.share and row.manifest == vault.live_manifest()[0].to_bytes()
    # Node 4 holds its share of version 2: the key opens with two other nodes down.
    fleet.crash(0)
    fleet.crash(1)
    assert vault.recover("new", ksf_floor=FAST_KSF).root_key == ROOT_KEY
