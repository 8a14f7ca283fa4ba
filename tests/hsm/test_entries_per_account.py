"""The cap on an account's entries (review r1, finding 4), through the real SDK,
firmware and replicas: the user is told what went wrong and what to do, nothing is kept
of the refused entry, an entry the account has goes on working at the cap, and a deleted
entry makes room. The cap is made small here to be reached; a node's is
ENTRIES_PER_ACCOUNT (256)."""

from __future__ import annotations

import os

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import FleetUnavailable, VaultError
from backupvault.hsm.state import EntryId
from backupvault.protocol import Op

CAP = 3


def _capped(fleet: InProcessFleet) -> None:
    for n in fleet.replicas:
        fleet.firmware[n].shares._entries_cap = CAP


def _rows_of(fleet: InProcessFleet, entry: str) -> list[bool]:
    key = EntryId.of("alice", entry).to_bytes()
    return [key in fleet.shares[n] for n in fleet.replicas]


def test_an_account_at_its_cap_is_told_and_nothing_is_kept_of_the_new_entry(
    fleet: InProcessFleet,
) -> None:
    _capped(fleet)
    for n in range(CAP):
        fleet.client(entry=f"entry-{n}").register("pw", os.urandom(32), ksf=FAST_KSF)
    with pytest.raises(VaultError, match="as many entries of this account") as refused:
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    assert "entry was not registered" in str(refused.value)
    assert "vault delete" in (refused.value.hint or "")
    assert _rows_of(fleet, "one-more") == [False] * len(fleet.replicas)
    assert all(len(fleet.shares[n]) == CAP for n in fleet.replicas)


def test_at_the_cap_an_entry_changes_its_password_and_a_deleted_one_makes_room(
    fleet: InProcessFleet,
) -> None:
    _capped(fleet)
    root_keys = {f"entry-{n}": os.urandom(32) for n in range(CAP)}
    for entry, root_key in root_keys.items():
        fleet.client(entry=entry).register("pw", root_key, ksf=FAST_KSF)
    first = fleet.client(entry="entry-0")
    first.change_password(first.recover("pw", ksf_floor=FAST_KSF), "new pw", ksf=FAST_KSF)
    assert first.recover("new pw", ksf_floor=FAST_KSF).root_key == root_keys["entry-0"]
    with pytest.raises(VaultError, match="as many entries"):
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    second = fleet.client(entry="entry-1")
    second.delete(second.recover("pw", ksf_floor=FAST_KSF))
    root_key = os.urandom(32)
    fleet.client(entry="one-more").register("pw", root_key, ksf=FAST_KSF)
    assert fleet.client(entry="one-more").recover("pw", ksf_floor=FAST_KSF).root_key == root_key


def test_a_registration_cut_off_before_its_commit_holds_its_place_until_registered_again(
    fleet: InProcessFleet,
) -> None:
    """A staged share is the account's entry at that node too (else stagings for new
    names, committed later, would pass the cap), and registering that entry again takes
    no new place."""
    _capped(fleet)
    for n in range(CAP - 1):
        fleet.client(entry=f"entry-{n}").register("pw", os.urandom(32), ksf=FAST_KSF)
    fleet.relay_drops = lambda op, node: op is Op.COMMIT_SHARES
    cut_off = fleet.client(entry="cut-off")
    cut_off.delivery_patience = 0.5
    with pytest.raises(FleetUnavailable):
        cut_off.register("pw", os.urandom(32), ksf=FAST_KSF)
    fleet.relay_drops = lambda op, node: False
    with pytest.raises(VaultError, match="as many entries"):
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    root_key = os.urandom(32)
    fleet.client(entry="cut-off").register("pw", root_key, ksf=FAST_KSF)
    assert fleet.client(entry="cut-off").recover("pw", ksf_floor=FAST_KSF).root_key == root_key
