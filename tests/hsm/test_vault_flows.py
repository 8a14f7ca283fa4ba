"""The threshold flows through the real SDK, firmware and replicas (tests/hsm/inprocess_fleet.py):
crashes, a wiped node and a move to a newer fleet epoch (the flows' rules are tested in
test_threshold_node.py, the client in tests/client)."""

from __future__ import annotations

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import FleetUnavailable, NotRegistered, WrongPassword
from backupvault.client.trust import FleetSession
from backupvault.hsm.state import EntryId
from backupvault.protocol import EntryStatus

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def test_register_recover_with_a_minority_down_and_fail_closed_without_a_majority(
    fleet: InProcessFleet,
) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.crash(1)
    fleet.crash(3)
    with pytest.raises(WrongPassword) as wrong:
        client.recover("wrong", ksf_floor=FAST_KSF)
    assert wrong.value.guesses_remaining == 9
    assert client.recover("pw", ksf_floor=FAST_KSF).root_key == ROOT_KEY
    fleet.crash(4)
    attempt = max(fleet.state(n, KEY).attempt for n in (0, 2))
    with pytest.raises(FleetUnavailable):
        client.recover("pw", ksf_floor=FAST_KSF)
    # Two nodes cannot commit an attempt, so none is evaluated.
    assert max(fleet.state(n, KEY).attempt for n in (0, 2)) == attempt


def test_a_node_restarted_with_a_wiped_disk_catches_up(fleet: InProcessFleet) -> None:
    """A wiped node catches the entry's value up from its peers but has lost its share:
    it answers without a partial, and the other four still recover the key."""
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.crash(2)
    fleet.restart(2, wipe=True)
    assert fleet.state(2, KEY) == fleet.state(0, KEY)
    recovered = client.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == ROOT_KEY
    assert client.status().agreeing == (0, 1, 2, 3, 4)


def test_a_key_moves_from_an_older_fleet_epoch_at_its_next_recovery() -> None:
    """Fleet-to-fleet migration after a rotation (`FleetSession.migrate`): the key is
    recovered on the old epoch, registered behind the same password on the new one, and
    deleted on the old one; the next recovery finds it on the new epoch."""
    old, new = InProcessFleet(epoch=1), InProcessFleet(epoch=2, seed=1)
    old.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    previous = FleetSession(old.client(), epoch=1)
    session = FleetSession(new.client(), epoch=2, older=iter([(1, previous)]))
    with pytest.raises(NotRegistered):
        session.recover("pw")
    moved = session.recover_or_migrate("pw")
    assert (moved.root_key, moved.migrated_from) == (ROOT_KEY, 1)
    assert previous.status().status == EntryStatus.EMPTY
    again = FleetSession(new.client(), epoch=2).recover_or_migrate("pw")
    assert (again.root_key, again.migrated_from) == (ROOT_KEY, None)
