"""A node's memory of the attempts it accepted (`ShareKeeper._accepted`) is bounded (review
r1, finding 3): it kept one entry for every key that ever had an accepted attempt, deleted
entries too, until the process restarted. Forgetting one costs what a restart costs (the
node answers "resend" until a round makes it accept the attempt again)."""

from __future__ import annotations

import os

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import WrongPassword


def test_entries_attempted_and_deleted_under_new_names_stay_within_the_bound(
    fleet: InProcessFleet,
) -> None:
    """The attack of the review: register, guess once wrong and once right, delete; again
    and again under new names. Before, every node kept every such key for good (the bound
    is made small here to be reached; the node's is `ACCEPTED_KEYS`)."""
    for n in fleet.replicas:
        fleet.firmware[n].shares._accepted_keys = 2
    for n in range(4):
        vault = fleet.client(entry=f"gone-{n}")
        vault.register("right", os.urandom(32), ksf=FAST_KSF)
        fleet.now += 1
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF)
        fleet.now += 1
        vault.delete(vault.recover("right", ksf_floor=FAST_KSF))
        fleet.now += 1
    assert [len(fleet.firmware[n].shares._accepted) for n in fleet.replicas] == [2] * 5


def test_the_most_recently_attempted_entries_are_kept_and_recoveries_still_work(
    fleet: InProcessFleet,
) -> None:
    for n in fleet.replicas:
        fleet.firmware[n].shares._accepted_keys = 2
    keys = {f"kept-{n}": os.urandom(32) for n in range(4)}
    for entry, root_key in keys.items():
        fleet.client(entry=entry).register("right", root_key, ksf=FAST_KSF)
        fleet.now += 1
    for entry, root_key in keys.items():
        assert fleet.client(entry=entry).recover("right", ksf_floor=FAST_KSF).root_key == root_key
        fleet.now += 1
    assert all(len(fleet.firmware[n].shares._accepted) <= 2 for n in fleet.replicas)
    # The first entry was pushed out everywhere; its next attempt is accepted afresh.
    first = next(iter(keys))
    assert fleet.client(entry=first).recover("right", ksf_floor=FAST_KSF).root_key == keys[first]
