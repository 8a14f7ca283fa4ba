"""The vault's flows end to end through the real firmware, replicas and client SDK."""

from __future__ import annotations

import pytest
from conftest import InProcessFleet

from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    FleetUnavailable,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from backupvault.fleet.replica import DEFAULT_TIMING
from backupvault.hsm.state import EntryId
from backupvault.protocol import EntryStatus

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def test_register_then_recover(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("correct horse", ROOT_KEY)
    recovered = client.recover("correct horse")
    assert recovered.root_key == ROOT_KEY
    assert recovered.grant
    assert recovered.wrong_guesses_before == 0
    assert client.status().guesses_remaining == 10


def test_wrong_password_counts_down_and_success_resets(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("right", ROOT_KEY, guess_limit=5)
    for remaining in (4, 3, 2):
        with pytest.raises(WrongPassword) as caught:
            client.recover("wrong")
        assert caught.value.guesses_remaining == remaining
    assert client.recover("right").root_key == ROOT_KEY
    assert client.status().guesses_remaining == 5


def test_last_wrong_guess_destroys_on_every_node(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("right", ROOT_KEY, guess_limit=3)
    for _ in range(2):
        with pytest.raises(WrongPassword):
            client.recover("wrong")
    with pytest.raises(Destroyed):
        client.recover("wrong")
    with pytest.raises(Destroyed):
        client.recover("right")
    assert fleet.evaluations == 3
    for node in fleet.replicas:
        state = fleet.state(node, KEY)
        assert state.status == EntryStatus.DESTROYED
        assert state.record == b"" and state.wrapped_root_key == b""


def test_cannot_register_over_a_live_entry(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("one", ROOT_KEY)
    with pytest.raises(AlreadyRegistered):
        client.register("two", bytes(32))
    assert client.recover("one").root_key == ROOT_KEY


def test_change_password(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("old", ROOT_KEY)
    client.change_password("old", "new")
    with pytest.raises(WrongPassword):
        client.recover("old")
    assert client.recover("new").root_key == ROOT_KEY


def test_delete_and_unknown_entry(fleet: InProcessFleet) -> None:
    client = fleet.client()
    with pytest.raises(NotRegistered):
        client.recover("anything")
    client.register("pw", ROOT_KEY)
    client.delete(client.recover("pw").grant)
    with pytest.raises(NotRegistered):
        client.recover("pw")
    assert all(fleet.state(n, KEY).wrapped_root_key == b"" for n in fleet.replicas)


def test_minority_down_works_majority_down_fails_closed(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    fleet.crash(3)
    fleet.crash(4)
    assert client.recover("pw").root_key == ROOT_KEY
    fleet.crash(2)
    # Down for longer than the leader's lease: the leader then runs a Prepare first, which
    # gets no majority, so nothing is written (docs/fleet.md, "Fail closed").
    fleet.now += 2 * DEFAULT_TIMING.leader_lease
    before = fleet.evaluations
    with pytest.raises(FleetUnavailable):
        client.recover("pw")
    assert fleet.evaluations == before
    for node in (2, 3, 4):
        fleet.restart(node)
    assert client.status().guesses_remaining == 10  # the failed attempt cost nothing


def test_replayed_successful_ke3_does_not_reset_counter(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    client.recover("pw")
    # The relay keeps the sealed KE3 request of that success...
    captured_ke3 = fleet.sent[-2]
    for _ in range(3):
        with pytest.raises(WrongPassword):
            client.recover("nope")
    # ...and replays it after the wrong guesses.
    import httpx

    replay = httpx.Request(
        "POST", "http://relay.test/v1/vault/backup-root-key/recover-finish", content=captured_ke3
    )
    fleet.handle(replay)
    assert client.status().guesses_remaining == 7


def test_restarted_node_with_wiped_disk_catches_up(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    with pytest.raises(WrongPassword):
        client.recover("bad")
    fleet.crash(0)
    fleet.restart(0, wipe=True)
    assert fleet.state(0, KEY).attempts_used == 1
    assert client.status().guesses_remaining == 9


def test_mismatched_account_is_refused(fleet: InProcessFleet) -> None:
    client = fleet.client(account="mallory")  # seals "mallory", relay asserts "alice"
    with pytest.raises(VaultError):
        client.register("pw", ROOT_KEY)


def test_destruction_reaches_a_node_that_was_cut_off(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("right", ROOT_KEY, guess_limit=2)
    fleet.crash(4)  # cut off (its memory and disk stay as they are)
    for _ in range(2):
        with pytest.raises((WrongPassword, Destroyed)):
            client.recover("wrong")
    assert fleet.state(4, KEY).status == EntryStatus.LIVE  # it missed the tombstone
    fleet.down.discard(4)  # reachable again, never restarted
    for _ in range(300):
        fleet.now += 0.01
        for node, replica in fleet.replicas.items():
            fleet._run(node, replica.tick(fleet.now))
        fleet._settle()
    state = fleet.state(4, KEY)
    assert state.status == EntryStatus.DESTROYED
    assert state.record == b"" and state.wrapped_root_key == b""
