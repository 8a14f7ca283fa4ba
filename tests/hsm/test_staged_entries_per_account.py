"""The cap on an account's registrations staged and never committed (review r1, finding
1), through the real SDK, firmware and replicas: the user is told what went wrong, an
honest user registering entry after entry never meets it, and nothing a node already
acknowledged is dropped to make room (a commit carrying those acknowledgements still
lands with every acknowledging node holding its share). The cap is made small here to
be reached; a node's is STAGED_ENTRIES_PER_ACCOUNT (32)."""

from __future__ import annotations

import os

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import FleetUnavailable, VaultError
from backupvault.crypto import manifest
from backupvault.hsm.state import EntryId
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    EntryStatus,
    ErrorCode,
    Op,
    RegisterShareRequest,
    ShareAck,
    encode_commit_acks,
)

CAP = 3


def _capped(fleet: InProcessFleet) -> None:
    for n in fleet.replicas:
        fleet.firmware[n].shares._staged_cap = CAP


def test_registrations_cut_off_before_their_commit_fill_the_cap_and_the_user_is_told(
    fleet: InProcessFleet,
) -> None:
    _capped(fleet)
    fleet.relay_drops = lambda op, node: op is Op.COMMIT_SHARES  # every commit lost
    for n in range(CAP):
        client = fleet.client(entry=f"cut-off-{n}")
        client.delivery_patience = 0.5
        with pytest.raises(FleetUnavailable):
            client.register("pw", os.urandom(32), ksf=FAST_KSF)
    with pytest.raises(VaultError, match="started and never finished") as refused:
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    assert "register again an entry whose registration was cut off" in (refused.value.hint or "")
    key = EntryId.of("alice", "one-more").to_bytes()
    assert all(key not in fleet.shares[n] for n in fleet.replicas)  # no row anywhere
    assert all(len(fleet.shares[n]) == CAP for n in fleet.replicas)  # before: one per try
    # Registering a cut-off entry again finishes it (its row, no new place) ...
    fleet.relay_drops = lambda op, node: False
    root_key = os.urandom(32)
    fleet.client(entry="cut-off-0").register("pw", root_key, ksf=FAST_KSF)
    assert fleet.client(entry="cut-off-0").recover("pw", ksf_floor=FAST_KSF).root_key == root_key
    # ... and makes room for a new one.
    fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)


def test_an_honest_user_registering_entry_after_entry_never_meets_the_cap(
    fleet: InProcessFleet,
) -> None:
    _capped(fleet)
    keys = {f"entry-{n}": os.urandom(32) for n in range(2 * CAP)}
    for entry, root_key in keys.items():
        fleet.client(entry=entry).register("pw", root_key, ksf=FAST_KSF)
    for entry, root_key in keys.items():
        assert fleet.client(entry=entry).recover("pw", ksf_floor=FAST_KSF).root_key == root_key


def test_a_staged_acknowledgement_given_before_the_cap_still_commits_with_t_holders(
    fleet: InProcessFleet,
) -> None:
    """Why refusing, not dropping the oldest: every node acknowledged staging entry 0,
    then the account filled the cap and was refused. The commit of entry 0, carrying
    those acknowledgements, lands, and every acknowledging node holds its share."""
    _capped(fleet)
    t = fleet.shape.threshold
    staged: list[tuple[manifest.Registration, list[ShareAck]]] = []
    for n in range(CAP + 1):
        entry = f"staged-{n}"
        made = manifest.register(
            b"pw",
            os.urandom(32),
            fleet_id=fleet.fleet_id,
            account="alice",
            entry=entry,
            epoch=fleet.shape.epoch,
            nodes=len(fleet.replicas),
            threshold_count=t,
            ksf=FAST_KSF,
        )
        encoded = made.manifest.to_bytes()
        requests = [
            RegisterShareRequest("alice", entry, encoded, share.to_bytes(), b"", 0)
            for share in made.shares
        ]
        outcomes = fleet.client(entry=entry).vault.call_each(Op.REGISTER_SHARE, requests, ShareAck)
        if n < CAP:
            acks = [o.response for o in outcomes if o.response is not None]
            assert len(acks) == len(fleet.replicas)
            assert all(a.kind == AckKind.STAGED for a in acks)
            staged.append((made, acks))
        else:
            codes = [o.error.code if o.error else None for o in outcomes]
            assert codes == [ErrorCode.TOO_MANY_PENDING] * len(fleet.replicas)
    made, acks = staged[0]
    commit = CommitSharesRequest(
        "alice",
        "staged-0",
        made.manifest.to_bytes(),
        b"",
        0,
        encode_commit_acks([CommitAck(a.index, AckKind(a.kind), a.signature) for a in acks[:t]]),
    )
    outcomes = fleet.client(entry="staged-0").vault.call_each(
        Op.COMMIT_SHARES, [commit] * len(fleet.replicas), ShareAck
    )
    assert all(o.response is not None and o.response.kind == AckKind.HELD for o in outcomes)
    key = EntryId.of("alice", "staged-0").to_bytes()
    for n in fleet.replicas:
        assert fleet.state(n, key).status == EntryStatus.LIVE
        row = fleet.firmware[n].shares.row(key)
        assert row is not None
        assert row.share == made.shares[n].to_bytes()  # kept, promoted: never dropped
