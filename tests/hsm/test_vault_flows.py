"""The threshold flows through the real SDK, firmware and replicas (tests/hsm/conftest.py):
crashes and a wiped node (the flows' rules are tested in test_threshold_node.py, the client
in tests/client)."""

from __future__ import annotations

import pytest
from conftest import FAST_KSF, InProcessFleet

from backupvault.client.errors import FleetUnavailable, WrongPassword
from backupvault.hsm.state import EntryId

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
