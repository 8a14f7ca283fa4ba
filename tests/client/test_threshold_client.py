"""The threshold client flows against a fake fleet (tests/client/fake_fleet.py): what the
client checks, names and reports. The process tests run the same flows on real nodes."""

from __future__ import annotations

import os

import pytest

from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    FleetUnavailable,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from backupvault.protocol import EntryStatus

from .fake_fleet import FAST_KSF, LIMIT, FakeFleet

RK = bytes(range(32))


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(5)


def test_register_then_recover_and_every_node_gets_the_reset(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    done = vault.register("correct horse", RK, ksf=FAST_KSF)
    assert (done.version, done.acknowledged, done.degraded) == (1, (0, 1, 2, 3, 4), False)
    recovered = vault.recover("correct horse", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert recovered.wrong_guesses_before == 0
    assert recovered.rejected == () and recovered.reset_missing == ()
    assert [node.resets for node in fleet.nodes] == [1] * 5
    assert vault.status().guesses_remaining == LIMIT


def test_wrong_passwords_count_down_and_a_success_reports_them(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for left in (LIMIT - 1, LIMIT - 2):
        with pytest.raises(WrongPassword) as caught:
            vault.recover("wrong", ksf_floor=FAST_KSF)
        assert caught.value.guesses_remaining == left
    assert vault.status().guesses_remaining == LIMIT - 2
    recovered = vault.recover("right", ksf_floor=FAST_KSF)
    assert recovered.wrong_guesses_before == 2
    assert vault.status().guesses_remaining == LIMIT


def test_the_last_wrong_guess_destroys_the_entry(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF)
    with pytest.raises(Destroyed):
        vault.recover("wrong", ksf_floor=FAST_KSF)
    evaluations = fleet.evaluations
    with pytest.raises(Destroyed):
        vault.recover("right", ksf_floor=FAST_KSF)
    assert fleet.evaluations == evaluations  # the right password gets no evaluation either
    assert vault.status().status == EntryStatus.DESTROYED


def test_one_node_down_registration_is_degraded_and_names_it_recovery_works(
    fleet: FakeFleet,
) -> None:
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    done = vault.register("pw", RK, ksf=FAST_KSF)
    assert done.degraded and done.acknowledged == (0, 1, 2, 4)
    [missing] = done.missing
    assert missing.startswith("node 3:")
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_two_nodes_down_recovery_still_works_and_names_them_in_status(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[0].mode = fleet.nodes[4].mode = "down"
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert [m.split(":")[0] for m in recovered.reset_missing] == ["node 0", "node 4"]
    status = vault.status()
    assert status.agreeing == (1, 2, 3)
    assert [o.split(":")[0] for o in status.other] == ["node 0", "node 4"]


def test_below_t_nodes_registration_fails_naming_the_nodes(fleet: FakeFleet) -> None:
    for i in (1, 2, 3):
        fleet.nodes[i].mode = "down"
    with pytest.raises(FleetUnavailable) as caught:
        fleet.vault().register("pw", RK, ksf=FAST_KSF)
    message = caught.value.message
    assert "only 2 of 5" in message and "3 are needed" in message
    assert all(f"node {i}" in message for i in (1, 2, 3))


def test_below_t_nodes_recovery_fails_naming_the_nodes_and_costs_no_more(
    fleet: FakeFleet,
) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    for i in (0, 1, 2):
        fleet.nodes[i].mode = "down"
    with pytest.raises(FleetUnavailable) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert all(f"node {i}" in caught.value.message for i in (0, 1, 2))


def test_a_node_with_a_wrong_partial_is_named_and_recovery_succeeds(fleet: FakeFleet) -> None:
    fleet.nodes[2].mode = "bad_partial"
    notes: list[str] = []
    vault = fleet.vault(notes)
    vault.register("pw", RK, ksf=FAST_KSF)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert recovered.rejected == (2,)
    assert any("node(s) 2" in note for note in notes)


def test_three_wrong_partials_fail_and_name_every_one(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    for i in (0, 2, 4):
        fleet.nodes[i].mode = "bad_partial"
    with pytest.raises(VaultError, match=r"node\(s\) 0, 2, 4 sent a partial"):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_partial_for_another_nodes_index_is_refused_and_named(fleet: FakeFleet) -> None:
    fleet.nodes[1].mode = "wrong_index"
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[3].mode = "down"
    fleet.nodes[4].mode = "down"
    with pytest.raises(FleetUnavailable, match="node 1: answered for another node's share"):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_forged_acknowledgement_does_not_count(fleet: FakeFleet) -> None:
    fleet.nodes[4].mode = "bad_ack"
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert done.acknowledged == (0, 1, 2, 3)
    assert done.missing == ("node 4: its acknowledgement's signature does not verify",)


def test_registering_twice_is_refused(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    with pytest.raises(AlreadyRegistered):
        vault.register("pw2", os.urandom(32), ksf=FAST_KSF)
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_change_password_then_only_the_new_one_opens(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    changed = vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert (changed.version, changed.degraded) == (2, False)
    assert vault.recover("new", ksf_floor=FAST_KSF).root_key == RK
    with pytest.raises(WrongPassword):
        vault.recover("old", ksf_floor=FAST_KSF)


def test_delete_erases_every_share(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    version, pending = vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    assert (version, pending) == (1, ())
    assert all(node.share is None for node in fleet.nodes)
    with pytest.raises(NotRegistered):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_weaker_stretching_than_the_client_allows_is_refused(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    stronger = FAST_KSF.__class__(
        memory_kib=FAST_KSF.memory_kib * 2,
        iterations=1,
        parallelism=1,
        salt=FAST_KSF.salt,
        output_len=64,
    )
    evaluations = fleet.evaluations
    with pytest.raises(VaultError, match="weaker password stretching"):
        vault.recover("pw", ksf_floor=stronger)
    assert fleet.evaluations == evaluations  # refused before anything was evaluated


def test_a_node_that_missed_a_delivery_gets_it_on_the_resend(fleet: FakeFleet) -> None:
    """A node cut off by the relay (too slow) is sent the same shares again, and the nodes
    that already hold theirs acknowledge the same delivery a second time."""
    fleet.nodes[1].mode = "down_once"
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert (done.acknowledged, done.missing) == ((0, 1, 2, 3, 4), ())
    assert fleet.nodes[0].seen.count("register-share") == 2


def test_a_lying_node_cannot_push_the_next_version_out_of_reach(fleet: FakeFleet) -> None:
    """A deleted entry's next registration takes the version t nodes report, not the
    highest any node claims."""
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    fleet.nodes[0].version = 999
    assert vault.status().version == 1


def test_manifests_that_do_not_reach_t_are_fetched_again(fleet: FakeFleet) -> None:
    """Nodes answer `manifest` from the value they hold, so during a change some may still
    hold the old one: two stale answers, two current ones and a silent node reach no t,
    and the client asks again rather than failing (or using either)."""
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    old = fleet.nodes[0].manifest
    vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    assert fleet.nodes[0].manifest != old
    for node in fleet.nodes[:2]:
        node.mode, node.stale_manifest = "stale_once", old
    fleet.nodes[2].mode = "down_once"
    before = fleet.nodes[3].seen.count("manifest")
    recovered = vault.recover("new", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert fleet.nodes[3].seen.count("manifest") == before + 2  # the fan-out was resent


def test_one_node_without_a_share_does_not_stop_the_resend_to_a_slow_one() -> None:
    """Found by the simulation (seed 6000097): of three nodes, one had lost its share (a
    wiped disk) and one had not accepted the attempt itself yet ("resend"); the refusal of
    the first ended the evaluate fan-outs, so the right password failed with two nodes
    able to answer. The resend goes on while t good partials can still come."""
    fleet = FakeFleet(3)
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[0].share = None  # its share is gone
    fleet.nodes[2].mode = "unavailable_once"
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK
